//! The multi-tenant cloud API, compatible with phoenixNAP's Bare Metal Cloud:
//! - OAuth2 client credentials at `/auth/realms/BMC/protocol/openid-connect/token` and
//!   `/oauth2/token` ([`oauth`]);
//! - `/bmc/v1` (and the 2020 `/bmc/v1beta` alias): servers, actions, SSH keys, quotas, tags,
//!   events, usage and microk8s clusters ([`servers`], [`resources`]), plus phoenixNAP's
//!   sibling paths `/tag-manager/v1/tags` and `/audit/v1/events`;
//! - operator endpoints under the native `/api/v1` ([`operator`]).
//!
//! Errors here use phoenixNAP's body `{message, validationErrors}` ([`PnapError`]); the status
//! still comes from [`ApiError::status_and_code`]. Another account's objects are "not found".

pub mod cloudinit;
mod oauth;
mod operator;
mod resources;
mod servers;

use crate::auth::CallerKind;
pub use operator::parse_scopes;
pub use servers::pnap_status;

use crate::AppState;
use crate::auth::{Caller, bearer, split_api_key};
use crate::error::ApiError;
use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use ingot_engine::{Actor, EngineError};
use ingot_store::{Account, NewAuditEvent, Store, StoreError, User};
use serde_json::json;

/// Scopes a new client credential gets unless told otherwise.
pub const DEFAULT_SCOPES: &[&str] = &["bmc", "bmc.read", "tags", "tags.read", "audit.read"];
/// Every scope this region knows.
pub const KNOWN_SCOPES: &[&str] = DEFAULT_SCOPES;
/// Default `bmc.servers.max_count` for a new account.
pub const DEFAULT_MAX_SERVERS: i64 = 10;

/// The tenancy routes; merged into the region's router.
pub fn router() -> axum::Router<AppState> {
    let mut r = axum::Router::new()
        .route(
            "/auth/realms/BMC/protocol/openid-connect/token",
            post(oauth::token),
        )
        .route("/oauth2/token", post(oauth::token))
        .route(
            "/tag-manager/v1/tags",
            get(resources::list_tags).post(resources::create_tag),
        )
        .route(
            "/tag-manager/v1/tags/{id}",
            get(resources::get_tag).delete(resources::delete_tag),
        )
        .route("/audit/v1/events", get(resources::events));
    for p in ["/bmc/v1", "/bmc/v1beta"] {
        r = r
            .route(
                &format!("{p}/servers"),
                get(servers::list).post(servers::create),
            )
            .route(
                &format!("{p}/servers/{{id}}"),
                get(servers::get)
                    .patch(servers::patch)
                    .delete(servers::delete),
            )
            .route(
                &format!("{p}/servers/{{id}}/actions/{{action}}"),
                post(servers::action),
            )
            .route(&format!("{p}/servers/{{id}}/tags"), put(servers::put_tags))
            .route(
                &format!("{p}/clusters"),
                get(servers::list_clusters).post(servers::create_cluster),
            )
            .route(
                &format!("{p}/clusters/{{id}}"),
                get(servers::get_cluster).delete(servers::delete_cluster),
            )
            .route(
                &format!("{p}/ssh-keys"),
                get(resources::list_ssh_keys).post(resources::create_ssh_key),
            )
            .route(
                &format!("{p}/ssh-keys/{{id}}"),
                get(resources::get_ssh_key)
                    .put(resources::update_ssh_key)
                    .delete(resources::delete_ssh_key),
            )
            .route(&format!("{p}/quotas"), get(resources::list_quotas))
            .route(&format!("{p}/quotas/{{id}}"), get(resources::get_quota))
            .route(
                &format!("{p}/quotas/{{id}}/actions/request-edit"),
                post(resources::request_quota_edit),
            )
            .route(
                &format!("{p}/tags"),
                get(resources::list_tags).post(resources::create_tag),
            )
            .route(
                &format!("{p}/tags/{{id}}"),
                get(resources::get_tag).delete(resources::delete_tag),
            )
            .route(&format!("{p}/events"), get(resources::events))
            .route(&format!("{p}/usage"), get(resources::usage));
    }
    // Unknown paths under the phoenixNAP prefixes answer in phoenixNAP's error shape.
    for p in ["/bmc/v1", "/bmc/v1beta", "/tag-manager/v1", "/audit/v1"] {
        r = r.route(&format!("{p}/{{*rest}}"), any(unknown_path));
    }
    r.merge(operator::router())
}

async fn unknown_path(uri: axum::http::Uri) -> PnapError {
    PnapError(ApiError::NotFound {
        kind: "resource",
        id: uri.path().to_owned(),
    })
}

/// An error in phoenixNAP's shape: `{"message": …, "validationErrors": […]}`.
#[derive(Debug)]
pub struct PnapError(pub ApiError);

impl From<ApiError> for PnapError {
    fn from(e: ApiError) -> Self {
        PnapError(e)
    }
}

impl From<EngineError> for PnapError {
    fn from(e: EngineError) -> Self {
        PnapError(e.into())
    }
}

impl From<StoreError> for PnapError {
    fn from(e: StoreError) -> Self {
        PnapError(store_err(e))
    }
}

impl IntoResponse for PnapError {
    fn into_response(self) -> Response {
        let (status, _) = self.0.status_and_code();
        let mut body = json!({ "message": self.0.to_string() });
        if let ApiError::BadRequest { field, message } = &self.0 {
            let item = match field {
                Some(f) => format!("{f}: {message}"),
                None => message.clone(),
            };
            body["validationErrors"] = json!([item]);
        }
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"BMC\""),
            );
        }
        resp
    }
}

pub(crate) fn store_err(e: StoreError) -> ApiError {
    ApiError::from(EngineError::from(e))
}

