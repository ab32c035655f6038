//! The native JSON API, `/api/v1`. Documented by `openapi.json` beside this crate's sources.

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, parse_json};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bmc_power::sim::Faults;
use ingot_engine::DeployOptions;
use ingot_store::{AllocationConstraints, MachineFilter};
use ingot_types::inventory::normalize_mac;
use ingot_types::machine::{Machine, MachineEvent, NewMachine};
use ingot_types::power::{PowerParameters, PowerType};
use ingot_types::{MachineId, NodeStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;

pub const OPENAPI: &str = include_str!("../openapi.json");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/machines", get(list_machines).post(create_machine))
        .route("/api/v1/machines/{id}", get(get_machine))
        .route("/api/v1/machines/{id}/events", get(machine_events))
        .route(
            "/api/v1/machines/{id}/actions/{action}",
            post(machine_action),
        )
        .route(
            "/api/v1/machines/{id}/power-parameters",
            put(set_power_parameters),
        )
        .route("/api/v1/discoveries", get(discoveries))
        .route("/api/v1/sim/bmcs/{address}/faults", put(set_sim_faults))
        .route("/api/v1/whoami", get(whoami))
}

async fn openapi(_: Caller) -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

async fn whoami(c: Caller) -> Json<Value> {
    Json(json!({ "id": c.0.id, "username": c.0.username, "is_admin": c.0.is_admin }))
}

fn parse_id(id: &str) -> Result<MachineId, ApiError> {
    // An id that cannot exist is simply not found (no hint about the id format needed).
    MachineId::parse(id).map_err(|_| ApiError::NotFound {
        kind: "machine",
        id: id.to_owned(),
    })
}

/// The native machine representation, serialised straight from the record (listing 10,000
/// machines must not build 10,000 intermediate JSON trees).
#[derive(Serialize)]
pub struct MachineView<'a> {
    id: &'a MachineId,
    hostname: &'a str,
    status: i32,
    status_name: &'static str,
    status_message: &'a str,
    power_type: PowerType,
    power_state: ingot_types::power::PowerState,
    power_error: &'a Option<String>,
    power_parameters: PowerParameters,
    cpu_count: u32,
    cpu_model: &'a str,
    memory_mib: u64,
    disks: &'a [ingot_types::inventory::Disk],
    interfaces: &'a [ingot_types::inventory::Nic],
    boot_mac: &'a Option<String>,
    architecture: &'a str,
    system: &'a ingot_types::inventory::SystemInfo,
    owner: &'a Option<String>,
    zone: &'a str,
    pool: &'a str,
    tags: &'a [String],
    osystem: &'a str,
    distro_series: &'a str,
    deadline: &'a Option<chrono::DateTime<chrono::Utc>>,
    created_at: &'a chrono::DateTime<chrono::Utc>,
    updated_at: &'a chrono::DateTime<chrono::Utc>,
}

impl<'a> From<&'a Machine> for MachineView<'a> {
    fn from(m: &'a Machine) -> Self {
        MachineView {
            id: &m.id,
            hostname: &m.hostname,
            status: m.status.code(),
            status_name: m.status.name(),
            status_message: &m.status_message,
            power_type: m.power_type,
            power_state: m.power_state,
            power_error: &m.power_error,
            power_parameters: m.power_parameters.redacted(),
            cpu_count: m.cpu_count,
            cpu_model: &m.cpu_model,
            memory_mib: m.memory_mib,
            disks: &m.disks,
            interfaces: &m.interfaces,
            boot_mac: &m.boot_mac,
            architecture: &m.architecture,
            system: &m.system,
            owner: &m.owner_name,
            zone: &m.zone,
            pool: &m.pool,
            tags: &m.tags,
            osystem: &m.osystem,
            distro_series: &m.distro_series,
            deadline: &m.deadline,
            created_at: &m.created_at,
            updated_at: &m.updated_at,
        }
    }
}

