# Consistency under every isolation level and every cache path.
#
#  a. A backend whose cache was refreshed inside an old REPEATABLE READ
#     transaction predicts with the newest round, inside and after it.
#  b. Two transactions that each train their own tenant and then aggregate
#     never deadlock: an aggregation that would have to wait for the other's
#     training fails at once (55P03), and a retry in transactions of their
#     own adds up.
#  c. An aggregation that waited for a training call merges it, whatever
#     the aggregator's isolation level, and leaves nothing behind.
#  d. A REPEATABLE READ or SERIALIZABLE training call whose snapshot
#     predates an aggregation raises 40001 instead of training on a round
#     that was merged; under READ COMMITTED it trains on the new round.
#  e. floral_discard and floral_rollback refuse REPEATABLE READ (0A000).
#  f. floral.cache_memory bounds the cache without changing a prediction,
#     and tenants without a row take no cache memory.
#  g. What aggregation retires with the newest snapshot fires AFTER
#     triggers, also from a PL/pgSQL assignment.
#
# Concurrent sessions are psql processes kept open (FloralTest::session),
# which report errors with their SQLSTATE and carry on after them.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

# long, so that a deadlock (detected only after this timeout) is told apart
# from an error raised at once
my $node = new_node('iso', conf => "deadlock_timeout = '10s'");

# ---------------------------------------------------------------- helpers

my %iso = (on_error_stop => 0, verbose => 1);

sub wait_for_lock
{
	my ($pid) = @_;
	return $node->poll_query_until('postgres',
		"SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $pid");
}

# train one tenant; $where is more of the source's WHERE clause
sub train_sql
{
	my ($model, $tenant, $where) = @_;
	$where = defined $where ? " AND $where" : '';
	return "SELECT count(*) FROM floral_train('$model', "
	  . "'SELECT tenant, features, label FROM rows WHERE tenant = ''$tenant''$where')";
}

# 40 rows for each of the tenants t0 .. t3
$node->safe_psql('postgres', q{
	CREATE TABLE rows AS
	SELECT 't' || (i % 4) AS tenant, ARRAY[sin(i), cos(i), sin(3 * i)]::real[] AS features,
	       i % 3 AS label
	  FROM generate_series(1, 160) i;
	-- a source that says when it is read
	CREATE FUNCTION source_read() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
	BEGIN
		RAISE NOTICE 'the training source was read';
		RETURN true;
	END $$;
});

sub create_model
{
	my ($model) = @_;
	sql($node, "SELECT floral_create_model('$model', '{3,8,3}', 'classification', 2, 1, '{\"seed\": 3}')");
}

# ---------------------------------------------------------------- a. stale predictions
{
	create_model('ma');
	sql($node, train_sql('ma', 't0') . "; SELECT floral_aggregate('ma')");
	my $predict = q{SELECT floral_predict_proba('ma', 't0', '{0.5, -0.2, 0.9}')};

	my $a = session($node, %iso);
	my $round1 = session_ok($a, $predict);
	is($round1, sql($node, $predict), 'a: A predicts like a fresh session at round 1');

	session_ok($a, 'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1');
	sql($node, train_sql('ma', 't0') . "; SELECT floral_aggregate('ma')");
	my $round2 = sql($node, $predict);
	isnt($round2, $round1, 'a: round 2 predicts differently');

	# A's snapshot still shows round 1 in the catalog (reading it also makes
	# A process the invalidation that round 2 sent) ...
	is(session_ok($a, q{SELECT round FROM floral.models WHERE name = 'ma'}),
		'1', 'a: inside its REPEATABLE READ transaction A reads round 1 from the catalog');
	# ... but the cache is read and checked under the newest snapshot, so
	# prediction uses round 2 already inside the transaction (like the
	# catalog caches), and never keeps a round-1 copy as if it were current.
	is(session_ok($a, $predict), $round2,
		'a: inside the transaction A predicts with the newest committed round (2)');
	session_ok($a, 'COMMIT');
	my $after = session_ok($a, $predict);
	is($after, $round2, 'a: after COMMIT A predicts like a fresh session at round 2');
	isnt($after, $round1, 'a: after COMMIT A no longer predicts with round 1');
	# the same when the invalidation arrives through another catalog table
	session_ok($a, 'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1');
	sql($node, train_sql('ma', 't0') . "; SELECT floral_aggregate('ma')");
	session_ok($a, q{SELECT count(*) FROM floral.tenants});
	session_ok($a, $predict);
	session_ok($a, 'COMMIT');
	is(session_ok($a, $predict), sql($node, $predict),
		'a: after a second such transaction A predicts like a fresh session at round 3');
	$a->quit;
}

