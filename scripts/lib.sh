# shellcheck shell=bash disable=SC2034  # (variables set here are for the callers)
# scripts/lib.sh: what scripts/test.sh, scripts/demo.sh and the benchmarks
# (through bench/lib.sh) share.  Sourced, never run:
#
#   . "$ROOT/scripts/lib.sh"
#   work_dir NAME [KEEP]     # WORK=/tmp/floral-NAME.XXXXXX, cleaned up at exit
#   PORT=$(free_port 55432 55531)   # a port nothing listens on
#   as_pg_env HOME CMD...    # CMD as postgres with a small, explicit environment
#   "${AS_PG[@]}" CMD...     # CMD as postgres (as root), or as the caller
#   become_root SCRIPT HINT "$@"    # unless root, run SCRIPT again under sudo
#
# Servers run as the postgres user (PostgreSQL refuses to run as root), with
# their data directories inside WORK.  At exit every server whose data
# directory lies inside WORK is stopped, each by the pid in its own
# postmaster.pid, and WORK is removed; no other server is touched.
#
# Read here: PG_BINDIR (pg_ctl, to stop the servers at exit; set it before
# the script exits).

PG_USER=postgres
if [ "$(id -u)" -eq 0 ]; then
    AS_PG=(runuser -u "$PG_USER" --)
else
    AS_PG=()
fi
# become_root SCRIPT HINT ARGS...: as root, nothing; otherwise SCRIPT runs
# again under sudo with ARGS, in place of this process, or, without sudo,
# this one stops with "SCRIPT's name: must run as root (HINT)".
become_root() {
    local script=$1 hint=$2
    shift 2
    [ "$(id -u)" -ne 0 ] || return 0
    if command -v sudo >/dev/null 2>&1; then
        exec sudo bash "$script" "$@"
    fi
    echo "$(basename "$script"): must run as root ($hint)" >&2
    exit 1
}

# background processes to end at exit, before the servers are stopped
WORK_PIDS=()

# work_dir NAME [KEEP]: make WORK (owned by postgres, readable by all) and
# arrange for the cleanup at exit; KEEP=1 keeps the directory (its servers
# are still stopped, with a fast shutdown so that they start again without
# recovery).  Signals become a normal exit, so that the cleanup runs.  Set
# WORK_LEFTOVERS_NOTE=1 to be told about every server still running at exit
# (for scripts whose servers should have stopped by then).
work_dir() {
    WORK=$(mktemp -d "/tmp/floral-$1.XXXXXX")
    WORK_KEEP=${2:-0}
    chown "$PG_USER:" "$WORK" 2>/dev/null || true
    chmod 755 "$WORK"
    trap work_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# shellcheck disable=SC2317  # invoked through the EXIT trap
work_cleanup() {
    local rc=$? p pidfile pid data mode=immediate me
    set +e
    me=$(basename "$0")
    for p in "${WORK_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        [ "${WORK_KEEP:-0}" = 1 ] && mode=fast
        while IFS= read -r pidfile; do
            data=$(dirname "$pidfile")
            pid=$(head -n 1 "$pidfile" 2>/dev/null)
            if ! [[ $pid =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then continue; fi
            [ "${WORK_LEFTOVERS_NOTE:-0}" = 1 ] && echo "$me: stopping leftover server in $data (pid $pid)" >&2
            "${AS_PG[@]}" "$PG_BINDIR/pg_ctl" -D "$data" stop -m "$mode" -w -t 600 >/dev/null 2>&1 \
                || kill -9 "$pid"
        done < <(find "$WORK" -name postmaster.pid 2>/dev/null)
        if [ "${WORK_KEEP:-0}" = 1 ]; then
            echo "$me: kept $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

# free_port [FIRST LAST]: a TCP port of 127.0.0.1 that nothing listens on,
# the first one from FIRST to LAST, or without a range one the kernel picks.
# (Our servers listen on a unix socket in their own directory, or on
# 127.0.0.1 only, but the port number names the socket file and the shared
# memory key, so it is kept unique.)
free_port() {
    local p
    if [ $# -eq 0 ]; then
        /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    for p in $(seq "$1" "$2"); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "$(basename "$0"): no free port in $1-$2" >&2
    return 1
}

# as_pg_env HOME CMD...: run CMD as postgres with a small, explicit
# environment, so that the results do not depend on the caller's shell:
# PATH with $PG_BINDIR first, HOME, LANG=C.UTF-8, one OpenBLAS thread, and
# OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE when set (some machines need them
# for OpenBLAS to pick a working kernel).
as_pg_env() {
    local envs=(
        PATH="$PG_BINDIR:/usr/local/bin:/usr/bin:/bin"
        HOME="$1"
        LANG=C.UTF-8
        OPENBLAS_NUM_THREADS=1
    )
    shift
    if [ -n "${OPENBLAS_CORETYPE:-}" ]; then
        envs+=(OPENBLAS_CORETYPE="$OPENBLAS_CORETYPE")
    fi
    if [ -n "${OPENBLAS_L2_SIZE:-}" ]; then
        envs+=(OPENBLAS_L2_SIZE="$OPENBLAS_L2_SIZE")
    fi
    "${AS_PG[@]}" env -i "${envs[@]}" "$@"
}
