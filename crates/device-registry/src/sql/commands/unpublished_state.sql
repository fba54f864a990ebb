-- Desired states the broker does not hold yet as retained messages.
SELECT s.device_id, d.device_id AS external_id, s.desired, s.desired_version
FROM device_state s JOIN devices d ON d.id = s.device_id
WHERE s.published_version < s.desired_version
LIMIT $1
