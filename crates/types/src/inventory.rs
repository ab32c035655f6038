//! Hardware inventory as the agent reports it after reading /proc, /sys and DMI.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub cpu_count: u32,
    #[serde(default)]
    pub cpu_model: String,
    pub memory_mib: u64,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub interfaces: Vec<Nic>,
    #[serde(default)]
    pub system: SystemInfo,
    #[serde(default)]
    pub boot_mode: BootMode,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub serial: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    /// Lowercase, colon-separated.
    pub mac: String,
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub link_up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemInfo {
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub product: String,
    #[serde(default)]
    pub serial: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    #[default]
    Bios,
    Uefi,
}

/// A MAC address normalised to lowercase colon form. Returns None when it is not 6 octets.
pub fn normalize_mac(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let seps = s
        .chars()
        .filter(|c| !c.is_ascii_hexdigit())
        .all(|c| matches!(c, ':' | '-' | '.'));
    if hex.len() != 12 || !seps {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    let octets: Vec<&str> = (0..6).map(|i| &hex[i * 2..i * 2 + 2]).collect();
    Some(octets.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_mac_cases() {
        for (input, want) in [
            ("52:54:00:12:37:01", Some("52:54:00:12:37:01")),
            ("52-54-00-AB-37-01", Some("52:54:00:ab:37:01")),
            ("5254.00ab.3701", Some("52:54:00:ab:37:01")),
            ("525400ab3701", Some("52:54:00:ab:37:01")),
            ("52:54:00:12:37", None),
            ("52:54:00:12:37:01:02", None),
            ("52:54:00:12:37:0g", None),
            ("../../etc/passwd", None),
        ] {
            assert_eq!(normalize_mac(input).as_deref(), want, "{input}");
        }
    }
}
