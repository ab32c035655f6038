//! Settings: flags beat environment variables, which beat the optional TOML config file,
//! which beats the defaults.

use anyhow::{Context, Result};
use clap::Args;
use ingot_store::{SecretKey, Store};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug)]
pub struct DbArgs {
    /// Where Ingot keeps its SQLite database and secret key.
    #[arg(long, env = "INGOT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `postgres://…` for PostgreSQL (scale-out); default: SQLite under --data-dir.
    #[arg(long, env = "INGOT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Hex-encoded 32-byte key that encrypts BMC passwords; every region replica needs the
    /// same one. Default: read from (or created at) <data-dir>/secret.key.
    #[arg(long, env = "INGOT_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
}

impl DbArgs {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./ingot-data"))
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir().join("ingot.db").display()
            )
        })
    }

    pub async fn open(&self) -> Result<Store> {
        let dir = self.data_dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        let key = match &self.secret_key {
            Some(hex) => SecretKey::from_hex(hex).context("--secret-key must be 64 hex digits")?,
            None => load_or_create_key(&dir.join("secret.key"))?,
        };
        let url = self.database_url();
        Store::connect(&url, key)
            .await
            .with_context(|| format!("opening database {}", redact_url(&url)))
    }
}

fn load_or_create_key(path: &Path) -> Result<SecretKey> {
    if path.exists() {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return SecretKey::from_hex(&text)
            .with_context(|| format!("{} is not a 64-hex-digit key", path.display()));
    }
    let key = SecretKey::generate();
    write_private(path, &key.to_hex()).with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Hides the password in a database URL for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Optional TOML config file; keys are the long flag names with '_' for '-'.
    #[arg(long, env = "INGOT_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbArgs,
    /// Region API address (MAAS's port by default).
    #[arg(long, env = "INGOT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// URL machines and agents use to reach this region (default: derived from --listen).
    #[arg(long, env = "INGOT_REGION_URL")]
    pub region_url: Option<String>,
    /// Ensure this many simulated machines exist (the same ones across restarts).
    #[arg(long, env = "INGOT_SIM_MACHINES")]
    pub sim_machines: Option<usize>,
    /// Simulated boot/agent step time for sim machines, in milliseconds.
    #[arg(long, env = "INGOT_SIM_DELAY_MS")]
    pub sim_delay_ms: Option<u64>,
    /// Commissioning deadline in seconds before "Failed commissioning".
    #[arg(long, env = "INGOT_COMMISSION_TIMEOUT")]
    pub commission_timeout: Option<u64>,
    /// Deployment deadline in seconds before "Failed deployment".
    #[arg(long, env = "INGOT_DEPLOY_TIMEOUT")]
    pub deploy_timeout: Option<u64>,
    /// Power-state sync interval in seconds (0 disables).
    #[arg(long, env = "INGOT_POWER_SYNC_INTERVAL")]
    pub power_sync_interval: Option<u64>,
    /// Log format: text or json.
    #[arg(long, env = "INGOT_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Run the PXE services (DHCP, TFTP, HTTP boot) on this interface only.
    #[arg(long, env = "INGOT_PXE_INTERFACE")]
    pub pxe_interface: Option<String>,
    /// The PXE subnet (CIDR); the interface's address in it is next-server and HTTP host.
    #[arg(long, env = "INGOT_PXE_SUBNET")]
    pub pxe_subnet: Option<String>,
    /// Dynamic range START-END handed out by Ingot's DHCP (not needed with --proxy-dhcp).
    #[arg(long, env = "INGOT_PXE_RANGE")]
    pub pxe_range: Option<String>,
    /// proxyDHCP: leave addresses to the site's DHCP server, answer only the PXE part.
    #[arg(long, env = "INGOT_PROXY_DHCP")]
    pub proxy_dhcp: bool,
    /// Answer IPv6 router solicitations with an empty advertisement (lifetime 0) so iPXE stops
    /// waiting ~16 s for IPv6 before its first download. Default: on in full DHCP mode (Ingot
    /// owns the provisioning network), off with --proxy-dhcp (a site network with its own routers).
    #[arg(long, env = "INGOT_PXE_ROUTER_ADVERTISEMENTS")]
    pub pxe_router_advertisements: Option<bool>,
    /// HTTP boot port (MAAS's rack uses 5248).
    #[arg(long, env = "INGOT_PXE_HTTP_PORT")]
    pub pxe_http_port: Option<u16>,
    /// Directory with the iPXE binaries served by TFTP (Debian's `ipxe` package).
    #[arg(long, env = "INGOT_TFTP_ROOT")]
    pub tftp_root: Option<PathBuf>,
    /// Directory served under /images/ (ephemeral kernel and initrd, deploy images).
    #[arg(long, env = "INGOT_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
}

/// The config file's shape (all optional).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub listen: Option<SocketAddr>,
    pub region_url: Option<String>,
    pub sim_machines: Option<usize>,
    pub sim_delay_ms: Option<u64>,
    pub commission_timeout: Option<u64>,
    pub deploy_timeout: Option<u64>,
    pub power_sync_interval: Option<u64>,
    pub log_format: Option<String>,
    pub pxe_interface: Option<String>,
    pub pxe_subnet: Option<String>,
    pub pxe_range: Option<String>,
    pub proxy_dhcp: Option<bool>,
    pub pxe_router_advertisements: Option<bool>,
    pub pxe_http_port: Option<u16>,
    pub tftp_root: Option<PathBuf>,
    pub images_dir: Option<PathBuf>,
    /// Further subnets served through DHCP relays (routed racks), selected by giaddr:
    /// `[[pxe_subnets]]` tables with `subnet`, `range`, and optional `router`, `dns`,
    /// `reservations = { "mac" = "ip" }`.
    #[serde(default)]
    pub pxe_subnets: Vec<FileSubnet>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileSubnet {
    pub subnet: String,
    pub range: Option<String>,
    pub router: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
    #[serde(default)]
    pub reservations: std::collections::BTreeMap<String, std::net::Ipv4Addr>,
}

