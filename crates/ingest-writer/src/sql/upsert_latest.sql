INSERT INTO sensor_latest AS l (device_id, sensor_name, time, value, unit, quality)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::numeric[], $5::text[], $6::text[])
ON CONFLICT (device_id, sensor_name) DO UPDATE SET
    time    = excluded.time,
    value   = excluded.value,
    unit    = excluded.unit,
    quality = excluded.quality
WHERE excluded.time > l.time
