-- Adds a seal's hourly aggregates (session table iot_seal) into the rollups
-- of {table}, regrouped into buckets of {width}, in the writers' key order.
INSERT INTO {table} AS r (device_id, sensor_name, bucket, readings, sum_value, min_value, max_value)
SELECT device_id, sensor_name, date_bin(INTERVAL '{width}', bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
       sum(readings)::int8, sum(sum_value), min(min_value), max(max_value)
FROM iot_seal
GROUP BY 1, 2, 3
ORDER BY device_id, sensor_name COLLATE "C", 3
ON CONFLICT (device_id, sensor_name, bucket) DO UPDATE SET
    readings  = r.readings + excluded.readings,
    sum_value = r.sum_value + excluded.sum_value,
    min_value = LEAST(r.min_value, excluded.min_value),
    max_value = GREATEST(r.max_value, excluded.max_value)
