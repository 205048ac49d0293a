# A branch runs without a superuser, and its step runs with the rights of
# the role that joined, never with those of whoever runs the step.
#
# On the branch cluster a superuser only installs floral, dblink and
# pg_cron and sets up an ordinary role, branch_runner (LOGIN, floral_admin,
# not a superuser).  The coordinator listens on 127.0.0.1 only, with TLS.
#
#   1. Password, no superuser: branch_runner reaches the coordinator through
#      a foreign server of dblink_fdw whose user mapping holds the password
#      of the coordinator's role b1 (SCRAM); it joins, and a pg_cron job
#      that branch_runner owns runs the step.  The round completes, the job
#      succeeded, and it ran as branch_runner.
#   2. Client certificate, no superuser: without dblink_connect_u the join
#      fails clearly (a password is required; dblink_connect_u is not
#      granted); once a superuser grants it the round completes; revoked
#      again, the step reports why it cannot connect.
#   3. The stored source runs as the joining role: a superuser stepping a
#      link of branch_runner cannot read a table branch_runner cannot read
#      (and nothing is trained); a source whose function writes fails with
#      25006 and writes nothing; one whose function does SET ROLE NONE
#      cannot become the superuser running the step; a floral_admin that is
#      not a member of the owner may not run the step (42501) nor edit the
#      link or the outbox, directly or through floral's helper functions.
#
# pg_cron 1.4 (Debian 12's postgresql-15-cron) schedules by the minute only,
# so the job of part 1 is scheduled first and parts 2 and 3 (other models,
# not touched by the job) run while it waits for the next minute.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

require_openssl();

my $CRON_TIMEOUT = 150;    # seconds to wait for the job's first run
my $PASSWORD = 'correct horse staple';
my $src = 'SELECT tenant, features, label FROM rows ORDER BY tenant, features';

# ---------------------------------------------------------------- certificates
my $dir = PostgreSQL::Test::Utils::tempdir;
make_ca($dir, 'ca', 'test ca');
make_cert($dir, 'ca', 'server', 'localhost', 'DNS:localhost,IP:127.0.0.1');
make_cert($dir, 'ca', 'client', 'branch_cert');

# ---------------------------------------------------------------- coordinator
# Reachable only over TCP on 127.0.0.1: b1 with a SCRAM password,
# branch_cert with its client certificate, nobody else.
my $coord = new_node('coordinator', role => 'coordinator', tls => $dir,
	hba => [ 'host     all  b1           127.0.0.1/32  scram-sha-256', 'hostssl  all  branch_cert  127.0.0.1/32  cert' ]);
my $cport = $coord->port;

my $spec = q{'{3,8,3}', 'classification', 2, 1, '{"seed": 5}'};
sql($coord, qq{
	CREATE ROLE b1 LOGIN PASSWORD '$PASSWORD' IN ROLE floral_branch;
	CREATE ROLE branch_cert LOGIN IN ROLE floral_branch;
}
	  . federate_sql('m', spec => $spec, branches => [ [ b1 => 'b1' ] ])
	  . federate_sql('c', spec => $spec, branches => [ [ bc => 'branch_cert' ] ])
	  . federate_sql('p', spec => $spec, branches => [ [ b1 => 'b1' ] ]));
is(sql($coord, q{SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'b1'}),
	'SCRAM-SHA-256$', "the coordinator keeps b1's password as a SCRAM verifier");

# ---------------------------------------------------------------- branch
# What the superuser does on the branch, and nothing more: install floral,
# dblink and pg_cron (new_node), then the roles and the connection.
my $branch = new_node('branch', role => 'branch', cron => 1);
copy_certs($branch, $dir, qw(ca.crt client.crt client.key));
my $bdata = $branch->data_dir;

