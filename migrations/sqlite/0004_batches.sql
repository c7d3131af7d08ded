-- Uploads of several slices (DICOM series, multi-frame objects, several files or a zip): the
-- batch holds the series summaries (JSON, identifiers already replaced) and the files that
-- could not be analysed (JSON [{file, error}]); its slices are ordinary analyses that name it.
CREATE TABLE batches (
    id            TEXT PRIMARY KEY NOT NULL,
    created_unix  INTEGER NOT NULL,
    series        TEXT NOT NULL,
    errors        TEXT NOT NULL
);
ALTER TABLE analyses ADD COLUMN batch_id TEXT REFERENCES batches (id) ON DELETE CASCADE;
ALTER TABLE analyses ADD COLUMN slice_index INTEGER;
CREATE INDEX analyses_batch ON analyses (batch_id, slice_index);
