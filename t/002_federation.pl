# Federation end to end: one coordinator, three branch clusters.
#
# Every cluster is a separate PostgreSQL instance; branches reach the
# coordinator with dblink over its Unix socket, the coordinator never
# connects anywhere.  The test covers, in order:
#
#   a. FLoRAL and FedAvg (adaptors = 0) federated over the real transport
#      for a number of rounds; personalised FLoRAL beats FedAvg on the
#      branches' held-out rows;
#   b. the federated round-N parameters equal a single-database run over the
#      union of all branches' rows (same seeds and options) to float rounding;
#   c. every connection is opened by a branch;
#   d. a branch stopped mid-round: the round waits until the deadline, merges
#      with the other two, and the branch catches up when it comes back;
#   e. the coordinator stopped while branches have updates: they stay in the
#      branches' outboxes and are delivered once it is back;
#   f. corrupt updates (NaN, wrong shape, huge norm) are rejected and recorded
#      and the round merges without them;
#   g. an update that arrives after its round was merged is recorded as
#      stale and not merged; a resend is answered 'duplicate'.
use strict;
use warnings;

use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# ---------------------------------------------------------------- settings

my $ROUNDS = 20;    # federated rounds compared with the single-database run
my $TENANTS_PER_BRANCH = 4;    # 2 per group
my $TRAIN_ROWS = 90;           # per tenant; rows 91..120 are the test part
my $BRANCH_ROWS = $TENANTS_PER_BRANCH * $TRAIN_ROWS;
my $DEADLINE = 3;    # seconds, for parts d..g

my $train_src = "SELECT tenant, features, label FROM rows WHERE i <= $TRAIN_ROWS ORDER BY tenant, i";
my $test_src  = "SELECT tenant, features, label FROM rows WHERE i > $TRAIN_ROWS ORDER BY tenant, i";
my $train_options = '{"lr": 0.3}';

# FLoRAL and FedAvg (no adaptors), with the same seed
my %spec = (
	m  => q{'{3,24,3}', 'classification', 2, 2, '{"seed": 3}'},
	fa => q{'{3,24,3}', 'classification', 0, 2, '{"seed": 3}'});

# ---------------------------------------------------------------- helpers

# One query in a psql running in the background; finish_bg returns its
# output, and its stderr if there was any.
sub finish_bg
{
	my ($out, $err) = finish_call(@_);
	return $out . ($err ne '' ? " [stderr: $err]" : '');
}

# One coordinator step; also says whether it ran before the round's
# deadline and how long the round had been running (read in the same
# statement, so with the step's own now()).
sub timed_step
{
	my ($coord, $model) = @_;
	return split /\|/, sql($coord, qq{
		SELECT floral_coordinator_step('$model'), now() <= f.round_started_at + f.deadline,
		       round(extract(epoch FROM now() - f.round_started_at)::numeric, 2)
		  FROM floral.federations f WHERE f.model = '$model'});
}

# Run the coordinator step every 0.2 s until it merges; returns the first
# step's answer, whether it ran before the deadline, and the last answer.
sub step_until_merged
{
	my ($coord, $model) = @_;
	my ($first, $early, $elapsed, $last);
	my $give_up = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $give_up)
	{
		my ($msg, $e, $t) = timed_step($coord, $model);
		($first, $early, $elapsed) = ($msg, $e, $t) unless defined $first;
		$last = $msg;
		last if $last =~ /merged/;
		usleep(200_000);
	}
	note "first step of the round ran $elapsed s after it started: $first";
	return ($first, $early, $last);
}

# ---------------------------------------------------------------- setup

my ($coord, @branches) = start_federation(
	branches      => 3,
	models        => [ map { $_ => { spec => $spec{$_} } } 'm', 'fa' ],
	rows          => sub { federation_rows_sql($_[0], $_[0], $TENANTS_PER_BRANCH) },
	source        => $train_src,
	train_options => $train_options);
my @names = map { "b$_" } 1 .. 3;

is( sql($branches[0], qq{SELECT count(DISTINCT tenant), count(DISTINCT grp), count(*) FILTER (WHERE i <= $TRAIN_ROWS)
	                         FROM rows}),
	"$TENANTS_PER_BRANCH|2|$BRANCH_ROWS",
	'a branch has tenants of both groups and its training rows');
