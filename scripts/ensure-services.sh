#!/usr/bin/env bash
# Make PostgreSQL and Redis reachable where the tests look for them (DATABASE_URL and
# CELERY_BROKER_URL, as `make test` passes them; by default postgres@127.0.0.1:5432
# without a password and 127.0.0.1:6379): use them where they run, start them where
# installed but stopped, install them (root on Debian) where missing; otherwise, or
# when they do not come up within ENSURE_SERVICES_WAIT seconds (30), say what is
# missing and how to start it.
set -euo pipefail
cd "$(dirname "$0")/.."

# The project's venv has the clients the checks use; a python3 without them could only
# report each service as down, and have it started and waited for in vain.
PY=${PY:-.venv/bin/python}
py_named=$PY
if [[ ! -x $PY ]]; then
    py_named="python3 (there is no $PY)"
    PY=python3
fi
if ! missing=$("$PY" - 2>&1 <<'PYEOF'
import importlib
for name in ("psycopg", "redis"):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        print(f"{name} ({' '.join(str(exc).split())})")
PYEOF
); then
    echo "ensure-services: cannot run $py_named to check the services: $missing" >&2
    echo "  Run make install (it makes .venv), or set PY to a Python with psycopg and redis." >&2
    exit 1
elif [[ -n $missing ]]; then
    echo "ensure-services: $py_named cannot import what the checks use: ${missing//$'\n'/, }." >&2
    echo "  Run make install (it makes .venv with them), or set PY to a Python that has them." >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_updated=0
export PG_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/norm}
export REDIS_URL=${CELERY_BROKER_URL:-redis://127.0.0.1:6379/15}
WAIT=${ENSURE_SERVICES_WAIT:-30}

# host port user of a URL, as the tests' clients read it.
url_parts() {
    "$PY" -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(p.hostname or "localhost", p.port or sys.argv[2], p.username or "-")' "$@"
}
read -r PG_HOST PG_PORT PG_USER < <(url_parts "$PG_URL" 5432)
read -r REDIS_HOST REDIS_PORT _ < <(url_parts "$REDIS_URL" 6379)

# Only a service on this machine is started or installed here.
is_local() { [[ $1 == 127.* || $1 == localhost || $1 == ::1 ]]; }

# check pg|redis: 0 when it answers; 1, with the client's reason, when it is down or
# still starting; 2 when it answers with a refusal that no waiting changes.
check() {
    "$PY" - "$1" <<'PYEOF'
import os, re, sys

# What a server says while it is down, starting or restarting. Anything else (a refused
# login, a role or database it lacks, a URL it cannot use) stays so however long we wait.
PASSING = re.compile(
    r"connection refused|no such file or directory|timeout|timed out|connection reset"
    r"|server closed the connection|the database system is|too many clients"
    r"|loading the dataset",
    re.IGNORECASE,
)
try:
    if sys.argv[1] == "pg":
        import psycopg

        # The server's own database: the tests' may not exist yet.
        psycopg.connect(os.environ["PG_URL"], dbname="postgres", connect_timeout=2).close()
    else:
        import redis

        redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2).ping()
except Exception as exc:
    reason = " ".join(str(exc).split())
    print(reason, file=sys.stderr)
    sys.exit(1 if PASSING.search(reason) else 2)
PYEOF
}

refused() {  # refused SERVICE NAME WHERE ERROR: says what it answered, and what to change
    echo "ensure-services: the tests cannot use $2 on $3, and waiting would not change that: $4" >&2
    "$1_refused_hints" | sed 's/^/  /' >&2
}

# probe SERVICE NAME WHERE: 0 when it answers; 2 (said why) when it refuses for good; else 1.
probe() {
    local error rc=0
    error=$(check "$1" 2>&1) || rc=$?
    if (( rc == 2 )); then
        refused "$@" "$error"
    fi
    return $rc
}

wait_for() {  # wait_for SERVICE NAME WHERE: 0 once it answers, else says why not
    local error rc started=$SECONDS
    echo "ensure-services: waiting up to $WAIT s for $2 on $3"
    while true; do
        rc=0
        error=$(check "$1" 2>&1) || rc=$?
        if (( rc == 0 )); then
            break
        elif (( rc == 2 )); then
            refused "$@" "$error"
            return 1
        elif (( SECONDS - started >= WAIT )); then
            echo "ensure-services: $2 is still not reachable on $3 after $WAIT s: $error" >&2
            "$1_hints" | sed 's/^/  /' >&2
            return 1
        fi
        sleep 0.5
    done
    echo "ensure-services: $2 is up on $3"
}

can_apt() { [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; }

apt_install() {
    if [[ $apt_updated == 0 ]]; then
        apt-get update -qq
        apt_updated=1
    fi
    apt-get install -y -qq "$@" >/dev/null
}

# The cluster set to PG_PORT, as "version name status logfile" (pg_lsclusters); none, empty.
pg_cluster() {
    pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2, $4, $7; exit }'
}

