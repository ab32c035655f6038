//! IPMI over LAN: a sans-IO protocol core and a thin tokio shell.
//!
//! The core ([`wire`], [`crypto`], [`rakp`], [`commands`], [`session`]) turns state plus bytes
//! into bytes plus decisions and never touches a socket or a clock: RMCP framing, the IPMI 1.5 and
//! 2.0 (RMCP+) session wrappers, RAKP key exchange for cipher suites 3 and 17, integrity and
//! AES-CBC confidentiality, and the chassis commands. [`driver`] owns the UDP socket, retries,
//! timeouts and the mapping to [`crate::PowerError`], and implements [`crate::PowerDriver`].
//!
//! Written from the IPMI 2.0 rev 1.1 specification (with errata for cipher suite 17).

pub mod commands;
pub mod crypto;
pub mod driver;
pub mod rakp;
pub mod session;
pub mod wire;

#[cfg(test)]
mod session_tests;

pub use driver::{IpmiDriver, IpmiProtocol, IpmiSettings};
