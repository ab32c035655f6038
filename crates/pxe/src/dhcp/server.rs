//! The tokio shell around [`DhcpCore`]: sockets, lease group-commit, sightings.
//!
//! Tasks:
//! - the receive loop owns the core (no lock): it decodes, decides, and sends OFFERs, NAKs and
//!   proxy answers straight away;
//! - the committer receives ACKs together with their leases. It takes everything queued (up to
//!   [`MAX_BATCH`]), commits the leases in one `LeaseStore::commit` call, and only then sends
//!   those ACKs. While one commit runs, the next batch queues up, so the number of commits per
//!   second adapts to the store's latency (group commit) and no ACK leaves before its lease is
//!   durable. If a commit fails, its ACKs are not sent; the clients retransmit their REQUEST;
//! - the sighting reporter calls `BootBackend::record_sighting`. Its queue is bounded and
//!   sightings are dropped (counted) when it is full, so a slow backend never delays a reply.

use super::core::{DhcpCore, DhcpCounters, ListenPort, PXE_PORT, PacketContext, SERVER_PORT};
use super::{Decision, DhcpConfig, DhcpMode, Reply};
use crate::backend::{BackendError, BootBackend, LeaseStore};
use ingot_types::net::{Lease, Sighting};
use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// Most leases committed in one `LeaseStore::commit` call.
pub const MAX_BATCH: usize = 2048;
/// Queue between the receive loop and the committer. When the store falls this far behind, the
/// receive loop waits, and the kernel socket buffer absorbs (then drops) the excess.
const COMMIT_QUEUE: usize = 8192;
const SIGHTING_QUEUE: usize = 1024;
/// Socket receive buffer, so bursts are not dropped while a batch is being sent.
const RECV_BUFFER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DhcpServerError {
    #[error("DHCP server needs an interface to bind to")]
    NoInterface,
    #[error("binding UDP port {port} on interface {interface}")]
    Bind {
        interface: String,
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("IPv6 router advertiser on interface {interface}")]
    RouterAdvertiser {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("loading leases")]
    LoadLeases(#[source] BackendError),
}

/// Opens a UDP socket on `0.0.0.0:port` that only sees and sends on `interface`.
pub fn bind_interface_socket(interface: &str, port: u16) -> Result<UdpSocket, DhcpServerError> {
    let bind = || -> io::Result<UdpSocket> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_broadcast(true)?;
        // SO_BINDTODEVICE: DHCP must never answer on other links of the host.
        socket.bind_device(Some(interface.as_bytes()))?;
        if let Err(e) = socket.set_recv_buffer_size(RECV_BUFFER) {
            tracing::debug!(error = %e, "could not enlarge the DHCP receive buffer");
        }
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
        UdpSocket::from_std(socket.into())
    };
    if interface.is_empty() {
        return Err(DhcpServerError::NoInterface);
    }
    bind().map_err(|source| DhcpServerError::Bind {
        interface: interface.to_string(),
        port,
        source,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

enum Job {
    /// Commit, then send.
    Ack(Lease, Vec<u8>, SocketAddrV4),
    Remove(Ipv4Addr),
}

/// Committer counts, shared with the receive loop for the published snapshot.
#[derive(Default)]
struct CommitStats {
    batches: AtomicU64,
    leases: AtomicU64,
    failures: AtomicU64,
    send_errors: AtomicU64,
}

impl CommitStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The core's counters plus ours.
    fn merged(&self, core: &DhcpCounters) -> DhcpCounters {
        let mut c = core.clone();
        c.commit_batches += self.batches.load(Ordering::Relaxed);
        c.leases_committed += self.leases.load(Ordering::Relaxed);
        c.commit_failures += self.failures.load(Ordering::Relaxed);
        c.send_errors += self.send_errors.load(Ordering::Relaxed);
        c
    }
}

/// How often [`run_with_stats`] publishes counters.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the DHCP server until `shutdown` completes. Leases are loaded from `lease_store` first.
/// Returns the final counters; pending ACKs are committed and sent before returning.
pub async fn run(
    config: DhcpConfig,
    lease_store: Arc<dyn LeaseStore>,
    backend: Arc<dyn BootBackend>,
    shutdown: impl Future<Output = ()>,
) -> Result<DhcpCounters, DhcpServerError> {
    let (stats, _) = watch::channel(DhcpCounters::default());
    run_with_stats(config, lease_store, backend, shutdown, stats).await
}

/// [`run`], also publishing the counters to `stats` about once a second while packets arrive
/// (for metrics), and once more at the end.
pub async fn run_with_stats(
    config: DhcpConfig,
    lease_store: Arc<dyn LeaseStore>,
    backend: Arc<dyn BootBackend>,
    shutdown: impl Future<Output = ()>,
    stats: watch::Sender<DhcpCounters>,
) -> Result<DhcpCounters, DhcpServerError> {
    let dhcp_socket = Arc::new(bind_interface_socket(&config.interface, SERVER_PORT)?);
    // Port 4011 is only asked in proxy mode: our full-mode answers always carry the boot file.
    let pxe_socket = match config.mode {
        DhcpMode::Proxy => Some(bind_interface_socket(&config.interface, PXE_PORT)?),
        DhcpMode::Full => None,
    };

    let mut core = DhcpCore::new(config);
    if core.config().mode == DhcpMode::Full {
        let leases = lease_store
            .load_all()
            .await
            .map_err(DhcpServerError::LoadLeases)?;
        let count = leases.len();
        let skipped = core.restore_leases(leases);
        tracing::info!(count, skipped, "DHCP leases loaded");
    }
    tracing::info!(
        interface = %core.config().interface,
        server_ip = %core.config().server_ip,
        mode = ?core.config().mode,
        "DHCP server listening"
    );

    // Best effort: without it iPXE only boots slower, so a failure is logged, not fatal.
    let _advertiser = if core.config().router_advertisements {
        super::router_advert::spawn_router_advertiser(&core.config().interface)
            .inspect_err(|e| tracing::warn!(error = %e, "no IPv6 router advertisements"))
            .ok()
    } else {
        None
    };

    let (job_tx, job_rx) = mpsc::channel(COMMIT_QUEUE);
    let commit_stats = Arc::new(CommitStats::default());
    let committer = tokio::spawn(commit_loop(
        job_rx,
        lease_store,
        dhcp_socket.clone(),
        commit_stats.clone(),
    ));
    let (sighting_tx, sighting_rx) = mpsc::channel(SIGHTING_QUEUE);
    let reporter = tokio::spawn(report_sightings(sighting_rx, backend));

    let publisher = Publisher {
        stats,
        commit_stats: commit_stats.clone(),
        last: Instant::now(),
    };
    let loops = Loops {
        dhcp_socket: &dhcp_socket,
        pxe_socket: pxe_socket.as_ref(),
        job_tx: &job_tx,
        sighting_tx: &sighting_tx,
    };
    let result = receive_loop(&mut core, loops, publisher, shutdown).await;

    // Let the committer drain what is queued, so no acknowledged-in-memory lease is left
    // without its ACK or its commit.
    drop(job_tx);
    if let Err(e) = committer.await {
        tracing::error!(error = %e, "DHCP lease committer failed");
    }
    drop(sighting_tx);
    if tokio::time::timeout(Duration::from_secs(1), reporter)
        .await
        .is_err()
    {
        tracing::warn!("sighting reporter did not finish within 1 s of shutdown");
    }
    let last = result?;
    let counters = commit_stats.merged(core.counters());
    last.stats.send_replace(counters.clone());
    Ok(counters)
}

/// The sockets and queues the receive loop uses.
struct Loops<'a> {
    dhcp_socket: &'a UdpSocket,
    pxe_socket: Option<&'a UdpSocket>,
    job_tx: &'a mpsc::Sender<Job>,
    sighting_tx: &'a mpsc::Sender<Sighting>,
}

struct Publisher {
    stats: watch::Sender<DhcpCounters>,
    commit_stats: Arc<CommitStats>,
    last: Instant,
}

impl Publisher {
    fn maybe_publish(&mut self, core: &DhcpCore) {
        if self.last.elapsed() >= STATS_INTERVAL {
            self.last = Instant::now();
            self.stats
                .send_replace(self.commit_stats.merged(core.counters()));
        }
    }
}

/// Returns the publisher for the final snapshot.
async fn receive_loop(
    core: &mut DhcpCore,
    loops: Loops<'_>,
    mut publisher: Publisher,
    shutdown: impl Future<Output = ()>,
) -> Result<Publisher, DhcpServerError> {
    let Loops {
        dhcp_socket,
        pxe_socket,
        job_tx,
        sighting_tx,
    } = loops;
    tokio::pin!(shutdown);
    let mut buf = vec![0u8; 1500];
    let mut pxe_buf = vec![0u8; 1500];
    loop {
        let (received, port) = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(publisher),
            r = dhcp_socket.recv_from(&mut buf) => (r, ListenPort::Dhcp),
            r = recv_optional(pxe_socket, &mut pxe_buf) => (r, ListenPort::Pxe),
        };
        let (len, source) = match received {
            Ok(r) => r,
            Err(e) => {
                // Not fatal: a DHCP server that stops on a transient socket error (say, while
                // its interface is reconfigured) strands every client.
                tracing::warn!(error = %e, ?port, "DHCP receive failed");
                core.counters_mut().receive_errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let SocketAddr::V4(source) = source else {
            continue;
        };
        let (packet, socket) = match port {
            ListenPort::Dhcp => (&buf[..len], dhcp_socket),
            // `recv_optional` only yields when the socket exists.
            ListenPort::Pxe => (&pxe_buf[..len], pxe_socket.unwrap_or(dhcp_socket)),
        };
        let ctx = PacketContext {
            now: unix_now(),
            source,
            port,
        };
        let (decision, sighting) = core.handle(packet, &ctx);
        publisher.maybe_publish(core);
        if let Some(sighting) = sighting
            && sighting_tx.try_send(sighting).is_err()
        {
            core.counters_mut().sightings_dropped += 1;
        }
        match decision {
            Decision::Drop(reason) => tracing::trace!(?reason, %source, "DHCP packet dropped"),
            Decision::Reply(Reply {
                bytes,
                to,
                lease: None,
                ..
            }) => {
                if let Err(e) = socket.send_to(&bytes, to).await {
                    tracing::debug!(error = %e, %to, "DHCP send failed");
                    core.counters_mut().send_errors += 1;
                }
            }
            Decision::Reply(Reply {
                bytes,
                to,
                lease: Some(lease),
                ..
            }) => {
                // Waits when the committer is far behind: back-pressure instead of memory growth.
                if job_tx.send(Job::Ack(lease, bytes, to)).await.is_err() {
                    tracing::error!("DHCP lease committer stopped");
                    return Ok(publisher);
                }
            }
            Decision::Forget(ip) => {
                if job_tx.send(Job::Remove(ip)).await.is_err() {
                    tracing::error!("DHCP lease committer stopped");
                    return Ok(publisher);
                }
            }
        }
    }
}

async fn recv_optional(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn commit_loop(
    mut rx: mpsc::Receiver<Job>,
    store: Arc<dyn LeaseStore>,
    socket: Arc<UdpSocket>,
    stats: Arc<CommitStats>,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut leases = Vec::with_capacity(MAX_BATCH);
    let mut sends = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        // Keep the order of commits and removals of the same address: flush the pending
        // commits before each removal.
        for job in jobs.drain(..) {
            match job {
                Job::Ack(lease, bytes, to) => {
                    leases.push(lease);
                    sends.push((bytes, to));
                }
                Job::Remove(ip) => {
                    flush(&mut leases, &mut sends, &*store, &socket, &stats).await;
                    if let Err(e) = store.remove(ip).await {
                        tracing::warn!(error = %e, %ip, "removing DHCP lease failed");
                        CommitStats::add(&stats.failures, 1);
                    }
                }
            }
        }
        flush(&mut leases, &mut sends, &*store, &socket, &stats).await;
    }
}

async fn flush(
    leases: &mut Vec<Lease>,
    sends: &mut Vec<(Vec<u8>, SocketAddrV4)>,
    store: &dyn LeaseStore,
    socket: &UdpSocket,
    stats: &CommitStats,
) {
    if leases.is_empty() {
        return;
    }
    CommitStats::add(&stats.batches, 1);
    match store.commit(leases).await {
        Ok(()) => {
            CommitStats::add(&stats.leases, leases.len() as u64);
            for (bytes, to) in sends.iter() {
                if let Err(e) = socket.send_to(bytes, *to).await {
                    tracing::debug!(error = %e, %to, "DHCP send failed");
                    CommitStats::add(&stats.send_errors, 1);
                }
            }
        }
        Err(e) => {
            // No ACK without a durable lease; clients retransmit their REQUEST.
            tracing::warn!(error = %e, count = leases.len(), "DHCP lease commit failed; ACKs withheld");
            CommitStats::add(&stats.failures, 1);
        }
    }
    leases.clear();
    sends.clear();
}

async fn report_sightings(mut rx: mpsc::Receiver<Sighting>, backend: Arc<dyn BootBackend>) {
    while let Some(sighting) = rx.recv().await {
        let mac = sighting.mac.clone();
        if let Err(e) = backend.record_sighting(sighting).await {
            tracing::warn!(error = %e, %mac, "recording DHCP sighting failed");
        }
    }
}
