//! The HTTP boot service (MAAS's rack port 5248): per-MAC iPXE scripts chosen by the region,
//! the generic chain script, and kernel/initrd/image files with Range support.
//!
//! Routes:
//! - `GET /ipxe/{mac}[?platform=pcbios|efi][&arch=bios|uefi-x64|…]` — the machine's script
//!   ([`script::ScriptRenderer`]).
//! - `GET /boot.ipxe` — chains to `/ipxe/${mac}`; hand it to iPXE via DHCP or TFTP.
//! - `GET /images/{path}` — files under [`HttpConfig::images_dir`].

pub mod script;

use crate::backend::{BootBackend, ClientInfo};
use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ingot_types::boot::BootPurpose;
use ingot_types::net::Sighting;
use script::{EphemeralImage, Platform, RenderScriptError, ScriptRenderer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tower_http::services::ServeDir;

/// MAAS serves boot files from the rack on 5248; so do we.
pub const HTTP_PORT: u16 = 5248;

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Served under `/images/`; holds `ephemeral/vmlinuz`, `ephemeral/initrd.gz`, deploy images.
    pub images_dir: PathBuf,
    /// Base URL put into scripts (e.g. `http://10.77.0.1:5248`). `None`: taken from the
    /// request's `Host`, which is the address the client actually reached.
    pub public_url: Option<String>,
    pub ephemeral: EphemeralImage,
    /// Directory with `*.ipxe.tera` files replacing the built-in templates by name.
    pub templates_dir: Option<PathBuf>,
}

impl HttpConfig {
    pub fn new(images_dir: impl Into<PathBuf>) -> HttpConfig {
        HttpConfig {
            images_dir: images_dir.into(),
            public_url: None,
            ephemeral: EphemeralImage::default(),
            templates_dir: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("loading iPXE templates")]
    Templates(#[from] RenderScriptError),
}

struct AppState {
    backend: Arc<dyn BootBackend>,
    renderer: ScriptRenderer,
    cfg: HttpConfig,
}

/// Builds the boot service. Serve it with [`serve`] (which supplies the client address used
/// for sightings).
pub fn router(
    backend: Arc<dyn BootBackend>,
    cfg: HttpConfig,
) -> Result<axum::Router, HttpSetupError> {
    let renderer = ScriptRenderer::new(cfg.templates_dir.as_deref())?;
    let images = ServeDir::new(&cfg.images_dir);
    let state = Arc::new(AppState {
        backend,
        renderer,
        cfg,
    });
    Ok(axum::Router::new()
        .route("/ipxe/{mac}", get(machine_script))
        .route("/boot.ipxe", get(chain_script))
        .nest_service("/images", images)
        .with_state(state))
}

/// Serves `router` on `listener` until `shutdown` completes (graceful: in-flight downloads finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Error bodies name the offending field, as the rest of Ingot's APIs do.
#[derive(Debug, serde::Serialize)]
struct ErrorBody {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
}

fn error(status: StatusCode, error: String, field: Option<&'static str>) -> Response {
    (status, Json(ErrorBody { error, field })).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct ScriptQuery {
    /// iPXE's `${platform}` (`pcbios`, `efi`), sent by the chain script.
    platform: Option<String>,
    /// The DHCP server's architecture name (`bios`, `uefi-x64`, `uefi-http`, ...), for
    /// script URLs handed out in DHCP as `http://{server}:5248/ipxe/{mac}?arch={arch}`.
    arch: Option<String>,
}

fn base_url(cfg: &HttpConfig, headers: &HeaderMap) -> Option<String> {
    if let Some(url) = &cfg.public_url {
        return Some(url.trim_end_matches('/').to_string());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    Some(format!("http://{host}"))
}

fn ipxe_script(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn machine_script(
    State(state): State<Arc<AppState>>,
    Path(raw_mac): Path<String>,
    Query(query): Query<ScriptQuery>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
) -> Response {
    let mac = match script::parse_mac(&raw_mac) {
        Ok(mac) => mac,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string(), Some("mac")),
    };
    let Some(base) = base_url(&state.cfg, &headers) else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing Host header".into(),
            Some("host"),
        );
    };
    let arch = match query.arch.as_deref().map(script::parse_arch).transpose() {
        Ok(arch) => arch,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string(), Some("arch")),
    };
    let platform = match &arch {
        Some(arch) => Platform::from_arch(arch),
        None => Platform::from_ipxe(query.platform.as_deref()),
    };
    // Present when served through [`serve`]; absent in in-process tests.
    let peer = extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let ip = peer.and_then(|addr| match addr.ip() {
        std::net::IpAddr::V4(v4) => Some(v4),
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    });
    let client = ClientInfo {
        arch: platform.client_arch().map(str::to_string),
        ip,
    };
    let decision = match state.backend.boot_decision(&mac, &client).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%mac, error = %e, "http boot: no decision");
            return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None);
        }
    };
    if decision.purpose == BootPurpose::Enlist && decision.machine_id.is_none() {
        // Discovery must not delay the boot: record it in the background.
        let backend = state.backend.clone();
        let sighting = Sighting {
            mac: mac.clone(),
            ip,
            arch: client.arch.clone(),
            source: "http".into(),
            at: unix_now(),
        };
        tokio::spawn(async move {
            if let Err(e) = backend.record_sighting(sighting).await {
                tracing::debug!(error = %e, "http boot: sighting not recorded");
            }
        });
    }
    match state
        .renderer
        .render(&mac, &decision, platform, &state.cfg.ephemeral, &base)
    {
        Ok(body) => {
            tracing::info!(%mac, purpose = ?decision.purpose, "http boot: script served");
            ipxe_script(body)
        }
        Err(e) => {
            tracing::error!(%mac, error = %e, "http boot: cannot render script");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None)
        }
    }
}

async fn chain_script(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(base) = base_url(&state.cfg, &headers) else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing Host header".into(),
            Some("host"),
        );
    };
    match state.renderer.render_chain(&base) {
        Ok(body) => ipxe_script(body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
