-- Why an answer changed nothing: the command's device (external id) and
-- status, if it exists.
SELECT d.device_id AS external_id, c.status
FROM device_commands c JOIN devices d ON d.id = c.device_id
WHERE c.id = $1
