-- A device's command changes after sequence number $2, oldest first.
SELECT c.id, c.device_id, d.device_id AS external_id, c.name, c.payload, c.status, c.result, c.created_at, c.deadline, c.sent_at, c.delivered_at, c.finished_at, c.seq, EXTRACT(EPOCH FROM now() - c.changed_at)::float8 AS age_secs
FROM device_commands c JOIN devices d ON d.id = c.device_id
WHERE c.device_id = $1 AND c.seq > $2
ORDER BY c.seq
LIMIT 500
