SELECT s.device_id, s.desired, s.desired_version, s.desired_at, s.reported, s.reported_at, s.published_version FROM device_state s WHERE s.device_id = $1
