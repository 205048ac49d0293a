# floral_train, floral_evaluate and floral_personalize in parallel workers.
#
# A call spreads its tenants over parallel workers when
# min(floral.max_parallel_workers, max_parallel_maintenance_workers) > 0, the
# source has two tenants or more and its rows are at least
# min_parallel_table_scan_size (set to 0 here, so that small data goes
# parallel).  This test checks that
#
# - a parallel call stores bit for bit what a serial call stores: the row of
#   sums in floral.contributions, the tenants' logits and adaptors, the
#   history's losses, and after floral_aggregate the next round's parameters;
#   evaluation and personalisation return (and store) the same numbers.  For
#   a plain model, a Local Adaptor model (private banks take their own
#   shared memory), a model with dp_clip and a regression model, over one
#   or two rounds;
# - one diverging tenant fails the whole call, naming the tenant, whether it
#   ran in the leader or in a worker, and nothing is stored;
# - statement_timeout and pg_cancel_backend stop a running parallel call with
#   57014, leave no parallel worker behind, and store nothing;
# - floral.progress shows one entry for a parallel call (not one per worker),
#   whose tenant count advances.
#
# Every parallel call is checked to have launched workers (floral.timing's
# NOTICE, or pg_stat_activity while it runs), so the test cannot pass by
# running serially; every serial call is checked to have launched none.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $node = new_node('parallel', conf => qq{
max_worker_processes = 8
max_parallel_workers = 8
max_parallel_maintenance_workers = 2
});

# Nine tenants of uneven sizes (more tenants than participants, so that the
# tasks are shared out), labels for classification and regression; the
# sources are ordered, so that every call reads the rows in the same order.
$node->safe_psql('postgres', q{
	CREATE TABLE rows AS
	SELECT row_number() OVER () AS n, 't' || k AS tenant,
	       ARRAY(SELECT sin(i * j + k) FROM generate_series(1, 8) j)::real[] AS features,
	       (i + k) % 3 AS label,
	       sin(i + 2 * k)::real AS target
	FROM generate_series(0, 8) k, generate_series(1, 60 + 35 * k) i;
});

my $settings = q{SET floral.timing = on; SET min_parallel_table_scan_size = 0; };
my %mode = (
	serial   => $settings . q{SET floral.max_parallel_workers = 0; },
	parallel => $settings . q{SET floral.max_parallel_workers = 8; });

# run SQL in a session of the given mode; returns (exit code, stdout, stderr)
sub run_sql
{
	my ($mode, $sql) = @_;
	return try_sql($node, $mode{$mode} . $sql);
}

# run a call serially on one model and in parallel on its twin; checks that
# each ran as asked and returned the same rows; returns the output
sub both
{
	my ($what, $function, $ms, $mp, $sql) = @_;
	my %out;
	for my $m ([ 'serial', $ms, qr/; 0 parallel workers/ ], [ 'parallel', $mp, qr/; 2 parallel workers/ ])
	{
		my ($mode, $model, $workers) = @$m;
		(my $s = $sql) =~ s/%M/$model/g;
		my $r = substr($mode, 0, 1);
		$s =~ s/%R/$r/g;
		my ($ret, $out, $err) = run_sql($mode, $s);
		is($ret, 0, "$what: $mode call succeeded") or diag($err);
		like($err, qr/NOTICE:  00000: $function: \d+ rows of \d+ tenants; .*$workers/,
			"$what: the $mode call ran with " . ($mode eq 'serial' ? 'no' : '2') . ' parallel workers');
		$out{$mode} = $out;
	}
	isnt($out{serial}, '', "$what: the call returned rows");
	is($out{parallel}, $out{serial}, "$what: parallel call returned exactly what the serial call returned");
	return $out{serial};
}

