
=pod

=head1 NAME

FloralTest - scaffolding shared by floral's TAP tests (t/*.pl)

=head1 SYNOPSIS

  use FindBin;
  use lib $FindBin::RealBin;
  use FloralTest;

  my $node = new_node('node');                     # floral preloaded and created
  is(sql($node, 'SELECT 1'), '1', 'up');

  my ($coord, $branch) = start_federation(
	  models => [ m => { spec => q{'{3,8,3}', 'classification', 2, 1} } ],
	  rows   => sub { branch_rows_sql() },
	  source => 'SELECT tenant, features, label FROM rows ORDER BY tenant, features');

  my $s = session($node);                          # one backend, kept open
  $s->query_safe('BEGIN');
  my $c = background_call($node, q{SELECT floral_aggregate('m')});
  ok(lock_waiters($node, '%floral_aggregate%', 1), 'the aggregation waits');
  $s->query_safe('COMMIT');
  my ($out, $err) = finish_call($c);

=head1 DESCRIPTION

Every TAP test of floral starts PostgreSQL nodes configured like the
pg_regress suite (F<sql/regress.conf>), creates the extensions, talks to the
nodes through short psql calls, long-lived sessions and calls left running in
the background, waits for conditions, and many of them set up a federation:
a coordinator and branches that reach it over dblink.  This module is the one
place where that scaffolding is written; the tests keep only what they test.

PGXS runs prove with C<-I $(srcdir)>, the top of the tree, so a test finds
this module through FindBin (C<use lib $FindBin::RealBin>), which also works
when a test is run by hand from another directory.

Every function is exported by default.

=cut

package FloralTest;

use strict;
use warnings;

use Carp;
use Cwd qw(abs_path);
use Exporter 'import';
use File::Basename qw(dirname);
use File::Copy qw(copy);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(
  new_node create_extensions
  sql try_sql lit conninfo round_of
  session session_run session_ok session_send session_wait session_close
  background_call finish_call call_running
  wait_for lock_waiters
  federate_sql join_sql start_federation
  branch_rows_sql federation_rows_sql federated_accuracy
  require_openssl make_ca make_cert copy_certs
);

# The server settings of the pg_regress suite, next to this file's directory.
my $regress_conf = abs_path(dirname(__FILE__)) . '/../sql/regress.conf';

=pod

=head1 NODES

=over

=item new_node($name, %params)

Create, configure and start a node, and create the extensions its role
needs (see C<create_extensions>).  The configuration is, in this order:
F<sql/regress.conf> (the pg_regress suite's settings, among them
shared_preload_libraries), so that both suites run the extension alike; the
pg_cron settings if asked for; the TLS settings if asked for; then C<conf>.
Returns the started node.

=over

=item init => { ... }

Parameters for C<< $node->init >>, e.g. C<< allows_streaming => 'logical' >>.

=item role => 'coordinator' | 'branch'

What the node is in a federation; see C<create_extensions>.

=item cron => 1

Preload pg_cron next to what F<sql/regress.conf> preloads, run its jobs in
background workers in database postgres (so that it needs no libpq
connection to its own server), and create the pg_cron extension.  pg_cron
1.4 schedules by the minute only.

=item tls => $dir

Serve TLS on 127.0.0.1 with the F<server.crt>, F<server.key> and F<ca.crt>
of C<$dir> (see C<make_ca> and C<make_cert>), keep passwords as SCRAM
verifiers and log connections.

=item hba => [ $line, ... ]

Replaces F<pg_hba.conf>: local connections are trusted, the network
connections these lines admit are admitted, every other one is rejected.

=item conf => $text

More postgresql.conf lines, appended last.

=item extensions => 0

Create no extension (the test creates them itself, e.g. in other
databases).

=back

=cut

sub new_node
{
	my ($name, %params) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $params{init} // {} });

	my $preload = '';
	if (-f $regress_conf)
	{
		my $conf = PostgreSQL::Test::Utils::slurp_file($regress_conf);
		$node->append_conf('postgresql.conf', $conf);
		$preload = $1
		  if $conf =~ /^\s*shared_preload_libraries\s*=\s*'([^']*)'/m;
	}
	if ($params{cron})
	{
		$preload = $preload eq '' ? 'pg_cron' : "$preload,pg_cron";
		$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = '$preload'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 20
});
	}
	if (defined $params{tls})
	{
		copy_certs($node, $params{tls}, qw(server.crt server.key ca.crt));
		$node->append_conf('postgresql.conf', q{
listen_addresses = '127.0.0.1'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'ca.crt'
password_encryption = 'scram-sha-256'
log_connections = on
});
	}
	if (defined $params{hba})
	{
		my $hba = $node->data_dir . '/pg_hba.conf';
		open my $fh, '>', $hba or die "cannot write $hba: $!";
		print $fh join("\n", 'local  all  all  trust', @{ $params{hba} },
			'host  all  all  127.0.0.1/32  reject', '');
		close $fh;
	}
	$node->append_conf('postgresql.conf', $params{conf}) if $params{conf};
	$node->start;

	create_extensions($node, role => $params{role}, cron => $params{cron})
	  unless defined $params{extensions} && !$params{extensions};
	return $node;
}

