//! The ephemeral agent: the program the ephemeral environment (`images/ephemeral`) runs once
//! the boot NIC has an address. It reads the region URL and its one-time credential from the
//! kernel command line ([`config`]), collects the hardware inventory from `/proc` and `/sys`
//! ([`inventory`]), and speaks the agent API ([`client`], protocol in `ingot_types::agent`):
//! enlist when the machine is unknown, fetch instructions, carry them out (inventory for
//! commissioning, [`erase`] for release with erase) and report ([`run`]).
//!
//! The sim fleet (`ingot-sim`) uses the same [`client::AgentClient`], so the real and the
//! simulated agent cannot drift apart on the wire.

pub mod client;
pub mod config;
pub mod erase;
pub mod inventory;
pub mod run;

pub use client::{AgentClient, AgentError, RetryPolicy};
pub use config::BootConfig;
pub use inventory::{Roots, collect};
pub use run::{Done, Outcome, RunAgentError, run};