sql($branch, branch_rows_sql() . qq{
	CREATE ROLE branch_runner LOGIN IN ROLE floral_admin;
	CREATE ROLE other_admin LOGIN IN ROLE floral_admin;
	GRANT SELECT ON rows TO branch_runner;
	CREATE SERVER coord FOREIGN DATA WRAPPER dblink_fdw
	       OPTIONS (host '127.0.0.1', port '$cport', dbname 'postgres');
	CREATE USER MAPPING FOR branch_runner SERVER coord OPTIONS (user 'b1', password '$PASSWORD');
	GRANT USAGE ON FOREIGN SERVER coord TO branch_runner;
	GRANT USAGE ON SCHEMA cron TO branch_runner;
	CREATE SCHEMA runner AUTHORIZATION branch_runner;
	-- for part 3: a table branch_runner may not read, and a function that writes
	CREATE TABLE secret AS SELECT * FROM rows;
	CREATE TABLE audit (at timestamptz DEFAULT now());
	GRANT SELECT, INSERT ON audit TO branch_runner;
	CREATE FUNCTION sneaky() RETURNS int VOLATILE LANGUAGE plpgsql AS
	  \$\$BEGIN INSERT INTO audit DEFAULT VALUES; RETURN 1; END\$\$;
});
is( sql($branch, q{SELECT current_user, rolsuper, pg_has_role('floral_admin', 'MEMBER')
	                 FROM pg_roles WHERE rolname = current_user}, 'branch_runner'),
	'branch_runner|f|t', 'branch_runner is an ordinary role: a floral_admin, not a superuser');

# ---------------------------------------------------------------- 1. password, pg_cron
sql($branch, join_sql('m', 'b1', 'coord', $src), 'branch_runner');
is( sql($branch, q{SELECT runs_as, local_round, coordinator, auth
	                 FROM floral.branch_status JOIN floral.branch_links USING (model, branch)
	                WHERE model = 'm'}),
	'branch_runner|0|coord|password',
	'branch_runner joined through the foreign server; the link runs as branch_runner');

my $jobid = sql($branch,
	q{SELECT cron.schedule('floral-branch-m', '* * * * *', $$CALL floral_branch_step('m')$$)},
	'branch_runner');
my $cron_started = time();
is( sql($branch, "SELECT username, database, command FROM cron.job WHERE jobid = $jobid"),
	q{branch_runner|postgres|CALL floral_branch_step('m')},
	'the pg_cron job belongs to branch_runner');

# ---------------------------------------------------------------- 2. certificate
my $cert_conninfo = "host=localhost hostaddr=127.0.0.1 port=$cport dbname=postgres sslmode=verify-full "
  . "sslrootcert=$bdata/ca.crt user=branch_cert sslcert=$bdata/client.crt sslkey=$bdata/client.key";
my $join_c = sub {
	my ($options) = @_;
	return try_sql($branch, join_sql('c', 'bc', $cert_conninfo, $src, '{}', $options), user => 'branch_runner');
};
my (undef, $out, $err) = $join_c->('{}');
like($err, qr/password is required/,
	'with auth password, a certificate conninfo is refused: a role that is not a superuser needs a password');
(undef, $out, $err) = $join_c->('{"auth": "certificate"}');
like($err, qr/42501: permission denied for function dblink_connect_u/,
	'with auth certificate, the join fails until a superuser grants dblink_connect_u');
is(sql($branch, q{SELECT count(*) FROM floral.branch_links WHERE model = 'c'}),
	'0', 'the failed joins left no link');

sql($branch, q{GRANT EXECUTE ON FUNCTION dblink_connect_u(text, text) TO branch_runner});
(undef, $out, $err) = $join_c->('{"auth": "certificate"}');
is($err, '', 'after GRANT EXECUTE ON FUNCTION dblink_connect_u, branch_runner joins with its certificate');
like(sql($branch, q{CALL floral_branch_step('c')}, 'branch_runner'),
	qr/^round 0: trained 3 tenants on 90 rows, update sent$/,
	'branch_runner steps over the certificate connection');
like(sql($coord, q{SELECT floral_coordinator_step('c')}),
	qr/^round 0 merged from 1 of 1 selected branches/, 'the coordinator merged the certificate branch\'s round');
like(PostgreSQL::Test::Utils::slurp_file($coord->logfile),
	qr/connection authenticated: identity="(CN=)?branch_cert" method=cert/,
	'the coordinator authenticated the branch by its client certificate');

sql($branch, q{REVOKE EXECUTE ON FUNCTION dblink_connect_u(text, text) FROM branch_runner});
like(sql($branch, q{CALL floral_branch_step('c')}, 'branch_runner'),
	qr/^coordinator unreachable: permission denied for function dblink_connect_u$/,
	'with the grant revoked, the step says clearly why it cannot connect');
