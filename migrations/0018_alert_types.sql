-- Issue 28: the seed's alert types and device presence.
--
-- alert-engine owns device_alerts. Threshold alerts carry the seed's
-- `alert_type`: `threshold_exceeded` above a sensor's max, and
-- `threshold_below` under its min (the seed names only the first). Alerts
-- raised before keep working: open ones are renamed, so that the engine
-- (which looks open conditions up by type) resolves them.
UPDATE device_alerts SET alert_type = 'threshold_exceeded' WHERE alert_type = 'threshold_max';
UPDATE device_alerts SET alert_type = 'threshold_below' WHERE alert_type = 'threshold_min';

-- device-registry owns devices. `disconnected_at`: when the device last
-- disconnected (its presence topic: announced, or its last will), cleared
-- when it connects again; a reading after it also counts as back
-- (iot_domain::presence).
ALTER TABLE devices ADD COLUMN IF NOT EXISTS disconnected_at TIMESTAMPTZ;

-- Every presence event, with its time: connected (birth message),
-- disconnected (announced), lost (last will).
CREATE TABLE IF NOT EXISTS device_presence (
    device_id UUID NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    event TEXT NOT NULL CHECK (event IN ('connected', 'disconnected', 'lost')),
    at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (device_id, at, event)
);
