-- ingest-writer owns this table: the manifest of cold storage. One Parquet
-- file per UTC day and owner holds the raw readings retention removed (or is
-- about to remove) from sensor_readings; devices without an owner file under
-- the nil UUID. Retention drops a day only after every file of that day is
-- durable, recorded here as 'archived', and its row counts match the rows
-- about to go; the drop and the move to 'dropped' commit together, so a
-- crash anywhere leaves either rows still in the database or a durable file
-- recorded here, never neither. Same on both backends.
CREATE TABLE IF NOT EXISTS archive_files (
    day         DATE        NOT NULL,
    owner_id    UUID        NOT NULL,
    -- Relative to the archive store's root.
    path        TEXT        NOT NULL,
    min_time    TIMESTAMPTZ NOT NULL,
    max_time    TIMESTAMPTZ NOT NULL,
    row_count   BIGINT      NOT NULL CHECK (row_count >= 0),
    bytes       BIGINT      NOT NULL CHECK (bytes >= 0),
    -- SHA-256 of the file's bytes, lowercase hex.
    sha256      TEXT        NOT NULL,
    -- archived: durable, its rows may still be in sensor_readings;
    -- dropped: retention removed them, the file is the only copy.
    state       TEXT        NOT NULL CHECK (state IN ('archived', 'dropped')),
    archived_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    dropped_at  TIMESTAMPTZ,
    PRIMARY KEY (day, owner_id)
);

CREATE INDEX IF NOT EXISTS archive_files_owner_day ON archive_files (owner_id, day);