# ---------------------------------------------------------------- b. no deadlock
{
	create_model('mb');
	my %s = (t0 => session($node, %iso), t1 => session($node, %iso));
	for my $t (sort keys %s)
	{
		session_ok($s{$t}, 'BEGIN');
		is(session_ok($s{$t}, train_sql('mb', $t)), '1', "b: $t trained in an open transaction");
	}
	# both aggregate at once, then commit
	my $start = time;
	session_send($s{$_}, "SELECT floral_aggregate('mb');\nCOMMIT") for sort keys %s;
	my %res;
	$res{$_} = [ session_wait($s{$_}) ] for sort keys %s;
	my $elapsed = time - $start;
	cmp_ok($elapsed, '<', 5, "b: both finished at once ($elapsed s), well under deadlock_timeout");

	my @failed;
	for my $t (sort keys %s)
	{
		my ($out, $err) = @{ $res{$t} };
		unlike($err, qr/deadlock detected/, "b: no deadlock for $t");
		if ($err =~ /ERROR/)
		{
			like($err, qr/ERROR:  55P03: .*HINT:  Commit the training first, then aggregate in a transaction of its own\./s,
				"b: $t failed at once with 55P03 and the hint");
			push @failed, $t;
		}
		else
		{
			like($out, qr/^\d+$/, "b: $t aggregated and committed (round $out)");
		}
	}
	ok(@failed >= 1, "b: at least one of the two could not upgrade its lock (@failed)");
	# the failed ones retry, each statement in a transaction of its own
	for my $t (@failed)
	{
		is(session_ok($s{$t}, train_sql('mb', $t)), '1', "b: retry: $t trained again");
		like(session_ok($s{$t}, "SELECT floral_aggregate('mb')"), qr/^\d+$/, "b: retry: $t aggregated");
	}
	$_->quit for values %s;
	is( sql($node, q{SELECT sum(tenants) || ' tenants, ' || sum(examples) || ' examples'
	        FROM floral.rounds WHERE model = 'mb' AND round > 0}),
		'2 tenants, 80 examples', 'b: every tenant merged exactly once');
	is( sql($node, q{SELECT round FROM floral.models WHERE name = 'mb'}),
		sql($node, q{SELECT max(round) FROM floral.rounds WHERE model = 'mb'}), 'b: the model is at its last round');
	is(sql($node, q{SELECT count(*) FROM floral.contributions WHERE model = 'mb'}),
		'0', 'b: nothing left pending');
}

# A model of its own for an isolation level (prefix_level), which has
# trained t0, and two sessions: a trainer and an aggregator.
sub trainer_and_aggregator
{
	my ($prefix, $level) = @_;
	(my $model = lc "${prefix}_$level") =~ s/ /_/g;
	create_model($model);
	sql($node, train_sql($model, 't0'));
	return ($model, session($node, %iso), session($node, %iso));
}

# ---------------------------------------------------------------- c. waiting merge
for my $level ('READ COMMITTED', 'REPEATABLE READ', 'SERIALIZABLE')
{
	my ($model, $trainer, $aggregator) = trainer_and_aggregator('mc', $level);
	session_ok($trainer, 'BEGIN');
	is(session_ok($trainer, train_sql($model, 't1')), '1', "c ($level): t1 trained, transaction open");
	my $pid = session_ok($aggregator, 'SELECT pg_backend_pid()');
	session_ok($aggregator, "BEGIN ISOLATION LEVEL $level; SELECT 1");
	session_send($aggregator, "SELECT floral_aggregate('$model')");
	ok(wait_for_lock($pid), "c ($level): the aggregation waits for the training");
	session_ok($trainer, 'COMMIT');
	my ($out, $err) = session_wait($aggregator);
	is($out, '1', "c ($level): the aggregation made round 1");
	unlike($err, qr/ERROR/, "c ($level): the aggregation raised no error");
	(undef, $err) = session_run($aggregator, 'COMMIT');
	unlike($err, qr/ERROR/, "c ($level): the aggregation committed");
	$trainer->quit;
	$aggregator->quit;

	is( sql($node, qq(SELECT tenants || ' tenants, ' || examples || ' examples' FROM floral.rounds
	       WHERE model = '$model' AND round = 1)),
		'2 tenants, 80 examples',
		"c ($level): round 1 includes the training committed while the merge waited");
	is(sql($node, qq(SELECT count(*) FROM floral.contributions WHERE model = '$model')),
		'0', "c ($level): no contribution left over for the merged round");
}

