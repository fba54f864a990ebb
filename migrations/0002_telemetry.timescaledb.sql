-- ingest-writer owns these tables. TimescaleDB backend: a hypertable with
-- one-day chunks, columnar compression after 7 days and a retention policy.
-- See https://docs.timescale.com/ (create_hypertable, add_compression_policy,
-- add_retention_policy).
--
-- No foreign key to devices: readings are high-volume and owned by another
-- service; the gateway validates devices before a reading reaches Kafka.

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE IF NOT EXISTS sensor_readings (
    time        TIMESTAMPTZ   NOT NULL,
    device_id   UUID          NOT NULL,
    sensor_name VARCHAR(100)  NOT NULL,
    value       NUMERIC(10, 4) NOT NULL,
    unit        VARCHAR(20),
    quality     VARCHAR(50)
);

SELECT create_hypertable('sensor_readings', by_range('time', INTERVAL '1 day'),
                         if_not_exists => TRUE);

-- One reading per (device, sensor, time): redelivery never duplicates.
-- Unique indexes on a hypertable must include the time column; this one does.
CREATE UNIQUE INDEX IF NOT EXISTS sensor_readings_device_sensor_time
    ON sensor_readings (device_id, sensor_name, time DESC);
CREATE INDEX IF NOT EXISTS sensor_readings_device_time
    ON sensor_readings (device_id, time DESC);
CREATE INDEX IF NOT EXISTS sensor_readings_sensor_time
    ON sensor_readings (sensor_name, time DESC);

ALTER TABLE sensor_readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, sensor_name',
    timescaledb.compress_orderby = 'time DESC'
);
SELECT add_compression_policy('sensor_readings', INTERVAL '7 days', if_not_exists => TRUE);
SELECT add_retention_policy('sensor_readings', INTERVAL '365 days', if_not_exists => TRUE);
