-- ingest-writer owns these tables (both backends).

-- The latest reading of every series, kept by the writer in the same
-- transaction as the raw rows: the dashboard's "current readings" for many
-- devices is an index lookup, not a scan of a year of partitions.
CREATE TABLE IF NOT EXISTS sensor_latest (
    device_id   UUID           NOT NULL,
    sensor_name VARCHAR(100)   NOT NULL,
    time        TIMESTAMPTZ    NOT NULL,
    value       NUMERIC(10, 4) NOT NULL,
    unit        VARCHAR(20),
    quality     VARCHAR(50),
    PRIMARY KEY (device_id, sensor_name)
);
CREATE INDEX IF NOT EXISTS sensor_latest_time ON sensor_latest (time DESC);

-- Readings stored per writer process and second (each writer its own rows:
-- replicas never wait on each other's row locks). Feeds the fleet's
-- "readings per second"; the writer trims rows older than an hour.
CREATE TABLE IF NOT EXISTS ingest_counts (
    writer_id UUID        NOT NULL,
    second    TIMESTAMPTZ NOT NULL,
    readings  BIGINT      NOT NULL,
    PRIMARY KEY (writer_id, second)
);

-- device-registry's contract for the writer's retention job: each device's
-- raw-data retention in days (NULL: the platform default applies).
CREATE OR REPLACE VIEW device_retention AS
SELECT d.id AS device_id, c.data_retention_days AS retention_days
FROM devices d
LEFT JOIN device_config c ON c.device_id = d.id;
