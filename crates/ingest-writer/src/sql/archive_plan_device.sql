-- One device's raw rows older than $2 (a UTC midnight), by UTC day: what a
-- per-device trim is about to delete.
SELECT (r.time AT TIME ZONE 'UTC')::date AS day,
       COALESCE(o.owner_id, '00000000-0000-0000-0000-000000000000'::uuid) AS owner_id,
       r.device_id,
       count(*) AS row_count
FROM sensor_readings r
LEFT JOIN device_owners o ON o.device_id = r.device_id
WHERE r.device_id = $1 AND r.time < $2
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
