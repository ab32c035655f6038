//! The QEMU lab harness.
