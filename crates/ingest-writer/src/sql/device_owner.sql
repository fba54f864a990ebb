SELECT owner_id FROM device_owners WHERE device_id = $1
