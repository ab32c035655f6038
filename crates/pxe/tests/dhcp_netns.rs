//! The DHCP server in a private network namespace, against a real client (busybox `udhcpc`)
//! over a veth pair. Each test creates its own two namespaces with unique names and deletes them
//! when done, also on failure. Needs root, `ip` (iproute2) and `busybox` (busybox-static).
//!
//! The server runs in-process: a thread enters the server namespace with setns(2) and runs a
//! current-thread tokio runtime there, so its sockets live in that namespace only.

// setns(2) has no safe wrapper in our dependencies; it is only used in this test harness.
#![allow(unsafe_code)]

use async_trait::async_trait;
use ingot_types::boot::BootDecision;
use ingot_types::net::Sighting;
use pxe::backend::{BackendError, BootBackend, ClientInfo, LeaseStore};
use pxe::dhcp::server::run_with_stats;
use pxe::dhcp::{DhcpConfig, DhcpCounters, MemoryLeaseStore, SubnetConfig};
use std::collections::HashMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; deleted on drop.
struct Lab {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let lab = Lab {
            server_ns: format!("ingot-dhcp-s{id}"),
            client_ns: format!("ingot-dhcp-c{id}"),
            // Interface names are limited to 15 bytes.
            server_if: format!("ds{id}"),
            client_if: format!("dc{id}"),
            dir: tempfile::tempdir().unwrap(),
        };
        sh(&["ip", "netns", "add", &lab.server_ns]);
        sh(&["ip", "netns", "add", &lab.client_ns]);
        sh(&[
            "ip",
            "link",
            "add",
            &lab.server_if,
            "netns",
            &lab.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &lab.client_if,
            "netns",
            &lab.client_ns,
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.server_ns,
            "addr",
            "add",
            "10.79.0.1/24",
            "dev",
            &lab.server_if,
        ]);
        for (ns, dev) in [
            (&lab.server_ns, &lab.server_if),
            (&lab.client_ns, &lab.client_if),
        ] {
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let script = lab.dir.path().join("udhcpc.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = bound ] && env > \"$LEASE_OUT\"\nexit 0\n",
        )
        .unwrap();
        sh(&["chmod", "+x", script.to_str().unwrap()]);
        lab
    }

    fn config(&self) -> DhcpConfig {
        let subnet = SubnetConfig::new(
            "10.79.0.0/24".parse().unwrap(),
            vec![(Ipv4Addr::new(10, 79, 0, 100), Ipv4Addr::new(10, 79, 0, 199))],
        );
        DhcpConfig::new(self.server_if.clone(), SERVER_IP, vec![subnet])
    }

    fn set_client_mac(&self, mac: &str) {
        sh(&[
            "ip",
            "-n",
            &self.client_ns,
            "link",
            "set",
            &self.client_if,
            "down",
        ]);
        sh(&[
            "ip",
            "-n",
            &self.client_ns,
            "link",
            "set",
            &self.client_if,
            "address",
            mac,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.client_ns,
            "link",
            "set",
            &self.client_if,
            "up",
        ]);
    }

