INSERT INTO device_config (device_id, read_interval, alert_threshold, data_retention_days, custom_fields)
VALUES ($1, $2, $3, $4, $5)
