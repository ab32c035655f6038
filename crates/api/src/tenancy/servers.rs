//! `/bmc/v1/servers` and `/bmc/v1/clusters`: a server is one deployment of one machine,
//! owned by the account's owner identity, with addresses from its location's ranges.
//!
//! Create is: claim (one store transaction: quota slot by compare-and-set, a Ready machine of
//! the type in the location's zone by compare-and-set, the record, its addresses) → render
//! cloud-init → deploy. The claim is all or nothing; a failed deploy deletes the record and
//! releases the machine, so no slot, address or machine stays taken.

use super::cloudinit::{self, ClusterRole, Microk8sNode, OsImage, UserDataInput};
use super::{PnapError, Tenant, store_err};
use crate::AppState;
use crate::error::{ApiError, parse_json};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ingot_engine::{DeployOptions, EngineError};
use ingot_store::{
    AllocationConstraints, ClaimServersError, Cluster, Location, NewServer, Server, ServerTag,
    ServerType, Store, StoreError,
};
use ingot_types::lifecycle::{IllegalTransition, NodeStatus, Trigger};
use ingot_types::machine::Machine;
use ingot_types::power::PowerState;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

type Result<T> = std::result::Result<T, PnapError>;

/// The phoenixNAP status of a server: `creating` until the OS is up, then `powered-on` or
/// `powered-off` straight from the BMC's answer (no intermediate states, which clients treat as
/// failures), `rebooting`/`resetting` while those run, `deleting` while the machine is wiped.
pub fn pnap_status(pending: Option<&str>, status: NodeStatus, power: PowerState) -> &'static str {
    match pending {
        Some("rebooting") => return "rebooting",
        Some("resetting") => return "resetting",
        Some("error") => return "error",
        _ => {}
    }
    match status {
        NodeStatus::Allocated | NodeStatus::Deploying => "creating",
        NodeStatus::Deployed => match power {
            PowerState::Off => "powered-off",
            PowerState::Error => "error",
            PowerState::On | PowerState::Unknown => "powered-on",
        },
        NodeStatus::Releasing | NodeStatus::DiskErasing => "deleting",
        _ => "error",
    }
}

/// phoenixNAP's hostname rule: 1-100 of letters, digits, `(`, `)`, `.`, `-`, with a letter.
pub fn validate_hostname(field: &str, h: &str) -> std::result::Result<(), ApiError> {
    let ok = (1..=100).contains(&h.len())
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'(' | b')' | b'.' | b'-'))
        && h.bytes().any(|b| b.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "{h:?} must be 1-100 of letters, digits, '(', ')', '.', '-' with at least one letter"
            ),
        ))
    }
}

fn cpu_frequency_ghz(model: &str) -> f64 {
    model
        .split_whitespace()
        .find_map(|w| w.strip_suffix("GHz").and_then(|n| n.parse::<f64>().ok()))
        .unwrap_or(0.0)
}