/// A tenant caller: an OAuth2 access token, or a tenant member's API key.
pub struct Tenant {
    pub account: Account,
    /// The account's owner identity, which owns its machines.
    pub owner: User,
    pub client_id: Option<String>,
    /// Who acts: the client id, or the member's username.
    pub username: String,
    verb: String,
    uri: String,
}

impl Tenant {
    pub fn actor(&self) -> Actor {
        Actor {
            owned_only: true,
            user: Some(self.owner.clone()),
            name: format!("tenant:{}:{}", self.account.name, self.username),
        }
    }

    /// Records an audit event for this caller's action on `target`. Auditing never fails the
    /// action it records; a failure is logged.
    pub async fn audit(&self, store: &Store, action: &str, target: &str) {
        let e = NewAuditEvent {
            account_id: Some(self.account.id),
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            verb: self.verb.clone(),
            uri: self.uri.clone(),
        };
        if let Err(err) = store.record_audit(&e).await {
            tracing::error!(error = %err, action, "audit event not recorded");
        }
    }
}

/// Which scope family a path belongs to, and whether the call only reads.
fn required_scope(path: &str, read_only: bool) -> (&'static str, &'static str) {
    let family = if path.starts_with("/tag-manager/") {
        "tags"
    } else if path.starts_with("/audit/") {
        "audit"
    } else {
        "bmc"
    };
    match (family, read_only) {
        ("tags", true) => ("tags", "tags.read"),
        ("tags", false) => ("tags", "tags"),
        ("audit", _) => ("audit.read", "audit.read"),
        (_, true) => ("bmc", "bmc.read"),
        _ => ("bmc", "bmc"),
    }
}

fn lookup_failed(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "authentication lookup failed");
    ApiError::Internal
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = PnapError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PnapError> {
        let store = state.engine.store();
        let key = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let (account, client_id, username, scopes) = match split_api_key(key) {
            Some((ck, tk, ts)) => {
                let user = store
                    .authenticate_api_key(Some(ck), tk, ts)
                    .await
                    .map_err(lookup_failed)?
                    .ok_or(ApiError::Unauthorized)?;
                let account = store
                    .account_of_user(user.id)
                    .await
                    .map_err(lookup_failed)?
                    .ok_or_else(|| {
                        ApiError::InsufficientScope(
                            "this API is for tenants; operators use /api/v1".into(),
                        )
                    })?;
                // A member's own key carries every tenant permission.
                (
                    account,
                    None,
                    user.username,
                    KNOWN_SCOPES
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>(),
                )
            }
            None => {
                let grant = store
                    .authenticate_access_token(key)
                    .await
                    .map_err(lookup_failed)?
                    .ok_or(ApiError::Unauthorized)?;
                (
                    grant.account,
                    Some(grant.client_id.clone()),
                    grant.client_id,
                    grant.scopes,
                )
            }
        };
        let read_only =
            parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD;
        let (full, read) = required_scope(parts.uri.path(), read_only);
        if !scopes.iter().any(|s| s == full || s == read) {
            return Err(ApiError::InsufficientScope(format!(
                "this operation needs scope {read:?}"
            ))
            .into());
        }
        let owner = store.user(account.owner).await.map_err(lookup_failed)?;
        Ok(Tenant {
            account,
            owner,
            client_id,
            username,
            verb: parts.method.to_string(),
            uri: parts.uri.path().to_owned(),
        })
    }
}

/// The native API's caller for an OAuth2 access token: the account's owner identity.
pub(crate) async fn caller_for_access_token(
    store: &Store,
    token: &str,
) -> Result<Caller, ApiError> {
    let grant = store
        .authenticate_access_token(token)
        .await
        .map_err(lookup_failed)?
        .ok_or(ApiError::Unauthorized)?;
    let owner = store
        .user(grant.account.owner)
        .await
        .map_err(lookup_failed)?;
    Ok(Caller(owner, CallerKind::Tenant))
}

/// The native API's caller for a user who authenticated with an API key: a tenant member
/// acts as the account's owner identity; everyone else as themselves.
pub(crate) async fn caller_for_user(store: &Store, user: User) -> Result<Caller, ApiError> {
    if user.is_admin {
        return Ok(Caller(user, CallerKind::User));
    }
    match store
        .account_of_user(user.id)
        .await
        .map_err(lookup_failed)?
    {
        Some(account) => {
            let owner = store.user(account.owner).await.map_err(lookup_failed)?;
            Ok(Caller(owner, CallerKind::Tenant))
        }
        None => Ok(Caller(user, CallerKind::User)),
    }
}

/// Account names: what `ingot tenant create` and the operator API accept.
pub fn validate_account_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "name",
            format!(
                "{name:?} is not an account name (1-63 of a-z, 0-9, '-', '_', starting with a letter or digit)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_by_path_and_method() {
        let cases = [
            ("/bmc/v1/servers", true, ("bmc", "bmc.read")),
            ("/bmc/v1/servers", false, ("bmc", "bmc")),
            ("/tag-manager/v1/tags", true, ("tags", "tags.read")),
            ("/tag-manager/v1/tags", false, ("tags", "tags")),
            ("/audit/v1/events", true, ("audit.read", "audit.read")),
        ];
        for (path, ro, want) in cases {
            assert_eq!(required_scope(path, ro), want, "{path} {ro}");
        }
    }

    #[test]
    fn account_names() {
        for (n, ok) in [
            ("acme", true),
            ("a-1_b", true),
            ("", false),
            ("-x", false),
            ("Acme", false),
            ("a b", false),
        ] {
            assert_eq!(validate_account_name(n).is_ok(), ok, "{n:?}");
        }
    }
}
