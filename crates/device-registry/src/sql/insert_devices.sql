-- Many devices in one statement (CreateDevices). A device_id already taken,
-- or given twice in the call, inserts nothing for that row: the caller
-- learns which rows went in from what comes back.
INSERT INTO devices (device_id, name, device_type, location, latitude, longitude, owner_id, status)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[],
                     $6::numeric[], $7::uuid[], $8::text[])
ON CONFLICT (device_id) DO NOTHING
RETURNING id, device_id
