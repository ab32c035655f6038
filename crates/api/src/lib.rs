//! Ingot's HTTP APIs. Handlers turn requests into engine calls; [`error::ApiError`] is the one
//! place errors become status codes. Routers:
//! - `/healthz` (anonymous) and `/api/v1/...` (native JSON API, bearer API keys);
//! - `/agent/v1/...` (the ephemeral agent, per-boot tokens);
//! - MAAS 2.0 and tenancy routers are added beside these.

mod agent;
pub mod auth;
pub mod error;
pub mod maas;
mod native;
pub mod tenancy;

use axum::Router;
use axum::routing::get;
use bmc_power::sim::SimRegistry;
use ingot_engine::Engine;
use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// The sim BMCs, when this region runs a simulated fleet (fault injection endpoint).
    pub sim: Option<SimRegistry>,
    pub inner: Arc<()>,
}

impl AppState {
    pub fn new(engine: Engine, sim: Option<SimRegistry>) -> Self {
        Self {
            engine,
            sim,
            inner: Arc::new(()),
        }
    }
}

/// The region's whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(native::router())
        .merge(agent::router())
        .merge(maas::router())
        .merge(tenancy::router())
        .fallback(not_found)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<axum::Json<serde_json::Value>, error::ApiError> {
    state.engine.store().ping().await.map_err(|e| {
        tracing::error!(error = %e, "health check: database unreachable");
        error::ApiError::Internal
    })?;
    Ok(axum::Json(serde_json::json!({ "status": "ok" })))
}

async fn not_found(uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::NotFound {
        kind: "route",
        id: uri.path().to_owned(),
    }
}
