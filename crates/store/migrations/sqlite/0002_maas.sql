-- MAAS 2.0 API support (SQLite). Keep in step with migrations/postgres/0002_maas.sql.
-- Times are unix milliseconds (BIGINT).

-- OAuth nonces seen per token, kept until the timestamp window they were valid in has
-- passed; a repeated (token, nonce) is a replay.
CREATE TABLE oauth_nonces (
    token_key TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (token_key, nonce)
);
CREATE INDEX oauth_nonces_expiry ON oauth_nonces(expires_at);

-- Per-machine OAuth credentials for the metadata service (MAAS NodeKey). The secret is
-- shown once when issued and stored hashed; issuing again replaces it.
CREATE TABLE metadata_tokens (
    machine_id TEXT PRIMARY KEY REFERENCES machines(id) ON DELETE CASCADE,
    consumer_key TEXT NOT NULL,
    token_key TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE ssh_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (user_id, key)
);

CREATE TABLE zones (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);

CREATE TABLE resource_pools (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);

-- Tags. Which machines carry a tag stays in machines.tags; this table holds the tag's own
-- attributes. A tag without a definition is a manual tag.
CREATE TABLE tags (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    definition TEXT NOT NULL DEFAULT '',
    comment TEXT NOT NULL DEFAULT '',
    kernel_opts TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);

-- Password logins for POST /MAAS/accounts/authenticate/ (PBKDF2-HMAC-SHA256).
CREATE TABLE user_passwords (
    user_id BIGINT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    hash TEXT NOT NULL
);

INSERT INTO zones (name, description, created_at) VALUES ('default', '', 0);
INSERT INTO resource_pools (name, description, created_at) VALUES ('default', 'Default pool', 0);
