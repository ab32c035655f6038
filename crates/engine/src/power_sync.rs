//! The power-state sync loop: asks every BMC for its power state, with a global bound on
//! calls in flight and a per-BMC bound (BMCs fall over when hammered; several machines can
//! share one BMC address, e.g. a multi-node chassis). A BMC that fails or hangs marks its
//! machine's power_state `error` with the reason and never stalls the others.

use bmc_power::DriverFactory;
use futures::stream::{FuturesUnordered, StreamExt};
use ingot_store::{MachineFilter, Store, StoreError};
use ingot_types::power::{PowerState, PowerType};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct PowerSync {
    store: Store,
    drivers: Arc<dyn DriverFactory>,
    global_limit: usize,
    per_bmc_limit: usize,
    /// Upper bound on one BMC query, whatever the driver's own timeouts.
    pub call_timeout: Duration,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub checked: usize,
    pub ok: usize,
    pub errors: usize,
    pub max_in_flight: usize,
}

impl PowerSync {
    pub fn new(
        store: Store,
        drivers: Arc<dyn DriverFactory>,
        global_limit: usize,
        per_bmc_limit: usize,
    ) -> Self {
        Self {
            store,
            drivers,
            global_limit: global_limit.max(1),
            per_bmc_limit: per_bmc_limit.max(1),
            call_timeout: Duration::from_secs(30),
        }
    }

    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => match self.run_once().await {
                    Ok(r) => tracing::debug!(checked = r.checked, errors = r.errors, "power sync"),
                    Err(e) => tracing::warn!(error = %e, "power sync failed"),
                },
            }
        }
    }

    pub async fn run_once(&self) -> Result<SyncReport, StoreError> {
        let machines = self.store.list_machines(&MachineFilter::default()).await?;
        let global = Arc::new(Semaphore::new(self.global_limit));
        let mut per_bmc: HashMap<String, Arc<Semaphore>> = HashMap::new();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let mut jobs = FuturesUnordered::new();
        for m in machines
            .into_iter()
            .filter(|m| m.power_type != PowerType::Manual)
        {
            let key = bmc_key(
                m.power_parameters
                    .power_address
                    .as_deref()
                    .unwrap_or(m.id.as_str()),
            );
            let bmc = per_bmc
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_bmc_limit)))
                .clone();
            let (global, in_flight, max_in_flight) =
                (global.clone(), in_flight.clone(), max_in_flight.clone());
            let this = self.clone();
            jobs.push(async move {
                // Per-BMC first, so a slow BMC's queue does not hold global permits.
                let _b = bmc.acquire_owned().await.expect("semaphore never closed");
                let _g = global
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_in_flight.fetch_max(now, Ordering::SeqCst);
                let outcome = this.query_one(&m.id).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                outcome
            });
        }
        let mut report = SyncReport::default();
        while let Some(outcome) = jobs.next().await {
            report.checked += 1;
            match outcome {
                Ok(true) => report.ok += 1,
                Ok(false) => report.errors += 1,
                Err(e) => return Err(e),
            }
        }
        report.max_in_flight = max_in_flight.load(Ordering::SeqCst);
        Ok(report)
    }

    /// Queries one machine's BMC and records the answer. Ok(false) for a BMC fault.
    async fn query_one(&self, id: &ingot_types::MachineId) -> Result<bool, StoreError> {
        let (power_type, params) = match self.store.power_credentials(id).await {
            Ok(x) => x,
            Err(StoreError::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(e),
        };
        let answer = match self.drivers.driver_for(power_type, &params) {
            Ok(d) => match tokio::time::timeout(self.call_timeout, d.power_state()).await {
                Ok(Ok(state)) => Ok(state),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.call_timeout)),
            },
            Err(e) => Err(e.to_string()),
        };
        let ok = answer.is_ok();
        let recorded = match answer {
            Ok(state) => self.store.set_power_state(id, state, None).await,
            Err(msg) => {
                self.store
                    .set_power_state(id, PowerState::Error, Some(&msg))
                    .await
            }
        };
        match recorded {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(ok),
            Err(e) => Err(e),
        }
    }
}

/// The BMC a power address names: host without port, lowercased.
fn bmc_key(address: &str) -> String {
    let a = address.trim().to_ascii_lowercase();
    let a = a.split("://").last().unwrap_or(&a).to_owned();
    let host = a.split('/').next().unwrap_or(&a);
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => {
            h.to_owned()
        }
        _ => host.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::bmc_key;

    #[test]
    fn bmc_keys() {
        for (addr, key) in [
            ("10.0.0.5", "10.0.0.5"),
            ("10.0.0.5:623", "10.0.0.5"),
            ("https://BMC1.example:8443/redfish/v1", "bmc1.example"),
            ("sim-7", "sim-7"),
        ] {
            assert_eq!(bmc_key(addr), key, "{addr}");
        }
    }
}
