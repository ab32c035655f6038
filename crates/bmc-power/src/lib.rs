//! Power control for BMCs. One trait, [`PowerDriver`], with an implementation per protocol:
//! - [`sim`]: an in-process simulated BMC with fault injection (unreachable, slow, wrong password),
//!   used by `ingot serve --sim-machines` and the tests;
//! - [`ipmi`]: IPMI 2.0 RMCP+ (cipher suites 17 and 3) and IPMI 1.5 over UDP;
//! - [`redfish`]: a thin Redfish client (sans-IO request/response core over reqwest).
//!
//! The engine picks a driver with [`DriverFactory::driver_for`] from a machine's power type and
//! parameters; nothing outside this crate knows a BMC protocol.

pub mod ipmi;
pub mod redfish;
pub mod sim;

use async_trait::async_trait;
use ingot_types::power::{BootDevice, BootPersistence, PowerParameters, PowerState, PowerType};
use std::sync::Arc;
use std::time::Duration;

/// A BMC's failure, typed so the engine can tell "wrong password" from "not answering".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowerError {
    #[error("BMC rejected the credentials for {user:?}")]
    AuthFailed { user: String },
    #[error("BMC at {address} is unreachable: {detail}")]
    Unreachable { address: String, detail: String },
    #[error("BMC at {address} did not answer within {after:?}")]
    Timeout { address: String, after: Duration },
    #[error("{operation} is not supported by this BMC")]
    Unsupported { operation: &'static str },
    #[error("BMC error {code}: {message}")]
    Bmc { code: String, message: String },
    #[error("power parameters are incomplete: {field} is required")]
    MissingParameter { field: &'static str },
    #[error("power parameter {field} is invalid: {reason}")]
    InvalidParameter { field: &'static str, reason: String },
}

#[async_trait]
pub trait PowerDriver: Send + Sync {
    async fn power_on(&self) -> Result<(), PowerError>;
    /// Hard power off.
    async fn power_off(&self) -> Result<(), PowerError>;
    /// Graceful (ACPI) shutdown request.
    async fn soft_off(&self) -> Result<(), PowerError>;
    /// Power cycle / reset.
    async fn power_cycle(&self) -> Result<(), PowerError>;
    async fn power_state(&self) -> Result<PowerState, PowerError>;
    async fn set_boot_device(
        &self,
        device: BootDevice,
        persistence: BootPersistence,
    ) -> Result<(), PowerError>;
}

/// Builds drivers from stored power parameters. The binary wires the real protocols and the
/// sim registry together; tests can build a factory with only the sim.
pub trait DriverFactory: Send + Sync {
    fn driver_for(
        &self,
        power_type: PowerType,
        params: &PowerParameters,
    ) -> Result<Arc<dyn PowerDriver>, PowerError>;
}

/// The default factory: sim BMCs from a shared registry; other protocols as they land.
#[derive(Clone, Default)]
pub struct Drivers {
    pub sim: sim::SimRegistry,
}

impl DriverFactory for Drivers {
    fn driver_for(
        &self,
        power_type: PowerType,
        params: &PowerParameters,
    ) -> Result<Arc<dyn PowerDriver>, PowerError> {
        match power_type {
            PowerType::Sim => Ok(Arc::new(self.sim.driver(params)?)),
            PowerType::Manual => Err(PowerError::Unsupported {
                operation: "manual power control",
            }),
            PowerType::Ipmi => Ok(Arc::new(ipmi::IpmiDriver::from_parameters(params)?)),
            PowerType::Redfish => Ok(Arc::new(redfish::RedfishDriver::new(params)?)),
        }
    }
}
