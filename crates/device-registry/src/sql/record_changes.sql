INSERT INTO device_changes (device_id, external_id, kind)
SELECT d, e, $3 FROM unnest($1::uuid[], $2::text[]) AS u (d, e)
