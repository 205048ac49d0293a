# Secure aggregation end to end: one coordinator, three branch clusters,
# the coordinator logging every statement (log_statement = all).
#
#   a. the coordinator's tables and its full statement log hold no branch's
#      unmasked update: not its payload as a plain federation sends it, not
#      its values as text, not its fixed-point words; each masked update
#      differs from the branch's fixed-point update in (nearly) every word.
#      The same checks find a plain federation's update of the same branch
#      (so they can fail);
#   b. the secure sum equals the sum of the branches' own updates to within
#      the quantisation step (3 branches x 2^-21 per value, plus the float4
#      rounding of the sum), and the merged rounds equal those of a plain
#      federation with the same seeds; so does the accuracy;
#   c. a branch stopped after it sent its shares (the masks are fixed): at
#      the deadline the round goes on with the other two, its masks are
#      recovered from the survivors' shares and the round merges to exactly
#      the sum of the two; no branch had both of its secrets revealed; the
#      stopped branch takes part again when it is back;
#   d. a share the coordinator altered, or replayed from an earlier round,
#      is refused by the branch (it reveals nothing), and a resent message is
#      answered "duplicate"; plain updates are refused by a secure federation;
#   e. a round that comes back after a rollback is masked with fresh keys;
#   f. a dishonest coordinator: a branch whose link requires secure
#      aggregation sends nothing to a coordinator that says it is off; a
#      relayed threshold below a majority, a relayed U2 = {one branch}, and
#      a new attempt after a branch's masked update went out are refused by
#      the branches (no share, no masked update, no second masking); after
#      a rollback of the current round no branch shares its secrets again.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $TENANTS_PER_BRANCH = 4;
my $TRAIN_ROWS = 90;
my $train_src = "SELECT tenant, features, label FROM rows WHERE i <= $TRAIN_ROWS ORDER BY tenant, i";
my $test_src  = "SELECT tenant, features, label FROM rows WHERE i > $TRAIN_ROWS ORDER BY tenant, i";
my $train_options = '{"lr": 0.3}';

# ms: secure aggregation; mp: the same model, federated plainly
my $spec = q{'{3,24,3}', 'classification', 2, 2, '{"seed": 3}'};
my ($coord, @branches) = start_federation(
	branches         => 3,
	coordinator_conf => "log_statement = 'all'\n",
	models           => [
		ms => { spec => $spec, setup => '{"secure_aggregation": true, "deadline": "1 hour"}' },
		mp => { spec => $spec } ],
	rows          => sub { federation_rows_sql($_[0], $_[0], $TENANTS_PER_BRANCH) },
	source        => $train_src,
	train_options => $train_options);
my @names = map { "b$_" } 1 .. 3;
my $conninfo = conninfo($coord);

# Step the given branches and the coordinator until the round merges;
# returns the coordinator's last answer and every branch answer.
sub run_round
{
	my ($m, @live) = @_;
	my ($last, @said) = ('');
	for my $pass (1 .. 12)
	{
		for my $k (@live)
		{
			push @said, "$names[$k]: " . sql($branches[$k], "CALL floral_branch_step('$m')");
		}
		$last = sql($coord, "SELECT floral_coordinator_step('$m')");
		last if $last =~ /merged/;
	}
	return ($last, @said);
}

# ---------------------------------------------------------------- a. nothing unmasked

my ($merged, @said) = run_round('ms', 0, 1, 2);
note join("\n", @said);
like($merged, qr/^round 0 merged securely from 3 of 3 branches \(masks of 0 recovered\); round 1 started$/,
	'secure round 0 merged from three branches');
is(sql($coord, q{SELECT stage, attempt, threshold, participants, sharers, senders FROM floral.secagg_rounds
	WHERE model = 'ms' AND round = 0}), 'merged|1|2|{b1,b2,b3}|{b1,b2,b3}|{b1,b2,b3}',
	'secure round 0: one attempt, threshold 2, every branch in at every stage');
