SELECT bucket, device_id, sensor_name, readings, sum_value, min_value, max_value
FROM sensor_readings_1d
WHERE device_id = $1
  AND ($2::text IS NULL OR sensor_name = $2)
  AND bucket >= $3 AND bucket < $4
ORDER BY bucket, sensor_name COLLATE "C"