# what a model stores, in text, without its name, call ids or timestamps
my %stored_sql = (
	contributions => q{
		SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s', round, chunk, tenants, examples,
		                         weights, max_examples, loss_sum, octet_length(sums), md5(sums)),
		                  E'\n' ORDER BY round, call, chunk)
		  FROM floral.contributions WHERE model = '%M'},
	tenants => q{
		SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', tenant, logits, pinned,
		                         md5(floral.tensor_send(adaptors)), examples, last_round, start_round,
		                         start_logits, md5(floral.tensor_send(start_adaptors)),
		                         contributed_call IS NOT NULL),
		                  E'\n' ORDER BY tenant)
		  FROM floral.tenants WHERE model = '%M'},
	history => q{
		SELECT string_agg(format('%s|%s|%s|%s|%s|%s', round, split, tenant, examples, loss, accuracy),
		                  E'\n' ORDER BY round, split, tenant)
		  FROM floral.history WHERE model = '%M'},
	rounds => q{
		SELECT string_agg(format('%s|%s|%s|%s|%s', round, md5(floral.tensor_send(params)),
		                         tenants, examples, loss),
		                  E'\n' ORDER BY round)
		  FROM floral.rounds WHERE model = '%M'},
	model => q{SELECT round FROM floral.models WHERE name = '%M'});

# several queries in one session; returns their outputs
sub queries
{
	my @q = @_;
	my $out = $node->safe_psql('postgres', join("\nSELECT '#--#';\n", map { "$_;" } @q));
	my @r = split /\n?#--#\n?/, $out, -1;
	die "expected " . scalar(@q) . " results, got " . scalar(@r) unless @r == @q;
	return @r;
}

sub stored_query
{
	my ($model, $what) = @_;
	(my $sql = $stored_sql{$what}) =~ s/%M/$model/g;
	return $sql;
}

sub stored
{
	my ($model, $what) = @_;
	return (queries(stored_query($model, $what)))[0];
}

# the stored state of the serial model and of its parallel twin, after the
# statements in @before (e.g. aggregation)
sub same_state
{
	my ($label, $ms, $mp, $what, @before) = @_;
	my @r = queries(@before, map { (stored_query($ms, $_), stored_query($mp, $_)) } @$what);
	splice(@r, 0, scalar(@before));
	for my $w (@$what)
	{
		my ($s, $p) = splice(@r, 0, 2);
		isnt($s, '', "$label: $ms has $w");
		is($p, $s, "$label: $w of the parallel model equal the serial model's, bit for bit");
	}
}

my $source = q{'SELECT tenant, features, label FROM rows ORDER BY n'};
my $regression_source = q{'SELECT tenant, features, target FROM rows ORDER BY n'};

########################################################################
# Serial and parallel calls store the same bits
########################################################################
# kind, floral_create_model's arguments, source, rounds, whether it
# personalises (a Local Adaptor model has no shared mixture)
my @kinds = (
	[ 'plain', q{'{8,16,3}', 'classification', 3, 0.5, '{"seed": 7}'}, $source, 2, 1 ],
	[ 'local', q{'{8,16,3}', 'classification', 2, 0.5, '{"seed": 11, "private_adaptors": true}'}, $source, 2, 0 ],
	[ 'dp',    q{'{8,16,3}', 'classification', 3, 0.5, '{"seed": 13, "dp_clip": 0.05}'}, $source, 1, 1 ],
	[ 'reg',   q{'{8,12,1}', 'regression', 2, 0.5, '{"seed": 17}'}, $regression_source, 1, 1 ]);

