SELECT c.device_id, d.device_id, c.password_hash
FROM device_credentials c
JOIN devices d ON d.id = c.device_id
WHERE c.username = $1 AND c.revoked_at IS NULL
