-- One device's raw rows in [$3, $4), of one sensor ($2) or all, in the
-- archive's order (time, then sensor name in byte order).
SELECT time, device_id, sensor_name, value, unit, quality
FROM sensor_readings
WHERE device_id = $1
  AND ($2::text IS NULL OR sensor_name = $2)
  AND time >= $3 AND time < $4
ORDER BY time, sensor_name COLLATE "C"