fn storage_text(m: &Machine) -> String {
    if m.disks.is_empty() {
        return "no local disks".into();
    }
    let mut sizes: Vec<(u64, usize)> = Vec::new();
    for d in &m.disks {
        let gb = d.size_bytes / 1_000_000_000;
        match sizes.iter_mut().find(|(s, _)| *s == gb) {
            Some(e) => e.1 += 1,
            None => sizes.push((gb, 1)),
        }
    }
    sizes
        .iter()
        .map(|(gb, n)| format!("{n}x {gb}GB"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn gateway_of(cidr: &str) -> Option<String> {
    let (addr, len) = cidr.split_once('/')?;
    let a: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Some(std::net::Ipv4Addr::from((u32::from(a) & mask) + 1).to_string())
}

fn tag_json(t: &ServerTag) -> Value {
    json!({ "id": t.tag_id, "name": t.name, "value": t.value, "isBillingTag": t.is_billing_tag, "createdBy": t.created_by })
}

/// The phoenixNAP `Server` document, with every field the SDKs require.
pub fn server_json(s: &Server, m: &Machine, loc: Option<&Location>) -> Value {
    let mut v = json!({
        "id": s.id,
        "status": pnap_status(s.pending_status.as_deref(), m.status, m.power_state),
        "hostname": s.hostname,
        "os": s.os,
        "type": s.server_type,
        "location": s.location,
        "cpu": if m.cpu_model.is_empty() { "Unknown CPU".to_owned() } else { m.cpu_model.clone() },
        "cpuCount": 1,
        "coresPerCpu": m.cpu_count.max(1),
        "cpuFrequency": cpu_frequency_ghz(&m.cpu_model),
        "ram": format!("{}GB RAM", m.memory_mib.div_ceil(1024)),
        "storage": storage_text(m),
        "privateIpAddresses": s.private_ips,
        "publicIpAddresses": s.public_ips,
        "pricingModel": s.pricing_model,
        "networkType": s.network_type,
        "tags": s.tags.iter().map(tag_json).collect::<Vec<_>>(),
        "provisionedOn": s.created_at,
        "osConfiguration": {},
        "networkConfiguration": {},
        "storageConfiguration": { "rootPartition": { "raid": "NO_RAID", "size": -1 } },
    });
    if let Some(d) = &s.description {
        v["description"] = json!(d);
    }
    if let Some(c) = &s.cluster_id {
        v["clusterId"] = json!(c);
    }
    if let Some(gw) = loc.and_then(|l| gateway_of(&l.private_cidr)) {
        v["networkConfiguration"] = json!({
            "gatewayAddress": gw,
            "privateNetworkConfiguration": { "configurationType": "USE_OR_CREATE_DEFAULT", "privateNetworks": [] },
        });
    }
    v
}

async fn render(store: &Store, s: &Server) -> Result<Value> {
    let m = store.machine(&s.machine_id).await?;
    let loc = store.location(&s.location).await?;
    Ok(server_json(s, &m, loc.as_ref()))
}

// ---- list / get / patch -------------------------------------------------------------------

pub async fn list(
    State(s): State<AppState>,
    t: Tenant,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Vec<Value>>> {
    let store = s.engine.store();
    let mut out = Vec::new();
    // `tag=name.value` (or `name`) and `location=PHX`, each repeatable (the SDKs explode
    // arrays) or comma-separated; a server must match every tag and any location.
    let values = |key: &str| -> Vec<String> {
        q.iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(',').map(str::to_owned))
            .filter(|v| !v.is_empty())
            .collect()
    };
    let tags = values("tag");
    let locations = values("location");
    let tag_filters: Vec<(String, Option<String>)> = tags
        .iter()
        .map(|t| match t.split_once('.') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (t.to_owned(), None),
        })
        .collect();
    for srv in store.list_servers(Some(t.account.id)).await? {
        if !locations.is_empty() && !locations.contains(&srv.location) {
            continue;
        }
        if !tag_filters.iter().all(|(n, v)| {
            srv.tags
                .iter()
                .any(|st| &st.name == n && (v.is_none() || st.value == *v))
        }) {
            continue;
        }
        out.push(render(store, &srv).await?);
    }
    Ok(Json(out))
}

pub async fn get(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let store = s.engine.store();
    let srv = store.server(t.account.id, &id).await?;
    Ok(Json(render(store, &srv).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerPatch {
    hostname: Option<String>,
    description: Option<String>,
}

pub async fn patch(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let store = s.engine.store();
    store.server(t.account.id, &id).await?;
    let p: ServerPatch = parse_json(&body)?;
    if let Some(h) = &p.hostname {
        // ServerPatch's own rule is looser; the stricter create rule keeps OS hostnames sane.
        validate_hostname("hostname", h)?;
    }
    if p.description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 250)
    {
        return Err(ApiError::field("description", "at most 250 characters").into());
    }
    let srv = store
        .update_server(
            t.account.id,
            &id,
            p.hostname.as_deref(),
            p.description.as_deref(),
        )
        .await?;
    t.audit(store, "API.UpdateServer", &format!("server/{id}"))
        .await;
    Ok(Json(render(store, &srv).await?))
}

// ---- create ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagRequest {
    name: String,
    value: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CloudInitConfig {
    user_data: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OsConfiguration {
    cloud_init: Option<CloudInitConfig>,
}

/// phoenixNAP's `ServerCreate`. Unknown fields (the demo's `public`) are ignored, as
/// phoenixNAP does.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerCreate {
    hostname: String,
    description: Option<String>,
    os: String,
    #[serde(rename = "type")]
    server_type: String,
    location: String,
    install_default_ssh_keys: Option<bool>,
    ssh_keys: Option<Vec<String>>,
    ssh_key_ids: Option<Vec<String>>,
    reservation_id: Option<String>,
    pricing_model: Option<String>,
    network_type: Option<String>,
    os_configuration: Option<OsConfiguration>,
    tags: Option<Vec<TagRequest>>,
}

/// A create request after validation: everything needed, nothing taken yet.
struct Plan {
    hostname: String,
    description: Option<String>,
    os: OsImage,
    server_type: ServerType,
    location: Location,
    ssh_keys: Vec<String>,
    public_ip: bool,
    network_type: String,
    tags: Vec<ServerTag>,
    user_data: Option<String>,
}

/// Checks an OpenSSH public key line and returns its SHA-256 fingerprint.
pub fn ssh_fingerprint(key: &str) -> Option<String> {
    use sha2::Digest;
    if key.contains(['\n', '\r']) {
        return None;
    }
    let mut parts = key.split_whitespace();
    let kind = parts.next()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(parts.next()?)
        .ok()?;
    // The blob starts with the key type again, as an SSH string.
    let len = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    if raw.get(4..4 + len)? != kind.as_bytes() {
        return None;
    }
    let digest = sha2::Sha256::digest(&raw);
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}

struct KeyRequest<'a> {
    install_default: bool,
    keys: &'a [String],
    key_ids: &'a [String],
}

async fn resolve_ssh_keys(store: &Store, account: i64, req: KeyRequest<'_>) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (i, k) in req.keys.iter().enumerate() {
        if ssh_fingerprint(k).is_none() {
            return Err(ApiError::field(
                format!("sshKeys[{i}]"),
                "not an OpenSSH public key (type, base64 key, optional comment)",
            )
            .into());
        }
        out.push(k.trim().to_owned());
    }
    for (i, id) in req.key_ids.iter().enumerate() {
        match store.tenant_ssh_key(account, id).await {
            Ok(k) => out.push(k.public_key),
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::field(
                    format!("sshKeyIds[{i}]"),
                    format!("no SSH key {id:?} in this account"),
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    if req.install_default {
        for k in store.list_tenant_ssh_keys(account).await? {
            if k.is_default {
                out.push(k.public_key);
            }
        }
    }
    out.dedup();
    let mut seen = std::collections::HashSet::new();
    out.retain(|k| seen.insert(k.clone()));
    Ok(out)
}

pub fn validate_tag_text(field: &str, s: &str) -> std::result::Result<(), ApiError> {
    let ok = (1..=100).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!("{s:?} must be 1-100 of letters, digits, '-', '_'"),
        ))
    }
}

/// Resolves tag requests to tags, creating the ones the account does not have yet.
async fn resolve_tags(
    store: &Store,
    account: i64,
    reqs: &[TagRequest],
    field: &str,
) -> Result<Vec<ServerTag>> {
    let mut out = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        validate_tag_text(&format!("{field}[{i}].name"), &r.name)?;
        if let Some(v) = &r.value {
            validate_tag_text(&format!("{field}[{i}].value"), v)?;
        }
        let tag = match store.tenant_tag_by_name(account, &r.name).await? {
            Some(t) => t,
            None => match store.create_tenant_tag(account, &r.name, None, false).await {
                Ok(t) => t,
                // Created by a racing request meanwhile.
                Err(StoreError::Conflict { .. }) => store
                    .tenant_tag_by_name(account, &r.name)
                    .await?
                    .ok_or(ApiError::Internal)?,
                Err(e) => return Err(e.into()),
            },
        };
        out.retain(|t: &ServerTag| t.name != tag.name);
        out.push(ServerTag {
            tag_id: tag.id,
            name: tag.name,
            value: r.value.clone(),
            is_billing_tag: tag.is_billing_tag,
            created_by: tag.created_by,
        });
    }
    Ok(out)
}

async fn catalogue(
    store: &Store,
    server_type: &str,
    location: &str,
) -> Result<(ServerType, Location)> {
    let st = store
        .server_type(server_type)
        .await?
        .ok_or_else(|| ApiError::field("type", format!("unknown server type {server_type:?}")))?;
    let loc = store
        .location(location)
        .await?
        .ok_or_else(|| ApiError::field("location", format!("unknown location {location:?}")))?;
    Ok((st, loc))
}

fn parse_os(os: &str) -> std::result::Result<OsImage, ApiError> {
    cloudinit::os_image(os).ok_or_else(|| {
        let known: Vec<&str> = cloudinit::OS_IMAGES.iter().map(|o| o.id).collect();
        ApiError::field(
            "os",
            format!("{os:?} is not offered here (one of {})", known.join(", ")),
        )
    })
}

async fn plan_create(store: &Store, t: &Tenant, req: ServerCreate) -> Result<Plan> {
    validate_hostname("hostname", &req.hostname)?;
    if req
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 250)
    {
        return Err(ApiError::field("description", "at most 250 characters").into());
    }
    let os = parse_os(&req.os)?;
    let (server_type, location) = catalogue(store, &req.server_type, &req.location).await?;
    if req.reservation_id.is_some() {
        return Err(
            ApiError::field("reservationId", "reservations are not offered; omit it").into(),
        );
    }
    if let Some(p) = &req.pricing_model
        && p != "HOURLY"
    {
        return Err(
            ApiError::field("pricingModel", format!("{p:?} is not offered; only HOURLY")).into(),
        );
    }
    let network_type = req
        .network_type
        .clone()
        .unwrap_or_else(|| "PUBLIC_AND_PRIVATE".into());
    let public_ip = match network_type.as_str() {
        "PUBLIC_AND_PRIVATE" => true,
        "PRIVATE_ONLY" => false,
        other => {
            return Err(ApiError::field(
                "networkType",
                format!("{other:?} is not offered (PUBLIC_AND_PRIVATE, PRIVATE_ONLY)"),
            )
            .into());
        }
    };
    let user_data = match req
        .os_configuration
        .and_then(|o| o.cloud_init)
        .and_then(|c| c.user_data)
    {
        None => None,
        Some(b64) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| {
                    ApiError::field("osConfiguration.cloudInit.userData", "must be base64")
                })?;
            if raw.len() > 64 * 1024 {
                return Err(ApiError::field(
                    "osConfiguration.cloudInit.userData",
                    "at most 64 KiB",
                )
                .into());
            }
            Some(String::from_utf8(raw).map_err(|_| {
                ApiError::field("osConfiguration.cloudInit.userData", "must be UTF-8 text")
            })?)
        }
    };
    let keys = KeyRequest {
        install_default: req.install_default_ssh_keys.unwrap_or(true),
        keys: req.ssh_keys.as_deref().unwrap_or(&[]),
        key_ids: req.ssh_key_ids.as_deref().unwrap_or(&[]),
    };
    let ssh_keys = resolve_ssh_keys(store, t.account.id, keys).await?;
    let tags = resolve_tags(
        store,
        t.account.id,
        req.tags.as_deref().unwrap_or(&[]),
        "tags",
    )
    .await?;
    Ok(Plan {
        hostname: req.hostname,
        description: req.description,
        os,
        server_type,
        location,
        ssh_keys,
        public_ip,
        network_type,
        tags,
        user_data,
    })
}

