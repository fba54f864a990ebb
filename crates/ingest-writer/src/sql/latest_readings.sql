SELECT time, device_id, sensor_name, value, unit, quality
FROM sensor_latest
WHERE device_id = ANY($1)
ORDER BY device_id, sensor_name