is(sql($coord, q{SELECT string_agg(branch || ':' || status, ',' ORDER BY branch) FROM floral.updates
	WHERE model = 'ms' AND round = 0}), ':merged,b1:secure,b2:secure,b3:secure',
	'the coordinator holds one merged update, the secure sum, and a masked record of each branch');

# What each branch computed, as it would travel in a plain federation: the
# base64 payload of fed_submit, the tensor as text, the fixed-point words.
my (@payload, @values, @words);
for my $k (0 .. 2)
{
	my ($b64, $txt, $hex) = split /\|/, sql($branches[$k], q{
		SELECT replace(encode(floral.tensor_send(sums), 'base64'), E'\n', ''),
		       sums::text,
		       encode(floral._secagg_quantize(examples, weights, sums, loss_sum, tenants), 'hex')
		  FROM floral.outbox WHERE model = 'ms' AND round = 0});
	push @payload, $b64;
	push @values, $txt;
	push @words, $hex;
}
# a payload line of fed_submit's base64 (76 characters, as the log shows it),
# a run of values as text, and fixed-point words (in hex and base64)
sub needles
{
	my ($k) = @_;
	my $b64 = $payload[$k];
	my @v = split /,/, substr($values[$k], 1, -1);
	my $words_b64 = sql($coord, "SELECT replace(encode(decode('$words[$k]', 'hex'), 'base64'), E'\\n', '')");
	return (substr($b64, 76 * 3, 60), join(',', @v[20 .. 24]), substr($words[$k], 400, 64), substr($words_b64, 300, 60));
}
# every row of every floral table of the coordinator, as COPY writes it
# (tensors as text, bytea in hex), and its statement log
sub coordinator_text
{
	my $dump = '';
	for my $t (split /\n/, sql($coord, q{SELECT tablename FROM pg_tables WHERE schemaname = 'floral' ORDER BY 1}))
	{
		$dump .= sql($coord, "COPY floral.$t TO STDOUT") . "\n";
	}
	my $log = slurp_file($coord->logfile);
	(my $log_joined = $log) =~ s/\n//g;    # base64 lines joined, too
	return ($dump, $log . $log_joined);
}
my ($dump, $log) = coordinator_text();
my @leaks;
for my $k (0 .. 2)
{
	my @n = needles($k);
	for my $i (0 .. $#n)
	{
		push @leaks, "$names[$k] needle $i in the dump" if index($dump, $n[$i]) >= 0;
		push @leaks, "$names[$k] needle $i in the log" if index($log, $n[$i]) >= 0;
	}
}
is_deeply(\@leaks, [], 'no branch\'s update (payload, values, fixed-point words) is in the coordinator\'s tables or statement log');
cmp_ok(length($dump), '>', 10000, 'the coordinator\'s tables were read (' . length($dump) . ' characters)');
cmp_ok(length($log), '>', 10000, 'the coordinator\'s statement log is there and not small');
like($log, qr/fed_secagg_input/, 'the log holds the masked updates as they arrived');

# each masked update against the branch's fixed-point update, word by word
for my $k (0 .. 2)
{
	my $masked = sql($coord, "SELECT encode(masked, 'hex') FROM floral.secagg_inputs WHERE model = 'ms' AND round = 0 AND branch = '$names[$k]'");
	my ($same, $n) = (0, length($words[$k]) / 16);
	for my $w (0 .. $n - 1)
	{
		$same++ if substr($masked, 16 * $w, 16) eq substr($words[$k], 16 * $w, 16);
	}
	is(length($masked), length($words[$k]), "$names[$k]: the masked update has the update's size");
	cmp_ok($same, '<=', 1, "$names[$k]: $same of $n words of the masked update equal the unmasked ones");
}

# ---------------------------------------------------------------- b. exactness

# the secure sum against the sum of what the branches computed (doubles)
my $branch_sums = join(' UNION ALL ', map { "SELECT * FROM unnest('$values[$_]'::floral.tensor::real[]) WITH ORDINALITY AS u(v, k)" } 0 .. 2);
my $secure = sql($coord, q{SELECT sums::text FROM floral.updates WHERE model = 'ms' AND round = 0 AND branch = ''});
my ($ncoord, $maxdiff, $maxtol) = split /\|/, sql($coord, qq{
	WITH b AS (SELECT k, sum(v::float8) AS s FROM ($branch_sums) x GROUP BY k),
	     c AS (SELECT * FROM unnest('$secure'::floral.tensor::real[]) WITH ORDINALITY AS u(v, k))
	SELECT count(*), max(abs(c.v - b.s)), max(abs(c.v - b.s) / (3 * 2 ^ -21 + abs(b.s) * 2 ^ -23))
	  FROM b JOIN c USING (k)});
note "secure sum vs the branches' own sums: $ncoord values, max abs diff $maxdiff, max diff / tolerance $maxtol";
cmp_ok($ncoord, '>', 100, 'every value of the sum compared');
cmp_ok($maxtol, '<=', 1, 'secure sum = sum of the branch updates, within 3 x 2^-21 plus float4 rounding');
my $expect_n = sql($coord, 'SELECT 3 * ' . $TENANTS_PER_BRANCH * $TRAIN_ROWS);
is(sql($coord, q{SELECT examples, tenants FROM floral.updates WHERE model = 'ms' AND round = 0 AND branch = ''}),
	"$expect_n|" . 3 * $TENANTS_PER_BRANCH, 'the secure sum holds every example and tenant, exactly');

# now the plain federation's round 0 (same seeds, same data)
($merged) = run_round('mp', 0, 1, 2);
like($merged, qr/^round 0 merged from 3 of 3/, 'plain round 0 merged');

# positive control: the same checks find the plain federation's updates
($dump, $log) = coordinator_text();
my @found;
for my $k (0 .. 2)
{
	my @n = needles($k);
	push @found, "$names[$k] payload in the log" if index($log, $n[0]) >= 0;
	push @found, "$names[$k] values in the dump" if index($dump, $n[1]) >= 0;
}
is(scalar(@found), 6, 'control: the plain federation\'s updates are found in the log and the tables (' . join(', ', @found) . ')');

sub compare_rounds
{
	my ($r) = @_;
	return split /\|/, sql($coord, qq{
		WITH a AS (SELECT * FROM unnest((SELECT params FROM floral.rounds WHERE model = 'ms' AND round = $r)::real[])
		                         WITH ORDINALITY AS a(v, k)),
		     b AS (SELECT * FROM unnest((SELECT params FROM floral.rounds WHERE model = 'mp' AND round = $r)::real[])
		                         WITH ORDINALITY AS b(v, k))
		SELECT count(*), max(abs(a.v::float8 - b.v::float8)) FROM a JOIN b USING (k)});
}
my ($np, $d1) = compare_rounds(1);
note "round 1, secure vs plain: $np parameters, max abs diff $d1";
cmp_ok($d1, '<', 1e-6, 'round 1 of the secure federation = the plain one (max abs diff < 1e-6)');

for my $r (1 .. 4)
{
	my ($a) = run_round('ms', 0, 1, 2);
	my ($b) = run_round('mp', 0, 1, 2);
	like("$a / $b", qr/^round $r merged securely from 3 of 3.* \/ round $r merged from 3 of 3/, "round $r merged in both federations");
}
my ($np5, $d5) = compare_rounds(5);
note "round 5, secure vs plain: max abs diff $d5";
cmp_ok($d5, '<', 1e-4, 'round 5 of the secure federation = the plain one (max abs diff < 1e-4)');

# accuracy of both on the branches' held-out rows (a step pulls round 5)
for my $k (0 .. 2)
{
	sql($branches[$k], q{CALL floral_branch_step('ms'); CALL floral_branch_step('mp');});
}
my (undef, $acc_s) = federated_accuracy('ms', $test_src, @branches);
my (undef, $acc_p) = federated_accuracy('mp', $test_src, @branches);
note sprintf('accuracy after 5 rounds: secure %.4f, plain %.4f', $acc_s, $acc_p);
cmp_ok(abs($acc_s - $acc_p), '<', 0.01, 'the secure federation\'s accuracy equals the plain one\'s (within 0.01)');

# ---------------------------------------------------------------- c. a branch drops after masking

# The branches have trained round 5 of ms (the pull above) and advertised
# their keys; b3 also sent its shares.
my $rc = 5;
# b1, b2 advertised in the step above; b3's step now sends its shares too
like(sql($branches[2], q{CALL floral_branch_step('ms')}), qr/shares sent/, 'b3 advertised, then sent its sealed shares');
is(sql($coord, "SELECT stage FROM floral.secagg_rounds WHERE model = 'ms' AND round = $rc"), 'share', 'the round waits for the others\' shares');
$branches[2]->stop;
like(sql($branches[0], q{CALL floral_branch_step('ms')}), qr/shares sent.*waiting|shares sent/, 'b1 sent its shares');
like(sql($branches[1], q{CALL floral_branch_step('ms')}), qr/masked update sent/, 'b2 sent its shares, then its masked update');
like(sql($branches[0], q{CALL floral_branch_step('ms')}), qr/masked update sent/, 'b1 sent its masked update');
like(sql($coord, q{SELECT floral_coordinator_step('ms')}), qr/stage mask \(2 of 3 masked updates\)/,
	'before the deadline the coordinator waits for b3\'s masked update');
# the deadline passes (one second from the stage's start, long gone)
sql($coord, q{SELECT floral_coordinator_setup('ms', '{"secure_aggregation": true, "deadline": "1 second"}')});
sleep 1;
like(sql($coord, q{SELECT floral_coordinator_step('ms')}), qr/stage unmask/, 'after the deadline: unmask with b1 and b2');
sql($coord, q{SELECT floral_coordinator_setup('ms', '{"secure_aggregation": true, "deadline": "1 hour"}')});
like(sql($branches[0], q{CALL floral_branch_step('ms')}), qr/shares revealed/, 'b1 revealed its shares');
like(sql($branches[1], q{CALL floral_branch_step('ms')}), qr/shares revealed/, 'b2 revealed its shares');
like(sql($coord, q{SELECT floral_coordinator_step('ms')}),
	qr/^round $rc merged securely from 2 of 3 branches \(masks of 1 recovered\); round 6 started$/,
	"round $rc merged from b1 and b2, b3's masks recovered");
is(sql($coord, "SELECT recovered FROM floral.secagg_status WHERE model = 'ms' AND round = $rc"), '{b3}',
	'floral.secagg_status names the branch whose masks were recovered');

# the merged sum is exactly b1's and b2's
my @v2 = map { sql($branches[$_], "SELECT sums::text FROM floral.outbox WHERE model = 'ms' AND round = $rc") } 0 .. 1;
my $sum2 = join(' UNION ALL ', map { "SELECT * FROM unnest('$_'::floral.tensor::real[]) WITH ORDINALITY AS u(v, k)" } @v2);
my $secure2 = sql($coord, "SELECT sums::text FROM floral.updates WHERE model = 'ms' AND round = $rc AND branch = ''");
my (undef, undef, $tol2) = split /\|/, sql($coord, qq{
	WITH b AS (SELECT k, sum(v::float8) AS s FROM ($sum2) x GROUP BY k),
	     c AS (SELECT * FROM unnest('$secure2'::floral.tensor::real[]) WITH ORDINALITY AS u(v, k))
	SELECT count(*), max(abs(c.v - b.s)), max(abs(c.v - b.s) / (2 * 2 ^ -21 + abs(b.s) * 2 ^ -23)) FROM b JOIN c USING (k)});
cmp_ok($tol2, '<=', 1, 'after recovery the sum is b1 + b2, within the quantisation step');
is(sql($coord, "SELECT examples, tenants FROM floral.updates WHERE model = 'ms' AND round = $rc AND branch = ''"),
	2 * $TENANTS_PER_BRANCH * $TRAIN_ROWS . '|' . 2 * $TENANTS_PER_BRANCH, 'the sum holds b1\'s and b2\'s examples, not b3\'s');
is(sql($coord, qq{SELECT string_agg(owner || ':' || kind || ':' || n, ',' ORDER BY owner)
	FROM (SELECT owner, string_agg(DISTINCT kind, '+') AS kind, count(*) AS n FROM floral.secagg_reveals
	      WHERE model = 'ms' AND round = $rc GROUP BY owner) x}),
	'b1:self:2,b2:self:2,b3:pair:2',
	'revealed: the self-mask seeds of b1 and b2 and the mask key of b3, never both secrets of one branch');
is(sql($coord, "SELECT count(*) FROM floral.secagg_inputs WHERE model = 'ms' AND round = $rc AND branch = 'b3'"), 0,
	'b3 sent no masked update: nothing of its update reached the coordinator');
is(sql($coord, q{SELECT count(*) FROM floral.secagg_reveals v JOIN floral.secagg_reveals w
	USING (model, round, attempt, owner) WHERE v.kind <> w.kind}), 0,
	'in no round did the coordinator get both secrets of one branch');

# b3 is back and takes part in round 6 again
$branches[2]->start;
($merged) = run_round('ms', 0, 1, 2);
like($merged, qr/^round 6 merged securely from 3 of 3/, 'b3 is back: round 6 merged from three branches');

# ---------------------------------------------------------------- d. forged and replayed shares

# round 7: step until every share is in (stage mask), then tamper with the
# share b2 sealed for b1, as a dishonest coordinator could
my $rd = 7;
sql($branches[$_], q{CALL floral_branch_step('ms')}) for 0, 1, 2, 0, 1;
is(sql($coord, "SELECT stage FROM floral.secagg_rounds WHERE model = 'ms' AND round = $rd"), 'mask',
	"round $rd: every share is in, b2's masked update too");
my $orig = sql($coord, "SELECT encode(sealed, 'hex') FROM floral.secagg_shares WHERE model = 'ms' AND round = $rd AND sender = 'b2' AND recipient = 'b1'");
isnt($orig, '', "round $rd: b2's sealed share for b1 is at the coordinator");
# flip every bit of one byte (overwriting it with a constant would change
# nothing in the one run in 256 where the byte already has that value)
sql($coord, "UPDATE floral.secagg_shares SET sealed = set_byte(sealed, 39, get_byte(sealed, 39) # 255)
	WHERE model = 'ms' AND round = $rd AND sender = 'b2' AND recipient = 'b1'");
isnt(sql($coord, "SELECT encode(sealed, 'hex') FROM floral.secagg_shares WHERE model = 'ms' AND round = $rd AND sender = 'b2' AND recipient = 'b1'"),
	$orig, "round $rd: the coordinator tampered with b2's sealed share for b1");
like(sql($branches[2], q{CALL floral_branch_step('ms')}), qr/masked update sent/, 'b3 sent its masked update');
# b1's step sends its masked update, the round reaches unmask, b1 opens its shares
like(sql($branches[0], q{CALL floral_branch_step('ms')}),
	qr/failed: secure aggregation: the share from branch "b2" to branch "b1" does not authenticate/,
	'an altered share is refused (ChaCha20-Poly1305 tag)');
is(sql($coord, "SELECT count(*) FROM floral.secagg_reveals WHERE model = 'ms' AND round = $rd AND holder = 'b1'"), 0,
	'b1 revealed nothing');
# replay: the share b2 sealed for b1 in round 6 (same pair, earlier round)
sql($coord, "UPDATE floral.secagg_shares s SET sealed = o.sealed FROM floral.secagg_shares o
	WHERE s.model = 'ms' AND s.round = $rd AND s.sender = 'b2' AND s.recipient = 'b1'
	  AND o.model = 'ms' AND o.round = 6 AND o.sender = 'b2' AND o.recipient = 'b1'");
like(sql($branches[0], q{CALL floral_branch_step('ms')}), qr/does not authenticate/,
	'a share replayed from an earlier round is refused');
# b3's share for b1 presented as b2's (another sender)
sql($coord, "UPDATE floral.secagg_shares s SET sealed = o.sealed FROM floral.secagg_shares o
	WHERE s.model = 'ms' AND s.round = $rd AND s.sender = 'b2' AND s.recipient = 'b1'
	  AND o.model = 'ms' AND o.round = $rd AND o.sender = 'b3' AND o.recipient = 'b1'");
like(sql($branches[0], q{CALL floral_branch_step('ms')}), qr/does not authenticate/,
	'a share of another sender is refused');
is(sql($coord, "SELECT count(*) FROM floral.secagg_reveals WHERE model = 'ms' AND round = $rd AND holder = 'b1'"), 0,
	'b1 still revealed nothing');
sql($coord, "UPDATE floral.secagg_shares SET sealed = decode('$orig', 'hex')
	WHERE model = 'ms' AND round = $rd AND sender = 'b2' AND recipient = 'b1'");
like(sql($branches[0], q{CALL floral_branch_step('ms')}), qr/shares revealed/, 'with the true share b1 reveals');

# a resent reveal is a duplicate; a plain update is refused
my $att = sql($coord, "SELECT attempt FROM floral.secagg_rounds WHERE model = 'ms' AND round = $rd");
my $resend = sql($coord, "SELECT string_agg(encode(share, 'hex'), ',' ORDER BY owner) FROM floral.secagg_reveals WHERE model = 'ms' AND round = $rd AND holder = 'b1'");
is(sql($coord, "SELECT floral.fed_secagg_reveal('ms', 'b1', $rd, $att, '{b1,b2,b3}', '{self,self,self}', '{1,1,1}', '{$resend}')"),
	'duplicate', 'a resent reveal is answered "duplicate"');
for my $bad ("'{b1,b2,b3}', '{self,self,self}', NULL, '{$resend}'",
			 "'{b1,b2,b3}', '{self,self,self}', '{1,NULL,1}', '{$resend}'",
			 "NULL, '{self,self,self}', '{1,1,1}', '{$resend}'")
{
	my (undef, undef, $err) = try_sql($coord, "SELECT floral.fed_secagg_reveal('ms', 'b1', $rd, $att, $bad)");
	like($err, qr/22004: a reveal must not be or hold NULL/, 'a reveal that is or holds NULL is refused (22004)');
}
($merged) = run_round('ms', 0, 1, 2);
like($merged, qr/^round $rd merged securely from 3 of 3/, "round $rd merged once the true share was back");
my $r8 = $rd + 1;
is(sql($coord, "SELECT floral.fed_submit('ms', 'b2', $r8, 10, '{1,1}', encode(floral.tensor_send(params), 'base64'), 0, 1)
	FROM floral.rounds WHERE model = 'ms' AND round = $r8"), 'rejected', 'a plain update to a secure federation is rejected');
is(sql($coord, "SELECT status, sums IS NULL, reason FROM floral.updates WHERE model = 'ms' AND round = $r8 AND branch = 'b2'"),
	'rejected|t|secure aggregation is on: updates travel masked (floral.fed_secagg_input)',
	'its values were not stored');

# ---------------------------------------------------------------- e. rounds that come back

# After a rollback to round 6, rounds 6 and 7 run again; round 7 is trained
# again on other parameters and must be masked with fresh keys (the same
# masks on another update would give away the difference of the two).
my $keys = "SELECT string_agg(encode(s_public, 'hex') || encode(c_public, 'hex'), ',' ORDER BY branch)
	FROM floral.secagg_keys WHERE model = 'ms' AND round = ";
my %before = map { $_ => { map { $_ => 1 } split /,/, sql($coord, $keys . $_) } } 6, 7;
sql($coord, q{SELECT floral_rollback('ms', 6)});
for my $r (6, 7)
{
	($merged) = run_round('ms', 0, 1, 2);
	like($merged, qr/^round $r merged securely from 3 of 3/, "after a rollback round $r merges again");
	my @new = split /,/, sql($coord, $keys . $r);
	is(scalar(@new), 3, "round $r has three branches' keys again");
	is(scalar(grep { $before{$r}{$_} } @new), 0, "every key of the new round $r is fresh");
}

# ---------------------------------------------------------------- f. a dishonest coordinator

# downgrade: b1 joins mp again, requiring secure aggregation; mp says it
# is off, so b1 trains and sends nothing
($merged) = run_round('mp', 0, 1, 2);
like($merged, qr/merged from 3 of 3/, 'plain federation: the next round merged');
my $rp = round_of($coord, 'mp');
my ($rv, $out, $err) = $branches[0]->psql('postgres',
	join_sql('mp', 'b1', $conninfo, $train_src, $train_options, '{"require_secure_aggregation": 1}'));
like($err, qr/option "require_secure_aggregation" of floral_branch_join must be a JSON boolean/, 'require_secure_aggregation must be a boolean');
sql($branches[0], join_sql('mp', 'b1', $conninfo, $train_src, $train_options, '{"require_secure_aggregation": true}'));
like(sql($branches[0], q{CALL floral_branch_step('mp')}),
	qr/^round $rp: refused: the coordinator says secure aggregation is off and this link requires it/,
	'a link that requires secure aggregation refuses a coordinator that says it is off');
is(sql($branches[0], "SELECT count(*) FROM floral.outbox WHERE model = 'mp' AND round = $rp") . '|'
	. sql($coord, "SELECT count(*) FROM floral.updates WHERE model = 'mp' AND round = $rp AND branch = 'b1'"),
	'0|0', 'b1 trained nothing for that round and the coordinator got nothing from it');
like(sql($branches[0], q{SELECT last_error FROM floral.branch_status WHERE model = 'mp'}), qr/refused/,
	'branch_status keeps the refusal as the last error');
# the same link on the secure federation takes part as before
sql($branches[0], join_sql('ms', 'b1', $conninfo, $train_src, $train_options, '{"require_secure_aggregation": true}'));

# a threshold of 1 relayed: every branch refuses to share
my $rt = round_of($coord, 'ms');
sql($coord, q{
	CREATE FUNCTION evil_threshold() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.stage = 'share' THEN NEW.threshold := 1; END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER evil BEFORE UPDATE ON floral.secagg_rounds FOR EACH ROW EXECUTE FUNCTION evil_threshold();
});
my @t1 = map { sql($branches[$_], q{CALL floral_branch_step('ms')}) } 0, 1, 2, 0, 1, 2;
is(sql($coord, "SELECT stage, threshold FROM floral.secagg_rounds WHERE model = 'ms' AND round = $rt"), 'share|1',
	"round $rt: the coordinator relays threshold 1 of 3");
# the first two steps only advertise (the third closes the stage)
is(scalar(grep { /relayed threshold 1 for 3 participants; this branch shares with at least 2: nothing is shared/ } @t1[2 .. 5]), 4,
	'every branch refuses a threshold below a majority, at every step of the share stage');
is(sql($coord, "SELECT count(*) FROM floral.secagg_shares WHERE model = 'ms' AND round = $rt"), 0,
	'no branch sent a share');
sql($coord, qq{DROP TRIGGER evil ON floral.secagg_rounds;
	UPDATE floral.secagg_rounds SET threshold = 2 WHERE model = 'ms' AND round = $rt});
($merged) = run_round('ms', 0, 1, 2);
like($merged, qr/^round $rt merged securely from 3 of 3/, "with the threshold a majority again round $rt merges");

# U2 = {b1} relayed: b1 refuses to mask with itself alone
my $ru = round_of($coord, 'ms');
sql($coord, q{
	CREATE FUNCTION evil_sharers() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.stage = 'mask' AND OLD.stage = 'share' THEN NEW.sharers := '{b1}'; END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER evil BEFORE UPDATE ON floral.secagg_rounds FOR EACH ROW EXECUTE FUNCTION evil_sharers();
});
my @t2 = map { sql($branches[$_], q{CALL floral_branch_step('ms')}) } 0, 1, 2, 0, 1, 2, 0;
is(sql($coord, "SELECT stage, sharers FROM floral.secagg_rounds WHERE model = 'ms' AND round = $ru"), 'mask|{b1}',
	"round $ru: the coordinator relays U2 = {b1}");
like($t2[-1], qr/relayed \{b1\} as the branches that shared: not 2 or more distinct participants \(the threshold\): nothing is sent/,
	'b1 refuses to mask among itself alone');
is(sql($coord, "SELECT count(*) FROM floral.secagg_inputs WHERE model = 'ms' AND round = $ru"), 0,
	'no masked update reached the coordinator');
sql($coord, qq{DROP TRIGGER evil ON floral.secagg_rounds;
	UPDATE floral.secagg_rounds SET sharers = '{b1,b2,b3}' WHERE model = 'ms' AND round = $ru});
($merged) = run_round('ms', 0, 1, 2);
like($merged, qr/^round $ru merged securely from 3 of 3/, "with the true U2 round $ru merges");

# a new attempt after b2's masked update went out: b2 never masks it again
my $ra = round_of($coord, 'ms');
sql($branches[$_], q{CALL floral_branch_step('ms')}) for 0, 1, 2, 0, 1;
is(sql($coord, "SELECT stage, attempt, string_agg(i.branch, ',') FROM floral.secagg_rounds r JOIN floral.secagg_inputs i USING (model, round, attempt)
	WHERE model = 'ms' AND round = $ra GROUP BY 1, 2"), 'mask|1|b2', "round $ra: b2's masked update is in");
sql($coord, qq{DELETE FROM floral.updates WHERE model = 'ms' AND round = $ra AND status = 'secure';
	UPDATE floral.secagg_rounds SET attempt = attempt + 1, stage = 'advertise', threshold = NULL, participants = NULL,
		sharers = NULL, senders = NULL, stage_started_at = now() WHERE model = 'ms' AND round = $ra});
like(sql($branches[1], q{CALL floral_branch_step('ms')}),
	qr/attempt 2: this branch's update of round $ra was masked in attempt 1 already; it sits the rest of the round out/,
	'after a new attempt b2 sits the round out');
sql($branches[$_], q{CALL floral_branch_step('ms')}) for 0, 2, 1, 0, 2, 1;
is(sql($coord, "SELECT count(*) FROM floral.secagg_keys WHERE model = 'ms' AND round = $ra AND attempt = 2 AND branch = 'b2'")
	. '|' . sql($coord, "SELECT count(*) FROM floral.secagg_inputs WHERE model = 'ms' AND round = $ra AND attempt = 2 AND branch = 'b2'"),
	'0|0', 'b2 advertised no keys and sent no masked update in attempt 2');
is(sql($branches[1], "SELECT masked_attempt FROM floral.outbox WHERE model = 'ms' AND round = $ra"), '1',
	'b2\'s outbox records the one attempt its update was masked in');

# the coordinator restarts the round's numbering (a rollback of the current
# round): every branch shared in attempt 1 already, so none advertises its
# keys again (the same secrets would be shared twice)
sql($coord, "SELECT floral_rollback('ms', $ra)");
my @g = map { sql($branches[$_], q{CALL floral_branch_step('ms')}) } 0, 1, 2;
is(scalar(grep { /attempt 1 of round $ra started again after this branch shared in it; it sits the rest of the round out/ } @g), 3,
	'after a rollback of the current round every branch that shared in attempt 1 sits it out');
is(sql($coord, "SELECT count(*) FROM floral.secagg_keys WHERE model = 'ms' AND round = $ra"), 0,
	'no branch advertised its keys again');

done_testing();
