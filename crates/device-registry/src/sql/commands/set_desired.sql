-- $1 device (UUID), $2 desired, $3 the version the caller expects. A
-- device without a row has version 0. No row back: the version is stale.
WITH updated AS (
    UPDATE device_state s
    SET desired = $2, desired_version = s.desired_version + 1, desired_at = now()
    WHERE s.device_id = $1 AND s.desired_version = $3::bigint
    RETURNING s.device_id, s.desired, s.desired_version, s.desired_at, s.reported, s.reported_at, s.published_version
), inserted AS (
    INSERT INTO device_state AS s (device_id, desired, desired_version, desired_at)
    SELECT $1, $2, 1, now()
    WHERE $3::bigint = 0 AND NOT EXISTS (SELECT 1 FROM updated)
    ON CONFLICT (device_id) DO NOTHING
    RETURNING s.device_id, s.desired, s.desired_version, s.desired_at, s.reported, s.reported_at, s.published_version
)
SELECT * FROM updated
UNION ALL
SELECT * FROM inserted
