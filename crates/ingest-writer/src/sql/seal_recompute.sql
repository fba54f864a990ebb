-- After a seal died between moving upsert_below ($2) and sealed_until ($1):
-- the rollups of [$1, $2) hold only the late readings upserted since, so
-- that range is computed again from what is complete. Hours from raw rows;
-- days from hours, weeks from days, each from the start of the bucket that
-- holds $1 (the hours and days before $1 are sealed, hence exact).
DELETE FROM sensor_readings_1h WHERE bucket >= $1 AND bucket < $2;
INSERT INTO sensor_readings_1h
SELECT device_id, sensor_name, date_bin(INTERVAL '1 hour', time, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
       count(*), sum(value), min(value), max(value)
FROM sensor_readings WHERE time >= $1 AND time < $2
GROUP BY 1, 2, 3;
DELETE FROM sensor_readings_1d
WHERE bucket >= date_bin(INTERVAL '1 day', $1, TIMESTAMPTZ '2000-01-03 00:00:00+00') AND bucket < $2;
INSERT INTO sensor_readings_1d
SELECT device_id, sensor_name, date_bin(INTERVAL '1 day', bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
       sum(readings)::int8, sum(sum_value), min(min_value), max(max_value)
FROM sensor_readings_1h
WHERE bucket >= date_bin(INTERVAL '1 day', $1, TIMESTAMPTZ '2000-01-03 00:00:00+00') AND bucket < $2
GROUP BY 1, 2, 3;
DELETE FROM sensor_readings_1w
WHERE bucket >= date_bin(INTERVAL '7 days', $1, TIMESTAMPTZ '2000-01-03 00:00:00+00') AND bucket < $2;
INSERT INTO sensor_readings_1w
SELECT device_id, sensor_name, date_bin(INTERVAL '7 days', bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
       sum(readings)::int8, sum(sum_value), min(min_value), max(max_value)
FROM sensor_readings_1d
WHERE bucket >= date_bin(INTERVAL '7 days', $1, TIMESTAMPTZ '2000-01-03 00:00:00+00') AND bucket < $2
GROUP BY 1, 2, 3;
UPDATE rollup_watermark SET sealed_until = $2::timestamptz WHERE sealed_until = $1::timestamptz;