is( sql($branches[2], q{SELECT m.layers, m.adaptors, m.options->>'seed', l.branch
	                        FROM floral.models m JOIN floral.branch_links l ON l.model = m.name
	                       WHERE m.name = 'm'}),
	'{3,24,3}|2|3|b3',
	'floral_branch_join copied the model specification from the coordinator');

# ---------------------------------------------------------------- a. rounds

# One round: every branch steps (trains, sends), then the coordinator steps.
my @unexpected;
for my $r (0 .. $ROUNDS - 1)
{
	for my $k (0 .. 2)
	{
		my @out = split /\n/,
		  sql($branches[$k], q{CALL floral_branch_step('m'); CALL floral_branch_step('fa');});
		push @unexpected, map { "$names[$k]: $_" }
		  grep { !/^round $r: trained $TENANTS_PER_BRANCH tenants on $BRANCH_ROWS rows, update sent$/ } @out;
		push @unexpected, "$names[$k]: " . scalar(@out) . ' answers' if @out != 2;
	}
	my $next = $r + 1;
	my @out = split /\n/,
	  sql($coord, q{SELECT floral_coordinator_step('m'); SELECT floral_coordinator_step('fa');});
	push @unexpected, map { "coordinator: $_" }
	  grep { !/^round $r merged from 3 of 3 selected branches; round $next started$/ } @out;
}
is_deeply(\@unexpected, [], "$ROUNDS rounds: every branch trained and sent, every round merged from 3 branches");
is(round_of($coord, 'm'), $ROUNDS, "coordinator's FLoRAL model is at round $ROUNDS");
is(round_of($coord, 'fa'), $ROUNDS, "coordinator's FedAvg model is at round $ROUNDS");

# Bring each branch to round N (a step pulls the new round; it also trains
# and sends round N, which part d merges).
for my $k (0 .. 2)
{
	sql($branches[$k], q{CALL floral_branch_step('m'); CALL floral_branch_step('fa');});
}

# The parameters moved to the branches are the coordinator's, bit for bit.
my $params_md5 = "SELECT md5(floral.tensor_send(params)) FROM floral.rounds WHERE model = 'm' AND round = $ROUNDS";
my $coord_md5 = sql($coord, $params_md5);
is_deeply([ map { sql($_, $params_md5) } @branches ],
	[ ($coord_md5) x 3 ],
	"every branch holds exactly the coordinator's round-$ROUNDS parameters");

# Personalised accuracy on the held-out rows, weighted by examples, summed
# over the branches (each branch evaluates its own tenants).
my ($n_floral, $acc_floral) = federated_accuracy('m', $test_src, @branches);
my ($n_fedavg, $acc_fedavg) = federated_accuracy('fa', $test_src, @branches);
note sprintf('after %d rounds: FLoRAL accuracy %.4f, FedAvg accuracy %.4f (%d test rows)',
	$ROUNDS, $acc_floral, $acc_fedavg, $n_floral);
is($n_floral, 3 * $TENANTS_PER_BRANCH * (120 - $TRAIN_ROWS), 'evaluation covered every test row of every branch');
cmp_ok($acc_floral, '>', $acc_fedavg + 0.1, 'personalised FLoRAL beats FedAvg by more than 0.1 accuracy');
cmp_ok($acc_floral, '>', 0.8, 'FLoRAL learned the task (accuracy above 0.8)');

# ---------------------------------------------------------------- b. single database

my $single = new_node('single');
sql($single, federation_rows_sql(1, 3, $TENANTS_PER_BRANCH)
	  . join('', map { "SELECT floral_create_model('$_', $spec{$_});\n" } 'm', 'fa'));
sql($single, qq{
	DO \$\$
	BEGIN
		FOR r IN 1 .. $ROUNDS LOOP
			PERFORM floral_train('m', @{[lit($train_src)]}, '$train_options');
			PERFORM floral_aggregate('m');
			PERFORM floral_train('fa', @{[lit($train_src)]}, '$train_options');
			PERFORM floral_aggregate('fa');
		END LOOP;
	END \$\$;
});