for my $k (@kinds)
{
	my ($kind, $args, $src, $nrounds, $personalises) = @$k;
	my ($ms, $mp) = ("${kind}_s", "${kind}_p");
	same_state("$kind, created", $ms, $mp, ['rounds'],
		"SELECT floral_create_model('$ms', $args)", "SELECT floral_create_model('$mp', $args)");

	for my $round (0 .. $nrounds - 1)
	{
		my $trained = both("$kind, training round $round", 'floral_train', $ms, $mp,
			qq{SELECT tenant, examples, loss FROM floral_train('%M', $src, '{"epochs": 2, "batch_size": 16}') ORDER BY tenant});
		is(scalar(split /\n/, $trained), 9, "$kind, round $round: nine tenants trained");
		same_state("$kind, trained in round $round", $ms, $mp, [ 'contributions', 'tenants', 'history' ]);
		same_state("$kind, aggregated round $round", $ms, $mp, [ 'rounds', 'tenants', 'model' ],
			"SELECT floral_aggregate('$ms')", "SELECT floral_aggregate('$mp')");
	}
	my ($rounds, $private) = queries(
		qq{SELECT count(DISTINCT md5(floral.tensor_send(params))) FROM floral.rounds WHERE model = '$mp'},
		qq{SELECT count(DISTINCT md5(floral.tensor_send(adaptors))) FROM floral.tenants WHERE model = '$mp'});
	is($rounds, $nrounds + 1, "$kind: rounds 0 to $nrounds have different parameters (training did something)");
	is($private, '9', "$kind: each of the nine tenants has private adaptors of its own") if $kind eq 'local';

	# evaluation of the same model serially and in parallel, recorded under
	# two splits
	my $evaluated = both("$kind, evaluation", 'floral_evaluate', $mp, $mp,
		qq{SELECT tenant, examples, loss, accuracy FROM floral_evaluate('%M', $src, 'test_%R') ORDER BY tenant});
	is(scalar(split /\n/, $evaluated), 9, "$kind: nine tenants evaluated");
	is( $node->safe_psql('postgres', qq{
			SELECT count(*) FROM floral.history s JOIN floral.history p
			    ON s.tenant = p.tenant AND s.round = p.round AND s.examples = p.examples
			   AND s.loss IS NOT DISTINCT FROM p.loss AND s.accuracy IS NOT DISTINCT FROM p.accuracy
			 WHERE s.model = '$mp' AND p.model = '$mp' AND s.split = 'test_s' AND p.split = 'test_p'}),
		'9', "$kind: the evaluations recorded serially and in parallel are equal for all nine tenants");

	next unless $personalises;
	# personalisation of new tenants (cold start)
	(my $psrc = $src) =~ s/SELECT tenant/SELECT ''new_'' || tenant/;
	both("$kind, personalisation", 'floral_personalize', $ms, $mp,
		qq{SELECT tenant, examples, loss, mixture FROM floral_personalize('%M', $psrc, '{"epochs": 3}') ORDER BY tenant});
	if ($kind eq 'plain')
	{
		(my $osrc = $src) =~ s/SELECT tenant/SELECT ''one_'' || tenant/;
		both("$kind, one-hot personalisation", 'floral_personalize', $ms, $mp,
			qq{SELECT tenant, examples, loss, mixture FROM floral_personalize('%M', $osrc, '{"method": "one_hot"}') ORDER BY tenant});
	}
	same_state("$kind, personalised", $ms, $mp, [ 'tenants', 'rounds' ]);
}

########################################################################
# One diverging tenant fails the whole call, and nothing is stored
########################################################################
$node->safe_psql('postgres', q{
	CREATE TABLE bad AS
	SELECT tenant, CASE WHEN tenant = 't3' THEN array_fill(1e30::real, ARRAY[8]) ELSE features END AS features, label
	FROM rows;
	SELECT floral_create_model('d', '{8,16,3}', 'classification', 3, 0.5, '{"seed": 7}');
});
# a first round, so that the model has tenants, history and a contribution
my ($ret, $out, $err) = run_sql('parallel', q{
	SELECT count(*) FROM floral_train('d', 'SELECT tenant, features, label FROM rows');
	SELECT floral_aggregate('d');
	SELECT count(*) FROM floral_train('d', 'SELECT tenant, features, label FROM rows WHERE tenant IN (''t0'', ''t1'')')});
is($ret, 0, 'diverging: the model trained a first round') or diag($err);
like($err, qr/floral_train: \d+ rows of 9 tenants; .*; 2 parallel workers/, 'diverging: with parallel workers');

sub state_of_d
{
	return join("\n--\n", queries(map { stored_query('d', $_) } qw(contributions tenants history rounds model)));
}
my $before = state_of_d();
like($before, qr/\|t\n--\n/, 'diverging: the model has a pending contribution');

# the same source with sane features goes parallel
($ret, $out, $err) = run_sql('parallel', q{SELECT count(*) FROM floral_evaluate('d', 'SELECT tenant, features, label FROM bad')});
like($err, qr/floral_evaluate: \d+ rows of 9 tenants; .*; 2 parallel workers/,
	'diverging: the bad source goes parallel (evaluation)');

