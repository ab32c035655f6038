//! Ingot's own PXE services (TFTP + HTTP boot) running inside a lab namespace against an
//! in-test [`BootBackend`] that records what the firmware asked for.

use crate::{IPXE_DIR, Lab, LabError};
use async_trait::async_trait;
use ingot_types::boot::{BootDecision, BootPurpose};
use ingot_types::net::Sighting;
use pxe::backend::{BackendError, BootBackend, ClientInfo};
use pxe::dhcp::{DhcpConfig, MemoryLeaseStore, SubnetConfig};
use pxe::http::{HTTP_PORT, HttpConfig};
use pxe::tftp::boot_files::IpxeChainFile;
use pxe::tftp::server::TFTP_PORT;
use pxe::tftp::{TftpConfig, TransferRecord};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Something the lab's services observed.
#[derive(Debug, Clone)]
pub enum LabEvent {
    BootDecision {
        mac: String,
        client: ClientInfo,
        purpose: BootPurpose,
    },
    Sighting(Sighting),
    Tftp(TransferRecord),
    /// A response of the HTTP boot service for `/ipxe/...`.
    Script {
        path: String,
        status: u16,
        body: String,
    },
}

pub type Events = Arc<Mutex<Vec<LabEvent>>>;

/// Decides by a per-MAC table (unknown MACs enlist) and records every call.
pub struct RecordingBackend {
    pub decisions: Mutex<HashMap<String, BootPurpose>>,
    pub region_url: String,
    pub events: Events,
}

impl RecordingBackend {
    pub fn new(region_url: &str, decisions: &[(&str, BootPurpose)]) -> RecordingBackend {
        RecordingBackend {
            decisions: Mutex::new(decisions.iter().map(|(m, p)| (m.to_string(), *p)).collect()),
            region_url: region_url.into(),
            events: Events::default(),
        }
    }
}

#[async_trait]
impl BootBackend for RecordingBackend {
    async fn boot_decision(
        &self,
        mac: &str,
        client: &ClientInfo,
    ) -> Result<BootDecision, BackendError> {
        let known = self.decisions.lock().unwrap().get(mac).copied();
        let purpose = known.unwrap_or(BootPurpose::Enlist);
        self.events.lock().unwrap().push(LabEvent::BootDecision {
            mac: mac.to_string(),
            client: client.clone(),
            purpose,
        });
        Ok(BootDecision {
            purpose,
            machine_id: None,
            boot_token: (purpose != BootPurpose::LocalDisk)
                .then(|| format!("lab-token-{}", mac.replace(':', ""))),
            region_url: self.region_url.clone(),
        })
    }

    async fn record_sighting(&self, sighting: Sighting) -> Result<(), BackendError> {
        self.events
            .lock()
            .unwrap()
            .push(LabEvent::Sighting(sighting));
        Ok(())
    }
}

/// Who answers DHCP in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabDhcp {
    /// Ingot's DHCP server (`pxe::dhcp`) on the bridge: iPXE gets its per-MAC script URL
    /// straight from DHCP, PXE firmware gets `undionly.kpxe` / `snponly.efi` over TFTP.
    Ingot,
    /// Someone else (e.g. [`crate::Lab::start_dnsmasq_dhcp`]) answers DHCP.
    External,
}

/// The script URL Ingot's DHCP hands to iPXE: the architecture rides along so the HTTP
/// service knows the firmware family (BIOS vs UEFI local boot).
pub const IPXE_SCRIPT_URL: &str = "http://{server}:5248/ipxe/{mac}?arch={arch}";

/// TFTP on `<server_ip>:69` (root: Debian's iPXE binaries, plus the generated `boot.ipxe`) and
/// HTTP boot on `<server_ip>:5248`, both inside the lab namespace. Stops on drop.
pub struct PxeStack {
    pub events: Events,
    pub tftp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PxeStack {
    pub fn start(
        lab: &Lab,
        backend: Arc<RecordingBackend>,
        images_dir: PathBuf,
        dhcp: LabDhcp,
    ) -> Result<PxeStack, LabError> {
        let ip = lab.server_ip();
        let tftp_addr = SocketAddr::from((ip, TFTP_PORT));
        let http_addr = SocketAddr::from((ip, HTTP_PORT));
        let events = backend.events.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread_events = events.clone();
        let thread = lab.spawn_in_netns(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(serve_stack(
                tftp_addr,
                http_addr,
                dhcp,
                backend,
                images_dir,
                thread_events,
                ready_tx,
                stopped,
            ));
        })?;
        let started = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let stack = PxeStack {
            events,
            tftp_addr,
            http_addr,
            stop: Some(stop),
            thread: Some(thread),
        };
        match started {
            Ok(()) => Ok(stack),
            Err(stderr) => Err(LabError::Command {
                command: "start PXE services".into(),
                stderr,
            }),
        }
    }

