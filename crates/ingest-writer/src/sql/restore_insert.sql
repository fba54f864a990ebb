-- Restored rows go back into sensor_readings only: the rollups still hold
-- them (they were never removed from the rollups by retention of raw rows).
INSERT INTO sensor_readings (time, device_id, sensor_name, value, unit, quality)
SELECT time, device_id, sensor_name, value, unit, quality FROM iot_restore_readings
ON CONFLICT (device_id, sensor_name, time) DO NOTHING