like(sql($branch, q{SELECT last_error FROM floral.branch_status WHERE model = 'c'}),
	qr/permission denied for function dblink_connect_u/, 'branch_status keeps that error');

# ---------------------------------------------------------------- 3. the joining role's rights
my $secret_src = 'SELECT tenant, features, label FROM secret ORDER BY tenant, features';
sql($branch, join_sql('p', 'b1', 'coord', $secret_src), 'branch_runner');
is(sql($branch, q{SELECT count(*) FROM secret}), '90', 'the superuser can read table secret');
is( sql($branch, q{CALL floral_branch_step('p')}),
	'round 0: training failed: permission denied for table secret',
	'a superuser running the step of branch_runner\'s link reads the source with branch_runner\'s rights');
is( sql($branch, q{SELECT (SELECT count(*) FROM floral.outbox WHERE model = 'p'),
	                      (SELECT count(*) FROM floral.contributions WHERE model = 'p'),
	                      (SELECT count(*) FROM floral.tenants WHERE model = 'p')}),
	'0|0|0', 'nothing was trained, collected or sent');
is( sql($branch, q{SELECT runs_as, last_error FROM floral.branch_status WHERE model = 'p'}),
	'branch_runner|round 0: training failed: permission denied for table secret',
	'branch_status shows the role the step ran as and the error');

my $sneaky_src = 'SELECT tenant, features, label FROM rows WHERE sneaky() > 0 ORDER BY tenant, features';
is( sql($branch, q{BEGIN; SELECT sneaky(); SELECT count(*) FROM audit; ROLLBACK;}, 'branch_runner'),
	"1\n1", 'branch_runner may write to audit through sneaky() outside a source');
sql($branch, join_sql('p', 'b1', 'coord', $sneaky_src), 'branch_runner');
is( sql($branch, q{CALL floral_branch_step('p')}),
	'round 0: training failed: cannot execute INSERT in a read-only transaction',
	'a source calling a function that writes fails in the step');
(undef, $out, $err) = try_sql($branch, qq{SELECT * FROM floral_train('p', @{[lit($sneaky_src)]})}, user => 'branch_runner');
like($err, qr/25006: cannot execute INSERT in a read-only transaction/, 'with SQLSTATE 25006');
is(sql($branch, q{SELECT count(*) FROM audit}), '0', 'and the table gained no row');

# Nor can the source turn back into the session's user (the superuser
# running the step) with SET ROLE NONE.
sql($branch, q{
	CREATE FUNCTION runner.escape() RETURNS TABLE (tenant text, features real[], label int)
	LANGUAGE plpgsql AS $$
	BEGIN
		SET LOCAL ROLE NONE;
		RETURN QUERY SELECT s.tenant, s.features, s.label FROM secret s;
	END $$;
}, 'branch_runner');
sql($branch, join_sql('p', 'b1', 'coord', 'SELECT * FROM runner.escape()'), 'branch_runner');
is( sql($branch, q{CALL floral_branch_step('p')}),
	'round 0: training failed: cannot set parameter "role" within security-restricted operation',
	'a source cannot SET ROLE NONE back to the superuser running the step');
is( sql($branch, q{SELECT (SELECT count(*) FROM floral.outbox WHERE model = 'p'),
	                      (SELECT count(*) FROM floral.tenants WHERE model = 'p')}),
	'0|0', 'and trained nothing');

(undef, $out, $err) = try_sql($branch, q{CALL floral_branch_step('p')}, user => 'other_admin');
like($err, qr/42501: role "other_admin" may not run the branch of model "p"/,
	'a floral_admin that is not a member of the owner may not run the step (42501)');
like($err, qr/HINT:  Run it as "branch_runner"/, 'with a hint naming the role that joined');
(undef, $out, $err) = try_sql($branch, q{UPDATE floral.branch_links SET source = 'SELECT * FROM secret'}, user => 'other_admin');
like($err, qr/42501: permission denied for table branch_links/,
	'a floral_admin that is not the owner cannot edit the link (42501)');
(undef, $out, $err) = try_sql($branch, q{UPDATE floral.branch_links SET source = 'SELECT * FROM secret'}, user => 'branch_runner');
like($err, qr/42501: permission denied for table branch_links/,
	'nor can the owner itself: a link changes only by joining again');
