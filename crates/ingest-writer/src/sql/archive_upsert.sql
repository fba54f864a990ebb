INSERT INTO archive_files
    (day, owner_id, path, min_time, max_time, row_count, bytes, sha256, state)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'archived')
ON CONFLICT (day, owner_id) DO UPDATE SET
    path = EXCLUDED.path,
    min_time = EXCLUDED.min_time,
    max_time = EXCLUDED.max_time,
    row_count = EXCLUDED.row_count,
    bytes = EXCLUDED.bytes,
    sha256 = EXCLUDED.sha256,
    state = 'archived',
    archived_at = now(),
    dropped_at = NULL
