//! Power vocabulary shared by the drivers, the engine and the APIs.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `power_state` as MAAS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
    Unknown,
    Error,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Unknown => "unknown",
            PowerState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "on" => PowerState::On,
            "off" => PowerState::Off,
            "unknown" => PowerState::Unknown,
            "error" => PowerState::Error,
            _ => return None,
        })
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `power_type` names as MAAS clients send them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerType {
    Ipmi,
    Redfish,
    Sim,
    Manual,
}

impl PowerType {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerType::Ipmi => "ipmi",
            PowerType::Redfish => "redfish",
            PowerType::Sim => "sim",
            PowerType::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ipmi" => PowerType::Ipmi,
            "redfish" => PowerType::Redfish,
            "sim" => PowerType::Sim,
            "manual" => PowerType::Manual,
            _ => return None,
        })
    }
}

impl fmt::Display for PowerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Pxe,
    Disk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootPersistence {
    Once,
    Persistent,
}

/// Power parameters as MAAS names them. `power_pass` is plaintext only in memory: the store
/// encrypts it and the APIs never return it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_pass: Option<String>,
    /// IPMI: `LAN_2_0` (lanplus, default) or `LAN` (IPMI 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_driver: Option<String>,
    /// Redfish: the System id under /redfish/v1/Systems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Redfish: verify the BMC's TLS certificate (default false: BMCs ship self-signed ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_verify_ssl: Option<bool>,
}

impl PowerParameters {
    /// The parameters with the password removed, for API responses and logs.
    pub fn redacted(&self) -> PowerParameters {
        PowerParameters {
            power_pass: None,
            ..self.clone()
        }
    }

    /// Known parameter names, so unknown fields can be refused by name.
    pub const FIELDS: &'static [&'static str] = &[
        "power_address",
        "power_user",
        "power_pass",
        "power_driver",
        "node_id",
        "power_verify_ssl",
    ];
}
