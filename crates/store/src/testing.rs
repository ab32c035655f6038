//! Fresh databases for tests: each call gets its own SQLite file or its own PostgreSQL
//! database (created from `INGOT_TEST_POSTGRES_URL`, dropped when the guard drops).

use crate::{SecretKey, Store};
use sqlx::Connection;
use std::path::PathBuf;

pub struct TestDb {
    pub store: Store,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin_url: String, name: String },
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(d) => {
                let _ = std::fs::remove_dir_all(d);
            }
            Cleanup::Postgres { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs outside any runtime guarantee; use a private one on a thread.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    if let Ok(rt) = rt {
                        rt.block_on(async {
                            if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url).await {
                                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                                let _ = sqlx::query(&sql).execute(&mut c).await;
                            }
                        });
                    }
                })
                .join();
            }
        }
    }
}

fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        crate::crypto::random_token(10).to_ascii_lowercase()
    )
}

/// A fresh SQLite database in its own temporary directory.
pub async fn sqlite() -> TestDb {
    let dir = std::env::temp_dir().join(unique_name("ingot_test"));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("ingot.db").display());
    let store = Store::connect(&url, SecretKey::generate())
        .await
        .expect("open sqlite");
    TestDb {
        store,
        url,
        cleanup: Cleanup::Dir(dir),
    }
}

/// The admin URL for test databases. Panics with instructions when PostgreSQL tests are
/// required (`CI` or `INGOT_REQUIRE_POSTGRES` set) but no server is configured.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("INGOT_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var_os("CI").is_some()
            || std::env::var_os("INGOT_REQUIRE_POSTGRES").is_some() =>
        {
            panic!(
                "INGOT_TEST_POSTGRES_URL is not set but PostgreSQL tests are required; \
                 scripts/test.sh starts a server and sets it"
            )
        }
        _ => None,
    }
}

/// A fresh PostgreSQL database, or None when none is configured (and none is required).
pub async fn postgres() -> Option<TestDb> {
    let admin_url = postgres_admin_url()?;
    let name = unique_name("ingot_test");
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create db");
    let _ = admin.close().await;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(b, _)| b);
    let url = format!("{base}/{name}");
    let store = Store::connect(&url, SecretKey::generate())
        .await
        .expect("open postgres");
    Some(TestDb {
        store,
        url,
        cleanup: Cleanup::Postgres { admin_url, name },
    })
}
