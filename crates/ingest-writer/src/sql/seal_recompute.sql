-- After a seal died between moving upsert_below ($2) and sealed_until ($1):
-- the rollups of [$1, $2) hold only the late readings upserted since, so
-- that range is computed again from what is complete. Hours from raw rows
-- here; days from hours and weeks from days in seal_recompute_level.sql.
DELETE FROM sensor_readings_1h WHERE bucket >= $1 AND bucket < $2;
INSERT INTO sensor_readings_1h
SELECT device_id, sensor_name, date_bin(INTERVAL '1 hour', time, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
       count(*), sum(value), min(value), max(value)
FROM sensor_readings WHERE time >= $1 AND time < $2
GROUP BY 1, 2, 3;
