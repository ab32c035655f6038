//! Answers IPv6 router solicitations with a minimal router advertisement, so iPXE stops waiting
//! for IPv6 configuration on links without an IPv6 router.
//!
//! iPXE configures DHCPv4 and IPv6 in parallel and waits for both (see `dhcp/mod.rs`). Builds
//! before October 2020 (Debian 12's `ipxe-qemu` among them) keep soliciting routers for ~16 s
//! before giving up; newer ones for ~3.75 s. Any router advertisement ends the wait at once:
//! `scripts/bench/dhcp-ipxe-timing.sh` measured the first HTTP request 16.09 s after the first
//! DISCOVER without one and 0.05 s with one.
//!
//! The advertisement carries no prefixes, clears the managed/other flags and has router
//! lifetime 0 ("not a default router"), so hosts configure nothing from it. Sending RAs is a
//! policy decision for the network's owner, hence off by default
//! ([`super::DhcpConfig::router_advertisements`]).

use super::server::DhcpServerError;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{self, Read};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// One multicast answer covers every client soliciting at that moment (RFC 4861 §6.2.6 lets a
/// router answer solicitations by multicast and rate-limit them).
const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// How often the advertiser thread checks whether it should stop.
const POLL: Duration = Duration::from_millis(250);

/// The ICMPv6 router advertisement we send (RFC 4861 §4.2). The kernel fills in the checksum.
pub fn router_advertisement() -> [u8; 16] {
    [
        ROUTER_ADVERTISEMENT,
        0, // code
        0,
        0,  // checksum
        64, // current hop limit suggested to hosts
        0,  // flags: no managed (DHCPv6) or other-config
        0,
        0, // router lifetime 0: not a default router
        0,
        0,
        0,
        0, // reachable time: unspecified
        0,
        0,
        0,
        0, // retransmission timer: unspecified
    ]
}

/// Whether an ICMPv6 message (as a raw ICMPv6 socket delivers it, without the IPv6 header) is a
/// router solicitation.
pub fn is_router_solicitation(message: &[u8]) -> bool {
    message.len() >= 8 && message[0] == ROUTER_SOLICITATION && message[1] == 0
}

/// The interface index. `/proc/thread-self/net/if_inet6` describes the calling thread's network
/// namespace but lists only interfaces that have an IPv6 address; `/sys/class/net` describes
/// the namespace sysfs was mounted in (right under `ip netns exec`) and lists all interfaces.
pub fn interface_index(interface: &str) -> io::Result<u32> {
    let from_inet6 = std::fs::read_to_string("/proc/thread-self/net/if_inet6")
        .ok()
        .and_then(|table| {
            table.lines().find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() == 6 && fields[5] == interface)
                    .then(|| u32::from_str_radix(fields[1], 16).ok())?
            })
        });
    if let Some(index) = from_inet6 {
        return Ok(index);
    }
    if interface.contains('/') || interface.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    std::fs::read_to_string(format!("/sys/class/net/{interface}/ifindex"))?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unreadable ifindex"))
}

fn open(interface: &str) -> io::Result<(Socket, u32)> {
    let index = interface_index(interface)?;
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    // Neighbour discovery packets must carry hop limit 255 or receivers drop them.
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_if_v6(index)?;
    // Solicitations go to all-routers, which the kernel only joins when forwarding.
    socket.join_multicast_v6(&ALL_ROUTERS, index)?;
    // Blocking with a timeout, so the thread notices `stop` (tokio's AsyncFd for raw sockets
    // needs `unsafe`; one thread per interface is cheap).
    socket.set_read_timeout(Some(POLL))?;
    Ok((socket, index))
}

/// A running router advertiser; stops (within [`POLL`]) when dropped.
#[derive(Debug)]
pub struct RouterAdvertiser {
    stop: Arc<AtomicBool>,
}

impl Drop for RouterAdvertiser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts answering router solicitations on `interface`, in a thread of its own. The thread
/// inherits the caller's network namespace. Until the interface can be opened (a tap without
/// carrier has no IPv6 yet), it retries every second.
pub fn spawn_router_advertiser(interface: &str) -> Result<RouterAdvertiser, DhcpServerError> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let name = interface.to_string();
    std::thread::Builder::new()
        .name(format!("ra-{interface}"))
        .spawn(move || {
            let mut warned = false;
            while !thread_stop.load(Ordering::Relaxed) {
                match open(&name) {
                    Ok((socket, index)) => return advertise(&socket, index, &name, &thread_stop),
                    Err(e) if !warned => {
                        tracing::info!(error = %e, interface = %name, "router advertiser waiting for the interface");
                        warned = true;
                    }
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .map_err(|source| DhcpServerError::RouterAdvertiser { interface: interface.to_string(), source })?;
    Ok(RouterAdvertiser { stop })
}

fn advertise(socket: &Socket, index: u32, interface: &str, stop: &AtomicBool) {
    let dest = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, index));
    let advertisement = router_advertisement();
    let mut last_sent: Option<Instant> = None;
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let len = match (&*socket).read(&mut buf) {
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, %interface, "router advertiser stopped");
                return;
            }
        };
        if !is_router_solicitation(&buf[..len])
            || last_sent.is_some_and(|t| t.elapsed() < MIN_INTERVAL)
        {
            continue;
        }
        match socket.send_to(&advertisement, &dest) {
            Ok(_) => last_sent = Some(Instant::now()),
            Err(e) => {
                tracing::debug!(error = %e, %interface, "sending router advertisement failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_shape() {
        let ra = router_advertisement();
        assert_eq!(ra[0], 134);
        assert_eq!(ra[5], 0, "no managed/other flags");
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0");
        assert!(is_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(is_router_solicitation(&[
            133, 0, 0xab, 0xcd, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0, 0x12, 0x37, 1
        ]));
        assert!(!is_router_solicitation(&ra));
        assert!(!is_router_solicitation(&[133, 0, 0]));
        assert!(!is_router_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn loopback_index_is_found() {
        // `lo` has ::1 wherever IPv6 is enabled; skip the check where it is not.
        if std::fs::read_to_string("/proc/thread-self/net/if_inet6")
            .is_ok_and(|t| t.contains(" lo\n"))
        {
            assert_eq!(interface_index("lo").unwrap(), 1);
        }
        assert!(interface_index("no-such-if0").is_err());
    }
}
