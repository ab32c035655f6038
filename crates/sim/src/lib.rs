//! The simulated fleet: machines that exist only in this process, each behind a sim BMC
//! (`bmc_power::sim`). When a sim BMC powers a machine on with network boot selected, the
//! machine "PXE-boots": it asks the region for its boot decision (the same call the HTTP boot
//! service makes for real firmware) and then runs a sim agent that speaks the real agent
//! HTTP API with the per-boot token, reporting a plausible, per-machine inventory.

mod agent;

pub use agent::{AgentClient, AgentError};

use async_trait::async_trait;
use bmc_power::sim::{PowerEvent, SimRegistry};
use ingot_store::{MachineFilter, Store, StoreError};
use ingot_types::agent::{EnlistRequest, Instructions, Report};
use ingot_types::boot::{BootDecision, BootPurpose};
use ingot_types::inventory::{BootMode, Disk, Inventory, Nic, SystemInfo};
use ingot_types::machine::NewMachine;
use ingot_types::power::{BootDevice, PowerParameters, PowerState, PowerType};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The region's netboot decision, as a PXE client would get it.
#[async_trait]
pub trait Netboot: Send + Sync + 'static {
    async fn decide(&self, mac: &str) -> Result<BootDecision, String>;
}

/// One sim machine's fixed identity and hardware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimMachineSpec {
    pub index: usize,
    pub hostname: String,
    pub bmc_address: String,
    pub mac: String,
    pub inventory: Inventory,
}

/// The deterministic spec of sim machine `index` (1-based): the same across restarts.
pub fn spec(index: usize) -> SimMachineSpec {
    let i = u32::try_from(index).unwrap_or(u32::MAX);
    let mac = format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    );
    // A small spread of shapes, so allocation constraints have something to choose from.
    let shapes = [
        (2, 4096, 40),
        (4, 8192, 80),
        (8, 16384, 240),
        (16, 65536, 480),
    ];
    let (cpus, mem, disk_gb) = shapes[index % shapes.len()];
    let inventory = Inventory {
        cpu_count: cpus,
        cpu_model: "Intel(R) Xeon(R) Sim CPU @ 2.40GHz".into(),
        memory_mib: mem,
        disks: vec![Disk {
            name: "sda".into(),
            size_bytes: disk_gb * 1_000_000_000,
            model: "SIMDISK".into(),
            serial: format!("SIM{index:06}"),
            wwn: Some(format!("0x5000c500{index:08x}")),
        }],
        interfaces: vec![Nic {
            name: "eno1".into(),
            mac: mac.clone(),
            driver: "virtio_net".into(),
            link_up: true,
            speed_mbps: Some(10_000),
        }],
        system: SystemInfo {
            vendor: "Ingot".into(),
            product: "SimServer".into(),
            serial: format!("SIM-{index:06}"),
        },
        boot_mode: if index.is_multiple_of(2) {
            BootMode::Uefi
        } else {
            BootMode::Bios
        },
    };
    SimMachineSpec {
        index,
        hostname: format!("sim-{index:04}"),
        bmc_address: format!("sim-bmc-{index:04}"),
        mac,
        inventory,
    }
}

/// Makes sure sim machines 1..=n exist in the store (creating only the missing ones) and that
/// each has a sim BMC in `registry` with its stored password. Returns their specs.
pub async fn ensure_fleet(
    store: &Store,
    registry: &SimRegistry,
    n: usize,
) -> Result<Vec<SimMachineSpec>, StoreError> {
    let existing = store.list_machines(&MachineFilter::default()).await?;
    let by_host: HashMap<_, _> = existing.iter().map(|m| (m.hostname.clone(), m)).collect();
    let mut specs = Vec::with_capacity(n);
    for index in 1..=n {
        let s = spec(index);
        let id = match by_host.get(&s.hostname) {
            Some(m) => m.id.clone(),
            None => {
                let password = format!(
                    "sim-{}",
                    ingot_types::MachineId::from_indexes([index as u8, 3, 5, 7, 11, 13])
                );
                let new = NewMachine {
                    hostname: Some(s.hostname.clone()),
                    power_type: Some(PowerType::Sim),
                    power_parameters: PowerParameters {
                        power_address: Some(s.bmc_address.clone()),
                        power_user: Some("admin".into()),
                        power_pass: Some(password),
                        ..Default::default()
                    },
                    boot_mac: Some(s.mac.clone()),
                    ..Default::default()
                };
                store.create_machine(new, "sim").await?.id
            }
        };
        let (_, params) = store.power_credentials(&id).await?;
        registry.add(
            &s.bmc_address,
            params.power_pass.as_deref().unwrap_or_default(),
        );
        specs.push(s);
    }
    Ok(specs)
}

