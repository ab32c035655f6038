//! Sans-IO Redfish: builds [`Request`]s and reads [`Response`]s into decisions. Nothing here
//! touches a socket, so every rule (which system, which ResetType, which error) is a pure
//! function with table tests; `super::RedfishDriver` only moves bytes.

use crate::PowerError;
use ingot_types::power::{BootDevice, BootPersistence, PowerState};
use reqwest::Url;
use serde_json::{Value, json};
use std::fmt;
use std::net::IpAddr;

pub const SERVICE_ROOT: &str = "/redfish/v1/";
/// DSP0266 fixes the session collection's URI, so a root that links `SessionService` but
/// omits `Links.Sessions` still tells us where to log in.
const STANDARD_SESSIONS: &str = "/redfish/v1/SessionService/Sessions";

/// A code for [`PowerError::Bmc`] when the BMC answered 2xx with something we cannot use.
pub const INVALID_RESPONSE: &str = "invalid-response";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
        }
    }
}

/// One HTTP request to make. `path` is an absolute path (or a full URL, as some BMCs put in
/// `Location`), resolved against the BMC's base URL by the shell.
#[derive(Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
    pub if_match: Option<String>,
    /// The body carries a password: never print it.
    pub sensitive: bool,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body: &dyn fmt::Debug = if self.sensitive {
            &"<redacted>"
        } else {
            &self.body
        };
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("body", body)
            .field("if_match", &self.if_match)
            .finish()
    }
}

impl Request {
    pub fn get(path: &str) -> Self {
        Self::new(Method::Get, path, None)
    }

    fn new(method: Method, path: &str, body: Option<Value>) -> Self {
        Self {
            method,
            path: path.to_owned(),
            body,
            if_match: None,
            sensitive: false,
        }
    }
}

/// What the shell hands back from one HTTP exchange.
#[derive(Clone, Default, PartialEq)]
pub struct Response {
    pub status: u16,
    pub etag: Option<String>,
    pub location: Option<String>,
    /// `X-Auth-Token`, present on session creation.
    pub auth_token: Option<String>,
    pub body: Vec<u8>,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("etag", &self.etag)
            .field("location", &self.location)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

/// Who we talk to, for error context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub address: String,
    pub user: String,
}

// ---------------------------------------------------------------------------------------------
// Addresses

/// The BMC's base URL from `power_address`: `host`, `host:port`, `[v6]:port`, a bare IPv6
/// address, or any of these with `http://` / `https://`. Plain hosts default to https, as
/// every BMC serves Redfish over TLS; an explicit `http://` is honoured (emulators, labs).
pub fn base_url(power_address: &str) -> Result<Url, PowerError> {
    let invalid = |reason: String| PowerError::InvalidParameter {
        field: "power_address",
        reason,
    };
    let raw = power_address.trim();
    if raw.is_empty() {
        return Err(PowerError::MissingParameter {
            field: "power_address",
        });
    }
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else if let Ok(IpAddr::V6(v6)) = raw.parse::<IpAddr>() {
        format!("https://[{v6}]")
    } else {
        format!("https://{raw}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|e| invalid(format!("{raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("{raw:?} has no host")));
    }
    // Credentials come from power_user/power_pass only; a path such as /redfish/v1 is
    // redundant because every request path is absolute.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_path("/");
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

// ---------------------------------------------------------------------------------------------
// Status and error bodies

/// Turns a non-2xx answer into the typed error: 401/403 mean the credentials were refused,
/// anything else is the BMC's own error, with its Redfish message when it sent one.
pub fn expect_success(resp: &Response, peer: &Peer) -> Result<(), PowerError> {
    match resp.status {
        200..=299 => Ok(()),
        401 | 403 => Err(PowerError::AuthFailed {
            user: peer.user.clone(),
        }),
        status => Err(PowerError::Bmc {
            code: status.to_string(),
            message: error_message(&resp.body).unwrap_or_else(|| format!("HTTP {status}")),
        }),
    }
}

/// The human part of a Redfish error body: `error.@Message.ExtendedInfo[].Message` joined,
/// else `error.message`, else (non-JSON bodies, as some BMCs and sushy's 400s send) the text.
pub fn error_message(body: &[u8]) -> Option<String> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        return (!text.is_empty()).then(|| truncate(text, 300));
    };
    let error = value.get("error")?;
    let extended: Vec<&str> = error
        .get("@Message.ExtendedInfo")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|info| info.get("Message").and_then(Value::as_str))
        .filter(|m| !m.trim().is_empty())
        .collect();
    if !extended.is_empty() {
        return Some(extended.join("; "));
    }
    error
        .get("message")
        .and_then(Value::as_str)
        .map(|m| truncate(m.trim(), 300))
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn invalid_response(what: &str, detail: impl fmt::Display) -> PowerError {
    PowerError::Bmc {
        code: INVALID_RESPONSE.into(),
        message: format!("{what}: {detail}"),
    }
}

