UPDATE archive_files
SET state = 'dropped', dropped_at = now()
WHERE day < $1::date AND state = 'archived'