/// Runs the fleet: reacts to sim BMC power-on events until `shutdown`.
pub struct SimFleet {
    registry: SimRegistry,
    netboot: Arc<dyn Netboot>,
    by_address: HashMap<String, SimMachineSpec>,
    /// Simulated time for firmware + PXE and for each agent step.
    pub step_delay: Duration,
}

impl SimFleet {
    pub fn new(
        registry: SimRegistry,
        netboot: Arc<dyn Netboot>,
        specs: Vec<SimMachineSpec>,
        step_delay: Duration,
    ) -> Self {
        let by_address = specs
            .into_iter()
            .map(|s| (s.bmc_address.clone(), s))
            .collect();
        Self {
            registry,
            netboot,
            by_address,
            step_delay,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut events = self.registry.subscribe();
        let me = Arc::new(self);
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.recv() => ev,
            };
            match ev {
                Ok(ev) => {
                    if let Some(spec) = me.by_address.get(&ev.address).cloned() {
                        let me = me.clone();
                        let stop = shutdown.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = me.boot(spec, ev) => {}
                            }
                        });
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "sim fleet fell behind on power events");
                }
                Err(_) => break,
            }
        }
    }

    /// One boot of one sim machine.
    async fn boot(&self, spec: SimMachineSpec, ev: PowerEvent) {
        if ev.state != PowerState::On || ev.boot_device != BootDevice::Pxe {
            return; // Booting from disk: the installed OS (if any) needs nothing from us.
        }
        tokio::time::sleep(self.step_delay).await; // firmware, DHCP, TFTP, kernel
        let decision = match self.netboot.decide(&spec.mac).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(machine = %spec.hostname, error = %e, "sim netboot failed");
                return;
            }
        };
        if let Err(e) = self.run_agent(&spec, decision).await {
            tracing::warn!(machine = %spec.hostname, error = %e, "sim agent gave up");
        }
    }

    async fn run_agent(
        &self,
        spec: &SimMachineSpec,
        decision: BootDecision,
    ) -> Result<(), AgentError> {
        let Some(token) = decision.boot_token.clone() else {
            return Ok(());
        };
        if decision.purpose == BootPurpose::LocalDisk {
            return Ok(());
        }
        let mut client = AgentClient::new(&decision.region_url, &token)?;
        if decision.purpose == BootPurpose::Enlist {
            let resp = client
                .enlist(&EnlistRequest {
                    boot_mac: spec.mac.clone(),
                    inventory: spec.inventory.clone(),
                })
                .await?;
            client.set_token(&resp.token);
        }
        match client.instructions().await? {
            Instructions::Commission { .. } => {
                client
                    .report(&Report::Progress {
                        message: "collecting inventory".into(),
                    })
                    .await?;
                tokio::time::sleep(self.step_delay).await;
                client
                    .report(&Report::Commissioned {
                        inventory: spec.inventory.clone(),
                    })
                    .await?;
            }
            Instructions::Deploy { distro_series, .. } => {
                client
                    .report(&Report::Progress {
                        message: format!("writing {distro_series} image"),
                    })
                    .await?;
                tokio::time::sleep(self.step_delay).await;
                client.report(&Report::Deployed).await?;
                return Ok(()); // stays on, booting its new OS
            }
            Instructions::Erase { .. } => {
                client
                    .report(&Report::Progress {
                        message: "erasing disks".into(),
                    })
                    .await?;
                tokio::time::sleep(self.step_delay).await;
                client.report(&Report::Erased).await?;
            }
            Instructions::PowerOff => {}
        }
        self.registry.machine_powered_itself_off(&spec.bmc_address);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_deterministic_and_distinct() {
        assert_eq!(spec(7), spec(7));
        let a = spec(1);
        let b = spec(258);
        assert_ne!(a.mac, b.mac);
        assert_eq!(b.mac, "52:54:00:00:01:02");
        assert_eq!(a.inventory.interfaces[0].mac, a.mac);
        assert!(ingot_types::inventory::normalize_mac(&a.mac).is_some());
    }
}
