INSERT INTO device_config (device_id, read_interval, alert_threshold, data_retention_days, custom_fields)
SELECT * FROM unnest($1::uuid[], $2::int4[], $3::jsonb[], $4::int4[], $5::jsonb[])
