-- Raw rows older than $1 by UTC day, counted under the lock retention
-- holds while it drops them: each day must match what was archived.
SELECT (time AT TIME ZONE 'UTC')::date AS day, count(*)
FROM sensor_readings
WHERE time < $1
GROUP BY 1
