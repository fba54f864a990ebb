-- A device's rollup rows of {width} with buckets in [$3, $4), stitched at
-- the seal watermark as query_metrics is (docs/design/sealed-rollups.md):
-- buckets that end before it from {table}; the bucket it falls in from the
-- hourly rollups before it; everything after it from raw rows.
WITH w AS (
    SELECT date_bin(INTERVAL '1 hour', sealed_until, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS s
    FROM rollup_watermark
)
SELECT bucket, device_id, sensor_name, sum(readings)::int8, sum(sum_value), min(min_value), max(max_value)
FROM (
    SELECT r.bucket, r.device_id, r.sensor_name, r.readings, r.sum_value, r.min_value, r.max_value
    FROM {table} r, w
    WHERE r.device_id = $1 AND ($2::text IS NULL OR r.sensor_name = $2)
      AND r.bucket >= $3 AND r.bucket < $4 AND r.bucket + INTERVAL '{width}' <= w.s
    UNION ALL
    SELECT date_bin(INTERVAL '{width}', h.bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
           h.device_id, h.sensor_name, h.readings, h.sum_value, h.min_value, h.max_value
    FROM sensor_readings_1h h, w
    WHERE h.device_id = $1 AND ($2::text IS NULL OR h.sensor_name = $2)
      AND h.bucket >= date_bin(INTERVAL '{width}', w.s, TIMESTAMPTZ '2000-01-03 00:00:00+00')
      AND h.bucket < w.s AND h.bucket >= $3 AND h.bucket < $4 + INTERVAL '{width}'
    UNION ALL
    SELECT date_bin(INTERVAL '{width}', x.time, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
           x.device_id, x.sensor_name, 1, x.value, x.value, x.value
    FROM sensor_readings x, w
    WHERE x.device_id = $1 AND ($2::text IS NULL OR x.sensor_name = $2)
      AND x.time >= w.s AND x.time >= $3 AND x.time < $4 + INTERVAL '{width}'
) parts
WHERE bucket >= $3 AND bucket < $4
GROUP BY bucket, device_id, sensor_name
ORDER BY bucket, sensor_name COLLATE "C"
