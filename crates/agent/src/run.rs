//! One boot of the ephemeral environment, from the agent's side: enlist if the machine is
//! unknown, ask for instructions, carry them out, report. Powering off is the caller's job
//! (the binary does it; tests must not).

use crate::client::{AgentClient, AgentError, RetryPolicy, error_chain};
use crate::config::BootConfig;
use crate::erase::{EraseDiskError, quick_erase};
use crate::inventory::{CollectInventoryError, Roots, collect, default_route_interface};
use ingot_types::MachineId;
use ingot_types::agent::{EnlistRequest, Instructions, Report};
use ingot_types::boot::BootPurpose;
use ingot_types::inventory::Inventory;
use std::sync::Arc;

/// Where progress lines go: the serial console in the ephemeral environment.
pub type Console = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub machine_id: Option<MachineId>,
    /// This boot created the machine in the region.
    pub enlisted: bool,
    pub done: Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Inventory reported; the region moved the machine on (Ready).
    Commissioned,
    /// Disks quick-erased and reported; the region released the machine.
    Erased,
    /// The region had nothing for this machine.
    NothingToDo,
}

#[derive(Debug, thiserror::Error)]
pub enum RunAgentError {
    #[error("cannot collect the hardware inventory")]
    Inventory(#[from] CollectInventoryError),
    #[error(
        "cannot tell which interface the machine booted from: no BOOTIF= on the kernel command line, no default route, no interface with link"
    )]
    NoBootInterface,
    #[error("cannot talk to the region at {region_url}")]
    BadRegionUrl {
        region_url: String,
        #[source]
        source: AgentError,
    },
    #[error(
        "region at {region_url} is unreachable: gave up trying to {step} after {attempts} attempts; check that the region runs and that this network can reach it"
    )]
    RegionUnreachable {
        region_url: String,
        step: &'static str,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("refused malformed instructions from the region; doing nothing")]
    MalformedInstructions(#[source] AgentError),
    #[error("region refused to {step}")]
    Region {
        step: &'static str,
        #[source]
        source: AgentError,
    },
    #[error("erasing the disks failed")]
    Erase(#[from] EraseDiskError),
    #[error("the region asked this machine to {0}, which this agent cannot do yet")]
    Unsupported(&'static str),
}

/// Runs the agent once against the region named in `cfg`, reading hardware under `roots`.
pub async fn run(
    cfg: &BootConfig,
    roots: &Roots,
    retry: RetryPolicy,
    console: Console,
) -> Result<Outcome, RunAgentError> {
    let inventory = collect(roots)?;
    console(&format!(
        "hardware: {} CPUs, {} MiB memory, {} disks, {} network interfaces, {:?} boot",
        inventory.cpu_count,
        inventory.memory_mib,
        inventory.disks.len(),
        inventory.interfaces.len(),
        inventory.boot_mode
    ));
    let observer = console.clone();
    let mut client = AgentClient::new(&cfg.region_url, &cfg.token)
        .map_err(|source| RunAgentError::BadRegionUrl {
            region_url: cfg.region_url.clone(),
            source,
        })?
        .on_retry(move |n| {
            observer(&format!(
                "region not answering {} (attempt {}/{}: {}); retrying in {:.1} s",
                n.path,
                n.attempt,
                n.attempts,
                n.reason,
                n.wait.as_secs_f64()
            ))
        });
    client.retry = retry;
    let step_error = |step: &'static str| {
        let region_url = cfg.region_url.clone();
        move |source: AgentError| match source {
            AgentError::Unreachable { attempts, source } => RunAgentError::RegionUnreachable {
                region_url,
                step,
                attempts,
                source,
            },
            AgentError::Malformed(_) if step == "get instructions" => {
                RunAgentError::MalformedInstructions(source)
            }
            source => RunAgentError::Region { step, source },
        }
    };

    let result = session(&mut client, cfg, roots, &inventory, &console, &step_error).await;
    if let Err(e) = &result
        && e.worth_reporting()
    {
        // Tell the region right away rather than leave it waiting for its deadline.
        if let Err(report_err) = client
            .report(&Report::Failed {
                message: error_chain(e),
            })
            .await
        {
            console(&format!(
                "could not report the failure: {}",
                error_chain(&report_err)
            ));
        }
    }
    result
}

impl RunAgentError {
    /// Whether a Failed report can reach the region and mean something there: not when it
    /// is unreachable or has refused this boot's credential.
    fn worth_reporting(&self) -> bool {
        match self {
            RunAgentError::RegionUnreachable { .. } | RunAgentError::BadRegionUrl { .. } => false,
            RunAgentError::Region { source, .. } => !source.is_unauthorized(),
            _ => true,
        }
    }
}

async fn session<F>(
    client: &mut AgentClient,
    cfg: &BootConfig,
    roots: &Roots,
    inventory: &Inventory,
    console: &Console,
    step_error: &impl Fn(&'static str) -> F,
) -> Result<Outcome, RunAgentError>
where
    F: FnOnce(AgentError) -> RunAgentError,
{
    let mut machine_id = None;
    let mut enlisted = false;
    let instructions = match cfg.purpose {
        Some(BootPurpose::Enlist) => None,
        // The boot loader did not say: a machine token gets instructions, an enlistment
        // token is refused (401) and means "enlist first".
        None => match client.instructions().await {
            Err(e) if e.is_unauthorized() => None,
            other => Some(other.map_err(step_error("get instructions"))?),
        },
        Some(_) => Some(
            client
                .instructions()
                .await
                .map_err(step_error("get instructions"))?,
        ),
    };
    let instructions = match instructions {
        Some(i) => i,
        None => {
            let boot_mac = boot_mac(cfg, roots, inventory).ok_or(RunAgentError::NoBootInterface)?;
            console(&format!("enlisting as {boot_mac}"));
            let resp = client
                .enlist(&EnlistRequest {
                    boot_mac,
                    inventory: inventory.clone(),
                })
                .await
                .map_err(step_error("enlist"))?;
            console(&format!("enlisted as machine {}", resp.machine_id));
            client.set_token(&resp.token);
            machine_id = Some(resp.machine_id);
            enlisted = true;
            client
                .instructions()
                .await
                .map_err(step_error("get instructions"))?
        }
    };
    let done = match instructions {
        Instructions::Commission { machine_id: id } => {
            console(&format!("commissioning machine {id}"));
            commission(client, roots, console, step_error).await?;
            machine_id = Some(id);
            Done::Commissioned
        }
        Instructions::PowerOff => {
            console("region has nothing for this machine");
            Done::NothingToDo
        }
        Instructions::Deploy { .. } => return Err(RunAgentError::Unsupported("deploy")),
        Instructions::Erase {
            machine_id: id,
            quick: true,
        } => {
            console(&format!(
                "quick-erasing {} disks of machine {id}",
                inventory.disks.len()
            ));
            client
                .report(&Report::Progress {
                    message: format!("quick-erasing {} disks", inventory.disks.len()),
                })
                .await
                .map_err(step_error("report progress"))?;
            let erased = quick_erase(&roots.dev, &inventory.disks)?;
            let names: Vec<String> = erased.iter().map(|p| p.display().to_string()).collect();
            console(&format!("erased the start and end of {}", names.join(", ")));
            let ack = client
                .report(&Report::Erased)
                .await
                .map_err(step_error("report the erase"))?;
            console(&format!(
                "erase reported; machine is now {}",
                ack.status_name
            ));
            machine_id = Some(id);
            Done::Erased
        }
        // Zeroing whole disks takes hours and needs progress reporting; not done yet.
        Instructions::Erase { quick: false, .. } => {
            return Err(RunAgentError::Unsupported("erase its disks fully"));
        }
    };
    Ok(Outcome {
        machine_id,
        enlisted,
        done,
    })
}

async fn commission<F>(
    client: &AgentClient,
    roots: &Roots,
    console: &Console,
    step_error: &impl Fn(&'static str) -> F,
) -> Result<(), RunAgentError>
where
    F: FnOnce(AgentError) -> RunAgentError,
{
    client
        .report(&Report::Progress {
            message: "collecting inventory".into(),
        })
        .await
        .map_err(step_error("report progress"))?;
    let inventory: Inventory = collect(roots)?;
    let ack = client
        .report(&Report::Commissioned { inventory })
        .await
        .map_err(step_error("report the inventory"))?;
    console(&format!(
        "inventory reported; machine is now {}",
        ack.status_name
    ));
    Ok(())
}

/// The MAC to enlist under: BOOTIF from the boot loader, else the interface DHCP configured
/// (default route), else the only interface with link.
pub fn boot_mac(cfg: &BootConfig, roots: &Roots, inventory: &Inventory) -> Option<String> {
    if let Some(mac) = &cfg.boot_mac {
        return Some(mac.clone());
    }
    if let Some(iface) = default_route_interface(&roots.proc)
        && let Some(nic) = inventory.interfaces.iter().find(|n| n.name == iface)
    {
        return Some(nic.mac.clone());
    }
    let mut with_link = inventory.interfaces.iter().filter(|n| n.link_up);
    match (with_link.next(), with_link.next()) {
        (Some(only), None) => Some(only.mac.clone()),
        _ => None,
    }
}
