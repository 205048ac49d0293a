# Crash safety: kill -9 the server during training and during aggregation.
#
# A training call stores its tenants' sums as one row of floral.contributions
# when it commits; the table is logged like the rest of the catalog (models,
# rounds, tenants with their start-of-round state), so a crash keeps every
# committed call and loses exactly the work that had not committed.  After
# any crash a model must be at exactly the round it was at before (or, for a
# committed aggregation, the next one), never in between, with the same
# calls pending as before the crash; and finishing the round must give bit
# for bit what the same training gives on a model that never crashed.
#
# The reference model "r" is trained first, with no crash in between any of
# its calls: round by round it gets exactly the training that "m" gets in
# the end (in round 1: a call over shop0..shop2, then a call over all six
# tenants, which skips shop0..shop2 and trains shop3..shop5; the round adds
# the two calls' sums in call order).  "m" then goes through the crashes:
#
#   a. round 1: a committed call trains shop0..shop2, then the call over all
#      six tenants (shop0..shop2 skipped, shop3..shop5 training) is killed
#      while it runs, with an aggregation queued behind it.  After the
#      restart m is still at round 1, exactly the first call's row is
#      pending (3 tenants, the same sums), the tenants' logged state is as
#      the first call left it, and re-running the killed call trains
#      shop3..shop5 (and skips the other three) from the same start state:
#      aggregating then gives r's round 2 bit for bit, counting every
#      tenant once.
#   b. round 2: an aggregation that ran but is not committed when the server
#      dies leaves m at round 2 with no row for round 3 and the round's
#      contribution still pending (its tenants are not trained again);
#      aggregating then gives r's round 3.  An aggregation committed just
#      before the crash survives it (round 4, nothing pending), and the
#      next round works too.
#   c. every restart logs crash recovery, so a crash cannot be skipped silently.
#
# The server is killed the way a crash kills it: SIGKILL to the postmaster
# and at once to every one of its children (a backend busy in BLAS would not
# notice its postmaster's death until the call ends, and a new postmaster
# refuses to start while one of them is still attached to shared memory).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $t0 = time;
# a backend that crashed by itself (not killed by us) must not be hidden by
# an automatic reinitialisation: the server then stays down and the test fails
my $node = new_node('crash', conf => "restart_after_crash = off\n");

# 6 tenants x 1000 rows of 64 features; ORDER BY makes every run
# bit-identical.  The first half: shop0..shop2.
my $source = q{SELECT tenant, features, label FROM rows ORDER BY tenant, id};
my $half = q{SELECT tenant, features, label FROM rows WHERE tenant IN ('shop0', 'shop1', 'shop2') ORDER BY tenant, id};
$node->safe_psql(
	'postgres', q{
	CREATE TABLE rows AS
	SELECT i AS id, 'shop' || (i % 6) AS tenant,
	       ARRAY(SELECT sin(i * j + (i % 6)) FROM generate_series(1, 64) j)::real[] AS features,
	       (i + i / 7) % 5 AS label
	FROM generate_series(1, 6000) i;
	SELECT floral_create_model('m', '{64,256,5}', 'classification', 4, 8, '{"seed": 7}');
	SELECT floral_create_model('r', '{64,256,5}', 'classification', 4, 8, '{"seed": 7}');
});

# the training of the crashed round lasts a few seconds; the other rounds
# are short
my $long_opts  = '{"epochs": 80, "lr": 0.05}';
my $short_opts = '{"epochs": 1, "lr": 0.05}';

sub train_sql
{
	my ($model, $opts, $src) = @_;
	$src //= $source;
	return "SELECT count(*) FROM floral_train('$model', \$q\$$src\$q\$, '$opts')";
}

# a training call that skips tenants: (tenants trained, the NOTICE)
sub train_skipping
{
	my ($model, $opts, $src) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', train_sql($model, $opts, $src));
	die "training $model failed: $err" if $ret != 0;
	return ($out, $err);
}

