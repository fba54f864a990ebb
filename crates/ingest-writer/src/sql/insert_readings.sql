INSERT INTO sensor_readings (time, device_id, sensor_name, value, unit, quality)
SELECT time, device_id, sensor_name, value, unit, quality FROM iot_staging_readings
ON CONFLICT (device_id, sensor_name, time) DO NOTHING
RETURNING time, device_id, sensor_name, value, unit, quality
