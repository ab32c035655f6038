//! Foundation benchmark (not a test): run with
//!   cargo bench -p ingot-api --bench fleet -- [--machines 10000] [--fleet 1000]
//! It measures, on SQLite and (when INGOT_TEST_POSTGRES_URL is set) PostgreSQL:
//! - listing N machines through GET /api/v1/machines (median and p95 of 15 requests);
//! - commissioning then deploying a sim fleet of M machines concurrently through the API,
//!   from the first request to the last machine Ready / Deployed.
//!
//! Prints a markdown table for docs/benchmarks.md.

use bmc_power::Drivers;
use bmc_power::sim::SimRegistry;
use futures::future::join_all;
use ingot_engine::{Engine, EngineConfig};
use ingot_store::Store;
use ingot_store::testing::TestDb;
use ingot_types::boot::BootDecision;
use ingot_types::machine::NewMachine;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Netboot(Engine);

#[async_trait::async_trait]
impl ingot_sim::Netboot for Netboot {
    async fn decide(&self, mac: &str) -> Result<BootDecision, String> {
        self.0.boot_decision(mac).await.map_err(|e| e.to_string())
    }
}

struct Region {
    url: String,
    key: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

async fn start(store: &Store, fleet: usize) -> Region {
    let sim = SimRegistry::new(Duration::from_secs(5));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = EngineConfig {
        region_url: url.clone(),
        power_sync_interval: Duration::ZERO,
        ..Default::default()
    };
    let engine = Engine::new(store.clone(), Arc::new(Drivers { sim: sim.clone() }), cfg);
    let stop = CancellationToken::new();
    if fleet > 0 {
        let specs = ingot_sim::ensure_fleet(store, &sim, fleet).await.unwrap();
        let f = ingot_sim::SimFleet::new(
            sim.clone(),
            Arc::new(Netboot(engine.clone())),
            specs,
            Duration::from_millis(200),
        );
        tokio::spawn(f.run(stop.clone()));
    }
    engine.spawn_background(stop.clone());
    let app = ingot_api::router(ingot_api::AppState::new(engine, None));
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await
            .unwrap()
    });
    let admin = match store.user_by_name("bench").await {
        Ok(u) => u,
        Err(_) => store.create_user("bench", true).await.unwrap(),
    };
    let key = store
        .create_api_key(admin.id, "bench")
        .await
        .unwrap()
        .as_maas_key();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    Region {
        url,
        key,
        http,
        stop,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn bench_list(store: &Store, n: usize) -> (Duration, Duration, usize) {
    // Insert directly through the store: this measures listing, not creation.
    let have = store.count_machines().await.unwrap() as usize;
    let mut handles = Vec::new();
    for chunk in (have..n).collect::<Vec<_>>().chunks(n.div_ceil(8).max(1)) {
        let s = store.clone();
        let chunk = chunk.to_vec();
        handles.push(tokio::spawn(async move {
            for i in chunk {
                let mac = format!(
                    "02:00:{:02x}:{:02x}:{:02x}:01",
                    (i >> 16) & 0xff,
                    (i >> 8) & 0xff,
                    i & 0xff
                );
                let new = NewMachine {
                    hostname: Some(format!("bench-{i:05}")),
                    boot_mac: Some(mac),
                    ..Default::default()
                };
                s.create_machine(new, "bench").await.unwrap();
            }
        }));
    }
    join_all(handles).await;
    let mut direct = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let all = store.list_machines(&Default::default()).await.unwrap();
        direct.push(t.elapsed());
        assert_eq!(all.len(), n);
    }
    direct.sort();
    eprintln!("store.list_machines({n}) alone: p50 {:?}", direct[2]);
    let r = start(store, 0).await;
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..15 {
        let t = Instant::now();
        let resp = r
            .http
            .get(format!("{}/api/v1/machines", r.url))
            .bearer_auth(&r.key)
            .send()
            .await
            .unwrap();
        let body = resp.bytes().await.unwrap();
        // Time to the last byte; the client's own JSON parsing is not the server's cost.
        times.push(t.elapsed());
        count = serde_json::from_slice::<Vec<serde_json::Value>>(&body)
            .unwrap()
            .len();
    }
    r.stop.cancel();
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.95), count)
}

async fn wait_all(r: &Region, status: &str, want: usize, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let resp = r
            .http
            .get(format!(
                "{}/api/v1/machines?status={}",
                r.url,
                status.replace(' ', "%20")
            ))
            .bearer_auth(&r.key)
            .send()
            .await
            .unwrap();
        let n = resp.json::<Vec<serde_json::Value>>().await.unwrap().len();
        if n >= want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "only {n}/{want} reached {status} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bench_fleet(store: &Store, m: usize) -> (Duration, Duration) {
    let r = start(store, m).await;
    let list: Vec<serde_json::Value> = r
        .http
        .get(format!("{}/api/v1/machines?status=New", r.url))
        .bearer_auth(&r.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<String> = list
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), m);
    let t0 = Instant::now();
    let act = |action: &'static str| {
        join_all(ids.iter().map(|id| {
            let req = r
                .http
                .post(format!("{}/api/v1/machines/{id}/actions/{action}", r.url))
                .bearer_auth(&r.key);
            async move {
                let resp = req.send().await.unwrap();
                assert!(resp.status().is_success(), "{action}: {}", resp.status());
            }
        }))
    };
    act("commission").await;
    wait_all(&r, "Ready", m, Duration::from_secs(600)).await;
    let commissioned = t0.elapsed();
    let t1 = Instant::now();
    act("deploy").await;
    wait_all(&r, "Deployed", m, Duration::from_secs(600)).await;
    let deployed = t1.elapsed();
    r.stop.cancel();
    (commissioned, deployed)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let n = arg("--machines", 10_000);
    let m = arg("--fleet", 1_000);
    let only_list = std::env::args().any(|a| a == "--list-only");
    let mut rows = Vec::new();
    let mut dbs: Vec<(&str, TestDb)> = vec![("SQLite", ingot_store::testing::sqlite().await)];
    if let Some(pg) = ingot_store::testing::postgres().await {
        dbs.push(("PostgreSQL", pg));
    }
    for (name, db) in &dbs {
        let (p50, p95, count) = bench_list(&db.store, n).await;
        eprintln!("{name}: list {count} machines p50 {p50:?} p95 {p95:?}");
        rows.push(format!("| {name} | list {count} machines (GET /api/v1/machines) | p50 {:.0} ms, p95 {:.0} ms | < 200 ms |", p50.as_secs_f64() * 1e3, p95.as_secs_f64() * 1e3));
    }
    for (name, _) in dbs.iter().filter(|_| !only_list) {
        let fresh = if *name == "SQLite" {
            ingot_store::testing::sqlite().await
        } else {
            ingot_store::testing::postgres().await.unwrap()
        };
        let (c, d) = bench_fleet(&fresh.store, m).await;
        eprintln!("{name}: commission {m} in {c:?}, deploy in {d:?}");
        rows.push(format!("| {name} | commission {m} sim machines concurrently (to all Ready) | {:.1} s ({:.0} machines/s) | — |", c.as_secs_f64(), m as f64 / c.as_secs_f64()));
        rows.push(format!("| {name} | deploy {m} sim machines concurrently (to all Deployed) | {:.1} s ({:.0} machines/s) | — |", d.as_secs_f64(), m as f64 / d.as_secs_f64()));
    }
    println!("| database | what | result | target |\n|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