# the pending calls of a model: call, chunk, tenants, examples and the sums
sub pending
{
	my ($model) = @_;
	return $node->safe_psql(
		'postgres', qq{
	SELECT coalesce(string_agg(round || ':' || call || ':' || chunk || ':' || tenants || ':' || examples || ':' || md5(sums),
	                           ' ' ORDER BY round, call, chunk), 'none')
	  FROM floral.contributions WHERE model = '$model'});
}

# one whole round, committed
sub round
{
	my ($model, $opts) = @_;
	is($node->safe_psql('postgres', train_sql($model, $opts)), '6', "$model: 6 tenants trained");
	return $node->safe_psql('postgres', "SELECT floral_aggregate('$model')");
}

# everything logged about a model: its round, every kept round's params
# (digest), tenants/examples of each round, and the tenants' private state
sub digest
{
	my ($model) = @_;
	return $node->safe_psql(
		'postgres', qq{
	SELECT (SELECT round FROM floral.models WHERE name = '$model') || ' | ' ||
	       (SELECT string_agg(round || ':' || md5(params::text) || ':' || coalesce(tenants, 0) || ':' || coalesce(examples, 0), ' ' ORDER BY round)
	          FROM floral.rounds WHERE model = '$model') || ' | ' ||
	       (SELECT md5(string_agg(tenant || logits::text || coalesce(start_round, -1) || coalesce(start_logits::text, '') ||
	                              coalesce(last_round, -1) || examples, ',' ORDER BY tenant))
	          FROM floral.tenants WHERE model = '$model')});
}

sub params_of
{
	my ($model, $round) = @_;
	return $node->safe_psql('postgres',
		"SELECT params::text FROM floral.rounds WHERE model = '$model' AND round = $round");
}

sub logits_of
{
	my ($model) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(tenant || '=' || logits::text, ' ' ORDER BY tenant) FROM floral.tenants WHERE model = '$model'");
}

# wait (up to 40 s) until a query returns what is wanted
sub poll
{
	my ($sql, $want) = @_;
	return defined wait_for($node, $sql, $want, timeout => 40, interval => 0.02);
}

# SIGKILL the postmaster and, at once, all of its children; wait until they
# are gone, then restart (crash recovery) and check the log says so
sub crash_and_restart
{
	my ($what) = @_;
	my $pidfile = $node->data_dir . '/postmaster.pid';
	open my $fh, '<', $pidfile or die "cannot open $pidfile: $!";
	my $pm = <$fh>;
	close $fh;
	chomp $pm;
	my @children;
	opendir my $proc, '/proc' or die "cannot read /proc: $!";
	for my $p (grep { /^\d+$/ } readdir $proc)
	{
		open my $st, '<', "/proc/$p/stat" or next;
		my $line = <$st>;
		close $st;
		next unless defined $line;
		# pid (comm) state ppid ...; comm may contain spaces
		push @children, $p if $line =~ /\)\s+\S+\s+(\d+)/ && $1 == $pm;
	}
	closedir $proc;
	ok(@children >= 3, "$what: the postmaster ($pm) has children (" . scalar(@children) . ")");

	$node->kill9;    # SIGKILL to the postmaster pid recorded at start
	kill 'KILL', @children;
	for (1 .. 1000)
	{
		last unless grep { kill(0, $_) } ($pm, @children);
		usleep(10_000);
	}
	ok(!(grep { kill(0, $_) } ($pm, @children)), "$what: postmaster and children are gone");

	my $offset = -s $node->logfile;
	$node->start;
	ok( $node->log_contains(
			qr/database system was not properly shut down; automatic recovery in progress|redo done/,
			$offset),
		"$what: the restart ran crash recovery");
	return;
}

########################################################################
# The reference: r, never crashed.  Round 0 short, round 1 long, rounds 2
# and 3 short.
########################################################################
my $t_ref = time;
is(round('r', $short_opts), '1', 'r: round 0 -> 1');
my $t_long = time;
is($node->safe_psql('postgres', train_sql('r', $long_opts, $half)), '3', 'r: round 1, first call: shop0..shop2 trained');
my ($r_trained, $r_notice) = train_skipping('r', $long_opts);
is($r_trained, '3', 'r: round 1, second call over all six tenants: 3 trained');
like($r_notice, qr/skipped 3 tenant\(s\) that already contributed to round 1 of model "r"/,
	'r: the second call skipped the 3 tenants of the first');
