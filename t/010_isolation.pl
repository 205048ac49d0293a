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
# Concurrent sessions are psql processes kept open with background_psql().
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('iso');
$node->init;
$node->append_conf('postgresql.conf',
	PostgreSQL::Test::Utils::slurp_file('sql/regress.conf'));
# long, so that a deadlock (detected only after this timeout) is told apart
# from an error raised at once
$node->append_conf('postgresql.conf', "deadlock_timeout = '10s'");
$node->start;

# ---------------------------------------------------------------- helpers

# a long-lived session (one backend) that reports errors with their SQLSTATE
# and carries on after them
sub session
{
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	$s->query_safe('\set VERBOSITY verbose');
	return $s;
}

# run SQL in a session and wait for it; returns (stdout, stderr)
sub run_sql
{
	my ($s, $sql) = @_;
	$s->{stderr} = '';
	my $out = $s->query($sql);
	return ($out, $s->{stderr});
}

# run SQL that must not fail; returns its output
sub ok_sql
{
	my ($s, $sql) = @_;
	my ($out, $err) = run_sql($s, $sql);
	die "\"$sql\" failed: $err" if $err =~ /ERROR/;
	return $out;
}

# send SQL without waiting for it to finish (wait_sql collects it)
sub send_sql
{
	my ($s, $sql) = @_;
	$s->{stderr} = '';
	my $early = $s->query_until(qr/__floral_sent__\n/, "\\echo __floral_sent__\n$sql;\n");
	# whatever arrived along with the marker is the statement's already
	($s->{floral_early} = $early) =~ s/^.*?__floral_sent__\n//s;
}

# wait for what send_sql sent; returns (stdout, stderr) since it was sent
sub wait_sql
{
	my ($s) = @_;
	my $out = $s->{floral_early} . $s->query('');
	$out =~ s/\n+$//;
	return ($out, $s->{stderr});
}

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

# one statement in a new session; returns its output
sub val { return $node->safe_psql('postgres', $_[0]); }

# 40 rows for each of the tenants t0 .. t3
$node->safe_psql('postgres', q{
	CREATE EXTENSION floral;
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
	val("SELECT floral_create_model('$model', '{3,8,3}', 'classification', 2, 1, '{\"seed\": 3}')");
}

# ---------------------------------------------------------------- a. stale predictions
{
	create_model('ma');
	val(train_sql('ma', 't0') . "; SELECT floral_aggregate('ma')");
	my $predict = q{SELECT floral_predict_proba('ma', 't0', '{0.5, -0.2, 0.9}')};

	my $a = session();
	my $round1 = ok_sql($a, $predict);
	is($round1, val($predict), 'a: A predicts like a fresh session at round 1');

	ok_sql($a, 'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1');
	val(train_sql('ma', 't0') . "; SELECT floral_aggregate('ma')");
	my $round2 = val($predict);
	isnt($round2, $round1, 'a: round 2 predicts differently');

	# A's snapshot still shows round 1 in the catalog (reading it also makes
	# A process the invalidation that round 2 sent) ...
	is(ok_sql($a, q{SELECT round FROM floral.models WHERE name = 'ma'}),
		'1', 'a: inside its REPEATABLE READ transaction A reads round 1 from the catalog');
	# ... but the cache is read and checked under the newest snapshot, so
	# prediction uses round 2 already inside the transaction (like the
	# catalog caches), and never keeps a round-1 copy as if it were current.
	is(ok_sql($a, $predict), $round2,
		'a: inside the transaction A predicts with the newest committed round (2)');
	ok_sql($a, 'COMMIT');
	my $after = ok_sql($a, $predict);
	is($after, $round2, 'a: after COMMIT A predicts like a fresh session at round 2');
	isnt($after, $round1, 'a: after COMMIT A no longer predicts with round 1');
	# the same when the invalidation arrives through another catalog table
	ok_sql($a, 'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1');
	val(train_sql('ma', 't0') . "; SELECT floral_aggregate('ma')");
	ok_sql($a, q{SELECT count(*) FROM floral.tenants});
	ok_sql($a, $predict);
	ok_sql($a, 'COMMIT');
	is(ok_sql($a, $predict), val($predict),
		'a: after a second such transaction A predicts like a fresh session at round 3');
	$a->quit;
}

# ---------------------------------------------------------------- b. no deadlock
{
	create_model('mb');
	my %s = (t0 => session(), t1 => session());
	for my $t (sort keys %s)
	{
		ok_sql($s{$t}, 'BEGIN');
		is(ok_sql($s{$t}, train_sql('mb', $t)), '1', "b: $t trained in an open transaction");
	}
	# both aggregate at once, then commit
	my $start = time;
	send_sql($s{$_}, "SELECT floral_aggregate('mb');\nCOMMIT") for sort keys %s;
	my %res;
	$res{$_} = [ wait_sql($s{$_}) ] for sort keys %s;
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
		is(ok_sql($s{$t}, train_sql('mb', $t)), '1', "b: retry: $t trained again");
		like(ok_sql($s{$t}, "SELECT floral_aggregate('mb')"), qr/^\d+$/, "b: retry: $t aggregated");
	}
	$_->quit for values %s;
	is( val(q{SELECT sum(tenants) || ' tenants, ' || sum(examples) || ' examples'
	        FROM floral.rounds WHERE model = 'mb' AND round > 0}),
		'2 tenants, 80 examples', 'b: every tenant merged exactly once');
	is( val(q{SELECT round FROM floral.models WHERE name = 'mb'}),
		val(q{SELECT max(round) FROM floral.rounds WHERE model = 'mb'}), 'b: the model is at its last round');
	is(val(q{SELECT count(*) FROM floral.contributions WHERE model = 'mb'}),
		'0', 'b: nothing left pending');
}

