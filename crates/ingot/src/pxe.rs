//! `ingot serve --pxe-interface …`: runs the DHCP, TFTP and HTTP boot services on one
//! interface, reaching the region through the engine (boot decisions, sightings) and the
//! store (leases).

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use ingot_engine::Engine;
use ingot_store::Store;
use ingot_types::boot::BootDecision;
use ingot_types::net::{Lease, Sighting};
use pxe::backend::{BackendError, BootBackend, ClientInfo, LeaseStore};
use pxe::dhcp::{DhcpConfig, DhcpMode, SubnetConfig};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The region as the PXE services see it.
pub struct RegionBackend(pub Engine);

#[async_trait]
impl BootBackend for RegionBackend {
    async fn boot_decision(
        &self,
        mac: &str,
        _client: &ClientInfo,
    ) -> Result<BootDecision, BackendError> {
        self.0
            .boot_decision(mac)
            .await
            .map_err(|e| BackendError(ingot_engine::error_chain(&e)))
    }

    async fn record_sighting(&self, sighting: Sighting) -> Result<(), BackendError> {
        self.0
            .record_sighting(&sighting)
            .await
            .map_err(|e| BackendError(ingot_engine::error_chain(&e)))
    }
}

/// DHCP leases in the region's database, so they survive restarts.
pub struct StoreLeases(pub Store);

#[async_trait]
impl LeaseStore for StoreLeases {
    async fn load_all(&self) -> Result<Vec<Lease>, BackendError> {
        self.0
            .load_leases()
            .await
            .map_err(|e| BackendError(e.to_string()))
    }
    async fn commit(&self, leases: &[Lease]) -> Result<(), BackendError> {
        self.0
            .commit_leases(leases)
            .await
            .map_err(|e| BackendError(e.to_string()))
    }
    async fn remove(&self, ip: Ipv4Addr) -> Result<(), BackendError> {
        self.0
            .remove_lease(ip)
            .await
            .map_err(|e| BackendError(e.to_string()))
    }
}

fn unix_now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What the PXE flags asked for.
#[derive(Debug, Clone)]
pub struct PxeSettings {
    pub interface: String,
    pub subnet: ipnet::Ipv4Net,
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub proxy: bool,
    pub router_advertisements: bool,
    pub http_port: u16,
    pub tftp_root: PathBuf,
    pub images_dir: PathBuf,
    /// Subnets behind DHCP relays (from the config file's `[[pxe_subnets]]`).
    pub relay_subnets: Vec<RelaySubnet>,
}

/// A subnet reached through a DHCP relay; the relay's giaddr selects it.
#[derive(Debug, Clone, PartialEq)]
pub struct RelaySubnet {
    pub subnet: ipnet::Ipv4Net,
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub reservations: Vec<(String, Ipv4Addr)>,
}

impl RelaySubnet {
    pub fn from_file(f: &crate::config::FileSubnet) -> Result<Self> {
        let subnet: ipnet::Ipv4Net = f
            .subnet
            .parse()
            .with_context(|| format!("pxe_subnets: {:?} is not an IPv4 CIDR", f.subnet))?;
        let range = f.range.as_deref().map(parse_range).transpose()?;
        if let Some((a, b)) = range
            && !(subnet.contains(&a) && subnet.contains(&b))
        {
            bail!("pxe_subnets: range {a}-{b} is not inside {subnet}");
        }
        let mut reservations = Vec::new();
        for (mac, ip) in &f.reservations {
            let norm = ingot_types::inventory::normalize_mac(mac)
                .with_context(|| format!("pxe_subnets: reservation key {mac:?} is not a MAC"))?;
            if !subnet.contains(ip) {
                bail!("pxe_subnets: reservation {ip} for {mac} is not inside {subnet}");
            }
            reservations.push((norm, *ip));
        }
        Ok(RelaySubnet {
            subnet,
            range,
            router: f.router,
            dns: f.dns.clone(),
            reservations,
        })
    }

