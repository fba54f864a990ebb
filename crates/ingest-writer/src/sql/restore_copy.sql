COPY iot_restore_readings (time, device_id, sensor_name, value, unit, quality) FROM STDIN BINARY
