//! The multi-tenant cloud: accounts, their OAuth2 clients and tokens, the server catalogue,
//! servers with their addresses, SSH keys, tags, quotas, clusters and the audit log.
//!
//! Concurrency rules:
//! - the server quota is a counter moved by compare-and-set (`servers_used + n <=
//!   max_servers` in the UPDATE's WHERE), atomic on SQLite (one writer) and PostgreSQL (the row
//!   lock re-checks the WHERE under READ COMMITTED), so racing creates never overshoot;
//! - an address is taken by inserting it under a primary key: a racing insert of the same
//!   address fails and the whole server record is retried with a fresh choice.

use crate::crypto::{random_token, sha256_hex};
use crate::{Store, StoreError, User, ms_to_time, now_ms, unique_violation};
use chrono::{DateTime, Utc};
use ingot_types::lifecycle::NodeStatus;
use ingot_types::{MachineId, UserId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::net::Ipv4Addr;
use subtle::ConstantTimeEq;

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: i64,
    pub name: String,
    /// The user that owns this account's machines.
    pub owner: UserId,
    pub max_servers: i64,
    pub servers_used: i64,
    pub created_at: DateTime<Utc>,
}

/// A client credential without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiClient {
    pub id: i64,
    pub account_id: i64,
    pub client_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A credential as issued: the only moment the secret exists outside the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedClient {
    pub client: ApiClient,
    pub client_secret: String,
}

/// What a valid access token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub account: Account,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerType {
    pub name: String,
    pub min_cpu_count: u32,
    pub min_memory_mib: u64,
    pub machine_tag: Option<String>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub code: String,
    /// The machine zone this location sells from.
    pub zone: String,
    pub private_cidr: String,
    pub public_cidr: String,
    pub description: String,
}

/// A tag assigned to a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTag {
    pub tag_id: String,
    pub name: String,
    pub value: Option<String>,
    pub is_billing_tag: bool,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub id: String,
    pub account_id: i64,
    pub machine_id: MachineId,
    pub hostname: String,
    pub description: Option<String>,
    pub os: String,
    pub server_type: String,
    pub location: String,
    pub pricing_model: String,
    pub network_type: String,
    pub pending_status: Option<String>,
    pub tags: Vec<ServerTag>,
    pub cluster_id: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub private_ips: Vec<String>,
    pub public_ips: Vec<String>,
}

/// What creating a server takes; the machine and the addresses are chosen by the store.
#[derive(Debug, Clone)]
pub struct NewServer {
    pub account_id: i64,
    pub hostname: String,
    pub description: Option<String>,
    pub os: String,
    pub server_type: String,
    pub location: String,
    pub pricing_model: String,
    pub network_type: String,
    pub tags: Vec<ServerTag>,
    pub cluster_id: Option<String>,
    pub created_by: String,
    /// Whether to assign a public address besides the private one.
    pub public_ip: bool,
}

