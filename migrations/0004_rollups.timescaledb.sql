-- Rollups of sensor_readings, TimescaleDB backend: three hierarchical
-- continuous aggregates (1h on the hypertable, 1d on 1h, 1w on 1d) with
-- real-time aggregation, refresh policies, and the retention functions the
-- writer's job calls. Same names, columns and signatures as
-- 0004_rollups.postgres.sql: shared Rust code queries both.
-- Docs: https://docs.timescale.com/use-timescale/latest/continuous-aggregates/
--
-- Runs inside the migration runner's transaction, so every aggregate is
-- created WITH NO DATA (the WITH DATA default refreshes, which cannot run in a
-- transaction block) and nothing here calls refresh_continuous_aggregate.
--
-- Existing installs: the policies only materialize their own window, so raw
-- history older than 3 days at upgrade time is never rolled up by them. Backfill
-- once, outside a transaction, BEFORE the first iot_drop_expired or
-- iot_delete_device_readings call, bottom-up and with explicit windows:
--   CALL refresh_continuous_aggregate('sensor_readings_1h', '<oldest raw>', now() - INTERVAL '3 days');
--   CALL refresh_continuous_aggregate('sensor_readings_1d', '<oldest raw>', now() - INTERVAL '7 days');
--   CALL refresh_continuous_aggregate('sensor_readings_1w', '<oldest raw>', now() - INTERVAL '5 weeks');
-- Never refresh a window that reaches into dropped or deleted raw data: the
-- refresh would apply the deletion and erase the rollups (see the retention
-- functions below).

