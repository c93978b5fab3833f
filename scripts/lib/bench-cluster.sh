# Shared by the benchmark scripts: the crmsync binary to time, and a
# throwaway PostgreSQL cluster tuned for loading (fsync off) on a free port,
# removed on exit (BENCH_KEEP=1 keeps it). Source it from the project root
# after scripts/lib/ensure-postgres.sh; it sets CRMSYNC, WORK, PORT and the
# helpers as_pg, psql_on, now, secs and rate.

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1
as_pg() {
    if [ "$IS_ROOT" -eq 1 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ensure_postgres
if [ -n "${CRMSYNC_BIN:-}" ]; then
    CRMSYNC="$CRMSYNC_BIN"
else
    cargo build --release --bin crmsync >&2
    TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    CRMSYNC="${TARGET_DIR:-$ROOT/target}/release/crmsync"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/crmsync-bench.XXXXXX")"
PG_STARTED=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "${BENCH_KEEP:-}" ] && [ "$PG_STARTED" -eq 1 ]; then
        echo "cluster kept: port $PORT, data $WORK/data, config $WORK/crmsync.toml" >&2
        exit "$rc"
    fi
    if [ "$PG_STARTED" -eq 1 ]; then
        as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
[ "$IS_ROOT" -eq 1 ] && chown postgres: "$WORK"

as_pg "$PG_BINDIR/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 \
    --no-locale --no-sync >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; exit 1; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=55329
while :; do
    while port_in_use "$PORT"; do PORT=$((PORT + 1)); done
    if as_pg "$PG_BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w -t 60 \
        -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=256MB -c max_wal_size=4GB" \
        start >/dev/null; then
        break
    fi
    [ "$PORT" -ge 55429 ] && { cat "$WORK/postgres.log" >&2; exit 1; }
    PORT=$((PORT + 1))
done
PG_STARTED=1

psql_on() {
    local db="$1"
    shift
    "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d "$db" "$@"
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }

