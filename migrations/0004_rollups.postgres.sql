-- ingest-writer owns these tables. Plain PostgreSQL backend: rollup tables
-- at 1 hour, 1 day and 1 week, kept current by the writer in the same
-- transaction as the raw rows it inserts (so a reading written a moment ago
-- is already in every rollup). The TimescaleDB variant defines continuous
-- aggregates with the same names and columns; queries are shared.
--
-- Buckets are UTC and aligned like TimescaleDB's time_bucket: hours, days,
-- and weeks starting Monday 00:00 UTC (origin 2000-01-03).

CREATE TABLE IF NOT EXISTS sensor_readings_1h (
    device_id   UUID         NOT NULL,
    sensor_name VARCHAR(100) NOT NULL,
    bucket      TIMESTAMPTZ  NOT NULL,
    readings    BIGINT       NOT NULL,
    sum_value   NUMERIC      NOT NULL,
    min_value   NUMERIC      NOT NULL,
    max_value   NUMERIC      NOT NULL,
    PRIMARY KEY (device_id, sensor_name, bucket)
);
CREATE TABLE IF NOT EXISTS sensor_readings_1d (LIKE sensor_readings_1h INCLUDING ALL);
CREATE TABLE IF NOT EXISTS sensor_readings_1w (LIKE sensor_readings_1h INCLUDING ALL);

-- Retention, step 1: drops what is wholly older than each cutoff. Raw rows
-- go by whole daily partitions (never a big DELETE); the DEFAULT partition
-- (readings outside the prepared days, normally few) and the rollup tables
-- (one row per series and bucket) are trimmed with DELETE. Returns the
-- number of partitions dropped.
CREATE OR REPLACE FUNCTION iot_drop_expired(
    raw_before TIMESTAMPTZ,
    hourly_before TIMESTAMPTZ,
    daily_before TIMESTAMPTZ,
    weekly_before TIMESTAMPTZ
) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    part    TEXT;
    dropped INT := 0;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'sensor_readings'::regclass
          AND c.relname ~ '^sensor_readings_p[0-9]{8}$'
          AND (to_date(substring(c.relname FROM 18 FOR 8), 'YYYYMMDD') + 1)::timestamp
              AT TIME ZONE 'UTC' <= raw_before
    LOOP
        EXECUTE format('DROP TABLE %I', part);
        dropped := dropped + 1;
    END LOOP;
    DELETE FROM sensor_readings_default WHERE time < raw_before;
    DELETE FROM sensor_readings_1h WHERE bucket < hourly_before;
    DELETE FROM sensor_readings_1d WHERE bucket < daily_before;
    DELETE FROM sensor_readings_1w WHERE bucket < weekly_before;
    RETURN dropped;
END;
$$;

-- Retention, step 2 (per-device retention shorter than the platform's):
-- deletes at most max_rows raw rows of one device older than `before`, so
-- that the job works in short transactions. Rollups are not touched: they
-- keep the deleted readings, as on TimescaleDB.
CREATE OR REPLACE FUNCTION iot_delete_device_readings(dev UUID, before TIMESTAMPTZ, max_rows INT)
RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    n INT;
BEGIN
    DELETE FROM sensor_readings
    WHERE device_id = dev
      AND (sensor_name, time) IN (
          SELECT sensor_name, time FROM sensor_readings
          WHERE device_id = dev AND time < before
          ORDER BY time
          LIMIT max_rows);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END;
$$;
