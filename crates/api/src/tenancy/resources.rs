//! The account's other objects: SSH keys, quotas, tags, audit events and metered usage.

use super::servers::{ssh_fingerprint, validate_tag_text};
use super::{PnapError, Tenant};
use crate::AppState;
use crate::error::{ApiError, parse_json};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ingot_store::{AuditEvent, ServerUsage, Store, TenantSshKey, TenantTag};
use serde::Deserialize;
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, PnapError>;

// ---- SSH keys -------------------------------------------------------------------------------

fn ssh_key_json(k: &TenantSshKey) -> Value {
    json!({
        "id": k.id,
        "default": k.is_default,
        "name": k.name,
        "key": k.public_key,
        "fingerprint": k.fingerprint,
        "createdOn": k.created_at,
        "lastUpdatedOn": k.updated_at,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SshKeyCreate {
    default: bool,
    name: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SshKeyUpdate {
    default: bool,
    name: String,
}

fn validate_key_name(name: &str) -> std::result::Result<(), ApiError> {
    if (1..=100).contains(&name.chars().count()) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ApiError::field(
            "name",
            "must be 1-100 printable characters",
        ))
    }
}

pub async fn list_ssh_keys(State(s): State<AppState>, t: Tenant) -> Result<Json<Vec<Value>>> {
    let keys = s.engine.store().list_tenant_ssh_keys(t.account.id).await?;
    Ok(Json(keys.iter().map(ssh_key_json).collect()))
}

pub async fn create_ssh_key(State(s): State<AppState>, t: Tenant, body: Bytes) -> Result<Response> {
    let req: SshKeyCreate = parse_json(&body)?;
    validate_key_name(&req.name)?;
    let key = req.key.trim();
    let fp = ssh_fingerprint(key).ok_or_else(|| {
        ApiError::field(
            "key",
            "not an OpenSSH public key (type, base64 key, optional comment)",
        )
    })?;
    let store = s.engine.store();
    let k = store
        .create_tenant_ssh_key(t.account.id, &req.name, key, &fp, req.default)
        .await?;
    t.audit(store, "API.CreateSshKey", &format!("ssh-key/{}", k.id))
        .await;
    Ok((StatusCode::CREATED, Json(ssh_key_json(&k))).into_response())
}

pub async fn get_ssh_key(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    Ok(Json(ssh_key_json(
        &s.engine.store().tenant_ssh_key(t.account.id, &id).await?,
    )))
}

pub async fn update_ssh_key(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let store = s.engine.store();
    store.tenant_ssh_key(t.account.id, &id).await?;
    let req: SshKeyUpdate = parse_json(&body)?;
    validate_key_name(&req.name)?;
    let k = store
        .update_tenant_ssh_key(t.account.id, &id, &req.name, req.default)
        .await?;
    t.audit(store, "API.UpdateSshKey", &format!("ssh-key/{id}"))
        .await;
    Ok(Json(ssh_key_json(&k)))
}

pub async fn delete_ssh_key(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let store = s.engine.store();
    store.delete_tenant_ssh_key(t.account.id, &id).await?;
    t.audit(store, "API.DeleteSshKey", &format!("ssh-key/{id}"))
        .await;
    Ok(Json(
        json!({ "result": "The SSH Key has been deleted.", "sshKeyId": id }),
    ))
}

// ---- quotas ---------------------------------------------------------------------------------

pub const SERVER_QUOTA_ID: &str = "bmc.servers.max_count";

async fn server_quota(store: &Store, account: i64) -> Result<Value> {
    let a = store.account(account).await?;
    let requests: Vec<Value> = store
        .quota_edit_requests(account)
        .await?
        .iter()
        .filter(|r| r.quota_id == SERVER_QUOTA_ID)
        .map(|r| json!({ "limit": r.limit, "reason": r.reason, "requestedOn": r.requested_at }))
        .collect();
    let status = match a.servers_used.cmp(&a.max_servers) {
        std::cmp::Ordering::Less => "WITHIN_LIMIT",
        std::cmp::Ordering::Equal => "ON_LIMIT",
        std::cmp::Ordering::Greater => "OVER_LIMIT",
    };
    Ok(json!({
        "id": SERVER_QUOTA_ID,
        "name": "Servers",
        "description": "Maximum number of servers in this account.",
        "status": status,
        "limit": a.max_servers.max(0),
        "unit": "COUNT",
        "used": a.servers_used.max(0),
        "quotaEditLimitRequestDetails": requests,
    }))
}

pub async fn list_quotas(State(s): State<AppState>, t: Tenant) -> Result<Json<Vec<Value>>> {
    Ok(Json(vec![
        server_quota(s.engine.store(), t.account.id).await?,
    ]))
}

fn quota_not_found(id: &str) -> PnapError {
    PnapError(ApiError::NotFound {
        kind: "quota",
        id: id.to_owned(),
    })
}

pub async fn get_quota(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    if id != SERVER_QUOTA_ID {
        return Err(quota_not_found(&id));
    }
    Ok(Json(server_quota(s.engine.store(), t.account.id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaEditRequest {
    limit: i64,
    reason: String,
}

/// A request for an operator to change the limit (they do it with `PUT /api/v1/accounts/{name}/quota`).
pub async fn request_quota_edit(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    if id != SERVER_QUOTA_ID {
        return Err(quota_not_found(&id));
    }
    let req: QuotaEditRequest = parse_json(&body)?;
    if req.limit < 0 {
        return Err(ApiError::field("limit", "must be 0 or more").into());
    }
    if req.reason.trim().is_empty() || req.reason.chars().count() > 1000 {
        return Err(ApiError::field("reason", "must be 1-1000 characters").into());
    }
    let store = s.engine.store();
    store
        .request_quota_edit(t.account.id, &id, req.limit, &req.reason)
        .await?;
    t.audit(store, "API.RequestQuotaEdit", &format!("quota/{id}"))
        .await;
    Ok(StatusCode::ACCEPTED.into_response())
}

// ---- tags -----------------------------------------------------------------------------------

async fn tag_json(store: &Store, t: &TenantTag) -> Result<Value> {
    let mut values: Vec<String> = Vec::new();
    let mut assignments = Vec::new();
    for srv in store.list_servers(Some(t.account_id)).await? {
        if let Some(st) = srv.tags.iter().find(|st| st.tag_id == t.id) {
            if let Some(v) = &st.value
                && !values.contains(v)
            {
                values.push(v.clone());
            }
            assignments.push(
                json!({ "resourceName": format!("/bmc/v1/servers/{}", srv.id), "value": st.value }),
            );
        }
    }
    let mut v = json!({
        "id": t.id,
        "name": t.name,
        "values": values,
        "isBillingTag": t.is_billing_tag,
        "resourceAssignments": assignments,
        "createdBy": t.created_by,
    });
    if let Some(d) = &t.description {
        v["description"] = json!(d);
    }
    Ok(v)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TagCreate {
    name: String,
    description: Option<String>,
    is_billing_tag: bool,
}

pub async fn list_tags(State(s): State<AppState>, t: Tenant) -> Result<Json<Vec<Value>>> {
    let store = s.engine.store();
    let mut out = Vec::new();
    for tag in store.list_tenant_tags(t.account.id).await? {
        out.push(tag_json(store, &tag).await?);
    }
    Ok(Json(out))
}

pub async fn create_tag(State(s): State<AppState>, t: Tenant, body: Bytes) -> Result<Response> {
    let req: TagCreate = parse_json(&body)?;
    validate_tag_text("name", &req.name)?;
    if req
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 250)
    {
        return Err(ApiError::field("description", "at most 250 characters").into());
    }
    let store = s.engine.store();
    let tag = store
        .create_tenant_tag(
            t.account.id,
            &req.name,
            req.description.as_deref(),
            req.is_billing_tag,
        )
        .await?;
    t.audit(store, "API.CreateTag", &format!("tag/{}", tag.id))
        .await;
    Ok((StatusCode::CREATED, Json(tag_json(store, &tag).await?)).into_response())
}

pub async fn get_tag(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let store = s.engine.store();
    let tag = store.tenant_tag(t.account.id, &id).await?;
    Ok(Json(tag_json(store, &tag).await?))
}

pub async fn delete_tag(
    State(s): State<AppState>,
    t: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let store = s.engine.store();
    let tag = store.tenant_tag(t.account.id, &id).await?;
    // Take it off the servers first, so no server points at a tag that is gone.
    for srv in store.list_servers(Some(t.account.id)).await? {
        if srv.tags.iter().any(|st| st.tag_id == tag.id) {
            let rest: Vec<_> = srv
                .tags
                .iter()
                .filter(|st| st.tag_id != tag.id)
                .cloned()
                .collect();
            store.set_server_tags(t.account.id, &srv.id, &rest).await?;
        }
    }
    store.delete_tenant_tag(t.account.id, &id).await?;
    t.audit(store, "API.DeleteTag", &format!("tag/{id}")).await;
    Ok(Json(json!({ "result": "Tag deleted", "tagId": id })))
}

// ---- events and usage -----------------------------------------------------------------------

/// phoenixNAP's audit `Event`, with the target and verb Ingot also records.
pub fn event_json(e: &AuditEvent, account_name: &str) -> Value {
    json!({
        "name": e.action,
        "timestamp": e.at,
        "userInfo": { "accountId": account_name, "clientId": e.client_id, "username": e.username },
        "target": e.target,
        "verb": e.verb,
        "uri": e.uri,
    })
}

pub async fn events(
    State(s): State<AppState>,
    t: Tenant,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Vec<Value>>> {
    // Other filters phoenixNAP's audit API knows (from, to, verb, ...) are not offered yet.
    let limit = match q.iter().find(|(k, _)| k == "limit") {
        None => 1000,
        Some((_, v)) => v.parse::<i64>().unwrap_or(0),
    };
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::field("limit", "must be 1 to 10000").into());
    }
    let events = s
        .engine
        .store()
        .audit_events(Some(t.account.id), limit)
        .await?;
    Ok(Json(
        events
            .iter()
            .map(|e| event_json(e, &t.account.name))
            .collect(),
    ))
}

/// Metered hours: every started hour counts, at least one per server (phoenixNAP's hourly
/// billing rule).
pub fn billed_hours(u: &ServerUsage, now: chrono::DateTime<chrono::Utc>) -> i64 {
    let end = u.ended_at.unwrap_or(now);
    let ms = (end - u.started_at).num_milliseconds().max(0);
    (ms + 3_599_999).div_euclid(3_600_000).max(1)
}

pub fn usage_json(usage: &[ServerUsage]) -> Value {
    let now = chrono::Utc::now();
    let servers: Vec<Value> = usage
        .iter()
        .map(|u| {
            json!({
                "serverId": u.server_id,
                "hostname": u.hostname,
                "type": u.server_type,
                "location": u.location,
                "startedOn": u.started_at,
                "endedOn": u.ended_at,
                "serverHours": billed_hours(u, now),
            })
        })
        .collect();
    let total: i64 = usage.iter().map(|u| billed_hours(u, now)).sum();
    json!({ "serverHours": total, "servers": servers })
}

pub async fn usage(State(s): State<AppState>, t: Tenant) -> Result<Json<Value>> {
    let usage = s.engine.store().server_usage(t.account.id).await?;
    Ok(Json(usage_json(&usage)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn every_started_hour_counts() {
        let start = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let u = |mins: i64| ServerUsage {
            server_id: "x".into(),
            hostname: "h".into(),
            server_type: "t".into(),
            location: "PHX".into(),
            started_at: start,
            ended_at: Some(start + chrono::Duration::minutes(mins)),
        };
        for (mins, hours) in [(0, 1), (1, 1), (60, 1), (61, 2), (180, 3)] {
            assert_eq!(billed_hours(&u(mins), start), hours, "{mins} minutes");
        }
    }
}
