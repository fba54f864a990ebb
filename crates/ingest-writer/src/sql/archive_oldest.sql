-- The oldest raw reading past the archive cutoff: still waiting to be
-- archived and dropped.
SELECT min(time) FROM sensor_readings WHERE time < $1