for my $model ('m', 'fa')
{
	my $fed = sql($coord,
		"SELECT params::real[] FROM floral.rounds WHERE model = '$model' AND round = $ROUNDS");
	my ($n, $params, $max_abs, $rel_l2) = split /\|/, sql($single, qq{
		SELECT count(*), (SELECT sum(parameters) FROM floral_layers('$model')),
		       max(abs(f.v::float8 - s.v::float8)),
		       sqrt(sum((f.v::float8 - s.v::float8) ^ 2)) / sqrt(sum(s.v::float8 ^ 2))
		  FROM unnest('$fed'::real[]) WITH ORDINALITY f(v, k)
		  JOIN floral.rounds r ON r.model = '$model' AND r.round = $ROUNDS
		  CROSS JOIN LATERAL unnest(r.params::real[]) WITH ORDINALITY s(v, k)
		 WHERE s.k = f.k});
	note sprintf('%s round %d, federated vs single database: %d parameters, max abs diff %.3g, relative L2 %.3g',
		$model, $ROUNDS, $n, $max_abs, $rel_l2);
	is($n, $params, "$model: every parameter compared");
	cmp_ok($max_abs, '<', 1e-4, "$model: federated = single database, max abs diff < 1e-4");
	cmp_ok($rel_l2, '<', 1e-5, "$model: federated = single database, relative L2 < 1e-5");
}
my $history = "SELECT string_agg(format('%s:%s:%s', round, tenants, examples), ',' ORDER BY round)
                 FROM floral.rounds WHERE model = 'm' AND round BETWEEN 1 AND $ROUNDS";
is(sql($coord, $history), sql($single, $history),
	'federated and single-database rounds trained the same tenants and examples');
$single->stop;

# ---------------------------------------------------------------- c. who connects

# floral_federation requires dblink everywhere, but only a branch's step
# uses it: no coordinator function mentions it
is( sql($coord, q{SELECT (SELECT count(*) FROM pg_proc p
	                      WHERE (p.proname LIKE 'fed\_%' OR p.proname LIKE 'floral\_coordinator\_%'
	                             OR p.proname LIKE '\_secagg\_%' OR p.proname = '_merge_updates')
	                        AND p.prosrc LIKE '%dblink%'),
	                     (SELECT count(*) FROM pg_foreign_server),
	                     (SELECT count(*) FROM pg_subscription),
	                     (SELECT count(*) FROM floral.branch_links)}),
	'0|0|0|0',
	'coordinator: no function of its side calls dblink; no foreign server, subscription or branch link');
for my $k (0 .. 2)
{
	is( sql($branches[$k], q{SELECT string_agg(model || ':' || branch || ':' || coordinator, ',' ORDER BY model)
	                           FROM floral.branch_links}),
		join(',', map { "$_:$names[$k]:" . conninfo($coord) } 'fa', 'm'),
		"$names[$k]: only branches know how to reach the other side (its links point at the coordinator)");
}
is( sql($coord, q{SELECT string_agg(branch, ',' ORDER BY branch) FROM floral.federation_branches
	               WHERE model = 'm' AND last_contact IS NOT NULL AND last_round_seen = } . $ROUNDS),
	'b1,b2,b3',
	'coordinator: every branch has contacted it and seen the current round');
# (part e also watches the branches' connections arrive on the coordinator)

# ---------------------------------------------------------------- d. branch stopped

# Round N was trained by all three branches above; merge it.
like(sql($coord, q{SELECT floral_coordinator_step('m')}),
	qr/^round $ROUNDS merged from 3 of 3/, "round $ROUNDS merged from all three branches");

# From here on: quorum 2, a short deadline, and a bound on update norms
# (part f).  The norm of an honest update is far below the bound.
sql($coord, qq{SELECT floral_coordinator_setup('m',
	'{"min_branches": 2, "deadline": "$DEADLINE seconds", "max_update_norm": 50}')});
