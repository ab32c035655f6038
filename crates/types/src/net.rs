//! Network records shared by the PXE services and the store: DHCP leases and discoveries.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A DHCP lease. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// Lowercase colon form.
    pub mac: String,
    /// Name of the subnet (its CIDR) the lease belongs to.
    pub subnet: String,
    pub hostname: Option<String>,
    pub starts_at: i64,
    pub expires_at: i64,
    /// Offered but not yet confirmed by REQUEST.
    pub offered: bool,
}

/// A MAC that asked to boot, seen by DHCP or the HTTP boot service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    pub mac: String,
    pub ip: Option<Ipv4Addr>,
    /// Client architecture as the firmware named it: "bios", "uefi-x64", "uefi-http", …
    pub arch: Option<String>,
    /// "dhcp", "tftp" or "http".
    pub source: String,
    pub at: i64,
}

/// A discovered device, as the APIs list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    pub mac: String,
    pub ip: Option<Ipv4Addr>,
    pub arch: Option<String>,
    pub first_seen: i64,
    pub last_seen: i64,
    /// The machine this MAC belongs to, once known (enlisted).
    pub machine_id: Option<crate::MachineId>,
}
