//! Quick erase (MAAS "quick erase"): zero the first and last few MiB of every disk in the
//! inventory, where partition tables (MBR, GPT and its backup), RAID superblocks and
//! filesystem signatures live. The data in between stays on the platters; a full or secure
//! erase is a different job.

use ingot_types::inventory::Disk;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Zeroed at each end of a disk: GPT needs 17 KiB at the end; md superblocks (1.0) and LVM
/// labels sit within the last or first MiB. 2 MiB leaves margin and is quick.
pub const QUICK_ERASE_BYTES: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
#[error("cannot erase {path}")]
pub struct EraseDiskError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Quick-erases each disk through its device node under `dev`; returns the paths erased.
pub fn quick_erase(dev: &Path, disks: &[Disk]) -> Result<Vec<PathBuf>, EraseDiskError> {
    disks
        .iter()
        .map(|disk| {
            let path = dev.join(&disk.name);
            erase_ends(&path, disk.size_bytes).map_err(|source| EraseDiskError {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

fn erase_ends(path: &Path, size: u64) -> std::io::Result<()> {
    // Never create: a missing node must fail, not leave a file behind in /dev.
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    let zeros = vec![0u8; QUICK_ERASE_BYTES as usize];
    let head = QUICK_ERASE_BYTES.min(size);
    f.write_all(&zeros[..head as usize])?;
    let tail_start = size.saturating_sub(QUICK_ERASE_BYTES).max(head);
    f.seek(SeekFrom::Start(tail_start))?;
    f.write_all(&zeros[..(size - tail_start) as usize])?;
    // The machine powers off next: the zeros must be on the disk, not in the page cache.
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, size: u64) -> Disk {
        Disk {
            name: name.into(),
            size_bytes: size,
            ..Default::default()
        }
    }

    #[test]
    fn zeroes_both_ends_and_keeps_the_middle() {
        let dir = tempfile::tempdir().unwrap();
        let e = QUICK_ERASE_BYTES as usize;
        for (name, size) in [("big", 3 * e + 4096), ("small", e / 2), ("exact", 2 * e)] {
            std::fs::write(dir.path().join(name), vec![0xA5u8; size]).unwrap();
            let erased = quick_erase(dir.path(), &[disk(name, size as u64)]).unwrap();
            assert_eq!(erased, vec![dir.path().join(name)]);
            let after = std::fs::read(dir.path().join(name)).unwrap();
            assert_eq!(after.len(), size, "{name}: erasing must not grow the disk");
            let head = e.min(size);
            let tail = size.saturating_sub(e).max(head);
            assert!(after[..head].iter().all(|b| *b == 0), "{name}: head");
            assert!(after[tail..].iter().all(|b| *b == 0), "{name}: tail");
            assert!(
                after[head..tail].iter().all(|b| *b == 0xA5),
                "{name}: middle kept"
            );
        }
    }

    #[test]
    fn a_missing_device_node_fails_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let err = quick_erase(dir.path(), &[disk("vdz", 1 << 30)]).unwrap_err();
        assert_eq!(err.path, dir.path().join("vdz"));
        assert!(!dir.path().join("vdz").exists());
    }
}
