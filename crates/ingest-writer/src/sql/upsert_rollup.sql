INSERT INTO {table} AS r (device_id, sensor_name, bucket, readings, sum_value, min_value, max_value)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::int8[], $5::numeric[], $6::numeric[], $7::numeric[])
ON CONFLICT (device_id, sensor_name, bucket) DO UPDATE SET
    readings  = r.readings + excluded.readings,
    sum_value = r.sum_value + excluded.sum_value,
    min_value = LEAST(r.min_value, excluded.min_value),
    max_value = GREATEST(r.max_value, excluded.max_value)
