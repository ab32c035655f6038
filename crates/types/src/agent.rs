//! The agent protocol: what the ephemeral agent (real binary or in-process sim) and the region
//! say to each other over HTTP. One definition for both, so they cannot drift apart.
//!
//! All endpoints live under [`AGENT_API_PREFIX`] and authenticate with the per-boot token from
//! the kernel command line as `Authorization: Bearer <token>`.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | POST | `/enlist` | [`EnlistRequest`] | [`EnlistResponse`] |
//! | GET | `/instructions` | — | [`Instructions`] |
//! | POST | `/report` | [`Report`] | [`ReportAck`] |

use crate::MachineId;
use crate::inventory::Inventory;
use serde::{Deserialize, Serialize};

pub const AGENT_API_PREFIX: &str = "/agent/v1";
/// Kernel command-line keys the iPXE script sets for the agent.
pub const CMDLINE_REGION_URL: &str = "ingot.url";
pub const CMDLINE_TOKEN: &str = "ingot.token";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnlistRequest {
    /// The MAC the machine netbooted from.
    pub boot_mac: String,
    pub inventory: Inventory,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnlistResponse {
    pub machine_id: MachineId,
    /// The machine's own token for the rest of this boot (the enlistment token is spent).
    pub token: String,
}

/// What the region wants the agent to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Instructions {
    /// Collect inventory and report it with [`Report::Commissioned`].
    Commission { machine_id: MachineId },
    /// Write the OS image and report progress, then [`Report::Deployed`].
    Deploy {
        machine_id: MachineId,
        osystem: String,
        distro_series: String,
        /// URL the agent fetches the image from.
        image_url: Option<String>,
    },
    /// Wipe the disks, then [`Report::Erased`].
    Erase { machine_id: MachineId, quick: bool },
    /// Nothing to do: power off.
    PowerOff,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Report {
    Progress { message: String },
    Commissioned { inventory: Inventory },
    Deployed,
    Erased,
    Failed { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    /// Status name after the report was applied.
    pub status_name: String,
}

/// Parses `key=value` pairs from a kernel command line (no quoting: Ingot never emits any).
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_wire_format() {
        let id = MachineId::parse("abc123").unwrap();
        let json = serde_json::to_value(Instructions::Commission { machine_id: id }).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"action": "commission", "machine_id": "abc123"})
        );
        let bad = serde_json::from_str::<Instructions>(r#"{"action":"format_everything"}"#);
        assert!(bad.is_err());
        let bad_id =
            serde_json::from_str::<Instructions>(r#"{"action":"commission","machine_id":"x"}"#);
        assert!(bad_id.is_err());
    }

    #[test]
    fn cmdline_parsing() {
        let c = "console=ttyS0 ingot.url=http://10.0.0.1:5240 ingot.token=abc quiet";
        assert_eq!(
            cmdline_value(c, CMDLINE_REGION_URL),
            Some("http://10.0.0.1:5240")
        );
        assert_eq!(cmdline_value(c, CMDLINE_TOKEN), Some("abc"));
        assert_eq!(cmdline_value(c, "missing"), None);
    }
}
