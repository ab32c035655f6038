//! Hardware inventory from the kernel's own views: `/proc` (CPUs, memory, routes) and `/sys`
//! (block devices, network interfaces, DMI, EFI). No helper programs (lshw, dmidecode): the
//! ephemeral environment is a busybox initramfs, and reading files keeps this testable on
//! fixture trees (`tests/fixtures/`).

use ingot_types::inventory::{BootMode, Disk, Inventory, Nic, SystemInfo, normalize_mac};
use std::path::{Path, PathBuf};

/// Where the kernel's filesystems are mounted: `/proc`, `/sys` and `/dev` on a live system,
/// or a fixture tree in tests (where `dev/<disk>` are plain files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Roots {
    pub fn live() -> Self {
        Roots {
            proc: "/proc".into(),
            sys: "/sys".into(),
            dev: "/dev".into(),
        }
    }

    /// `dir/proc`, `dir/sys` and `dir/dev`, the layout of the fixture trees.
    pub fn under(dir: &Path) -> Self {
        Roots {
            proc: dir.join("proc"),
            sys: dir.join("sys"),
            dev: dir.join("dev"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CollectInventoryError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} lists no processors")]
    NoCpus { path: PathBuf },
    #[error("{path} has no MemTotal line")]
    NoMemory { path: PathBuf },
}

/// Block device name prefixes that are never install targets: RAM-backed, loop, optical,
/// floppy, and devices stacked on other disks (device mapper, md, nbd).
const SKIPPED_DISK_PREFIXES: &[&str] = &["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"];

/// Reads the whole inventory. CPUs and memory must be present (a machine without them is a
/// broken environment, not a machine); everything else is best effort and left empty when
/// the kernel does not expose it.
pub fn collect(roots: &Roots) -> Result<Inventory, CollectInventoryError> {
    let (cpu_count, cpu_model) = cpus(&roots.proc.join("cpuinfo"))?;
    Ok(Inventory {
        cpu_count,
        cpu_model,
        memory_mib: memory_mib(roots)?,
        disks: disks(&roots.sys.join("block")),
        interfaces: interfaces(&roots.sys.join("class/net")),
        system: system(&roots.sys.join("class/dmi/id")),
        boot_mode: if roots.sys.join("firmware/efi").is_dir() {
            BootMode::Uefi
        } else {
            BootMode::Bios
        },
    })
}

fn read_required(path: &Path) -> Result<String, CollectInventoryError> {
    std::fs::read_to_string(path).map_err(|e| CollectInventoryError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// A sysfs attribute, trimmed; None when absent, unreadable or empty.
fn attr(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let s = String::from_utf8_lossy(&bytes).trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// Entry names of a directory, sorted so the inventory is stable across boots.
fn sorted_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Logical CPUs (one `processor` stanza each, as the kernel counts them) and the first model
/// name.
fn cpus(path: &Path) -> Result<(u32, String), CollectInventoryError> {
    let text = read_required(path)?;
    let mut count = 0u32;
    let mut model = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "processor" => count += 1,
            "model name" if model.is_empty() => model = value.trim().to_owned(),
            _ => {}
        }
    }
    if count == 0 {
        return Err(CollectInventoryError::NoCpus {
            path: path.to_owned(),
        });
    }
    Ok((count, model))
}

/// Installed memory in MiB. Prefers the memory-block view in sysfs (online blocks × block
/// size), which counts what the firmware handed over, like the "1024 MiB" an operator
/// configured; `MemTotal` lacks the memory the kernel reserved for itself (a few percent).
fn memory_mib(roots: &Roots) -> Result<u64, CollectInventoryError> {
    if let Some(mib) = memory_blocks_mib(&roots.sys.join("devices/system/memory")) {
        return Ok(mib);
    }
    let path = roots.proc.join("meminfo");
    let text = read_required(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .ok_or(CollectInventoryError::NoMemory { path })
}

fn memory_blocks_mib(dir: &Path) -> Option<u64> {
    let block_size = u64::from_str_radix(&attr(&dir.join("block_size_bytes"))?, 16).ok()?;
    let online = sorted_entries(dir)
        .iter()
        .filter(|n| {
            n.strip_prefix("memory")
                .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|n| attr(&dir.join(n).join("state")).as_deref() == Some("online"))
        .count() as u64;
    (online > 0).then(|| online * block_size / (1024 * 1024))
}

fn disks(block: &Path) -> Vec<Disk> {
    sorted_entries(block)
        .into_iter()
        .filter(|name| !SKIPPED_DISK_PREFIXES.iter().any(|p| name.starts_with(p)))
        .filter_map(|name| {
            let dir = block.join(&name);
            // `size` is always in 512-byte units, whatever the logical block size.
            let sectors: u64 = attr(&dir.join("size"))?.parse().ok()?;
            if sectors == 0 {
                return None; // empty card reader slot and the like
            }
            let model = attr(&dir.join("device/model")).unwrap_or_default();
            Some(Disk {
                size_bytes: sectors * 512,
                model,
                serial: disk_serial(&dir).unwrap_or_default(),
                wwn: disk_wwn(&dir),
                name,
            })
        })
        .collect()
}

/// virtio-blk exposes `serial` on the disk, NVMe on the controller; SCSI and SATA (through
/// libata's SCSI translation) only in VPD page 0x80 (unit serial number).
fn disk_serial(dir: &Path) -> Option<String> {
    attr(&dir.join("serial"))
        .or_else(|| attr(&dir.join("device/serial")))
        .or_else(|| {
            let page = std::fs::read(dir.join("device/vpd_pg80")).ok()?;
            // Header: peripheral byte, page code 0x80, 2-byte big-endian length.
            let len = usize::from(u16::from_be_bytes([*page.get(2)?, *page.get(3)?]));
            let serial = page.get(4..4 + len).or_else(|| page.get(4..))?;
            let s = String::from_utf8_lossy(serial)
                .trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_owned();
            (!s.is_empty()).then_some(s)
        })
}

/// The World Wide Name as MAAS shows it (`0x` + hex), from the kernel's `wwid` (NVMe on the
/// namespace, SCSI/SATA on the device). Only NAA and EUI-64 designators are WWNs; the T10
/// and NVMe vendor forms are not, so they give None.
fn disk_wwn(dir: &Path) -> Option<String> {
    let wwid = attr(&dir.join("wwid")).or_else(|| attr(&dir.join("device/wwid")))?;
    let hex = wwid
        .strip_prefix("naa.")
        .or_else(|| wwid.strip_prefix("eui."))?;
    (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("0x{}", hex.to_ascii_lowercase()))
}

fn interfaces(class_net: &Path) -> Vec<Nic> {
    sorted_entries(class_net)
        .into_iter()
        .filter_map(|name| {
            let dir = class_net.join(&name);
            // Only interfaces backed by a device: no lo, bridges, bonds, VLANs, tunnels.
            if std::fs::symlink_metadata(dir.join("device")).is_err() {
                return None;
            }
            // Skips non-Ethernet link layers (InfiniBand's 20-byte addresses and the like).
            let mac = normalize_mac(&attr(&dir.join("address"))?)?;
            let driver = std::fs::read_link(dir.join("device/driver"))
                .ok()
                .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            // Reading `carrier` fails with EINVAL while the interface is down: that is "no link".
            let link_up = attr(&dir.join("carrier")).as_deref() == Some("1");
            let speed_mbps = attr(&dir.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|s| *s > 0)
                .and_then(|s| u32::try_from(s).ok());
            Some(Nic {
                name,
                mac,
                driver,
                link_up,
                speed_mbps,
            })
        })
        .collect()
}

fn system(dmi: &Path) -> SystemInfo {
    SystemInfo {
        vendor: attr(&dmi.join("sys_vendor")).unwrap_or_default(),
        product: attr(&dmi.join("product_name")).unwrap_or_default(),
        // Readable by root only; the agent runs as root.
        serial: attr(&dmi.join("product_serial")).unwrap_or_default(),
    }
}

/// The interface carrying the default route in `/proc/net/route` (the one DHCP configured).
pub fn default_route_interface(proc: &Path) -> Option<String> {
    let text = std::fs::read_to_string(proc.join("net/route")).ok()?;
    text.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let iface = fields.next()?;
        let destination = fields.next()?;
        (destination == "00000000").then(|| iface.to_owned())
    })
}
