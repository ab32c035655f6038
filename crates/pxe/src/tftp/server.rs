//! The tokio shell around the TFTP core: one listening socket for requests, one task and one
//! ephemeral socket per transfer (RFC 1350 transfer IDs), sightings off the hot path.

use super::files::{self, DynamicFiles, FileCache, OpenFileError};
use super::packet::{self, ErrorCode, Packet, Request};
use super::session::{self, Action, Limits, Negotiated, ReadTransfer};
use crate::backend::BootBackend;
use ingot_types::net::Sighting;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Default TFTP port.
pub const TFTP_PORT: u16 = 69;

#[derive(Clone)]
pub struct TftpConfig {
    /// Directory the static files (iPXE binaries) are served from.
    pub root: PathBuf,
    pub limits: Limits,
    /// Concurrent transfers; requests beyond it get an ERROR instead of queueing.
    pub max_sessions: usize,
    /// Largest file served (TFTP is for boot loaders; kernels and images go over HTTP).
    pub max_file_size: u64,
    /// Generated files, consulted before the root.
    pub dynamic: Option<Arc<dyn DynamicFiles>>,
    /// Where client IPs are resolved to MACs for sightings (the kernel's neighbour table).
    pub arp_table: PathBuf,
    /// Send whole windows with UDP GSO when the client negotiated `windowsize` > 1 (Linux;
    /// falls back to one send per block where the device refuses it).
    pub udp_gso: bool,
    /// Called once per request when it ends (metrics, the lab's assertions). Must be cheap.
    pub on_transfer: Option<Arc<dyn Fn(TransferRecord) + Send + Sync>>,
}