/// Servers claimed by a create whose deployment then failed: their records go and their
/// machines are released (the claim itself is all or nothing in the store).
async fn undo_claim(s: &AppState, t: &Tenant, servers: &[Server]) {
    let store = s.engine.store();
    for srv in servers {
        if let Err(e) = store.delete_server(t.account.id, &srv.id).await {
            tracing::error!(server = %srv.id, error = %e, "rollback: server record not removed");
        }
        if let Err(e) = s.engine.release(&t.actor(), &srv.machine_id, false).await {
            tracing::error!(machine = %srv.machine_id, error = %e, "rollback: machine not released");
        }
    }
}

/// Claims servers for the plan: quota, machines, records and addresses in one step.
async fn claim(
    s: &AppState,
    t: &Tenant,
    plan: &Plan,
    requests: &[NewServer],
) -> Result<Vec<Server>> {
    let store = s.engine.store();
    let candidates = store
        .sellable_machines(&plan.location.zone, &plan.server_type)
        .await?;
    let actor = t.actor().name;
    match store
        .claim_servers(t.account.owner, &actor, &candidates, requests)
        .await
    {
        Ok(v) => Ok(v),
        Err(e @ ClaimServersError::QuotaExceeded { .. }) => {
            Err(ApiError::QuotaExceeded(e.to_string()).into())
        }
        Err(ClaimServersError::NoCapacity) => Err(ApiError::NoCapacity(format!(
            "not enough servers of type {} are available in {} right now",
            plan.server_type.name, plan.location.code
        ))
        .into()),
        Err(e @ ClaimServersError::NoAddress(_)) => Err(ApiError::NoCapacity(e.to_string()).into()),
        Err(ClaimServersError::Store(e)) => Err(e.into()),
    }
}

