-- One-time links that create or promote the first administrator. Only hashes are kept;
-- a row is deleted when its link is used.
CREATE TABLE IF NOT EXISTS admin_setup_tokens (
    token_hash  CHAR(64) PRIMARY KEY,
    expire      TIMESTAMP NOT NULL
);
