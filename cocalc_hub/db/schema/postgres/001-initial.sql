-- cocalc-hub schema v1 (PostgreSQL). Names and types follow upstream CoCalc where it has
-- them, so an upstream database's rows can be copied in: UUID ids, naive UTC TIMESTAMPs,
-- JSONB maps, TEXT[] groups, CHAR(127) remember_me hashes, VARCHAR(173) password hashes.

CREATE TABLE IF NOT EXISTS accounts (
    account_id     UUID PRIMARY KEY,
    email_address  VARCHAR(254) UNIQUE,
    password_hash  VARCHAR(173),
    first_name     VARCHAR(254) NOT NULL DEFAULT '',
    last_name      VARCHAR(254) NOT NULL DEFAULT '',
    created        TIMESTAMP NOT NULL,
    last_active    TIMESTAMP,
    groups         TEXT[] NOT NULL DEFAULT '{}',
    banned         BOOLEAN NOT NULL DEFAULT FALSE,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    api_key        TEXT UNIQUE
);

CREATE TABLE IF NOT EXISTS remember_me (
    hash        CHAR(127) PRIMARY KEY,
    account_id  UUID NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
    expire      TIMESTAMP NOT NULL,
    value       JSONB
);
CREATE INDEX IF NOT EXISTS remember_me_account_id ON remember_me(account_id);
CREATE INDEX IF NOT EXISTS remember_me_expire ON remember_me(expire);

CREATE TABLE IF NOT EXISTS api_keys (
    id           SERIAL PRIMARY KEY,
    account_id   UUID NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
    project_id   UUID,
    hash         VARCHAR(173),
    expire       TIMESTAMP,
    created      TIMESTAMP NOT NULL,
    name         VARCHAR(128) NOT NULL DEFAULT '',
    trunc        VARCHAR(16),
    last_active  TIMESTAMP
);
CREATE INDEX IF NOT EXISTS api_keys_account_id ON api_keys(account_id);
CREATE INDEX IF NOT EXISTS api_keys_project_id ON api_keys(project_id);

CREATE TABLE IF NOT EXISTS projects (
    project_id     UUID PRIMARY KEY,
    title          TEXT NOT NULL DEFAULT '',
    description    TEXT NOT NULL DEFAULT '',
    name           VARCHAR(100),
    users          JSONB NOT NULL DEFAULT '{}',
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    state          JSONB,
    status         JSONB,
    last_edited    TIMESTAMP,
    last_started   TIMESTAMP,
    last_active    JSONB,
    created        TIMESTAMP NOT NULL,
    settings       JSONB,
    run_quota      JSONB,
    env            JSONB,
    secret_token   VARCHAR(256),
    compute_image  TEXT
);
CREATE INDEX IF NOT EXISTS projects_users ON projects USING GIN (users);
CREATE INDEX IF NOT EXISTS projects_last_edited ON projects(last_edited);
CREATE INDEX IF NOT EXISTS projects_state ON projects((state ->> 'state'));

CREATE TABLE IF NOT EXISTS server_settings (
    name      TEXT PRIMARY KEY,
    value     TEXT,
    readonly  BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE IF NOT EXISTS registration_tokens (
    token     VARCHAR(128) PRIMARY KEY,
    descr     TEXT,
    expires   TIMESTAMP,
    "limit"   INTEGER,
    counter   INTEGER NOT NULL DEFAULT 0,
    disabled  BOOLEAN NOT NULL DEFAULT FALSE
);
