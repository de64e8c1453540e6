-- One-time links that create or promote the first administrator. Only hashes are kept;
-- a row is deleted when its link is used.
CREATE TABLE admin_setup_tokens (
    token_hash  TEXT PRIMARY KEY,
    expire      TEXT NOT NULL
);
