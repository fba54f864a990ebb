INSERT INTO ingest_counts AS c (writer_id, second, readings)
VALUES ($1, date_trunc('second', clock_timestamp()), $2)
ON CONFLICT (writer_id, second) DO UPDATE SET readings = c.readings + excluded.readings
