SELECT day, owner_id, path, min_time, max_time, row_count, bytes, sha256, state
FROM archive_files
WHERE day >= $1 AND day <= $2 AND ($3::uuid IS NULL OR owner_id = $3)
ORDER BY day, owner_id
