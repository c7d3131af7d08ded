-- PostgreSQL twin of migrations/sqlite/0005_pacs.sql.
CREATE TABLE pacs_series (
    key               TEXT PRIMARY KEY NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('done', 'failed', 'parked')),
    attempts          BIGINT NOT NULL,
    next_attempt_unix BIGINT NOT NULL,
    last_error        TEXT NOT NULL DEFAULT '',
    slices            BIGINT NOT NULL DEFAULT 0,
    finding           TEXT NOT NULL DEFAULT '',
    updated_unix      BIGINT NOT NULL
);