=pod

=item create_extensions($node, %params)

Create the extensions a node needs, in database C<dbname> (default
postgres): floral alone on a single database; floral_federation (with
floral and dblink, CASCADE) on a coordinator (C<< role => 'coordinator' >>)
and on a branch (C<< role => 'branch' >>); pg_cron with C<< cron => 1 >>.
A coordinator never connects anywhere: only branches use dblink.  This is
the one place that says which extensions a test node has.

=cut

sub create_extensions
{
	my ($node, %params) = @_;
	my $role = $params{role} // '';
	croak "unknown role \"$role\"" if $role !~ /^(|coordinator|branch)$/;

	my @extensions = $role eq '' ? ('floral') : ('floral_federation CASCADE');
	push @extensions, 'pg_cron' if $params{cron};
	$node->safe_psql($params{dbname} // 'postgres',
		join("\n", map { "CREATE EXTENSION $_;" } @extensions));
	return;
}

=pod

=back

=head1 QUERIES

=over

=item sql($node, $query [, $user ])

C<< $node->safe_psql >> in database postgres, as C<$user> if given: the
output (unaligned, tuples only), dying on an error.

=cut

sub sql
{
	my ($node, $query, $user) = @_;
	return $node->safe_psql('postgres', $query,
		defined $user ? (extra_params => [ '-U', $user ]) : ());
}

=pod

=item try_sql($node, $query, %params)

Run C<$query> in database postgres (as C<< user => $role >> if given) with
verbose error messages, so that errors carry their SQLSTATE; an error does
not die.  Returns (exit code, stdout, stderr).

=cut

sub try_sql
{
	my ($node, $query, %params) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$query",
		defined $params{user} ? (extra_params => [ '-U', $params{user} ]) : ());
	return ($ret, $out, $err);
}

=pod

=item lit($string)

$string as an SQL string literal (standard_conforming_strings is on), or
NULL for undef.

=cut

sub lit
{
	my ($s) = @_;
	return 'NULL' unless defined $s;
	$s =~ s/'/''/g;
	return "'$s'";
}

=pod

=item conninfo($node)

The libpq conninfo of database postgres on C<$node> over its Unix socket,
as a branch stores its coordinator's.

=cut

sub conninfo
{
	my ($node) = @_;
	return 'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres';
}

=pod

=item round_of($node, $model)

The current round of C<$model> on C<$node>.

=cut

sub round_of
{
	my ($node, $model) = @_;
	return sql($node, 'SELECT round FROM floral.models WHERE name = ' . lit($model));
}

=pod

=back

=head1 SESSIONS

A session is a psql that stays connected (one backend) across queries: a
C<PostgreSQL::Test::BackgroundPsql>, whose C<query>, C<query_safe>,
C<query_until> and C<quit> methods work as usual.  Each query has a timeout
of its own (the default timeout), not one for the whole session.

=over

=item session($node, %params)

Open a session on database postgres.  C<< on_error_stop => 0 >> lets the
session carry on after an error (the default stops psql, as
C<background_psql> does); C<< verbose => 1 >> makes errors carry their
SQLSTATE.

=cut