fn new_server(t: &Tenant, plan: &Plan, hostname: &str, cluster_id: Option<&str>) -> NewServer {
    NewServer {
        account_id: t.account.id,
        hostname: hostname.to_owned(),
        description: plan.description.clone(),
        os: plan.os.id.to_owned(),
        server_type: plan.server_type.name.clone(),
        location: plan.location.code.clone(),
        pricing_model: "HOURLY".into(),
        network_type: plan.network_type.clone(),
        tags: plan.tags.clone(),
        cluster_id: cluster_id.map(str::to_owned),
        created_by: t.username.clone(),
        public_ip: plan.public_ip,
    }
}

async fn deploy(
    s: &AppState,
    t: &Tenant,
    plan: &Plan,
    srv: &Server,
    microk8s: Option<Microk8sNode>,
) -> Result<()> {
    let input = UserDataInput {
        server_id: srv.id.clone(),
        os: plan.os,
        hostname: srv.hostname.clone(),
        ssh_keys: plan.ssh_keys.clone(),
        private_ip: srv.private_ips.first().cloned().unwrap_or_default(),
        public_ip: srv.public_ips.first().cloned(),
        microk8s,
    };
    let ours = cloudinit::render_user_data(&input).map_err(|e| {
        tracing::error!(error = %ingot_engine::error_chain(&e), "user-data not rendered");
        ApiError::Internal
    })?;
    let user_data = cloudinit::combine_user_data(&ours, plan.user_data.as_deref());
    let opts = DeployOptions {
        osystem: Some(plan.os.osystem.to_owned()),
        distro_series: Some(plan.os.distro_series.to_owned()),
        hwe_kernel: None,
        user_data: Some(user_data),
    };
    s.engine.deploy(&t.actor(), &srv.machine_id, opts).await?;
    Ok(())
}

