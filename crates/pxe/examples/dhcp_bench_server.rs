//! Ingot's DHCP server, standalone, for the benchmark (`scripts/bench/dhcp.sh`) and manual lab
//! use. Run it only inside a network namespace you created:
//!
//! ```sh
//! ip netns exec dsrv dhcp_bench_server --interface veth-s --server-ip 10.88.0.1 \
//!     --subnet 10.88.0.0/16 --range 10.88.0.10-10.88.254.254 --lease-file /tmp/leases
//! ```
//!
//! Leases persist to an append-only text file, one line per lease (`ip mac subnet starts
//! expires`) or removal (`- ip`); the last line for an address wins on load. Each
//! `LeaseStore::commit` call (one server batch) is one `write` plus one `fdatasync`, so a lease
//! is on disk before its ACK is sent — stronger than Kea's memfile, which writes without
//! fsync. Prints the counters on SIGINT/SIGTERM.

use async_trait::async_trait;
use ingot_types::boot::BootDecision;
use ingot_types::net::{Lease, Sighting};
use pxe::backend::{BackendError, BootBackend, ClientInfo, LeaseStore};
use pxe::dhcp::{DhcpConfig, DhcpMode, SubnetConfig, server};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{SignalKind, signal};

/// Append-only lease file with one fdatasync per commit batch.
struct AppendFileLeaseStore {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl AppendFileLeaseStore {
    fn open(path: PathBuf) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(AppendFileLeaseStore {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    async fn append(&self, text: String) -> Result<(), BackendError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = file.lock().expect("lease file lock");
            f.write_all(text.as_bytes())?;
            f.sync_data()
        })
        .await
        .map_err(|e| BackendError(e.to_string()))?
        .map_err(|e| BackendError(format!("lease file: {e}")))
    }
}

fn parse_line(line: &str) -> Option<Result<Lease, Ipv4Addr>> {
    let mut parts = line.split_whitespace();
    let first = parts.next()?;
    if first == "-" {
        return Some(Err(parts.next()?.parse().ok()?));
    }
    Some(Ok(Lease {
        ip: first.parse().ok()?,
        mac: parts.next()?.to_string(),
        subnet: parts.next()?.to_string(),
        starts_at: parts.next()?.parse().ok()?,
        expires_at: parts.next()?.parse().ok()?,
        hostname: None,
        offered: false,
    }))
}

#[async_trait]
impl LeaseStore for AppendFileLeaseStore {
    async fn load_all(&self) -> Result<Vec<Lease>, BackendError> {
        let file = File::open(&self.path).map_err(|e| BackendError(e.to_string()))?;
        let mut leases = BTreeMap::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| BackendError(e.to_string()))?;
            match parse_line(&line) {
                Some(Ok(lease)) => {
                    leases.insert(lease.ip, lease);
                }
                Some(Err(ip)) => {
                    leases.remove(&ip);
                }
                None => {}
            }
        }
        Ok(leases.into_values().collect())
    }

    async fn commit(&self, leases: &[Lease]) -> Result<(), BackendError> {
        let mut text = String::with_capacity(leases.len() * 64);
        for l in leases {
            text.push_str(&format!(
                "{} {} {} {} {}\n",
                l.ip, l.mac, l.subnet, l.starts_at, l.expires_at
            ));
        }
        self.append(text).await
    }

    async fn remove(&self, ip: Ipv4Addr) -> Result<(), BackendError> {
        self.append(format!("- {ip}\n")).await
    }
}

struct NoBackend;

#[async_trait]
impl BootBackend for NoBackend {
    async fn boot_decision(
        &self,
        _mac: &str,
        _client: &ClientInfo,
    ) -> Result<BootDecision, BackendError> {
        Err(BackendError(
            "standalone DHCP server has no boot backend".into(),
        ))
    }

    async fn record_sighting(&self, _sighting: Sighting) -> Result<(), BackendError> {
        Ok(())
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: dhcp_bench_server --interface IF --server-ip IP --subnet CIDR --range FIRST-LAST \
         --lease-file PATH [--lease-time SECS] [--proxy] [--router-advertisements]"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut interface, mut server_ip, mut subnet, mut range, mut lease_file) =
        (None, None, None, None, None);
    let (mut lease_time, mut proxy, mut router_advertisements) = (600u32, false, false);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--interface" => interface = Some(value()),
            "--server-ip" => server_ip = Some(value().parse::<Ipv4Addr>()?),
            "--subnet" => subnet = Some(value().parse::<ipnet::Ipv4Net>()?),
            "--range" => {
                let v = value();
                let (a, b) = v.split_once('-').unwrap_or_else(|| usage());
                range = Some((a.parse::<Ipv4Addr>()?, b.parse::<Ipv4Addr>()?));
            }
            "--lease-file" => lease_file = Some(PathBuf::from(value())),
            "--lease-time" => lease_time = value().parse()?,
            "--proxy" => proxy = true,
            "--router-advertisements" => router_advertisements = true,
            _ => usage(),
        }
    }
    let (Some(interface), Some(server_ip), Some(lease_file)) = (interface, server_ip, lease_file)
    else {
        usage()
    };
    let subnets = match (subnet, range) {
        (Some(subnet), Some(range)) => vec![SubnetConfig::new(subnet, vec![range])],
        (None, None) if proxy => vec![],
        _ => usage(),
    };
    let mut config = DhcpConfig::new(interface, server_ip, subnets);
    config.lease_time = lease_time;
    config.router_advertisements = router_advertisements;
    if proxy {
        config.mode = DhcpMode::Proxy;
    }

    let store = Arc::new(AppendFileLeaseStore::open(lease_file)?);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let counters = server::run(config, store, Arc::new(NoBackend), shutdown).await?;
    eprintln!("{counters:#?}");
    Ok(())
}