pub fn machine_json(m: &Machine) -> Value {
    serde_json::to_value(MachineView::from(m)).expect("a machine always serialises")
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    hostname: Option<String>,
    id: Option<String>,
    zone: Option<String>,
    pool: Option<String>,
    tag: Option<String>,
    owner: Option<String>,
    mac: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

fn parse_status(s: &str) -> Result<NodeStatus, ApiError> {
    s.parse::<i32>()
        .ok()
        .and_then(NodeStatus::from_code)
        .or_else(|| NodeStatus::parse_name(s))
        .ok_or_else(|| ApiError::field("status", format!("unknown status {s:?}")))
}

fn parse_count(field: &str, s: &Option<String>) -> Result<Option<i64>, ApiError> {
    s.as_deref()
        .map(|v| {
            v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::field(field, format!("{v:?} is not a non-negative integer"))
            })
        })
        .transpose()
}

async fn list_machines(
    State(s): State<AppState>,
    c: Caller,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<axum::response::Response, ApiError> {
    // Parsed through serde to refuse unknown parameters by name.
    let q: ListQuery = serde_json::from_value(json!(raw)).map_err(|e| {
        let msg = e.to_string();
        let field = msg
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_owned);
        ApiError::BadRequest {
            field,
            message: msg,
        }
    })?;
    let mut f = MachineFilter {
        statuses: q
            .status
            .as_deref()
            .map(|v| v.split(',').map(parse_status).collect())
            .transpose()?
            .unwrap_or_default(),
        hostnames: q
            .hostname
            .iter()
            .flat_map(|h| h.split(',').map(str::to_owned))
            .collect(),
        ids: q
            .id
            .iter()
            .flat_map(|h| h.split(',').map(str::to_owned))
            .collect(),
        zone: q.zone,
        pool: q.pool,
        tags: q
            .tag
            .iter()
            .flat_map(|h| h.split(',').map(str::to_owned))
            .collect(),
        limit: parse_count("limit", &q.limit)?,
        offset: parse_count("offset", &q.offset)?,
        ..Default::default()
    };
    if let Some(mac) = q.mac {
        f.mac = Some(
            normalize_mac(&mac)
                .ok_or_else(|| ApiError::field("mac", format!("{mac:?} is not a MAC address")))?,
        );
    }
    if let Some(owner) = q.owner {
        let u = s.engine.store().user_by_name(&owner).await;
        match u {
            Ok(u) => f.owner = Some(u.id),
            Err(_) => return Ok(Json(Vec::<Value>::new()).into_response()),
        }
    }
    if !c.0.is_admin {
        if c.is_tenant() {
            f.owner = Some(c.0.id);
        } else {
            f.visible_to = Some(c.0.id);
        }
    }
    let machines = s
        .engine
        .store()
        .list_machines(&f)
        .await
        .map_err(ingot_engine::EngineError::from)?;
    let body = serde_json::to_vec(&machines.iter().map(MachineView::from).collect::<Vec<_>>())
        .map_err(|_| ApiError::Internal)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateMachine {
    hostname: Option<String>,
    #[serde(default)]
    mac_addresses: Vec<String>,
    power_type: Option<String>,
    #[serde(default)]
    power_parameters: Option<PowerParameters>,
    architecture: Option<String>,
    zone: Option<String>,
    pool: Option<String>,
}

pub fn validate_hostname(h: &str) -> Result<(), ApiError> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "hostname",
            format!("{h:?} is not a valid host name (letters, digits, '-', at most 63)"),
        ))
    }
}

pub fn parse_power_type(s: &str) -> Result<PowerType, ApiError> {
    PowerType::parse(s).ok_or_else(|| {
        ApiError::field(
            "power_type",
            format!("unknown power type {s:?} (ipmi, redfish, sim, manual)"),
        )
    })
}

