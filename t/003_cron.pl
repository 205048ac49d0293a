# pg_cron drives the federation: a coordinator cluster and one branch
# cluster, each running its floral step as a pg_cron job, with nothing else
# calling them.  The test waits until the coordinator has merged at least
# one round that the branch trained and sent.
#
# pg_cron 1.4 schedules with cron syntax only: its finest granularity is one
# minute (sub-minute schedules such as '10 seconds' came in pg_cron 1.5).
# Both jobs fire at the start of a minute; if the coordinator's job runs
# before the branch's update has arrived it waits until the next minute.
# This test therefore takes one to two minutes, and polls for up to four.
#
# Jobs run in background workers (cron.use_background_workers = on), so
# pg_cron needs no libpq connection to its own server.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $TIMEOUT = 240;    # seconds to wait for the first merged round

my ($coord, $branch) = start_federation(
	cron   => 1,
	models => [ m => { spec => q{'{3,8,3}', 'classification', 2, 1, '{"seed": 5}'} } ],
	rows   => sub { branch_rows_sql() },
	source => 'SELECT tenant, features, label FROM rows ORDER BY tenant, features');

is(sql($branch, q{SELECT local_round FROM floral.branch_status WHERE model = 'm'}),
	'0', 'the branch joined at round 0');

# The jobs: nothing else calls the steps from here on.
sql($branch, q{SELECT cron.schedule('floral-branch', '* * * * *', $$CALL floral_branch_step('m')$$)});
sql($coord, q{SELECT cron.schedule('floral-coordinator', '* * * * *', $$SELECT floral_coordinator_step('m')$$)});

my $started = time();
my $round = wait_for($coord, q{SELECT round FROM floral.models WHERE name = 'm'}, qr/^[1-9]\d*$/,
	timeout => $TIMEOUT, interval => 1) // round_of($coord, 'm');
note sprintf('coordinator reached round %s after %d s', $round, time() - $started);
cmp_ok($round, '>=', 1, 'pg_cron drove a full round: the coordinator merged round 0');

# What the jobs did, from pg_cron's own records.
my $runs = q{
	SELECT count(*) FILTER (WHERE d.status = 'succeeded'), count(*) FILTER (WHERE d.status = 'failed')
	  FROM cron.job_run_details d JOIN cron.job j USING (jobid) WHERE j.jobname = '%s'};
my ($ok_b, $failed_b) = split /\|/, sql($branch, sprintf($runs, 'floral-branch'));
my ($ok_c, $failed_c) = split /\|/, sql($coord, sprintf($runs, 'floral-coordinator'));
note "branch job: $ok_b succeeded, $failed_b failed; coordinator job: $ok_c succeeded, $failed_c failed";
cmp_ok($ok_b, '>=', 1, 'cron.job_run_details on the branch shows succeeded floral_branch_step runs');
cmp_ok($ok_c, '>=', 1, 'cron.job_run_details on the coordinator shows succeeded floral_coordinator_step runs');
is($failed_b + $failed_c, 0, 'no job run failed');

# The round really went through the federation.
is( sql($coord, q{SELECT branches, tenants, examples FROM floral.federation_rounds WHERE model = 'm' AND round = 0}),
	'{b1}|3|90', "round 0 was merged from the branch's update (3 tenants, 90 rows)");
is( sql($branch, q{SELECT sent_at IS NOT NULL, answer FROM floral.outbox WHERE model = 'm' AND round = 0}),
	't|accepted', "the branch's round-0 update left its outbox and was accepted");
is( sql($coord, q{SELECT (SELECT count(*) FROM floral.branch_links) + (SELECT count(*) FROM pg_foreign_server)}),
	'0', 'the coordinator has no link to connect out with (only branches connect)');

sql($branch, q{SELECT cron.unschedule('floral-branch')});
sql($coord, q{SELECT cron.unschedule('floral-coordinator')});
$branch->stop;
$coord->stop;

done_testing();
