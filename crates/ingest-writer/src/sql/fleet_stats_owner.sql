-- fleet_stats.sql for one owner's devices ($1; $2 as fleet_stats.sql's
-- $1). Readings are counted by their own time (ingest_counts, which counts
-- by store time, is not kept per owner); the time index bounds the scan to
-- the last minute.
WITH mine AS (SELECT device_id AS id FROM device_owners WHERE owner_id = $1)
SELECT
    (SELECT count(*) FROM sensor_readings
      WHERE time >= date_trunc('second', now()) - INTERVAL '60 seconds'
        AND time <  date_trunc('second', now())
        AND device_id IN (SELECT id FROM mine)),
    (SELECT count(DISTINCT l.device_id) FROM sensor_latest l
      WHERE l.device_id IN (SELECT id FROM mine)
        AND (l.time >= now() - INTERVAL '5 minutes'
             OR (l.time >= now() - INTERVAL '5 minutes' - $2::float8 * INTERVAL '1 second'
                 AND EXISTS (SELECT 1 FROM sensor_readings x
                             WHERE x.device_id = l.device_id AND x.sensor_name = l.sensor_name
                               AND x.time >= now() - INTERVAL '5 minutes')))),
    (SELECT count(DISTINCT device_id) FROM sensor_latest WHERE device_id IN (SELECT id FROM mine)),
    (SELECT count(*) FROM sensor_latest WHERE device_id IN (SELECT id FROM mine))
