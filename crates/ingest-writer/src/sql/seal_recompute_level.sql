-- {table} again from {finer}, from the start of the {width} bucket that
-- holds $1 (the finer rows before $1 are sealed, hence exact) up to $2.
DELETE FROM {table}
WHERE bucket >= date_bin(INTERVAL '{width}', $1, TIMESTAMPTZ '2000-01-03 00:00:00+00') AND bucket < $2;
INSERT INTO {table}
SELECT device_id, sensor_name, date_bin(INTERVAL '{width}', bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
       sum(readings)::int8, sum(sum_value), min(min_value), max(max_value)
FROM {finer}
WHERE bucket >= date_bin(INTERVAL '{width}', $1, TIMESTAMPTZ '2000-01-03 00:00:00+00') AND bucket < $2
GROUP BY 1, 2, 3;
