SET LOCAL client_min_messages = warning;
CREATE TEMP TABLE IF NOT EXISTS iot_staging_readings (
    time        TIMESTAMPTZ NOT NULL,
    device_id   UUID        NOT NULL,
    sensor_name TEXT        NOT NULL,
    value       NUMERIC     NOT NULL,
    unit        TEXT,
    quality     TEXT
) ON COMMIT DELETE ROWS;
