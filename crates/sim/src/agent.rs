//! The sim agent speaks through the real agent's HTTP client (`ingot_agent::client`), so the
//! simulated and the real ephemeral agent share one client and one protocol definition.

pub use ingot_agent::client::{AgentClient, AgentError};