/// How one read request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    Finished,
    /// Retries exhausted.
    GaveUp,
    /// The client sent ERROR (UEFI does this after learning tsize).
    ClientAborted(String),
    /// File missing, path refused, unsupported mode.
    Refused(String),
    SocketError(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecord {
    pub peer: SocketAddr,
    pub file: String,
    /// The options the client asked for (blksize, tsize, windowsize, ...), as sent.
    pub requested_options: Vec<(String, String)>,
    /// File size (bytes sent when finished).
    pub bytes: u64,
    pub outcome: TransferOutcome,
}

impl TftpConfig {
    pub fn new(root: impl Into<PathBuf>) -> TftpConfig {
        TftpConfig {
            root: root.into(),
            limits: Limits::default(),
            max_sessions: 4096,
            max_file_size: 256 << 20,
            dynamic: None,
            arp_table: PathBuf::from("/proc/net/arp"),
            on_transfer: None,
            udp_gso: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TftpServeError {
    #[error("binding the TFTP socket on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("receiving on the TFTP socket")]
    Receive(#[source] std::io::Error),
}

/// Binds the request socket. Bind one server per interface address (not 0.0.0.0) when the
/// host has several, so that replies leave from the address the client talked to.
pub fn bind(addr: SocketAddr) -> Result<UdpSocket, TftpServeError> {
    let bind_error = |source| TftpServeError::Bind { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )
    .map_err(bind_error)?;
    socket.set_reuse_address(true).map_err(bind_error)?;
    // A boot storm arrives as a burst of RRQs; a larger buffer avoids dropping them (the
    // failure mode reported for dnsmasq at scale). The kernel caps it at rmem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    UdpSocket::from_std(socket.into()).map_err(bind_error)
}

/// Binds `listener_addr` and serves until `shutdown` completes.
pub async fn run(
    listener_addr: SocketAddr,
    cfg: TftpConfig,
    backend: Arc<dyn BootBackend>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TftpServeError> {
    serve(bind(listener_addr)?, cfg, backend, shutdown).await
}

/// Serves read requests on an already bound socket until `shutdown` completes; transfers in
/// flight are cancelled then.
pub async fn serve(
    socket: UdpSocket,
    cfg: TftpConfig,
    backend: Arc<dyn BootBackend>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TftpServeError> {
    let local_ip = socket
        .local_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let shared = Arc::new(Shared {
        sessions: Semaphore::new(cfg.max_sessions),
        cache: FileCache::default(),
        sightings: spawn_sighting_worker(backend, cfg.arp_table.clone()),
        cfg,
        local_ip,
    });
    let mut transfers = JoinSet::new();
    let mut buf = vec![0u8; 2048];
    tokio::pin!(shutdown);
    loop {
        let (len, peer) = tokio::select! {
            _ = &mut shutdown => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                // ICMP errors from earlier replies surface here on some kernels; not fatal.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(TftpServeError::Receive(e)),
            },
        };
        while transfers.try_join_next().is_some() {}
        match packet::parse(&buf[..len]) {
            Ok(Packet::Rrq(request)) => {
                let Ok(permit) = shared.sessions.try_acquire() else {
                    let _ = socket
                        .send_to(
                            &packet::encode_error(ErrorCode::NotDefined, "server busy"),
                            peer,
                        )
                        .await;
                    continue;
                };
                permit.forget();
                let _ = shared.sightings.try_send(peer.ip());
                let shared = shared.clone();
                transfers.spawn(async move {
                    shared.handle_read(request, peer).await;
                    shared.sessions.add_permits(1);
                });
            }
            Ok(Packet::Wrq(_)) => {
                let reply = packet::encode_error(ErrorCode::AccessViolation, "read-only server");
                let _ = socket.send_to(&reply, peer).await;
            }
            Ok(_) => {
                let reply = packet::encode_error(ErrorCode::UnknownTransferId, "unknown transfer");
                let _ = socket.send_to(&reply, peer).await;
            }
            Err(e) => tracing::debug!(%peer, error = %e, "tftp: malformed request"),
        }
    }
    transfers.shutdown().await;
    Ok(())
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

struct Shared {
    cfg: TftpConfig,
    sessions: Semaphore,
    cache: FileCache,
    sightings: mpsc::Sender<IpAddr>,
    local_ip: IpAddr,
}

impl Shared {
    async fn handle_read(&self, request: Request, peer: SocketAddr) {
        let (bytes, outcome) = self.read_transfer(&request, peer).await;
        if let Some(observer) = &self.cfg.on_transfer {
            observer(TransferRecord {
                peer,
                file: request.filename.clone(),
                requested_options: request.options.clone(),
                bytes,
                outcome,
            });
        }
    }

    async fn read_transfer(&self, request: &Request, peer: SocketAddr) -> (u64, TransferOutcome) {
        // The transfer socket is the server's TID; connecting it filters other peers out.
        let socket = match UdpSocket::bind(SocketAddr::new(self.local_ip, 0)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "tftp: cannot bind a transfer socket");
                return (0, TransferOutcome::SocketError(e.to_string()));
            }
        };
        if let Err(e) = socket.connect(peer).await {
            tracing::debug!(%peer, error = %e, "tftp: cannot connect to the client");
            return (0, TransferOutcome::SocketError(e.to_string()));
        }
        if request.mode != "octet" && request.mode != "netascii" {
            let reply = packet::encode_error(ErrorCode::IllegalOperation, "unsupported mode");
            let _ = socket.send(&reply).await;
            return (
                0,
                TransferOutcome::Refused(format!("mode {}", request.mode)),
            );
        }
        let bytes = match self.open(&request.filename, peer).await {
            Ok(bytes) => bytes,
            Err(e) => {
                let code = match e {
                    OpenFileError::NotFound(_) => ErrorCode::FileNotFound,
                    OpenFileError::Traversal(_) => ErrorCode::AccessViolation,
                    _ => ErrorCode::NotDefined,
                };
                tracing::debug!(%peer, file = %request.filename, error = %e, "tftp: refused");
                let _ = socket
                    .send(&packet::encode_error(code, &e.to_string()))
                    .await;
                return (0, TransferOutcome::Refused(e.to_string()));
            }
        };
        let negotiated = session::negotiate(request, bytes.len() as u64, &self.cfg.limits);
        let outcome = transfer(
            &socket,
            &bytes,
            &negotiated,
            self.cfg.limits.max_retries,
            self.cfg.udp_gso,
        )
        .await;
        match &outcome {
            TransferOutcome::Finished => {
                tracing::debug!(%peer, file = %request.filename, len = bytes.len(), "tftp: sent")
            }
            // UEFI firmware asks for tsize, then aborts and re-requests: not a failure.
            TransferOutcome::ClientAborted(m) => {
                tracing::debug!(%peer, file = %request.filename, message = %m, "tftp: client aborted")
            }
            other => {
                tracing::warn!(%peer, file = %request.filename, outcome = ?other, "tftp: transfer failed")
            }
        }
        (bytes.len() as u64, outcome)
    }

    async fn open(&self, filename: &str, peer: SocketAddr) -> Result<Arc<[u8]>, OpenFileError> {
        let relative = files::sanitize(filename)?;
        if let Some(dynamic) = &self.cfg.dynamic {
            let key = relative.to_string_lossy();
            if let Some(generated) = dynamic.open(&key, peer).await {
                return generated.map(Arc::from);
            }
        }
        self.cache
            .open(&self.cfg.root, &relative, self.cfg.max_file_size)
            .await
    }
}

/// Runs one read transfer to completion. The hot path: one `send` per DATA, one `recv` per ACK,
/// no allocation, and the retransmission timer re-armed at most once per timeout period
/// (checking a deadline is cheaper than resetting a timer on every block).
async fn transfer(
    socket: &UdpSocket,
    file: &[u8],
    negotiated: &Negotiated,
    max_retries: u32,
    udp_gso: bool,
) -> TransferOutcome {
    let mut state = ReadTransfer::new(file.len() as u64, negotiated, max_retries);
    let oack = packet::encode_oack(&negotiated.oack);
    let mut sender = BlockSender::new(socket, negotiated, udp_gso);
    let mut inbound = [0u8; 1024];
    let timeout = negotiated.timeout;
    let mut deadline = Instant::now() + timeout;
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let mut action = state.start();
    loop {
        let sent = match action {
            Action::SendOack => send(socket, &oack).await,
            Action::SendBlocks(blocks) => sender.send_blocks(socket, &state, file, blocks).await,
            Action::Wait => Ok(false),
            Action::Finished => return TransferOutcome::Finished,
            Action::GaveUp => return TransferOutcome::GaveUp,
            Action::ClientAborted(message) => return TransferOutcome::ClientAborted(message),
        };
        match sent {
            Ok(true) => deadline = Instant::now() + timeout,
            Ok(false) => {}
            Err(kind) => return TransferOutcome::SocketError(kind.to_string()),
        }
        action = loop {
            tokio::select! {
                biased;
                received = socket.recv(&mut inbound) => match received {
                    Ok(n) => {
                        forget_readiness(socket);
                        match packet::parse(&inbound[..n]) {
                            Ok(p) => break state.on_packet(&p),
                            Err(_) => continue,
                        }
                    }
                    Err(e) => return TransferOutcome::SocketError(e.kind().to_string()),
                },
                _ = &mut timer => {
                    let now = Instant::now();
                    if now >= deadline {
                        deadline = now + timeout;
                        timer.as_mut().reset(deadline);
                        break state.on_timeout();
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        };
    }
}

/// Largest UDP payload and segment count one GSO send may carry (Linux `UDP_MAX_SEGMENTS`).
const GSO_MAX_BYTES: usize = 65507;
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MIN_BLKSIZE: u16 = 256;

/// Writes DATA packets. With a window (RFC 7440) and UDP GSO available, a whole window leaves
/// in one `send`: the buffer holds back-to-back `[header|block]` datagrams of equal size (only
/// the file's last block is short, and it always ends its window) and the kernel splits it at
/// the segment size. That saves a syscall and a trip through the IP output path per block.
struct BlockSender {
    buf: Vec<u8>,
    segment: usize,
    /// Blocks per `send`; 1 without GSO.
    per_send: usize,
}

impl BlockSender {
    fn new(socket: &UdpSocket, negotiated: &Negotiated, udp_gso: bool) -> BlockSender {
        let segment = usize::from(negotiated.blksize) + packet::DATA_HEADER_LEN;
        let window = usize::from(negotiated.windowsize);
        let mut per_send = 1;
        let possible = (GSO_MAX_BYTES / segment).min(GSO_MAX_SEGMENTS).min(window);
        // Tiny segments come out of the kernel misaligned (seen with 12- and 20-byte segments,
        // below the Ethernet minimum frame); real clients use 512 and up.
        if udp_gso && possible > 1 && negotiated.blksize >= GSO_MIN_BLKSIZE {
            let size = segment as i32;
            if nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::UdpGsoSegment, &size)
                .is_ok()
            {
                per_send = possible;
            }
        }
        BlockSender {
            buf: vec![0u8; segment * per_send],
            segment,
            per_send,
        }
    }

    async fn send_blocks(
        &mut self,
        socket: &UdpSocket,
        state: &ReadTransfer,
        file: &[u8],
        blocks: std::ops::RangeInclusive<u64>,
    ) -> Result<bool, std::io::ErrorKind> {
        let (mut next, last) = blocks.into_inner();
        while next <= last {
            let count = (last - next + 1).min(self.per_send as u64);
            let mut len = 0;
            for block in next..next + count {
                let range = state.block_range(block);
                let data_len = range.len();
                packet::write_data_header(&mut self.buf[len..], ReadTransfer::wire_block(block));
                let data_at = len + packet::DATA_HEADER_LEN;
                self.buf[data_at..data_at + data_len].copy_from_slice(&file[range]);
                len = data_at + data_len;
            }
            debug_assert!(count == 1 || len > self.segment * (count as usize - 1));
            match socket.send(&self.buf[..len]).await {
                Ok(_) => {}
                // Devices without checksum offload refuse GSO sends (EIO): fall back for good.
                Err(e) if self.per_send > 1 && e.raw_os_error().is_some_and(is_gso_refusal) => {
                    let _ = nix::sys::socket::setsockopt(
                        socket,
                        nix::sys::socket::sockopt::UdpGsoSegment,
                        &0,
                    );
                    self.per_send = 1;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(e.kind()),
                // Anything else (e.g. a full socket buffer in a storm) is left to the
                // retransmission timer.
                Err(_) => {}
            }
            next += count;
        }
        Ok(true)
    }
}

fn is_gso_refusal(errno: i32) -> bool {
    errno == nix::errno::Errno::EIO as i32 || errno == nix::errno::Errno::EINVAL as i32
}

/// Marks the socket not-readable without a syscall. In lockstep the client's next packet can only
/// follow our next send, so the readiness left by the packet just received is stale; without
/// this, every block would cost an extra `recv` that fails with `WouldBlock`. If a stray
/// packet is still queued, the next arrival raises readiness again (edge-triggered epoll
/// fires per datagram) and the stray is read first; at worst the retransmission timer recovers.
fn forget_readiness(socket: &UdpSocket) {
    let _ = socket.try_io(tokio::io::Interest::READABLE, || {
        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
    });
}

/// Sends one datagram; `Ok(true)` when something was sent. Send failures other than a
/// refused peer are left to the retransmission timer.
async fn send(socket: &UdpSocket, bytes: &[u8]) -> Result<bool, std::io::ErrorKind> {
    match socket.send(bytes).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(e.kind()),
        Err(_) => Ok(true),
    }
}

/// How long one IP's sighting suppresses the next (a machine asks for several files per boot).
const SIGHTING_INTERVAL: Duration = Duration::from_secs(30);

/// Sightings go through a bounded queue to one worker, so a slow region never slows a
/// transfer; when the queue is full, sightings are dropped (DHCP and HTTP report them too).
fn spawn_sighting_worker(
    backend: Arc<dyn BootBackend>,
    arp_table: PathBuf,
) -> mpsc::Sender<IpAddr> {
    let (tx, mut rx) = mpsc::channel::<IpAddr>(1024);
    tokio::spawn(async move {
        let mut last_seen: HashMap<IpAddr, Instant> = HashMap::new();
        while let Some(ip) = rx.recv().await {
            let now = Instant::now();
            if last_seen
                .get(&ip)
                .is_some_and(|t| now.duration_since(*t) < SIGHTING_INTERVAL)
            {
                continue;
            }
            last_seen.retain(|_, t| now.duration_since(*t) < SIGHTING_INTERVAL);
            last_seen.insert(ip, now);
            let Ok(table) = tokio::fs::read_to_string(&arp_table).await else {
                continue;
            };
            let Some(mac) = mac_for_ip(&table, ip) else {
                continue;
            };
            let sighting = Sighting {
                mac,
                ip: match ip {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                },
                arch: None,
                source: "tftp".into(),
                at: unix_now(),
            };
            if let Err(e) = backend.record_sighting(sighting).await {
                tracing::debug!(error = %e, "tftp: sighting not recorded");
            }
        }
    });
    tx
}

/// Looks an IP up in `/proc/net/arp` format:
/// `IP address  HW type  Flags  HW address  Mask  Device`.
pub fn mac_for_ip(table: &str, ip: IpAddr) -> Option<String> {
    let wanted = ip.to_string();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [addr, _, flags, mac, ..]
                if *addr == wanted && *flags != "0x0" && *mac != "00:00:00:00:00:00" =>
            {
                Some(mac.to_ascii_lowercase())
            }
            _ => None,
        }
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_lookup() {
        let table = "IP address       HW type     Flags       HW address            Mask     Device\n\
                     10.77.0.100      0x1         0x2         52:54:00:AA:BB:01     *        br0\n\
                     10.77.0.101      0x1         0x0         00:00:00:00:00:00     *        br0\n";
        assert_eq!(
            mac_for_ip(table, "10.77.0.100".parse().unwrap()).as_deref(),
            Some("52:54:00:aa:bb:01")
        );
        assert_eq!(mac_for_ip(table, "10.77.0.101".parse().unwrap()), None);
        assert_eq!(mac_for_ip(table, "10.77.0.102".parse().unwrap()), None);
    }
}