    fn to_dhcp(&self) -> SubnetConfig {
        let mut c = SubnetConfig::new(self.subnet, self.range.into_iter().collect());
        c.router = self.router;
        c.dns_servers = self.dns.clone();
        c.reservations = self.reservations.iter().cloned().collect();
        c
    }
}

/// Parses `START-END`.
pub fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let (a, b) = s
        .split_once('-')
        .context("--pxe-range must be START-END, e.g. 10.0.0.100-10.0.0.200")?;
    let (a, b): (Ipv4Addr, Ipv4Addr) = (a.trim().parse()?, b.trim().parse()?);
    if u32::from(a) > u32::from(b) {
        bail!("--pxe-range: {a} is after {b}");
    }
    Ok((a, b))
}

/// The interface's IPv4 address inside `subnet` (it becomes next-server and the HTTP host).
fn interface_address(interface: &str, subnet: &ipnet::Ipv4Net) -> Result<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", interface])
        .output()
        .context("running `ip addr` to find the PXE interface's address")?;
    if !out.status.success() {
        bail!(
            "interface {interface:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .filter_map(|w| {
            w.split_once('/')
                .and_then(|(ip, _)| ip.parse::<Ipv4Addr>().ok())
        })
        .find(|ip| subnet.contains(ip))
        .with_context(|| format!("interface {interface:?} has no IPv4 address in {subnet}"))
}

