//! `/MAAS/metadata/`: the metadata service cloud-init's MAAS datasource reads, and where the
//! machine reports back. Every request but the version list is signed with the machine's
//! own OAuth credentials (`machines/{id}/?op=get_token`), which name the machine; there is
//! deliberately no anonymous by-id or by-MAC access (MAAS's `get_preseed` hands any caller
//! a machine's credentials).

use super::{MaasError, MaasResult, oauth_request, render, request_params, verify_machine};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ingot_engine::{SignalStatus, StatusEvent};
use ingot_types::machine::Machine;
use serde::Deserialize;

pub const PREFIX: &str = "/MAAS/metadata/";
/// The versions MAAS serves; cloud-init asks for `2012-03-01`.
pub const VERSIONS: [&str; 2] = ["2012-03-01", "latest"];

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

pub async fn serve_root() -> Response {
    text(format!("{}\n", VERSIONS.join("\n")))
}

pub async fn serve(
    State(state): State<AppState>,
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match serve_inner(&state, method, uri, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn machine_for_request(
    state: &AppState,
    headers: &HeaderMap,
    params: &super::form::Params,
) -> MaasResult<Machine> {
    let req = oauth_request(headers, params)?
        .ok_or(MaasError::Auth(super::oauth::OAuthError::Anonymous))?;
    verify_machine(state, &req).await
}

async fn serve_inner(
    state: &AppState,
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> MaasResult<Response> {
    let rest = uri.path().strip_prefix(PREFIX).unwrap_or("");
    // cloud-init joins URLs with an extra slash now and then; empty segments carry nothing.
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() {
        return Ok(serve_root().await);
    }
    if segments[0] == "status" {
        let [_, system_id] = segments[..] else {
            return Err(MaasError::not_found("metadata path", uri.path()));
        };
        if method != http::Method::POST {
            return Err(bad_signature(&method, None));
        }
        let m = machine_for_request(state, &headers, &Default::default()).await?;
        if m.id.as_str() != system_id {
            return Err(MaasError::not_found("machine", system_id));
        }
        return status_webhook(state, &m, &body).await;
    }
    if !VERSIONS.contains(&segments[0]) {
        return Err(MaasError::not_found("metadata version", segments[0]));
    }
    let params = request_params(&uri, &headers, &body)?;
    let m = machine_for_request(state, &headers, &params).await?;
    let store = state.engine.store();
    let op = params.get("op");
    match (&method, &segments[1..], op) {
        (&http::Method::GET, [], None) => {
            let mut items = vec!["meta-data"];
            if store.user_data(&m.id).await?.is_some() {
                items.push("user-data");
            }
            Ok(text(format!("{}\n", items.join("\n"))))
        }
        (&http::Method::POST, [], Some("signal")) => signal(state, &m, &params).await,
        (&http::Method::GET, ["meta-data"], None) => {
            let mut items = vec!["instance-id", "local-hostname"];
            if !public_keys(state, &m).await?.is_empty() {
                items.push("public-keys");
            }
            items.push("vendor-data");
            Ok(text(format!("{}\n", items.join("\n"))))
        }
        (&http::Method::GET, ["meta-data", item], None) => match *item {
            "instance-id" => Ok(text(m.id.to_string())),
            "local-hostname" => Ok(text(render::fqdn(&m))),
            "public-keys" => {
                let keys = public_keys(state, &m).await?;
                if keys.is_empty() {
                    return Err(MaasError::not_found("metadata item", "public-keys"));
                }
                Ok(text(keys.join("\n")))
            }
            "vendor-data" => Ok((
                [(header::CONTENT_TYPE, "application/x-yaml; charset=utf-8")],
                vendor_data(&m),
            )
                .into_response()),
            other => Err(MaasError::not_found("metadata item", other)),
        },
        (&http::Method::GET, ["user-data"], None) => {
            match state.engine.metadata_user_data(&m).await? {
                Some(data) => Ok(
                    ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response()
                ),
                None => Err(MaasError::not_found("metadata item", "user-data")),
            }
        }
        (_, [], _) | (_, ["meta-data", ..], _) | (_, ["user-data"], _) => {
            Err(bad_signature(&method, op))
        }
        _ => Err(MaasError::not_found("metadata path", uri.path())),
    }
}

fn bad_signature(method: &http::Method, op: Option<&str>) -> MaasError {
    MaasError::Api(crate::error::ApiError::BadRequest {
        field: None,
        message: format!(
            "Unrecognised signature: method={method} op={}",
            op.unwrap_or("None")
        ),
    })
}

async fn public_keys(state: &AppState, m: &Machine) -> MaasResult<Vec<String>> {
    let Some(owner) = m.owner else {
        return Ok(Vec::new());
    };
    Ok(state
        .engine
        .store()
        .ssh_keys(owner)
        .await?
        .into_iter()
        .map(|k| k.key)
        .collect())
}

/// Vendor data: a cloud-config that keeps the machine's hostname as the region named it.
fn vendor_data(m: &Machine) -> String {
    let cloud_config = format!(
        "#cloud-config\npreserve_hostname: false\nfqdn: {}\nmanage_etc_hosts: true\n",
        render::fqdn(m)
    );
    let indented: String = cloud_config.lines().map(|l| format!("  {l}\n")).collect();
    format!("cloud-init: |\n{indented}")
}

async fn signal(
    state: &AppState,
    m: &Machine,
    params: &super::form::Params,
) -> MaasResult<Response> {
    let raw = params
        .get("status")
        .ok_or_else(|| MaasError::bad("status", "This field is required."))?;
    let status = SignalStatus::parse(raw)
        .ok_or_else(|| MaasError::bad("status", format!("{raw:?} is not a signal status")))?;
    state
        .engine
        .metadata_signal(m, status, params.get("error"))
        .await?;
    Ok(text("OK".into()))
}

#[derive(Deserialize)]
struct WebhookEvent {
    event_type: String,
    origin: String,
    name: String,
    description: String,
    #[serde(default)]
    result: Option<String>,
}

async fn status_webhook(state: &AppState, m: &Machine, body: &[u8]) -> MaasResult<Response> {
    let ev: WebhookEvent = crate::error::parse_json(body).map_err(MaasError::Api)?;
    if !matches!(ev.event_type.as_str(), "start" | "progress" | "finish") {
        return Err(MaasError::bad(
            "event_type",
            format!("{:?} is not start, progress or finish", ev.event_type),
        ));
    }
    if let Some(r) = &ev.result
        && !matches!(r.as_str(), "SUCCESS" | "FAIL" | "WARN")
    {
        return Err(MaasError::bad(
            "result",
            format!("{r:?} is not SUCCESS, FAIL or WARN"),
        ));
    }
    let event = StatusEvent {
        event_type: ev.event_type,
        origin: ev.origin,
        name: ev.name,
        description: ev.description,
        result: ev.result,
    };
    state.engine.metadata_status_event(m, &event).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
