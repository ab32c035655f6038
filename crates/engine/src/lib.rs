//! The engine: what happens when an operator, an agent or the clock acts on a machine.
//!
//! Every workflow step is two halves, kept apart:
//! - *decide and record*: the store applies a lifecycle trigger as a compare-and-set with its
//!   effects (owner, deadline, OS choice) and an event, so the decision survives a crash;
//! - *act*: power calls through a [`bmc_power::PowerDriver`], run in the background. An action
//!   that fails records `power_state = error` and moves the machine to the matching failed
//!   status, so no workflow waits forever on a broken BMC. Deadlines catch silent machines.

mod agent;
mod metadata;
mod power_sync;

pub use metadata::{MetadataSeed, SignalStatus, StatusEvent};
pub use power_sync::{PowerSync, SyncReport};

use bmc_power::{DriverFactory, PowerDriver, PowerError};
use ingot_store::{AllocationConstraints, Effects, Set, Store, StoreError, User};
use ingot_types::MachineId;
use ingot_types::boot::{BootDecision, BootPurpose, boot_purpose};
use ingot_types::inventory::normalize_mac;
use ingot_types::lifecycle::{IllegalTransition, NodeStatus, Trigger};
use ingot_types::machine::Machine;
use ingot_types::net::Sighting;
use ingot_types::power::{BootDevice, BootPersistence, PowerState, PowerType};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Base URL agents use to reach the region (goes on the kernel command line).
    pub region_url: String,
    pub commission_timeout: Duration,
    pub deploy_timeout: Duration,
    pub release_timeout: Duration,
    /// How often the deadline sweeper looks for overdue workflows.
    pub sweep_interval: Duration,
    /// How often the power-state sync loop runs (zero disables it).
    pub power_sync_interval: Duration,
    pub power_sync_concurrency: usize,
    pub power_sync_per_bmc: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            region_url: "http://127.0.0.1:5240".into(),
            commission_timeout: Duration::from_secs(30 * 60),
            deploy_timeout: Duration::from_secs(30 * 60),
            release_timeout: Duration::from_secs(5 * 60),
            sweep_interval: Duration::from_secs(1),
            power_sync_interval: Duration::from_secs(60),
            power_sync_concurrency: 32,
            power_sync_per_bmc: 1,
        }
    }
}

/// The engine's failure, mapped to HTTP by the API crate alone.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    #[error("no machine matches the constraints")]
    NoMatch,
    #[error("{field}: {message}")]
    InvalidInput { field: String, message: String },
    #[error("{kind} with {field} {value:?} already exists")]
    Conflict {
        kind: &'static str,
        field: &'static str,
        value: String,
    },
    #[error("this requires an administrator")]
    Forbidden,
    #[error("invalid or expired agent credential")]
    BadAgentToken,
    #[error("power control failed")]
    Power(#[from] PowerError),
    #[error("storage failed")]
    Store(#[source] StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => EngineError::NotFound { kind, id },
            StoreError::IllegalTransition(t) => EngineError::IllegalTransition(t),
            StoreError::NoMatch => EngineError::NoMatch,
            StoreError::Conflict { kind, field, value } => {
                EngineError::Conflict { kind, field, value }
            }
            other => EngineError::Store(other),
        }
    }
}

/// Deploy choices (MAAS `op=deploy`).
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    pub osystem: Option<String>,
    pub distro_series: Option<String>,
    pub hwe_kernel: Option<String>,
    /// cloud-init user-data, already decoded.
    pub user_data: Option<String>,
}

/// The caller of an engine operation, for permission checks and the event log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub user: Option<User>,
    pub name: String,
    /// A tenant of the cloud API: sees only its own machines, not the unowned pool.
    pub owned_only: bool,
}

