//! Operator endpoints in the native API (`/api/v1`): accounts, their credentials, members and
//! quotas; the catalogue (server types, locations); usage, audit; rendered user-data.
//! Administrators only; these use the native error shape.

use super::resources::{event_json, usage_json};
use super::{DEFAULT_MAX_SERVERS, DEFAULT_SCOPES, KNOWN_SCOPES, store_err, validate_account_name};
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, parse_json};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use ingot_store::{Account, ApiClient, Location, NewAuditEvent, ServerType, Store};
use ingot_types::MachineId;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

type Result<T> = std::result::Result<T, ApiError>;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/v1/accounts", get(list_accounts).post(create_account))
        .route("/api/v1/accounts/{name}", get(get_account))
        .route("/api/v1/accounts/{name}/quota", put(set_quota))
        .route(
            "/api/v1/accounts/{name}/credentials",
            get(list_credentials).post(create_credentials),
        )
        .route(
            "/api/v1/accounts/{name}/credentials/{client_id}",
            delete(delete_credentials),
        )
        .route("/api/v1/accounts/{name}/members", post(create_member))
        .route("/api/v1/accounts/{name}/servers", get(account_servers))
        .route(
            "/api/v1/accounts/{name}/servers/{id}",
            delete(delete_account_server),
        )
        .route("/api/v1/accounts/{name}/usage", get(account_usage))
        .route("/api/v1/audit-events", get(audit_events))
        .route("/api/v1/server-types", get(list_server_types))
        .route("/api/v1/server-types/{name}", put(put_server_type))
        .route("/api/v1/locations", get(list_locations))
        .route("/api/v1/locations/{code}", put(put_location))
        .route("/api/v1/machines/{id}/user-data", get(user_data))
}

fn require_admin(c: &Caller) -> Result<()> {
    if c.0.is_admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

async fn audit(
    store: &Store,
    c: &Caller,
    account: Option<i64>,
    action: &str,
    target: &str,
    verb: &str,
    uri: &str,
) {
    let e = NewAuditEvent {
        account_id: account,
        client_id: None,
        username: c.0.username.clone(),
        action: action.into(),
        target: target.into(),
        verb: verb.into(),
        uri: uri.into(),
    };
    if let Err(err) = store.record_audit(&e).await {
        tracing::error!(error = %err, action, "audit event not recorded");
    }
}

pub fn account_json(a: &Account) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "max_servers": a.max_servers,
        "servers_used": a.servers_used,
        "created_at": a.created_at,
    })
}

fn client_json(c: &ApiClient) -> Value {
    json!({ "client_id": c.client_id, "name": c.name, "scopes": c.scopes, "created_at": c.created_at })
}

async fn account(store: &Store, name: &str) -> Result<Account> {
    store.account_by_name(name).await.map_err(store_err)
}

