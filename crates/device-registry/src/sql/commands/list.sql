-- $1 device (UUID), $2/$3 the cursor's (created_at, id) or NULLs, $4 limit
SELECT c.id, c.device_id, d.device_id AS external_id, c.name, c.payload, c.status, c.result, c.created_at, c.deadline, c.sent_at, c.delivered_at, c.finished_at, c.seq, EXTRACT(EPOCH FROM now() - c.changed_at)::float8 AS age_secs
FROM device_commands c JOIN devices d ON d.id = c.device_id
WHERE c.device_id = $1
  AND ($2::timestamptz IS NULL OR (c.created_at, c.id) < ($2, $3::uuid))
ORDER BY c.created_at DESC, c.id DESC
LIMIT $4
