# shellcheck shell=bash
# Makes sure PostgreSQL server binaries (initdb, postgres, pg_ctl, psql) and
# the `postgres` system user exist, installing the Debian package
# `postgresql` if they do not. Sourced by scripts/test and scripts/demo.
#
# After `ensure_postgres`, PG_BINDIR names the directory holding initdb.
# Nothing here starts, stops or connects to any server: the package may
# bring up the machine's own cluster on port 5432, which crmsync's scripts
# and tests never use (they start private throwaway clusters).

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: need root to run '$*', and sudo is not installed" >&2
        return 1
    fi
}

# Prints the bin directory of the newest PostgreSQL server found, or nothing.
find_pg_bindir() {
    local dir
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
            echo "$dir"
            return 0
        fi
    fi
    # Debian installs each major version side by side; take the newest.
    local initdb
    initdb="$(ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$initdb" ] && [ -x "$initdb" ]; then
        dirname "$initdb"
    fi
}

ensure_postgres() {
    PG_BINDIR="$(find_pg_bindir)"
    if [ -z "$PG_BINDIR" ]; then
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "error: no PostgreSQL server binaries (initdb) found and no apt-get to install them;" >&2
            echo "       install PostgreSQL 13 or later and put pg_config on PATH" >&2
            return 1
        fi
        echo "==> installing PostgreSQL from Debian packages" >&2
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
        PG_BINDIR="$(find_pg_bindir)"
        if [ -z "$PG_BINDIR" ]; then
            echo "error: installed the 'postgresql' package but found no initdb" >&2
            return 1
        fi
    fi
    export PG_BINDIR

    # initdb and postgres refuse to run as root: as root, crmsync's scripts
    # and tests run them as the `postgres` user (the package creates it).
    if ! id -u postgres >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; then
            echo "==> creating the postgres system user" >&2
            as_root useradd --system --user-group --home-dir /var/lib/postgresql \
                --shell /bin/bash postgres
        else
            echo "warning: no 'postgres' system user (only needed when running as root)" >&2
        fi
    fi
}