    /// Runs `udhcpc` once in the client namespace; returns the variables of the lease it got.
    fn udhcpc(&self, extra: &[&str]) -> HashMap<String, String> {
        let out_file: PathBuf = self.dir.path().join("lease.env");
        let _ = std::fs::remove_file(&out_file);
        let script = self.dir.path().join("udhcpc.sh");
        let mut cmd = Command::new("timeout");
        cmd.args([
            "30",
            "ip",
            "netns",
            "exec",
            &self.client_ns,
            "busybox",
            "udhcpc",
        ])
        .args([
            "-i",
            &self.client_if,
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "2",
        ])
        .arg("-s")
        .arg(&script)
        .args(extra)
        .env("LEASE_OUT", &out_file);
        let out = cmd.output().expect("run udhcpc");
        let env = std::fs::read_to_string(&out_file).unwrap_or_else(|_| {
            panic!(
                "udhcpc got no lease (status {}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        env.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and with it the pair.
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[derive(Default)]
struct RecordingBackend {
    sightings: Mutex<Vec<Sighting>>,
}

#[async_trait]
impl BootBackend for RecordingBackend {
    async fn boot_decision(
        &self,
        _mac: &str,
        _client: &ClientInfo,
    ) -> Result<BootDecision, BackendError> {
        Err(BackendError(
            "the DHCP server does not ask for boot decisions".into(),
        ))
    }

    async fn record_sighting(&self, sighting: Sighting) -> Result<(), BackendError> {
        self.sightings.lock().unwrap().push(sighting);
        Ok(())
    }
}

/// A DHCP server running in `netns` until dropped or stopped.
struct RunningServer {
    /// Counters published by the server.
    stats: tokio::sync::watch::Receiver<DhcpCounters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<DhcpCounters>>,
}

impl RunningServer {
    fn start(
        netns: &str,
        config: DhcpConfig,
        store: Arc<dyn LeaseStore>,
        backend: Arc<dyn BootBackend>,
    ) -> Self {
        let ns_path = Path::new("/var/run/netns").join(netns);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stats_tx, stats) = tokio::sync::watch::channel(DhcpCounters::default());
        let thread = std::thread::spawn(move || {
            let ns = File::open(&ns_path).expect("open netns");
            // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _ = ready_tx.send(());
                let shutdown = async move {
                    let _ = stop_rx.await;
                };
                run_with_stats(config, store, backend, shutdown, stats_tx)
                    .await
                    .expect("DHCP server")
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server thread started");
        // The sockets are bound right after `run` starts; give the runtime a moment.
        std::thread::sleep(Duration::from_millis(200));
        RunningServer {
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> DhcpCounters {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().expect("server thread")
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn udhcpc_gets_a_lease_and_pxe_boot_file() {
    let lab = Lab::new();
    let store = Arc::new(MemoryLeaseStore::new());
    let backend = Arc::new(RecordingBackend::default());
    let server = RunningServer::start(&lab.server_ns, lab.config(), store.clone(), backend.clone());

    // An OS client.
    lab.set_client_mac("52:54:00:79:00:01");
    let lease = lab.udhcpc(&[]);
    assert_eq!(lease["ip"], "10.79.0.100");
    assert_eq!(lease["serverid"], "10.79.0.1");
    assert_eq!(lease["subnet"], "255.255.255.0");
    assert_eq!(lease["lease"], "600");
    let stored = store
        .get(Ipv4Addr::new(10, 79, 0, 100))
        .expect("lease committed before the ACK");
    assert_eq!(stored.mac, "52:54:00:79:00:01");

    // A BIOS PXE ROM (vendor class and arch 0): short lease and the iPXE binary over TFTP.
    lab.set_client_mac("52:54:00:79:00:02");
    let lease = lab.udhcpc(&["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"]);
    assert_eq!(lease["ip"], "10.79.0.101");
    assert_eq!(lease["lease"], "30");
    assert_eq!(lease["siaddr"], "10.79.0.1");
    assert_eq!(lease["boot_file"], "undionly.kpxe");

    // iPXE (user class "iPXE"): the per-MAC script URL.
    lab.set_client_mac("52:54:00:79:00:03");
    let lease = lab.udhcpc(&[
        "-V",
        "PXEClient:Arch:00007:UNDI:003016",
        "-x",
        "0x5d:0007",
        "-x",
        "0x4d:69505845",
    ]);
    assert_eq!(
        lease["boot_file"],
        "http://10.79.0.1:5248/ipxe/52:54:00:79:00:03"
    );

    let stats = server.stats.clone();
    let counters = server.stop();
    assert_eq!(*stats.borrow(), counters, "the final snapshot is published");
    assert_eq!((counters.offers, counters.acks), (3, 3), "{counters:?}");
    assert_eq!(counters.leases_committed, 3);
    assert_eq!(counters.dropped(), 0, "{counters:?}");
    let sightings = backend.sightings.lock().unwrap();
    let macs: Vec<_> = sightings
        .iter()
        .map(|s| (s.mac.as_str(), s.arch.as_deref()))
        .collect();
    assert_eq!(
        macs,
        [
            ("52:54:00:79:00:02", Some("bios")),
            ("52:54:00:79:00:03", Some("uefi-x64"))
        ]
    );
}

#[test]
fn leases_survive_a_server_restart() {
    let lab = Lab::new();
    let store = Arc::new(MemoryLeaseStore::new());
    let backend = Arc::new(RecordingBackend::default());

    let server = RunningServer::start(&lab.server_ns, lab.config(), store.clone(), backend.clone());
    lab.set_client_mac("52:54:00:79:01:01");
    let first = lab.udhcpc(&[])["ip"].clone();
    server.stop();
    assert_eq!(store.snapshot().len(), 1);

    // Same store, new server: the address is still taken...
    let server = RunningServer::start(&lab.server_ns, lab.config(), store.clone(), backend.clone());
    lab.set_client_mac("52:54:00:79:01:02");
    let second = lab.udhcpc(&[])["ip"].clone();
    assert_ne!(
        first, second,
        "a persisted lease must not be handed out again"
    );
    // ...and its owner gets it back.
    lab.set_client_mac("52:54:00:79:01:01");
    assert_eq!(lab.udhcpc(&[])["ip"], first);
    let counters = server.stop();
    assert_eq!(counters.acks, 2);
    assert_eq!(store.snapshot().len(), 2);
}

/// Waits until the interface's IPv6 link-local address has finished duplicate address
/// detection; until then the kernel will not send from it.
fn wait_for_link_local(ns: &str, dev: &str) {
    for _ in 0..100 {
        let out = Command::new("ip")
            .args(["-n", ns, "-6", "addr", "show", "dev", dev])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("fe80::") && !text.contains("tentative") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no usable link-local address on {dev} in {ns}");
}

/// Sends a router solicitation from the client namespace; returns the first ICMPv6 router
/// advertisement received within 3 s.
fn solicit_router(ns: &str, dev: &str) -> Option<Vec<u8>> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::io::Read;
    let (ns, dev) = (ns.to_string(), dev.to_string());
    std::thread::spawn(move || {
        let ns_file = File::open(Path::new("/var/run/netns").join(&ns)).unwrap();
        // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
        assert_eq!(
            unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let index = pxe::dhcp::router_advert::interface_index(&dev).unwrap();
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap();
        socket.bind_device(Some(dev.as_bytes())).unwrap();
        socket.set_multicast_hops_v6(255).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let all_routers = std::net::SocketAddrV6::new("ff02::2".parse().unwrap(), 0, 0, index);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 1500];
        socket
            .send_to(&[133, 0, 0, 0, 0, 0, 0, 0], &SockAddr::from(all_routers))
            .unwrap();
        while std::time::Instant::now() < deadline {
            if let Ok(len) = (&socket).read(&mut buf)
                && buf[0] == 134
            {
                return Some(buf[..len].to_vec());
            }
        }
        None
    })
    .join()
    .unwrap()
}

#[test]
fn router_solicitation_gets_a_bare_advertisement() {
    let lab = Lab::new();
    wait_for_link_local(&lab.server_ns, &lab.server_if);
    wait_for_link_local(&lab.client_ns, &lab.client_if);
    let store: Arc<dyn LeaseStore> = Arc::new(MemoryLeaseStore::new());
    let backend: Arc<dyn BootBackend> = Arc::new(RecordingBackend::default());

    // Off by default: nobody answers.
    let server = RunningServer::start(&lab.server_ns, lab.config(), store.clone(), backend.clone());
    assert_eq!(solicit_router(&lab.client_ns, &lab.client_if), None);
    server.stop();

    let mut config = lab.config();
    config.router_advertisements = true;
    let server = RunningServer::start(&lab.server_ns, config, store, backend);
    let ra = solicit_router(&lab.client_ns, &lab.client_if).expect("router advertisement");
    assert_eq!(ra.len(), 16);
    assert_eq!(
        &ra[4..8],
        &[64, 0, 0, 0],
        "hop limit 64, no M/O flags, router lifetime 0"
    );
    server.stop();
}

/// A PXE client conversation from the client namespace: sends each packet to its address and
/// returns the decoded answers (one per packet, within 3 s each).
fn pxe_client_exchange(
    ns: &str,
    dev: &str,
    packets: Vec<(dhcproto::v4::Message, std::net::SocketAddrV4)>,
) -> Vec<(dhcproto::v4::Message, std::net::SocketAddr)> {
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    use socket2::{Domain, Protocol, Socket, Type};
    let (ns, dev) = (ns.to_string(), dev.to_string());
    std::thread::spawn(move || {
        let ns_file = File::open(Path::new("/var/run/netns").join(&ns)).unwrap();
        // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
        assert_eq!(
            unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        socket.bind_device(Some(dev.as_bytes())).unwrap();
        socket.set_broadcast(true).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket
            .bind(&std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
            .unwrap();
        let socket = std::net::UdpSocket::from(socket);
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut answers = Vec::new();
        for (msg, to) in packets {
            let mut bytes = Vec::new();
            msg.encode(&mut Encoder::new(&mut bytes)).unwrap();
            socket.send_to(&bytes, to).unwrap();
            let mut buf = [0u8; 1500];
            let Ok((len, from)) = socket.recv_from(&mut buf) else {
                break;
            };
            answers.push((
                dhcproto::v4::Message::decode(&mut Decoder::new(&buf[..len])).unwrap(),
                from,
            ));
        }
        answers
    })
    .join()
    .unwrap()
}

fn uefi_pxe_packet(msg_type: dhcproto::v4::MessageType, ciaddr: Ipv4Addr) -> dhcproto::v4::Message {
    use dhcproto::v4::{Architecture, DhcpOption, Message};
    let mut msg = Message::new(
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &[0x52, 0x54, 0, 0x79, 3, 1],
    );
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(msg_type));
    opts.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
    msg
}

/// proxyDHCP: the OFFER on port 67 has no address and, for UEFI, no boot file; the firmware
/// then asks port 4011 and gets the file from there.
#[test]
fn proxy_mode_offer_then_port_4011() {
    use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
    use std::net::{SocketAddr, SocketAddrV4};
    let lab = Lab::new();
    let mut config = lab.config();
    config.mode = pxe::dhcp::DhcpMode::Proxy;
    config.subnets.clear();
    let store: Arc<dyn LeaseStore> = Arc::new(MemoryLeaseStore::new());
    let backend = Arc::new(RecordingBackend::default());
    let server = RunningServer::start(&lab.server_ns, config, store, backend.clone());

    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let answers = pxe_client_exchange(
        &lab.client_ns,
        &lab.client_if,
        vec![(
            uefi_pxe_packet(MessageType::Discover, Ipv4Addr::UNSPECIFIED),
            broadcast,
        )],
    );
    let (offer, from) = &answers[0];
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(*from, SocketAddr::from((SERVER_IP, 67)));
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.siaddr(), SERVER_IP);
    assert!(offer.opts().get(OptionCode::BootfileName).is_none());
    assert_eq!(
        offer.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );

    // The address came from "another" DHCP server; now ask the boot server on 4011.
    let client_ip = Ipv4Addr::new(10, 79, 0, 50);
    sh(&[
        "ip",
        "-n",
        &lab.client_ns,
        "addr",
        "add",
        "10.79.0.50/24",
        "dev",
        &lab.client_if,
    ]);
    let answers = pxe_client_exchange(
        &lab.client_ns,
        &lab.client_if,
        vec![(
            uefi_pxe_packet(MessageType::Request, client_ip),
            SocketAddrV4::new(SERVER_IP, 4011),
        )],
    );
    let (ack, from) = &answers[0];
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(
        *from,
        SocketAddr::from((SERVER_IP, 4011)),
        "answered from the boot server port"
    );
    assert_eq!(
        ack.opts().get(OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(b"snponly.efi".to_vec()))
    );
    assert_eq!(
        ack.opts().get(OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );

    let counters = server.stop();
    assert_eq!(
        (
            counters.proxy_offers,
            counters.proxy_acks,
            counters.offers,
            counters.acks
        ),
        (1, 1, 0, 0)
    );
    assert_eq!(
        counters.leases_committed, 0,
        "proxyDHCP hands out no leases"
    );
    assert_eq!(
        backend.sightings.lock().unwrap().len(),
        1,
        "the 4011 request within 10 s is the same sighting"
    );
}

#[test]
fn failed_commit_withholds_the_ack() {
    let lab = Lab::new();
    let store = Arc::new(MemoryLeaseStore::new());
    store.set_failing(true);
    let backend = Arc::new(RecordingBackend::default());
    let server = RunningServer::start(&lab.server_ns, lab.config(), store.clone(), backend);
    lab.set_client_mac("52:54:00:79:02:01");
    let out = Command::new("timeout")
        .args([
            "20",
            "ip",
            "netns",
            "exec",
            &lab.client_ns,
            "busybox",
            "udhcpc",
        ])
        .args([
            "-i",
            &lab.client_if,
            "-f",
            "-q",
            "-n",
            "-t",
            "2",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "udhcpc must not get a lease the store could not persist"
    );
    let counters = server.stop();
    assert!(
        counters.offers >= 1 && counters.commit_failures >= 1,
        "{counters:?}"
    );
    assert!(store.snapshot().is_empty());
}