my $rd = $ROUNDS + 1;
for my $k (0 .. 1)
{
	like(sql($branches[$k], q{CALL floral_branch_step('m')}),
		qr/^round $rd: trained $TENANTS_PER_BRANCH tenants on $BRANCH_ROWS rows, update sent$/,
		"round $rd: $names[$k] trained and sent");
}
note 'norms of the honest updates of round ' . $rd . ': ' . sql($coord, qq{
	SELECT string_agg(round(floral._update_norm('m', u.examples, u.weights, u.sums)::numeric, 3)::text, ', ')
	  FROM floral.updates u WHERE u.model = 'm' AND u.round = $rd AND u.status = 'accepted'});
$branches[2]->stop;

my ($first, $early, $last) = step_until_merged($coord, 'm');
is($early, 't', 'the first coordinator step of the round ran before the deadline');
like($first, qr/^round $rd: waiting, 2 of 3 selected branches$/, "round $rd: before the deadline the coordinator waits for b3");
like($last, qr/^round $rd merged from 2 of 3 selected branches/, "round $rd: after the deadline it merges with 2 branches");
is( sql($coord, qq{SELECT branches, merged_at - started_at >= interval '$DEADLINE seconds'
	                 FROM floral.federation_rounds WHERE model = 'm' AND round = $rd}),
	'{b1,b2}|t', "round $rd: federation_rounds shows {b1,b2}, merged after the deadline");

$branches[2]->start;
my $rd2 = $rd + 1;
like(sql($branches[2], q{CALL floral_branch_step('m')}),
	qr/^round $rd2: trained $TENANTS_PER_BRANCH tenants on $BRANCH_ROWS rows, update sent$/,
	'b3 is back: its next step trains the current round');
is(round_of($branches[2], 'm'), round_of($coord, 'm'), "b3 caught up with the coordinator's round ($rd2)");
is( sql($branches[2], qq{SELECT md5(floral.tensor_send(params)) FROM floral.rounds WHERE model = 'm' AND round = $rd2}),
	sql($coord, qq{SELECT md5(floral.tensor_send(params)) FROM floral.rounds WHERE model = 'm' AND round = $rd2}),
	"b3 holds the coordinator's round-$rd2 parameters");
for my $k (0 .. 1)
{
	like(sql($branches[$k], q{CALL floral_branch_step('m')}),
		qr/^round $rd2: trained/, "round $rd2: $names[$k] trained");
}
like(sql($coord, q{SELECT floral_coordinator_step('m')}),
	qr/^round $rd2 merged from 3 of 3/, "round $rd2 merged from 3 of 3 branches");
is( sql($coord, qq{SELECT branches FROM floral.federation_rounds WHERE model = 'm' AND round = $rd2}),
	'{b1,b2,b3}', "round $rd2 includes b3 again");

# ---------------------------------------------------------------- e. coordinator stopped

# To stop the coordinator exactly while the branches deliver their updates,
# a session on the coordinator holds a SHARE lock on floral.updates (reads go
# on, inserts wait): each branch
# step pulls the round, trains, and then blocks in fed_submit.
my $re = $rd2 + 1;
my $lock = session($coord);
$lock->query_safe('BEGIN; LOCK TABLE floral.updates IN SHARE MODE');
my @bg = map { background_call($_, q{CALL floral_branch_step('m')}) } @branches;
ok(lock_waiters($coord, '%floral.fed_submit(%', 3),
	'all three branches trained and are sending their updates');

# c, continued: those sessions are connections the branches opened.
is( sql($coord, q{
		SELECT string_agg(b, ',' ORDER BY b)
		  FROM (SELECT (regexp_match(query, 'fed_submit\(''m'', ''(b\d)'''))[1] AS b
		          FROM pg_stat_activity
		         WHERE backend_type = 'client backend' AND query LIKE '%floral.fed_submit(%'
		           AND pid <> pg_backend_pid()) s}),
	'b1,b2,b3',
	"coordinator's pg_stat_activity shows the connections of b1, b2 and b3 submitting");

$coord->stop;
session_close($lock);
my @answers = map { finish_bg($_) } @bg;
is( scalar(grep { /^round $re: trained $TENANTS_PER_BRANCH tenants on $BRANCH_ROWS rows, update kept in the outbox: / } @answers),
	3, "coordinator went down while receiving: every branch kept its round-$re update")
  or diag join("\n", @answers);

