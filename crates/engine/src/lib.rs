//! Workflows: commissioning, deployment, release, power sync; plans with the lifecycle, acts through the store and power drivers.