async fn list_accounts(State(s): State<AppState>, c: Caller) -> Result<Json<Vec<Value>>> {
    require_admin(&c)?;
    let list = s.engine.store().list_accounts().await.map_err(store_err)?;
    Ok(Json(list.iter().map(account_json).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAccount {
    name: String,
    max_servers: Option<i64>,
}

async fn create_account(State(s): State<AppState>, c: Caller, body: Bytes) -> Result<Response> {
    require_admin(&c)?;
    let req: CreateAccount = parse_json(&body)?;
    validate_account_name(&req.name)?;
    let max = req.max_servers.unwrap_or(DEFAULT_MAX_SERVERS);
    if max < 0 {
        return Err(ApiError::field("max_servers", "must be 0 or more"));
    }
    let store = s.engine.store();
    let a = store
        .create_account(&req.name, max)
        .await
        .map_err(store_err)?;
    audit(
        store,
        &c,
        Some(a.id),
        "Operator.CreateAccount",
        &format!("account/{}", a.name),
        "POST",
        "/api/v1/accounts",
    )
    .await;
    Ok((StatusCode::CREATED, Json(account_json(&a))).into_response())
}

async fn get_account(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    require_admin(&c)?;
    Ok(Json(account_json(&account(s.engine.store(), &name).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQuota {
    max_servers: i64,
}

async fn set_quota(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    require_admin(&c)?;
    let req: SetQuota = parse_json(&body)?;
    if req.max_servers < 0 {
        return Err(ApiError::field("max_servers", "must be 0 or more"));
    }
    let store = s.engine.store();
    let a = account(store, &name).await?;
    let a = store
        .set_max_servers(a.id, req.max_servers)
        .await
        .map_err(store_err)?;
    let uri = format!("/api/v1/accounts/{name}/quota");
    audit(
        store,
        &c,
        Some(a.id),
        "Operator.SetQuota",
        &format!("account/{name}"),
        "PUT",
        &uri,
    )
    .await;
    Ok(Json(account_json(&a)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateCredentials {
    name: Option<String>,
    scopes: Option<Vec<String>>,
}

/// Parses requested scopes, refusing unknown ones by name.
pub fn parse_scopes(requested: Option<&[String]>) -> Result<Vec<String>> {
    let Some(req) = requested else {
        return Ok(DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
    };
    if req.is_empty() {
        return Err(ApiError::field("scopes", "at least one scope"));
    }
    for (i, sc) in req.iter().enumerate() {
        if !KNOWN_SCOPES.contains(&sc.as_str()) {
            return Err(ApiError::field(
                format!("scopes[{i}]"),
                format!("unknown scope {sc:?} (one of {})", KNOWN_SCOPES.join(", ")),
            ));
        }
    }
    Ok(req.to_vec())
}

async fn create_credentials(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    require_admin(&c)?;
    let req: CreateCredentials = parse_json(&body)?;
    let scopes = parse_scopes(req.scopes.as_deref())?;
    let store = s.engine.store();
    let a = account(store, &name).await?;
    let issued = store
        .create_api_client(a.id, req.name.as_deref().unwrap_or(""), &scopes)
        .await
        .map_err(store_err)?;
    let uri = format!("/api/v1/accounts/{name}/credentials");
    audit(
        store,
        &c,
        Some(a.id),
        "Operator.CreateCredentials",
        &format!("client/{}", issued.client.client_id),
        "POST",
        &uri,
    )
    .await;
    let mut v = client_json(&issued.client);
    // Shown once: only a hash is kept.
    v["client_secret"] = json!(issued.client_secret);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn list_credentials(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<Value>>> {
    require_admin(&c)?;
    let store = s.engine.store();
    let a = account(store, &name).await?;
    let list = store.list_api_clients(a.id).await.map_err(store_err)?;
    Ok(Json(list.iter().map(client_json).collect()))
}

async fn delete_credentials(
    State(s): State<AppState>,
    c: Caller,
    Path((name, client_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    require_admin(&c)?;
    let store = s.engine.store();
    let a = account(store, &name).await?;
    store
        .delete_api_client(a.id, &client_id)
        .await
        .map_err(store_err)?;
    let uri = format!("/api/v1/accounts/{name}/credentials/{client_id}");
    audit(
        store,
        &c,
        Some(a.id),
        "Operator.DeleteCredentials",
        &format!("client/{client_id}"),
        "DELETE",
        &uri,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateMember {
    username: String,
}

/// Adds a tenant member and issues their API key (shown once).
async fn create_member(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    require_admin(&c)?;
    let req: CreateMember = parse_json(&body)?;
    if req.username.is_empty()
        || req.username.len() > 150
        || req.username.contains(char::is_whitespace)
    {
        return Err(ApiError::field(
            "username",
            "must be 1-150 characters without spaces",
        ));
    }
    let store = s.engine.store();
    let a = account(store, &name).await?;
    let user = store
        .create_account_member(a.id, &req.username)
        .await
        .map_err(store_err)?;
    let key = store
        .create_api_key(user.id, "tenant member")
        .await
        .map_err(store_err)?;
    let uri = format!("/api/v1/accounts/{name}/members");
    audit(
        store,
        &c,
        Some(a.id),
        "Operator.CreateMember",
        &format!("user/{}", user.username),
        "POST",
        &uri,
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "username": user.username, "account": a.name, "api_key": key.as_maas_key() })),
    )
        .into_response())
}

async fn account_servers(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<Value>>> {
    require_admin(&c)?;
    let store = s.engine.store();
    let a = account(store, &name).await?;
    Ok(Json(
        super::servers::operator_servers(store, Some(a.id)).await?,
    ))
}

/// Retires a tenant's server: the record goes and the machine is released with its disks
/// erased, as when the tenant deletes it.
async fn delete_account_server(
    State(s): State<AppState>,
    c: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    require_admin(&c)?;
    let store = s.engine.store();
    let a = account(store, &name).await?;
    super::servers::end_server_as(&s, a.id, &c.actor(), &id)
        .await
        .map_err(|e| e.0)?;
    let uri = format!("/api/v1/accounts/{name}/servers/{id}");
    audit(
        store,
        &c,
        Some(a.id),
        "Operator.DeleteServer",
        &format!("server/{id}"),
        "DELETE",
        &uri,
    )
    .await;
    Ok(Json(json!({ "result": "Server deleted", "serverId": id })))
}

async fn account_usage(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    require_admin(&c)?;
    let store = s.engine.store();
    let a = account(store, &name).await?;
    let mut v = usage_json(&store.server_usage(a.id).await.map_err(store_err)?);
    v["account"] = json!(a.name);
    Ok(Json(v))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    account: Option<String>,
    limit: Option<i64>,
}

async fn audit_events(
    State(s): State<AppState>,
    c: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<Value>>> {
    require_admin(&c)?;
    let store = s.engine.store();
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::field("limit", "must be 1 to 10000"));
    }
    let account_id = match &q.account {
        Some(n) => Some(account(store, n).await?.id),
        None => None,
    };
    let names: HashMap<i64, String> = store
        .list_accounts()
        .await
        .map_err(store_err)?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect();
    let events = store
        .audit_events(account_id, limit)
        .await
        .map_err(store_err)?;
    Ok(Json(
        events
            .iter()
            .map(|e| {
                event_json(
                    e,
                    e.account_id
                        .and_then(|id| names.get(&id))
                        .map_or("", String::as_str),
                )
            })
            .collect(),
    ))
}

async fn list_server_types(State(s): State<AppState>, c: Caller) -> Result<Json<Vec<ServerType>>> {
    require_admin(&c)?;
    Ok(Json(
        s.engine
            .store()
            .list_server_types()
            .await
            .map_err(store_err)?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerTypeBody {
    #[serde(default)]
    min_cpu_count: u32,
    #[serde(default)]
    min_memory_mib: u64,
    machine_tag: Option<String>,
    #[serde(default)]
    description: String,
}

async fn put_server_type(
    State(s): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<ServerType>> {
    require_admin(&c)?;
    let b: ServerTypeBody = parse_json(&body)?;
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, b'.' | b'-' | b'_'));
    if !ok {
        return Err(ApiError::field(
            "name",
            format!("{name:?} is not a server type name (letters, digits, '.', '-', '_')"),
        ));
    }
    let t = ServerType {
        name,
        min_cpu_count: b.min_cpu_count,
        min_memory_mib: b.min_memory_mib,
        machine_tag: b.machine_tag,
        description: b.description,
    };
    let store = s.engine.store();
    store.put_server_type(&t).await.map_err(store_err)?;
    let uri = format!("/api/v1/server-types/{}", t.name);
    audit(
        store,
        &c,
        None,
        "Operator.PutServerType",
        &format!("server-type/{}", t.name),
        "PUT",
        &uri,
    )
    .await;
    Ok(Json(t))
}

async fn list_locations(State(s): State<AppState>, c: Caller) -> Result<Json<Vec<Location>>> {
    require_admin(&c)?;
    Ok(Json(
        s.engine.store().list_locations().await.map_err(store_err)?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationBody {
    zone: String,
    private_cidr: String,
    public_cidr: String,
    #[serde(default)]
    description: String,
}

async fn put_location(
    State(s): State<AppState>,
    c: Caller,
    Path(code): Path<String>,
    body: Bytes,
) -> Result<Json<Location>> {
    require_admin(&c)?;
    let b: LocationBody = parse_json(&body)?;
    if code.is_empty()
        || code.len() > 16
        || !code
            .bytes()
            .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit())
    {
        return Err(ApiError::field(
            "code",
            format!("{code:?} is not a location code (A-Z, 0-9, like PHX)"),
        ));
    }
    for (field, cidr) in [
        ("private_cidr", &b.private_cidr),
        ("public_cidr", &b.public_cidr),
    ] {
        if ingot_store::host_addresses(cidr).is_none() {
            return Err(ApiError::field(
                field,
                format!("{cidr:?} is not an IPv4 network /8 to /30"),
            ));
        }
    }
    let l = Location {
        code,
        zone: b.zone,
        private_cidr: b.private_cidr,
        public_cidr: b.public_cidr,
        description: b.description,
    };
    let store = s.engine.store();
    store.put_location(&l).await.map_err(store_err)?;
    let uri = format!("/api/v1/locations/{}", l.code);
    audit(
        store,
        &c,
        None,
        "Operator.PutLocation",
        &format!("location/{}", l.code),
        "PUT",
        &uri,
    )
    .await;
    Ok(Json(l))
}

/// The user-data the machine's current deployment received, as cloud-init reads it.
async fn user_data(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    require_admin(&c)?;
    let mid = MachineId::parse(&id).map_err(|_| ApiError::NotFound {
        kind: "machine",
        id: id.clone(),
    })?;
    let data = s.engine.store().user_data(&mid).await.map_err(store_err)?;
    let data = data.ok_or(ApiError::NotFound {
        kind: "user-data of machine",
        id,
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], data).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse() {
        assert_eq!(parse_scopes(None).unwrap().len(), DEFAULT_SCOPES.len());
        assert_eq!(
            parse_scopes(Some(&["bmc.read".into()])).unwrap(),
            ["bmc.read"]
        );
        let e = parse_scopes(Some(&["bmc".into(), "root".into()])).unwrap_err();
        assert!(matches!(e, ApiError::BadRequest { field: Some(f), .. } if f == "scopes[1]"));
    }
}
