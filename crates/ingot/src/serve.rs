//! `ingot serve`: wires the store, engine, sim fleet and HTTP API together and runs them
//! until SIGINT/SIGTERM.

use crate::config::{ServeArgs, Settings, redact_url};
use anyhow::{Context, Result};
use async_trait::async_trait;
use bmc_power::Drivers;
use bmc_power::sim::SimRegistry;
use ingot_engine::{Engine, EngineConfig};
use ingot_types::boot::BootDecision;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The sim fleet netboots through the engine's boot decision, as real firmware does through
/// the HTTP boot service.
struct EngineNetboot(Engine);

#[async_trait]
impl ingot_sim::Netboot for EngineNetboot {
    async fn decide(&self, mac: &str) -> Result<BootDecision, String> {
        self.0
            .boot_decision(mac)
            .await
            .map_err(|e| ingot_engine::error_chain(&e))
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    // Logs go to stderr; stdout carries only the lines meant for the operator.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let s: Settings = args.resolve()?;
    init_logging(&s.log_format);
    let store = s.db.open().await?;
    tracing::info!(database = %redact_url(&s.db.database_url()), "database ready");

    let sim = SimRegistry::new(Duration::from_secs(5));
    let drivers = Drivers { sim: sim.clone() };
    let cfg = EngineConfig {
        region_url: s.region_url.clone(),
        commission_timeout: Duration::from_secs(s.commission_timeout),
        deploy_timeout: Duration::from_secs(s.deploy_timeout),
        power_sync_interval: Duration::from_secs(s.power_sync_interval),
        ..Default::default()
    };
    let engine = Engine::new(store.clone(), Arc::new(drivers), cfg);
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();

    // The sim BMCs must exist before the power sync first looks at them.
    if s.sim_machines > 0 {
        let specs = ingot_sim::ensure_fleet(&store, &sim, s.sim_machines)
            .await
            .context("creating the simulated fleet")?;
        tracing::info!(
            machines = specs.len(),
            delay_ms = s.sim_delay_ms,
            "simulated fleet ready"
        );
        let fleet = ingot_sim::SimFleet::new(
            sim.clone(),
            Arc::new(EngineNetboot(engine.clone())),
            specs,
            Duration::from_millis(s.sim_delay_ms),
        );
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move { fleet.run(stop).await }));
    }
    tasks.extend(engine.spawn_background(shutdown.clone()));
    if let Some(p) = &s.pxe {
        tasks.extend(
            crate::pxe::start(p, &engine, shutdown.clone())
                .await
                .context("starting the PXE services")?,
        );
    }

    let app = ingot_api::router(ingot_api::AppState::new(
        engine.clone(),
        (s.sim_machines > 0).then_some(sim),
    ));
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("binding {}", s.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, region_url = %s.region_url, "region API listening");
    println!(
        "Ingot region API: http://{local}/api/v1/ (OpenAPI at /api/v1/openapi.json, health at /healthz)"
    );
    println!("MAAS 2.0 API:     http://{local}/MAAS/api/2.0/ (python-libmaas, MAAS CLI)");
    println!(
        "Get an API key:  ingot admin create-user --data-dir {} --username admin --admin",
        s.db.data_dir().display()
    );

    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    shutdown.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
