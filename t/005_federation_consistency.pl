# Federation consistency under awkward timing and odd submissions.
#
# Each scenario federates its own model on the same two clusters (a
# coordinator and one real branch); "fake" branches are branch names the
# coordinator knows, whose submissions this test makes directly on the
# coordinator, exactly as a branch's dblink call would.  The assertions are
# invariants that hold whatever a fix looks like:
#
#   1. an update answered 'accepted' is merged, never left behind in a round
#      that was merged without it (fed_submit racing floral_coordinator_step);
#   2. a premature update for a round that has not started does not stop the
#      branch's genuine update for that round from being accepted later;
#   3. after floral_rollback on the coordinator the federation either
#      refuses the rollback or carries on consistently (branches train the
#      re-run rounds from the coordinator's new parameters);
#   4. with fraction < 1, a round is merged from the branches selected for it;
#   5. an accepted update never makes the coordinator step fail.
#
# When this file was written, all five scenarios failed against the
# extension: they were written to expose those bugs, not to pass.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# the models are federated scenario by scenario
my ($coord, $branch) = start_federation(rows => sub { branch_rows_sql() });

# Federate $model on the coordinator with the given setup options and
# branches; b1 (the real branch) joins it when listed.
sub federate
{
	my ($model, $options, @branches) = @_;
	sql($coord, federate_sql($model, spec => q{'{3,4,3}', 'classification', 2, 1, '{"seed": 11}'},
		setup => $options, branches => \@branches));
	if (grep { $_ eq 'b1' } @branches)
	{
		sql($branch, join_sql($model, 'b1', conninfo($coord),
			'SELECT tenant, features, label FROM rows ORDER BY tenant, features'));
	}
}

# A well-formed update for the current round of $model, as fed_submit
# arguments after (model, branch): 10 examples whose average is exactly the
# current parameters.
sub valid_update_sql
{
	my ($model, $round_expr, $examples) = @_;
	$examples //= '10';
	return qq{
		SELECT floral.fed_submit('$model', %s, $round_expr, $examples, '{5,5}',
		       encode(floral.tensor_send(floral.tensor(
		           (SELECT array_agg(v * 10::real ORDER BY k) FROM unnest(r.params::real[]) WITH ORDINALITY u(v, k)))), 'base64'),
		       0, 1)
		  FROM floral.rounds r JOIN floral.models m ON m.name = r.model AND m.round = r.round
		 WHERE r.model = '$model'};
}

sub submit
{
	my ($model, $as, $round_expr, $examples) = @_;
	return sql($coord, sprintf(valid_update_sql($model, $round_expr, $examples), "'$as'"));
}

# ---------------------------------------------------------------- 1. race

# b1 sends round 0; "late" sends its update in a transaction that is still
# open (as a slow dblink call would be) when the deadline has passed and the
# coordinator step runs.  The step runs in the background: a coordinator
# that waits for the open submission is fine too.
federate('race', '{"min_branches": 1, "deadline": "1 second"}', 'b1', 'late');
like(sql($branch, q{CALL floral_branch_step('race')}), qr/^round 0: trained 3 tenants on 90 rows, update sent$/,
	'race: b1 sent round 0');

my $session = session($coord);
like(session_ok($session, 'BEGIN; ' . sprintf(valid_update_sql('race', 0), q{'late'})),
	qr/^accepted$/m, "race: the open submission of 'late' is answered accepted");

ok( $coord->poll_query_until('postgres',
		q{SELECT now() > round_started_at + deadline FROM floral.federations WHERE model = 'race'}),
	'race: the deadline of round 0 has passed');
my $step = background_call($coord, q{SELECT floral_coordinator_step('race')});
# until the step has finished or waits for a lock
wait_for($coord, q{SELECT count(*) > 0 FROM pg_stat_activity
                   WHERE query LIKE '%floral_coordinator_step(''race'')%' AND wait_event_type = 'Lock'},
	't', call => $step, timeout => 30);
session_ok($session, 'COMMIT');
$session->quit;
my ($step_out, $step_err) = finish_call($step);
note "race: coordinator step said: $step_out$step_err";
is( sql($coord, q{SELECT string_agg(round || '/' || branch, ',') FROM floral.updates u
	               WHERE model = 'race' AND status = 'accepted'
	                 AND round < (SELECT round FROM floral.models WHERE name = 'race')}),
	'', "race: no accepted update is left behind in a round that is already merged");
is( sql($coord, q{SELECT fr.tenants = (SELECT sum(tenants) FROM floral.updates u
	                                    WHERE u.model = 'race' AND u.round = 0 AND u.branch = ANY (fr.branches))
	               FROM floral.federation_rounds fr WHERE fr.model = 'race' AND fr.round = 0}),
	't', "race: round 0's listed branches are exactly what was merged");