async fn create_machine(
    State(s): State<AppState>,
    c: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !c.0.is_admin {
        return Err(ApiError::Forbidden);
    }
    let req: CreateMachine = parse_json(&body)?;
    if let Some(h) = &req.hostname {
        validate_hostname(h)?;
    }
    let mut macs = Vec::new();
    for (i, m) in req.mac_addresses.iter().enumerate() {
        macs.push(normalize_mac(m).ok_or_else(|| {
            ApiError::field(
                format!("mac_addresses[{i}]"),
                format!("{m:?} is not a MAC address"),
            )
        })?);
    }
    let power_type = req
        .power_type
        .as_deref()
        .map(parse_power_type)
        .transpose()?;
    let new = NewMachine {
        hostname: req.hostname,
        power_type,
        power_parameters: req.power_parameters.unwrap_or_default(),
        boot_mac: macs.first().cloned(),
        macs: macs.into_iter().skip(1).collect(),
        architecture: req.architecture,
        zone: req.zone,
        pool: req.pool,
        inventory: None,
    };
    let m = s
        .engine
        .store()
        .create_machine(new, &c.0.username)
        .await
        .map_err(ingot_engine::EngineError::from)?;
    Ok((StatusCode::CREATED, Json(machine_json(&m))))
}

async fn get_machine(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = s.engine.machine_for(&c.actor(), &parse_id(&id)?).await?;
    Ok(Json(machine_json(&m)))
}

#[derive(Serialize)]
struct EventJson {
    id: i64,
    at: chrono::DateTime<chrono::Utc>,
    actor: String,
    kind: String,
    from_status: Option<i32>,
    from_status_name: Option<&'static str>,
    to_status: Option<i32>,
    to_status_name: Option<&'static str>,
    message: String,
}

pub fn event_json(e: &MachineEvent) -> Value {
    json!(EventJson {
        id: e.id,
        at: e.at,
        actor: e.actor.clone(),
        kind: e.kind.clone(),
        from_status: e.from_status.map(|s| s.code()),
        from_status_name: e.from_status.map(|s| s.name()),
        to_status: e.to_status.map(|s| s.code()),
        to_status_name: e.to_status.map(|s| s.name()),
        message: e.message.clone(),
    })
}

