-- alert-engine owns device_alerts. An alert is open until resolved; it
-- records when its condition was first and last seen and how often.
ALTER TABLE device_alerts
    ADD COLUMN IF NOT EXISTS last_seen_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS occurrences  BIGINT NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS resolved_at  TIMESTAMPTZ;
UPDATE device_alerts SET last_seen_at = created_at WHERE last_seen_at IS NULL;

-- At most one open alert per device, sensor and condition, whatever the
-- number of engine replicas or redeliveries: enforced here, not in memory.
CREATE UNIQUE INDEX IF NOT EXISTS device_alerts_one_open
    ON device_alerts (device_id, COALESCE(sensor_name, ''), alert_type)
    WHERE resolved_at IS NULL;
