#!/usr/bin/env bash
# Install everything floral needs to build and test, from Debian 12's archive.
#
# Idempotent: when every package is already installed it touches nothing (no
# network, no apt lock), so scripts/test.sh can call it on every run.  On a
# fresh machine it refreshes the package lists first, because a new image may
# have empty or stale lists and `apt-get install` would then find nothing.
#
# Note: installing postgresql-15 makes postgresql-common create and start a
# "main" cluster on port 5432.  We leave it alone; nothing in our tests
# connects to it or uses port 5432 (tests run private temporary instances).
set -euo pipefail

PACKAGES=(
	build-essential          # gcc, make
	pkg-config               # the Makefile asks it for OpenBLAS flags
	postgresql-15            # server binaries used by the temporary test instances
	postgresql-server-dev-15 # PGXS, pg_config, server headers, pg_regress, TAP modules
	postgresql-contrib
	libopenblas-dev          # CBLAS for the dense math
	libipc-run-perl          # required by PostgreSQL::Test::Cluster (TAP tests)
	postgresql-15-cron
	dataset-fashion-mnist    # small real data set for benchmarks/examples
	gnuplot-nox              # benchmark plots
	python3                  # helper scripts
	openssl                  # the TLS test makes a throwaway CA
	libssl-dev               # libcrypto headers: secure aggregation (src/secagg.c)
)

if [[ $(id -u) -ne 0 ]]; then
	if command -v sudo >/dev/null 2>&1; then
		exec sudo -E bash "$0" "$@"
	fi
	echo "install-deps.sh: must run as root (apt-get install)" >&2
	exit 1
fi

# Which packages are not yet fully installed?  dpkg-query prints
# "install ok installed" only for a package that is unpacked AND configured.
missing=()
for p in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	if [[ $status != "install ok installed" ]]; then
		missing+=("$p")
	fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
	echo "install-deps.sh: all ${#PACKAGES[@]} packages already installed"
	exit 0
fi

echo "install-deps.sh: installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Refresh the lists: on a fresh machine they may be missing or out of date.
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

# Check, so that a partial install fails here and not later in the build.
for p in "${missing[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	if [[ $status != "install ok installed" ]]; then
		echo "install-deps.sh: $p is still not installed ($status)" >&2
		exit 1
	fi
done
echo "install-deps.sh: done"