# ---------------------------------------------------------------- c. waiting merge
for my $level ('READ COMMITTED', 'REPEATABLE READ', 'SERIALIZABLE')
{
	(my $model = "mc_$level") =~ s/ /_/g;
	$model = lc $model;
	create_model($model);
	val(train_sql($model, 't0'));

	my $trainer = session();
	my $aggregator = session();
	ok_sql($trainer, 'BEGIN');
	is(ok_sql($trainer, train_sql($model, 't1')), '1', "c ($level): t1 trained, transaction open");
	my $pid = ok_sql($aggregator, 'SELECT pg_backend_pid()');
	ok_sql($aggregator, "BEGIN ISOLATION LEVEL $level; SELECT 1");
	send_sql($aggregator, "SELECT floral_aggregate('$model')");
	ok(wait_for_lock($pid), "c ($level): the aggregation waits for the training");
	ok_sql($trainer, 'COMMIT');
	my ($out, $err) = wait_sql($aggregator);
	is($out, '1', "c ($level): the aggregation made round 1");
	unlike($err, qr/ERROR/, "c ($level): the aggregation raised no error");
	(undef, $err) = run_sql($aggregator, 'COMMIT');
	unlike($err, qr/ERROR/, "c ($level): the aggregation committed");
	$trainer->quit;
	$aggregator->quit;

	is( val(qq(SELECT tenants || ' tenants, ' || examples || ' examples' FROM floral.rounds
	       WHERE model = '$model' AND round = 1)),
		'2 tenants, 80 examples',
		"c ($level): round 1 includes the training committed while the merge waited");
	is(val(qq(SELECT count(*) FROM floral.contributions WHERE model = '$model')),
		'0', "c ($level): no contribution left over for the merged round");
}