pg_installed() {
    command -v pg_lsclusters >/dev/null && command -v pg_ctlcluster >/dev/null \
        && [[ -n $(pg_lsclusters -h 2>/dev/null) ]]
}

# Starts the cluster the tests' port names: another one, even the newest, would come up
# where they do not look.
pg_start() {
    local version name clusters
    read -r version name _ < <(pg_cluster) || true
    if [[ -z $version ]]; then
        clusters=$(pg_lsclusters -h 2>/dev/null | awk '{ printf "%s%s/%s on %s", (NR > 1 ? ", " : ""), $1, $2, $3 }')
        echo "ensure-services: no PostgreSQL cluster here is set to port $PG_PORT (pg_lsclusters: ${clusters:-none})." >&2
        echo "  Make one (pg_createcluster --port $PG_PORT --start VERSION NAME), or set DATABASE_URL" >&2
        echo "  (make: TEST_DATABASE_URL) to the port of one that is." >&2
        return 1
    fi
    echo "ensure-services: starting PostgreSQL $version/$name (port $PG_PORT)"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start || true
}

pg_hints() {
    local version name log
    read -r version name _ log < <(pg_cluster) || true
    if is_local "$PG_HOST" && [[ -n $version ]]; then
        echo "Start it: pg_ctlcluster $version $name start (why it stopped: $log)."
    else
        echo "Start it on $PG_HOST, or set DATABASE_URL (make: TEST_DATABASE_URL) to one that runs."
    fi
}

pg_refused_hints() {
    echo "The tests connect as $PG_USER over TCP, without a password unless DATABASE_URL has"
    echo "one (pg_hba.conf: host all $PG_USER 127.0.0.1/32 trust); set DATABASE_URL (make:"
    echo "TEST_DATABASE_URL) to one this server accepts, or let it accept them."
}

ensure_postgres() {
    local rc=0
    probe pg PostgreSQL "$PG_HOST:$PG_PORT" || rc=$?
    (( rc == 1 )) || return $rc
    if ! is_local "$PG_HOST"; then
        echo "ensure-services: PostgreSQL on $PG_HOST:$PG_PORT is not on this machine: not started here"
    elif pg_installed; then
        pg_start || return 1
    elif can_apt; then
        echo "ensure-services: installing PostgreSQL (apt-get install postgresql)"
        apt_install postgresql
        local version name
        read -r version name _ < <(pg_cluster) || true
        if [[ -n $version ]]; then
            # The tests connect as postgres over TCP without a password, as on a dev machine.
            sed -i '1i host all postgres 127.0.0.1/32 trust' "/etc/postgresql/$version/$name/pg_hba.conf"
        fi
        pg_start || return 1
        pg_ctlcluster --skip-systemctl-redirect "$version" "$name" reload || true
    else
        echo "ensure-services: PostgreSQL is not reachable on $PG_HOST:$PG_PORT and not installed." >&2
        echo "  Install and start it (Debian: apt-get install postgresql), with user postgres" >&2
        echo "  allowed without a password on 127.0.0.1 (pg_hba.conf: host all postgres 127.0.0.1/32 trust)." >&2
        return 1
    fi
    wait_for pg PostgreSQL "$PG_HOST:$PG_PORT"
}

REDIS_START=(redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no)

redis_start() {
    echo "ensure-services: starting redis-server on 127.0.0.1:$REDIS_PORT"
    "${REDIS_START[@]}" >/dev/null || true  # what went wrong, wait_for says
}

redis_hints() {
    local start
    if is_local "$REDIS_HOST"; then
        printf -v start '%q ' "${REDIS_START[@]}"
        echo "Start it: ${start% } (its output says why it cannot)."
    else
        echo "Start it on $REDIS_HOST, or set CELERY_BROKER_URL (make: TEST_BROKER_URL) to one that runs."
    fi
}

redis_refused_hints() {
    echo "Set CELERY_BROKER_URL (make: TEST_BROKER_URL) to one this server accepts: its user and"
    echo "password as redis://USER:PASSWORD@HOST:PORT/DB, and a DB below its databases setting."
}

ensure_redis() {
    local rc=0
    probe redis Redis "$REDIS_HOST:$REDIS_PORT" || rc=$?
    (( rc == 1 )) || return $rc
    if ! is_local "$REDIS_HOST"; then
        echo "ensure-services: Redis on $REDIS_HOST:$REDIS_PORT is not on this machine: not started here"
    elif command -v redis-server >/dev/null; then
        redis_start
    elif can_apt; then
        echo "ensure-services: installing Redis (apt-get install redis-server)"
        apt_install redis-server
        check redis 2>/dev/null || redis_start
    else
        echo "ensure-services: Redis is not reachable on $REDIS_HOST:$REDIS_PORT and redis-server is not installed." >&2
        echo "  Install and start it (Debian: apt-get install redis-server)." >&2
        return 1
    fi
    wait_for redis Redis "$REDIS_HOST:$REDIS_PORT"
}

status=0
ensure_postgres || status=1
ensure_redis || status=1
exit $status