my $outbox = q{SELECT string_agg(round || ':' || (sent_at IS NOT NULL) || ':' || coalesce(answer, '-'), ',' ORDER BY round)
                 FROM floral.outbox WHERE model = 'm' AND round >= } . $re;
for my $k (0 .. 2)
{
	is(sql($branches[$k], $outbox), "$re:false:-", "$names[$k]: the round-$re update waits unsent in the outbox");
	my $answer = sql($branches[$k], q{CALL floral_branch_step('m')});
	like($answer, qr/^coordinator unreachable: /, "$names[$k]: a step while the coordinator is down fails softly");
	is( sql($branches[$k], q{SELECT waiting_updates, last_error IS NOT NULL, local_round FROM floral.branch_status WHERE model = 'm'}),
		"1|t|$re", "$names[$k]: branch_status shows 1 waiting update and the last error");
	is(sql($branches[$k], $outbox), "$re:false:-", "$names[$k]: still one unsent update, nothing trained twice");
}
note 'last error of b1: ' . sql($branches[0], q{SELECT last_error FROM floral.branch_status WHERE model = 'm'});

$coord->start;
is( sql($coord, qq{SELECT count(*) FROM floral.updates WHERE model = 'm' AND round = $re}),
	'0', "coordinator restarted: none of the round-$re updates had arrived");
for my $k (0 .. 2)
{
	like(sql($branches[$k], q{CALL floral_branch_step('m')}),
		qr/^sent 1 waiting update\(s\); round $re: already trained$/,
		"$names[$k]: the next step sends the waiting update");
	is(sql($branches[$k], $outbox), "$re:true:accepted", "$names[$k]: the outbox is flushed, the update accepted");
	is( sql($branches[$k], q{SELECT waiting_updates, last_error IS NULL FROM floral.branch_status WHERE model = 'm'}),
		'0|t', "$names[$k]: branch_status shows nothing waiting and the error cleared by the next contact");
}
like(sql($coord, q{SELECT floral_coordinator_step('m')}),
	qr/^round $re merged from 3 of 3/, "round $re merged from the delivered updates");

# ---------------------------------------------------------------- f. corrupt updates

my $rf = $re + 1;
for my $k (0 .. 2)
{
	like(sql($branches[$k], q{CALL floral_branch_step('m')}), qr/^round $rf: trained/, "round $rf: $names[$k] trained");
}
sql($coord, q{SELECT floral_coordinator_add_branch('m', b) FROM unnest('{evil1,evil2,evil3}'::text[]) b});

# Three forgeries of b1's real update, sent from b1's database over dblink
# as the remote API is called: the first value replaced by a NaN (bytes 9..12
# of the binary form: int16 ndim, int16 flags, int32 dim, then big-endian
# float4s), the last parameter dropped, and everything times 1e6.
my $forge = sub {
	my ($evil, $payload) = @_;
	return sql($branches[0], qq{
		SELECT a FROM floral.outbox o,
		  LATERAL (SELECT encode(floral.tensor_send(o.sums), 'base64') AS good,
		                  o.sums::real[] AS v) g,
		  LATERAL dblink(@{[lit(conninfo($coord))]},
		                 format('SELECT floral.fed_submit(%L, %L, %s, %s, %L, %L, %s, %s)',
		                        'm', '$evil', o.round, o.examples, o.weights, $payload, o.loss_sum, o.tenants))
		          AS t(a text)
		 WHERE o.model = 'm' AND o.round = $rf});
};
is( $forge->('evil1', q{encode(overlay(decode(g.good, 'base64') placing '\x7fc00000'::bytea from 9 for 4), 'base64')}),
	'rejected', 'sums with a NaN are rejected');
is( $forge->('evil2', q{encode(floral.tensor_send(floral.tensor(g.v[1:cardinality(g.v) - 1])), 'base64')}),
	'rejected', 'sums of the wrong shape are rejected');
is( $forge->('evil3',
		q{encode(floral.tensor_send(floral.tensor((SELECT array_agg(x * 1e6::real ORDER BY k) FROM unnest(g.v) WITH ORDINALITY u(x, k)))), 'base64')}),
	'rejected', 'sums with a huge norm are rejected');

