//! Read-only TFTP (RFC 1350, 2347, 2348, 2349, 7440) for boot loaders.
//!
//! Our own small core rather than async-tftp: windowsize support and per-block CPU cost are
//! what a boot storm needs, and a sans-IO core is testable without sockets. The layers:
//! [`packet`] (wire format), [`session`] (negotiation and the transfer state machine),
//! [`files`] (path checks, cache, generated files), [`server`] (tokio sockets) and [`client`].

pub mod boot_files;
pub mod client;
pub mod files;
pub mod packet;
pub mod server;
pub mod session;

pub use files::{DynamicFiles, OpenFileError};
pub use server::{TftpConfig, TftpServeError, TransferOutcome, TransferRecord};
pub use session::Limits;