(undef, $out, $err) = try_sql($branch, q{UPDATE floral.outbox SET sent_at = now()}, user => 'other_admin');
like($err, qr/42501: permission denied for table outbox/, 'nor the outbox');
is(sql($branch, q{SELECT source, owner FROM floral.branch_links WHERE model = 'p'}),
	'SELECT * FROM runner.escape()|branch_runner', 'the link is unchanged');

# With a source branch_runner may read, the same superuser step succeeds:
# it connected through branch_runner's user mapping (the superuser has none).
sql($branch, join_sql('p', 'b1', 'coord', $src), 'branch_runner');
is( sql($branch, q{SELECT count(*) FROM pg_user_mappings WHERE srvname = 'coord' AND usename = current_user}),
	'0', 'the superuser has no user mapping for the coordinator');
like(sql($branch, q{CALL floral_branch_step('p')}), qr/^round 0: trained 3 tenants on 90 rows, update sent$/,
	'a superuser running the step with a readable source trains and sends, as branch_runner');

# floral's own helpers, granted to every floral_admin, write the link and
# the outbox only for a session that may act as the owner.
my $before = sql($branch, q{SELECT o.round || ':' || o.answer || '|' || l.last_step
                              FROM floral.outbox o JOIN floral.branch_links l USING (model) WHERE model = 'p'});
for my $call (q{floral._branch_mark_sent('p', 0, 'forged', 0)}, q{floral._branch_void_sent('p', 0)},
	q{floral._branch_note('p', true, NULL, 'forged')}, q{floral._branch_sync('p', 0, NULL, NULL)},
	q{floral._branch_collect('p', 0)})
{
	(undef, $out, $err) = try_sql($branch, "SELECT $call", user => 'other_admin');
	like($err, qr/42501: role "other_admin" may not act for the branch of model "p"/,
		"a floral_admin that is not the owner may not call $call");
}
is( sql($branch, q{SELECT o.round || ':' || o.answer || '|' || l.last_step
	                 FROM floral.outbox o JOIN floral.branch_links l USING (model) WHERE model = 'p'}),
	$before, 'the outbox and the link are unchanged');

# ---------------------------------------------------------------- 1. (continued) the job's round
my $sent = wait_for($branch, q{SELECT count(*) > 0 FROM floral.outbox WHERE model = 'm' AND sent_at IS NOT NULL},
	't', timeout => $CRON_TIMEOUT - (time() - $cron_started), interval => 0.5) // 'f';
note sprintf('the job sent round 0 %d s after it was scheduled', time() - $cron_started);
is($sent, 't', 'the pg_cron job trained and sent round 0');
$branch->poll_query_until('postgres',
	"SELECT count(*) > 0 FROM cron.job_run_details WHERE jobid = $jobid AND status <> 'running'")
  or die 'the job run did not end';
sql($branch, q{SELECT cron.unschedule('floral-branch-m')}, 'branch_runner');
is( sql($branch, qq{SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status <> 'succeeded'),
	                       string_agg(DISTINCT username, ',')
	                  FROM cron.job_run_details WHERE jobid = $jobid AND status <> 'running'}),
	'1|0|branch_runner', 'cron.job_run_details: the run succeeded, as branch_runner');
is( sql($branch, q{SELECT runs_as, last_step, last_error IS NULL FROM floral.branch_status WHERE model = 'm'}),
	'branch_runner|round 0: trained 3 tenants on 90 rows, update sent|t',
	'the job\'s step trained and sent the round, as branch_runner, without error');
like(sql($coord, q{SELECT floral_coordinator_step('m')}),
	qr/^round 0 merged from 1 of 1 selected branches; round 1 started$/, 'the coordinator merged the round');
is( sql($coord, q{SELECT branches, tenants, examples FROM floral.federation_rounds WHERE model = 'm' AND round = 0}),
	sprintf('{b1}|%s', sql($branch, q{SELECT tenants || '|' || examples FROM floral.outbox WHERE model = 'm' AND round = 0})),
	'the merged round is exactly the update the job sent');
like(PostgreSQL::Test::Utils::slurp_file($coord->logfile),
	qr/connection authenticated: identity="b1" method=scram-sha-256/,
	'the coordinator authenticated b1 with SCRAM');

$branch->stop;
$coord->stop;
done_testing();