for my $participation ('on', 'off')
{
	($ret, $out, $err) = run_sql('parallel',
		"SET parallel_leader_participation = $participation; "
		  . q{SELECT count(*) FROM floral_train('d', 'SELECT tenant, features, label FROM bad')});
	isnt($ret, 0, "diverging (leader participation $participation): the call failed");
	like($err, qr/ERROR:  22003: training diverged for tenant "t3" in epoch 1/,
		"diverging (leader participation $participation): 22003, naming tenant t3");
	unlike($err, qr/NOTICE:  00000: floral_train/, "diverging (leader participation $participation): no call completed");
	if ($participation eq 'off')
	{
		# the leader trains no tenant: t3 diverged in a worker
		like($err, qr/CONTEXT:  parallel worker/, 'diverging: the error came from a parallel worker');
	}
	is(state_of_d(), $before,
		"diverging (leader participation $participation): contributions, tenants, history and rounds unchanged");
	ok($node->poll_query_until('postgres',
			q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'parallel worker'}),
		"diverging (leader participation $participation): no parallel worker left");
}
# and the model trains again afterwards
($ret, $out, $err) = run_sql('parallel',
	q{SELECT count(*) FROM floral_train('d', 'SELECT tenant, features, label FROM rows WHERE tenant <> ''t3''')});
is($out, '6', 'diverging: the model trains the sane tenants afterwards (t0 and t1 had contributed)') or diag($err);
like($err, qr/; 2 parallel workers/, 'diverging: in parallel');

########################################################################
# Long calls: progress, statement_timeout, pg_cancel_backend
########################################################################
$node->safe_psql('postgres', q{
	CREATE TABLE big AS
	SELECT 'b' || lpad((i % 60)::text, 2, '0') AS tenant,
	       ARRAY(SELECT sin(i * j) FROM generate_series(1, 64) j)::real[] AS features,
	       i % 5 AS label
	FROM generate_series(1, 6000) i;
	SELECT floral_create_model('long', '{64,256,5}', 'classification', 4, 8);
});

# a call in the background, in a session of parallel mode
sub start_call
{
	my (@sql) = @_;
	return background_call($node, [ split(/; /, $mode{parallel}), @sql ], verbose => 1);
}

# poll a query until its result matches; returns the result, or undef (also
# as soon as the call $c, if given, has ended)
sub poll_for
{
	my ($sql, $re, $c) = @_;
	return wait_for($node, $sql, $re, call => $c, interval => 0.02);
}

my $workers = q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'parallel worker'};
my $nothing_stored = q{
	SELECT (SELECT count(*) FROM floral.contributions WHERE model = 'long') || '|' ||
	       (SELECT count(*) FROM floral.tenants WHERE model = 'long') || '|' ||
	       (SELECT count(*) FROM floral.history WHERE model = 'long') || '|' ||
	       (SELECT round FROM floral.models WHERE name = 'long')};
my $long = q{SELECT count(*) FROM floral_train('long', 'SELECT tenant, features, label FROM big', '{"epochs": 400}')};

# progress: one entry for the call while its workers run; cancel it then
my $c = start_call($long);
my $progress = q{
	SELECT (SELECT count(*) FROM floral.progress) || '|' ||
	       (SELECT count(*) FROM pg_stat_activity a JOIN floral.progress p ON a.leader_pid = p.pid
	         WHERE a.backend_type = 'parallel worker') || '|' ||
	       coalesce((SELECT command || '|' || model || '|' || tenants || '|' || tenant_number || '|' || pid
	                   FROM floral.progress), '')};
my $first = poll_for($progress, qr/^\d+\|2\|/, $c);
ok(defined $first, 'progress: the long call runs with parallel workers');
$first //= '';
like($first, qr/^1\|2\|train\|long\|60\|\d+\|\d+$/,
	"progress: one entry for the call, which has 2 parallel workers ($first)");