async fn machine_events(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let id = parse_id(&id)?;
    s.engine.machine_for(&c.actor(), &id).await?;
    let events = s
        .engine
        .store()
        .events(&id, 10_000)
        .await
        .map_err(ingot_engine::EngineError::from)?;
    Ok(Json(events.iter().map(event_json).collect()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    osystem: Option<String>,
    distro_series: Option<String>,
    hwe_kernel: Option<String>,
    user_data: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    #[serde(default)]
    erase: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    message: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

async fn machine_action(
    State(s): State<AppState>,
    c: Caller,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let actor = c.actor();
    let e = &s.engine;
    let m = match action.as_str() {
        "commission" => {
            parse_json::<EmptyBody>(&body)?;
            e.commission(&actor, &id).await?
        }
        "allocate" => {
            parse_json::<EmptyBody>(&body)?;
            e.machine_for(&actor, &id).await?;
            let c = AllocationConstraints {
                system_id: Some(id.to_string()),
                ..Default::default()
            };
            match e.allocate(&actor, &c).await {
                Err(ingot_engine::EngineError::NoMatch) => {
                    let now = e.machine_for(&actor, &id).await?;
                    return Err(ApiError::Conflict {
                        message: format!("cannot allocate a machine that is {}", now.status),
                        current: Some(now.status),
                    });
                }
                other => other?,
            }
        }
        "deploy" => {
            let b: DeployBody = parse_json(&body)?;
            e.deploy(
                &actor,
                &id,
                DeployOptions {
                    osystem: b.osystem,
                    distro_series: b.distro_series,
                    hwe_kernel: b.hwe_kernel,
                    user_data: b.user_data,
                },
            )
            .await?
        }
        "release" => {
            let b: ReleaseBody = parse_json(&body)?;
            e.release(&actor, &id, b.erase).await?
        }
        "abort" => {
            parse_json::<EmptyBody>(&body)?;
            e.abort(&actor, &id).await?
        }
        "mark-broken" => {
            let b: MessageBody = parse_json(&body)?;
            e.mark_broken(&actor, &id, b.message.as_deref().unwrap_or("marked broken"))
                .await?
        }
        "mark-fixed" => {
            parse_json::<EmptyBody>(&body)?;
            e.mark_fixed(&actor, &id).await?
        }
        "power-on" | "power-off" => {
            parse_json::<EmptyBody>(&body)?;
            e.power(&actor, &id, action == "power-on").await?
        }
        "query-power-state" => {
            parse_json::<EmptyBody>(&body)?;
            e.query_power(&actor, &id).await?;
            e.machine_for(&actor, &id).await?
        }
        other => {
            return Err(ApiError::field(
                "action",
                format!(
                    "unknown action {other:?} (commission, allocate, deploy, release, abort, mark-broken, mark-fixed, power-on, power-off, query-power-state)"
                ),
            ));
        }
    };
    Ok(Json(machine_json(&m)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerParametersBody {
    power_type: String,
    #[serde(default)]
    power_parameters: PowerParameters,
}

async fn set_power_parameters(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    if !c.0.is_admin {
        return Err(ApiError::Forbidden);
    }
    let id = parse_id(&id)?;
    let b: PowerParametersBody = parse_json(&body)?;
    let power_type = parse_power_type(&b.power_type)?;
    if matches!(
        power_type,
        PowerType::Ipmi | PowerType::Redfish | PowerType::Sim
    ) && b
        .power_parameters
        .power_address
        .as_deref()
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::field(
            "power_parameters.power_address",
            "required for this power type",
        ));
    }
    if let Some(d) = &b.power_parameters.power_driver
        && !matches!(d.as_str(), "LAN_2_0" | "LAN")
    {
        return Err(ApiError::field(
            "power_parameters.power_driver",
            format!("{d:?} is not LAN_2_0 or LAN"),
        ));
    }
    s.engine.machine_for(&c.actor(), &id).await?;
    let m = s
        .engine
        .store()
        .set_power_parameters(&id, power_type, &b.power_parameters, &c.0.username)
        .await
        .map_err(ingot_engine::EngineError::from)?;
    Ok(Json(machine_json(&m)))
}

async fn discoveries(State(s): State<AppState>, c: Caller) -> Result<Json<Vec<Value>>, ApiError> {
    // Which MACs netbooted where is operator data (tenants and users see only machines).
    if !c.0.is_admin {
        return Err(ApiError::Forbidden);
    }
    let list = s
        .engine
        .store()
        .discoveries()
        .await
        .map_err(ingot_engine::EngineError::from)?;
    Ok(Json(
        list.iter()
            .map(|d| {
                json!({
                    "mac": d.mac,
                    "ip": d.ip,
                    "architecture": d.arch,
                    "first_seen": chrono::DateTime::from_timestamp(d.first_seen, 0),
                    "last_seen": chrono::DateTime::from_timestamp(d.last_seen, 0),
                    "machine_id": d.machine_id,
                })
            })
            .collect(),
    ))
}

async fn set_sim_faults(
    State(s): State<AppState>,
    c: Caller,
    Path(address): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    if !c.0.is_admin {
        return Err(ApiError::Forbidden);
    }
    let faults: Faults = parse_json(&body)?;
    let sim = s.sim.as_ref().ok_or(ApiError::NotFound {
        kind: "sim BMC",
        id: address.clone(),
    })?;
    if !sim.set_faults(&address, faults.clone()) {
        return Err(ApiError::NotFound {
            kind: "sim BMC",
            id: address,
        });
    }
    Ok(Json(json!({ "address": address, "faults": faults })))
}
