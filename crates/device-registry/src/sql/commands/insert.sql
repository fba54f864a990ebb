-- $1 id, $2 device (UUID), $3 owner, $4 name, $5 payload, $6 timeout (s)
WITH c AS (
    INSERT INTO device_commands (id, device_id, owner_id, name, payload, deadline)
    VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6::float8))
    RETURNING *
)
SELECT c.id, c.device_id, d.device_id AS external_id, c.name, c.payload, c.status, c.result, c.created_at, c.deadline, c.sent_at, c.delivered_at, c.finished_at, c.seq, EXTRACT(EPOCH FROM now() - c.changed_at)::float8 AS age_secs
FROM c JOIN devices d ON d.id = c.device_id
