# Crash safety: kill -9 the server during training and during aggregation.
#
# floral.contributions is UNLOGGED, so a crash empties it; everything else
# (models, rounds, tenants with their start-of-round state) is logged.  After
# any crash a model must be at exactly the round it was at before (or, for a
# committed aggregation, the next one), never in between, and re-running the
# round must give bit-identically what the same training gives on a model
# that never crashed.
#
# The reference model "r" is trained first, with no crash in between any of
# its calls: round by round it gets exactly the training that "m" gets in
# the end.  "m" then goes through the crashes:
#
#   a. round 1: a committed training call of every tenant, then a second
#      (retry) call of the same training, killed while it runs, with an
#      aggregation queued behind it.  After the restart m is still at
#      round 1, the contributions are gone, the tenants' logged state is as
#      the first call left it, and re-running the round (train + aggregate)
#      gives r's round 2 bit for bit: the retry starts from the start-of-round
#      state kept in floral.tenants, so nothing is counted twice.
#   b. round 2: an aggregation that ran but is not committed when the server
#      dies leaves m at round 2 with no row for round 3; re-running the
#      round gives r's round 3.  An aggregation committed just before the
#      crash survives it (round 3), and the next round works too (r's 4).
#   c. every restart logs crash recovery, so a crash cannot be skipped silently.
#
# The server is killed the way a crash kills it: SIGKILL to the postmaster
# and at once to every one of its children (a backend busy in BLAS would not
# notice its postmaster's death until the call ends, and a new postmaster
# refuses to start while one of them is still attached to shared memory).
use strict;
use warnings;

use File::Basename qw(dirname);
use IPC::Run qw(start timer);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $t0 = time;
my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf',
	PostgreSQL::Test::Utils::slurp_file(dirname(__FILE__) . '/../sql/regress.conf'));
# a backend that crashed by itself (not killed by us) must not be hidden by
# an automatic reinitialisation: the server then stays down and the test fails
$node->append_conf('postgresql.conf', "restart_after_crash = off\n");
$node->start;

# 6 tenants x 1000 rows of 64 features; ORDER BY makes every run
# bit-identical
my $source = q{SELECT tenant, features, label FROM rows ORDER BY tenant, id};
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION floral;
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
	my ($model, $opts) = @_;
	return "SELECT count(*) FROM floral_train('$model', \$q\$$source\$q\$, '$opts')";
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

# a psql running one statement in the background
sub start_call
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	my $h = start(
		[ 'psql', '-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$out, '2>', \$err,
		timer($PostgreSQL::Test::Utils::timeout_default));
	return ($h, \$out, \$err);
}

sub poll
{
	my ($sql, $want) = @_;
	for (1 .. 2000)
	{
		return 1 if $node->safe_psql('postgres', $sql) eq $want;
		usleep(20_000);
	}
	return 0;
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
is(round('r', $long_opts), '2', 'r: round 1 -> 2 (the long round)');
$t_long = time - $t_long;
my $r_logits_round1 = logits_of('r');
is(round('r', $short_opts), '3', 'r: round 2 -> 3');
is(round('r', $short_opts), '4', 'r: round 3 -> 4');
my $r_digest = digest('r');
note sprintf('reference rounds took %.1f s (the long round %.1f s)', time - $t_ref, $t_long);

########################################################################
# a. kill -9 during training
########################################################################
is(round('m', $short_opts), '1', 'm: round 0 -> 1');
is($node->safe_psql('postgres', train_sql('m', $long_opts)), '6',
	'm: round 1 trained once (committed)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.contributions WHERE model = 'm' AND round = 1}),
	'6', 'm: 6 contributions pending for round 1');
my $before = digest('m');
like($before, qr/^1 \| /, 'm is at round 1 before the crash');

# the same training again (a retry of the round), killed while it runs
my ($h, $out, $err) = start_call(train_sql('m', $long_opts));
# wait until it is half-way: tenants 1 and 2 have written their (uncommitted)
# contributions and new tenant state
ok(poll(q{SELECT count(*) > 0 FROM floral.progress WHERE model = 'm' AND command = 'train' AND tenant_number >= 3}, 't'),
	'a: the retried training call shows up in floral.progress, at tenant 3 or later');
# an aggregation queued behind it: it waits for the training's shared lock
my ($ha, $outa, $erra) = start_call(q{SELECT floral_aggregate('m')});
ok(poll(q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted}, '1'),
	'a: an aggregation waits behind the training call');
my $progress = $node->safe_psql('postgres',
	q{SELECT tenant_number || '/' || tenants || ' epoch ' || epoch || '/' || epochs FROM floral.progress WHERE model = 'm'});
ok($progress ne '', "a: the training is still running when killed (tenant $progress)");

crash_and_restart('a');
eval { $h->finish; };
eval { $ha->finish; };
isnt($$out, '6', 'a: the killed training call did not complete');
like($$err, qr/server closed the connection|terminat|connection to server/i,
	'a: the training client lost its server');
isnt($$outa, '2', 'a: the queued aggregation did not complete');

is(digest('m'), $before, 'a: after the restart m is exactly as before the killed call (round 1, params, tenants)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.rounds WHERE model = 'm' AND round > 1}),
	'0', 'a: no row for round 2');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.contributions}),
	'0', 'a: floral.contributions is empty after crash recovery (UNLOGGED)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.progress}),
	'0', 'a: no stale progress slot after the restart');
is(digest('r'), $r_digest, 'a: the reference model is untouched by the crash');

# re-run the round: same training, then aggregation
is($node->safe_psql('postgres', train_sql('m', $long_opts)), '6', 'a: round 1 re-run: 6 tenants trained');
is($node->safe_psql('postgres', q{SELECT floral_aggregate('m')}), '2', 'a: round 1 re-run aggregates into round 2');
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
my $s = $node->background_psql('postgres');
$s->query_safe('BEGIN');
is($s->query_safe(q{SELECT floral_aggregate('m')}), '3', 'b: the open transaction aggregated into round 3');
is($s->query_safe(q{SELECT round FROM floral.models WHERE name = 'm'}), '3',
	'b: inside the transaction the model is at round 3');
is($node->safe_psql('postgres', q{SELECT round FROM floral.models WHERE name = 'm'}), '2',
	'b: other sessions still see round 2');
crash_and_restart('b (uncommitted aggregation)');
eval { $s->quit; };

is(digest('m'), $before, 'b: after the restart m is exactly at round 2 (round, params, tenants)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.rounds WHERE model = 'm' AND round = 3}),
	'0', 'b: no row for round 3');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.contributions}),
	'0', 'b: contributions are gone');
my $agg_err;
$node->psql('postgres', q{SELECT floral_aggregate('m')}, stderr => \$agg_err);
like($agg_err, qr/has no contributions/, 'b: aggregating right after the crash reports no contributions');

# re-run the round
is($node->safe_psql('postgres', train_sql('m', $short_opts)), '6', 'b: round 2 re-run: 6 tenants trained');
is($node->safe_psql('postgres', q{SELECT floral_aggregate('m')}), '3', 'b: round 2 re-run aggregates into round 3');
ok(params_of('m', 3) eq params_of('r', 3), 'b: round 3 of m is bit-identical to the reference');

# committed: aggregate, commit, crash at once
is($node->safe_psql('postgres', train_sql('m', $short_opts)), '6', 'b: round 3 trained');
is($node->safe_psql('postgres', q{SELECT floral_aggregate('m')}), '4', 'b: round 3 aggregated and committed');
$before = digest('m');
crash_and_restart('b (committed aggregation)');
is(digest('m'), $before, 'b: the committed round 4 survives the crash (round, params, tenants)');
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
