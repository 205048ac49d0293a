# Prediction on a logical replica follows the publisher.
#
# A subscriber receives floral.models, floral.rounds and floral.tenants by
# logical replication and serves predictions.  Its apply worker fires no
# statement triggers for the rows it applies, so the row triggers enabled
# for replicas must tell the subscriber's backends that their cached models
# and tenants changed: a long-lived subscriber session must predict exactly
# what the publisher predicts after each new round and each new mixture.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $publisher = new_node('publisher', init => { allows_streaming => 'logical' });
my $subscriber = new_node('subscriber');

sub train_and_aggregate
{
	return $publisher->safe_psql('postgres', q{
		SELECT count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM rows');
		SELECT floral_aggregate('m')});
}

# ---------------------------------------------------------------- setup

$publisher->safe_psql('postgres', q{
	CREATE TABLE rows AS
	SELECT 't' || (i % 3) AS tenant, ARRAY[sin(i), cos(i), sin(2 * i), cos(3 * i)]::real[] AS features,
	       i % 3 AS label
	  FROM generate_series(1, 90) i;
	SELECT floral_create_model('m', '{4,8,3}', 'classification', 2, 1, '{"seed": 5}');
});
is(train_and_aggregate(), "3\n1", 'publisher: round 1 trained on three tenants');

$publisher->safe_psql('postgres',
	'CREATE PUBLICATION floral_pub FOR TABLE floral.models, floral.rounds, floral.tenants');
$subscriber->safe_psql('postgres',
	'CREATE SUBSCRIPTION floral_sub CONNECTION ' . lit(conninfo($publisher)) . ' PUBLICATION floral_pub');
$subscriber->wait_for_subscription_sync($publisher, 'floral_sub');

# ---------------------------------------------------------------- round 1

my $x = q{'{0.3, -0.7, 0.2, 0.9}'};
my %predict = map { $_ => "SELECT floral_predict_proba('m', '$_', $x)" } qw(t0 t1 newcomer);
my $session = session($subscriber);

my %before;
for my $tenant (sort keys %predict)
{
	$before{$tenant} = $session->query_safe($predict{$tenant});
	is($before{$tenant}, $publisher->safe_psql('postgres', $predict{$tenant}),
		"round 1: the subscriber predicts for $tenant what the publisher does");
}
is($session->query_safe(q{SELECT round FROM floral.models WHERE name = 'm'}),
	'1', 'round 1 on the subscriber');

# ---------------------------------------------------------------- round 2

is(train_and_aggregate(), "3\n2", 'publisher: round 2');
$publisher->wait_for_catchup('floral_sub');

for my $tenant (sort keys %predict)
{
	my $now = $session->query_safe($predict{$tenant});
	is($now, $publisher->safe_psql('postgres', $predict{$tenant}),
		"round 2: the same subscriber session predicts for $tenant what the publisher does");
	isnt($now, $before{$tenant}, "round 2: its prediction for $tenant changed");
	$before{$tenant} = $now;
}

# ---------------------------------------------------------------- mixtures

# a trained tenant's mixture, and a tenant that had no row (it shared the
# uniform mixture) gets one
$publisher->safe_psql('postgres', q{
	SELECT floral_set_mixture('m', 't1', '{1,0}');
	SELECT floral_set_mixture('m', 'newcomer', '{0,1}')});
$publisher->wait_for_catchup('floral_sub');

for my $tenant (sort keys %predict)
{
	my $now = $session->query_safe($predict{$tenant});
	is($now, $publisher->safe_psql('postgres', $predict{$tenant}),
		"new mixtures: the subscriber predicts for $tenant what the publisher does");
	if ($tenant eq 't0')
	{
		is($now, $before{$tenant}, 'new mixtures: t0, not changed, predicts as before');
	}
	else
	{
		isnt($now, $before{$tenant}, "new mixtures: the prediction for $tenant changed");
	}
}

$session->quit;
$subscriber->stop;
$publisher->stop;

done_testing();
