-- device-registry owns these tables.
-- Times are TIMESTAMPTZ; indexes are CREATE INDEX statements.

CREATE TABLE IF NOT EXISTS devices (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id      VARCHAR(100) UNIQUE NOT NULL,          -- external id (MAC, serial)
    name           VARCHAR(255) NOT NULL,
    device_type    VARCHAR(50)  NOT NULL,
    location       VARCHAR(255),
    latitude       NUMERIC(10, 8) CHECK (latitude BETWEEN -90 AND 90),
    longitude      NUMERIC(11, 8) CHECK (longitude BETWEEN -180 AND 180),
    owner_id       UUID NOT NULL,
    status         VARCHAR(50) NOT NULL DEFAULT 'active'
                   CHECK (status IN ('active', 'inactive', 'error')),
    last_heartbeat TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- device_id already has the UNIQUE constraint's index.
CREATE INDEX IF NOT EXISTS idx_devices_owner_id ON devices (owner_id);
CREATE INDEX IF NOT EXISTS idx_devices_status ON devices (status);
CREATE INDEX IF NOT EXISTS idx_devices_device_type ON devices (device_type);

CREATE TABLE IF NOT EXISTS device_config (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id           UUID NOT NULL UNIQUE REFERENCES devices (id) ON DELETE CASCADE,
    read_interval       INT NOT NULL DEFAULT 60 CHECK (read_interval > 0),
    alert_threshold     JSONB,
    data_retention_days INT DEFAULT 365 CHECK (data_retention_days > 0),
    custom_fields       JSONB,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS sensors (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id   UUID NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    sensor_name VARCHAR(100) NOT NULL,
    unit        VARCHAR(20),
    sensor_type VARCHAR(50),
    accuracy    NUMERIC(5, 2),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (device_id, sensor_name)
);
