# Per-backend model cache invalidation.
#
# A backend that has predicted with a model keeps the model in its cache.
# When ANOTHER session trains and aggregates a new round, the next
# prediction in the first (long-lived) backend must use the new round: it must
# equal what a fresh backend returns and differ from the old prediction.
#
# PostgreSQL 15's TAP framework has no background_psql() in every minor
# release, so the long-lived session is a psql driven through IPC::Run pipes.
use strict;
use warnings;

use IPC::Run qw(start pump finish timer);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('node');
$node->init;
# The regress suite's server settings (e.g. preload libraries), if any, so
# that both suites run the extension under the same configuration.
if (-f 'sql/regress.conf')
{
	$node->append_conf('postgresql.conf',
		PostgreSQL::Test::Utils::slurp_file('sql/regress.conf'));
}
$node->start;

# ---------------------------------------------------------------- helpers

# A psql process that stays connected (one backend) for the whole test.
# Each query is followed by an \echo marker; we pump output until the marker
# shows up, so we know the query's whole result has arrived.
sub start_session
{
	my ($node) = @_;
	my %s = (in => '', out => '', err => '', n => 0);
	$s{timer} = timer($PostgreSQL::Test::Utils::timeout_default);
	$s{h} = start(
		[
			'psql', '-X', '-A', '-t', '-q',
			'-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres'),
			'-f', '-'
		],
		'<', \$s{in}, '>', \$s{out}, '2>', \$s{err}, $s{timer});
	return \%s;
}

sub session_query
{
	my ($s, $sql) = @_;
	my $marker = '__floral_marker_' . ++$s->{n} . '__';
	$s->{out} = '';
	$s->{err} = '';
	$s->{in} .= "$sql;\n\\echo $marker\n";
	$s->{timer}->start($PostgreSQL::Test::Utils::timeout_default);
	eval {
		pump $s->{h} until $s->{out} =~ /\Q$marker\E\n/;
		1;
	} or die "long-lived psql failed on \"$sql\": $@\nstderr: $s->{err}";
	die "long-lived psql error on \"$sql\": $s->{err}" if $s->{err} ne '';
	(my $result = $s->{out}) =~ s/\Q$marker\E\n//;
	chomp $result;
	return $result;
}

sub stop_session
{
	my ($s) = @_;
	$s->{in} .= "\\q\n";
	finish $s->{h};
}

# ---------------------------------------------------------------- setup

my $features = q{ARRAY[0.1, 0.2, 0.3, 0.4]::real[]};
my $predict  = qq{SELECT floral_predict_proba('m', 'a', $features)};
my $round    = q{SELECT round FROM floral.models WHERE name = 'm'};

$node->safe_psql('postgres', q{
	CREATE EXTENSION floral;
	SELECT floral_create_model('m', '{4,8,3}', 'classification', 2, 1,
	                           '{"seed": 7}');
	-- 60 deterministic rows, 30 per tenant, 3 classes.
	CREATE TABLE train AS
	SELECT CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END AS tenant,
	       ARRAY[sin(i), sin(2 * i), cos(i), cos(3 * i)]::real[] AS features,
	       i % 3 AS label
	  FROM generate_series(1, 60) AS i;
});

is($node->safe_psql('postgres', $round), '0', 'new model is at round 0');

# ---------------------------------------------------------------- round 0

my $session = start_session($node);
my $pid     = session_query($session, 'SELECT pg_backend_pid()');
like($pid, qr/^\d+$/, 'long-lived session is connected');

my $before = session_query($session, $predict);
like($before, qr/^\{.+\}$/, "round-0 prediction is an array: $before");
is($node->safe_psql('postgres', $predict),
	$before, 'fresh session agrees with the long-lived one at round 0');

# ---------------------------------------------------------------- new round
# Done in other sessions (each safe_psql is a new backend).

my $trained = $node->safe_psql('postgres',
	q{SELECT count(*), sum(examples)
	    FROM floral_train('m', 'SELECT tenant, features, label FROM train')});
is($trained, '2|60', 'floral_train trained both tenants on all rows');

is($node->safe_psql('postgres', q{SELECT floral_aggregate('m')}),
	'1', 'floral_aggregate returns the new round');
is($node->safe_psql('postgres', $round), '1', 'catalog shows round 1');

# ---------------------------------------------------------------- round 1

my $after = session_query($session, $predict);
is(session_query($session, 'SELECT pg_backend_pid()'),
	$pid, 'long-lived session still uses the same backend');

my $fresh = $node->safe_psql('postgres', $predict);
is($after, $fresh,
	'long-lived session sees the new round (same as a fresh session)');
isnt($after, $before, 'prediction changed after aggregation');
is(session_query($session, $round), '1',
	'long-lived session reads round 1 from the catalog');

stop_session($session);
$node->stop;

done_testing();
