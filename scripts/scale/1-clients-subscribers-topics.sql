
SET synchronous_commit = off;
SET maintenance_work_mem = '512MB';
-- 20 clients
INSERT INTO notify_client (id, name, is_active, bridge_url, allowed_bridge_urls, workflow_allowlist, created_at, email_from, email_from_domains)
SELECT c, 'client-' || c, true, 'http://bridge:4000/api/novu', '[]', '[]', now() - interval '400 days', '', '[]'
FROM generate_series(1, 20) c;
SELECT setval(pg_get_serial_sequence('notify_client', 'id'), 20);
-- 200,000 subscribers, client = ((s-1) % 20) + 1, created over the year
INSERT INTO subscribers_subscriber (id, client_id, subscriber_id, email, phone, first_name, last_name, avatar, locale, timezone, data, created_at, updated_at)
SELECT s, ((s - 1) % 20) + 1, 'sub-' || s, 'user' || s || '@example.com', '', 'First' || s, 'Last', '', 'en', '', '{}',
       now() - interval '380 days' + (s * interval '150 seconds'),
       now() - interval '380 days' + (s * interval '150 seconds') + interval '1 day'
FROM generate_series(1, 200000) s;
SELECT setval(pg_get_serial_sequence('subscribers_subscriber', 'id'), 200000);
-- 50 topics a client: topic (c-1)*50+1 is 'all' (every subscriber of the client, 10,000), the others ~200 each
INSERT INTO subscribers_topic (id, client_id, key, name, created_at, updated_at)
SELECT (c - 1) * 50 + k, c, CASE WHEN k = 1 THEN 'all' ELSE 'topic-' || k END, '', now() - interval '390 days', now() - interval '390 days'
FROM generate_series(1, 20) c, generate_series(1, 50) k;
SELECT setval(pg_get_serial_sequence('subscribers_topic', 'id'), 1000);
INSERT INTO subscribers_topicsubscription (topic_id, subscriber_id, created_at, identifier, name)
SELECT ((s - 1) % 20) * 50 + 1, s, now() - interval '380 days' + (s * interval '150 seconds'), '', '' FROM generate_series(1, 200000) s
UNION ALL
SELECT ((s - 1) % 20) * 50 + 2 + ((s / 20) % 49), s, now() - interval '380 days' + (s * interval '150 seconds'), '', '' FROM generate_series(1, 200000) s;
