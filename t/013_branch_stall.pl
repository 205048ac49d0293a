# A stalled coordinator never stalls a branch: every remote call of a step
# is bounded by the link's timeouts, no lock or transaction of the branch
# spans the wait, and the update is kept and delivered exactly once later.
#
# The branch joins with statement_timeout 3000 ms and connect_timeout 2 s.
#   a. The coordinator holds floral.updates in ACCESS EXCLUSIVE mode: the
#      step's pull (fed_round) stalls, gives up after the timeout and trains
#      nothing.
#   b. The coordinator holds the model lock (what a merge holds; fed_submit
#      waits on it): the step pulls and trains, its send stalls and gives up;
#      while it waits the branch holds no model lock (an exclusive
#      floral_discard does not wait) and a second step answers "busy";
#      afterwards the step's session holds no lock, no open transaction and
#      no dblink connection, and the coordinator recorded nothing.
#   c. Released, the next step sends the waiting update; the merged round
#      has exactly the examples the branch trained, counted once.
#   d. A step cancelled by the branch's own statement_timeout leaves no step
#      lock behind in its session: another session's step is not "busy".
#   e. A coordinator that accepts connections but never answers: the step
#      gives up after connect_timeout.
#   f. fed_submit refuses a sums payload far larger than the model before
#      decoding it, quickly.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use IO::Socket::UNIX;
use Time::HiRes qw(time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $STATEMENT_TIMEOUT = 3000;    # ms, the link's
my $CONNECT_TIMEOUT = 2;         # s, the link's
my $MARGIN = 8;                  # s allowed beyond a timeout (training, a loaded machine)
my $src = 'SELECT tenant, features, label FROM rows ORDER BY tenant, features';

my $coord = new_node('coordinator', role => 'coordinator');
my $branch = new_node('branch', role => 'branch');
my $cport = $coord->port;

sql($coord, q{CREATE ROLE b1 LOGIN IN ROLE floral_branch;}
	  . federate_sql('m', spec => q{'{3,8,3}', 'classification', 2, 1, '{"seed": 5}'}, branches => [ [ b1 => 'b1' ] ]));

# The branch reaches the coordinator's socket through a directory of its
# own, so that part e can put a coordinator that never answers in its place.
my $sockdir = PostgreSQL::Test::Utils::tempdir_short;
my $sockname = "$sockdir/.s.PGSQL.$cport";
symlink($coord->host . "/.s.PGSQL.$cport", $sockname) or die "symlink: $!";
my $conninfo = "host=$sockdir port=$cport dbname=postgres user=b1";

sql($branch, branch_rows_sql() . join_sql('m', 'b1', $conninfo, $src, '{}',
	qq{{"statement_timeout": $STATEMENT_TIMEOUT, "connect_timeout": $CONNECT_TIMEOUT}}));
is(sql($branch, q{SELECT local_round, statement_timeout, connect_timeout FROM floral.branch_status WHERE model = 'm'}),
	"0|$STATEMENT_TIMEOUT|$CONNECT_TIMEOUT", 'the branch joined with its timeouts');

# The step runs in a session that lives on, so that whatever it left behind
# (a lock, a transaction, a dblink connection) would still be there.
my $s = session($branch, on_error_stop => 0);
my $step_pid = $s->query_safe('SELECT pg_backend_pid()');

# The first line of what a session printed on stderr, as an error to report.
sub first_error
{
	my ($err) = @_;
	$err =~ s/\n.*//s;
	return $err eq '' ? '' : "ERROR: $err";
}

# A CALL of the step in $s, timed; returns (status or error, seconds).
sub timed_step
{
	my $t0 = time();
	my ($status, $err) = session_run($s, q{CALL floral_branch_step('m')});
	return (first_error($err) || $status, time() - $t0);
}

my $outbox = q{SELECT count(*) FILTER (WHERE sent_at IS NULL), count(*) FILTER (WHERE sent_at IS NOT NULL)
                 FROM floral.outbox WHERE model = 'm'};
my $leftovers = qq{
	SELECT (SELECT state FROM pg_stat_activity WHERE pid = $step_pid),
	       (SELECT count(*) FROM pg_locks WHERE pid = $step_pid),
	       (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'),
	       (SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%')};

# ---------------------------------------------------------------- a. pull stalls
my $lock = session($coord);
$lock->query_safe('BEGIN; LOCK TABLE floral.updates IN ACCESS EXCLUSIVE MODE');
my ($status, $secs) = timed_step();
note sprintf('stalled pull: the step returned after %.2f s: %s', $secs, $status);
like($status, qr/^coordinator unreachable: canceling statement due to statement timeout$/,
	'a stalled fed_round: the step says the coordinator is unreachable');
cmp_ok($secs, '>=', $STATEMENT_TIMEOUT / 1000 - 0.1, 'the step waited for the statement timeout');
cmp_ok($secs, '<', $STATEMENT_TIMEOUT / 1000 + $MARGIN, 'and no longer');
is(sql($branch, $outbox) . '|' . sql($branch, q{SELECT count(*) FROM floral.contributions}),
	'0|0|0', 'nothing was trained');
is(sql($branch, $leftovers), 'idle|0|0|0',
	'the step left no lock, no open transaction, no advisory lock on the branch');
$lock->query_safe('ROLLBACK');

# ---------------------------------------------------------------- b. send stalls
# The coordinator's model lock, exclusive, as a merge holds it.
$lock->query_safe(q{BEGIN; SELECT pg_advisory_xact_lock(1718382450, hashtext('m'))});
my $t0 = time();
session_send($s, q{CALL floral_branch_step('m')});
ok( $coord->poll_query_until('postgres', q{
		SELECT count(*) FROM pg_stat_activity
		 WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND query LIKE '%floral.fed_submit(%'}, '1'),
	'the step pulled, trained and waits in fed_submit on the coordinator');
is( sql($branch, q{SELECT string_agg(classid || ':' || mode || ':' || granted, ',') FROM pg_locks WHERE locktype = 'advisory'}),
	'1718382451:ExclusiveLock:true',
	'while it waits, the branch holds its step lock and no model lock');
my ($rc, $out, $err) = $branch->psql('postgres', q{SET lock_timeout = '1s'; SELECT floral_discard('m')});
is("$out|$err", '0|', 'an exclusive floral_discard on the branch does not wait for the stalled step');
is(sql($branch, q{CALL floral_branch_step('m')}), 'busy: another step is running',
	'a second step answers busy');
my $step_err;
($status, $step_err) = session_wait($s);
$secs = time() - $t0;
$status = first_error($step_err) || $status;
note sprintf('stalled send: the step returned after %.2f s: %s', $secs, $status);
like($status, qr/^round 0: trained 3 tenants on 90 rows, update kept in the outbox: canceling statement due to statement timeout$/,
	'a stalled fed_submit: the step keeps the update in the outbox');
cmp_ok($secs, '<', $STATEMENT_TIMEOUT / 1000 + $MARGIN, 'and returns within the statement timeout and a margin');
is( sql($branch, q{SELECT waiting_updates, last_error LIKE '%kept in the outbox: canceling statement due to statement timeout'
	                 FROM floral.branch_status WHERE model = 'm'}),
	'1|t', 'branch_status: one update waiting, and the error');
is(sql($branch, $leftovers), 'idle|0|0|0',
	'the step left no lock, no open transaction, no advisory lock on the branch');
is($s->query_safe('SELECT dblink_get_connections() IS NULL'), 't', 'nor a dblink connection');
ok( $coord->poll_query_until('postgres', q{
		SELECT count(*) FROM pg_stat_activity WHERE usename = 'b1'}, '0'),
	'nor a connection to the coordinator');
($rc, $out, $err) = $branch->psql('postgres', q{SET lock_timeout = '1s'; SELECT floral_discard('m')});
is("$out|$err", '0|', 'an exclusive floral_discard on the branch does not wait');
is(sql($coord, q{SELECT count(*) FROM floral.updates WHERE model = 'm'}), '0',
	'the coordinator recorded nothing of the cancelled call');

# ---------------------------------------------------------------- c. delivered once
$lock->query_safe('ROLLBACK');
($status) = timed_step();
is($status, 'sent 1 waiting update(s); round 0: already trained', 'released, the next step sends the waiting update');
like(sql($coord, q{SELECT floral_coordinator_step('m')}),
	qr/^round 0 merged from 1 of 1 selected branches; round 1 started$/, 'the coordinator merges the round');
my $trained = sql($branch, q{SELECT tenants || '|' || examples || '|' || answer FROM floral.outbox WHERE model = 'm' AND round = 0});
is($trained, '3|90|accepted', 'the branch trained 3 tenants on 90 rows, and its update was accepted');
is( sql($coord, q{SELECT tenants || '|' || examples FROM floral.federation_rounds WHERE model = 'm' AND round = 0})
	  . '|' . sql($coord, q{SELECT count(*) || ':' || string_agg(status, ',') FROM floral.updates WHERE model = 'm'}),
	'3|90|1:merged', 'the merged round has exactly what the branch trained, from one update');

# ---------------------------------------------------------------- d. a cancelled step
# The branch session's own statement_timeout cancels the step while it
# waits for the coordinator (PL/pgSQL's WHEN OTHERS does not catch a cancel).
$lock->query_safe(q{BEGIN; SELECT pg_advisory_xact_lock(1718382450, hashtext('m'))});
my (undef, $cancel_err) = session_run($s, q{SET statement_timeout = '1s'; CALL floral_branch_step('m'); RESET statement_timeout});
like(first_error($cancel_err), qr/canceling statement due to statement timeout/, 'the branch session cancels its own step');
$lock->query_safe('ROLLBACK');
is(sql($branch, $leftovers), 'idle|0|0|0', 'the cancelled step left no lock in its session');
like(sql($branch, q{CALL floral_branch_step('m')}), qr/^(sent 1 waiting update\(s\); )?round 1: /,
	'another session\'s step runs: it is not kept "busy" by the cancelled one');

# ---------------------------------------------------------------- e. no answer
unlink($sockname) or die "unlink: $!";
my $hole = IO::Socket::UNIX->new(Local => $sockname, Listen => 16)
  or die "listen on $sockname: $!";
($status, $secs) = timed_step();
note sprintf('coordinator not answering: the step returned after %.2f s: %s', $secs, $status);
like($status, qr/^coordinator unreachable: could not establish connection$/,
	'a coordinator that never answers: unreachable');
$hole->blocking(0);
ok(defined $hole->accept, 'the step had connected to it');
# (libpq counts connect_timeout in whole seconds)
cmp_ok($secs, '>=', $CONNECT_TIMEOUT - 1, 'the step waited for connect_timeout');
cmp_ok($secs, '<', $CONNECT_TIMEOUT + $MARGIN, 'and no longer');
is(sql($branch, $leftovers), 'idle|0|0|0', 'and left nothing behind');
close $hole;
unlink($sockname);
symlink($coord->host . "/.s.PGSQL.$cport", $sockname) or die "symlink: $!";
like((timed_step())[0], qr/^round 1: already trained$/, 'with the coordinator back, the next step reaches it');
$s->quit;

# ---------------------------------------------------------------- f. a huge payload
sql($coord, q{SELECT floral_coordinator_add_branch('m', 'big', 'b1')});
my $size = 50 * 1024 * 1024;
$t0 = time();
is( sql($branch, qq{
		SELECT a FROM dblink('$conninfo',
		  format('SELECT floral.fed_submit(%L, %L, %s, %s, %L, %L, %s, %s)',
		         'm', 'big', 1, 90, '{45,45}', repeat('QUFB', $size / 4), 10, 3)) AS t(a text)}),
	'rejected', 'fed_submit rejects 50 MB of base64 sums');
$secs = time() - $t0;
note sprintf('the 50 MB update was answered after %.2f s', $secs);
cmp_ok($secs, '<', 10, 'quickly');
like( sql($coord, q{SELECT status || '|' || bytes || '|' || (sums IS NULL) || '|' || reason
	                  FROM floral.updates WHERE model = 'm' AND branch = 'big'}),
	qr/^rejected\|$size\|true\|sums: $size bytes of base64 is more than the model's parameters can take$/,
	'recorded as rejected before decoding: its size, no sums, the reason');

$branch->stop;
$coord->stop;
done_testing();
