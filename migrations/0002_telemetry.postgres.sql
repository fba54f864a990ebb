-- ingest-writer owns these tables. Plain PostgreSQL backend: native range
-- partitioning by time, one partition per day, created ahead of time by
-- iot_ensure_partitions(); a DEFAULT partition catches readings outside the
-- prepared range so that no valid reading is ever refused by the database.
--
-- No foreign key to devices: readings are high-volume and owned by another
-- service; the gateway validates devices before a reading reaches Kafka.

CREATE TABLE IF NOT EXISTS sensor_readings (
    time        TIMESTAMPTZ   NOT NULL,
    device_id   UUID          NOT NULL,
    sensor_name VARCHAR(100)  NOT NULL,
    value       NUMERIC(10, 4) NOT NULL,
    unit        VARCHAR(20),
    quality     VARCHAR(50)
) PARTITION BY RANGE (time);

CREATE TABLE IF NOT EXISTS sensor_readings_default
    PARTITION OF sensor_readings DEFAULT;

-- One reading per (device, sensor, time): redelivery never duplicates.
CREATE UNIQUE INDEX IF NOT EXISTS sensor_readings_device_sensor_time
    ON sensor_readings (device_id, sensor_name, time DESC);
CREATE INDEX IF NOT EXISTS sensor_readings_device_time
    ON sensor_readings (device_id, time DESC);
CREATE INDEX IF NOT EXISTS sensor_readings_sensor_time
    ON sensor_readings (sensor_name, time DESC);

-- Creates the daily partitions covering [today - days_back, today + days_ahead].
-- Idempotent. A partition is created only where the DEFAULT partition holds no
-- rows for that day (PostgreSQL would refuse it otherwise); such rows stay
-- queryable in the DEFAULT partition.
CREATE OR REPLACE FUNCTION iot_ensure_partitions(days_back INT, days_ahead INT)
RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    d       DATE;
    part    TEXT;
    created INT := 0;
BEGIN
    FOR d IN SELECT generate_series(current_date - days_back, current_date + days_ahead, INTERVAL '1 day')::date
    LOOP
        part := format('sensor_readings_p%s', to_char(d, 'YYYYMMDD'));
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM sensor_readings_default
            WHERE time >= d::timestamptz AND time < (d + 1)::timestamptz
        );
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF sensor_readings FOR VALUES FROM (%L) TO (%L)',
            part, d::timestamptz, (d + 1)::timestamptz
        );
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;

SELECT iot_ensure_partitions(7, 14);
