# shellcheck shell=bash
# Installs the two TDS clients that share no code with tiberius, for the
# SQL Server stand-in's cross-check tests: FreeTDS `tsql` (Debian package
# freetds-bin) and python-tds (PyPI). Best effort: without them those checks
# print SKIPPED and the rest of the suite still runs. Sourced by scripts/test
# after scripts/lib/ensure-postgres.sh (which defines as_root).

ensure_tds_clients() {
    if ! command -v tsql >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing FreeTDS (freetds-bin) from Debian packages" >&2
        as_root apt-get update >/dev/null || true
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y freetds-bin >/dev/null ||
            echo "warning: could not install freetds-bin; the tsql cross-checks will be skipped" >&2
    fi
    if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import pytds' 2>/dev/null; then
        echo "==> installing python-tds from PyPI" >&2
        python3 -m pip install --quiet python-tds 2>/dev/null ||
            python3 -m pip install --quiet --user python-tds 2>/dev/null ||
            python3 -m pip install --quiet --break-system-packages python-tds 2>/dev/null ||
            echo "warning: could not install python-tds; its cross-checks will be skipped" >&2
    fi
}