# ---------------------------------------------------------------- 2. premature update

federate('early', '{}', 'b1');
{
	my ($rc, $stdout, $stderr) = $coord->psql('postgres',
		sprintf(valid_update_sql('early', 1, undef), "'b1'"));
	like($stderr, qr/round 1 of model "early" has not started/,
		'premature: an update for round 1 during round 0 is refused, not recorded');
	is(sql($coord, q{SELECT count(*) FROM floral.updates WHERE model = 'early'}), '0',
		'premature: nothing was recorded that could take the real update\'s place');
}
like(sql($branch, q{CALL floral_branch_step('early')}), qr/^round 0: trained .*update sent$/, 'premature: b1 sent round 0');
like(sql($coord, q{SELECT floral_coordinator_step('early')}), qr/^round 0 merged/, 'premature: round 0 merged');
like(sql($branch, q{CALL floral_branch_step('early')}), qr/^round 1: trained .*update sent$/, 'premature: b1 sent round 1');
is( sql($branch, q{SELECT answer FROM floral.outbox WHERE model = 'early' AND round = 1}),
	'accepted', "premature: b1's genuine round-1 update is accepted");
like(sql($coord, q{SELECT floral_coordinator_step('early')}), qr/^round 1 merged from 1 of 1/,
	"premature: round 1 merges with b1's genuine update");

# ---------------------------------------------------------------- 3. rollback

federate('back', '{}', 'b1');
for my $r (0 .. 2)
{
	sql($branch, q{CALL floral_branch_step('back')});
	sql($coord, q{SELECT floral_coordinator_step('back')});
}
is(round_of($coord, 'back'), '3', 'rollback: three rounds merged');
my ($rc, $out, $err) = $coord->psql('postgres', q{SELECT floral_rollback('back', 1)});
if ($rc != 0)
{
	like($err, qr/federat/i, 'rollback: refused on a federated model');
}
else
{
	note 'rollback: the coordinator went back to round 1';
	# three more rounds, each: the branch steps, then the coordinator
	my @said;
	for (1 .. 3)
	{
		push @said, 'b1: ' . sql($branch, q{CALL floral_branch_step('back')});
		push @said, 'coordinator: ' . sql($coord, q{SELECT floral_coordinator_step('back')});
	}
	note "rollback: $_" for @said;
	cmp_ok(round_of($coord, 'back'), '>=', 3, 'rollback: the federation carries on past the rollback');
	my $md5 = q{SELECT coalesce(md5(floral.tensor_send(params)), 'none') FROM floral.models m
	              LEFT JOIN floral.rounds r ON r.model = m.name AND r.round = 2 WHERE m.name = 'back'};
	is(sql($branch, $md5), sql($coord, $md5),
		"rollback: b1's round-2 parameters are the coordinator's new round-2 parameters");
}

# ---------------------------------------------------------------- 4. selection

# fraction 0.5 of two branches: one is selected per round.
federate('frac', '{"fraction": 0.5}', 'one', 'two');
my ($chosen, $other) = split /\|/, sql($coord, q{
	SELECT max(b) FILTER (WHERE floral._selected('frac', 0, b)), max(b) FILTER (WHERE NOT floral._selected('frac', 0, b))
	  FROM unnest('{one,two}'::text[]) b});
ok($chosen && $other, "selection: round 0 selects '$chosen', not '$other'");
my $answer = submit('frac', $other, 0);
my $msg = sql($coord, q{SELECT floral_coordinator_step('frac')});
note "selection: '$other' (not selected) was answered $answer; the step said: $msg";
unlike($msg, qr/merged/, 'selection: an update from a branch that was not selected does not complete the round');
submit('frac', $chosen, 0);
sql($coord, q{SELECT floral_coordinator_step('frac')});
is( sql($coord, q{SELECT branches FROM floral.federation_rounds WHERE model = 'frac' AND round = 0}),
	"{$chosen}", 'selection: round 0 is merged from the selected branch only');

# ---------------------------------------------------------------- 5. a poisonous update

# No max_update_norm (the default): an update with a vanishing example count
# passes fed_submit's checks, and its average is not a finite number.
federate('wedge', '{}', 'lone');
$answer = submit('wedge', 'lone', 0, '1e-300');
($rc, $out, $err) = $coord->psql('postgres', q{SELECT floral_coordinator_step('wedge')});
note "poison: fed_submit answered $answer; the step: rc $rc, $out$err";
is($rc, 0, 'poison: the coordinator step does not fail because of an update it accepted');

$branch->stop;
$coord->stop;

done_testing();
