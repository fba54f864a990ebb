-- ingest-writer owns this. Rollups of on-time readings are sealed, not
-- upserted per batch (docs/design/sealed-rollups.md):
--   * every rollup row of a bucket that ends at or before `sealed_until`
--     counts exactly the raw rows of that bucket; nothing at or after
--     `sealed_until` is read from the rollups, only from raw rows;
--   * a batch upserts into the rollups only its readings older than
--     `upsert_below`; newer ones are aggregated from the raw rows when their
--     hour is sealed;
--   * `upsert_below` runs ahead of `sealed_until` only while a seal is in
--     flight (or after one died: the next seal recomputes that range).
-- Both start at this hour, or past the newest stored reading if that is
-- later: every reading stored so far is already in the rollups. A writer of
-- an earlier version upserts every reading, so none may run once this is
-- applied.
CREATE TABLE rollup_watermark (
    one          BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    sealed_until TIMESTAMPTZ NOT NULL,
    upsert_below TIMESTAMPTZ NOT NULL,
    CHECK (upsert_below >= sealed_until)
);

INSERT INTO rollup_watermark (sealed_until, upsert_below)
SELECT s, s FROM (
    SELECT GREATEST(date_bin(INTERVAL '1 hour', now(), TIMESTAMPTZ '2000-01-03 00:00:00+00'),
                    date_bin(INTERVAL '1 hour', max(time), TIMESTAMPTZ '2000-01-03 00:00:00+00')
                        + INTERVAL '1 hour') AS s
    FROM sensor_readings
) w;

-- A batch's rule: taken under the shared lock that a seal takes exclusively
-- (key 30432929, `seal::WRITE_LOCK`), and read after it, so a seal never misses a batch in
-- flight. PL/pgSQL reads with a snapshot taken after the lock.
CREATE FUNCTION iot_rollup_upsert_below() RETURNS TIMESTAMPTZ
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(30432929);
    RETURN (SELECT upsert_below FROM rollup_watermark);
END
$$;

-- The rollups as queries see them, for readers of the database itself
-- (dashboards): sealed rollup rows, and past the watermark the raw rows'
-- hours (a day in progress from its sealed hours and the raw rows after).
CREATE VIEW sensor_readings_1h_live AS
SELECT r.device_id, r.sensor_name, r.bucket, r.readings, r.sum_value, r.min_value, r.max_value
FROM sensor_readings_1h r, rollup_watermark w
WHERE r.bucket < w.sealed_until
UNION ALL
SELECT x.device_id, x.sensor_name,
       date_bin(INTERVAL '1 hour', x.time, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
       count(*), sum(x.value), min(x.value), max(x.value)
FROM sensor_readings x, rollup_watermark w
WHERE x.time >= w.sealed_until
GROUP BY 1, 2, 3;

CREATE VIEW sensor_readings_1d_live AS
SELECT d.device_id, d.sensor_name, d.bucket, d.readings, d.sum_value, d.min_value, d.max_value
FROM sensor_readings_1d d, rollup_watermark w
WHERE d.bucket + INTERVAL '1 day' <= w.sealed_until
UNION ALL
SELECT h.device_id, h.sensor_name,
       date_bin(INTERVAL '1 day', h.bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
       sum(h.readings)::int8, sum(h.sum_value), min(h.min_value), max(h.max_value)
FROM sensor_readings_1h_live h, rollup_watermark w
WHERE h.bucket >= date_bin(INTERVAL '1 day', w.sealed_until, TIMESTAMPTZ '2000-01-03 00:00:00+00')
GROUP BY 1, 2, 3;
