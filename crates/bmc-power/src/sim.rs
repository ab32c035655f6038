//! A simulated BMC. Each sim BMC has an address (`sim://<name>` style, any string), a password,
//! a power state and a next-boot device, and can be told to misbehave. Power-on events are
//! broadcast so the sim fleet can "boot" the machine (run its sim agent).

use crate::{PowerDriver, PowerError};
use async_trait::async_trait;
use ingot_types::power::{BootDevice, BootPersistence, PowerParameters, PowerState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// How a sim BMC misbehaves.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Every call fails with [`PowerError::Unreachable`].
    #[serde(default)]
    pub unreachable: bool,
    /// Every call waits this long first (a driver timeout may fire before it answers).
    #[serde(default)]
    pub delay_ms: u64,
    /// Power changes are accepted but never take effect (a stuck BMC).
    #[serde(default)]
    pub stuck: bool,
    /// Boot overrides are refused (`Unsupported`), like BMCs without that feature; the
    /// machine's boot order has the network first, so it still netboots.
    #[serde(default)]
    pub refuse_boot_override: bool,
}

#[derive(Debug, Clone)]
struct BmcState {
    password: String,
    power: PowerState,
    boot_device: BootDevice,
    boot_persistence: BootPersistence,
    faults: Faults,
    /// Counters, so tests can check what the engine did.
    calls: u64,
}

/// A change a sim BMC applied, for the sim fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerEvent {
    pub address: String,
    pub state: PowerState,
    /// The boot device in effect for this power-on (a `Once` override is consumed by it).
    pub boot_device: BootDevice,
}

/// All sim BMCs of a process. Cheap to clone.
#[derive(Clone)]
pub struct SimRegistry {
    inner: Arc<Mutex<HashMap<String, BmcState>>>,
    events: broadcast::Sender<PowerEvent>,
    /// The longest a driver call waits before it reports a timeout.
    timeout: Duration,
}

impl Default for SimRegistry {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl SimRegistry {
    pub fn new(timeout: Duration) -> Self {
        let (events, _) = broadcast::channel(65536);
        Self {
            inner: Arc::default(),
            events,
            timeout,
        }
    }

    /// Creates (or keeps) a sim BMC at `address` with this password, powered off.
    pub fn add(&self, address: &str, password: &str) {
        let mut map = self.inner.lock().unwrap();
        map.entry(address.to_owned()).or_insert_with(|| BmcState {
            password: password.to_owned(),
            power: PowerState::Off,
            boot_device: BootDevice::Disk,
            boot_persistence: BootPersistence::Persistent,
            faults: Faults::default(),
            calls: 0,
        });
    }

    pub fn set_faults(&self, address: &str, faults: Faults) -> bool {
        match self.inner.lock().unwrap().get_mut(address) {
            Some(s) => {
                s.faults = faults;
                true
            }
            None => false,
        }
    }

    pub fn faults(&self, address: &str) -> Option<Faults> {
        self.inner
            .lock()
            .unwrap()
            .get(address)
            .map(|s| s.faults.clone())
    }

    /// The power state as the "hardware" has it (not through the driver, so no faults).
    pub fn actual_state(&self, address: &str) -> Option<PowerState> {
        self.inner.lock().unwrap().get(address).map(|s| s.power)
    }

    pub fn boot_device(&self, address: &str) -> Option<(BootDevice, BootPersistence)> {
        self.inner
            .lock()
            .unwrap()
            .get(address)
            .map(|s| (s.boot_device, s.boot_persistence))
    }

    pub fn calls(&self, address: &str) -> u64 {
        self.inner
            .lock()
            .unwrap()
            .get(address)
            .map_or(0, |s| s.calls)
    }