# ---------------------------------------------------------------- d. stale trainer
for my $level ('READ COMMITTED', 'REPEATABLE READ', 'SERIALIZABLE')
{
	my ($model, $trainer, $aggregator) = trainer_and_aggregator('md', $level);
	my $pid = session_ok($trainer, 'SELECT pg_backend_pid()');
	session_ok($trainer, "BEGIN ISOLATION LEVEL $level; SELECT 1");
	session_ok($aggregator, 'BEGIN');
	is(session_ok($aggregator, "SELECT floral_aggregate('$model')"), '1',
		"d ($level): round 1 merged, transaction open");
	session_send($trainer, train_sql($model, 't1', '(SELECT source_read())'));
	ok(wait_for_lock($pid), "d ($level): the training call waits for the aggregation");
	session_ok($aggregator, 'COMMIT');
	my ($out, $err) = session_wait($trainer);
	session_run($trainer, 'COMMIT');
	$trainer->quit;
	$aggregator->quit;

	if ($level eq 'READ COMMITTED')
	{
		is($out, '1', "d ($level): the training call trained");
		like($err, qr/the training source was read/, "d ($level): it read its source");
		unlike($err, qr/ERROR/, "d ($level): without an error");
		is( sql($node, qq(SELECT string_agg(round || ':' || tenants, ',') FROM floral.contributions
		       WHERE model = '$model')),
			'1:1', "d ($level): it trained for the new round 1");
	}
	else
	{
		like($err, qr/ERROR:  40001:/,
			"d ($level): the training call raised a serialization failure");
		# (a write referencing the model's row would fail too, but only
		# after a whole training on the merged round)
		unlike($err, qr/the training source was read/,
			"d ($level): before reading its source: nothing was trained on the merged round");
		is(sql($node, qq(SELECT count(*) FROM floral.contributions WHERE model = '$model')),
			'0', "d ($level): it left no contribution");
		is(sql($node, qq(SELECT count(*) FROM floral.tenants WHERE model = '$model' AND tenant = 't1')),
			'0', "d ($level): and no tenant state");
	}
}

# ---------------------------------------------------------------- e. discard, rollback
{
	create_model('me');
	sql($node, train_sql('me', 't0') . "; SELECT floral_aggregate('me'); " . train_sql('me', 't1'));
	my $state = q{SELECT (SELECT round FROM floral.models WHERE name = 'me') || ' / ' ||
	                     (SELECT string_agg(round::text, ',' ORDER BY round) FROM floral.rounds WHERE model = 'me') || ' / ' ||
	                     coalesce((SELECT string_agg(round || ':' || tenants, ',') FROM floral.contributions WHERE model = 'me'), '')};
	is(sql($node, $state), '1 / 0,1 / 1:1', 'e: round 1 current, rounds 0 and 1 kept, one call pending');

	my $s = session($node, %iso);
	for my $call ("floral_discard('me')", "floral_rollback('me', 0)")
	{
		session_ok($s, 'BEGIN ISOLATION LEVEL REPEATABLE READ');
		my ($out, $err) = session_run($s, "SELECT $call");
		like($err, qr/ERROR:  0A000: .* must run in a READ COMMITTED transaction.*HINT:/s,
			"e: $call under REPEATABLE READ raises 0A000 with a hint");
		session_run($s, 'COMMIT');
		is(sql($node, $state), '1 / 0,1 / 1:1', "e: $call changed nothing");
	}
	# and in READ COMMITTED they work
	is(session_ok($s, "SELECT floral_discard('me')"), '1', 'e: floral_discard works in READ COMMITTED');
	is(session_ok($s, "SELECT floral_rollback('me', 0)"), '0', 'e: floral_rollback works in READ COMMITTED');
	$s->quit;
	is(sql($node, $state), '0 / 0 / ', 'e: and they did change the model');
}

