-- Rollups on TimescaleDB become tables the writer keeps current in the same
-- transaction as the raw rows, as on plain PostgreSQL: a reading that
-- arrives days late is counted at every width the moment it is stored. The
-- continuous aggregates of 0004 counted a late reading only if a refresh
-- policy's window still covered its bucket (3 days for 1h, 7 for 1d, 5
-- weeks for 1w); older ones never reached them, and the same hour answered
-- differently at 5m (raw) and at 1h. Reasoning and the cost measurement:
-- docs/design/late-readings.md.
--
-- Runs in the migration runner's transaction. Each new table is filled
-- from the raw rows (which include every late reading) and, for buckets
-- whose raw rows retention has already dropped, from the aggregate it
-- replaces (materialized part and real-time tail).

CREATE TABLE sensor_readings_1h_new (
    device_id   UUID         NOT NULL,
    sensor_name VARCHAR(100) NOT NULL,
    bucket      TIMESTAMPTZ  NOT NULL,
    readings    BIGINT       NOT NULL,
    sum_value   NUMERIC      NOT NULL,
    min_value   NUMERIC      NOT NULL,
    max_value   NUMERIC      NOT NULL,
    PRIMARY KEY (device_id, sensor_name, bucket)
);
CREATE TABLE sensor_readings_1d_new (LIKE sensor_readings_1h_new INCLUDING ALL);
CREATE TABLE sensor_readings_1w_new (LIKE sensor_readings_1h_new INCLUDING ALL);

INSERT INTO sensor_readings_1h_new
SELECT device_id, sensor_name, time_bucket(INTERVAL '1 hour', time),
       count(*), sum(value), min(value), max(value)
FROM sensor_readings
GROUP BY device_id, sensor_name, time_bucket(INTERVAL '1 hour', time);
INSERT INTO sensor_readings_1h_new
SELECT device_id, sensor_name, bucket, readings, sum_value, min_value, max_value
FROM sensor_readings_1h
ON CONFLICT DO NOTHING;

INSERT INTO sensor_readings_1d_new
SELECT device_id, sensor_name, time_bucket(INTERVAL '1 day', bucket),
       sum(readings)::BIGINT, sum(sum_value), min(min_value), max(max_value)
FROM sensor_readings_1h_new
GROUP BY device_id, sensor_name, time_bucket(INTERVAL '1 day', bucket);
INSERT INTO sensor_readings_1d_new
SELECT device_id, sensor_name, bucket, readings, sum_value, min_value, max_value
FROM sensor_readings_1d
ON CONFLICT DO NOTHING;

INSERT INTO sensor_readings_1w_new
SELECT device_id, sensor_name, time_bucket(INTERVAL '1 week', bucket),
       sum(readings)::BIGINT, sum(sum_value), min(min_value), max(max_value)
FROM sensor_readings_1d_new
GROUP BY device_id, sensor_name, time_bucket(INTERVAL '1 week', bucket);
INSERT INTO sensor_readings_1w_new
SELECT device_id, sensor_name, bucket, readings, sum_value, min_value, max_value
FROM sensor_readings_1w
ON CONFLICT DO NOTHING;

-- Top down: each aggregate reads the one below. Dropping an aggregate drops
-- its refresh policy.
DROP MATERIALIZED VIEW sensor_readings_1w;
DROP MATERIALIZED VIEW sensor_readings_1d;
DROP MATERIALIZED VIEW sensor_readings_1h;

ALTER TABLE sensor_readings_1h_new RENAME TO sensor_readings_1h;
ALTER TABLE sensor_readings_1d_new RENAME TO sensor_readings_1d;
ALTER TABLE sensor_readings_1w_new RENAME TO sensor_readings_1w;
ALTER INDEX sensor_readings_1h_new_pkey RENAME TO sensor_readings_1h_pkey;
ALTER INDEX sensor_readings_1d_new_pkey RENAME TO sensor_readings_1d_pkey;
ALTER INDEX sensor_readings_1w_new_pkey RENAME TO sensor_readings_1w_pkey;

-- Retention, step 1: raw rows go by whole chunks (drop_chunks); the rollup
-- tables (one row per series and bucket) are trimmed with DELETE, as on
-- plain PostgreSQL. No refresh window to stay out of any more, so the
-- cutoffs apply as they are. Returns the number of raw chunks dropped.
CREATE OR REPLACE FUNCTION iot_drop_expired(
    raw_before    TIMESTAMPTZ,
    hourly_before TIMESTAMPTZ,
    daily_before  TIMESTAMPTZ,
    weekly_before TIMESTAMPTZ
) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    dropped INT := 0;
BEGIN
    IF raw_before IS NOT NULL THEN
        SELECT count(*) INTO dropped FROM drop_chunks('sensor_readings', older_than => raw_before);
    END IF;
    DELETE FROM sensor_readings_1h WHERE bucket < hourly_before;
    DELETE FROM sensor_readings_1d WHERE bucket < daily_before;
    DELETE FROM sensor_readings_1w WHERE bucket < weekly_before;
    RETURN dropped;
END;
$$;

-- Retention, step 2 (per-device retention shorter than the platform's):
-- deletes at most max_rows of one device's oldest raw readings older than
-- `before`. Rollups are not touched: they keep the deleted readings, as on
-- plain PostgreSQL. The [lo, hi] bounds let TimescaleDB decompress only the
-- matching batches of compressed chunks (filters on the segmentby column
-- device_id and the orderby column time).
CREATE OR REPLACE FUNCTION iot_delete_device_readings(dev UUID, before TIMESTAMPTZ, max_rows INT)
RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    lo      TIMESTAMPTZ;
    hi      TIMESTAMPTZ;
    deleted INT;
BEGIN
    IF dev IS NULL OR before IS NULL OR max_rows IS NULL OR max_rows <= 0 THEN
        RETURN 0;
    END IF;
    SELECT min(s.time), max(s.time) INTO lo, hi
    FROM (SELECT time FROM sensor_readings
          WHERE device_id = dev AND time < before
          ORDER BY time
          LIMIT max_rows) s;
    IF lo IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE
        'DELETE FROM sensor_readings
          WHERE device_id = $1 AND time >= $2 AND time <= $3
            AND (sensor_name, time) IN (
                SELECT sensor_name, time FROM sensor_readings
                 WHERE device_id = $1 AND time >= $2 AND time <= $3
                 ORDER BY time
                 LIMIT $4)'
        USING dev, lo, hi, max_rows;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$;
