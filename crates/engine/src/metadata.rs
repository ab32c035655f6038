//! The metadata service's effects on the lifecycle (MAAS `metadataserver`): a machine reads
//! its user-data, signals its scripts' outcome, or posts cloud-init/curtin status events.
//! Callers have already authenticated the machine with its own metadata credentials.

use crate::{Actor, Engine, EngineError, PowerOp, release_effects};
use ingot_store::{Effects, Set};
use ingot_types::MachineId;
use ingot_types::lifecycle::{IllegalTransition, NodeStatus, Trigger};
use ingot_types::machine::Machine;

/// `status` of a metadata `op=signal` (MAAS SIGNAL_STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalStatus {
    Ok,
    Failed,
    Working,
    Commissioning,
    Testing,
    TimedOut,
    Installing,
    ApplyingNetconf,
    Releasing,
    Deploying,
}

impl SignalStatus {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "OK" => SignalStatus::Ok,
            "FAILED" => SignalStatus::Failed,
            "WORKING" => SignalStatus::Working,
            "COMMISSIONING" => SignalStatus::Commissioning,
            "TESTING" => SignalStatus::Testing,
            "TIMEDOUT" => SignalStatus::TimedOut,
            "INSTALLING" => SignalStatus::Installing,
            "APPLYING_NETCONF" => SignalStatus::ApplyingNetconf,
            "RELEASING" => SignalStatus::Releasing,
            "DEPLOYING" => SignalStatus::Deploying,
            _ => return None,
        })
    }
}

/// A cloud-init or curtin reporting event (`POST /MAAS/metadata/status/{system_id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// start, progress or finish.
    pub event_type: String,
    /// curtin or cloudinit.
    pub origin: String,
    /// e.g. `cmd-install/stage-partitioning`, `modules-final`.
    pub name: String,
    pub description: String,
    /// SUCCESS, FAIL or WARN (finish events).
    pub result: Option<String>,
}

/// What a deployed OS needs to reach its metadata service: where, and with which of the
/// machine's own credentials. The deploy path writes [`MetadataSeed::cloud_config`] into the
/// target's `/etc/cloud/cloud.cfg.d/` (MAAS writes the same keys through curtin).
#[derive(Clone, PartialEq, Eq)]
pub struct MetadataSeed {
    pub metadata_url: String,
    pub consumer_key: String,
    pub token_key: String,
    pub token_secret: String,
}

impl std::fmt::Debug for MetadataSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataSeed")
            .field("metadata_url", &self.metadata_url)
            .field("token_key", &self.token_key)
            .finish_non_exhaustive()
    }
}

impl MetadataSeed {
    /// A cloud-init config file selecting the MAAS datasource with these credentials.
    /// Values are YAML double-quoted strings (keys and URLs never need more escaping than
    /// `\\` and `\"`).
    pub fn cloud_config(&self) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        format!(
            "datasource_list: [ MAAS ]\ndatasource:\n  MAAS:\n    metadata_url: {}\n    consumer_key: {}\n    token_key: {}\n    token_secret: {}\n",
            q(&self.metadata_url),
            q(&self.consumer_key),
            q(&self.token_key),
            q(&self.token_secret)
        )
    }
}

impl Engine {
    /// Issues the machine's metadata-service OAuth credentials (MAAS `op=get_token`),
    /// replacing earlier ones. Administrators only.
    pub async fn issue_metadata_credentials(
        &self,
        actor: &Actor,
        id: &MachineId,
    ) -> Result<ingot_store::IssuedApiKey, EngineError> {
        Self::require_admin(actor)?;
        self.machine_for(actor, id).await?;
        Ok(self.store.issue_metadata_token(id).await?)
    }

    /// Fresh metadata credentials for a machine being deployed, for the deploy path to write
    /// into the target (not an operator action: no actor). Replaces earlier credentials.
    pub async fn metadata_seed(&self, id: &MachineId) -> Result<MetadataSeed, EngineError> {
        let k = self.store.issue_metadata_token(id).await?;
        Ok(MetadataSeed {
            metadata_url: format!(
                "{}/MAAS/metadata/",
                self.cfg.region_url.trim_end_matches('/')
            ),
            consumer_key: k.consumer_key,
            token_key: k.token_key,
            token_secret: k.token_secret,
        })
    }

