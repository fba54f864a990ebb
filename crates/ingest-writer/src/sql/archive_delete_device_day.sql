DELETE FROM sensor_readings
WHERE device_id = $1 AND time >= $2 AND time < $3
