UPDATE device_state SET published_version = greatest(published_version, $2)
WHERE device_id = $1
