//! The region's side of the agent protocol (`ingot_types::agent`). Callers authenticate with
//! the per-boot token from the kernel command line; the token names the machine.

use crate::{Engine, EngineError, PowerOp, release_effects};
use ingot_store::{Effects, Set};
use ingot_types::agent::{EnlistRequest, EnlistResponse, Instructions, Report, ReportAck};
use ingot_types::inventory::normalize_mac;
use ingot_types::lifecycle::{NodeStatus, Trigger};
use ingot_types::machine::{Machine, NewMachine};

impl Engine {
    async fn machine_for_token(&self, token: &str) -> Result<Machine, EngineError> {
        self.store
            .machine_by_boot_token(token)
            .await?
            .ok_or(EngineError::BadAgentToken)
    }

    fn token_ttl_ms(&self) -> i64 {
        i64::try_from(self.cfg.commission_timeout.as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// An unknown machine enlists itself with the enlistment token it booted with. The token
    /// is spent; the answer carries the machine's own token for the rest of the boot.
    pub async fn agent_enlist(
        &self,
        token: &str,
        req: EnlistRequest,
    ) -> Result<EnlistResponse, EngineError> {
        let boot_mac = normalize_mac(&req.boot_mac).ok_or_else(|| EngineError::InvalidInput {
            field: "boot_mac".into(),
            message: format!("{:?} is not a MAC address", req.boot_mac),
        })?;
        let issued_for = self
            .store
            .take_enlist_token(token)
            .await?
            .ok_or(EngineError::BadAgentToken)?;
        if issued_for != boot_mac {
            return Err(EngineError::BadAgentToken);
        }
        let macs = req
            .inventory
            .interfaces
            .iter()
            .filter_map(|n| normalize_mac(&n.mac))
            .collect();
        let new = NewMachine {
            boot_mac: Some(boot_mac),
            macs,
            inventory: Some(req.inventory),
            ..Default::default()
        };
        let m = self.store.create_machine(new, "enlistment").await?;
        let token = self
            .store
            .issue_boot_token(&m.id, self.token_ttl_ms())
            .await?;
        Ok(EnlistResponse {
            machine_id: m.id,
            token,
        })
    }

    pub async fn agent_instructions(&self, token: &str) -> Result<Instructions, EngineError> {
        let m = self.machine_for_token(token).await?;
        Ok(match m.status {
            NodeStatus::Commissioning => Instructions::Commission { machine_id: m.id },
            NodeStatus::Deploying => Instructions::Deploy {
                machine_id: m.id,
                osystem: m.osystem,
                distro_series: m.distro_series,
                image_url: None,
            },
            NodeStatus::DiskErasing => Instructions::Erase {
                machine_id: m.id,
                quick: true,
            },
            _ => Instructions::PowerOff,
        })
    }

    pub async fn agent_report(
        &self,
        token: &str,
        report: Report,
    ) -> Result<ReportAck, EngineError> {
        let m = self.machine_for_token(token).await?;
        let actor = format!("agent:{}", m.id);
        let done = Effects {
            deadline_ms: Set::To(None),
            clear_boot_token: true,
            ..Default::default()
        };
        let updated = match report {
            Report::Progress { message } => {
                self.store
                    .record_event(&m.id, &actor, "agent", &message)
                    .await?;
                // Progress proves the machine is alive: push the deadline out (MAAS does the
                // same on curtin events).
                if m.status.is_in_progress() {
                    let timeout = match m.status {
                        NodeStatus::Deploying => self.cfg.deploy_timeout,
                        _ => self.cfg.commission_timeout,
                    };
                    self.store
                        .extend_deadline(&m.id, m.status, self.deadline_ms(timeout))
                        .await?;
                }
                m
            }
            Report::Commissioned { inventory } => {
                if inventory.cpu_count == 0 || inventory.memory_mib == 0 {
                    return Err(EngineError::InvalidInput {
                        field: "inventory".into(),
                        message: "cpu_count and memory_mib must be positive".into(),
                    });
                }
                let effects = Effects {
                    inventory: Set::To(inventory),
                    ..done
                };
                let m = self
                    .store
                    .transition(
                        &m.id,
                        Trigger::CommissioningSucceeded,
                        &actor,
                        "commissioning complete",
                        &effects,
                    )
                    .await?;
                self.spawn_power(m.id.clone(), PowerOp::Off);
                m
            }
            Report::Deployed => {
                self.store
                    .transition(&m.id, Trigger::DeploySucceeded, &actor, "deployed", &done)
                    .await?
            }
            Report::Erased => {
                let m = self
                    .store
                    .transition(
                        &m.id,
                        Trigger::EraseSucceeded,
                        &actor,
                        "disks erased",
                        &release_effects(),
                    )
                    .await?;
                self.spawn_power(m.id.clone(), PowerOp::Off);
                m
            }
            Report::Failed { message } => {
                let trigger = match m.status {
                    NodeStatus::Commissioning => Trigger::CommissioningFailed,
                    NodeStatus::Deploying => Trigger::DeployFailed,
                    NodeStatus::DiskErasing => Trigger::EraseFailed,
                    NodeStatus::Releasing => Trigger::ReleaseFailed,
                    _ => Trigger::CommissioningFailed,
                };
                let m = self
                    .store
                    .transition(&m.id, trigger, &actor, &message, &done)
                    .await?;
                self.spawn_power(m.id.clone(), PowerOp::Off);
                m
            }
        };
        Ok(ReportAck {
            status_name: updated.status.name().to_owned(),
        })
    }

    fn deadline_ms(&self, after: std::time::Duration) -> i64 {
        chrono::Utc::now().timestamp_millis()
            + i64::try_from(after.as_millis()).unwrap_or(i64::MAX / 4)
    }
}
