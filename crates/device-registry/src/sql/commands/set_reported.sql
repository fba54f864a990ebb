-- The device $1 (external id) reports its state $2.
INSERT INTO device_state AS s (device_id, reported, reported_at)
SELECT d.id, $2, now() FROM devices d WHERE d.device_id = $1
ON CONFLICT (device_id) DO UPDATE
SET reported = EXCLUDED.reported, reported_at = now()
RETURNING s.device_id