    /// The machine's user-data for the metadata service. The deployed OS reading it while
    /// the machine is Deploying is what marks the deployment done, as in MAAS.
    pub async fn metadata_user_data(&self, m: &Machine) -> Result<Option<String>, EngineError> {
        let data = self.store.user_data(&m.id).await?;
        if m.status == NodeStatus::Deploying {
            let effects = self.finished();
            match self
                .store
                .transition(
                    &m.id,
                    Trigger::DeploySucceeded,
                    &self.machine_actor(m),
                    "deployed: user-data read",
                    &effects,
                )
                .await
            {
                Ok(_) => {}
                // Another request of the same boot got there first.
                Err(ingot_store::StoreError::IllegalTransition(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(data)
    }

    /// Applies a metadata `op=signal` from the machine's scripts.
    pub async fn metadata_signal(
        &self,
        m: &Machine,
        status: SignalStatus,
        error: Option<&str>,
    ) -> Result<Machine, EngineError> {
        use NodeStatus as N;
        use SignalStatus as S;
        let actor = self.machine_actor(m);
        let message = error.unwrap_or("");
        let (trigger, effects, power_off) = match (m.status, status) {
            (N::Commissioning, S::Ok) => (Trigger::CommissioningSucceeded, self.finished(), true),
            (N::Commissioning, S::Failed | S::TimedOut) => {
                (Trigger::CommissioningFailed, self.finished(), true)
            }
            (N::Deploying, S::Failed | S::TimedOut) => {
                (Trigger::DeployFailed, self.finished(), true)
            }
            (N::DiskErasing, S::Ok) => (Trigger::EraseSucceeded, release_effects(), true),
            (N::DiskErasing, S::Failed | S::TimedOut) => {
                (Trigger::EraseFailed, self.finished(), true)
            }
            (N::Releasing, S::Ok) => (Trigger::ReleaseSucceeded, release_effects(), true),
            (N::Releasing, S::Failed | S::TimedOut) => {
                (Trigger::ReleaseFailed, self.finished(), false)
            }
            // Progress: the machine is alive; record it and push the deadline out.
            (s, _) if s.is_in_progress() => {
                let text = format!(
                    "signal {status:?}{}{message}",
                    if message.is_empty() { "" } else { ": " }
                );
                self.store
                    .record_event(&m.id, &actor, "agent", &text)
                    .await?;
                let timeout = if s == N::Deploying {
                    self.cfg.deploy_timeout
                } else {
                    self.cfg.commission_timeout
                };
                self.store
                    .extend_deadline(&m.id, s, deadline_after(timeout))
                    .await?;
                return Ok(self.store.machine(&m.id).await?);
            }
            (current, _) => {
                // MAAS answers 409 to signals from machines that are not running a workflow.
                let trigger = match status {
                    S::Failed | S::TimedOut => Trigger::CommissioningFailed,
                    _ => Trigger::CommissioningSucceeded,
                };
                return Err(IllegalTransition { current, trigger }.into());
            }
        };
        let m = self
            .store
            .transition(&m.id, trigger, &actor, message, &effects)
            .await?;
        if power_off {
            self.spawn_power(m.id.clone(), PowerOp::Off);
        }
        Ok(m)
    }

    /// Records a reporting event and applies the ones that end a workflow: a failed
    /// top-level `finish`, and cloud-init's `modules-final` finishing.
    pub async fn metadata_status_event(
        &self,
        m: &Machine,
        ev: &StatusEvent,
    ) -> Result<(), EngineError> {
        let actor = self.machine_actor(m);
        let text = format!(
            "{} {} {}{}: {}",
            ev.origin,
            ev.event_type,
            ev.name,
            ev.result
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            ev.description
        );
        self.store
            .record_event(&m.id, &actor, "agent", &text)
            .await?;
        if ev.event_type != "finish" {
            if m.status.is_in_progress() {
                let timeout = if m.status == NodeStatus::Deploying {
                    self.cfg.deploy_timeout
                } else {
                    self.cfg.commission_timeout
                };
                self.store
                    .extend_deadline(&m.id, m.status, deadline_after(timeout))
                    .await?;
            }
            return Ok(());
        }
        let failed = ev.result.as_deref() == Some("FAIL");
        let top_level = !ev.name.contains('/');
        let outcome = match (m.status, failed, top_level, ev.name.as_str()) {
            (NodeStatus::Deploying, true, true, _) => {
                Some((Trigger::DeployFailed, self.finished()))
            }
            (NodeStatus::Commissioning, true, true, _) => {
                Some((Trigger::CommissioningFailed, self.finished()))
            }
            (NodeStatus::Deploying, false, _, "modules-final") => {
                Some((Trigger::DeploySucceeded, self.finished()))
            }
            (NodeStatus::Releasing, false, _, "modules-final") => {
                Some((Trigger::ReleaseSucceeded, release_effects()))
            }
            (NodeStatus::DiskErasing, false, _, "modules-final") => {
                Some((Trigger::EraseSucceeded, release_effects()))
            }
            _ => None,
        };
        if let Some((trigger, effects)) = outcome {
            match self
                .store
                .transition(&m.id, trigger, &actor, &ev.description, &effects)
                .await
            {
                Ok(_) | Err(ingot_store::StoreError::IllegalTransition(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn finished(&self) -> Effects {
        Effects {
            deadline_ms: Set::To(None),
            clear_boot_token: true,
            ..Default::default()
        }
    }

    fn machine_actor(&self, m: &Machine) -> String {
        format!("metadata:{}", m.id)
    }
}

fn deadline_after(after: std::time::Duration) -> i64 {
    chrono::Utc::now().timestamp_millis() + i64::try_from(after.as_millis()).unwrap_or(i64::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_renders_a_maas_datasource_config() {
        let seed = MetadataSeed {
            metadata_url: "http://10.0.0.1:5240/MAAS/metadata/".into(),
            consumer_key: "ck".into(),
            token_key: "tk".into(),
            token_secret: "s\"e\\c".into(),
        };
        assert_eq!(
            seed.cloud_config(),
            "datasource_list: [ MAAS ]\ndatasource:\n  MAAS:\n    \
             metadata_url: \"http://10.0.0.1:5240/MAAS/metadata/\"\n    consumer_key: \"ck\"\n    \
             token_key: \"tk\"\n    token_secret: \"s\\\"e\\\\c\"\n"
        );
        assert!(
            !format!("{seed:?}").contains("s\\\"e"),
            "Debug hides the secret"
        );
    }
}
