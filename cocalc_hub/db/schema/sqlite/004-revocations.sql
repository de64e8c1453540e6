-- Access taken away (a session or API key deleted, an account banned or its password
-- changed, a project's members changed): one row per change, written in the same
-- transaction. Every hub process watches the newest seq and re-checks its open connections.
CREATE TABLE revocations (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    kind   TEXT NOT NULL,
    value  TEXT NOT NULL,
    at     TEXT NOT NULL
);
CREATE INDEX revocations_at ON revocations (at);