my %reasons = map { split /\|/, $_, 2 } split /\n/, sql($coord, qq{
	SELECT branch, reason FROM floral.updates
	 WHERE model = 'm' AND round = $rf AND status = 'rejected' AND sums IS NULL ORDER BY branch});
note "rejected: $_: $reasons{$_}" for sort keys %reasons;
like($reasons{evil1} // '', qr/^sums: .*(NaN|finite)/i, 'the NaN update is recorded as rejected, with the reason');
like($reasons{evil2} // '', qr/shape/, 'the wrong-shape update is recorded as rejected, with the reason');
like($reasons{evil3} // '', qr/norm .* exceeds the bound 50/, 'the huge update is recorded as rejected, with the reason');

my ($msg, $early_f, $elapsed_f) = timed_step($coord, 'm');
note "round $rf had been running $elapsed_f s";
is($early_f, 't', 'this coordinator step ran before the deadline');
like($msg, qr/^round $rf merged from 3 of 6 selected branches/,
	'a rejected update is its branch\'s answer: the round merges from the valid ones before the deadline');
sql($coord, q{SELECT floral_coordinator_remove_branch('m', b) FROM unnest('{evil1,evil2,evil3}'::text[]) b});
is( sql($coord, qq{SELECT branches, not_used FROM floral.federation_rounds WHERE model = 'm' AND round = $rf}),
	'{b1,b2,b3}|{"evil1: rejected","evil2: rejected","evil3: rejected"}',
	"round $rf: merged b1, b2, b3; the forgeries are listed as not used");
my ($norm_before, $norm_after) = split /\|/, sql($coord, qq{
	SELECT floral.tensor_norm(a.params), floral.tensor_norm(b.params)
	  FROM floral.rounds a JOIN floral.rounds b ON b.model = a.model AND b.round = a.round + 1
	 WHERE a.model = 'm' AND a.round = $rf});
note "parameter norm: round $rf $norm_before, round @{[$rf + 1]} $norm_after";
cmp_ok(abs($norm_after - $norm_before), '<', 0.1 * $norm_before, 'the merged parameters are unharmed by the forgeries');

# ---------------------------------------------------------------- g. stale and duplicate

# b3 trains round Rg but its connection drops while sending (the coordinator
# terminates the session); the round merges without b3 after the deadline;
# b3's next step delivers the old update, which is recorded as stale.
my $rg = $rf + 1;
$lock = session($coord);
$lock->query_safe('BEGIN; LOCK TABLE floral.updates IN SHARE MODE');
my $bg3 = background_call($branches[2], q{CALL floral_branch_step('m')});
ok(lock_waiters($coord, q{%floral.fed_submit('m', 'b3'%}, 1), 'b3 trained and is sending its update');
is( sql($coord, q{
		SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		 WHERE wait_event_type = 'Lock' AND query LIKE '%floral.fed_submit(''m'', ''b3''%'}),
	'1', "b3's connection is cut");
like(finish_bg($bg3), qr/^round $rg: trained .*, update kept in the outbox: /, 'b3 kept its update in the outbox');
$lock->query_safe('ROLLBACK');
session_close($lock);

for my $k (0 .. 1)
{
	like(sql($branches[$k], q{CALL floral_branch_step('m')}), qr/^round $rg: trained/, "round $rg: $names[$k] trained");
}
($first, $early, $last) = step_until_merged($coord, 'm');
is($early, 't', 'the first coordinator step of the round ran before the deadline');
like($first, qr/^round $rg: waiting, 2 of 3/, "round $rg: the coordinator first waits for b3");
like($last, qr/^round $rg merged from 2 of 3/, "round $rg: after the deadline it merges without b3");

my $rg2 = $rg + 1;
like(sql($branches[2], q{CALL floral_branch_step('m')}),
	qr/^sent 1 waiting update\(s\); round $rg2: trained .*, update sent$/,
	'b3 delivers its old update, then trains the new round');
is(sql($branches[2], qq{SELECT answer FROM floral.outbox WHERE model = 'm' AND round = $rg}),
	'stale', "b3's outbox records the coordinator's answer: stale");
is( sql($coord, qq{SELECT status, reason, merged_into IS NULL, sums IS NULL FROM floral.updates
	                WHERE model = 'm' AND round = $rg AND branch = 'b3'}),
	"stale|update for round $rg arrived in round $rg2|t|t",
	'the coordinator recorded the update as stale and did not merge it');
is( sql($coord, qq{SELECT branches, not_used, tenants, examples FROM floral.federation_rounds
	                WHERE model = 'm' AND round = $rg}),
	'{b1,b2}|{"b3: stale"}|' . 2 * $TENANTS_PER_BRANCH . '|' . 2 * $BRANCH_ROWS,
	"round $rg: merged from b1 and b2 only; b3 listed as stale");

# A resend is harmless: the stale update again, and b1's accepted update.
is( sql($branches[2], qq{
		SELECT t.a FROM floral.outbox o, floral.branch_links l,
		  LATERAL dblink(l.coordinator,
		                 format('SELECT floral.fed_submit(%L, %L, %s, %s, %L, %L, %s, %s)',
		                        o.model, l.branch, o.round, o.examples, o.weights,
		                        encode(floral.tensor_send(o.sums), 'base64'), o.loss_sum, o.tenants)) AS t(a text)
		 WHERE o.model = 'm' AND l.model = 'm' AND o.round = $rg}),
	'duplicate', 'resending the stale update is answered duplicate');
like(sql($branches[0], q{CALL floral_branch_step('m')}), qr/^round $rg2: trained/, "round $rg2: b1 trained");
sql($branches[0], qq{UPDATE floral.outbox SET sent_at = NULL WHERE model = 'm' AND round = $rg2});
like(sql($branches[0], q{CALL floral_branch_step('m')}),
	qr/^sent 1 waiting update\(s\); round $rg2: already trained$/, 'b1 sends its update a second time');
is(sql($branches[0], qq{SELECT answer FROM floral.outbox WHERE model = 'm' AND round = $rg2}),
	'duplicate', 'the second send is answered duplicate');
is( sql($coord, qq{SELECT count(*), min(status) FROM floral.updates WHERE model = 'm' AND round = $rg2 AND branch = 'b1'}),
	'1|accepted', 'the coordinator kept exactly one update of b1 for the round');
like(sql($branches[1], q{CALL floral_branch_step('m')}), qr/^round $rg2: trained/, "round $rg2: b2 trained");
like(sql($coord, q{SELECT floral_coordinator_step('m')}),
	qr/^round $rg2 merged from 3 of 3/, "round $rg2 merged from 3 of 3 branches");

# ---------------------------------------------------------------- integrity

# Nothing was merged twice: each update is merged into the round after its
# own, and each merged round's tenants and examples are exactly the sums of
# the updates listed as its branches.
is( sql($coord, q{
		SELECT count(*) FROM floral.updates
		 WHERE model = 'm' AND (status = 'merged') <> (merged_into IS NOT NULL)}),
	'0', 'exactly the merged updates have merged_into set');
is( sql($coord, q{
		SELECT count(*) FROM floral.updates WHERE model = 'm' AND status = 'merged' AND merged_into <> round + 1}),
	'0', 'every merged update went into the round after its own');
is( sql($coord, q{
		SELECT count(*) FROM floral.federation_rounds fr
		  JOIN LATERAL (SELECT count(*) AS n, sum(u.tenants) AS t, sum(u.examples) AS e
		                  FROM floral.updates u
		                 WHERE u.model = fr.model AND u.round = fr.round AND u.status = 'merged') u ON true
		 WHERE fr.model = 'm' AND fr.merged_at IS NOT NULL
		   AND (u.n <> cardinality(fr.branches) OR u.t <> fr.tenants OR u.e <> fr.examples)}),
	'0', "each merged round's update count, tenants and examples match federation_rounds");
is( sql($coord, q{SELECT count(*), count(DISTINCT (round, branch)) FROM floral.updates WHERE model = 'm'}),
	sql($coord, q{SELECT count(*), count(*) FROM floral.updates WHERE model = 'm'}),
	'at most one update per round and branch');
is( sql($coord, q{SELECT count(*) FROM floral.federation_rounds WHERE model = 'm' AND merged_at IS NOT NULL}),
	round_of($coord, 'm'), 'every round before the current one was merged exactly once');

$_->stop for @branches;
$coord->stop;

done_testing();
