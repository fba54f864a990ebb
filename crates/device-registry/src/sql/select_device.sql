SELECT d.id, d.device_id, d.name, d.device_type, d.location, d.latitude, d.longitude,
       d.owner_id, d.status, h.last_heartbeat, d.created_at, h.disconnected_at,
       c.read_interval, c.alert_threshold, c.data_retention_days, c.custom_fields
FROM devices d
LEFT JOIN device_config c ON c.device_id = d.id
LEFT JOIN device_heartbeats h ON h.device_id = d.id