is($node->safe_psql('postgres', q{SELECT floral_aggregate('r')}), '2', 'r: round 1 -> 2 (the long round)');
$t_long = time - $t_long;
is($node->safe_psql('postgres', q{SELECT tenants || ' ' || examples FROM floral.rounds WHERE model = 'r' AND round = 2}),
	'6 6000', 'r: round 2 merged 6 tenants and 6000 examples from the two calls');
my $r_logits_round1 = logits_of('r');
is(round('r', $short_opts), '3', 'r: round 2 -> 3');
is(round('r', $short_opts), '4', 'r: round 3 -> 4');
my $r_digest = digest('r');
note sprintf('reference rounds took %.1f s (the long round %.1f s)', time - $t_ref, $t_long);

########################################################################
# a. kill -9 during training
########################################################################
is(round('m', $short_opts), '1', 'm: round 0 -> 1');
is($node->safe_psql('postgres', train_sql('m', $long_opts, $half)), '3',
	'm: round 1, first call: shop0..shop2 trained (committed)');
my $first_call = pending('m');
like($first_call, qr/^1:\d+:0:3:3000:[0-9a-f]{32}$/, 'm: one row of sums pending for round 1: 3 tenants, 3000 examples');
my $before = digest('m');
like($before, qr/^1 \| /, 'm is at round 1 before the crash');

# the call over all six tenants, killed while it trains the second half
my $call = background_call($node, train_sql('m', $long_opts));
# wait until it is half-way through the tenants it trains: shop3 has written
# its (uncommitted) new state, shop4 is training
ok(poll(q{SELECT count(*) > 0 FROM floral.progress WHERE model = 'm' AND command = 'train' AND tenant_number >= 5}, 't'),
	'a: the second call shows up in floral.progress, at tenant 5 or later');
# an aggregation queued behind it: it waits for the training's shared lock
my $aggregation = background_call($node, q{SELECT floral_aggregate('m')});
ok(poll(q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted}, '1'),
	'a: an aggregation waits behind the training call');
my $progress = $node->safe_psql('postgres',
	q{SELECT tenant_number || '/' || tenants || ' epoch ' || epoch || '/' || epochs FROM floral.progress WHERE model = 'm'});
ok($progress ne '', "a: the training is still running when killed (tenant $progress)");

crash_and_restart('a');
# their server is gone: how psql ends does not matter, only what it printed
eval { finish_call($_) } for $call, $aggregation;
(my $out = $call->{out}) =~ s/\n\z//;
(my $outa = $aggregation->{out}) =~ s/\n\z//;
isnt($out, '3', 'a: the killed training call did not complete');
like($call->{err}, qr/server closed the connection|terminat|connection to server/i,
	'a: the training client lost its server');
isnt($outa, '2', 'a: the queued aggregation did not complete');

is(digest('m'), $before, 'a: after the restart m is exactly as before the killed call (round 1, params, tenants)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.rounds WHERE model = 'm' AND round > 1}),
	'0', 'a: no row for round 2');
is(pending('m'), $first_call,
	'a: exactly the first call\'s row of sums is pending (logged, it survived; the killed call left nothing)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.progress}),
	'0', 'a: no stale progress slot after the restart');
is(digest('r'), $r_digest, 'a: the reference model is untouched by the crash');

# re-run the killed call: it trains the second half and skips the first
my ($m_trained, $m_notice) = train_skipping('m', $long_opts);
is($m_trained, '3', 'a: the re-run of the killed call trains 3 tenants');
like($m_notice, qr/skipped 3 tenant\(s\) that already contributed to round 1 of model "m"/,
	'a: and skips the 3 that the first call trained');
is($node->safe_psql('postgres', q{SELECT floral_aggregate('m')}), '2', 'a: round 1 aggregates into round 2');
is($node->safe_psql('postgres', q{SELECT tenants || ' ' || examples FROM floral.rounds WHERE model = 'm' AND round = 2}),
	'6 6000', 'a: round 2 merged 6 tenants and 6000 examples (nothing counted twice)');
