
SET synchronous_commit = off;
-- Odd n: in_app (0), delay (1), email (2); even n: in_app (0), email (1): 5,000,000 steps.
-- Step id (n-1)*3 + position + 1. A running notification's email step waits, scheduled.
INSERT INTO workflows_step (id, notification_id, step_id, type, position, outputs, providers, result, status, due_at, enqueued_at, claimed_at, claimed_by,
  attempts, error, created_at, completed_at)
SELECT (n - 1) * 3 + p + 1, md5('n' || n)::uuid, typ, typ, p,
  CASE WHEN typ = 'delay' THEN '{"amount": 1, "unit": "days"}'::jsonb ELSE '{"body": "Hello"}'::jsonb END, '{}', '{}', sst,
  CASE WHEN sst = 'scheduled' THEN nupd ELSE ts END,
  CASE WHEN sst = 'scheduled' THEN NULL ELSE ts END,
  CASE WHEN sst = 'scheduled' THEN NULL ELSE ts END, CASE WHEN sst = 'scheduled' THEN '' ELSE 'claim' END,
  CASE WHEN sst = 'scheduled' THEN 0 ELSE 1 END, CASE WHEN sst = 'failed' THEN 'refused' ELSE '' END, ts,
  CASE WHEN sst IN ('completed', 'failed', 'canceled') THEN ts + interval '1 second' END
FROM (
  SELECT n, p, ts, nupd,
    CASE WHEN n % 2 = 1 THEN (ARRAY['in_app', 'delay', 'email'])[p + 1] ELSE (ARRAY['in_app', 'email'])[p + 1] END AS typ,
    CASE WHEN nst = 'completed' THEN 'completed'
         WHEN nst = 'failed' THEN CASE WHEN p = last THEN 'failed' ELSE 'completed' END
         WHEN nst = 'canceled' THEN CASE WHEN p = last THEN 'canceled' ELSE 'completed' END
         WHEN nst = 'running' THEN CASE WHEN p = last THEN 'scheduled' ELSE 'completed' END
         ELSE 'completed' END AS sst
  FROM (
    SELECT n.id AS nid, n.status AS nst, n.created_at AS ts, n.updated_at AS nupd, n.rn AS n, CASE WHEN n.rn % 2 = 1 THEN 2 ELSE 1 END AS last
    FROM (SELECT id, status, created_at, updated_at, g AS rn FROM generate_series(:lo, :hi) g
          JOIN workflows_notification ON id = md5('n' || g)::uuid) n
  ) nn, LATERAL generate_series(0, nn.last) p
  WHERE nst <> 'pending'
) g;

