//! An in-memory [`LeaseStore`] for tests and the standalone server example.

use crate::backend::{BackendError, LeaseStore};
use async_trait::async_trait;
use ingot_types::net::Lease;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Leases keyed by IP behind a mutex. Shared through an `Arc` it outlives server runs, which
/// is how the restart tests show leases survive. It can be told to fail, to test that a failed
/// commit withholds the ACK.
#[derive(Debug, Default)]
pub struct MemoryLeaseStore {
    leases: Mutex<BTreeMap<Ipv4Addr, Lease>>,
    commits: AtomicU64,
    fail: AtomicBool,
}

impl MemoryLeaseStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn snapshot(&self) -> Vec<Lease> {
        self.leases
            .lock()
            .expect("lease store lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<Lease> {
        self.leases
            .lock()
            .expect("lease store lock")
            .get(&ip)
            .cloned()
    }

    /// Number of `commit` calls (each one is a batch).
    pub fn commit_calls(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Makes every following `commit` fail (or succeed again).
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::Relaxed);
    }
}

#[async_trait]
impl LeaseStore for MemoryLeaseStore {
    async fn load_all(&self) -> Result<Vec<Lease>, BackendError> {
        Ok(self.snapshot())
    }

    async fn commit(&self, leases: &[Lease]) -> Result<(), BackendError> {
        self.commits.fetch_add(1, Ordering::Relaxed);
        if self.fail.load(Ordering::Relaxed) {
            return Err(BackendError("lease store set to fail".into()));
        }
        let mut map = self.leases.lock().expect("lease store lock");
        for lease in leases {
            map.insert(lease.ip, lease.clone());
        }
        Ok(())
    }

    async fn remove(&self, ip: Ipv4Addr) -> Result<(), BackendError> {
        self.leases.lock().expect("lease store lock").remove(&ip);
        Ok(())
    }
}