sub session
{
	my ($node, %params) = @_;
	my $s = $node->background_psql('postgres',
		on_error_stop => $params{on_error_stop} // 1);
	$s->set_query_timer_restart;
	$s->query_safe('\set VERBOSITY verbose') if $params{verbose};
	return $s;
}

=pod

=item session_run($session, $sql)

Run C<$sql> in the session and wait for it.  Returns (stdout, stderr) of
that SQL alone: errors and notices do not die.

=cut

sub session_run
{
	my ($s, $sql) = @_;
	$s->{stderr} = '';
	my $out = $s->query($sql);
	return ($out, $s->{stderr});
}

=pod

=item session_ok($session, $sql)

Like C<session_run>, but dies if the SQL raised an ERROR; notices pass.
Returns the output.

=cut

sub session_ok
{
	my ($s, $sql) = @_;
	my ($out, $err) = session_run($s, $sql);
	croak "\"$sql\" failed: $err" if $err =~ /ERROR/;
	return $out;
}

=pod

=item session_send($session, $sql)

Send C<$sql> to the session without waiting for it to finish (for
example: a statement that will wait for a lock); C<session_wait> collects
it.  Returns once psql has read it.

=cut

sub session_send
{
	my ($s, $sql) = @_;
	$s->{stderr} = '';
	my $early = $s->query_until(qr/__floral_sent__\n/, "\\echo __floral_sent__\n$sql;\n");
	# whatever arrived along with the marker is the statement's already
	($s->{floral_early} = $early) =~ s/^.*?__floral_sent__\n//s;
	return;
}

=pod

=item session_wait($session)

Wait for what C<session_send> sent; returns (stdout, stderr) since it was
sent.

=cut

sub session_wait
{
	my ($s) = @_;
	my $out = ($s->{floral_early} // '') . $s->query('');
	$s->{floral_early} = '';
	$out =~ s/\n+$//;
	return ($out, $s->{stderr});
}

=pod

=item session_close($session)

Quit a session whose server may be gone already (stopped or crashed): the
errors of psql's exit do not matter then.

=cut

sub session_close
{
	my ($s) = @_;
	eval { $s->quit; };
	return;
}

=pod

=back

=head1 BACKGROUND CALLS

A call is one psql run, started and left to run while the test goes on:
its statements run in one backend, and the test collects the output later.

=over

=item background_call($node, $sql, %params)

Start psql on database postgres with C<$sql>, a statement or a reference to
an array of statements (each one a C<-c>, in one session).  C<< verbose =>
1 >> makes errors carry their SQLSTATE.  Returns the call (a hash
reference: its IPC::Run harness in C<h>, the output so far in C<out> and
C<err>).  The call times out after the default timeout.

=cut

sub background_call
{
	my ($node, $sql, %params) = @_;
	my %c = (out => '', err => '');
	my @cmd = ($node->installed_command('psql'), '-X', '-A', '-t', '-q',
		'-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'));
	push @cmd, '-v', 'VERBOSITY=verbose' if $params{verbose};
	push @cmd, map { ('-c', $_) } ref $sql ? @$sql : ($sql);
	$c{h} = IPC::Run::start(\@cmd, '>', \$c{out}, '2>', \$c{err},
		IPC::Run::timer($PostgreSQL::Test::Utils::timeout_default));
	return \%c;
}

=pod

=item finish_call($call)

Wait for a call to end.  Returns its output without the final newline, and
in list context (output, stderr).

=cut

sub finish_call
{
	my ($c) = @_;
	$c->{h}->finish;
	chomp(my $out = $c->{out});
	return wantarray ? ($out, $c->{err}) : $out;
}

=pod

=item call_running($call)

Whether the call's psql is still running (reads what it has written so far).

=cut

sub call_running
{
	my ($c) = @_;
	$c->{h}->pump_nb;
	return $c->{h}->pumpable;
}

=pod

=back

=head1 WAITING

=over

=item wait_for($node, $query, $want, %params)

Run C<$query> on database postgres every C<interval> seconds (default 0.1)
until its result equals C<$want> (a string) or matches it (a C<qr//>).
Returns that result, or undef if it did not come within C<timeout> seconds
(default: the default timeout) or once the call C<< call => $call >> has
ended.  The query runs at least once.

=cut

sub wait_for
{
	my ($node, $query, $want, %params) = @_;
	my $interval = $params{interval} // 0.1;
	my $deadline = time() + ($params{timeout} // $PostgreSQL::Test::Utils::timeout_default);
	while (1)
	{
		my $result = $node->safe_psql('postgres', $query);
		return $result if ref $want ? $result =~ $want : $result eq $want;
		return undef if $params{call} && !call_running($params{call});
		return undef if time() >= $deadline;
		usleep(int($interval * 1_000_000));
	}
}

=pod

=item lock_waiters($node, $pattern, $n)

Wait until at least C<$n> other backends of C<$node> wait for a lock in a
query LIKE C<$pattern>.  Returns whether they did (within the default
timeout of C<poll_query_until>).

=cut

sub lock_waiters
{
	my ($node, $pattern, $n) = @_;
	return $node->poll_query_until('postgres', qq{
		SELECT count(*) >= $n FROM pg_stat_activity
		 WHERE wait_event_type = 'Lock' AND query LIKE @{[lit($pattern)]} AND pid <> pg_backend_pid()});
}

=pod

=back

=head1 FEDERATIONS

A federation is a coordinator node and branch nodes.  A branch trains its
own tenants and reaches the coordinator with dblink; the coordinator never
connects anywhere.

=over

=item federate_sql($model, %params)

The SQL that federates C<$model> on a coordinator: it creates the model
(C<spec>: the arguments of floral_create_model after the name, as SQL),
sets the federation up (C<setup>: its options as JSON, if any) and admits
the C<branches>, in order: a reference to an array whose elements are
branch names, or pairs C<[ $name, $role ]> for a branch that acts through a
role of its own.

=cut

sub federate_sql
{
	my ($model, %params) = @_;
	my $m = lit($model);
	my $sql = "SELECT floral_create_model($m, $params{spec});\n"
	  . "SELECT floral_coordinator_setup($m"
	  . (defined $params{setup} ? ', ' . lit($params{setup}) : '') . ");\n";
	for my $b (@{ $params{branches} // [] })
	{
		my ($name, $role) = ref $b ? @$b : ($b);
		$sql .= "SELECT floral_coordinator_add_branch($m, " . lit($name)
		  . (defined $role ? ', ' . lit($role) : '') . ");\n";
	}
	return $sql;
}

=pod

=item join_sql($model, $branch, $coordinator, $source [, $train_options [, $options ]])

The SQL with which a branch joins C<$model> as C<$branch>: C<$coordinator>
is the coordinator's conninfo (or a dblink_fdw server), C<$source> the query
of the branch's rows, then the training options and the link's options as
JSON.

=cut

sub join_sql
{
	my ($model, $branch, $coordinator, $source, $train_options, $options) = @_;
	my @args = map { lit($_) } ($model, $branch, $coordinator, $source);
	push @args, lit($train_options // '{}') if defined $train_options || defined $options;
	push @args, lit($options) if defined $options;
	return 'SELECT floral_branch_join(' . join(', ', @args) . ");\n";
}

=pod

=item start_federation(%params)

Start a coordinator (node "coordinator") and C<branches> branch nodes
(default 1; nodes "branch1" ..., named b1 ... in the federation), federate
the C<models> on the coordinator with every branch, create each branch's
rows and join it to every model.  Returns (coordinator, branches).

=over

=item models => [ $name => { spec => ..., setup => ... }, ... ]

The models in order, with the arguments of C<federate_sql>.

=item rows => sub { my ($k) = @_; ... }

The SQL that creates branch C<$k>'s (from 1) rows.

=item source, train_options, link_options

The arguments of C<join_sql> for every branch and model.

=item coordinator_conf, branch_conf, cron

C<conf> of the coordinator and of the branches for C<new_node>, and
whether every node runs pg_cron.

=back

=cut

sub start_federation
{
	my (%params) = @_;
	my $n = $params{branches} // 1;
	my @names = map { "b$_" } 1 .. $n;
	my @models = @{ $params{models} // [] };

	my $coord = new_node('coordinator', role => 'coordinator',
		cron => $params{cron}, conf => $params{coordinator_conf});
	my @branches = map {
		new_node("branch$_", role => 'branch', cron => $params{cron},
			conf => $params{branch_conf})
	} 1 .. $n;

	my ($coordinator_sql, @join) = ('');
	for (my $i = 0; $i < @models; $i += 2)
	{
		my ($model, $m) = @models[ $i, $i + 1 ];
		$coordinator_sql .= federate_sql($model, %$m, branches => \@names);
		push @join, $model;
	}
	sql($coord, $coordinator_sql) if $coordinator_sql ne '';

	for my $k (1 .. $n)
	{
		my $branch_sql = $params{rows} ? $params{rows}->($k) : '';
		$branch_sql .= join_sql($_, $names[ $k - 1 ], conninfo($coord), $params{source},
			$params{train_options}, $params{link_options})
		  for @join;
		sql($branches[ $k - 1 ], $branch_sql) if $branch_sql ne '';
	}
	return ($coord, @branches);
}

=pod

=item branch_rows_sql()

Creates table rows of a small branch: tenants t0, t1 and t2, 30 rows each,
of three features and three classes.

=cut

sub branch_rows_sql
{
	return q{
	CREATE TABLE rows AS
	SELECT 't' || (i % 3) AS tenant,
	       ARRAY[sin(i), cos(i * 0.7), sin(i * 0.3)]::real[] AS features,
	       (i % 3) AS label
	  FROM generate_series(1, 90) i;
	};
}

=pod

=item federation_rows_sql($lo, $hi, $tenants_per_branch)

Creates table rows with the deterministic rows of branches C<$lo> to
C<$hi>: C<$tenants_per_branch> tenants per branch, named b<branch>_t<t>
with t numbered across branches (so that names are unique in the
federation), in group t % 2, with 120 rows each (column i); group 1's label
is group 0's shifted by one class (mod 3), so that the two groups need
different models.

=cut

sub federation_rows_sql
{
	my ($lo, $hi, $tpb) = @_;
	return qq{
	CREATE TABLE rows AS
	SELECT format('b%s_t%s', b, lpad(t::text, 2, '0')) AS tenant, b AS branch, t % 2 AS grp, i,
	       ARRAY[sin(i * 1.1 + t), cos(i * 0.9 + t * 0.5), sin(i * 0.37) * 2]::real[] AS features,
	       ((CASE WHEN sin(i * 1.1 + t) > 0.3 THEN 2
	              WHEN cos(i * 0.9 + t * 0.5) > 0 THEN 1 ELSE 0 END) + t % 2) % 3 AS label
	  FROM generate_series($lo, $hi) b,
	       generate_series($tpb * (b - 1), $tpb * b - 1) t,
	       generate_series(1, 120) i;
	};
}

=pod

=item federated_accuracy($model, $source, @branches)

Personalised accuracy of C<$model> over the branches, each evaluating its
own tenants' rows of C<$source>, weighted by examples.  Returns (examples,
accuracy).

=cut

sub federated_accuracy
{
	my ($model, $source, @branches) = @_;
	my ($n, $correct) = (0, 0);
	for my $node (@branches)
	{
		my ($e, $c) = split /\|/, sql($node, qq{
			SELECT sum(examples), sum(accuracy * examples)
			  FROM floral_evaluate(@{[lit($model)]}, @{[lit($source)]})});
		$n += $e;
		$correct += $c;
	}
	return ($n, $correct / $n);
}

=pod

=back

=head1 CERTIFICATES

For tests of TLS between branches and a coordinator: a throwaway CA made
with openssl in a directory of the test.

=over

=item require_openssl()

Skip the whole test (C<plan skip_all>) unless openssl is installed.

=cut

sub require_openssl
{
	my $openssl = `which openssl`;
	chomp $openssl;
	plan skip_all => 'openssl is not installed' unless $openssl;
	return;
}

# run a command quietly; die if it fails
sub run_quietly
{
	my ($cmd) = @_;
	system("$cmd >/dev/null 2>&1") == 0 or die "failed: $cmd";
	return;
}

=pod

=item make_ca($dir, $name [, $cn ])

A self-signed CA, F<$dir/$name.crt> with its key F<$dir/$name.key>, whose
common name is C<$cn> (default C<$name>).

=cut

sub make_ca
{
	my ($dir, $name, $cn) = @_;
	$cn //= $name;
	run_quietly("openssl req -new -x509 -days 2 -nodes -newkey rsa:2048 -subj '/CN=$cn' "
		  . "-keyout $dir/$name.key -out $dir/$name.crt");
	return;
}

=pod

=item make_cert($dir, $ca, $name, $cn [, $san ])

A certificate F<$dir/$name.crt> (key F<$dir/$name.key>, mode 0600) for
common name C<$cn>, signed by the CA C<$ca> of C<make_ca>: a server's with
the subjectAltName C<$san> (e.g. C<DNS:localhost,IP:127.0.0.1>), else a
client's.

=cut

sub make_cert
{
	my ($dir, $ca, $name, $cn, $san) = @_;
	run_quietly("openssl req -new -nodes -newkey rsa:2048 -subj '/CN=$cn' "
		  . "-keyout $dir/$name.key -out $dir/$name.csr");
	my $ext = "$dir/$name.ext";
	open my $fh, '>', $ext or die "cannot write $ext: $!";
	print $fh $san ? "subjectAltName = $san\n" : "basicConstraints = CA:FALSE\n";
	close $fh;
	run_quietly("openssl x509 -req -days 2 -in $dir/$name.csr -CA $dir/$ca.crt -CAkey $dir/$ca.key "
		  . "-CAcreateserial -extfile $ext -out $dir/$name.crt");
	chmod 0600, "$dir/$name.key";
	return;
}

=pod

=item copy_certs($node, $dir, @files)

Copy C<@files> of C<$dir> into the node's data directory (where a relative
ssl_*_file or a branch's sslcert finds them); keys get mode 0600, as libpq
and the server require.

=cut

sub copy_certs
{
	my ($node, $dir, @files) = @_;
	my $data = $node->data_dir;
	for my $f (@files)
	{
		copy("$dir/$f", "$data/$f") or die "cannot copy $dir/$f to $data: $!";
		chmod 0600, "$data/$f" if $f =~ /\.key$/;
	}
	return;
}

=pod

=back

=cut

1;
