#!/usr/bin/env bash
# A burst of triggers under `make run` (SQLite, filesystem broker) that its worker takes
# longer than NORM_RECONCILE_GRACE to work through: every 20 s, the messages the broker
# holds, the echo tasks run so far and the notifications by status, until all complete
# or MINUTES pass. With a backlog longer than the grace period, a reconciler that
# re-sends what is merely queued makes the broker grow and completions slow down.
#
#   scripts/backlog-demo.sh [VAR_DIR] [PORT] [TRIGGERS] [RECIPIENTS_EACH] [MINUTES]
#
# Runs in a throwaway VAR_DIR (default /tmp/norm-backlog-demo, emptied first), never var/.
set -euo pipefail
cd "$(dirname "$0")/.."
VAR=${1:-/tmp/norm-backlog-demo}; PORT=${2:-8765}; TRIGGERS=${3:-53}; EACH=${4:-50}; MINUTES=${5:-12}
PY=$PWD/.venv/bin/python
TOTAL=$((TRIGGERS * EACH))
rm -rf "$VAR" && mkdir -p "$VAR/broker" "$VAR/broker-control"
env -u DATABASE_URL -u CELERY_BROKER_URL NORM_VAR_DIR="$VAR" \
    "$PY" manage.py rundemo --addr "127.0.0.1:$PORT" > "$VAR/rundemo.log" 2>&1 &
DEMO=$!
trap 'kill -INT $DEMO 2>/dev/null || true; wait $DEMO 2>/dev/null || true' EXIT
for _ in $(seq 60); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/admin/login/" && break
    sleep 1
done
START=$(date +%s)
"$PY" - "$PORT" "$(cat "$VAR/demo-secret-key")" "$TRIGGERS" "$EACH" <<'PYEOF'
import sys

import requests

port, key, triggers, each = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with requests.Session() as session:
    for i in range(triggers):
        to = [{"subscriberId": f"u{i}-{j}", "email": f"u{i}-{j}@example.com"} for j in range(each)]
        body = {"name": "order-update", "to": to, "payload": {"orderId": f"o{i}", "status": "shipped"}}
        answer = session.post(
            f"http://127.0.0.1:{port}/v1/events/trigger",
            json=body,
            headers={"Authorization": f"ApiKey {key}"},
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
PYEOF
echo "triggered $TOTAL notifications in $(($(date +%s) - START)) s"
printf '%8s %10s %10s %s\n' seconds broker echoes "notifications by status"
count() { "$PY" -c "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0] or '')" "$VAR/norm.sqlite3" "$1"; }
while (($(date +%s) < START + MINUTES * 60)); do
    sleep 20
    statuses=$(count "select group_concat(status || '=' || n, ' ') from (select status, count(*) n from workflows_notification group by status)")
    echoes=$(grep -c "norm.echo.run.*succeeded" "$VAR/rundemo.log" || true)
    printf '%8s %10s %10s %s\n' $(($(date +%s) - START)) "$(ls "$VAR/broker" | wc -l)" "$echoes" "$statuses"
    if [[ $(count "select count(*) from workflows_notification where status = 'completed'") == "$TOTAL" ]]; then
        echo "all $TOTAL completed after $(($(date +%s) - START)) s"
        break
    fi
done
