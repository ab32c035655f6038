-- Multi-tenant cloud API (SQLite). Keep in step with migrations/postgres/0003_tenancy.sql.
-- Times are unix milliseconds; booleans 0/1; JSON is TEXT.

-- A tenant. Its machines are owned by `owner_user_id`, a user row that exists only for the
-- account, so the engine's owner rules (visibility, release) apply to tenants unchanged.
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    owner_user_id BIGINT NOT NULL UNIQUE REFERENCES users(id),
    -- Quota bmc.servers.max_count. servers_used moves only by compare-and-set against it.
    max_servers BIGINT NOT NULL,
    servers_used BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

-- Tenant members: a user with account_id set acts for that account (role "tenant member");
-- users without it are operators (is_admin) or plain MAAS users.
ALTER TABLE users ADD COLUMN account_id BIGINT REFERENCES accounts(id);

-- OAuth2 client credentials. The secret is shown once; only its SHA-256 is kept.
CREATE TABLE api_clients (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    client_id TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Issued bearer tokens, by SHA-256 of the token.
CREATE TABLE access_tokens (
    token_sha256 TEXT PRIMARY KEY,
    client_pk BIGINT NOT NULL REFERENCES api_clients(id) ON DELETE CASCADE,
    scopes TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX access_tokens_expiry ON access_tokens(expires_at);

-- The catalogue: what a server type means in hardware, and where a location is.
CREATE TABLE server_types (
    name TEXT PRIMARY KEY,
    min_cpu_count BIGINT NOT NULL DEFAULT 0,
    min_memory_mib BIGINT NOT NULL DEFAULT 0,
    -- When set, only machines carrying this tag are sold as this type.
    machine_tag TEXT,
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE locations (
    code TEXT PRIMARY KEY,
    zone TEXT NOT NULL,
    private_cidr TEXT NOT NULL,
    public_cidr TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
-- The default catalogue sells the simulated fleet (every shape has >= 2 CPUs, 4 GiB) as the
-- seed article's d0.t1.tiny in PHX. Addresses come from the documentation ranges.
INSERT INTO server_types (name, min_cpu_count, min_memory_mib, machine_tag, description)
    VALUES ('d0.t1.tiny', 1, 2048, NULL, 'Tiny server (any commissioned machine)');
INSERT INTO locations (code, zone, private_cidr, public_cidr, description)
    VALUES ('PHX', 'default', '10.0.0.0/22', '198.51.100.0/24', 'Phoenix');

-- A tenant's server: one deployment of one machine. Kept after deletion for usage metering.
CREATE TABLE servers (
    id TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    machine_id TEXT NOT NULL REFERENCES machines(id),
    hostname TEXT NOT NULL,
    description TEXT,
    os TEXT NOT NULL,
    server_type TEXT NOT NULL,
    location TEXT NOT NULL,
    pricing_model TEXT NOT NULL DEFAULT 'HOURLY',
    network_type TEXT NOT NULL DEFAULT 'PUBLIC_AND_PRIVATE',
    -- A status the machine itself cannot show ('rebooting', 'resetting'), or NULL.
    pending_status TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    cluster_id TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX servers_account ON servers(account_id, deleted_at);
-- A machine serves at most one live server.
CREATE UNIQUE INDEX servers_live_machine ON servers(machine_id) WHERE deleted_at IS NULL;

-- Addresses handed out from the locations' ranges; the primary key makes a double
-- assignment impossible even when two creates race.
CREATE TABLE ip_assignments (
    location TEXT NOT NULL,
    ip TEXT NOT NULL,
    kind TEXT NOT NULL,
    server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    PRIMARY KEY (location, ip)
);
CREATE INDEX ip_assignments_server ON ip_assignments(server_id);

CREATE TABLE tenant_ssh_keys (
    id TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    is_default BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE tenant_tags (
    id TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT,
    is_billing_tag BIGINT NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL DEFAULT 'USER',
    created_at BIGINT NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE quota_edit_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    quota_id TEXT NOT NULL,
    requested_limit BIGINT NOT NULL,
    reason TEXT NOT NULL,
    requested_at BIGINT NOT NULL
);

CREATE TABLE clusters (
    id TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    server_type TEXT NOT NULL,
    location TEXT NOT NULL,
    microk8s_channel TEXT NOT NULL,
    addons TEXT NOT NULL DEFAULT '[]',
    control_plane_server_id TEXT,
    control_plane_address TEXT,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);

-- Who did what: every tenant and operator action on the cloud API.
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id BIGINT REFERENCES accounts(id) ON DELETE CASCADE,
    client_id TEXT,
    username TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    verb TEXT NOT NULL,
    uri TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX audit_events_account ON audit_events(account_id, at);