/// Settings after precedence is applied.
#[derive(Debug, Clone)]
pub struct Settings {
    pub db: DbArgs,
    pub listen: SocketAddr,
    pub region_url: String,
    pub sim_machines: usize,
    pub sim_delay_ms: u64,
    pub commission_timeout: u64,
    pub deploy_timeout: u64,
    pub power_sync_interval: u64,
    pub log_format: String,
    pub pxe: Option<crate::pxe::PxeSettings>,
}

impl ServeArgs {
    pub fn resolve(&self) -> Result<Settings> {
        let file: FileConfig = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing config {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "0.0.0.0:5240".parse().expect("valid default"));
        let region_url = self
            .region_url
            .clone()
            .or(file.region_url)
            .unwrap_or_else(|| {
                let host = if listen.ip().is_unspecified() {
                    "127.0.0.1".to_owned()
                } else {
                    listen.ip().to_string()
                };
                format!("http://{host}:{}", listen.port())
            });
        let log_format = self
            .log_format
            .clone()
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        if !matches!(log_format.as_str(), "text" | "json") {
            anyhow::bail!("--log-format must be text or json, not {log_format:?}");
        }
        let pxe = match self.pxe_interface.clone().or(file.pxe_interface) {
            None => None,
            Some(interface) => {
                let subnet = self
                    .pxe_subnet
                    .clone()
                    .or(file.pxe_subnet)
                    .context("--pxe-subnet is required with --pxe-interface")?;
                let subnet: ipnet::Ipv4Net = subnet
                    .parse()
                    .with_context(|| format!("--pxe-subnet {subnet:?} is not an IPv4 CIDR"))?;
                let range = self
                    .pxe_range
                    .clone()
                    .or(file.pxe_range)
                    .map(|r| crate::pxe::parse_range(&r))
                    .transpose()?;
                let data_dir = self
                    .db
                    .data_dir
                    .clone()
                    .or(file.data_dir.clone())
                    .unwrap_or_else(|| PathBuf::from("./ingot-data"));
                let proxy = self.proxy_dhcp || file.proxy_dhcp.unwrap_or(false);
                Some(crate::pxe::PxeSettings {
                    interface,
                    subnet,
                    range,
                    proxy,
                    router_advertisements: self
                        .pxe_router_advertisements
                        .or(file.pxe_router_advertisements)
                        .unwrap_or(!proxy),
                    http_port: self.pxe_http_port.or(file.pxe_http_port).unwrap_or(5248),
                    tftp_root: self
                        .tftp_root
                        .clone()
                        .or(file.tftp_root)
                        .unwrap_or_else(|| PathBuf::from("/usr/lib/ipxe")),
                    relay_subnets: file
                        .pxe_subnets
                        .iter()
                        .map(crate::pxe::RelaySubnet::from_file)
                        .collect::<Result<_>>()?,
                    images_dir: self
                        .images_dir
                        .clone()
                        .or(file.images_dir)
                        .unwrap_or_else(|| data_dir.join("images")),
                })
            }
        };
        Ok(Settings {
            pxe,
            db: DbArgs {
                data_dir: self.db.data_dir.clone().or(file.data_dir),
                database_url: self.db.database_url.clone().or(file.database_url),
                secret_key: self.db.secret_key.clone(),
            },
            listen,
            region_url,
            sim_machines: self.sim_machines.or(file.sim_machines).unwrap_or(0),
            sim_delay_ms: self.sim_delay_ms.or(file.sim_delay_ms).unwrap_or(500),
            commission_timeout: self
                .commission_timeout
                .or(file.commission_timeout)
                .unwrap_or(30 * 60),
            deploy_timeout: self
                .deploy_timeout
                .or(file.deploy_timeout)
                .unwrap_or(30 * 60),
            power_sync_interval: self
                .power_sync_interval
                .or(file.power_sync_interval)
                .unwrap_or(60),
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        s: ServeArgs,
    }

    #[test]
    fn precedence_flag_over_file_over_default() {
        let dir = std::env::temp_dir().join(format!("ingot-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ingot.toml");
        std::fs::write(&f, "sim_machines = 7\nlisten = \"127.0.0.1:6000\"\n").unwrap();
        let t = T::parse_from([
            "x",
            "--config",
            f.to_str().unwrap(),
            "--listen",
            "127.0.0.1:7000",
        ]);
        let s = t.s.resolve().unwrap();
        assert_eq!(s.listen.port(), 7000, "flag wins");
        assert_eq!(s.sim_machines, 7, "file beats default");
        assert_eq!(s.region_url, "http://127.0.0.1:7000");
        assert_eq!(s.commission_timeout, 1800, "default");
        std::fs::write(&f, "bogus = 1\n").unwrap();
        let t = T::parse_from(["x", "--config", f.to_str().unwrap()]);
        assert!(format!("{:#}", t.s.resolve().unwrap_err()).contains("bogus"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redacts_database_passwords() {
        assert_eq!(
            redact_url("postgres://ingot:pw@127.0.0.1/db"),
            "postgres://ingot:***@127.0.0.1/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
