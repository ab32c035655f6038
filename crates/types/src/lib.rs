//! Ingot's shared vocabulary. This crate does no I/O: no sockets, no files, no database,
//! no clock reads (callers pass times in). Everything else in the workspace speaks these types.

pub mod agent;
pub mod boot;
pub mod ids;
pub mod inventory;
pub mod lifecycle;
pub mod machine;
pub mod net;
pub mod power;

pub use ids::{MachineId, UserId};
pub use lifecycle::{IllegalTransition, NodeStatus, Trigger};