/// Why [`Store::claim_servers`] took nothing.
#[derive(Debug, thiserror::Error)]
pub enum ClaimServersError {
    #[error(
        "quota bmc.servers.max_count exceeded: {used} of {max} servers in use, {requested} more requested"
    )]
    QuotaExceeded { used: i64, max: i64, requested: i64 },
    #[error("not enough machines of this type are available")]
    NoCapacity,
    #[error("no free address left in {0}")]
    NoAddress(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ClaimServersError {
    fn from(e: sqlx::Error) -> Self {
        ClaimServersError::Store(StoreError::Database(e))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSshKey {
    pub id: String,
    pub account_id: i64,
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    pub is_default: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantTag {
    pub id: String,
    pub account_id: i64,
    pub name: String,
    pub description: Option<String>,
    pub is_billing_tag: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaEditRequest {
    pub quota_id: String,
    pub limit: i64,
    pub reason: String,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub id: String,
    pub account_id: i64,
    pub name: String,
    pub server_type: String,
    pub location: String,
    pub microk8s_channel: String,
    pub addons: Vec<String>,
    pub control_plane_server_id: Option<String>,
    pub control_plane_address: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: i64,
    pub account_id: Option<i64>,
    pub client_id: Option<String>,
    pub username: String,
    pub action: String,
    pub target: String,
    pub verb: String,
    pub uri: String,
    pub at: DateTime<Utc>,
}

/// An audit record to write.
#[derive(Debug, Clone, Default)]
pub struct NewAuditEvent {
    pub account_id: Option<i64>,
    pub client_id: Option<String>,
    pub username: String,
    pub action: String,
    pub target: String,
    pub verb: String,
    pub uri: String,
}

/// One server's metered life, for usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUsage {
    pub server_id: String,
    pub hostname: String,
    pub server_type: String,
    pub location: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// 24 hex digits, the shape of phoenixNAP's object ids.
pub fn random_object_id() -> String {
    let mut b = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn b(v: bool) -> i64 {
    i64::from(v)
}

const ACCOUNT_COLUMNS: &str =
    "a.id, a.name, a.owner_user_id, a.max_servers, a.servers_used, a.created_at";

fn account_from_row(r: &AnyRow) -> Result<Account, StoreError> {
    Ok(Account {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        owner: UserId(r.try_get("owner_user_id")?),
        max_servers: r.try_get("max_servers")?,
        servers_used: r.try_get("servers_used")?,
        created_at: ms_to_time(r.try_get("created_at")?),
    })
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn client_from_row(r: &AnyRow) -> Result<ApiClient, StoreError> {
    Ok(ApiClient {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        client_id: r.try_get("client_id")?,
        name: r.try_get("name")?,
        scopes: split_scopes(&r.try_get::<String, _>("scopes")?),
        created_at: ms_to_time(r.try_get("created_at")?),
    })
}

fn server_type_from_row(r: &AnyRow) -> Result<ServerType, StoreError> {
    Ok(ServerType {
        name: r.try_get("name")?,
        min_cpu_count: u32::try_from(r.try_get::<i64, _>("min_cpu_count")?).unwrap_or(0),
        min_memory_mib: u64::try_from(r.try_get::<i64, _>("min_memory_mib")?).unwrap_or(0),
        machine_tag: r.try_get("machine_tag")?,
        description: r.try_get("description")?,
    })
}

fn location_from_row(r: &AnyRow) -> Result<Location, StoreError> {
    Ok(Location {
        code: r.try_get("code")?,
        zone: r.try_get("zone")?,
        private_cidr: r.try_get("private_cidr")?,
        public_cidr: r.try_get("public_cidr")?,
        description: r.try_get("description")?,
    })
}

const SERVER_COLUMNS: &str = "id, account_id, machine_id, hostname, description, os, server_type, \
    location, pricing_model, network_type, pending_status, tags, cluster_id, created_by, created_at, \
    deleted_at";

fn server_from_row(r: &AnyRow) -> Result<Server, StoreError> {
    let corrupt =
        |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{what}: {e}"));
    let machine: String = r.try_get("machine_id")?;
    let tags: String = r.try_get("tags")?;
    Ok(Server {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        machine_id: MachineId::parse(&machine).map_err(|e| corrupt("machine_id", &e))?,
        hostname: r.try_get("hostname")?,
        description: r.try_get("description")?,
        os: r.try_get("os")?,
        server_type: r.try_get("server_type")?,
        location: r.try_get("location")?,
        pricing_model: r.try_get("pricing_model")?,
        network_type: r.try_get("network_type")?,
        pending_status: r.try_get("pending_status")?,
        tags: serde_json::from_str(&tags).map_err(|e| corrupt("tags", &e))?,
        cluster_id: r.try_get("cluster_id")?,
        created_by: r.try_get("created_by")?,
        created_at: ms_to_time(r.try_get("created_at")?),
        deleted_at: r.try_get::<Option<i64>, _>("deleted_at")?.map(ms_to_time),
        private_ips: Vec::new(),
        public_ips: Vec::new(),
    })
}

fn ssh_key_from_row(r: &AnyRow) -> Result<TenantSshKey, StoreError> {
    Ok(TenantSshKey {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        name: r.try_get("name")?,
        public_key: r.try_get("public_key")?,
        fingerprint: r.try_get("fingerprint")?,
        is_default: r.try_get::<i64, _>("is_default")? != 0,
        created_at: ms_to_time(r.try_get("created_at")?),
        updated_at: ms_to_time(r.try_get("updated_at")?),
    })
}

fn tag_from_row(r: &AnyRow) -> Result<TenantTag, StoreError> {
    Ok(TenantTag {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        is_billing_tag: r.try_get::<i64, _>("is_billing_tag")? != 0,
        created_by: r.try_get("created_by")?,
        created_at: ms_to_time(r.try_get("created_at")?),
    })
}

fn cluster_from_row(r: &AnyRow) -> Result<Cluster, StoreError> {
    let addons: String = r.try_get("addons")?;
    Ok(Cluster {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        name: r.try_get("name")?,
        server_type: r.try_get("server_type")?,
        location: r.try_get("location")?,
        microk8s_channel: r.try_get("microk8s_channel")?,
        addons: serde_json::from_str(&addons)
            .map_err(|e| StoreError::Corrupt(format!("addons: {e}")))?,
        control_plane_server_id: r.try_get("control_plane_server_id")?,
        control_plane_address: r.try_get("control_plane_address")?,
        created_at: ms_to_time(r.try_get("created_at")?),
    })
}

/// Usable host addresses of an IPv4 CIDR, skipping the network address, the first host (the
/// gateway) and the broadcast address.
pub fn host_addresses(cidr: &str) -> Option<impl Iterator<Item = Ipv4Addr>> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| (8..=30).contains(l))?;
    let mask = u32::MAX << (32 - len);
    let net = u32::from(addr) & mask;
    let broadcast = net | !mask;
    Some((net + 2..broadcast).map(Ipv4Addr::from))
}

fn sort_ips(ips: &mut [String]) {
    ips.sort_by_key(|s| s.parse::<Ipv4Addr>().map(u32::from).unwrap_or(u32::MAX));
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

impl Store {
    // ---- accounts and members ------------------------------------------------------------

    /// Creates an account and the user that will own its machines.
    pub async fn create_account(
        &self,
        name: &str,
        max_servers: i64,
    ) -> Result<Account, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let owner: i64 = sqlx::query(
            "INSERT INTO users (username, is_admin, created_at) VALUES ($1, 0, $2) RETURNING id",
        )
        .bind(format!("tenant:{name}"))
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| unique_violation(e, "account", "name", name))?
        .try_get("id")?;
        let row = sqlx::query(
            "INSERT INTO accounts (name, owner_user_id, max_servers, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING id, name, owner_user_id, max_servers, servers_used, created_at",
        )
        .bind(name)
        .bind(owner)
        .bind(max_servers)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| unique_violation(e, "account", "name", name))?;
        let account = account_from_row(&row)?;
        tx.commit().await?;
        Ok(account)
    }

    pub async fn account_by_name(&self, name: &str) -> Result<Account, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        account_from_row(&row.ok_or_else(|| not_found("account", name))?)
    }

    pub async fn account(&self, id: i64) -> Result<Account, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        account_from_row(&row.ok_or_else(|| not_found("account", &id.to_string()))?)
    }

    pub async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts a ORDER BY a.id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(account_from_row).collect()
    }

    /// The account a user acts for: as a member, or as the account's owner identity.
    pub async fn account_of_user(&self, user: UserId) -> Result<Option<Account>, StoreError> {
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.owner_user_id = $1 \
             OR a.id = (SELECT account_id FROM users WHERE id = $1)"
        );
        let row = sqlx::query(&sql)
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    /// Adds a tenant member: a user who acts for the account.
    pub async fn create_account_member(
        &self,
        account: i64,
        username: &str,
    ) -> Result<User, StoreError> {
        let row = sqlx::query(
            "INSERT INTO users (username, is_admin, created_at, account_id) VALUES ($1, 0, $2, $3) \
             RETURNING id, username, email",
        )
        .bind(username)
        .bind(now_ms())
        .bind(account)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| unique_violation(e, "user", "username", username))?;
        Ok(User {
            id: UserId(row.try_get("id")?),
            username: row.try_get("username")?,
            email: row.try_get("email")?,
            is_admin: false,
        })
    }

    pub async fn set_max_servers(&self, account: i64, max: i64) -> Result<Account, StoreError> {
        let done = sqlx::query("UPDATE accounts SET max_servers = $1 WHERE id = $2")
            .bind(max)
            .bind(account)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("account", &account.to_string()));
        }
        self.account(account).await
    }

    pub async fn request_quota_edit(
        &self,
        account: i64,
        quota_id: &str,
        limit: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO quota_edit_requests (account_id, quota_id, requested_limit, reason, requested_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(account)
        .bind(quota_id)
        .bind(limit)
        .bind(reason)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn quota_edit_requests(
        &self,
        account: i64,
    ) -> Result<Vec<QuotaEditRequest>, StoreError> {
        let rows = sqlx::query(
            "SELECT quota_id, requested_limit, reason, requested_at FROM quota_edit_requests \
             WHERE account_id = $1 ORDER BY id",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QuotaEditRequest {
                    quota_id: r.try_get("quota_id")?,
                    limit: r.try_get("requested_limit")?,
                    reason: r.try_get("reason")?,
                    requested_at: ms_to_time(r.try_get("requested_at")?),
                })
            })
            .collect()
    }

    // ---- OAuth2 clients and tokens ------------------------------------------------------

    /// Issues a client credential; the secret is returned once and stored hashed.
    pub async fn create_api_client(
        &self,
        account: i64,
        name: &str,
        scopes: &[String],
    ) -> Result<IssuedClient, StoreError> {
        let client_id = random_token(24);
        let secret = random_token(40);
        let row = sqlx::query(
            "INSERT INTO api_clients (account_id, client_id, secret_sha256, name, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING id, account_id, client_id, name, scopes, created_at",
        )
        .bind(account)
        .bind(&client_id)
        .bind(sha256_hex(&secret))
        .bind(name)
        .bind(scopes.join(" "))
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(IssuedClient {
            client: client_from_row(&row)?,
            client_secret: secret,
        })
    }

    pub async fn list_api_clients(&self, account: i64) -> Result<Vec<ApiClient>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, account_id, client_id, name, scopes, created_at FROM api_clients \
             WHERE account_id = $1 ORDER BY id",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(client_from_row).collect()
    }

    /// Revokes a credential and every token issued to it.
    pub async fn delete_api_client(&self, account: i64, client_id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM access_tokens WHERE client_pk IN \
             (SELECT id FROM api_clients WHERE account_id = $1 AND client_id = $2)",
        )
        .bind(account)
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query("DELETE FROM api_clients WHERE account_id = $1 AND client_id = $2")
            .bind(account)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("api client", client_id));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Checks a client credential. None for any mismatch, without saying which part.
    pub async fn authenticate_client(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<Option<ApiClient>, StoreError> {
        let row = sqlx::query(
            "SELECT id, account_id, client_id, name, scopes, created_at, secret_sha256 FROM api_clients \
             WHERE client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("secret_sha256")?;
        let ok: bool = stored
            .as_bytes()
            .ct_eq(sha256_hex(secret).as_bytes())
            .into();
        if ok {
            Ok(Some(client_from_row(&row)?))
        } else {
            Ok(None)
        }
    }

    /// Issues an access token for a client; returns the token (shown once) and its expiry.
    pub async fn issue_access_token(
        &self,
        client_pk: i64,
        scopes: &[String],
        ttl_ms: i64,
    ) -> Result<(String, DateTime<Utc>), StoreError> {
        let token = random_token(48);
        let now = now_ms();
        // Expired tokens are useless; drop them while we are writing anyway.
        sqlx::query("DELETE FROM access_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO access_tokens (token_sha256, client_pk, scopes, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(sha256_hex(&token))
            .bind(client_pk)
            .bind(scopes.join(" "))
            .bind(now + ttl_ms)
            .execute(&self.pool)
            .await?;
        Ok((token, ms_to_time(now + ttl_ms)))
    }

    /// The grant behind a live access token, if any.
    pub async fn authenticate_access_token(
        &self,
        token: &str,
    ) -> Result<Option<TokenGrant>, StoreError> {
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS}, c.client_id, t.scopes AS token_scopes, t.expires_at \
             FROM access_tokens t JOIN api_clients c ON c.id = t.client_pk \
             JOIN accounts a ON a.id = c.account_id \
             WHERE t.token_sha256 = $1 AND t.expires_at > $2"
        );
        let row = sqlx::query(&sql)
            .bind(sha256_hex(token))
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TokenGrant {
            account: account_from_row(&row)?,
            client_id: row.try_get("client_id")?,
            scopes: split_scopes(&row.try_get::<String, _>("token_scopes")?),
            expires_at: ms_to_time(row.try_get("expires_at")?),
        }))
    }

    // ---- catalogue ------------------------------------------------------------------------

    pub async fn server_type(&self, name: &str) -> Result<Option<ServerType>, StoreError> {
        let row = sqlx::query("SELECT * FROM server_types WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(server_type_from_row).transpose()
    }

    pub async fn list_server_types(&self) -> Result<Vec<ServerType>, StoreError> {
        let rows = sqlx::query("SELECT * FROM server_types ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(server_type_from_row).collect()
    }

    /// Creates or replaces a server type.
    pub async fn put_server_type(&self, t: &ServerType) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM server_types WHERE name = $1")
            .bind(&t.name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO server_types (name, min_cpu_count, min_memory_mib, machine_tag, description) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&t.name)
        .bind(i64::from(t.min_cpu_count))
        .bind(i64::try_from(t.min_memory_mib).unwrap_or(i64::MAX))
        .bind(t.machine_tag.clone())
        .bind(&t.description)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn location(&self, code: &str) -> Result<Option<Location>, StoreError> {
        let row = sqlx::query("SELECT * FROM locations WHERE code = $1")
            .bind(code)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(location_from_row).transpose()
    }

    pub async fn list_locations(&self) -> Result<Vec<Location>, StoreError> {
        let rows = sqlx::query("SELECT * FROM locations ORDER BY code")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(location_from_row).collect()
    }

    /// Creates or replaces a location. The CIDRs must be IPv4 networks of /8 to /30.
    pub async fn put_location(&self, l: &Location) -> Result<(), StoreError> {
        for (field, cidr) in [
            ("private_cidr", &l.private_cidr),
            ("public_cidr", &l.public_cidr),
        ] {
            if host_addresses(cidr).is_none() {
                return Err(StoreError::Corrupt(format!(
                    "{field} {cidr:?} is not an IPv4 network /8../30"
                )));
            }
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM locations WHERE code = $1")
            .bind(&l.code)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO locations (code, zone, private_cidr, public_cidr, description) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&l.code)
        .bind(&l.zone)
        .bind(&l.private_cidr)
        .bind(&l.public_cidr)
        .bind(&l.description)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- servers ---------------------------------------------------------------------------

    /// Machines that could serve a server type in a zone right now: Ready, in the zone, with
    /// the type's tag and at least its CPUs and memory. Ordered by id.
    pub async fn sellable_machines(
        &self,
        zone: &str,
        t: &ServerType,
    ) -> Result<Vec<MachineId>, StoreError> {
        let filter = crate::MachineFilter {
            statuses: vec![NodeStatus::Ready],
            zone: Some(zone.to_owned()),
            tags: t.machine_tag.iter().cloned().collect(),
            ..Default::default()
        };
        let mut ids: Vec<MachineId> = self
            .list_machines(&filter)
            .await?
            .into_iter()
            .filter(|m| m.cpu_count >= t.min_cpu_count && m.memory_mib >= t.min_memory_mib)
            .map(|m| m.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Creates servers all or nothing, in one transaction: takes their quota slots
    /// (compare-and-set against `max_servers`), allocates one Ready machine from `candidates`
    /// to each (compare-and-set on the machine's status, owner `owner`, with its event),
    /// records them and assigns their addresses. A crash at any point leaves nothing taken.
    ///
    /// Machines are tried in id order, so racing transactions lock them in the same order
    /// and cannot deadlock; a racing address assignment makes the whole claim retry.
    pub async fn claim_servers(
        &self,
        owner: UserId,
        actor: &str,
        candidates: &[MachineId],
        requests: &[NewServer],
    ) -> Result<Vec<Server>, ClaimServersError> {
        let Some(first) = requests.first() else {
            return Ok(Vec::new());
        };
        let (account, location) = (first.account_id, first.location.clone());
        if requests
            .iter()
            .any(|r| r.account_id != account || r.location != location)
        {
            return Err(
                StoreError::Corrupt("one claim is for one account and location".into()).into(),
            );
        }
        let loc = self
            .location(&location)
            .await?
            .ok_or_else(|| not_found("location", &location))?;
        let n = i64::try_from(requests.len()).unwrap_or(i64::MAX);
        let mut candidates = candidates.to_vec();
        candidates.sort();
        'attempt: for _attempt in 0..16 {
            let now = now_ms();
            let mut tx = self.pool.begin().await?;
            // 1. Quota. This write also takes SQLite's write lock and PostgreSQL's row lock on
            // the account, so the rest of the claim is serialised per account.
            let ok = sqlx::query(
                "UPDATE accounts SET servers_used = servers_used + $1 \
                 WHERE id = $2 AND servers_used + $1 <= max_servers",
            )
            .bind(n)
            .bind(account)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !ok {
                tx.rollback().await?;
                let a = self.account(account).await?;
                return Err(ClaimServersError::QuotaExceeded {
                    used: a.servers_used,
                    max: a.max_servers,
                    requested: n,
                });
            }
            // 2. Machines.
            let mut machines: Vec<MachineId> = Vec::new();
            let mut next = 0;
            for _ in requests {
                let mut got = None;
                while next < candidates.len() {
                    let m = &candidates[next];
                    next += 1;
                    let taken = sqlx::query(
                        "UPDATE machines SET status = $1, status_message = 'allocated', owner_id = $2, \
                         updated_at = $3 WHERE id = $4 AND status = $5",
                    )
                    .bind(i64::from(NodeStatus::Allocated.code()))
                    .bind(owner.0)
                    .bind(now)
                    .bind(m.as_str())
                    .bind(i64::from(NodeStatus::Ready.code()))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if taken {
                        got = Some(m.clone());
                        break;
                    }
                }
                let Some(m) = got else {
                    tx.rollback().await?;
                    return Err(ClaimServersError::NoCapacity);
                };
                sqlx::query(
                    "INSERT INTO events (machine_id, at, actor, kind, from_status, to_status, message) \
                     VALUES ($1, $2, $3, 'transition', $4, $5, 'allocated')",
                )
                .bind(m.as_str())
                .bind(now)
                .bind(actor)
                .bind(i64::from(NodeStatus::Ready.code()))
                .bind(i64::from(NodeStatus::Allocated.code()))
                .execute(&mut *tx)
                .await?;
                machines.push(m);
            }
            // 3. Records and addresses.
            let mut ids = Vec::new();
            for (i, (req, machine)) in requests.iter().zip(&machines).enumerate() {
                let id = random_object_id();
                // One millisecond apart, so listings keep the request order.
                let created_at = now + i64::try_from(i).unwrap_or(0);
                let tags = serde_json::to_string(&req.tags)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO servers (id, account_id, machine_id, hostname, description, os, server_type, \
                     location, pricing_model, network_type, tags, cluster_id, created_by, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                )
                .bind(&id)
                .bind(account)
                .bind(machine.as_str())
                .bind(&req.hostname)
                .bind(req.description.clone())
                .bind(&req.os)
                .bind(&req.server_type)
                .bind(&req.location)
                .bind(&req.pricing_model)
                .bind(&req.network_type)
                .bind(&tags)
                .bind(req.cluster_id.clone())
                .bind(&req.created_by)
                .bind(created_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| unique_violation(e, "server", "machine", machine.as_str()))?;
                let mut kinds = vec![("private", loc.private_cidr.as_str())];
                if req.public_ip {
                    kinds.push(("public", loc.public_cidr.as_str()));
                }
                for (kind, cidr) in kinds {
                    let used: std::collections::HashSet<String> =
                        sqlx::query("SELECT ip FROM ip_assignments WHERE location = $1")
                            .bind(&location)
                            .fetch_all(&mut *tx)
                            .await?
                            .iter()
                            .map(|r| r.try_get("ip"))
                            .collect::<Result<_, _>>()?;
                    let hosts = host_addresses(cidr).ok_or_else(|| {
                        StoreError::Corrupt(format!("location {} cidr {cidr:?}", loc.code))
                    })?;
                    let Some(ip) = hosts.map(|a| a.to_string()).find(|a| !used.contains(a)) else {
                        tx.rollback().await?;
                        return Err(ClaimServersError::NoAddress(location));
                    };
                    let ins = sqlx::query(
                        "INSERT INTO ip_assignments (location, ip, kind, server_id) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&location)
                    .bind(&ip)
                    .bind(kind)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await;
                    match ins {
                        Ok(_) => {}
                        // Another location sharing the range, or another account's claim in this
                        // location, took it first: start over.
                        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                            tx.rollback().await?;
                            continue 'attempt;
                        }
                        Err(e) => return Err(StoreError::from(e).into()),
                    }
                }
                ids.push(id);
            }
            tx.commit().await?;
            let mut out = Vec::new();
            for id in &ids {
                out.push(self.server_any(id).await?);
            }
            return Ok(out);
        }
        Err(StoreError::Conflict {
            kind: "server",
            field: "ip",
            value: "contended".into(),
        }
        .into())
    }

    async fn attach_ips(&self, servers: &mut [Server]) -> Result<(), StoreError> {
        if servers.is_empty() {
            return Ok(());
        }
        let mut sql =
            String::from("SELECT server_id, ip, kind FROM ip_assignments WHERE server_id IN (");
        for i in 0..servers.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", i + 1));
        }
        sql.push(')');
        let mut q = sqlx::query(&sql);
        for s in servers.iter() {
            q = q.bind(s.id.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        for r in &rows {
            let sid: String = r.try_get("server_id")?;
            let ip: String = r.try_get("ip")?;
            let kind: String = r.try_get("kind")?;
            if let Some(s) = servers.iter_mut().find(|s| s.id == sid) {
                if kind == "public" {
                    s.public_ips.push(ip)
                } else {
                    s.private_ips.push(ip)
                }
            }
        }
        for s in servers.iter_mut() {
            sort_ips(&mut s.private_ips);
            sort_ips(&mut s.public_ips);
        }
        Ok(())
    }

    /// A live server of any account (operators, background work).
    pub async fn server_any(&self, id: &str) -> Result<Server, StoreError> {
        let sql =
            format!("SELECT {SERVER_COLUMNS} FROM servers WHERE id = $1 AND deleted_at IS NULL");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let mut s = vec![server_from_row(
            &row.ok_or_else(|| not_found("server", id))?,
        )?];
        self.attach_ips(&mut s).await?;
        Ok(s.remove(0))
    }

    /// A live server of this account; another account's server is "not found".
    pub async fn server(&self, account: i64, id: &str) -> Result<Server, StoreError> {
        let s = self.server_any(id).await?;
        if s.account_id != account {
            return Err(not_found("server", id));
        }
        Ok(s)
    }

    /// The live server on a machine, if any.
    pub async fn server_on_machine(
        &self,
        machine: &MachineId,
    ) -> Result<Option<Server>, StoreError> {
        let sql = format!(
            "SELECT {SERVER_COLUMNS} FROM servers WHERE machine_id = $1 AND deleted_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(machine.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut s = vec![server_from_row(&row)?];
        self.attach_ips(&mut s).await?;
        Ok(s.pop())
    }

    /// Live servers of an account (every account for None), oldest first.
    pub async fn list_servers(&self, account: Option<i64>) -> Result<Vec<Server>, StoreError> {
        let rows = match account {
            Some(a) => {
                let sql = format!(
                    "SELECT {SERVER_COLUMNS} FROM servers WHERE account_id = $1 AND deleted_at IS NULL ORDER BY created_at, id"
                );
                sqlx::query(&sql).bind(a).fetch_all(&self.pool).await?
            }
            None => {
                let sql = format!(
                    "SELECT {SERVER_COLUMNS} FROM servers WHERE deleted_at IS NULL ORDER BY created_at, id"
                );
                sqlx::query(&sql).fetch_all(&self.pool).await?
            }
        };
        let mut servers = rows
            .iter()
            .map(server_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.attach_ips(&mut servers).await?;
        Ok(servers)
    }

    /// Ends a server: marks it deleted, frees its addresses and its quota slot, at most once.
    pub async fn delete_server(&self, account: i64, id: &str) -> Result<Server, StoreError> {
        let server = self.server(account, id).await?;
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE servers SET deleted_at = $1 WHERE id = $2 AND account_id = $3 AND deleted_at IS NULL")
            .bind(now_ms())
            .bind(id)
            .bind(account)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(not_found("server", id));
        }
        sqlx::query("DELETE FROM ip_assignments WHERE server_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE accounts SET servers_used = servers_used - 1 WHERE id = $1 AND servers_used > 0")
            .bind(account)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(server)
    }

    /// Changes hostname and/or description of a live server.
    pub async fn update_server(
        &self,
        account: i64,
        id: &str,
        hostname: Option<&str>,
        description: Option<&str>,
    ) -> Result<Server, StoreError> {
        self.server(account, id).await?;
        if let Some(h) = hostname {
            sqlx::query("UPDATE servers SET hostname = $1 WHERE id = $2")
                .bind(h)
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        if let Some(d) = description {
            sqlx::query("UPDATE servers SET description = $1 WHERE id = $2")
                .bind(d)
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        self.server(account, id).await
    }

    pub async fn set_server_tags(
        &self,
        account: i64,
        id: &str,
        tags: &[ServerTag],
    ) -> Result<Server, StoreError> {
        let json = serde_json::to_string(tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let done = sqlx::query(
            "UPDATE servers SET tags = $1 WHERE id = $2 AND account_id = $3 AND deleted_at IS NULL",
        )
        .bind(json)
        .bind(id)
        .bind(account)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("server", id));
        }
        self.server(account, id).await
    }

    /// Sets or clears the transient status; with `only_if`, only when it currently is that.
    pub async fn set_server_pending(
        &self,
        id: &str,
        pending: Option<&str>,
        only_if: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done =
            match only_if {
                Some(cur) => sqlx::query(
                    "UPDATE servers SET pending_status = $1 WHERE id = $2 AND pending_status = $3",
                )
                .bind(pending)
                .bind(id)
                .bind(cur)
                .execute(&self.pool)
                .await?,
                None => {
                    sqlx::query("UPDATE servers SET pending_status = $1 WHERE id = $2")
                        .bind(pending)
                        .bind(id)
                        .execute(&self.pool)
                        .await?
                }
            };
        Ok(done.rows_affected() == 1)
    }

    /// Every server the account ever had, for metering.
    pub async fn server_usage(&self, account: i64) -> Result<Vec<ServerUsage>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, hostname, server_type, location, created_at, deleted_at FROM servers \
             WHERE account_id = $1 ORDER BY created_at, id",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ServerUsage {
                    server_id: r.try_get("id")?,
                    hostname: r.try_get("hostname")?,
                    server_type: r.try_get("server_type")?,
                    location: r.try_get("location")?,
                    started_at: ms_to_time(r.try_get("created_at")?),
                    ended_at: r.try_get::<Option<i64>, _>("deleted_at")?.map(ms_to_time),
                })
            })
            .collect()
    }

    // ---- SSH keys ---------------------------------------------------------------------------

    pub async fn create_tenant_ssh_key(
        &self,
        account: i64,
        name: &str,
        public_key: &str,
        fingerprint: &str,
        is_default: bool,
    ) -> Result<TenantSshKey, StoreError> {
        let id = random_object_id();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO tenant_ssh_keys (id, account_id, name, public_key, fingerprint, is_default, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&id)
        .bind(account)
        .bind(name)
        .bind(public_key)
        .bind(fingerprint)
        .bind(b(is_default))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_violation(e, "ssh key", "name", name))?;
        self.tenant_ssh_key(account, &id).await
    }

    pub async fn tenant_ssh_key(&self, account: i64, id: &str) -> Result<TenantSshKey, StoreError> {
        let row = sqlx::query("SELECT * FROM tenant_ssh_keys WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account)
            .fetch_optional(&self.pool)
            .await?;
        ssh_key_from_row(&row.ok_or_else(|| not_found("ssh key", id))?)
    }

    pub async fn list_tenant_ssh_keys(
        &self,
        account: i64,
    ) -> Result<Vec<TenantSshKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM tenant_ssh_keys WHERE account_id = $1 ORDER BY created_at, id",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(ssh_key_from_row).collect()
    }

    pub async fn update_tenant_ssh_key(
        &self,
        account: i64,
        id: &str,
        name: &str,
        is_default: bool,
    ) -> Result<TenantSshKey, StoreError> {
        let done = sqlx::query("UPDATE tenant_ssh_keys SET name = $1, is_default = $2, updated_at = $3 WHERE id = $4 AND account_id = $5")
            .bind(name)
            .bind(b(is_default))
            .bind(now_ms())
            .bind(id)
            .bind(account)
            .execute(&self.pool)
            .await
            .map_err(|e| unique_violation(e, "ssh key", "name", name))?;
        if done.rows_affected() == 0 {
            return Err(not_found("ssh key", id));
        }
        self.tenant_ssh_key(account, id).await
    }

    pub async fn delete_tenant_ssh_key(&self, account: i64, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM tenant_ssh_keys WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("ssh key", id));
        }
        Ok(())
    }

    // ---- tags -------------------------------------------------------------------------------

    pub async fn create_tenant_tag(
        &self,
        account: i64,
        name: &str,
        description: Option<&str>,
        is_billing_tag: bool,
    ) -> Result<TenantTag, StoreError> {
        let id = random_object_id();
        sqlx::query(
            "INSERT INTO tenant_tags (id, account_id, name, description, is_billing_tag, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(account)
        .bind(name)
        .bind(description)
        .bind(b(is_billing_tag))
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| unique_violation(e, "tag", "name", name))?;
        self.tenant_tag(account, &id).await
    }

    pub async fn tenant_tag(&self, account: i64, id: &str) -> Result<TenantTag, StoreError> {
        let row = sqlx::query("SELECT * FROM tenant_tags WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account)
            .fetch_optional(&self.pool)
            .await?;
        tag_from_row(&row.ok_or_else(|| not_found("tag", id))?)
    }

    pub async fn tenant_tag_by_name(
        &self,
        account: i64,
        name: &str,
    ) -> Result<Option<TenantTag>, StoreError> {
        let row = sqlx::query("SELECT * FROM tenant_tags WHERE name = $1 AND account_id = $2")
            .bind(name)
            .bind(account)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tag_from_row).transpose()
    }

    pub async fn list_tenant_tags(&self, account: i64) -> Result<Vec<TenantTag>, StoreError> {
        let rows = sqlx::query("SELECT * FROM tenant_tags WHERE account_id = $1 ORDER BY name")
            .bind(account)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tag_from_row).collect()
    }

    pub async fn delete_tenant_tag(&self, account: i64, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM tenant_tags WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("tag", id));
        }
        Ok(())
    }

    // ---- clusters ---------------------------------------------------------------------------

    pub async fn create_cluster(&self, c: &Cluster) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO clusters (id, account_id, name, server_type, location, microk8s_channel, addons, \
             control_plane_server_id, control_plane_address, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&c.id)
        .bind(c.account_id)
        .bind(&c.name)
        .bind(&c.server_type)
        .bind(&c.location)
        .bind(&c.microk8s_channel)
        .bind(serde_json::to_string(&c.addons).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .bind(c.control_plane_server_id.clone())
        .bind(c.control_plane_address.clone())
        .bind(c.created_at.timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_cluster_control_plane(
        &self,
        id: &str,
        server_id: &str,
        address: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE clusters SET control_plane_server_id = $1, control_plane_address = $2 WHERE id = $3")
            .bind(server_id)
            .bind(address)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn cluster(&self, account: i64, id: &str) -> Result<Cluster, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM clusters WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(account)
        .fetch_optional(&self.pool)
        .await?;
        cluster_from_row(&row.ok_or_else(|| not_found("cluster", id))?)
    }

    pub async fn list_clusters(&self, account: i64) -> Result<Vec<Cluster>, StoreError> {
        let rows = sqlx::query("SELECT * FROM clusters WHERE account_id = $1 AND deleted_at IS NULL ORDER BY created_at, id")
            .bind(account)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(cluster_from_row).collect()
    }

    pub async fn delete_cluster(&self, account: i64, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE clusters SET deleted_at = $1 WHERE id = $2 AND account_id = $3 AND deleted_at IS NULL")
            .bind(now_ms())
            .bind(id)
            .bind(account)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("cluster", id));
        }
        Ok(())
    }

    // ---- audit ------------------------------------------------------------------------------

    pub async fn record_audit(&self, e: &NewAuditEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_events (account_id, client_id, username, action, target, verb, uri, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(e.account_id)
        .bind(e.client_id.clone())
        .bind(&e.username)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.verb)
        .bind(&e.uri)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Audit events, newest last; one account's, or all for None.
    pub async fn audit_events(
        &self,
        account: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows =
            match account {
                Some(a) => sqlx::query(
                    "SELECT * FROM audit_events WHERE account_id = $1 ORDER BY id DESC LIMIT $2",
                )
                .bind(a)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query("SELECT * FROM audit_events ORDER BY id DESC LIMIT $1")
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                }
            };
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(AuditEvent {
                    id: r.try_get("id")?,
                    account_id: r.try_get("account_id")?,
                    client_id: r.try_get("client_id")?,
                    username: r.try_get("username")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    verb: r.try_get("verb")?,
                    uri: r.try_get("uri")?,
                    at: ms_to_time(r.try_get("at")?),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_skip_network_gateway_and_broadcast() {
        let v: Vec<_> = host_addresses("198.51.100.0/29")
            .unwrap()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            v,
            [
                "198.51.100.2",
                "198.51.100.3",
                "198.51.100.4",
                "198.51.100.5",
                "198.51.100.6"
            ]
        );
        assert_eq!(host_addresses("10.0.0.0/22").unwrap().count(), 1021);
        for bad in ["10.0.0.0", "10.0.0.0/31", "x/24", "10.0.0.0/7"] {
            assert!(host_addresses(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn object_ids_are_24_hex_digits() {
        let id = random_object_id();
        assert_eq!(id.len(), 24);
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
