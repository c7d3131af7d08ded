-- Analyses: one uploaded scan, its result and its heat-map, stored together in one transaction.
CREATE TABLE analyses (
    id            TEXT PRIMARY KEY NOT NULL,
    created_unix  INTEGER NOT NULL,
    filename      TEXT NOT NULL,
    model_name    TEXT NOT NULL,
    model_version TEXT NOT NULL,
    class_id      TEXT NOT NULL,
    class_name    TEXT NOT NULL,
    confidence    REAL NOT NULL,
    uncertain     INTEGER NOT NULL,
    probabilities TEXT NOT NULL,      -- JSON array, model class order
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    image_png     BLOB NOT NULL,      -- the scan as shown (grey PNG, longest side <= 1024)
    heatmap_png   BLOB NOT NULL       -- Grad-CAM, coloured RGBA PNG at the same size
);
CREATE INDEX analyses_created ON analyses (created_unix DESC);

-- Clinicians' confirmations and corrections: the input of a later retraining loop.
CREATE TABLE feedback (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    analysis_id   TEXT NOT NULL REFERENCES analyses (id) ON DELETE CASCADE,
    created_unix  INTEGER NOT NULL,
    verdict       TEXT NOT NULL CHECK (verdict IN ('confirmed', 'corrected')),
    class_id      TEXT NOT NULL,
    comment       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX feedback_analysis ON feedback (analysis_id);
