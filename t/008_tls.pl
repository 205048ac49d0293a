# Updates travel encrypted and authenticated, and carry nothing per tenant.
#
# A throwaway CA (openssl, made here) signs the coordinator's server
# certificate and one branch's client certificate.  The coordinator accepts
# only TLS on 127.0.0.1: one branch logs in with a SCRAM password, another
# with its client certificate; both verify the coordinator with
# sslmode=verify-full.  A round runs end to end over TLS.  Then a branch with
# a wrong password, one with a certificate from another CA, and one that
# does not trust the coordinator's CA are all refused.  Finally the
# coordinator's statement log shows no tenant name and no per-tenant value:
# only the branches' sums arrived.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use FloralTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

require_openssl();

# ---------------------------------------------------------------- certificates
my $dir = PostgreSQL::Test::Utils::tempdir;
make_ca($dir, 'ca');
make_ca($dir, 'evil_ca');
make_cert($dir, 'ca', 'server', 'localhost', 'DNS:localhost,IP:127.0.0.1');
make_cert($dir, 'ca', 'client', 'branch_cert');
make_cert($dir, 'evil_ca', 'evil_client', 'branch_cert');

# ---------------------------------------------------------------- coordinator
# only TLS from the network; a password for one branch, a certificate for the other
my $coord = new_node('coordinator', role => 'coordinator', tls => $dir, conf => "log_statement = 'all'\n",
	hba => [ 'hostssl  all  branch_pw    127.0.0.1/32  scram-sha-256', 'hostssl  all  branch_cert  127.0.0.1/32  cert' ]);
my $cport = $coord->port;

sql($coord, q{
	CREATE ROLE branch_pw LOGIN PASSWORD 'right horse battery' IN ROLE floral_branch;
	CREATE ROLE branch_cert LOGIN IN ROLE floral_branch;
} . federate_sql('m', spec => q{'{3,8,3}', 'classification', 2, 2, '{"seed": 5}'},
		branches => [ [ b_pw => 'branch_pw' ], [ b_cert => 'branch_cert' ] ]));

# ---------------------------------------------------------------- branches
# the branches are databases of one cluster, each with its extensions
my $branch = new_node('branch', role => 'branch', extensions => 0);
copy_certs($branch, $dir, qw(ca.crt evil_ca.crt client.crt client.key evil_client.crt evil_client.key));
my $bdata = $branch->data_dir;

my $verify = "host=localhost hostaddr=127.0.0.1 port=$cport dbname=postgres sslmode=verify-full sslrootcert=$bdata/ca.crt";
my %conninfo = (
	b_pw => "$verify user=branch_pw password='right horse battery'",
	b_cert => "$verify user=branch_cert sslcert=$bdata/client.crt sslkey=$bdata/client.key",
);

for my $b (sort keys %conninfo)
{
	$branch->safe_psql('postgres', "CREATE DATABASE $b");
	create_extensions($branch, role => 'branch', dbname => $b);
	$branch->safe_psql($b, qq{
		CREATE TABLE rows AS
		SELECT 'secret_tenant_${b}_' || (i % 3) AS tenant,
		       ARRAY[sin(i), cos(i), (i % 3)::real]::real[] AS features, i % 3 AS label
		FROM generate_series(1, 90) i;
	} . join_sql('m', $b, $conninfo{$b}, 'SELECT tenant, features, label FROM rows ORDER BY tenant'));
}

# a round end to end, over TLS
for my $b (sort keys %conninfo)
{
	like($branch->safe_psql($b, q{CALL floral_branch_step('m')}),
		qr/^round 0: trained 3 tenants on 90 rows, update sent$/, "$b trained and sent round 0 over TLS");
}
like($coord->safe_psql('postgres', q{SELECT floral_coordinator_step('m')}),
	qr/^round 0 merged from 2 of 2/, 'the coordinator merged both updates');
for my $b (sort keys %conninfo)
{
	like($branch->safe_psql($b, q{CALL floral_branch_step('m')}), qr/^round 1: trained/,
		"$b pulled round 1 and trained it");
}

my $log = PostgreSQL::Test::Utils::slurp_file($coord->logfile);
like($log, qr/connection authorized: user=branch_pw database=postgres SSL enabled/,
	'the password branch connected with TLS');
like($log, qr/connection authorized: user=branch_cert database=postgres SSL enabled/,
	'the certificate branch connected with TLS');

# ---------------------------------------------------------------- refusals
# joins from the branch cluster's database postgres
create_extensions($branch, role => 'branch');

sub join_error
{
	my ($conninfo) = @_;
	my ($rc, $out, $err) = $branch->psql('postgres',
		join_sql('m', 'b_pw', $conninfo, 'SELECT 1, ARRAY[1,2,3]::real[], 0'));
	return $err;
}
like(join_error("$verify user=branch_pw password='wrong horse'"),
	qr/password authentication failed for user "branch_pw"/, 'a wrong password is refused');
like(join_error("$verify user=branch_cert sslcert=$bdata/evil_client.crt sslkey=$bdata/evil_client.key"),
	qr/SSL|certificate|unknown ca/i, 'a client certificate from another CA is refused');
like(join_error("host=localhost hostaddr=127.0.0.1 port=$cport dbname=postgres sslmode=verify-full "
		  . "sslrootcert=$bdata/evil_ca.crt user=branch_pw password='right horse battery'"),
	qr/certificate verify failed/, 'a branch that does not trust the coordinator\'s CA refuses to talk to it');
like(join_error("host=127.0.0.1 port=$cport dbname=postgres sslmode=disable user=branch_pw password='right horse battery'"),
	qr/rejects connection|no encryption/, 'a connection without TLS is rejected');
is($coord->safe_psql('postgres', q{SELECT count(*) || ' from ' || string_agg(DISTINCT branch, ',') FROM floral.updates}),
	'4 from b_cert,b_pw', 'only the two admitted branches ever submitted (2 rounds each)');

# ---------------------------------------------------------------- what travelled
# the coordinator logged every statement it ran: no tenant name appears, and
# the updates it holds are one row of sums per branch and round
$log = PostgreSQL::Test::Utils::slurp_file($coord->logfile);
my @submits = ($log =~ /floral\.fed_submit\(/g);
cmp_ok(scalar(@submits), '>=', 2, 'the statement log shows the submissions');
unlike($log, qr/secret_tenant/, 'no tenant name ever reached the coordinator');
is( $coord->safe_psql('postgres', q{
		SELECT string_agg(branch || ':' || tenants || ':' || examples || ':' || cardinality(weights), ',' ORDER BY branch)
		  FROM floral.updates WHERE model = 'm' AND round = 0}),
	'b_cert:3:90:2,b_pw:3:90:2',
	'each update is one row: tenant count, examples, one weight per adaptor, and the sums');
# the sums are the branch's own: the branch computes the same from its contributions
for my $b (sort keys %conninfo)
{
	my $sent = $branch->safe_psql($b, q{SELECT md5(sums::text) FROM floral.outbox WHERE model = 'm' AND round = 1});
	my $got = $coord->safe_psql('postgres', qq{SELECT md5(sums::text) FROM floral.updates WHERE model = 'm' AND round = 1 AND branch = '$b'});
	is($got, $sent, "$b: the coordinator holds exactly the sums the branch sent, nothing more");
}
is($coord->safe_psql('postgres', q{SELECT count(*) FROM floral.tenants}), '0',
	'the coordinator has no tenant state at all');

$branch->stop;
$coord->stop;
done_testing();
