//! PXE boot services. Protocol cores (DHCP decisions, TFTP sessions, iPXE script choice) are
//! sans-IO: bytes or requests in, decisions out. Only the `server` parts own sockets.
//!
//! The services reach the rest of Ingot only through the traits in [`backend`], which the
//! `ingot` binary implements over the engine and the store (smee's `handler(backend)` shape).

pub mod backend;
pub mod dhcp;
pub mod http;
pub mod tftp;