pub async fn create(State(s): State<AppState>, t: Tenant, body: Bytes) -> Result<Json<Value>> {
    let store = s.engine.store();
    let req: ServerCreate = parse_json(&body)?;
    let plan = plan_create(store, &t, req).await?;
    let mut claimed = claim(
        &s,
        &t,
        &plan,
        &[new_server(&t, &plan, &plan.hostname, None)],
    )
    .await?;
    let srv = claimed.remove(0);
    if let Err(e) = deploy(&s, &t, &plan, &srv, None).await {
        undo_claim(&s, &t, std::slice::from_ref(&srv)).await;
        return Err(e);
    }
    t.audit(store, "API.CreateServer", &format!("server/{}", srv.id))
        .await;
    Ok(Json(render(store, &srv).await?))
}

// ---- delete and actions ------------------------------------------------------------------

/// Ends a server: the record goes (with its addresses and quota slot) and the machine is
/// released with its disks erased before another tenant can get it.
async fn end_server(s: &AppState, t: &Tenant, id: &str) -> Result<Server> {
    end_server_as(s, t.account.id, &t.actor(), id).await
}

/// [`end_server`] for any caller allowed to release the account's machines (the tenant, or
/// an operator retiring a tenant's server).
pub async fn end_server_as(
    s: &AppState,
    account: i64,
    actor: &ingot_engine::Actor,
    id: &str,
) -> Result<Server> {
    let srv = s.engine.store().delete_server(account, id).await?;
    if let Err(e) = s.engine.release(actor, &srv.machine_id, true).await {
        // The server is gone for the tenant either way; the operator sees the machine's state.
        tracing::warn!(machine = %srv.machine_id, error = %ingot_engine::error_chain(&e), "release after server delete failed");
    }
    Ok(srv)
}

pub async fn delete(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    end_server(&s, &t, &id).await?;
    t.audit(
        s.engine.store(),
        "API.DeleteServer",
        &format!("server/{id}"),
    )
    .await;
    Ok(Json(json!({ "result": "Server deleted", "serverId": id })))
}

/// 409: the server is not in a state where `action` makes sense.
fn conflict(srv_status: &str, status: NodeStatus, action: &str) -> PnapError {
    PnapError(ApiError::Conflict {
        message: format!("cannot {action} a server that is {srv_status}"),
        current: Some(status),
    })
}

