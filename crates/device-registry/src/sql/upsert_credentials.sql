INSERT INTO device_credentials (device_id, username, password_hash)
VALUES ($1, $2, $3)
ON CONFLICT (device_id) DO UPDATE SET
    username = excluded.username,
    password_hash = excluded.password_hash,
    issued_at = now(),
    revoked_at = NULL
