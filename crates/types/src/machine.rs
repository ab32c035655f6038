//! A machine as the region knows it: the record the store returns and the APIs render.

use crate::inventory::{Disk, Nic, SystemInfo};
use crate::power::{PowerParameters, PowerState, PowerType};
use crate::{MachineId, NodeStatus, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub id: MachineId,
    pub hostname: String,
    pub status: NodeStatus,
    /// Free-text detail of the last status change or failure.
    pub status_message: String,
    pub power_type: PowerType,
    /// Without the password (see [`PowerParameters::redacted`]).
    pub power_parameters: PowerParameters,
    pub power_state: PowerState,
    /// Why power_state is `error`, when it is.
    pub power_error: Option<String>,
    pub cpu_count: u32,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Nic>,
    pub system: SystemInfo,
    pub boot_mac: Option<String>,
    pub architecture: String,
    pub owner: Option<UserId>,
    /// Username of the owner, for rendering.
    pub owner_name: Option<String>,
    pub zone: String,
    pub pool: String,
    pub tags: Vec<String>,
    pub osystem: String,
    pub distro_series: String,
    pub hwe_kernel: String,
    /// When an in-progress workflow times out.
    pub deadline: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What creating a machine takes; the rest starts empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMachine {
    pub hostname: Option<String>,
    pub power_type: Option<PowerType>,
    pub power_parameters: PowerParameters,
    pub boot_mac: Option<String>,
    /// Extra MACs (MAAS `mac_addresses`).
    pub macs: Vec<String>,
    pub architecture: Option<String>,
    pub zone: Option<String>,
    pub pool: Option<String>,
    /// Hardware known at creation (enlistment); stored in the same insert, so no reader ever
    /// sees an enlisted machine without its hardware.
    #[serde(default)]
    pub inventory: Option<crate::inventory::Inventory>,
}

/// A recorded event in a machine's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineEvent {
    pub id: i64,
    pub machine_id: MachineId,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// "transition", "power", "agent", "config"
    pub kind: String,
    pub from_status: Option<NodeStatus>,
    pub to_status: Option<NodeStatus>,
    pub message: String,
}