# ---------------------------------------------------------------- f. memory bound
{
	# four models of about 160 kB of parameters (some 360 kB of cache) each,
	# trained one round so that their adaptors matter
	sql($node, q{CREATE TABLE rows100 AS
	      SELECT 'pinned' AS tenant, array_agg(sin(i * j)::real ORDER BY j) AS features, i % 10 AS label
	        FROM generate_series(1, 32) i, generate_series(1, 100) j GROUP BY i});
	for my $k (1 .. 4)
	{
		sql($node, "SELECT floral_create_model('mf$k', '{100,200,100}', 'classification', 2, 1, '{\"seed\": $k}');
		     SELECT count(*) FROM floral_train('mf$k', 'SELECT tenant, features, label FROM rows100');
		     SELECT floral_aggregate('mf$k');
		     SELECT floral_set_mixture('mf$k', 'pinned', '{0.9,0.1}')");
	}
	my $x = '(SELECT array_agg(sin(i)::real) FROM generate_series(1, 100) i)';
	my $sum_cache = q{SELECT count(*) FILTER (WHERE name = 'floral cached model') || ' models, ' ||
	                         coalesce(sum(total_bytes), 0) || ' bytes'
	                    FROM pg_backend_memory_contexts
	                   WHERE name IN ('floral cached model', 'floral cached tenants')};

	my $small = session($node, %iso);
	my $default = session($node, %iso);
	session_run($small, q{SET floral.cache_memory = '1MB'});
	is((session_run($small, 'SHOW floral.cache_memory'))[0], '1MB', 'f: floral.cache_memory set to 1MB');
	my (@small, @default);
	for my $pass (1 .. 3)
	{
		for my $k (1 .. 4)
		{
			for my $tenant ('pinned', 'nobody')
			{
				my $sql = "SELECT floral_predict_proba('mf$k', '$tenant', $x)";
				push @small, session_ok($small, $sql);
				push @default, session_ok($default, $sql);
			}
		}
	}
	is_deeply(\@small, \@default,
		'f: predictions alternating over 4 models are the same with a 1MB cache as with the default');
	isnt($small[0], $small[1], 'f: the pinned tenant predicts differently from a tenant without a row');
	isnt($small[0], $small[2], 'f: the models predict differently');

	my ($models, $bytes) = session_ok($small, $sum_cache) =~ /^(\d+) models, (\d+) bytes$/;
	cmp_ok($models, '<', 4, "f: the 1MB cache dropped models ($models cached)");
	cmp_ok($bytes, '<=', 1024 * 1024, "f: the 1MB cache holds at most 1MB ($bytes bytes)");
	($models) = session_ok($default, $sum_cache) =~ /^(\d+) models/;
	is($models, 4, 'f: the default cache keeps all four models');

	# 5000 tenants without a row: the uniform mixture, and no cache growth
	my ($before) = session_ok($default, $sum_cache) =~ /(\d+) bytes/;
	is( session_ok($default, "SELECT count(DISTINCT floral_predict_proba('mf1', 'unknown' || i, $x))
	                        FROM generate_series(1, 5000) i"),
		'1', 'f: 5000 tenants without a row predict alike');
	is(session_ok($default, "SELECT floral_predict_proba('mf1', 'unknown42', $x)"),
		$default[1], 'f: like any other tenant without a row');
	my ($grown) = session_ok($default, $sum_cache) =~ /(\d+) bytes/;
	cmp_ok($grown - $before, '<', 16384,
		"f: tenants without a row did not grow the cache ($before -> $grown bytes)");
	$small->quit;
	$default->quit;
}

# ---------------------------------------------------------------- g. triggers
# What aggregation retires with the newest snapshot fires AFTER triggers
# like any statement, also when no outer query could take them (a PL/pgSQL
# assignment, as in floral_coordinator_step).
{
	create_model('mg');
	sql($node, train_sql('mg', 't0'));
	sql($node, q{CREATE TABLE retired (round int);
	      CREATE FUNCTION note_retired() RETURNS trigger LANGUAGE plpgsql AS $$
	      BEGIN
	          INSERT INTO public.retired VALUES (OLD.round);
	          RETURN NULL;
	      END $$;
	      CREATE TRIGGER note_retired AFTER DELETE ON floral.contributions
	          FOR EACH ROW EXECUTE FUNCTION note_retired()});
	my ($ret, $out, $err) = $node->psql('postgres',
		q{DO $$ DECLARE r int; BEGIN r := floral_aggregate('mg'); RAISE NOTICE 'merged into round %', r; END $$});
	is($ret, 0, 'g: floral_aggregate in a PL/pgSQL assignment with an AFTER trigger on what it retires');
	like($err, qr/merged into round 1/, 'g: it merged round 0 into round 1');
	is(sql($node, q{SELECT string_agg(round::text, ',') FROM retired}), '0',
		'g: the trigger saw the retired contribution');
	sql($node, q{DROP TRIGGER note_retired ON floral.contributions});
}

$node->stop;
done_testing();
