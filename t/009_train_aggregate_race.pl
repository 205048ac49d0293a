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

sub session
{
	my %s = (in => '', out => '', err => '');
	$s{h} = start([ 'psql', '-X', '-A', '-t', '-q', '-d', $node->connstr('postgres'), '-f', '-' ],
		'<', \$s{in}, '>', \$s{out}, '2>', \$s{err}, timer($PostgreSQL::Test::Utils::timeout_default));
	return \%s;
}

sub send_sql
{
	my ($s, $sql, $wait_for) = @_;
	$s->{in} .= "$sql\n";
	if (defined $wait_for)
	{
		pump $s->{h} until $s->{out} =~ $wait_for;
	}
	else
	{
		pump $s->{h} while length $s->{in};
	}
}

# A: train t1 inside an open transaction
my $a = session();
send_sql($a, q{BEGIN;});
send_sql($a, q{SELECT 'A trained ' || count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM rows WHERE tenant = ''t1''');},
	qr/A trained 1/);

# B: aggregate; it waits for A
my $b = session();
send_sql($b, q{SELECT 'B merged round ' || floral_aggregate('m');});
ok( $node->poll_query_until('postgres', q{
		SELECT count(*) > 0 FROM pg_stat_activity
		 WHERE wait_event_type = 'Lock' AND query LIKE '%floral_aggregate%'}),
	'the aggregation waits for the open training call');

# C: a trainer that arrives while B waits, also waits, then trains for round 1
my $c = session();
send_sql($c, q{SELECT 'C trained ' || count(*) FROM floral_train('m', 'SELECT tenant, features, label FROM rows WHERE tenant = ''t2''');});

send_sql($a, q{COMMIT;});
send_sql($a, q{SELECT 'A done';}, qr/A done/);
send_sql($b, q{SELECT 'B done';}, qr/B done/);
send_sql($c, q{SELECT 'C done';}, qr/C done/);
like($b->{out}, qr/B merged round 1/, 'the aggregation completed');
like($c->{out}, qr/C trained 1/, 'the late trainer completed');
is($b->{err}, '', 'the aggregation raised no error');
is($c->{err}, '', 'the late trainer raised no error');
$_->{in} .= "\\q\n", finish($_->{h}) for ($a, $b, $c);

is( $node->safe_psql('postgres', q{SELECT tenants || ' tenants, ' || examples || ' examples' FROM floral.rounds WHERE model = 'm' AND round = 1}),
	'2 tenants, 200 examples',
	'round 1 merged both t0 and t1, including the contribution committed while the merge waited');
is( $node->safe_psql('postgres', q{SELECT string_agg(round || ':' || tenant, ',' ORDER BY tenant) FROM floral.contributions}),
	'1:t2', 'the late trainer contributed to round 1, nothing else is pending');

$node->stop;
done_testing();
