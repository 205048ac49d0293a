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

use File::Copy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $openssl = `which openssl`;
chomp $openssl;
plan skip_all => 'openssl is not installed' unless $openssl;

my $dir = PostgreSQL::Test::Utils::tempdir;

sub run_ok
{
	my ($cmd) = @_;
	system("$cmd >/dev/null 2>&1") == 0 or die "failed: $cmd";
}

# ---------------------------------------------------------------- certificates
sub make_ca
{
	my ($name) = @_;
	run_ok("$openssl req -new -x509 -days 2 -nodes -newkey rsa:2048 -subj '/CN=$name' "
		  . "-keyout $dir/$name.key -out $dir/$name.crt");
}

sub make_cert
{
	my ($ca, $name, $cn, $san) = @_;
	run_ok("$openssl req -new -nodes -newkey rsa:2048 -subj '/CN=$cn' -keyout $dir/$name.key -out $dir/$name.csr");
	my $ext = "$dir/$name.ext";
	open my $fh, '>', $ext or die;
	print $fh $san ? "subjectAltName = $san\n" : "basicConstraints = CA:FALSE\n";
	close $fh;
	run_ok("$openssl x509 -req -days 2 -in $dir/$name.csr -CA $dir/$ca.crt -CAkey $dir/$ca.key "
		  . "-CAcreateserial -extfile $ext -out $dir/$name.crt");
	chmod 0600, "$dir/$name.key";
}

make_ca('ca');
make_ca('evil_ca');
make_cert('ca', 'server', 'localhost', 'DNS:localhost,IP:127.0.0.1');
make_cert('ca', 'client', 'branch_cert');
make_cert('evil_ca', 'evil_client', 'branch_cert');

# ---------------------------------------------------------------- coordinator
my $coord = PostgreSQL::Test::Cluster->new('coordinator');
$coord->init;
$coord->append_conf('postgresql.conf', PostgreSQL::Test::Utils::slurp_file('sql/regress.conf'));
my $cdata = $coord->data_dir;
copy("$dir/$_", "$cdata/$_") or die for qw(server.crt server.key ca.crt);
chmod 0600, "$cdata/server.key";
$coord->append_conf('postgresql.conf', qq{
listen_addresses = '127.0.0.1'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'ca.crt'
password_encryption = 'scram-sha-256'
log_connections = on
log_statement = 'all'
});
# only TLS from the network; a password for one branch, a certificate for the other
open my $hba, '>', "$cdata/pg_hba.conf" or die;
print $hba <<'EOF';
local    all  all                      trust
hostssl  all  branch_pw    127.0.0.1/32  scram-sha-256
hostssl  all  branch_cert  127.0.0.1/32  cert
host     all  all          127.0.0.1/32  reject
EOF
close $hba;
$coord->start;
my $cport = $coord->port;

$coord->safe_psql('postgres', q{
	CREATE EXTENSION floral;
	CREATE ROLE branch_pw LOGIN PASSWORD 'right horse battery' IN ROLE floral_branch;
	CREATE ROLE branch_cert LOGIN IN ROLE floral_branch;
	SELECT floral_create_model('m', '{3,8,3}', 'classification', 2, 2, '{"seed": 5}');
	SELECT floral_coordinator_setup('m');
	SELECT floral_coordinator_add_branch('m', 'b_pw', 'branch_pw');
	SELECT floral_coordinator_add_branch('m', 'b_cert', 'branch_cert');
});

# ---------------------------------------------------------------- branches
my $branch = PostgreSQL::Test::Cluster->new('branch');
$branch->init;
$branch->append_conf('postgresql.conf', PostgreSQL::Test::Utils::slurp_file('sql/regress.conf'));
$branch->start;
my $bdata = $branch->data_dir;
copy("$dir/$_", "$bdata/$_") or die for qw(ca.crt evil_ca.crt client.crt client.key evil_client.crt evil_client.key);
chmod 0600, "$bdata/client.key", "$bdata/evil_client.key";

my $verify = "host=localhost hostaddr=127.0.0.1 port=$cport dbname=postgres sslmode=verify-full sslrootcert=$bdata/ca.crt";
my %conninfo = (
	b_pw => "$verify user=branch_pw password='right horse battery'",
	b_cert => "$verify user=branch_cert sslcert=$bdata/client.crt sslkey=$bdata/client.key",
);

for my $b (sort keys %conninfo)
{
	$branch->safe_psql('postgres', "CREATE DATABASE $b");
	$branch->safe_psql($b, qq{
		CREATE EXTENSION floral;
		CREATE EXTENSION dblink;
		CREATE TABLE rows AS
		SELECT 'secret_tenant_${b}_' || (i % 3) AS tenant,
		       ARRAY[sin(i), cos(i), (i % 3)::real]::real[] AS features, i % 3 AS label
		FROM generate_series(1, 90) i;
		SELECT floral_branch_join('m', '$b', \$\$$conninfo{$b}\$\$,
		                          'SELECT tenant, features, label FROM rows ORDER BY tenant');
	});
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
sub join_error
{
	my ($conninfo) = @_;
	my ($rc, $out, $err) = $branch->psql('postgres', qq{
		CREATE EXTENSION IF NOT EXISTS floral;
		CREATE EXTENSION IF NOT EXISTS dblink;
		SELECT floral_branch_join('m', 'b_pw', \$\$$conninfo\$\$, 'SELECT 1, ARRAY[1,2,3]::real[], 0');
	});
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
