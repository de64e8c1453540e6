-- cocalc-hub schema v1 (SQLite). Names follow upstream CoCalc where it has them.
-- UUIDs are lower-case TEXT, timestamps are UTC ISO-8601 TEXT ('YYYY-MM-DD HH:MM:SS.ffffff'),
-- maps are JSON TEXT, booleans are 0/1.

CREATE TABLE accounts (
    account_id     TEXT PRIMARY KEY,
    email_address  TEXT UNIQUE,
    password_hash  TEXT,
    first_name     TEXT NOT NULL DEFAULT '',
    last_name      TEXT NOT NULL DEFAULT '',
    created        TEXT NOT NULL,
    last_active    TEXT,
    groups         TEXT NOT NULL DEFAULT '[]',
    banned         INTEGER NOT NULL DEFAULT 0,
    deleted        INTEGER NOT NULL DEFAULT 0,
    api_key        TEXT UNIQUE
);

CREATE TABLE remember_me (
    hash        TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
    expire      TEXT NOT NULL,
    value       TEXT
);
CREATE INDEX remember_me_account_id ON remember_me(account_id);
CREATE INDEX remember_me_expire ON remember_me(expire);

CREATE TABLE api_keys (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id   TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
    project_id   TEXT,
    hash         TEXT,
    expire       TEXT,
    created      TEXT NOT NULL,
    name         TEXT NOT NULL DEFAULT '',
    trunc        TEXT,
    last_active  TEXT
);
CREATE INDEX api_keys_account_id ON api_keys(account_id);
CREATE INDEX api_keys_project_id ON api_keys(project_id);

CREATE TABLE projects (
    project_id     TEXT PRIMARY KEY,
    title          TEXT NOT NULL DEFAULT '',
    description    TEXT NOT NULL DEFAULT '',
    name           TEXT,
    users          TEXT NOT NULL DEFAULT '{}',
    deleted        INTEGER NOT NULL DEFAULT 0,
    state          TEXT,
    status         TEXT,
    last_edited    TEXT,
    last_started   TEXT,
    last_active    TEXT,
    created        TEXT NOT NULL,
    settings       TEXT,
    run_quota      TEXT,
    env            TEXT,
    secret_token   TEXT,
    compute_image  TEXT
);
CREATE INDEX projects_last_edited ON projects(last_edited);

CREATE TABLE server_settings (
    name      TEXT PRIMARY KEY,
    value     TEXT,
    readonly  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE registration_tokens (
    token     TEXT PRIMARY KEY,
    descr     TEXT,
    expires   TEXT,
    "limit"   INTEGER,
    counter   INTEGER NOT NULL DEFAULT 0,
    disabled  INTEGER NOT NULL DEFAULT 0
);
