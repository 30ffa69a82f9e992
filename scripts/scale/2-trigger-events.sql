
SET synchronous_commit = off;
-- 1,000,000 trigger events over the past year, two recipients each; t's client ((t-1)%20)+1.
-- Every 250th canceled (finished: cancel_task_at null); the last 1,000 within the last day.
INSERT INTO notify_triggerevent (id, client_id, workflow_id, transaction_id, mode, "to", payload, resource, actor, overrides, status, recipients, error,
  created_at, claimed_at, claimed_by, processed_at, recheck_from, canceled_at, reenqueued_at, refanned, forgotten, internal_errors, cancel_task_at, redelivered)
SELECT t, ((t - 1) % 20) + 1, CASE WHEN t % 2 = 1 THEN 'digest-email' ELSE 'welcome' END, 'txn-' || t, 'multicast',
  '[{"subscriberId": "a"}, {"subscriberId": "b"}]', '{"name": "x"}', 'http://bridge:4000/api/novu', NULL, '{}',
  CASE WHEN t % 250 = 7 THEN 'canceled' ELSE 'processed' END, 2, '',
  ts, ts, 'claim', ts + interval '1 second', ts + interval '1 second',
  CASE WHEN t % 250 = 7 THEN ts + interval '2 seconds' END, NULL, 0, '[]', 0, NULL, '{}'
FROM (SELECT t, now() - interval '365 days' * (1000000 - t) / 1000000.0 - interval '10 minutes' AS ts FROM generate_series(1, 1000000) t) g;
SELECT setval(pg_get_serial_sequence('notify_triggerevent', 'id'), 1000000);
