-- Access taken away (a session or API key deleted, an account banned or its password
-- changed, a project's members changed): one row per change, written in the same
-- transaction, which also sends NOTIFY cocalc_hub_revocations. Every hub process LISTENs
-- and re-checks its open connections.
CREATE TABLE IF NOT EXISTS revocations (
    seq    BIGSERIAL PRIMARY KEY,
    kind   TEXT NOT NULL,
    value  TEXT NOT NULL,
    at     TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_at ON revocations (at);
