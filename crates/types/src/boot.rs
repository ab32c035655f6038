//! What a netbooting machine should do, decided by the engine from its lifecycle status and
//! rendered by the PXE HTTP service (as an iPXE script) or acted on by the sim fleet.

use crate::{MachineId, NodeStatus};
use serde::{Deserialize, Serialize};

/// MAAS's boot purposes, narrowed to what Ingot serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootPurpose {
    /// Unknown MAC: boot the ephemeral environment and enlist.
    Enlist,
    /// Commissioning (and erase): boot the ephemeral environment with instructions.
    Commission,
    /// Deploying: boot the ephemeral environment to write the image.
    Deploy,
    /// Deployed and most other states: leave the network boot and boot the local disk.
    LocalDisk,
}

/// Pure choice of boot purpose from a known machine's status (MAAS get_boot_purpose).
pub fn boot_purpose(status: NodeStatus) -> BootPurpose {
    use NodeStatus::*;
    match status {
        New | Commissioning | DiskErasing | Testing | EnteringRescueMode | RescueMode => {
            BootPurpose::Commission
        }
        Deploying => BootPurpose::Deploy,
        _ => BootPurpose::LocalDisk,
    }
}

/// A per-boot decision with the one-time credential the ephemeral agent presents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootDecision {
    pub purpose: BootPurpose,
    pub machine_id: Option<MachineId>,
    /// One-time agent credential (plaintext, only ever on the kernel command line).
    /// None for [`BootPurpose::LocalDisk`].
    pub boot_token: Option<String>,
    /// Base URL of the region the agent talks to.
    pub region_url: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_purpose_by_status() {
        use NodeStatus::*;
        for (status, want) in [
            (New, BootPurpose::Commission),
            (Commissioning, BootPurpose::Commission),
            (DiskErasing, BootPurpose::Commission),
            (Deploying, BootPurpose::Deploy),
            (Deployed, BootPurpose::LocalDisk),
            (Ready, BootPurpose::LocalDisk),
            (Allocated, BootPurpose::LocalDisk),
            (Broken, BootPurpose::LocalDisk),
        ] {
            assert_eq!(boot_purpose(status), want, "{status:?}");
        }
    }
}
