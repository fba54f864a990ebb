-- Fleet figures. A series' sensor_latest time trails its newest reading by
-- less than $1 seconds (latest::REFRESH): a series stored that far before
-- the 5-minute mark is reporting only if a raw row says so.
SELECT
    (SELECT COALESCE(sum(readings), 0)::int8 FROM ingest_counts
      WHERE second >= date_trunc('second', now()) - INTERVAL '60 seconds'
        AND second <  date_trunc('second', now())),
    (SELECT count(DISTINCT l.device_id) FROM sensor_latest l
      WHERE l.time >= now() - INTERVAL '5 minutes'
         OR (l.time >= now() - INTERVAL '5 minutes' - $1::float8 * INTERVAL '1 second'
             AND EXISTS (SELECT 1 FROM sensor_readings x
                         WHERE x.device_id = l.device_id AND x.sensor_name = l.sensor_name
                           AND x.time >= now() - INTERVAL '5 minutes'))),
    (SELECT count(DISTINCT device_id) FROM sensor_latest),
    (SELECT count(*) FROM sensor_latest)
