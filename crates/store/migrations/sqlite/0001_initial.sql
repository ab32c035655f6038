-- Ingot schema (SQLite). Keep in step with migrations/postgres/0001_initial.sql:
-- same tables, same columns, same meaning; only the dialect differs.
-- Times are unix milliseconds (BIGINT); booleans are 0/1; JSON is TEXT.

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL DEFAULT '',
    is_admin BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    consumer_key TEXT NOT NULL,
    token_key TEXT NOT NULL UNIQUE,
    -- SHA-256 of the token secret; the secret itself is shown once and never stored.
    secret_sha256 TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);

CREATE TABLE machines (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL UNIQUE,
    status BIGINT NOT NULL,
    status_message TEXT NOT NULL DEFAULT '',
    power_type TEXT NOT NULL,
    power_params TEXT NOT NULL DEFAULT '{}',
    -- ChaCha20-Poly1305 ciphertext (nonce || ct, hex) of the BMC password.
    power_pass_enc TEXT,
    power_state TEXT NOT NULL DEFAULT 'unknown',
    power_error TEXT,
    cpu_count BIGINT NOT NULL DEFAULT 0,
    cpu_model TEXT NOT NULL DEFAULT '',
    memory_mib BIGINT NOT NULL DEFAULT 0,
    hardware TEXT NOT NULL DEFAULT '{}',
    boot_mac TEXT,
    architecture TEXT NOT NULL DEFAULT 'amd64/generic',
    owner_id BIGINT REFERENCES users(id),
    zone TEXT NOT NULL DEFAULT 'default',
    pool TEXT NOT NULL DEFAULT 'default',
    tags TEXT NOT NULL DEFAULT '[]',
    osystem TEXT NOT NULL DEFAULT '',
    distro_series TEXT NOT NULL DEFAULT '',
    hwe_kernel TEXT NOT NULL DEFAULT '',
    user_data TEXT,
    deadline BIGINT,
    boot_token_sha256 TEXT,
    boot_token_expires BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX machines_status ON machines(status);
CREATE INDEX machines_deadline ON machines(deadline);
CREATE UNIQUE INDEX machines_boot_token ON machines(boot_token_sha256);

CREATE TABLE machine_macs (
    mac TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines(id) ON DELETE CASCADE
);
CREATE INDEX machine_macs_machine ON machine_macs(machine_id);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id TEXT NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_status BIGINT,
    to_status BIGINT,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_machine ON events(machine_id, id);

CREATE TABLE leases (
    ip TEXT PRIMARY KEY,
    mac TEXT NOT NULL,
    subnet TEXT NOT NULL,
    hostname TEXT,
    starts_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    offered BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX leases_mac ON leases(mac);

CREATE TABLE discoveries (
    mac TEXT PRIMARY KEY,
    ip TEXT,
    arch TEXT,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);

-- One-time credentials for enlisting unknown machines, bound to the MAC that netbooted.
CREATE TABLE enlist_tokens (
    token_sha256 TEXT PRIMARY KEY,
    mac TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
