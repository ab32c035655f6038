//! DHCP server settings: one interface, its subnets, lease times and the boot files to hand out.

use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Full DHCP (addresses and boot info) or proxyDHCP (boot info only; another server hands out
/// addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DhcpMode {
    #[default]
    Full,
    Proxy,
}

#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// Interface the sockets are bound to (SO_BINDTODEVICE). Packets from elsewhere never arrive.
    pub interface: String,
    /// Our address on that interface: server identifier (54), next-server (siaddr) and the host
    /// in boot URLs.
    pub server_ip: Ipv4Addr,
    pub mode: DhcpMode,
    pub subnets: Vec<SubnetConfig>,
    /// Lease time for ordinary clients, seconds (MAAS default 600).
    pub lease_time: u32,
    /// Lease time for PXE firmware and iPXE, seconds. MAAS gives PXE clients 30 s so the
    /// address goes back to the pool quickly once the booted OS takes over with its own client.
    pub pxe_lease_time: u32,
    /// How long an offered address stays reserved for the client it was offered to, seconds.
    pub offer_hold: u32,
    /// How long a DECLINEd address is kept out of the pool, seconds (someone else uses it).
    pub decline_quarantine: u32,
    /// Answer REQUESTs for addresses we have no record of when they are valid and free on our
    /// subnet (dnsmasq's `dhcp-authoritative`). Lets clients keep their address across a lost
    /// lease database; a non-authoritative server stays silent instead (RFC 2131 §4.3.2).
    pub authoritative: bool,
    /// Answer IPv6 router solicitations on the interface with a bare router advertisement
    /// (no prefixes, lifetime 0) so iPXE does not wait for IPv6 configuration; see
    /// [`super::router_advert`]. For links without an IPv6 router of their own.
    pub router_advertisements: bool,
    pub boot: BootConfig,
}

impl DhcpConfig {
    /// A full-DHCP config with MAAS-like defaults for the given interface and subnets.
    pub fn new(
        interface: impl Into<String>,
        server_ip: Ipv4Addr,
        subnets: Vec<SubnetConfig>,
    ) -> Self {
        DhcpConfig {
            interface: interface.into(),
            server_ip,
            mode: DhcpMode::Full,
            subnets,
            lease_time: 600,
            pxe_lease_time: 30,
            offer_hold: 30,
            decline_quarantine: 600,
            authoritative: true,
            router_advertisements: false,
            boot: BootConfig::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SubnetConfig {
    pub cidr: Ipv4Net,
    /// Inclusive dynamic ranges handed out to unknown clients.
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Static reservations, MAC (lowercase colon form) → address. A reserved address is never
    /// handed to another client, even when it lies inside a dynamic range.
    pub reservations: HashMap<String, Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
}

impl SubnetConfig {
    pub fn new(cidr: Ipv4Net, ranges: Vec<(Ipv4Addr, Ipv4Addr)>) -> Self {
        SubnetConfig {
            cidr: cidr.trunc(),
            ranges,
            reservations: HashMap::new(),
            router: None,
            dns_servers: Vec::new(),
            domain_name: None,
        }
    }
}

/// Boot files and URLs. URL templates understand `{server}` (our address), `{mac}` (lowercase
/// colon MAC) and `{arch}` (see [`crate::dhcp::boot::ClientArch::name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// BIOS PXE ROMs (arch 0): chain-load iPXE over TFTP.
    pub bios_file: String,
    /// UEFI x64 PXE (arch 7 and 9): chain-load iPXE over TFTP. `snponly.efi` uses the firmware's
    /// own NIC driver (works with any NIC); `ipxe.efi` carries iPXE's drivers.
    pub uefi_x64_file: String,
    /// UEFI arm64 PXE (arch 11), if served.
    pub uefi_arm64_file: Option<String>,
    /// UEFI HTTP boot, x64 (arch 16): an absolute URL of the iPXE EFI binary.
    pub uefi_http_x64_url: String,
    /// UEFI HTTP boot, arm64 (arch 19), if served.
    pub uefi_http_arm64_url: Option<String>,
    /// What iPXE itself (option 175 or user class "iPXE") gets: the per-MAC script.
    pub ipxe_script_url: String,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            bios_file: "undionly.kpxe".into(),
            uefi_x64_file: "snponly.efi".into(),
            uefi_arm64_file: None,
            uefi_http_x64_url: "http://{server}:5248/images/ipxe.efi".into(),
            uefi_http_arm64_url: None,
            ipxe_script_url: "http://{server}:5248/ipxe/{mac}".into(),
        }
    }
}

/// Fills a boot URL template.
pub fn expand_template(template: &str, server: Ipv4Addr, mac: &str, arch: &str) -> String {
    template
        .replace("{server}", &server.to_string())
        .replace("{mac}", mac)
        .replace("{arch}", arch)
}
