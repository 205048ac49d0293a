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

use IPC::Run qw(start pump finish timer);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('race');
$node->init;
$node->append_conf('postgresql.conf', PostgreSQL::Test::Utils::slurp_file('sql/regress.conf'));
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION floral;
	CREATE TABLE rows AS
	SELECT 't' || (i % 3) AS tenant, ARRAY[sin(i), cos(i), 1]::real[] AS features, i % 3 AS label
	FROM generate_series(1, 300) i;
	SELECT floral_create_model('m', '{3,8,3}', 'classification', 2, 2);
	SELECT count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM rows WHERE tenant = ''t0''');
});

# A: an interactive session, so that its transaction can stay open
my %a = (in => '', out => '', err => '');
$a{h} = start([ 'psql', '-X', '-A', '-t', '-q', '-d', $node->connstr('postgres'), '-f', '-' ],
	'<', \$a{in}, '>', \$a{out}, '2>', \$a{err}, timer($PostgreSQL::Test::Utils::timeout_default));

sub a_sql
{
	my ($sql, $marker) = @_;
	$a{in} .= "$sql\n\\echo $marker\n";
	pump $a{h} until $a{out} =~ /\Q$marker\E/;
}

# B and C: one statement each, in the background
sub start_call
{
	my ($sql) = @_;
	my %c = (out => '', err => '');
	$c{h} = start([ 'psql', '-X', '-A', '-t', '-q', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$c{out}, '2>', \$c{err}, timer($PostgreSQL::Test::Utils::timeout_default));
	return \%c;
}

sub lock_waiters
{
	my ($n) = @_;
	return $node->poll_query_until('postgres', qq{
		SELECT count(*) >= $n FROM pg_stat_activity
		 WHERE wait_event_type = 'Lock' AND query LIKE '%floral_%' AND pid <> pg_backend_pid()});
}

# A trains t1 inside an open transaction, holding the training lock
a_sql(q{BEGIN;}, 'began');
a_sql(q{SELECT 'A trained ' || count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM rows WHERE tenant = ''t1''');},
	'trained');
like($a{out}, qr/A trained 1/, 'A trained t1 and keeps its transaction open');

# B aggregates and must wait for A
my $b = start_call(q{SELECT 'B merged round ' || floral_aggregate('m')});
ok(lock_waiters(1), 'the aggregation waits for the open training call');

# C arrives while B waits: it queues behind B
my $c = start_call(q{SELECT 'C trained ' || count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM rows WHERE tenant = ''t2''')});
ok(lock_waiters(2), 'a trainer arriving now waits too');

a_sql(q{COMMIT;}, 'committed');
finish($b->{h});
finish($c->{h});
$a{in} .= "\\q\n";
finish($a{h});
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
