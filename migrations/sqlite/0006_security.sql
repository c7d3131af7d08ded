-- Accounts, sessions and API tokens (issue #17). Passwords are Argon2id hashes (PHC strings);
-- session ids and token secrets are stored as SHA-256 of the value the client holds, so a copy
-- of the database opens no session.
CREATE TABLE users (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    name                  TEXT NOT NULL UNIQUE,
    role                  TEXT NOT NULL CHECK (role IN ('admin', 'clinician', 'viewer')),
    password_hash         TEXT NOT NULL,
    disabled              INTEGER NOT NULL DEFAULT 0,
    failed_logins         INTEGER NOT NULL DEFAULT 0,
    locked_until_unix     INTEGER NOT NULL DEFAULT 0,
    created_unix          INTEGER NOT NULL,
    password_changed_unix INTEGER NOT NULL
);

CREATE TABLE sessions (
    id_sha256      TEXT PRIMARY KEY NOT NULL,
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf           TEXT NOT NULL,
    created_unix   INTEGER NOT NULL,
    last_seen_unix INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_tokens (
    id             TEXT PRIMARY KEY NOT NULL,   -- the public part, shown in listings
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_sha256  TEXT NOT NULL,
    label          TEXT NOT NULL DEFAULT '',
    created_unix   INTEGER NOT NULL,
    expires_unix   INTEGER,                     -- NULL: no expiry
    revoked_unix   INTEGER,                     -- NULL: valid
    last_used_unix INTEGER
);

-- The audit trail: who did what to which object, when, from where. Append-only (the triggers
-- refuse UPDATE and DELETE), each entry chained to the one before by SHA-256, and the chain's
-- head signed (HMAC-SHA256 under the deployment's key, which the database never holds) so that
-- cutting entries off the end is detected too.
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY NOT NULL,     -- 1, 2, 3, ... without gaps
    at_unix   INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    object    TEXT NOT NULL,
    address   TEXT NOT NULL,
    outcome   TEXT NOT NULL CHECK (outcome IN ('ok', 'denied', 'failed')),
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_unix);
CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

CREATE TABLE audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,
    hash      TEXT NOT NULL,
    signature TEXT NOT NULL
);
