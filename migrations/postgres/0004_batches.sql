-- PostgreSQL twin of migrations/sqlite/0004_batches.sql (series and errors are sealed: BYTEA).
CREATE TABLE batches (
    id            TEXT PRIMARY KEY NOT NULL,
    created_unix  BIGINT NOT NULL,
    series        BYTEA NOT NULL,
    errors        BYTEA NOT NULL
);
ALTER TABLE analyses ADD COLUMN batch_id TEXT REFERENCES batches (id) ON DELETE CASCADE;
ALTER TABLE analyses ADD COLUMN slice_index BIGINT;
CREATE INDEX analyses_batch ON analyses (batch_id, slice_index);