    pub fn events(&self) -> Vec<LabEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until an event matches; returns it.
    pub fn wait_for_event<T>(
        &self,
        timeout: Duration,
        mut pick: impl FnMut(&LabEvent) -> Option<T>,
    ) -> Option<T> {
        crate::wait_for(timeout, || {
            self.events.lock().unwrap().iter().find_map(&mut pick)
        })
    }
}

impl Drop for PxeStack {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_stack(
    tftp_addr: SocketAddr,
    http_addr: SocketAddr,
    dhcp: LabDhcp,
    backend: Arc<RecordingBackend>,
    images_dir: PathBuf,
    events: Events,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let dyn_backend: Arc<dyn BootBackend> = backend.clone();
    let renderer = match pxe::http::script::ScriptRenderer::new(None) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let http_base = format!("http://{http_addr}");
    let mut tftp_cfg = TftpConfig::new(IPXE_DIR);
    tftp_cfg.dynamic = Some(Arc::new(
        IpxeChainFile::new(&renderer, &http_base).expect("chain script"),
    ));
    let tftp_events = events.clone();
    tftp_cfg.on_transfer = Some(Arc::new(move |r| {
        tftp_events.lock().unwrap().push(LabEvent::Tftp(r))
    }));
    let tftp_socket = match pxe::tftp::server::bind(tftp_addr) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("{e}: {:?}", std::error::Error::source(&e))));
            return;
        }
    };
    let router = match pxe::http::router(dyn_backend.clone(), HttpConfig::new(images_dir)) {
        Ok(r) => r.layer(axum::middleware::from_fn_with_state(
            events.clone(),
            record_scripts,
        )),
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let listener = match tokio::net::TcpListener::bind(http_addr).await {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("binding {http_addr}: {e}")));
            return;
        }
    };
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let dhcp_task = (dhcp == LabDhcp::Ingot).then(|| {
        let server_ip = match http_addr.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => unreachable!("the lab is IPv4"),
        };
        let subnet = SubnetConfig::new(
            "10.77.0.0/24".parse().expect("lab subnet"),
            vec![(Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 200))],
        );
        let mut cfg = DhcpConfig::new("br0", server_ip, vec![subnet]);
        cfg.boot.ipxe_script_url = IPXE_SCRIPT_URL.into();
        // The lab link has no IPv6 router; without advertisements iPXE (2019 build) waits
        // ~13 s for router discovery after every DHCPACK.
        cfg.router_advertisements = true;
        let mut stop = stop_tx.subscribe();
        let backend = dyn_backend.clone();
        tokio::spawn(async move {
            let leases = Arc::new(MemoryLeaseStore::new());
            pxe::dhcp::server::run(cfg, leases, backend, async move {
                let _ = stop.recv().await;
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    });
    // Give the DHCP server a moment to fail fast (e.g. cannot bind) before reporting ready.
    let mut dhcp_task = dhcp_task;
    if dhcp_task.is_some() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(failed) = dhcp_task.take_if(|t| t.is_finished()) {
            let reason = match failed.await {
                Ok(Err(e)) => e,
                _ => "exited".to_string(),
            };
            let _ = ready.send(Err(format!("Ingot DHCP server: {reason}")));
            return;
        }
    }
    let _ = ready.send(Ok(()));
    let mut stop_tftp = stop_tx.subscribe();
    let mut stop_http = stop_tx.subscribe();
    let tftp = tokio::spawn(pxe::tftp::server::serve(
        tftp_socket,
        tftp_cfg,
        dyn_backend,
        async move {
            let _ = stop_tftp.recv().await;
        },
    ));
    let http = tokio::spawn(pxe::http::serve(listener, router, async move {
        let _ = stop_http.recv().await;
    }));
    let _ = stopped.await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = tftp.await;
        if let Some(dhcp) = dhcp_task {
            let _ = dhcp.await;
        }
        let _ = http.await;
    })
    .await;
}

/// Keeps a copy of every `/ipxe/...` response so tests can assert which script a VM got.
async fn record_scripts(
    axum::extract::State(events): axum::extract::State<Events>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().to_string();
    let response = next.run(request).await;
    if !path.starts_with("/ipxe/") {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    events.lock().unwrap().push(LabEvent::Script {
        path,
        status: parts.status.as_u16(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}
