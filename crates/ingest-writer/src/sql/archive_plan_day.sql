-- The raw rows older than $1 (a UTC midnight), by UTC day, owner and
-- device: what retention is about to drop, and so what must be archived
-- first. Devices without an owner count under the nil UUID.
SELECT (r.time AT TIME ZONE 'UTC')::date AS day,
       COALESCE(o.owner_id, '00000000-0000-0000-0000-000000000000'::uuid) AS owner_id,
       r.device_id,
       count(*) AS row_count
FROM sensor_readings r
LEFT JOIN device_owners o ON o.device_id = r.device_id
WHERE r.time < $1
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