/// The machine of a server that is up (Deployed), or 409.
async fn deployed_machine(
    s: &AppState,
    t: &Tenant,
    id: &str,
    action: &str,
) -> Result<(Server, Machine)> {
    let store = s.engine.store();
    let srv = store.server(t.account.id, id).await?;
    let m = store.machine(&srv.machine_id).await?;
    if m.status != NodeStatus::Deployed || srv.pending_status.is_some() {
        return Err(conflict(
            pnap_status(srv.pending_status.as_deref(), m.status, m.power_state),
            m.status,
            action,
        ));
    }
    Ok((srv, m))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RebootRequest {
    boot_type: Option<String>,
}

/// phoenixNAP's `ServerReset`; `installDefaultSshKeys` and `osConfiguration` (Windows, ESXi,
/// Proxmox) have nothing to change for the OSes offered here.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ResetRequest {
    ssh_keys: Option<Vec<String>>,
    ssh_key_ids: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeprovisionRequest {
    #[allow(dead_code)]
    delete_ip_blocks: Option<bool>,
}

pub async fn action(
    State(s): State<AppState>,
    t: Tenant,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response> {
    let store = s.engine.store();
    // Unknown server before unknown action: another account's id is simply not found.
    store.server(t.account.id, &id).await?;
    let target = format!("server/{id}");
    let resp = match action.as_str() {
        "power-on" | "power-off" | "shutdown" => {
            let (_, _) = deployed_machine(&s, &t, &id, &action).await?;
            let on = action == "power-on";
            s.engine
                .power(
                    &t.actor(),
                    &store.server(t.account.id, &id).await?.machine_id,
                    on,
                )
                .await?;
            let (event, result) = match action.as_str() {
                "power-on" => ("API.PowerOnServer", "Server powered on"),
                "power-off" => ("API.PowerOffServer", "Server powered off"),
                _ => ("API.ShutDownServer", "Server shut down"),
            };
            t.audit(store, event, &target).await;
            Json(json!({ "result": result })).into_response()
        }
        "reboot" => {
            let r: RebootRequest = parse_json(&body)?;
            if let Some(b) = r.boot_type.as_deref()
                && b != "STANDARD"
            {
                return Err(ApiError::field(
                    "bootType",
                    format!("{b:?} is not offered; only STANDARD"),
                )
                .into());
            }
            let (srv, m) = deployed_machine(&s, &t, &id, "reboot").await?;
            if m.power_state != PowerState::On {
                return Err(conflict("powered-off", m.status, "reboot"));
            }
            store
                .set_server_pending(&srv.id, Some("rebooting"), None)
                .await?;
            let (s2, actor) = (s.clone(), t.actor());
            tokio::spawn(async move {
                // A reboot is off then on; the status reads `rebooting` until both are done.
                let r = async {
                    s2.engine.power(&actor, &srv.machine_id, false).await?;
                    s2.engine.power(&actor, &srv.machine_id, true).await
                }
                .await;
                if let Err(e) = r {
                    tracing::warn!(server = %srv.id, error = %ingot_engine::error_chain(&e), "reboot failed");
                }
                let _ = s2
                    .engine
                    .store()
                    .set_server_pending(&srv.id, None, Some("rebooting"))
                    .await;
            });
            t.audit(store, "API.RebootServer", &target).await;
            Json(json!({ "result": "Server rebooted" })).into_response()
        }
        "reset" => {
            let r: ResetRequest = parse_json(&body)?;
            // A reset reinstalls with the server's original user-data (keys, cluster role);
            // refuse what it would not do rather than ignore it.
            if r.ssh_keys.is_some_and(|k| !k.is_empty()) {
                return Err(ApiError::field(
                    "sshKeys",
                    "reset keeps the server's SSH keys; changing them is not offered",
                )
                .into());
            }
            if r.ssh_key_ids.is_some_and(|k| !k.is_empty()) {
                return Err(ApiError::field(
                    "sshKeyIds",
                    "reset keeps the server's SSH keys; changing them is not offered",
                )
                .into());
            }
            let (srv, _) = deployed_machine(&s, &t, &id, "reset").await?;
            reset(&s, &t, srv).await?;
            t.audit(store, "API.ResetServer", &target).await;
            Json(json!({ "result": "Server has been reset" })).into_response()
        }
        "deprovision" => {
            let _: DeprovisionRequest = parse_json(&body)?;
            end_server(&s, &t, &id).await?;
            t.audit(store, "API.DeprovisionServer", &target).await;
            (StatusCode::ACCEPTED, Json(json!("Server deprovisioned"))).into_response()
        }
        other => {
            return Err(ApiError::field(
                "action",
                format!("{other:?} is not an action here (power-on, power-off, reboot, reset, shutdown, deprovision)"),
            )
            .into());
        }
    };
    Ok(resp)
}

/// Reinstalls the server's OS on the same machine: release (disks erased), then allocate
/// the same machine again and deploy the same user-data. The status reads `resetting` until
/// the machine is deployed again.
async fn reset(s: &AppState, t: &Tenant, srv: Server) -> Result<()> {
    let store = s.engine.store();
    let user_data = store.user_data(&srv.machine_id).await?;
    let m = store.machine(&srv.machine_id).await?;
    store
        .set_server_pending(&srv.id, Some("resetting"), None)
        .await?;
    s.engine.release(&t.actor(), &srv.machine_id, true).await?;
    let (s2, actor) = (s.clone(), t.actor());
    tokio::spawn(async move {
        let store = s2.engine.store();
        let r = async {
            // Bounded wait for the wipe to finish (the engine's own deadlines bound it too).
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
            loop {
                let now = store.machine(&srv.machine_id).await?;
                if now.status == NodeStatus::Ready {
                    break;
                }
                if !matches!(now.status, NodeStatus::Releasing | NodeStatus::DiskErasing)
                    || tokio::time::Instant::now() > deadline
                {
                    return Err(EngineError::from(IllegalTransition {
                        current: now.status,
                        trigger: Trigger::Deploy,
                    }));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let opts = DeployOptions {
                osystem: Some(m.osystem.clone()),
                distro_series: Some(m.distro_series.clone()),
                hwe_kernel: None,
                user_data,
            };
            // Take the wiped machine back at once. The server row still names it, so no other
            // server can be recorded on it even if another allocator wins this race (its
            // create then rolls back); the reset then ends in `error`.
            let c = AllocationConstraints {
                system_id: Some(srv.machine_id.to_string()),
                ..Default::default()
            };
            s2.engine.allocate(&actor, &c).await?;
            s2.engine.deploy(&actor, &srv.machine_id, opts).await?;
            loop {
                let now = store.machine(&srv.machine_id).await?;
                if now.status != NodeStatus::Deploying {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Ok::<_, EngineError>(())
        }
        .await;
        let after = match r {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(server = %srv.id, error = %ingot_engine::error_chain(&e), "reset failed");
                Some("error")
            }
        };
        let _ = store
            .set_server_pending(&srv.id, after, Some("resetting"))
            .await;
    });
    Ok(())
}

pub async fn put_tags(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let store = s.engine.store();
    store.server(t.account.id, &id).await?;
    let reqs: Vec<TagRequest> = parse_json(&body)?;
    let tags = resolve_tags(store, t.account.id, &reqs, "tags").await?;
    let srv = store.set_server_tags(t.account.id, &id, &tags).await?;
    t.audit(store, "API.SetServerTags", &format!("server/{id}"))
        .await;
    Ok(Json(render(store, &srv).await?))
}

// ---- clusters -------------------------------------------------------------------------------

/// A microk8s cluster request. Nodes are created like servers; the first is the control plane.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClusterCreate {
    name: Option<String>,
    nodes: i64,
    #[serde(rename = "type")]
    server_type: String,
    location: String,
    os: Option<String>,
    microk8s_channel: Option<String>,
    addons: Option<Vec<String>>,
    install_default_ssh_keys: Option<bool>,
    ssh_keys: Option<Vec<String>>,
    ssh_key_ids: Option<Vec<String>>,
}

pub const MAX_CLUSTER_NODES: i64 = 16;
pub const DEFAULT_MICROK8S_CHANNEL: &str = "1.30/stable";

fn random_join_token() -> String {
    // microk8s wants exactly 32 characters.
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..32)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

fn validate_channel(c: &str) -> std::result::Result<(), ApiError> {
    let ok = !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "microk8sChannel",
            format!("{c:?} is not a snap channel (e.g. 1.30/stable)"),
        ))
    }
}

async fn cluster_json(store: &Store, c: &Cluster) -> Result<Value> {
    let mut nodes = Vec::new();
    for srv in store.list_servers(Some(c.account_id)).await? {
        if srv.cluster_id.as_deref() == Some(c.id.as_str()) {
            nodes.push(render(store, &srv).await?);
        }
    }
    Ok(json!({
        "id": c.id,
        "name": c.name,
        "type": c.server_type,
        "location": c.location,
        "microk8sChannel": c.microk8s_channel,
        "addons": c.addons,
        "controlPlane": { "serverId": c.control_plane_server_id, "address": c.control_plane_address },
        "nodes": nodes,
        "createdOn": c.created_at,
    }))
}

pub async fn create_cluster(
    State(s): State<AppState>,
    t: Tenant,
    body: Bytes,
) -> Result<Json<Value>> {
    let store = s.engine.store();
    let req: ClusterCreate = parse_json(&body)?;
    if !(1..=MAX_CLUSTER_NODES).contains(&req.nodes) {
        return Err(ApiError::field("nodes", format!("must be 1 to {MAX_CLUSTER_NODES}")).into());
    }
    let channel = req
        .microk8s_channel
        .clone()
        .unwrap_or_else(|| DEFAULT_MICROK8S_CHANNEL.into());
    validate_channel(&channel)?;
    let addons = req.addons.clone().unwrap_or_else(|| vec!["dns".into()]);
    for (i, a) in addons.iter().enumerate() {
        let ok = !a.is_empty()
            && a.len() <= 64
            && a.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.' | b'/')
            });
        if !ok {
            return Err(ApiError::field(
                format!("addons[{i}]"),
                format!("{a:?} is not a microk8s add-on name"),
            )
            .into());
        }
    }
    let cluster_id = ingot_store::random_object_id();
    let name = req
        .name
        .clone()
        .unwrap_or_else(|| format!("k8s-{}", &cluster_id[..6]));
    validate_hostname("name", &name)?;
    let create = ServerCreate {
        hostname: format!("{name}-1"),
        description: Some(format!("microk8s cluster {name}")),
        os: req.os.clone().unwrap_or_else(|| "ubuntu/jammy".into()),
        server_type: req.server_type.clone(),
        location: req.location.clone(),
        install_default_ssh_keys: req.install_default_ssh_keys,
        ssh_keys: req.ssh_keys.clone(),
        ssh_key_ids: req.ssh_key_ids.clone(),
        reservation_id: None,
        pricing_model: None,
        network_type: None,
        os_configuration: None,
        tags: None,
    };
    let plan = plan_create(store, &t, create).await?;
    let requests: Vec<NewServer> = (1..=req.nodes)
        .map(|i| new_server(&t, &plan, &format!("{name}-{i}"), Some(&cluster_id)))
        .collect();
    let servers = claim(&s, &t, &plan, &requests).await?;
    let token = random_join_token();
    let result = async {
        let cp = &servers[0];
        let cp_addr = cp.private_ips.first().cloned().ok_or(ApiError::Internal)?;
        let cluster = Cluster {
            id: cluster_id.clone(),
            account_id: t.account.id,
            name: name.clone(),
            server_type: plan.server_type.name.clone(),
            location: plan.location.code.clone(),
            microk8s_channel: channel.clone(),
            addons: addons.clone(),
            control_plane_server_id: Some(cp.id.clone()),
            control_plane_address: Some(cp_addr.clone()),
            created_at: chrono::Utc::now(),
        };
        store.create_cluster(&cluster).await?;
        for (i, srv) in servers.iter().enumerate() {
            let node = Microk8sNode {
                channel: channel.clone(),
                addons: addons.clone(),
                role: if i == 0 {
                    ClusterRole::ControlPlane
                } else {
                    ClusterRole::Worker
                },
                join_token: token.clone(),
                control_plane_address: cp_addr.clone(),
            };
            deploy(&s, &t, &plan, srv, Some(node)).await?;
        }
        Ok::<_, PnapError>(cluster)
    }
    .await;
    match result {
        Ok(cluster) => {
            t.audit(
                store,
                "API.CreateCluster",
                &format!("cluster/{}", cluster.id),
            )
            .await;
            Ok(Json(cluster_json(store, &cluster).await?))
        }
        Err(e) => {
            let _ = store.delete_cluster(t.account.id, &cluster_id).await;
            undo_claim(&s, &t, &servers).await;
            Err(e)
        }
    }
}

