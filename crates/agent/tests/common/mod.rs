//! A region in-process for the agent's tests: fresh SQLite database, engine, and the real
//! HTTP API (`ingot_api::router`) on a loopback port.
#![allow(dead_code)]

use bmc_power::Drivers;
use bmc_power::sim::SimRegistry;
use ingot_engine::{Engine, EngineConfig};
use ingot_store::testing::TestDb;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Region {
    pub engine: Engine,
    /// Loopback port the API listens on.
    pub port: u16,
    shutdown: CancellationToken,
    _db: TestDb,
}

impl Drop for Region {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a region on 127.0.0.1. Agents are told to reach it as `http://<advertised_host>:<port>`
/// (127.0.0.1 on this host; 10.0.2.2 from a QEMU user-mode network guest, which QEMU maps to
/// the host's loopback).
pub async fn region(advertised_host: &str) -> Region {
    let db = ingot_store::testing::sqlite().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = EngineConfig {
        region_url: format!("http://{advertised_host}:{port}"),
        commission_timeout: Duration::from_secs(600),
        sweep_interval: Duration::from_millis(200),
        power_sync_interval: Duration::ZERO,
        ..Default::default()
    };
    let sim = SimRegistry::new(Duration::from_millis(300));
    let engine = Engine::new(db.store.clone(), Arc::new(Drivers { sim }), cfg);
    let shutdown = CancellationToken::new();
    engine.spawn_background(shutdown.clone());
    let app = ingot_api::router(ingot_api::AppState::new(engine.clone(), None));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    Region {
        engine,
        port,
        shutdown,
        _db: db,
    }
}

pub fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inventory")
        .join(case)
}
