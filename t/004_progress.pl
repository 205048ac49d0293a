# Progress of a long call, read from a second session while it runs.
#
# With floral in shared_preload_libraries, floral.progress shows every running
# floral_train / floral_evaluate / floral_personalize: tenant i of n, epoch,
# examples done and the running loss.  This test starts a training call that
# takes several seconds in one session, reads the view from another, checks
# that the numbers are sane and move forward, and that the slot is released
# when the call ends normally and when it is cancelled.
#
# A tenant contributes once per round, so running the first call again
# skips its six tenants at once (a NOTICE says so); the long call that is
# cancelled trains six other tenants, and must leave nothing behind: the
# first call's row of sums stays the only pending contribution.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

# floral is in shared_preload_libraries (sql/regress.conf)
my $node = new_node('progress');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE rows AS
	SELECT 'shop' || (i % 6) AS tenant,
	       ARRAY(SELECT sin(i * j) FROM generate_series(1, 64) j)::real[] AS features,
	       i % 5 AS label
	FROM generate_series(1, 6000) i;
	SELECT floral_create_model('p', '{64,256,5}', 'classification', 4, 8);
});

# a call that runs for several seconds: many epochs over 6 tenants
my $long = q{SELECT count(*) FROM floral_train('p', 'SELECT tenant, features, label FROM rows', '{"epochs": 300}')};

# poll the view until a row for our model shows up (or the call ends, or
# 10 s pass)
sub wait_for_progress
{
	my ($call) = @_;
	return wait_for($node, q{
		SELECT command, model, tenant_number, tenants, epoch, epochs, examples_done, examples,
		       running_loss IS NOT NULL, pid FROM floral.progress WHERE model = 'p'},
		qr/./, call => $call, timeout => 10, interval => 0.025) // '';
}

my $call = background_call($node, $long);
my $first = wait_for_progress($call);
isnt($first, '', 'a running training call shows up in floral.progress');
my @f = split /\|/, $first;
is($f[0], 'train', 'command is train');
is($f[1], 'p', 'model is named');
is($f[3], '6', 'tenants = 6');
ok($f[2] >= 1 && $f[2] <= 6, "tenant number $f[2] is between 1 and 6");
is($f[5], '300', 'epochs = 300');
ok($f[4] >= 1 && $f[4] <= 300, "epoch $f[4] is between 1 and 300");
ok($f[6] >= 0 && $f[6] <= $f[7], "examples done ($f[6]) within the tenant's examples ($f[7])");
is($f[7], '1000', 'each tenant has 1000 examples');

# the call moves on: read again a little later
usleep(700_000);
my $second = wait_for_progress($call);
my @s = split /\|/, $second;
ok($s[2] > $f[2] || ($s[2] == $f[2] && ($s[4] > $f[4] || $s[6] != $f[6])),
	"progress moved forward (tenant $f[2] epoch $f[4] -> tenant $s[2] epoch $s[4])");
is($s[8], 't', 'a running loss is reported');

is(finish_call($call), '6', 'the training call completed');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.progress}),
	'0', 'the slot is released when the call ends');

# the first call left one row of sums for its 6 tenants
my $pending = q{SELECT string_agg(call || ':' || chunk || ':' || tenants || ':' || examples, ' ' ORDER BY call, chunk)
	FROM floral.contributions WHERE model = 'p' AND round = 0};
my $first_call = $node->safe_psql('postgres', $pending);
like($first_call, qr/^\d+:0:6:6000$/, 'the first call left one row of sums: 6 tenants, 6000 examples');

# the same call again: every tenant already contributed to round 0
my ($ret, $again_out, $again_err) = $node->psql('postgres', $long);
is($again_out, '0', 'running the first call again trains no tenant');
like($again_err, qr/skipped 6 tenant\(s\) that already contributed to round 0 of model "p"/,
	'a NOTICE says the 6 tenants were skipped');
is($node->safe_psql('postgres', $pending), $first_call, 'and it stored nothing');

# a cancelled call releases its slot too: six new tenants, as long as the first
$call = background_call($node,
	q{SELECT count(*) FROM floral_train('p', 'SELECT ''new_'' || tenant, features, label FROM rows', '{"epochs": 300}')});
my $row = wait_for_progress($call);
isnt($row, '', 'second call visible');
my $pid = (split /\|/, $row)[9];
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
my (undef, $err) = finish_call($call);
like($err, qr/canceling statement due to user request/, 'the call was cancelled');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.progress}),
	'0', 'the slot is released when the call is cancelled');
is($node->safe_psql('postgres', $pending), $first_call,
	'the cancelled call left the first call\'s contributions as they were, and added none');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.tenants WHERE model = 'p' AND tenant LIKE 'new\\_%'}),
	'0', 'nor any state of the tenants it was training');

# evaluation reports progress as well, and NOTICEs when asked
my $notices = $node->psql('postgres',
	q{SET floral.progress_notices = on;
	  SELECT count(*) FROM floral_evaluate('p', 'SELECT tenant, features, label FROM rows')},
	stderr => \my $stderr);
like($stderr, qr/floral evaluate: tenant 6 of 6/, 'NOTICE messages report tenant i of n');

$node->stop;
done_testing();
