#!/bin/bash
# Fills a migrated database with a year of norm (docs/BENCHMARKS.md, session 22):
# 20 clients, 200,000 subscribers, 1,000 topics (400,000 subscriptions), 1,000,000
# triggers, 2,000,000 notifications (99% completed), 5,000,000 steps, ~4,000,000
# messages; about 4 GB. Usage: scripts/scale/fill.sh <database>  (psql as postgres on
# 127.0.0.1). The big tables go in chunks of 100,000 notifications, each its own
# transaction, skipped when already there: a PostgreSQL restart loses one chunk at most.
set -euo pipefail
here=$(dirname "$0")
P="psql -h 127.0.0.1 -U postgres -d $1 -X -q -v ON_ERROR_STOP=1"
C=100000
$P -f "$here/1-clients-subscribers-topics.sql" >/dev/null
$P -f "$here/2-trigger-events.sql" >/dev/null
chunk() { # file lo hi check-sql
  for i in $(seq 1 20); do
    until pg_isready -q -h 127.0.0.1; do sleep 2; done
    n=$($P -At -c "$4" 2>/dev/null || true)
    if [ "$n" = "t" ]; then return 0; fi
    if [ "$n" = "f" ] && $P -v lo="$2" -v hi="$3" -f "$here/$1" >/dev/null; then
      echo "$1 $2-$3 $(date +%T)"; return 0
    fi
    echo "$1 $2-$3 failed, try $i"; sleep 3
  done
  return 1
}
for lo in $(seq 1 $C 2000000); do hi=$((lo + C - 1))
  chunk 3-notifications.sql $lo $hi "select exists(select 1 from workflows_notification where id = md5('n' || $hi)::uuid)"
done
for lo in $(seq 1 $C 2000000); do hi=$((lo + C - 1))
  chunk 4-steps.sql $lo $hi "select exists(select 1 from workflows_step where id between ($hi - 1) * 3 + 1 and $hi * 3)"
done
for lo in $(seq 1 $C 2000000); do hi=$((lo + C - 1))
  chunk 5-messages.sql $lo $hi "select exists(select 1 from messaging_message where id between ($hi - 2) * 3 + 1 and $hi * 3)"
done
$P -c "SELECT setval(pg_get_serial_sequence('workflows_step', 'id'), 6000000)" \
   -c "SELECT setval(pg_get_serial_sequence('messaging_message', 'id'), 6000000)" >/dev/null
$P -f "$here/6-waiting.sql" >/dev/null
$P -c "VACUUM ANALYZE"
