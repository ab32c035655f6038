//! The power-state sync loop against 200 sim BMCs, 10% of which hang past the driver
//! timeout: it must respect its global and per-BMC bounds (measured independently, by a
//! counting wrapper around the drivers) and record every answer or failure.

use async_trait::async_trait;
use bmc_power::sim::{Faults, SimRegistry};
use bmc_power::{DriverFactory, Drivers, PowerDriver, PowerError};
use ingot_engine::PowerSync;
use ingot_types::machine::NewMachine;
use ingot_types::power::{BootDevice, BootPersistence, PowerParameters, PowerState, PowerType};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts calls in flight, globally and per BMC address, and remembers the peaks.
#[derive(Default)]
struct Meter {
    now: AtomicUsize,
    peak: AtomicUsize,
    per_bmc: Mutex<HashMap<String, (usize, usize)>>,
}

struct Counting {
    inner: Drivers,
    meter: Arc<Meter>,
}

struct CountingDriver {
    inner: Arc<dyn PowerDriver>,
    address: String,
    meter: Arc<Meter>,
}

impl DriverFactory for Counting {
    fn driver_for(
        &self,
        t: PowerType,
        p: &PowerParameters,
    ) -> Result<Arc<dyn PowerDriver>, PowerError> {
        Ok(Arc::new(CountingDriver {
            inner: self.inner.driver_for(t, p)?,
            address: p.power_address.clone().unwrap_or_default(),
            meter: self.meter.clone(),
        }))
    }
}

#[async_trait]
impl PowerDriver for CountingDriver {
    async fn power_on(&self) -> Result<(), PowerError> {
        self.inner.power_on().await
    }
    async fn power_off(&self) -> Result<(), PowerError> {
        self.inner.power_off().await
    }
    async fn soft_off(&self) -> Result<(), PowerError> {
        self.inner.soft_off().await
    }
    async fn power_cycle(&self) -> Result<(), PowerError> {
        self.inner.power_cycle().await
    }
    async fn set_boot_device(&self, d: BootDevice, p: BootPersistence) -> Result<(), PowerError> {
        self.inner.set_boot_device(d, p).await
    }
    async fn power_state(&self) -> Result<PowerState, PowerError> {
        let n = self.meter.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.meter.peak.fetch_max(n, Ordering::SeqCst);
        {
            let mut m = self.meter.per_bmc.lock().unwrap();
            let e = m.entry(self.address.clone()).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
        let r = self.inner.power_state().await;
        self.meter
            .per_bmc
            .lock()
            .unwrap()
            .get_mut(&self.address)
            .unwrap()
            .0 -= 1;
        self.meter.now.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_respects_bounds_and_survives_hanging_bmcs() {
    const MACHINES: usize = 200;
    const GLOBAL: usize = 16;
    let db = ingot_store::testing::sqlite().await;
    let store = db.store.clone();
    // Driver timeout 200 ms; hanging BMCs would take 10 s.
    let sim = SimRegistry::new(Duration::from_millis(200));
    let mut hanging = Vec::new();
    for i in 0..MACHINES {
        // Machines 0..20 share one chassis BMC (per-BMC bound matters there).
        let address = if i < 20 {
            "chassis-1".to_owned()
        } else {
            format!("bmc-{i}")
        };
        sim.add(&address, "pw");
        let faults = if i >= 20 && i % 10 == 0 {
            hanging.push(address.clone());
            Faults {
                delay_ms: 10_000,
                ..Default::default()
            }
        } else {
            Faults {
                delay_ms: 5,
                ..Default::default()
            }
        };
        sim.set_faults(&address, faults);
        let new = NewMachine {
            hostname: Some(format!("m{i}")),
            power_type: Some(PowerType::Sim),
            power_parameters: PowerParameters {
                power_address: Some(address),
                power_pass: Some("pw".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        store.create_machine(new, "test").await.unwrap();
    }
    let meter = Arc::new(Meter::default());
    let factory = Arc::new(Counting {
        inner: Drivers { sim: sim.clone() },
        meter: meter.clone(),
    });
    let sync = PowerSync::new(store.clone(), factory, GLOBAL, 1);
    let started = Instant::now();
    let report = sync.run_once().await.unwrap();
    let took = started.elapsed();

    assert_eq!(report.checked, MACHINES);
    assert_eq!(report.errors, hanging.len(), "{report:?}");
    assert_eq!(report.ok, MACHINES - hanging.len());
    let peak = meter.peak.load(Ordering::SeqCst);
    assert!(peak <= GLOBAL, "global bound exceeded: {peak}");
    assert!(
        peak > 1,
        "the loop should run calls in parallel (peak {peak})"
    );
    let per_bmc_peak = meter
        .per_bmc
        .lock()
        .unwrap()
        .values()
        .map(|(_, max)| *max)
        .max();
    assert_eq!(
        per_bmc_peak,
        Some(1),
        "per-BMC bound exceeded or never measured"
    );
    // How long it took is the benchmark's business; here it is only reported.
    eprintln!(
        "power sync of {MACHINES} BMCs ({} hanging) took {took:?}",
        hanging.len()
    );

    let machines = store.list_machines(&Default::default()).await.unwrap();
    for m in machines {
        let addr = m.power_parameters.power_address.clone().unwrap();
        if hanging.contains(&addr) {
            assert_eq!(m.power_state, PowerState::Error, "{}", m.hostname);
            assert!(
                m.power_error.as_deref().unwrap().contains("did not answer"),
                "{:?}",
                m.power_error
            );
        } else {
            assert_eq!(
                (m.power_state, m.power_error),
                (PowerState::Off, None),
                "{}",
                m.hostname
            );
        }
    }
}