-- Retention is now applied by iot_drop_expired (called by the writer's job),
-- because per-device retention needs it. 0002 added a fixed 365-day policy.
-- https://docs.timescale.com/api/latest/data-retention/remove_retention_policy/
SELECT remove_retention_policy('sensor_readings', if_exists => TRUE);

-- Continuous aggregates. Columns (exact contract): device_id, sensor_name,
-- bucket, readings, sum_value, min_value, max_value.
-- materialized_only = false turns real-time aggregation on (off by default
-- since 2.13): queries add the not-yet-materialized tail, recursively down the
-- stack to the hypertable as long as every level is real-time.
-- time_bucket on TIMESTAMPTZ buckets at UTC; the default origin is Monday
-- 2000-01-03, so weeks run Monday 00:00 UTC to Monday 00:00 UTC.
-- https://docs.timescale.com/api/latest/continuous-aggregates/create_materialized_view/
-- https://docs.timescale.com/use-timescale/latest/continuous-aggregates/real-time-aggregates/
-- https://docs.timescale.com/use-timescale/latest/time-buckets/about-time-buckets/
CREATE MATERIALIZED VIEW IF NOT EXISTS sensor_readings_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT device_id,
       sensor_name,
       time_bucket(INTERVAL '1 hour', time) AS bucket,
       count(*)   AS readings,
       sum(value) AS sum_value,
       min(value) AS min_value,
       max(value) AS max_value
FROM sensor_readings
GROUP BY device_id, sensor_name, time_bucket(INTERVAL '1 hour', time)
WITH NO DATA;

-- Hierarchical: each level rolls up the one below. The bucket must be a multiple
-- of the lower level's (1 day = 24 h, 1 week = 7 days; all fixed-width).
-- count, sum, min and max re-aggregate exactly (sum of counts, sum of sums,
-- min of mins, max of maxes). sum(bigint) is numeric, so readings is cast back
-- to bigint. GROUP BY repeats the expression: a bare "bucket" there would mean
-- the lower level's input column, not this output column.
-- https://docs.timescale.com/use-timescale/latest/continuous-aggregates/hierarchical-continuous-aggregates/
CREATE MATERIALIZED VIEW IF NOT EXISTS sensor_readings_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT device_id,
       sensor_name,
       time_bucket(INTERVAL '1 day', bucket) AS bucket,
       sum(readings)::BIGINT AS readings,
       sum(sum_value)        AS sum_value,
       min(min_value)        AS min_value,
       max(max_value)        AS max_value
FROM sensor_readings_1h
GROUP BY device_id, sensor_name, time_bucket(INTERVAL '1 day', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS sensor_readings_1w
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT device_id,
       sensor_name,
       time_bucket(INTERVAL '1 week', bucket) AS bucket,
       sum(readings)::BIGINT AS readings,
       sum(sum_value)        AS sum_value,
       min(min_value)        AS min_value,
       max(max_value)        AS max_value
FROM sensor_readings_1d
GROUP BY device_id, sensor_name, time_bucket(INTERVAL '1 week', bucket)
WITH NO DATA;

-- TimescaleDB already indexes (device_id, bucket) and (sensor_name, bucket) on
-- each aggregate (create_group_indexes). The rollup queries filter on device,
-- sensor and a bucket range, so add the composite. Index names live in the
-- _timescaledb_internal schema, hence the full prefixes.
-- https://docs.timescale.com/use-timescale/latest/continuous-aggregates/create-index/
CREATE INDEX IF NOT EXISTS sensor_readings_1h_device_sensor_bucket
    ON sensor_readings_1h (device_id, sensor_name, bucket DESC);
CREATE INDEX IF NOT EXISTS sensor_readings_1d_device_sensor_bucket
    ON sensor_readings_1d (device_id, sensor_name, bucket DESC);
CREATE INDEX IF NOT EXISTS sensor_readings_1w_device_sensor_bucket
    ON sensor_readings_1w (device_id, sensor_name, bucket DESC);

-- Refresh policies. A policy window must cover at least two buckets:
-- 1h: 3 days - 1 hour = 71 h; 1d: 7 days - 1 day = 6 d; 1w: 5 - 1 = 4 weeks.
-- end_offset leaves the bucket still being written to real-time aggregation.
-- Each level's window ends well after the lower level's materialized range
-- starts, so a refresh reads materialized data from the level below.
-- https://docs.timescale.com/api/latest/continuous-aggregates/add_continuous_aggregate_policy/
SELECT add_continuous_aggregate_policy('sensor_readings_1h',
    start_offset      => INTERVAL '3 days',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes',
    if_not_exists     => TRUE);
SELECT add_continuous_aggregate_policy('sensor_readings_1d',
    start_offset      => INTERVAL '7 days',
    end_offset        => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour',
    if_not_exists     => TRUE);
SELECT add_continuous_aggregate_policy('sensor_readings_1w',
    start_offset      => INTERVAL '5 weeks',
    end_offset        => INTERVAL '1 week',
    schedule_interval => INTERVAL '1 day',
    if_not_exists     => TRUE);

-- Drops chunks wholly older than each cutoff; returns how many were dropped.
-- drop_chunks takes a hypertable or a continuous aggregate and returns one row
-- per dropped chunk. A chunk is dropped only if its whole range is older than
-- the cutoff (aggregate chunks span 10 days, so retention is that coarse).
--
-- Dropping source data logs an invalidation but leaves materialized rollups in
-- place, as long as no refresh window covers the dropped range. Each cutoff is
-- therefore held back past the window of the level that reads it (1h reads raw
-- over 3 days, 1d reads 1h over 7 days, 1w reads 1d over 5 weeks), with one
-- bucket of margin. Without that floor, a short retention would erase rollups
-- at the next refresh. Nothing reads the weekly level, so it has no floor.
-- A NULL cutoff skips that level.
-- https://docs.timescale.com/api/latest/hypertable/drop_chunks/
-- https://docs.timescale.com/use-timescale/latest/data-retention/data-retention-with-continuous-aggregates/
CREATE OR REPLACE FUNCTION iot_drop_expired(
    raw_before    TIMESTAMPTZ,
    hourly_before TIMESTAMPTZ,
    daily_before  TIMESTAMPTZ,
    weekly_before TIMESTAMPTZ
) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    dropped INT := 0;
    n       INT;
BEGIN
    IF raw_before IS NOT NULL THEN
        SELECT count(*) INTO n FROM drop_chunks('sensor_readings',
            older_than => LEAST(raw_before, now() - INTERVAL '4 days'));
        dropped := dropped + n;
    END IF;
    IF hourly_before IS NOT NULL THEN
        SELECT count(*) INTO n FROM drop_chunks('sensor_readings_1h',
            older_than => LEAST(hourly_before, now() - INTERVAL '8 days'));
        dropped := dropped + n;
    END IF;
    IF daily_before IS NOT NULL THEN
        SELECT count(*) INTO n FROM drop_chunks('sensor_readings_1d',
            older_than => LEAST(daily_before, now() - INTERVAL '6 weeks'));
        dropped := dropped + n;
    END IF;
    IF weekly_before IS NOT NULL THEN
        SELECT count(*) INTO n FROM drop_chunks('sensor_readings_1w',
            older_than => weekly_before);
        dropped := dropped + n;
    END IF;
    RETURN dropped;
END;
$$;

-- Deletes up to max_rows of one device's oldest raw readings older than
-- `before`; returns the number deleted. Called in batches for per-device
-- retention.
--
-- The 4-day floor keeps deletions out of the 1h aggregate's 3-day refresh
-- window. A DELETE below the watermark only logs an invalidation; the policies
-- never refresh that old range, so the rollups keep the deleted readings (as
-- with drop_chunks above). A manual refresh over the range would remove them.
--
-- Works on compressed chunks (UPDATE/DELETE supported since 2.11). TimescaleDB
-- decompresses only the batches that match filters on the segmentby column
-- (device_id) and the orderby column (time). The [lo, hi] bounds give it those
-- filters: without them the DELETE would decompress every batch of the device
-- older than the cutoff. EXECUTE ... USING plans with the actual values, so
-- the bounds are constants for chunk exclusion and batch filtering. The IN list
-- keeps the max_rows cap exact when several sensors share the timestamp hi.
-- https://docs.timescale.com/use-timescale/latest/compression/modify-compressed-data/
CREATE OR REPLACE FUNCTION iot_delete_device_readings(dev UUID, before TIMESTAMPTZ, max_rows INT)
RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    cutoff  TIMESTAMPTZ;
    lo      TIMESTAMPTZ;
    hi      TIMESTAMPTZ;
    deleted INT;
BEGIN
    IF dev IS NULL OR before IS NULL OR max_rows IS NULL OR max_rows <= 0 THEN
        RETURN 0;
    END IF;
    cutoff := LEAST(before, now() - INTERVAL '4 days');

    SELECT min(s.time), max(s.time) INTO lo, hi
    FROM (SELECT time FROM sensor_readings
          WHERE device_id = dev AND time < cutoff
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