impl Actor {
    pub fn user(u: &User) -> Self {
        Actor {
            user: Some(u.clone()),
            name: u.username.clone(),
            owned_only: false,
        }
    }
    pub fn system(name: &str) -> Self {
        Actor {
            user: None,
            name: name.to_owned(),
            owned_only: false,
        }
    }
    fn is_admin(&self) -> bool {
        self.user.as_ref().is_none_or(|u| u.is_admin)
    }
    /// Whether this actor may see `m`: admins and the system see all; users see unowned
    /// machines and their own; tenants only their own.
    pub fn can_see(&self, m: &Machine) -> bool {
        self.is_admin()
            || (m.owner.is_none() && !self.owned_only)
            || (m.owner.is_some() && m.owner == self.user.as_ref().map(|u| u.id))
    }
}

#[derive(Clone)]
pub struct Engine {
    store: Store,
    drivers: Arc<dyn DriverFactory>,
    cfg: Arc<EngineConfig>,
}

impl Engine {
    pub fn new(store: Store, drivers: Arc<dyn DriverFactory>, cfg: EngineConfig) -> Self {
        Self {
            store,
            drivers,
            cfg: Arc::new(cfg),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Starts the deadline sweeper and the power-state sync loop until `shutdown`.
    pub fn spawn_background(
        &self,
        shutdown: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let me = self.clone();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.cfg.sweep_interval);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = me.sweep_deadlines().await {
                            tracing::warn!(error = %e, "deadline sweep failed");
                        }
                    }
                }
            }
        }));
        if !self.cfg.power_sync_interval.is_zero() {
            let sync = PowerSync::new(
                self.store.clone(),
                self.drivers.clone(),
                self.cfg.power_sync_concurrency,
                self.cfg.power_sync_per_bmc,
            );
            let interval = self.cfg.power_sync_interval;
            tasks.push(tokio::spawn(
                async move { sync.run(interval, shutdown).await },
            ));
        }
        tasks
    }

    /// A machine the actor may see (others' machines are "not found", never "forbidden").
    pub async fn machine_for(&self, actor: &Actor, id: &MachineId) -> Result<Machine, EngineError> {
        let m = self.store.machine(id).await?;
        if !actor.can_see(&m) {
            return Err(EngineError::NotFound {
                kind: "machine",
                id: id.to_string(),
            });
        }
        Ok(m)
    }

    fn require_admin(actor: &Actor) -> Result<(), EngineError> {
        if actor.is_admin() {
            Ok(())
        } else {
            Err(EngineError::Forbidden)
        }
    }

    fn deadline(&self, after: Duration) -> Set<Option<i64>> {
        let ms = chrono::Utc::now().timestamp_millis()
            + i64::try_from(after.as_millis()).unwrap_or(i64::MAX / 4);
        Set::To(Some(ms))
    }

    // ---- operator actions -------------------------------------------------------------

    pub async fn commission(&self, actor: &Actor, id: &MachineId) -> Result<Machine, EngineError> {
        Self::require_admin(actor)?;
        self.machine_for(actor, id).await?;
        let effects = Effects {
            deadline_ms: self.deadline(self.cfg.commission_timeout),
            clear_boot_token: true,
            ..Default::default()
        };
        let m = self
            .store
            .transition(id, Trigger::Commission, &actor.name, "", &effects)
            .await?;
        self.spawn_netboot(m.id.clone(), Trigger::CommissioningFailed);
        Ok(m)
    }

    pub async fn allocate(
        &self,
        actor: &Actor,
        constraints: &AllocationConstraints,
    ) -> Result<Machine, EngineError> {
        let owner = actor.user.as_ref().ok_or(EngineError::Forbidden)?;
        Ok(self
            .store
            .allocate(constraints, owner.id, &actor.name)
            .await?)
    }

    /// Deploys an Allocated machine (or allocates a Ready one first, as MAAS does).
    pub async fn deploy(
        &self,
        actor: &Actor,
        id: &MachineId,
        opts: DeployOptions,
    ) -> Result<Machine, EngineError> {
        let m = self.machine_for(actor, id).await?;
        if m.status == NodeStatus::Ready {
            let c = AllocationConstraints {
                system_id: Some(id.to_string()),
                ..Default::default()
            };
            match self.allocate(actor, &c).await {
                Ok(_) => {}
                Err(EngineError::NoMatch) => {
                    let now = self.store.machine(id).await?;
                    return Err(IllegalTransition {
                        current: now.status,
                        trigger: Trigger::Deploy,
                    }
                    .into());
                }
                Err(e) => return Err(e),
            }
        } else if m.owner.is_some()
            && m.owner != actor.user.as_ref().map(|u| u.id)
            && !actor.is_admin()
        {
            return Err(EngineError::NotFound {
                kind: "machine",
                id: id.to_string(),
            });
        }
        let effects = Effects {
            deadline_ms: self.deadline(self.cfg.deploy_timeout),
            osystem: Set::To(opts.osystem.unwrap_or_else(|| "ubuntu".into())),
            distro_series: Set::To(opts.distro_series.unwrap_or_else(|| "noble".into())),
            hwe_kernel: Set::To(opts.hwe_kernel.unwrap_or_default()),
            user_data: Set::To(opts.user_data),
            clear_boot_token: true,
            require_owner: actor.user.as_ref().filter(|u| !u.is_admin).map(|u| u.id),
            ..Default::default()
        };
        let m = self
            .store
            .transition(id, Trigger::Deploy, &actor.name, "", &effects)
            .await?;
        self.spawn_netboot(m.id.clone(), Trigger::DeployFailed);
        Ok(m)
    }

    pub async fn release(
        &self,
        actor: &Actor,
        id: &MachineId,
        erase: bool,
    ) -> Result<Machine, EngineError> {
        self.machine_for(actor, id).await?;
        let timeout = if erase {
            self.cfg.commission_timeout
        } else {
            self.cfg.release_timeout
        };
        let effects = Effects {
            deadline_ms: self.deadline(timeout),
            clear_boot_token: true,
            require_owner: actor.user.as_ref().filter(|u| !u.is_admin).map(|u| u.id),
            ..Default::default()
        };
        let m = self
            .store
            .transition(id, Trigger::Release { erase }, &actor.name, "", &effects)
            .await?;
        if erase {
            self.spawn_netboot(m.id.clone(), Trigger::EraseFailed);
        } else {
            self.spawn_release_power_off(m.id.clone());
        }
        Ok(m)
    }

    pub async fn abort(&self, actor: &Actor, id: &MachineId) -> Result<Machine, EngineError> {
        self.machine_for(actor, id).await?;
        let effects = Effects {
            deadline_ms: Set::To(None),
            clear_boot_token: true,
            ..Default::default()
        };
        let m = self
            .store
            .transition(id, Trigger::Abort, &actor.name, "aborted", &effects)
            .await?;
        self.spawn_power(m.id.clone(), PowerOp::Off);
        Ok(m)
    }

    pub async fn mark_broken(
        &self,
        actor: &Actor,
        id: &MachineId,
        why: &str,
    ) -> Result<Machine, EngineError> {
        self.machine_for(actor, id).await?;
        let effects = Effects {
            deadline_ms: Set::To(None),
            clear_boot_token: true,
            ..Default::default()
        };
        Ok(self
            .store
            .transition(id, Trigger::MarkBroken, &actor.name, why, &effects)
            .await?)
    }

    pub async fn mark_fixed(&self, actor: &Actor, id: &MachineId) -> Result<Machine, EngineError> {
        Self::require_admin(actor)?;
        self.machine_for(actor, id).await?;
        Ok(self
            .store
            .transition(id, Trigger::MarkFixed, &actor.name, "", &Effects::default())
            .await?)
    }

    /// Power on/off now, waiting for the BMC's answer.
    pub async fn power(
        &self,
        actor: &Actor,
        id: &MachineId,
        on: bool,
    ) -> Result<Machine, EngineError> {
        let m = self.machine_for(actor, id).await?;
        if !actor.is_admin() && m.owner != actor.user.as_ref().map(|u| u.id) {
            return Err(EngineError::Forbidden);
        }
        let op = if on { PowerOp::On } else { PowerOp::Off };
        self.run_power(id, op).await?;
        Ok(self.store.machine(id).await?)
    }

    /// Queries the BMC and records the answer (MAAS `query_power_state`).
    pub async fn query_power(
        &self,
        actor: &Actor,
        id: &MachineId,
    ) -> Result<PowerState, EngineError> {
        self.machine_for(actor, id).await?;
        let driver = self.driver(id).await?;
        match driver.power_state().await {
            Ok(state) => {
                self.store.set_power_state(id, state, None).await?;
                Ok(state)
            }
            Err(e) => {
                self.store
                    .set_power_state(id, PowerState::Error, Some(&e.to_string()))
                    .await?;
                Err(e.into())
            }
        }
    }

    // ---- netboot and agents -----------------------------------------------------------

    /// What a netbooting MAC should boot; mints the per-boot credential for ephemeral boots.
    pub async fn boot_decision(&self, mac: &str) -> Result<BootDecision, EngineError> {
        let mac = normalize_mac(mac).ok_or_else(|| EngineError::InvalidInput {
            field: "mac".into(),
            message: format!("{mac:?} is not a MAC address"),
        })?;
        let region_url = self.cfg.region_url.clone();
        let ttl = i64::try_from(self.cfg.commission_timeout.as_millis()).unwrap_or(i64::MAX / 4);
        match self.store.machine_by_mac(&mac).await? {
            None => {
                let token = self.store.issue_enlist_token(&mac, ttl).await?;
                Ok(BootDecision {
                    purpose: BootPurpose::Enlist,
                    machine_id: None,
                    boot_token: Some(token),
                    region_url,
                })
            }
            Some(m) => {
                let purpose = boot_purpose(m.status);
                // A New machine that is not commissioning has nothing to do in the ephemeral
                // environment beyond powering off; still hand it a token so it can say so.
                let boot_token = match purpose {
                    BootPurpose::LocalDisk => None,
                    _ => Some(self.store.issue_boot_token(&m.id, ttl).await?),
                };
                Ok(BootDecision {
                    purpose,
                    machine_id: Some(m.id),
                    boot_token,
                    region_url,
                })
            }
        }
    }

    pub async fn record_sighting(&self, s: &Sighting) -> Result<(), EngineError> {
        Ok(self.store.record_sighting(s).await?)
    }

    // ---- deadlines -------------------------------------------------------------------

    /// Fails every workflow whose deadline passed, and powers those machines off.
    pub async fn sweep_deadlines(&self) -> Result<usize, EngineError> {
        let overdue = self.store.overdue_machines().await?;
        let mut failed = 0;
        for m in overdue {
            let effects = Effects {
                deadline_ms: Set::To(None),
                clear_boot_token: true,
                ..Default::default()
            };
            let msg = format!(
                "timed out: no word from the machine while {}",
                m.status.name().to_lowercase()
            );
            match self
                .store
                .transition(&m.id, Trigger::TimedOut, "engine", &msg, &effects)
                .await
            {
                Ok(_) => {
                    failed += 1;
                    tracing::warn!(machine = %m.id, status = %m.status, "workflow timed out");
                    self.spawn_power(m.id.clone(), PowerOp::Off);
                }
                // The machine moved on meanwhile (e.g. the agent reported just in time).
                Err(StoreError::IllegalTransition(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(failed)
    }

    // ---- acting on BMCs ----------------------------------------------------------------

    async fn driver(&self, id: &MachineId) -> Result<Arc<dyn PowerDriver>, EngineError> {
        let (power_type, params) = self.store.power_credentials(id).await?;
        Ok(self.drivers.driver_for(power_type, &params)?)
    }

    /// Runs one power operation and records the outcome (state or error) on the machine.
    async fn run_power(&self, id: &MachineId, op: PowerOp) -> Result<(), EngineError> {
        let (power_type, _) = self.store.power_credentials(id).await?;
        if power_type == PowerType::Manual {
            // Nothing to drive; the operator powers the machine by hand.
            self.store
                .record_event(
                    id,
                    "engine",
                    "power",
                    &format!("manual power type: {op} the machine by hand"),
                )
                .await?;
            return Ok(());
        }
        let result = async {
            let d = self.driver(id).await?;
            match op {
                PowerOp::On => d.power_on().await?,
                PowerOp::Off => d.power_off().await?,
                PowerOp::NetbootCycle => {
                    match d
                        .set_boot_device(BootDevice::Pxe, BootPersistence::Once)
                        .await
                    {
                        Ok(()) => {}
                        // Some BMCs refuse boot overrides. A machine whose boot order puts the
                        // network first still netboots, so go on; say so in its history.
                        Err(e @ (PowerError::Unsupported { .. } | PowerError::Bmc { .. })) => {
                            let msg = format!(
                                "could not set next boot to PXE ({e}); powering on anyway: \
                                 the machine must boot from the network by default"
                            );
                            tracing::warn!(machine = %id, "{msg}");
                            self.store.record_event(id, "engine", "power", &msg).await?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    match d.power_state().await? {
                        PowerState::On => d.power_cycle().await?,
                        _ => d.power_on().await?,
                    }
                }
            }
            Ok::<_, EngineError>(())
        }
        .await;
        match result {
            Ok(()) => {
                let state = if matches!(op, PowerOp::Off) {
                    PowerState::Off
                } else {
                    PowerState::On
                };
                self.store.set_power_state(id, state, None).await?;
                self.store
                    .record_event(id, "engine", "power", &format!("{op}: done"))
                    .await?;
                Ok(())
            }
            Err(e) => {
                let msg = format!("{op} failed: {}", error_chain(&e));
                tracing::warn!(machine = %id, error = %msg, "power action failed");
                self.store
                    .set_power_state(id, PowerState::Error, Some(&msg))
                    .await?;
                self.store.record_event(id, "engine", "power", &msg).await?;
                Err(e)
            }
        }
    }

    fn spawn_power(&self, id: MachineId, op: PowerOp) {
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.run_power(&id, op).await;
        });
    }

    /// Netboots the machine into the ephemeral environment; on failure applies `on_fail`.
    fn spawn_netboot(&self, id: MachineId, on_fail: Trigger) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.run_power(&id, PowerOp::NetbootCycle).await {
                let effects = Effects {
                    deadline_ms: Set::To(None),
                    clear_boot_token: true,
                    ..Default::default()
                };
                let msg = format!("could not power the machine on: {}", error_chain(&e));
                if let Err(e) = me
                    .store
                    .transition(&id, on_fail, "engine", &msg, &effects)
                    .await
                {
                    tracing::warn!(machine = %id, error = %e, "could not record netboot failure");
                }
            }
        });
    }

    /// Release: power off, then Ready once off. A BMC fault fails the release (visible,
    /// retryable) rather than leaving it hanging.
    fn spawn_release_power_off(&self, id: MachineId) {
        let me = self.clone();
        tokio::spawn(async move {
            let outcome = me.run_power(&id, PowerOp::Off).await;
            let (trigger, msg, effects) = match outcome {
                Ok(()) => (
                    Trigger::ReleaseSucceeded,
                    "released: powered off".to_owned(),
                    release_effects(),
                ),
                Err(e) => (
                    Trigger::ReleaseFailed,
                    format!("release failed: {}", error_chain(&e)),
                    Effects {
                        deadline_ms: Set::To(None),
                        ..Default::default()
                    },
                ),
            };
            if let Err(e) = me
                .store
                .transition(&id, trigger, "engine", &msg, &effects)
                .await
            {
                tracing::warn!(machine = %id, error = %e, "release completion not recorded");
            }
        });
    }
}

/// What a finished release clears: owner, OS choice, user data, deadline.
fn release_effects() -> Effects {
    Effects {
        owner: Set::To(None),
        deadline_ms: Set::To(None),
        osystem: Set::To(String::new()),
        distro_series: Set::To(String::new()),
        hwe_kernel: Set::To(String::new()),
        user_data: Set::To(None),
        clear_boot_token: true,
        ..Default::default()
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum PowerOp {
    On,
    Off,
    /// Next boot from the network once, then on (or cycle if already on).
    NetbootCycle,
}

impl std::fmt::Display for PowerOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerOp::On => "power on",
            PowerOp::Off => "power off",
            PowerOp::NetbootCycle => "network boot (next boot PXE once, power on or cycle)",
        })
    }
}

/// "outer: inner: innermost", for messages shown to operators.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
