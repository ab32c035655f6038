//! A whole region in-process for tests: fresh database, engine, sim fleet, API on port 0.
#![allow(dead_code)]

use bmc_power::Drivers;
use bmc_power::sim::SimRegistry;
use ingot_engine::{Engine, EngineConfig};
use ingot_store::testing::TestDb;
use ingot_types::boot::BootDecision;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub struct Region {
    pub url: String,
    pub engine: Engine,
    pub sim: SimRegistry,
    pub admin_key: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    _db: TestDb,
}

impl Drop for Region {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Netboot(Engine);

#[async_trait::async_trait]
impl ingot_sim::Netboot for Netboot {
    async fn decide(&self, mac: &str) -> Result<BootDecision, String> {
        self.0.boot_decision(mac).await.map_err(|e| e.to_string())
    }
}

pub struct Options {
    pub sim_machines: usize,
    pub sim_delay: Duration,
    pub commission_timeout: Duration,
    pub postgres: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sim_machines: 3,
            sim_delay: Duration::from_millis(20),
            commission_timeout: Duration::from_secs(60),
            postgres: false,
        }
    }
}

pub async fn region(opts: Options) -> Option<Region> {
    let db = if opts.postgres {
        ingot_store::testing::postgres().await?
    } else {
        ingot_store::testing::sqlite().await
    };
    let store = db.store.clone();
    let sim = SimRegistry::new(Duration::from_millis(300));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = EngineConfig {
        region_url: url.clone(),
        commission_timeout: opts.commission_timeout,
        deploy_timeout: opts.commission_timeout,
        release_timeout: opts.commission_timeout,
        sweep_interval: Duration::from_millis(50),
        power_sync_interval: Duration::ZERO,
        ..Default::default()
    };
    let engine = Engine::new(store.clone(), Arc::new(Drivers { sim: sim.clone() }), cfg);
    let shutdown = CancellationToken::new();
    let specs = ingot_sim::ensure_fleet(&store, &sim, opts.sim_machines)
        .await
        .unwrap();
    let fleet = ingot_sim::SimFleet::new(
        sim.clone(),
        Arc::new(Netboot(engine.clone())),
        specs,
        opts.sim_delay,
    );
    tokio::spawn(fleet.run(shutdown.clone()));
    engine.spawn_background(shutdown.clone());
    let app = ingot_api::router(ingot_api::AppState::new(engine.clone(), Some(sim.clone())));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    let admin = store.create_user("admin", true).await.unwrap();
    let admin_key = store
        .create_api_key(admin.id, "test")
        .await
        .unwrap()
        .as_maas_key();
    Some(Region {
        url,
        engine,
        sim,
        admin_key,
        http: reqwest::Client::new(),
        shutdown,
        _db: db,
    })
}

impl Region {
    pub async fn user_key(&self, name: &str, admin: bool) -> String {
        let s = self.engine.store();
        let u = s.create_user(name, admin).await.unwrap();
        s.create_api_key(u.id, "test").await.unwrap().as_maas_key()
    }

    /// Sends a request; returns status and JSON body (Null when empty/not JSON).
    pub async fn call(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        let (st, v) = self
            .call(Some(&self.admin_key), Method::GET, path, None)
            .await;
        assert_eq!(st, StatusCode::OK, "GET {path}: {v}");
        v
    }

    pub async fn act(
        &self,
        key: &str,
        id: &str,
        action: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        self.call(
            Some(key),
            Method::POST,
            &format!("/api/v1/machines/{id}/actions/{action}"),
            body,
        )
        .await
    }

    pub async fn machine_ids(&self) -> Vec<String> {
        let list = self.get("/api/v1/machines").await;
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits (bounded) until the machine reaches `status_name`; panics with its history if not.
    pub async fn wait_status(&self, id: &str, status_name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.get(&format!("/api/v1/machines/{id}")).await;
            if m["status_name"] == status_name {
                return m;
            }
            if Instant::now() > deadline {
                let ev = self.get(&format!("/api/v1/machines/{id}/events")).await;
                panic!("machine {id} never reached {status_name:?}; now {m}\nevents: {ev:#}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn bmc_of(&self, id: &str) -> String {
        let m = self.get(&format!("/api/v1/machines/{id}")).await;
        m["power_parameters"]["power_address"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}