ok(params_of('m', 2) eq params_of('r', 2),
	'a: round 2 of m is bit-identical to round 2 of the never-crashed reference');
is(logits_of('m'), $r_logits_round1,
	'a: tenants\' mixture logits equal the reference\'s after its round 1');

########################################################################
# b. kill -9 during aggregation
########################################################################
# uncommitted: the aggregation has written round 3 but not committed
is($node->safe_psql('postgres', train_sql('m', $short_opts)), '6', 'b: round 2 trained');
$before = digest('m');
my $round2_call = pending('m');
like($round2_call, qr/^2:\d+:0:6:6000:[0-9a-f]{32}$/, 'b: one row of sums pending for round 2');
my $s = session($node);
$s->query_safe('BEGIN');
is($s->query_safe(q{SELECT floral_aggregate('m')}), '3', 'b: the open transaction aggregated into round 3');
is($s->query_safe(q{SELECT round FROM floral.models WHERE name = 'm'}), '3',
	'b: inside the transaction the model is at round 3');
is($node->safe_psql('postgres', q{SELECT round FROM floral.models WHERE name = 'm'}), '2',
	'b: other sessions still see round 2');
crash_and_restart('b (uncommitted aggregation)');
session_close($s);

is(digest('m'), $before, 'b: after the restart m is exactly at round 2 (round, params, tenants)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.rounds WHERE model = 'm' AND round = 3}),
	'0', 'b: no row for round 3');
is(pending('m'), $round2_call, 'b: the round\'s contribution is pending again, as before the aggregation');

# the tenants are not trained twice: their contribution stands
my ($b_trained, $b_notice) = train_skipping('m', $short_opts);
is($b_trained, '0', 'b: training round 2 again after the crash trains no tenant');
like($b_notice, qr/skipped 6 tenant\(s\) that already contributed to round 2 of model "m"/,
	'b: it skips the 6 tenants whose contribution survived the crash');
is(pending('m'), $round2_call, 'b: and stores nothing');

# finish the round
is($node->safe_psql('postgres', q{SELECT floral_aggregate('m')}), '3', 'b: aggregating again gives round 3');
is($node->safe_psql('postgres', q{SELECT tenants || ' ' || examples FROM floral.rounds WHERE model = 'm' AND round = 3}),
	'6 6000', 'b: round 3 merged 6 tenants and 6000 examples');
ok(params_of('m', 3) eq params_of('r', 3), 'b: round 3 of m is bit-identical to the reference');

# committed: aggregate, commit, crash at once
is($node->safe_psql('postgres', train_sql('m', $short_opts)), '6', 'b: round 3 trained');
is($node->safe_psql('postgres', q{SELECT floral_aggregate('m')}), '4', 'b: round 3 aggregated and committed');
$before = digest('m');
crash_and_restart('b (committed aggregation)');
is(digest('m'), $before, 'b: the committed round 4 survives the crash (round, params, tenants)');
is(pending('m'), 'none', 'b: the contributions it merged stay retired');
ok(params_of('m', 4) eq params_of('r', 4), 'b: round 4 of m is bit-identical to the reference');
is(digest('m'), digest('r'), 'b: m and r are in the same state, round by round');

# and the next round works
is($node->safe_psql('postgres', train_sql('m', $short_opts)), '6', 'b: round 4 trained after the crash');
is($node->safe_psql('postgres', q{SELECT floral_aggregate('m')}), '5', 'b: round 4 aggregated into round 5');

# never in between: every kept round of m has a full, finite parameter vector
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FILTER (WHERE floral.tensor_shape(r.params) <> ARRAY[s.n]
	                          OR floral.tensor_norm(r.params) IS NULL
	                          OR floral.tensor_norm(r.params) = 'Infinity'::float8)
	       || ' of ' || count(*)
	FROM floral.rounds r,
	     (SELECT sum(parameters)::int AS n FROM floral_layers('m')) s
	WHERE r.model = 'm'}), '0 of 6',
	'every kept round of m has the full parameter count and finite values');

$node->stop;
note sprintf('total %.1f s', time - $t0);
done_testing();
