-- alert-engine owns this table: one row per alert, open or resolved.

CREATE TABLE IF NOT EXISTS device_alerts (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id       UUID NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    alert_type      VARCHAR(50) NOT NULL,
    severity        VARCHAR(50) NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    sensor_name     VARCHAR(100),
    message         TEXT,
    value           NUMERIC(10, 4),
    threshold       NUMERIC(10, 4),
    acknowledged    BOOLEAN NOT NULL DEFAULT FALSE,
    acknowledged_by UUID,
    acknowledged_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_device_alerts_device_id ON device_alerts (device_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_device_alerts_severity ON device_alerts (severity);
CREATE INDEX IF NOT EXISTS idx_device_alerts_unacknowledged ON device_alerts (created_at DESC)
    WHERE NOT acknowledged;