/// The JSON body of a successful answer, or a typed error (never a panic) for garbage.
fn json_body(resp: &Response, what: &str) -> Result<Value, PowerError> {
    let value: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| invalid_response(what, format_args!("body is not JSON ({e})")))?;
    if !value.is_object() {
        return Err(invalid_response(what, "body is not a JSON object"));
    }
    Ok(value)
}

fn odata_id<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)?
        .get("@odata.id")?
        .as_str()
        .filter(|s| !s.is_empty())
}

fn strings(value: Option<&Value>) -> Option<Vec<String>> {
    Some(
        value?
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Service root

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoot {
    pub systems: String,
    /// Where to POST a session; `None` means the service has no session service (use Basic).
    pub sessions: Option<String>,
}

pub fn parse_service_root(resp: &Response) -> Result<ServiceRoot, PowerError> {
    const WHAT: &str = "service root";
    let root = json_body(resp, WHAT)?;
    let systems = odata_id(&root, "/Systems")
        .ok_or_else(|| invalid_response(WHAT, "no Systems link"))?
        .to_owned();
    // sushy-tools' root has no `Links` at all, so everything here is optional.
    let sessions = odata_id(&root, "/Links/Sessions")
        .map(str::to_owned)
        .or_else(|| {
            odata_id(&root, "/SessionService")
                .is_some()
                .then(|| STANDARD_SESSIONS.to_owned())
        });
    Ok(ServiceRoot { systems, sessions })
}

// ---------------------------------------------------------------------------------------------
// Sessions

pub fn create_session(sessions: &str, user: &str, password: &str) -> Request {
    Request {
        sensitive: true,
        ..Request::new(
            Method::Post,
            sessions,
            Some(json!({ "UserName": user, "Password": password })),
        )
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub token: String,
    /// The session's URI, to DELETE on logout. `None` if the BMC told us neither `Location`
    /// nor `@odata.id` (the session then expires on its own).
    pub location: Option<String>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("token", &"<redacted>")
            .field("location", &self.location)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    Created(Session),
    /// No usable session service: authenticate each request with HTTP Basic instead.
    UseBasic,
}

pub fn parse_session_created(resp: &Response, peer: &Peer) -> Result<SessionOutcome, PowerError> {
    // 404/405/501: the service advertises sessions it does not implement; Basic still works.
    if matches!(resp.status, 404 | 405 | 501) {
        return Ok(SessionOutcome::UseBasic);
    }
    expect_success(resp, peer)?;
    let Some(token) = resp.auth_token.clone().filter(|t| !t.is_empty()) else {
        // A 2xx without a token cannot authenticate anything; Basic is the spec's other way.
        return Ok(SessionOutcome::UseBasic);
    };
    let location = resp.location.clone().filter(|l| !l.is_empty()).or_else(|| {
        let body: Value = serde_json::from_slice(&resp.body).ok()?;
        body.get("@odata.id")?.as_str().map(str::to_owned)
    });
    Ok(SessionOutcome::Created(Session { token, location }))
}

// ---------------------------------------------------------------------------------------------
// Systems

/// The system to drive: the member whose last path segment is `node_id`, or the only member.
pub fn pick_system(resp: &Response, node_id: Option<&str>) -> Result<String, PowerError> {
    const WHAT: &str = "Systems collection";
    let collection = json_body(resp, WHAT)?;
    let members: Vec<&str> = collection
        .get("Members")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid_response(WHAT, "no Members array"))?
        .iter()
        .filter_map(|m| m.get("@odata.id").and_then(Value::as_str))
        .collect();
    let id_of = |path: &str| {
        path.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_owned()
    };
    let ids = || {
        members
            .iter()
            .map(|m| id_of(m))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (
        node_id.map(str::trim).filter(|n| !n.is_empty()),
        members.as_slice(),
    ) {
        (_, []) => Err(PowerError::Bmc {
            code: "no-system".into(),
            message: "the BMC's Systems collection is empty".into(),
        }),
        (Some(node), _) => members
            .iter()
            .find(|m| id_of(m) == node)
            .map(|m| (*m).to_owned())
            .ok_or_else(|| PowerError::InvalidParameter {
                field: "node_id",
                reason: format!("the BMC has no system {node:?} (it has: {})", ids()),
            }),
        (None, [only]) => Ok((*only).to_owned()),
        (None, several) => Err(PowerError::InvalidParameter {
            field: "node_id",
            reason: format!(
                "the BMC has {} systems ({}); set node_id to one of them",
                several.len(),
                ids()
            ),
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetAction {
    pub target: String,
    /// `ResetType@Redfish.AllowableValues`; `None` when the BMC does not say.
    pub allowed: Option<Vec<String>>,
    /// `@Redfish.ActionInfo`: where the allowed values are when they are not inline.
    pub action_info: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    pub power_state: PowerState,
    pub reset: Option<ResetAction>,
    pub boot_targets: Option<Vec<String>>,
    pub boot_enabled_values: Option<Vec<String>>,
    /// From the `ETag` header, else `@odata.etag`; sent back as `If-Match` on PATCH.
    pub etag: Option<String>,
}

pub fn parse_system(resp: &Response) -> Result<System, PowerError> {
    const WHAT: &str = "ComputerSystem";
    let system = json_body(resp, WHAT)?;
    let reset = system
        .pointer("/Actions/#ComputerSystem.Reset")
        .and_then(|action| {
            Some(ResetAction {
                target: action.get("target")?.as_str()?.to_owned(),
                allowed: strings(action.get("ResetType@Redfish.AllowableValues")),
                action_info: action
                    .get("@Redfish.ActionInfo")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            })
        });
    let boot = system.get("Boot");
    let etag = resp.etag.clone().or_else(|| {
        system
            .get("@odata.etag")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    Ok(System {
        power_state: power_state(system.get("PowerState").and_then(Value::as_str)),
        reset,
        boot_targets: strings(
            boot.and_then(|b| b.get("BootSourceOverrideTarget@Redfish.AllowableValues")),
        ),
        boot_enabled_values: strings(
            boot.and_then(|b| b.get("BootSourceOverrideEnabled@Redfish.AllowableValues")),
        ),
        etag,
    })
}

/// Redfish `PowerState` to ours. Transitions report the state not yet reached, so a caller
/// polling for `On` keeps polling through `PoweringOn` (and likewise for `Off`).
pub fn power_state(redfish: Option<&str>) -> PowerState {
    match redfish {
        Some("On") | Some("PoweringOff") | Some("Paused") => PowerState::On,
        Some("Off") | Some("PoweringOn") => PowerState::Off,
        _ => PowerState::Unknown,
    }
}

/// The allowed ResetTypes from an ActionInfo resource (`Parameters[Name=ResetType]`).
pub fn parse_action_info(resp: &Response) -> Result<Option<Vec<String>>, PowerError> {
    let info = json_body(resp, "ActionInfo")?;
    Ok(info
        .get("Parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("Name").and_then(Value::as_str) == Some("ResetType"))
        .and_then(|p| strings(p.get("AllowableValues"))))
}

// ---------------------------------------------------------------------------------------------
// Reset

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    On,
    HardOff,
    SoftOff,
    Cycle,
}

impl ResetKind {
    /// ResetTypes that do this, best first. Hard off has no fallback: a graceful request may
    /// be ignored by the OS, which is not what "hard off" promises.
    fn preferences(self) -> &'static [&'static str] {
        match self {
            ResetKind::On => &["On", "ForceOn"],
            ResetKind::HardOff => &["ForceOff"],
            ResetKind::SoftOff => &["GracefulShutdown"],
            ResetKind::Cycle => &["ForceRestart", "PowerCycle", "GracefulRestart"],
        }
    }

    pub fn operation(self) -> &'static str {
        match self {
            ResetKind::On => "power on (ResetType On/ForceOn)",
            ResetKind::HardOff => "hard power off (ResetType ForceOff)",
            ResetKind::SoftOff => "soft power off (ResetType GracefulShutdown)",
            ResetKind::Cycle => "power cycle (ResetType ForceRestart/PowerCycle/GracefulRestart)",
        }
    }

    /// The state this reset leaves the system in, if it is already there nothing is sent
    /// (several BMCs answer 409 to "On" when on).
    pub fn already_done(self, state: PowerState) -> bool {
        matches!(
            (self, state),
            (ResetKind::On, PowerState::On)
                | (ResetKind::HardOff | ResetKind::SoftOff, PowerState::Off)
        )
    }
}

/// Picks the ResetType for `kind` among what the BMC allows (anything, if it does not say).
pub fn choose_reset_type(
    kind: ResetKind,
    allowed: Option<&[String]>,
) -> Result<&'static str, PowerError> {
    let preferences = kind.preferences();
    match allowed {
        None => Ok(preferences[0]),
        Some(allowed) => preferences
            .iter()
            .copied()
            .find(|p| allowed.iter().any(|a| a == p))
            .ok_or(PowerError::Unsupported {
                operation: kind.operation(),
            }),
    }
}

pub fn reset(target: &str, reset_type: &str) -> Request {
    Request::new(
        Method::Post,
        target,
        Some(json!({ "ResetType": reset_type })),
    )
}

// ---------------------------------------------------------------------------------------------
// Boot override

pub fn boot_override(
    system_path: &str,
    system: &System,
    device: BootDevice,
    persistence: BootPersistence,
) -> Result<Request, PowerError> {
    let target = match device {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
    };
    let enabled = match persistence {
        BootPersistence::Once => "Once",
        BootPersistence::Persistent => "Continuous",
    };
    let refuses = |allowed: &Option<Vec<String>>, value: &str| {
        allowed
            .as_ref()
            .is_some_and(|a| !a.iter().any(|v| v == value))
    };
    if refuses(&system.boot_targets, target) {
        return Err(PowerError::Unsupported {
            operation: match device {
                BootDevice::Pxe => "boot override to Pxe",
                BootDevice::Disk => "boot override to Hdd",
            },
        });
    }
    if refuses(&system.boot_enabled_values, enabled) {
        return Err(PowerError::Unsupported {
            operation: match persistence {
                BootPersistence::Once => "one-time boot override",
                BootPersistence::Persistent => "persistent boot override",
            },
        });
    }
    let body = json!({
        "Boot": { "BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled }
    });
    Ok(Request {
        if_match: system.etag.clone(),
        ..Request::new(Method::Patch, system_path, Some(body))
    })
}

/// The PATCH to resend after a 412/428, built from a fresh GET. A BMC that demands
/// `If-Match` but publishes no ETag (some Supermicro firmware) accepts `*`.
pub fn boot_override_retry(
    system_path: &str,
    fresh: &System,
    device: BootDevice,
    persistence: BootPersistence,
) -> Result<Request, PowerError> {
    let mut request = boot_override(system_path, fresh, device, persistence)?;
    request.if_match.get_or_insert_with(|| "*".to_owned());
    Ok(request)
}

#[cfg(test)]
mod tests;
