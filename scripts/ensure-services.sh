#!/usr/bin/env bash
# Make PostgreSQL (127.0.0.1:5432, user postgres, no password) and Redis (127.0.0.1:6379)
# reachable for the tests: use them where they run, start them where installed but
# stopped, install them (root on Debian) where missing; otherwise say what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
export DEBIAN_FRONTEND=noninteractive
apt_updated=0

pg_ready() {
    "$PY" - <<'PYEOF'
import sys
try:
    import psycopg
    psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2").close()
except Exception as exc:
    sys.exit(f"  PostgreSQL: {exc}".strip())
PYEOF
}

redis_ready() {
    "$PY" - <<'PYEOF'
import sys
try:
    import redis
    redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()
except Exception as exc:
    sys.exit(f"  Redis: {exc}")
PYEOF
}

wait_for() {  # wait_for CHECK NAME
    for _ in $(seq 60); do
        if "$1" 2>/dev/null; then return 0; fi
        sleep 0.5
    done
    echo "ensure-services: $2 did not become reachable within 30 s:" >&2
    "$1"
}

can_apt() { [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; }

apt_install() {
    if [[ $apt_updated == 0 ]]; then
        apt-get update -qq
        apt_updated=1
    fi
    apt-get install -y -qq "$@" >/dev/null
}

pg_clusters() { ls /etc/postgresql 2>/dev/null | sort -V; }

pg_start() {
    local version
    version=$(pg_clusters | tail -n 1)
    echo "ensure-services: starting PostgreSQL $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
}

ensure_postgres() {
    pg_ready 2>/dev/null && return 0
    if [[ -n $(pg_clusters) ]] && command -v pg_ctlcluster >/dev/null; then
        pg_start
    elif can_apt; then
        echo "ensure-services: installing PostgreSQL (apt-get install postgresql)"
        apt_install postgresql
        local hba
        hba=$(ls /etc/postgresql/*/main/pg_hba.conf | sort -V | tail -n 1)
        # The tests connect as postgres over TCP without a password, as on a dev machine.
        sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
        pg_start
        pg_ctlcluster --skip-systemctl-redirect "$(pg_clusters | tail -n 1)" main reload || true
    else
        echo "ensure-services: PostgreSQL is not reachable on 127.0.0.1:5432 and not installed." >&2
        echo "  Install and start it (Debian: apt-get install postgresql), with user postgres" >&2
        echo "  allowed without a password on 127.0.0.1 (pg_hba.conf: host all postgres 127.0.0.1/32 trust)." >&2
        return 1
    fi
    wait_for pg_ready "PostgreSQL (postgres@127.0.0.1:5432)"
}

redis_start() {
    echo "ensure-services: starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
}

ensure_redis() {
    redis_ready 2>/dev/null && return 0
    if command -v redis-server >/dev/null; then
        redis_start
    elif can_apt; then
        echo "ensure-services: installing Redis (apt-get install redis-server)"
        apt_install redis-server
        redis_ready 2>/dev/null || redis_start
    else
        echo "ensure-services: Redis is not reachable on 127.0.0.1:6379 and redis-server is not installed." >&2
        echo "  Install and start it (Debian: apt-get install redis-server)." >&2
        return 1
    fi
    wait_for redis_ready "Redis (127.0.0.1:6379)"
}

status=0
ensure_postgres || status=1
ensure_redis || status=1
exit $status
