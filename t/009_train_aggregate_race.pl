# Training and aggregation running at the same time lose nothing.
#
# Session A trains a tenant and keeps its transaction open (it holds the
# model's training lock).  Session B starts floral_aggregate, which must wait
# for A.  When A commits, B's aggregation must include A's contribution: its
# own statement snapshot predates A's commit, so the merge has to read the
# contributions afresh after the lock.  (It once did not, and then deleted
# contributions it had not merged.)  A trainer that starts while B waits
# trains for the next round.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = new_node('race');

$node->safe_psql('postgres', q{
	CREATE TABLE rows AS
	SELECT 't' || (i % 3) AS tenant, ARRAY[sin(i), cos(i), 1]::real[] AS features, i % 3 AS label
	FROM generate_series(1, 300) i;
	SELECT floral_create_model('m', '{3,8,3}', 'classification', 2, 2);
	SELECT count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM rows WHERE tenant = ''t0''');
});

# A: an interactive session, so that its transaction can stay open; B and C
# run one statement each, in the background
my $a_session = session($node, on_error_stop => 0);

# A trains t1 inside an open transaction, holding the training lock
session_ok($a_session, 'BEGIN');
like(session_ok($a_session, q{SELECT 'A trained ' || count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM rows WHERE tenant = ''t1''')}),
	qr/A trained 1/, 'A trained t1 and keeps its transaction open');

# B aggregates and must wait for A
my $b = background_call($node, q{SELECT 'B merged round ' || floral_aggregate('m')});
ok(lock_waiters($node, '%floral_%', 1), 'the aggregation waits for the open training call');

# C arrives while B waits: it queues behind B
my $c = background_call($node,
	q{SELECT 'C trained ' || count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM rows WHERE tenant = ''t2''')});
ok(lock_waiters($node, '%floral_%', 2), 'a trainer arriving now waits too');

session_ok($a_session, 'COMMIT');
finish_call($_) for $b, $c;
$a_session->quit;
like($b->{out}, qr/B merged round 1/, 'the aggregation completed');
like($c->{out}, qr/C trained 1/, 'the late trainer completed');
is($b->{err}, '', 'the aggregation raised no error');
is($c->{err}, '', 'the late trainer raised no error');

is( $node->safe_psql('postgres', q{SELECT tenants || ' tenants, ' || examples || ' examples' FROM floral.rounds WHERE model = 'm' AND round = 1}),
	'2 tenants, 200 examples',
	'round 1 merged both t0 and t1, including the contribution committed while the merge waited');
# what is pending: one row of sums, C's call over t2, for round 1
is( $node->safe_psql('postgres', q{
	SELECT string_agg(c.round || ':' || c.tenants || ':' || c.examples || ':' ||
	                  (SELECT string_agg(t.tenant, ',' ORDER BY t.tenant) FROM floral.tenants t
	                    WHERE t.model = c.model AND t.contributed_call = c.call AND t.start_round = c.round),
	                  ' ' ORDER BY c.call, c.chunk)
	  FROM floral.contributions c}),
	'1:1:100:t2', 'the late trainer contributed to round 1 (one call, t2 alone), nothing else is pending');

$node->stop;
done_testing();