my (undef, undef, undef, undef, undef, $n0, $pid) = split /\|/, $first;
# several readings while the workers run: always one entry
my $one = 1;
for (1 .. 5)
{
	my $r = $node->safe_psql('postgres', $progress);
	$one = 0, diag("progress reading: $r") unless $r =~ /^1\|[12]\|train\|long\|60\|/;
	usleep(50_000);
}
ok($one, 'progress: every reading shows exactly one entry while the workers run');
my $n1 = $n0 // 0;
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
while (time() < $deadline)
{
	my $r = $node->safe_psql('postgres', $progress);
	last unless $r =~ /^1\|[12]\|train\|long\|60\|(\d+)\|/;
	$n1 = $1;
	last if $n1 > $n0;
	usleep(50_000);
}
ok($n1 > $n0, "progress: the tenant number moves forward ($n0 -> $n1)");

is($node->safe_psql('postgres', qq{SELECT count(*) FROM pg_stat_activity WHERE leader_pid = $pid AND backend_type = 'parallel worker'}),
	'2', 'cancel: the call still runs its workers');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
finish_call($c);
like($c->{err}, qr/ERROR:  57014: canceling statement due to user request/, 'cancel: the call failed with 57014');
ok($node->poll_query_until('postgres', "SELECT ($workers) = 0"), 'cancel: no parallel worker left');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.progress}), '0', 'cancel: the progress slot is released');
is($node->safe_psql('postgres', $nothing_stored), '0|0|0|0', 'cancel: nothing stored');

# statement_timeout on a call that would run for long
$c = start_call(q{SET statement_timeout = '4s'},
	q{SELECT count(*) FROM floral_train('long', 'SELECT tenant, features, label FROM big', '{"epochs": 2000}')});
my $t0 = time();
ok(defined poll_for(qq{SELECT count(*) FROM pg_stat_activity a JOIN floral.progress p ON a.leader_pid = p.pid
	                    WHERE a.backend_type = 'parallel worker'}, qr/^2$/, $c),
	'timeout: the call runs with 2 parallel workers');
finish_call($c);
like($c->{err}, qr/ERROR:  57014: canceling statement due to statement timeout/, 'timeout: the call failed with 57014');
ok(time() - $t0 < 60, 'timeout: the call stopped soon');
ok($node->poll_query_until('postgres', "SELECT ($workers) = 0"), 'timeout: no parallel worker left');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.progress}), '0', 'timeout: the progress slot is released');
is($node->safe_psql('postgres', $nothing_stored), '0|0|0|0', 'timeout: nothing stored');

# a parallel worker cancelled: the whole call fails, nothing is stored
$c = start_call($long);
my $wpid = poll_for(q{SELECT min(a.pid) FROM pg_stat_activity a JOIN floral.progress p ON a.leader_pid = p.pid
	                   WHERE a.backend_type = 'parallel worker' HAVING count(*) = 2}, qr/^\d+$/, $c);
ok(defined $wpid, 'worker cancelled: the call runs with 2 parallel workers');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($wpid)") if defined $wpid;
finish_call($c);
like($c->{err}, qr/ERROR:  57014: canceling statement due to user request\nCONTEXT:  parallel worker/,
	'worker cancelled: the call failed with 57014 from the worker');
ok($node->poll_query_until('postgres', "SELECT ($workers) = 0"), 'worker cancelled: no parallel worker left');
is($node->safe_psql('postgres', q{SELECT count(*) FROM floral.progress}), '0', 'worker cancelled: the progress slot is released');
is($node->safe_psql('postgres', $nothing_stored), '0|0|0|0', 'worker cancelled: nothing stored');

# the model trains normally afterwards (no lock or slot left behind)
($ret, $out, $err) = run_sql('parallel', q{SELECT count(*) FROM floral_train('long', 'SELECT tenant, features, label FROM big')});
is($out, '60', 'after the cancellations the model trains its 60 tenants') or diag($err);
like($err, qr/; 2 parallel workers/, 'in parallel');
is($node->safe_psql('postgres', $nothing_stored), '1|60|60|0', 'and stores one row of sums, 60 tenants and their history');

$node->stop;
done_testing();
