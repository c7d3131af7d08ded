-- The feedback loop: what a clinician said about an analysis (including "not assessable") and
-- who said it; the scan at its decoded resolution and bit depth for training; how informative
-- an analysis is for the review queue; and the model registry.

-- SQLite cannot change a CHECK constraint in place: the table is rebuilt with its rows.
CREATE TABLE feedback_v2 (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    analysis_id   TEXT NOT NULL REFERENCES analyses (id) ON DELETE CASCADE,
    created_unix  INTEGER NOT NULL,
    verdict       TEXT NOT NULL CHECK (verdict IN ('confirmed', 'corrected', 'not_assessable')),
    -- The class given; empty for "not assessable".
    class_id      TEXT NOT NULL,
    comment       BLOB NOT NULL,
    -- The account that gave it (`local` on a server without accounts; empty before accounts).
    given_by      TEXT NOT NULL DEFAULT ''
);
INSERT INTO feedback_v2 (id, analysis_id, created_unix, verdict, class_id, comment)
    SELECT id, analysis_id, created_unix, verdict, class_id, comment FROM feedback;
DROP TABLE feedback;
ALTER TABLE feedback_v2 RENAME TO feedback;
CREATE INDEX feedback_analysis ON feedback (analysis_id);

-- The scan as decoded (16-bit grey PNG, no metadata, sealed like the display image); NULL in
-- analyses stored before the feedback loop, which export their display image instead.
ALTER TABLE analyses ADD COLUMN source_png BLOB;
-- Predictive entropy of the class probabilities, in bits: the review queue shows the most
-- uncertain answers first. NULL until computed (older rows are filled at start).
ALTER TABLE analyses ADD COLUMN entropy REAL;
CREATE INDEX analyses_entropy ON analyses (entropy DESC);

-- Model versions known to this deployment: a copy of each in the models folder.
CREATE TABLE model_versions (
    version          TEXT PRIMARY KEY NOT NULL,   -- first 12 hex digits of the weights' SHA-256
    name             TEXT NOT NULL,
    parent           TEXT,                        -- the version it was fine-tuned from
    directory        TEXT NOT NULL,               -- where its model file lives
    data_fingerprint TEXT NOT NULL,
    feedback_fingerprint TEXT,
    metrics          TEXT NOT NULL,               -- JSON: validation figures from the model file
    registered_unix  INTEGER NOT NULL
);

-- Promotions, newest last: the served version is the newest one not rolled back.
CREATE TABLE model_promotions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    version          TEXT NOT NULL REFERENCES model_versions (version),
    promoted_unix    INTEGER NOT NULL,
    promoted_by      TEXT NOT NULL,
    -- JSON: the held-out comparison with the version served before (null for the first).
    comparison       TEXT,
    rolled_back_unix INTEGER
);
