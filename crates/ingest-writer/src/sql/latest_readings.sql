-- The newest reading of every series of the devices $1. A series' row in
-- sensor_latest trails its newest reading by less than latest::REFRESH; a
-- newer raw row, if any, is one probe of the newest partitions.
SELECT coalesce(r.time, l.time), l.device_id, l.sensor_name, coalesce(r.value, l.value),
       CASE WHEN r.time IS NULL THEN l.unit ELSE r.unit END,
       CASE WHEN r.time IS NULL THEN l.quality ELSE r.quality END
FROM sensor_latest l
LEFT JOIN LATERAL (
    SELECT time, value, unit, quality FROM sensor_readings x
    WHERE x.device_id = l.device_id AND x.sensor_name = l.sensor_name AND x.time > l.time
    ORDER BY x.time DESC
    LIMIT 1
) r ON TRUE
WHERE l.device_id = ANY($1)
ORDER BY l.device_id, l.sensor_name
