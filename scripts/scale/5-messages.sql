
SET synchronous_commit = off;
-- A message for each channel step that ran (not scheduled, not canceled): ~4,000,000.
-- In-app ones: seen and read for 2 of 3, archived 1 in 10.
INSERT INTO messaging_message (id, step_id, client_id, subscriber_id, channel, provider, recipient, content, status, provider_message_id, error, attempts,
  created_at, sent_at, seen_at, read_at, archived_at)
SELECT s.id, s.id, n.client_id, n.subscriber_id, s.type, CASE WHEN s.type = 'email' THEN 'smtp' ELSE 'in_app' END,
  CASE WHEN s.type = 'email' THEN 'user@example.com' ELSE '' END, '{"body": "Hello"}',
  CASE WHEN s.status = 'failed' THEN 'failed' ELSE 'sent' END, '', CASE WHEN s.status = 'failed' THEN 'refused' ELSE '' END, 1,
  s.created_at, CASE WHEN s.status = 'failed' THEN NULL ELSE s.created_at END,
  CASE WHEN s.type = 'in_app' AND s.id % 3 <> 0 THEN s.created_at + interval '1 hour' END,
  CASE WHEN s.type = 'in_app' AND s.id % 3 <> 0 THEN s.created_at + interval '1 hour' END,
  CASE WHEN s.type = 'in_app' AND s.id % 10 = 0 THEN s.created_at + interval '2 hours' END
FROM workflows_step s JOIN workflows_notification n ON n.id = s.notification_id
WHERE s.type IN ('in_app', 'email') AND s.status IN ('completed', 'failed') AND s.id BETWEEN (:lo - 1) * 3 + 1 AND :hi * 3;

