# Per-backend model cache invalidation.
#
# A backend that has predicted with a model keeps the model in its cache.
# When ANOTHER session trains and aggregates a new round, the next
# prediction in the first (long-lived) backend must use the new round: it must
# equal what a fresh backend returns and differ from the old prediction.
#
# The long-lived session is one psql kept connected (FloralTest::session).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = new_node('node');

# ---------------------------------------------------------------- setup

my $features = q{ARRAY[0.1, 0.2, 0.3, 0.4]::real[]};
my $predict  = qq{SELECT floral_predict_proba('m', 'a', $features)};
my $round    = q{SELECT round FROM floral.models WHERE name = 'm'};

$node->safe_psql('postgres', q{
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

my $session = session($node);
my $pid     = $session->query_safe('SELECT pg_backend_pid()');
like($pid, qr/^\d+$/, 'long-lived session is connected');

my $before = $session->query_safe($predict);
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

my $after = $session->query_safe($predict);
is($session->query_safe('SELECT pg_backend_pid()'),
	$pid, 'long-lived session still uses the same backend');

my $fresh = $node->safe_psql('postgres', $predict);
is($after, $fresh,
	'long-lived session sees the new round (same as a fresh session)');
isnt($after, $before, 'prediction changed after aggregation');
is($session->query_safe($round), '1',
	'long-lived session reads round 1 from the catalog');

$session->quit;
$node->stop;

done_testing();
