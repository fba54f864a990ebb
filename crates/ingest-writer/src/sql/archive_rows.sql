-- The rows of some devices in [$1, $2), in the archive's order: time, then
-- device, then sensor name in byte order (COLLATE "C", as Rust compares
-- strings), so they merge with an archived file's rows in one pass.
SELECT time, device_id, sensor_name, value, unit, quality
FROM sensor_readings
WHERE time >= $1 AND time < $2 AND device_id = ANY($3)
ORDER BY time, device_id, sensor_name COLLATE "C"
