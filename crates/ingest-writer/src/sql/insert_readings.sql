INSERT INTO sensor_readings (time, device_id, sensor_name, value, unit, quality)
SELECT * FROM UNNEST($1::timestamptz[], $2::uuid[], $3::text[], $4::numeric[], $5::text[], $6::text[])
ON CONFLICT (device_id, sensor_name, time) DO NOTHING
