-- The raw rows of [$1, $2) per series and hour, into the session table a
-- seal merges from.
INSERT INTO iot_seal
SELECT device_id, sensor_name, date_bin(INTERVAL '1 hour', time, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
       count(*), sum(value), min(value), max(value)
FROM sensor_readings
WHERE time >= $1 AND time < $2
GROUP BY 1, 2, 3