pub async fn list_clusters(State(s): State<AppState>, t: Tenant) -> Result<Json<Vec<Value>>> {
    let store = s.engine.store();
    let mut out = Vec::new();
    for c in store.list_clusters(t.account.id).await? {
        out.push(cluster_json(store, &c).await?);
    }
    Ok(Json(out))
}

pub async fn get_cluster(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let store = s.engine.store();
    let c = store.cluster(t.account.id, &id).await?;
    Ok(Json(cluster_json(store, &c).await?))
}

pub async fn delete_cluster(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let store = s.engine.store();
    let c = store.cluster(t.account.id, &id).await?;
    let servers: Vec<Server> = store
        .list_servers(Some(t.account.id))
        .await?
        .into_iter()
        .filter(|srv| srv.cluster_id.as_deref() == Some(c.id.as_str()))
        .collect();
    for srv in &servers {
        end_server(&s, &t, &srv.id).await?;
    }
    store.delete_cluster(t.account.id, &id).await?;
    t.audit(store, "API.DeleteCluster", &format!("cluster/{id}"))
        .await;
    Ok(Json(
        json!({ "result": "Cluster deleted", "clusterId": id, "serverIds": servers.iter().map(|s| s.id.clone()).collect::<Vec<_>>() }),
    ))
}

