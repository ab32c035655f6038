//! MAAS 2.0 compatibility: `/MAAS/api/2.0/` (python-libmaas, gomaasapi, Terraform), the
//! login endpoint `/MAAS/accounts/authenticate/`, and the metadata service
//! `/MAAS/metadata/` that cloud-init's MAAS datasource reads.
//!
//! - [`form`] parses query and form bodies (urlencoded and multipart);
//! - [`oauth`] parses and time-checks OAuth 1.0a PLAINTEXT credentials;
//! - [`describe`] is the handler table behind both `describe/` and dispatch;
//! - [`api`] implements the handlers, [`render`] the MAAS JSON shapes;
//! - [`metadata`] is the per-machine metadata service.
//!
//! Errors keep MAAS's formats: validation errors are a JSON object of field → messages,
//! everything else a plain-text body. Status codes come from [`ApiError`]. Every response
//! carries a `Date` header (cloud-init corrects its OAuth clock skew from it).

mod api;
pub mod describe;
pub mod form;
mod metadata;
pub mod oauth;
mod render;

use crate::AppState;
use crate::error::ApiError;
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use form::Params;
use ingot_engine::EngineError;
use oauth::{OAuthError, OAuthRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/MAAS/api/2.0/{*path}", any(api::dispatch))
        .route("/MAAS/accounts/authenticate/", post(api::authenticate))
        .route("/MAAS/metadata", any(metadata::serve_root))
        .route("/MAAS/metadata/", any(metadata::serve_root))
        .route("/MAAS/metadata/{*path}", any(metadata::serve))
        .layer(axum::middleware::map_response(add_date))
}

/// RFC 7231 IMF-fixdate, e.g. `Wed, 25 Nov 2026 09:00:00 GMT`.
pub fn http_date(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

async fn add_date(mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&http_date(chrono::Utc::now())) {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

/// An error in MAAS's body format.
#[derive(Debug)]
pub enum MaasError {
    Api(ApiError),
    Auth(OAuthError),
    /// Forbidden, with a reason more specific than "requires an administrator".
    Forbidden(String),
}

impl From<ApiError> for MaasError {
    fn from(e: ApiError) -> Self {
        MaasError::Api(e)
    }
}

impl From<EngineError> for MaasError {
    fn from(e: EngineError) -> Self {
        MaasError::Api(e.into())
    }
}

impl From<ingot_store::StoreError> for MaasError {
    fn from(e: ingot_store::StoreError) -> Self {
        MaasError::Api(EngineError::from(e).into())
    }
}

impl MaasError {
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        MaasError::Api(ApiError::field(field, message))
    }
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        MaasError::Api(ApiError::NotFound {
            kind,
            id: id.into(),
        })
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

impl IntoResponse for MaasError {
    fn into_response(self) -> Response {
        let unauthorized = |why: String| {
            let (status, _) = ApiError::Unauthorized.status_and_code();
            let mut r = text(status, format!("Authorization Error: {why}"));
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("OAuth realm=\"OAuth\""),
            );
            r
        };
        match self {
            MaasError::Auth(e) => unauthorized(e.to_string()),
            MaasError::Forbidden(why) => text(ApiError::Forbidden.status_and_code().0, why),
            MaasError::Api(ApiError::Unauthorized) => {
                unauthorized("authentication required".into())
            }
            MaasError::Api(e @ ApiError::BadRequest { field: Some(_), .. }) => {
                let (status, _) = e.status_and_code();
                let ApiError::BadRequest {
                    field: Some(f),
                    message,
                } = e
                else {
                    unreachable!()
                };
                (status, axum::Json(serde_json::json!({ f: [message] }))).into_response()
            }
            MaasError::Api(e) => {
                let (status, _) = e.status_and_code();
                text(status, e.to_string())
            }
        }
    }
}

pub type MaasResult<T> = Result<T, MaasError>;

/// Query-string and form parameters of a request.
pub fn request_params(uri: &http::Uri, headers: &HeaderMap, body: &[u8]) -> MaasResult<Params> {
    let mut params = uri
        .query()
        .map(Params::parse_urlencoded)
        .unwrap_or_default();
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let body_params =
        Params::parse_body(ct, body).map_err(|e| MaasError::bad("body", e.to_string()))?;
    params.extend(body_params);
    Ok(params)
}

/// The OAuth attempt in a request, if any.
pub fn oauth_request(headers: &HeaderMap, params: &Params) -> MaasResult<Option<OAuthRequest>> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    oauth::extract(auth, params).map_err(MaasError::Auth)
}

/// Verifies an OAuth request signed with a user's API key, then spends its nonce.
pub async fn verify_user(state: &AppState, req: &OAuthRequest) -> MaasResult<ingot_store::User> {
    let forget_at =
        oauth::check_timestamp(req, chrono::Utc::now().timestamp()).map_err(MaasError::Auth)?;
    let found = state
        .engine
        .store()
        .authenticate_api_key(Some(&req.consumer_key), &req.token_key, &req.token_secret)
        .await;
    let user = lookup_result(found)?;
    spend_nonce(state, req, forget_at).await?;
    Ok(user)
}

/// Verifies an OAuth request signed with a machine's metadata credentials, then spends its
/// nonce. The credentials name the machine.
pub async fn verify_machine(
    state: &AppState,
    req: &OAuthRequest,
) -> MaasResult<ingot_types::machine::Machine> {
    let forget_at =
        oauth::check_timestamp(req, chrono::Utc::now().timestamp()).map_err(MaasError::Auth)?;
    let found = state
        .engine
        .store()
        .machine_by_metadata_token(&req.consumer_key, &req.token_key, &req.token_secret)
        .await;
    let machine = lookup_result(found)?;
    spend_nonce(state, req, forget_at).await?;
    Ok(machine)
}

fn lookup_result<T>(found: Result<Option<T>, ingot_store::StoreError>) -> MaasResult<T> {
    match found {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(MaasError::Auth(OAuthError::BadCredentials)),
        Err(e) => {
            tracing::error!(error = %ingot_engine::error_chain(&e), "OAuth key lookup failed");
            Err(MaasError::Api(ApiError::Internal))
        }
    }
}

/// Records the nonce; a repeat is a replay. Only requests that passed every other check get
/// here, so strangers cannot fill the nonce table.
async fn spend_nonce(state: &AppState, req: &OAuthRequest, forget_at: i64) -> MaasResult<()> {
    if state
        .engine
        .store()
        .record_oauth_nonce(&req.token_key, &req.nonce, forget_at)
        .await?
    {
        Ok(())
    } else {
        Err(MaasError::Auth(OAuthError::Replayed))
    }
}

/// `scheme://host[:port]` as the client addressed us, for absolute URIs in `describe/`.
pub fn base_uri(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost:5240");
    format!("http://{host}")
}
