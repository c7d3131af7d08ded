-- The job queue several workers share (issue #19): batch inference over an archive, and the
-- PACS watcher's series. A job is claimed with a lease (owner, expiry in unix milliseconds);
-- a worker that dies holds it only until the lease runs out, then another takes it over. One
-- row per (queue, key): the same work is never queued twice.
CREATE TABLE jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    queue          TEXT NOT NULL,
    job_key        TEXT NOT NULL,
    payload        TEXT NOT NULL,      -- JSON, what the work needs
    state          TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    lease_owner    TEXT,
    lease_until_ms INTEGER,
    result         TEXT,               -- JSON, once done
    error          TEXT,               -- why it failed
    created_ms     INTEGER NOT NULL,
    finished_ms    INTEGER,
    UNIQUE (queue, job_key)
);
CREATE INDEX jobs_claimable ON jobs (queue, state, id);