    /// The machine turned itself off (e.g. its agent ran `poweroff`).
    pub fn machine_powered_itself_off(&self, address: &str) {
        if let Some(s) = self.inner.lock().unwrap().get_mut(address) {
            s.power = PowerState::Off;
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PowerEvent> {
        self.events.subscribe()
    }

    /// A driver for the BMC named by `power_address`, authenticating with `power_pass`.
    pub fn driver(&self, params: &PowerParameters) -> Result<SimDriver, PowerError> {
        let address = params
            .power_address
            .clone()
            .ok_or(PowerError::MissingParameter {
                field: "power_address",
            })?;
        Ok(SimDriver {
            registry: self.clone(),
            address,
            user: params.power_user.clone().unwrap_or_default(),
            password: params.power_pass.clone().unwrap_or_default(),
        })
    }
}

pub struct SimDriver {
    registry: SimRegistry,
    address: String,
    user: String,
    password: String,
}

impl SimDriver {
    /// Runs `f` on the BMC's state after applying faults and checking the password.
    async fn call<T>(
        &self,
        f: impl FnOnce(&mut BmcState) -> (T, Option<PowerEvent>),
    ) -> Result<T, PowerError> {
        let (faults, timeout) = {
            let mut map = self.registry.inner.lock().unwrap();
            let state = map
                .get_mut(&self.address)
                .ok_or_else(|| PowerError::Unreachable {
                    address: self.address.clone(),
                    detail: "no BMC at this address".into(),
                })?;
            state.calls += 1;
            (state.faults.clone(), self.registry.timeout)
        };
        if faults.unreachable {
            return Err(PowerError::Unreachable {
                address: self.address.clone(),
                detail: "no route to host (injected)".into(),
            });
        }
        if faults.delay_ms > 0 {
            let delay = Duration::from_millis(faults.delay_ms);
            if delay >= timeout {
                tokio::time::sleep(timeout).await;
                return Err(PowerError::Timeout {
                    address: self.address.clone(),
                    after: timeout,
                });
            }
            tokio::time::sleep(delay).await;
        }
        let (out, event) = {
            let mut map = self.registry.inner.lock().unwrap();
            let state = map
                .get_mut(&self.address)
                .ok_or_else(|| PowerError::Unreachable {
                    address: self.address.clone(),
                    detail: "BMC removed".into(),
                })?;
            if state.password != self.password {
                return Err(PowerError::AuthFailed {
                    user: self.user.clone(),
                });
            }
            if faults.stuck {
                // Accept the call, change nothing.
                let mut scratch = state.clone();
                let (out, _) = f(&mut scratch);
                (out, None)
            } else {
                f(state)
            }
        };
        if let Some(ev) = event {
            let _ = self.registry.events.send(ev);
        }
        Ok(out)
    }

    fn power_to(
        &self,
        target: PowerState,
    ) -> impl FnOnce(&mut BmcState) -> ((), Option<PowerEvent>) {
        let address = self.address.clone();
        move |s| {
            let was = s.power;
            s.power = target;
            let boot_device = if s.faults.refuse_boot_override {
                BootDevice::Pxe
            } else {
                s.boot_device
            };
            if target == PowerState::On && s.boot_persistence == BootPersistence::Once {
                s.boot_device = BootDevice::Disk;
                s.boot_persistence = BootPersistence::Persistent;
            }
            let event = (was != target).then_some(PowerEvent {
                address,
                state: target,
                boot_device,
            });
            ((), event)
        }
    }
}

#[async_trait]
impl PowerDriver for SimDriver {
    async fn power_on(&self) -> Result<(), PowerError> {
        self.call(self.power_to(PowerState::On)).await
    }

    async fn power_off(&self) -> Result<(), PowerError> {
        self.call(self.power_to(PowerState::Off)).await
    }

    async fn soft_off(&self) -> Result<(), PowerError> {
        self.call(self.power_to(PowerState::Off)).await
    }

    async fn power_cycle(&self) -> Result<(), PowerError> {
        let address = self.address.clone();
        self.call(move |s| {
            let boot_device = if s.faults.refuse_boot_override {
                BootDevice::Pxe
            } else {
                s.boot_device
            };
            if s.boot_persistence == BootPersistence::Once {
                s.boot_device = BootDevice::Disk;
                s.boot_persistence = BootPersistence::Persistent;
            }
            s.power = PowerState::On;
            (
                (),
                Some(PowerEvent {
                    address,
                    state: PowerState::On,
                    boot_device,
                }),
            )
        })
        .await
    }

    async fn power_state(&self) -> Result<PowerState, PowerError> {
        self.call(|s| (s.power, None)).await
    }

    async fn set_boot_device(
        &self,
        device: BootDevice,
        persistence: BootPersistence,
    ) -> Result<(), PowerError> {
        if self
            .registry
            .faults(&self.address)
            .is_some_and(|f| f.refuse_boot_override)
        {
            self.call(|_| ((), None)).await?; // still authenticates and counts the call
            return Err(PowerError::Unsupported {
                operation: "boot device override",
            });
        }
        self.call(move |s| {
            s.boot_device = device;
            s.boot_persistence = persistence;
            ((), None)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(addr: &str, pass: &str) -> PowerParameters {
        PowerParameters {
            power_address: Some(addr.into()),
            power_user: Some("admin".into()),
            power_pass: Some(pass.into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn power_round_trip_and_events() {
        let reg = SimRegistry::default();
        reg.add("bmc1", "pw");
        let mut events = reg.subscribe();
        let d = reg.driver(&params("bmc1", "pw")).unwrap();
        assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
        d.set_boot_device(BootDevice::Pxe, BootPersistence::Once)
            .await
            .unwrap();
        d.power_on().await.unwrap();
        assert_eq!(d.power_state().await.unwrap(), PowerState::On);
        let ev = events.try_recv().unwrap();
        assert_eq!(
            (ev.state, ev.boot_device),
            (PowerState::On, BootDevice::Pxe)
        );
        // The once-override was consumed by that boot.
        assert_eq!(
            reg.boot_device("bmc1"),
            Some((BootDevice::Disk, BootPersistence::Persistent))
        );
        d.power_off().await.unwrap();
        assert_eq!(reg.actual_state("bmc1"), Some(PowerState::Off));
    }

    #[tokio::test]
    async fn faults_give_typed_errors() {
        let reg = SimRegistry::new(Duration::from_millis(50));
        reg.add("bmc1", "pw");
        let wrong = reg.driver(&params("bmc1", "nope")).unwrap();
        assert!(matches!(
            wrong.power_on().await,
            Err(PowerError::AuthFailed { .. })
        ));
        assert_eq!(reg.actual_state("bmc1"), Some(PowerState::Off));

        let d = reg.driver(&params("bmc1", "pw")).unwrap();
        reg.set_faults(
            "bmc1",
            Faults {
                unreachable: true,
                ..Default::default()
            },
        );
        assert!(matches!(
            d.power_state().await,
            Err(PowerError::Unreachable { .. })
        ));

        reg.set_faults(
            "bmc1",
            Faults {
                delay_ms: 10_000,
                ..Default::default()
            },
        );
        assert!(matches!(
            d.power_on().await,
            Err(PowerError::Timeout { .. })
        ));

        reg.set_faults(
            "bmc1",
            Faults {
                stuck: true,
                ..Default::default()
            },
        );
        d.power_on().await.unwrap();
        assert_eq!(
            reg.actual_state("bmc1"),
            Some(PowerState::Off),
            "stuck BMC changed nothing"
        );

        let missing = reg.driver(&params("nowhere", "pw")).unwrap();
        assert!(matches!(
            missing.power_on().await,
            Err(PowerError::Unreachable { .. })
        ));
        let no_addr = reg.driver(&PowerParameters::default());
        assert!(matches!(
            no_addr,
            Err(PowerError::MissingParameter {
                field: "power_address"
            })
        ));
    }
}
