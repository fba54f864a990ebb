SELECT time, device_id, sensor_name, value, unit, quality
FROM sensor_readings
WHERE device_id = $1 AND sensor_name = $2 AND time >= $3 AND time < $4
ORDER BY time DESC
LIMIT $5
