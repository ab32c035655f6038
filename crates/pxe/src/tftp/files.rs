//! Which bytes a read request gets: generated files from a [`DynamicFiles`] handler first, then
//! files under the configured root. Path checks are pure functions.

use async_trait::async_trait;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Why a request path was refused or could not be served.
#[derive(Debug, thiserror::Error)]
pub enum OpenFileError {
    #[error("path {0:?} escapes the TFTP root")]
    Traversal(String),
    #[error("file {0:?} not found")]
    NotFound(String),
    #[error("file {path:?} is larger than the {limit}-byte TFTP limit")]
    TooLarge { path: String, limit: u64 },
    #[error("reading {path:?}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generating {path:?}: {reason}")]
    Dynamic { path: String, reason: String },
}

/// Files generated per request (per-machine configs, chain scripts).
#[async_trait]
pub trait DynamicFiles: Send + Sync + 'static {
    /// `Some` when `path` (already normalised, no leading slash) is generated here.
    async fn open(&self, path: &str, client: SocketAddr) -> Option<Result<Vec<u8>, OpenFileError>>;
}

/// Turns a request filename into a relative path under the root, or refuses it.
///
/// Clients send `/ipxe.efi`, `ipxe.efi` or (Windows heritage) `\boot\x`; all map to the root.
/// Any `..`, drive prefix or NUL is refused. Symlinks inside the root are followed on purpose:
/// Debian's `/usr/lib/ipxe/ipxe.efi` is itself a link to `/boot/ipxe.efi`, and the root is
/// chosen by the operator (tftpd-hpa behaves the same).
pub fn sanitize(filename: &str) -> Result<PathBuf, OpenFileError> {
    let refuse = || OpenFileError::Traversal(filename.to_string());
    if filename.contains('\0') {
        return Err(refuse());
    }
    let normalized = filename.replace('\\', "/");
    let mut out = PathBuf::new();
    for component in Path::new(normalized.trim_start_matches('/')).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(refuse());
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(OpenFileError::NotFound(filename.to_string()));
    }
    Ok(out)
}

/// Files above this size are read per request instead of cached (iPXE binaries are < 1 MiB).
pub const CACHE_MAX_FILE: u64 = 16 << 20;

/// Whole-file cache for the root: boot loaders are small and requested by every machine in a
/// boot storm, so serving them from memory avoids a read syscall per block. Entries are
/// revalidated by size and mtime on every open.
#[derive(Default)]
pub struct FileCache {
    entries: Mutex<HashMap<PathBuf, CachedFile>>,
}

struct CachedFile {
    len: u64,
    modified: Option<SystemTime>,
    bytes: Arc<[u8]>,
}

impl FileCache {
    pub async fn open(
        &self,
        root: &Path,
        relative: &Path,
        max_len: u64,
    ) -> Result<Arc<[u8]>, OpenFileError> {
        let path = root.join(relative);
        let shown = relative.display().to_string();
        let io_error = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => OpenFileError::NotFound(shown.clone()),
            _ => OpenFileError::Io {
                path: shown.clone(),
                source,
            },
        };
        let meta = tokio::fs::metadata(&path).await.map_err(io_error)?;
        if !meta.is_file() {
            return Err(OpenFileError::NotFound(shown));
        }
        if meta.len() > max_len {
            return Err(OpenFileError::TooLarge {
                path: shown,
                limit: max_len,
            });
        }
        let modified = meta.modified().ok();
        if let Some(hit) = self.entries.lock().unwrap().get(&path)
            && hit.len == meta.len()
            && hit.modified == modified
        {
            return Ok(hit.bytes.clone());
        }
        let bytes: Arc<[u8]> = tokio::fs::read(&path).await.map_err(io_error)?.into();
        if meta.len() > CACHE_MAX_FILE {
            // Served, but not kept: the cache is for boot loaders, not for whatever else an
            // operator drops into the root.
            return Ok(bytes);
        }
        self.entries.lock().unwrap().insert(
            path,
            CachedFile {
                len: bytes.len() as u64,
                modified,
                bytes: bytes.clone(),
            },
        );
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_table() {
        for (input, want) in [
            ("ipxe.efi", Some("ipxe.efi")),
            ("/ipxe.efi", Some("ipxe.efi")),
            ("//a/./b", Some("a/b")),
            ("\\boot\\x.efi", Some("boot/x.efi")),
            ("../etc/passwd", None),
            ("/../etc/passwd", None),
            ("a/../../b", None),
            ("a/..", None),
            ("..\\..\\etc\\passwd", None),
            ("a\0b", None),
        ] {
            let got = sanitize(input).ok();
            assert_eq!(got.as_deref(), want.map(Path::new), "{input:?}");
        }
        assert!(matches!(sanitize("/"), Err(OpenFileError::NotFound(_))));
    }
}
