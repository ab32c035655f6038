//! What the PXE services need from the region, as small traits over plain data.

use async_trait::async_trait;
use ingot_types::boot::BootDecision;
use ingot_types::net::{Lease, Sighting};
use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
#[error("boot backend unavailable: {0}")]
pub struct BackendError(pub String);

/// Firmware facts about a booting client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// "bios", "uefi-x64", "uefi-http", … (see the DHCP core's architecture mapping).
    pub arch: Option<String>,
    pub ip: Option<Ipv4Addr>,
}

#[async_trait]
pub trait BootBackend: Send + Sync + 'static {
    /// What the machine with this MAC boots now. Unknown MACs get `BootPurpose::Enlist`.
    /// For ephemeral boots the decision carries a fresh one-time agent token.
    async fn boot_decision(
        &self,
        mac: &str,
        client: &ClientInfo,
    ) -> Result<BootDecision, BackendError>;

    /// Records that a MAC asked to boot (discovery).
    async fn record_sighting(&self, sighting: Sighting) -> Result<(), BackendError>;
}

/// Durable DHCP leases. Implementations must make `commit` atomic per call.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    async fn load_all(&self) -> Result<Vec<Lease>, BackendError>;
    /// Inserts or replaces the leases (keyed by IP) in one transaction.
    async fn commit(&self, leases: &[Lease]) -> Result<(), BackendError>;
    async fn remove(&self, ip: Ipv4Addr) -> Result<(), BackendError>;
}
