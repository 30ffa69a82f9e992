
SET synchronous_commit = off;
-- Notification n (1..2,000,000) of event (n+1)/2; id md5('n'||n)::uuid.
-- Status: failed every 250th (n%250=0: only clients 5, 10, 15 and 20 have any), canceled
-- those of a canceled event (every 250th, t%250=7), running the
-- last 6,000 odd n (waiting out a delay, email due within a day), pending the last 200
-- even n; completed otherwise (99%).
INSERT INTO workflows_notification (id, client_id, trigger_event_id, subscriber_id, workflow_id, resource, status, error, error_code,
  bridge_attempts, internal_errors, created_at, updated_at, completed_at)
SELECT md5('n' || n)::uuid, c, e, c + 20 * ((e * 7 + (n % 2)) % 10000), 'welcome', 'http://bridge:4000/api/novu', st,
  CASE WHEN st = 'failed' THEN 'step ''email'': refused' ELSE '' END, '', 1, 0, ts,
  CASE WHEN st = 'running' THEN ts + interval '1 day' - (1 + n % 1000) * interval '1 minute' WHEN st = 'pending' THEN ts ELSE ts + interval '3 seconds' END,
  CASE WHEN st IN ('completed', 'failed', 'canceled') THEN ts + interval '3 seconds' END
FROM (
  SELECT n, (n + 1) / 2 AS e, (((n + 1) / 2 - 1) % 20) + 1 AS c,
    now() - interval '365 days' * (1000000 - (n + 1) / 2) / 1000000.0 - interval '10 minutes' AS ts,
    CASE WHEN n % 250 = 0 THEN 'failed'
         WHEN ((n + 1) / 2) % 250 = 7 THEN 'canceled'
         WHEN n > 2000000 - 12000 AND n % 2 = 1 THEN 'running'
         WHEN n > 2000000 - 400 AND n % 2 = 0 THEN 'pending'
         ELSE 'completed' END AS st
  FROM generate_series(:lo, :hi) n) g;
