-- The PACS watcher's memory, so that a restart neither repeats nor skips a series: one row per
-- series seen, keyed by SHA-256 of the PACS address, study and series UIDs (no DICOM
-- identifier is stored). 'done' series are not analysed again; 'failed' ones are retried from
-- next_attempt_unix with back-off; 'parked' ones failed too often and wait for a person.
CREATE TABLE pacs_series (
    key               TEXT PRIMARY KEY NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('done', 'failed', 'parked')),
    attempts          INTEGER NOT NULL,
    next_attempt_unix INTEGER NOT NULL,
    last_error        TEXT NOT NULL DEFAULT '',
    slices            INTEGER NOT NULL DEFAULT 0,
    finding           TEXT NOT NULL DEFAULT '',
    updated_unix      INTEGER NOT NULL
);
