
-- Running notifications wait out a delay: their email step is due within the next day
-- (a steady system has sent every step already due), and the notification's updated_at
-- is that due time (workflows.models.Notification.updated_at). Pending ones were just made.
UPDATE workflows_step s SET due_at = now() + (1 + s.id % 1400) * interval '1 minute'
  WHERE s.status = 'scheduled';
UPDATE workflows_notification n SET updated_at = s.due_at FROM workflows_step s
  WHERE s.notification_id = n.id AND s.status = 'scheduled' AND n.status = 'running';
UPDATE workflows_notification SET created_at = now() - interval '5 seconds', updated_at = now() - interval '5 seconds' WHERE status = 'pending';
