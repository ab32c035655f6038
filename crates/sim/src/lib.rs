//! The simulated fleet: sim machines whose sim agent speaks the real agent HTTP API.