/// Starts the three services; they stop when `shutdown` is cancelled.
pub async fn start(
    s: &PxeSettings,
    engine: &Engine,
    shutdown: CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let server_ip = interface_address(&s.interface, &s.subnet)?;
    if let Some((a, b)) = s.range
        && !(s.subnet.contains(&a) && s.subnet.contains(&b))
    {
        bail!(
            "--pxe-range {a}-{b} is not inside --pxe-subnet {}",
            s.subnet
        );
    }
    if s.range.is_none() && !s.proxy {
        bail!("--pxe-range is required unless --proxy-dhcp is set");
    }
    let backend: Arc<dyn BootBackend> = Arc::new(RegionBackend(engine.clone()));
    let mut tasks = Vec::new();

    let mut dhcp = DhcpConfig::new(
        &s.interface,
        server_ip,
        vec![SubnetConfig::new(s.subnet, s.range.into_iter().collect())],
    );
    dhcp.subnets
        .extend(s.relay_subnets.iter().map(RelaySubnet::to_dhcp));
    dhcp.router_advertisements = s.router_advertisements;
    dhcp.mode = if s.proxy {
        DhcpMode::Proxy
    } else {
        DhcpMode::Full
    };
    // The arch lets the script pick the right local-boot method (sanboot on BIOS, exit on UEFI).
    dhcp.boot.ipxe_script_url = format!(
        "http://{{server}}:{}/ipxe/{{mac}}?arch={{arch}}",
        s.http_port
    );
    dhcp.boot.uefi_http_x64_url = format!("http://{{server}}:{}/images/ipxe.efi", s.http_port);
    let leases: Arc<dyn LeaseStore> = Arc::new(StoreLeases(engine.store().clone()));
    let (b, stop) = (backend.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        match pxe::dhcp::server::run(dhcp, leases, b, stop.cancelled_owned()).await {
            Ok(counters) => tracing::info!(?counters, "DHCP server stopped"),
            Err(e) => tracing::error!(error = %ingot_engine::error_chain(&e), "DHCP server failed"),
        }
    }));

    // Leases a day past expiry are history: purge them hourly.
    let (store, stop) = (engine.store().clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let day_ago = unix_now_secs() - 86_400;
                    match store.purge_expired_leases(day_ago).await {
                        Ok(n) if n > 0 => tracing::info!(purged = n, "expired DHCP leases purged"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "purging expired leases failed"),
                    }
                }
            }
        }
    }));

    let tftp = pxe::tftp::TftpConfig::new(&s.tftp_root);
    let (b, stop) = (backend.clone(), shutdown.clone());
    let tftp_addr = SocketAddr::from((server_ip, pxe::tftp::server::TFTP_PORT));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = pxe::tftp::server::run(tftp_addr, tftp, b, stop.cancelled_owned()).await {
            tracing::error!(error = %ingot_engine::error_chain(&e), "TFTP server failed");
        }
    }));

    if !s.images_dir.join("ephemeral/vmlinuz").exists() {
        tracing::warn!(
            images_dir = %s.images_dir.display(),
            "no ephemeral environment under <images-dir>/ephemeral: build it with \
             images/ephemeral/build.sh and link its output directory there"
        );
    }
    // UEFI HTTP boot fetches iPXE itself from /images/ipxe.efi.
    std::fs::create_dir_all(&s.images_dir)
        .with_context(|| format!("creating {}", s.images_dir.display()))?;
    let (src, dst) = (s.tftp_root.join("ipxe.efi"), s.images_dir.join("ipxe.efi"));
    if !dst.exists() && src.exists() {
        std::fs::copy(&src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    let mut http = pxe::http::HttpConfig::new(&s.images_dir);
    http.public_url = Some(format!("http://{server_ip}:{}", s.http_port));
    let router = pxe::http::router(backend, http).context("loading iPXE templates")?;
    let http_addr = SocketAddr::from((server_ip, s.http_port));
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding HTTP boot on {http_addr}"))?;
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = pxe::http::serve(listener, router, stop.cancelled_owned()).await {
            tracing::error!(error = %e, "HTTP boot service failed");
        }
    }));
    tracing::info!(interface = %s.interface, %server_ip, proxy = s.proxy, "PXE services running (DHCP, TFTP, HTTP boot)");
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_subnets_from_the_config_file() {
        let file: crate::config::FileConfig = toml::from_str(
            r#"
            [[pxe_subnets]]
            subnet = "10.20.0.0/24"
            range = "10.20.0.100-10.20.0.200"
            router = "10.20.0.1"
            dns = ["10.20.0.2"]
            reservations = { "52-54-00-AA-BB-CC" = "10.20.0.50" }
            "#,
        )
        .unwrap();
        let r = RelaySubnet::from_file(&file.pxe_subnets[0]).unwrap();
        assert_eq!(r.subnet.to_string(), "10.20.0.0/24");
        assert_eq!(
            r.reservations,
            vec![(
                "52:54:00:aa:bb:cc".to_owned(),
                "10.20.0.50".parse().unwrap()
            )]
        );
        let dhcp = r.to_dhcp();
        assert_eq!(dhcp.router, Some("10.20.0.1".parse().unwrap()));
        assert_eq!(
            dhcp.ranges,
            vec![(
                "10.20.0.100".parse().unwrap(),
                "10.20.0.200".parse().unwrap()
            )]
        );
        for (bad, why) in [
            (
                r#"[[pxe_subnets]]
subnet = "10.20.0.0/24"
range = "10.30.0.1-10.30.0.9""#,
                "not inside",
            ),
            (
                r#"[[pxe_subnets]]
subnet = "nope""#,
                "not an IPv4 CIDR",
            ),
            (
                r#"[[pxe_subnets]]
subnet = "10.20.0.0/24"
reservations = { "zz" = "10.20.0.5" }"#,
                "not a MAC",
            ),
        ] {
            let f: crate::config::FileConfig = toml::from_str(bad).unwrap();
            let err = RelaySubnet::from_file(&f.pxe_subnets[0]).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{bad}: {err:#}");
        }
        let unknown = toml::from_str::<crate::config::FileConfig>(
            "[[pxe_subnets]]\nsubnet = \"10.0.0.0/8\"\nrnage = \"x\"\n",
        );
        assert!(unknown.is_err(), "unknown keys are refused");
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("10.0.0.10-10.0.0.20").unwrap(),
            ("10.0.0.10".parse().unwrap(), "10.0.0.20".parse().unwrap())
        );
        assert!(parse_range("10.0.0.20-10.0.0.10").is_err());
        assert!(parse_range("10.0.0.20").is_err());
        assert!(parse_range("a-b").is_err());
    }
}
