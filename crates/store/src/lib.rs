//! Ingot's store: the only crate that knows SQL.
//!
//! One schema in two dialects (`migrations/sqlite`, `migrations/postgres`), embedded in the
//! binary and run on start. Queries go through sqlx's `Any` driver with `$n` placeholders,
//! which both SQLite and PostgreSQL accept, so there is one code path for both databases.
//! Types the driver cannot carry portably are stored plainly: times as unix milliseconds,
//! booleans as 0/1, structured data as JSON text.
//!
//! Concurrency rule: every status change is a compare-and-set (`UPDATE … WHERE status = $old`)
//! in a transaction that also records the event, so racing writers can never both win and
//! no change is ever recorded half-way.

mod crypto;
mod maas;
mod machines;
mod net;
mod tenancy;
pub mod testing;
mod users;

pub use crypto::SecretKey;
pub use maas::{GroupKind, NamedGroup, SshKey, Tag};
pub use machines::{AllocationConstraints, Effects, MachineFilter, Set};
pub use tenancy::{
    Account, ApiClient, AuditEvent, ClaimServersError, Cluster, IssuedClient, Location,
    NewAuditEvent, NewServer, QuotaEditRequest, Server, ServerTag, ServerType, ServerUsage,
    TenantSshKey, TenantTag, TokenGrant, host_addresses, random_object_id,
};
pub use users::{ApiKey, IssuedApiKey, User};

use ingot_types::lifecycle::{IllegalTransition, NodeStatus, Trigger};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} with {field} {value:?} already exists")]
    Conflict {
        kind: &'static str,
        field: &'static str,
        value: String,
    },
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    #[error("no machine matches the allocation constraints")]
    NoMatch,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    key: SecretKey,
}

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and runs the embedded migrations.
    /// `key` encrypts BMC passwords at rest.
    pub async fn connect(url: &str, key: SecretKey) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        let pool = match backend {
            Backend::Sqlite => {
                opts.max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers run beside the single writer; the busy timeout
                            // makes writers queue instead of failing under contention.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 30000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
            Backend::Postgres => opts.max_connections(16).connect(url).await?,
        };
        let store = Store { pool, backend, key };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator.run(&self.pool).await.map_err(StoreError::Migrate)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Cheap liveness check for /healthz.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn ms_to_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn status_from(code: i64) -> Result<NodeStatus, StoreError> {
    i32::try_from(code)
        .ok()
        .and_then(NodeStatus::from_code)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown status code {code}")))
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
pub(crate) fn unique_violation(
    e: sqlx::Error,
    kind: &'static str,
    field: &'static str,
    value: &str,
) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return StoreError::Conflict {
            kind,
            field,
            value: value.to_owned(),
        };
    }
    StoreError::Database(e)
}

pub(crate) fn trigger_actor_message(trigger: Trigger, message: &str) -> String {
    if message.is_empty() {
        trigger.name().to_owned()
    } else {
        message.to_owned()
    }
}
