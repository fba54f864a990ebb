INSERT INTO devices (device_id, name, device_type, location, latitude, longitude, owner_id, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (device_id) DO NOTHING
RETURNING id
