-- Parts of [start, end) from the rollups and raw rows (ranges chosen by
-- rollup::plan; unused ones are empty), regrouped into buckets of $3 seconds
-- aligned like time_bucket (origin Monday 2000-01-03 UTC).
SELECT date_bin($3::float8 * INTERVAL '1 second', t, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       sum(n)::int8, sum(s), min(lo), max(hi)
FROM (
    SELECT bucket AS t, readings AS n, sum_value AS s, min_value AS lo, max_value AS hi
      FROM sensor_readings_1w WHERE device_id = $1 AND sensor_name = $2 AND bucket >= $4 AND bucket < $5
    UNION ALL
    SELECT bucket, readings, sum_value, min_value, max_value
      FROM sensor_readings_1d WHERE device_id = $1 AND sensor_name = $2 AND bucket >= $6 AND bucket < $7
    UNION ALL
    SELECT bucket, readings, sum_value, min_value, max_value
      FROM sensor_readings_1d WHERE device_id = $1 AND sensor_name = $2 AND bucket >= $8 AND bucket < $9
    UNION ALL
    SELECT bucket, readings, sum_value, min_value, max_value
      FROM sensor_readings_1h WHERE device_id = $1 AND sensor_name = $2 AND bucket >= $10 AND bucket < $11
    UNION ALL
    SELECT bucket, readings, sum_value, min_value, max_value
      FROM sensor_readings_1h WHERE device_id = $1 AND sensor_name = $2 AND bucket >= $12 AND bucket < $13
    UNION ALL
    SELECT time, 1, value, value, value
      FROM sensor_readings WHERE device_id = $1 AND sensor_name = $2 AND time >= $14 AND time < $15
    UNION ALL
    SELECT time, 1, value, value, value
      FROM sensor_readings WHERE device_id = $1 AND sensor_name = $2 AND time >= $16 AND time < $17
) parts
GROUP BY 1
ORDER BY 1