# ---------------------------------------------------------------- d. stale trainer
for my $level ('READ COMMITTED', 'REPEATABLE READ', 'SERIALIZABLE')
{
	(my $model = "md_$level") =~ s/ /_/g;
	$model = lc $model;
	create_model($model);
	val(train_sql($model, 't0'));

	my $trainer = session();
	my $aggregator = session();
	my $pid = ok_sql($trainer, 'SELECT pg_backend_pid()');
	ok_sql($trainer, "BEGIN ISOLATION LEVEL $level; SELECT 1");
	ok_sql($aggregator, 'BEGIN');
	is(ok_sql($aggregator, "SELECT floral_aggregate('$model')"), '1',
		"d ($level): round 1 merged, transaction open");
	send_sql($trainer, train_sql($model, 't1', '(SELECT source_read())'));
	ok(wait_for_lock($pid), "d ($level): the training call waits for the aggregation");
	ok_sql($aggregator, 'COMMIT');
	my ($out, $err) = wait_sql($trainer);
	run_sql($trainer, 'COMMIT');
	$trainer->quit;
	$aggregator->quit;

	if ($level eq 'READ COMMITTED')
	{
		is($out, '1', "d ($level): the training call trained");
		like($err, qr/the training source was read/, "d ($level): it read its source");
		unlike($err, qr/ERROR/, "d ($level): without an error");
		is( val(qq(SELECT string_agg(round || ':' || tenants, ',') FROM floral.contributions
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
		is(val(qq(SELECT count(*) FROM floral.contributions WHERE model = '$model')),
			'0', "d ($level): it left no contribution");
		is(val(qq(SELECT count(*) FROM floral.tenants WHERE model = '$model' AND tenant = 't1')),
			'0', "d ($level): and no tenant state");
	}
}

# ---------------------------------------------------------------- e. discard, rollback
{
	create_model('me');
	val(train_sql('me', 't0') . "; SELECT floral_aggregate('me'); " . train_sql('me', 't1'));
	my $state = q{SELECT (SELECT round FROM floral.models WHERE name = 'me') || ' / ' ||
	                     (SELECT string_agg(round::text, ',' ORDER BY round) FROM floral.rounds WHERE model = 'me') || ' / ' ||
	                     coalesce((SELECT string_agg(round || ':' || tenants, ',') FROM floral.contributions WHERE model = 'me'), '')};
	is(val($state), '1 / 0,1 / 1:1', 'e: round 1 current, rounds 0 and 1 kept, one call pending');

	my $s = session();
	for my $call ("floral_discard('me')", "floral_rollback('me', 0)")
	{
		ok_sql($s, 'BEGIN ISOLATION LEVEL REPEATABLE READ');
		my ($out, $err) = run_sql($s, "SELECT $call");
		like($err, qr/ERROR:  0A000: .* must run in a READ COMMITTED transaction.*HINT:/s,
			"e: $call under REPEATABLE READ raises 0A000 with a hint");
		run_sql($s, 'COMMIT');
		is(val($state), '1 / 0,1 / 1:1', "e: $call changed nothing");
	}
	# and in READ COMMITTED they work
	is(ok_sql($s, "SELECT floral_discard('me')"), '1', 'e: floral_discard works in READ COMMITTED');
	is(ok_sql($s, "SELECT floral_rollback('me', 0)"), '0', 'e: floral_rollback works in READ COMMITTED');
	$s->quit;
	is(val($state), '0 / 0 / ', 'e: and they did change the model');
}

# ---------------------------------------------------------------- f. memory bound
{
	# four models of about 160 kB of parameters (some 360 kB of cache) each,
	# trained one round so that their adaptors matter
	val(q{CREATE TABLE rows100 AS
	      SELECT 'pinned' AS tenant, array_agg(sin(i * j)::real ORDER BY j) AS features, i % 10 AS label
	        FROM generate_series(1, 32) i, generate_series(1, 100) j GROUP BY i});
	for my $k (1 .. 4)
	{
		val("SELECT floral_create_model('mf$k', '{100,200,100}', 'classification', 2, 1, '{\"seed\": $k}');
		     SELECT count(*) FROM floral_train('mf$k', 'SELECT tenant, features, label FROM rows100');
		     SELECT floral_aggregate('mf$k');
		     SELECT floral_set_mixture('mf$k', 'pinned', '{0.9,0.1}')");
	}
	my $x = '(SELECT array_agg(sin(i)::real) FROM generate_series(1, 100) i)';
	my $sum_cache = q{SELECT count(*) FILTER (WHERE name = 'floral cached model') || ' models, ' ||
	                         coalesce(sum(total_bytes), 0) || ' bytes'
	                    FROM pg_backend_memory_contexts
	                   WHERE name IN ('floral cached model', 'floral cached tenants')};

	my $small = session();
	my $default = session();
	run_sql($small, q{SET floral.cache_memory = '1MB'});
	is((run_sql($small, 'SHOW floral.cache_memory'))[0], '1MB', 'f: floral.cache_memory set to 1MB');
	my (@small, @default);
	for my $pass (1 .. 3)
	{
		for my $k (1 .. 4)
		{
			for my $tenant ('pinned', 'nobody')
			{
				my $sql = "SELECT floral_predict_proba('mf$k', '$tenant', $x)";
				push @small, ok_sql($small, $sql);
				push @default, ok_sql($default, $sql);
			}
		}
	}
	is_deeply(\@small, \@default,
		'f: predictions alternating over 4 models are the same with a 1MB cache as with the default');
	isnt($small[0], $small[1], 'f: the pinned tenant predicts differently from a tenant without a row');
	isnt($small[0], $small[2], 'f: the models predict differently');

	my ($models, $bytes) = ok_sql($small, $sum_cache) =~ /^(\d+) models, (\d+) bytes$/;
	cmp_ok($models, '<', 4, "f: the 1MB cache dropped models ($models cached)");
	cmp_ok($bytes, '<=', 1024 * 1024, "f: the 1MB cache holds at most 1MB ($bytes bytes)");
	($models) = ok_sql($default, $sum_cache) =~ /^(\d+) models/;
	is($models, 4, 'f: the default cache keeps all four models');

	# 5000 tenants without a row: the uniform mixture, and no cache growth
	my ($before) = ok_sql($default, $sum_cache) =~ /(\d+) bytes/;
	is( ok_sql($default, "SELECT count(DISTINCT floral_predict_proba('mf1', 'unknown' || i, $x))
	                        FROM generate_series(1, 5000) i"),
		'1', 'f: 5000 tenants without a row predict alike');
	is(ok_sql($default, "SELECT floral_predict_proba('mf1', 'unknown42', $x)"),
		$default[1], 'f: like any other tenant without a row');
	my ($grown) = ok_sql($default, $sum_cache) =~ /(\d+) bytes/;
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
	val(train_sql('mg', 't0'));
	val(q{CREATE TABLE retired (round int);
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
	is(val(q{SELECT string_agg(round::text, ',') FROM retired}), '0',
		'g: the trigger saw the retired contribution');
	val(q{DROP TRIGGER note_retired ON floral.contributions});
}

$node->stop;
done_testing();
