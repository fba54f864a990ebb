SELECT
    (SELECT COALESCE(sum(readings), 0)::int8 FROM ingest_counts
      WHERE second >= date_trunc('second', now()) - INTERVAL '60 seconds'
        AND second <  date_trunc('second', now())),
    (SELECT count(DISTINCT device_id) FROM sensor_latest WHERE time >= now() - INTERVAL '5 minutes'),
    (SELECT count(DISTINCT device_id) FROM sensor_latest),
    (SELECT count(*) FROM sensor_latest)
