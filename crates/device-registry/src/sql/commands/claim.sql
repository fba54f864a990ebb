-- Queued commands no publisher holds, for this one to publish: held for
-- $1 seconds (if the broker has not taken one by then, it is published
-- again). Replicas skip each other's rows.
WITH next AS (
    SELECT id FROM device_commands
    WHERE status = 'queued'
      AND deadline > now()
      AND (lease_until IS NULL OR lease_until < now())
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE device_commands c
SET lease_until = now() + make_interval(secs => $1::float8)
FROM next, devices d
WHERE c.id = next.id AND d.id = c.device_id
RETURNING c.id, d.device_id AS external_id, c.name, c.payload, c.deadline,
          EXTRACT(EPOCH FROM c.deadline - now())::float8 AS remaining_secs
