COPY sensor_readings (time, device_id, sensor_name, value, unit, quality) FROM STDIN BINARY