/// Servers by id for the operator view: which account and machine each live server uses.
pub async fn operator_servers(
    store: &Store,
    account: Option<i64>,
) -> std::result::Result<Vec<Value>, ApiError> {
    let servers = store.list_servers(account).await.map_err(store_err)?;
    let names: HashMap<i64, String> = store
        .list_accounts()
        .await
        .map_err(store_err)?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect();
    let mut out = Vec::new();
    for srv in servers {
        let m = store.machine(&srv.machine_id).await.map_err(store_err)?;
        let mut v = server_json(&srv, &m, None);
        v["account"] = json!(names.get(&srv.account_id));
        v["machineId"] = json!(srv.machine_id);
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        use NodeStatus::*;
        use PowerState::*;
        let cases = [
            (None, Allocated, Off, "creating"),
            (None, Deploying, On, "creating"),
            (None, Deployed, On, "powered-on"),
            (None, Deployed, Unknown, "powered-on"),
            (None, Deployed, Off, "powered-off"),
            (None, Deployed, Error, "error"),
            (Some("rebooting"), Deployed, Off, "rebooting"),
            (Some("resetting"), DiskErasing, On, "resetting"),
            (Some("error"), Deployed, On, "error"),
            (None, Releasing, On, "deleting"),
            (None, DiskErasing, On, "deleting"),
            (None, FailedDeployment, Off, "error"),
            (None, Broken, Off, "error"),
        ];
        for (pending, st, p, want) in cases {
            assert_eq!(
                pnap_status(pending, st, p),
                want,
                "{pending:?} {st:?} {p:?}"
            );
        }
    }

    #[test]
    fn hostnames_follow_phoenixnap() {
        for (h, ok) in [
            ("k8s-cluster-1", true),
            ("web(1).x", true),
            ("123", false),
            ("", false),
            ("a_b", false),
            ("a b", false),
        ] {
            assert_eq!(validate_hostname("hostname", h).is_ok(), ok, "{h:?}");
        }
        assert!(validate_hostname("hostname", &"a".repeat(101)).is_err());
    }

    #[test]
    fn ssh_fingerprints() {
        let mut blob = vec![0, 0, 0, 11];
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&[0, 0, 0, 32]);
        blob.extend_from_slice(&[7u8; 32]);
        let key = format!(
            "ssh-ed25519 {} me@host",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        );
        let fp = ssh_fingerprint(&key).unwrap();
        assert!(fp.starts_with("SHA256:") && !fp.ends_with('='));
        assert_eq!(
            ssh_fingerprint(&key.replace("ssh-ed25519 ", "ssh-rsa ")),
            None,
            "type must match the blob"
        );
        assert_eq!(ssh_fingerprint("ssh-ed25519 notbase64!"), None);
        assert_eq!(ssh_fingerprint(&format!("{key}\nssh-rsa x")), None);
    }

    #[test]
    fn cpu_frequency_from_model() {
        assert_eq!(cpu_frequency_ghz("Intel(R) Xeon(R) Sim CPU @ 2.40GHz"), 2.4);
        assert_eq!(cpu_frequency_ghz("mystery"), 0.0);
    }
}
