//! The OAuth2 token endpoint (RFC 6749 section 4.4, client credentials), at Keycloak's path
//! shape so phoenixNAP clients only change the host. Errors are RFC 6749 section 5.2 bodies
//! (`{"error", "error_description"}`), never the API's own error shape.

use crate::AppState;
use crate::tenancy::KNOWN_SCOPES;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ingot_store::NewAuditEvent;
use serde_json::json;

/// Access tokens live an hour: longer than a provisioning run, since the seed's demo never
/// refreshes its token.
pub const TOKEN_TTL_SECS: i64 = 3600;

/// An RFC 6749 error answer.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// The client authenticated with HTTP Basic: a 401 must then ask for Basic again.
    basic: bool,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            basic: false,
        }
    }
    fn bad(error: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({ "error": self.error, "error_description": self.description })),
        )
            .into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.status == StatusCode::UNAUTHORIZED {
            let v = if self.basic {
                "Basic realm=\"BMC\""
            } else {
                "Bearer realm=\"BMC\""
            };
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
        }
        resp
    }
}

/// `Authorization: Basic base64(client_id:client_secret)`, if present.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok();
    let text = decoded.and_then(|d| String::from_utf8(d).ok());
    Some(match text.as_deref().and_then(|t| t.split_once(':')) {
        // RFC 6749 2.3.1: both parts are form-urlencoded before the Basic encoding.
        Some((id, secret)) => Ok((percent_decode(id), percent_decode(secret))),
        None => Err(()),
    })
}

fn percent_decode(s: &str) -> String {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(&format!("v={}", s.replace('&', "%26").replace('=', "%3D")))
            .unwrap_or_default();
    pairs
        .into_iter()
        .next()
        .map(|(_, v)| v)
        .unwrap_or_else(|| s.to_owned())
}

pub async fn token(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match issue(&s, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn issue(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Response, OAuthError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(OAuthError::bad(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|_| OAuthError::bad("invalid_request", "the body is not form-urlencoded"))?;
    let mut params = std::collections::HashMap::new();
    for (k, v) in pairs {
        if params.insert(k.clone(), v).is_some() {
            return Err(OAuthError::bad(
                "invalid_request",
                format!("parameter {k} is repeated"),
            ));
        }
    }
    let grant_type = params
        .get("grant_type")
        .ok_or_else(|| OAuthError::bad("invalid_request", "grant_type is required"))?;
    if grant_type != "client_credentials" {
        return Err(OAuthError::bad(
            "unsupported_grant_type",
            format!("grant_type {grant_type:?} is not supported; use client_credentials"),
        ));
    }
    let basic = basic_credentials(headers);
    let form_id = params.get("client_id");
    let form_secret = params.get("client_secret");
    let (client_id, secret, used_basic) = match (basic, form_secret) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::bad(
                "invalid_request",
                "use one client authentication method, not Basic and client_secret both",
            ));
        }
        (Some(Err(())), None) => {
            let mut e = OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "malformed Basic credentials",
            );
            e.basic = true;
            return Err(e);
        }
        (Some(Ok((id, secret))), None) => {
            if form_id.is_some_and(|f| *f != id) {
                return Err(OAuthError::bad(
                    "invalid_request",
                    "client_id in the body differs from the Basic credentials",
                ));
            }
            (id, secret, true)
        }
        (None, Some(secret)) => {
            let id = form_id.ok_or_else(|| {
                OAuthError::bad(
                    "invalid_request",
                    "client_id is required with client_secret",
                )
            })?;
            (id.clone(), secret.clone(), false)
        }
        (None, None) => {
            return Err(OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication is required",
            ));
        }
    };
    let store = s.engine.store();
    let client = match store.authenticate_client(&client_id, &secret).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            let mut e = OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client or wrong secret",
            );
            e.basic = used_basic;
            return Err(e);
        }
        Err(e) => {
            tracing::error!(error = %e, "client lookup failed");
            return Err(OAuthError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
            ));
        }
    };
    let scopes: Vec<String> = match params
        .get("scope")
        .map(|s| s.split_whitespace().collect::<Vec<_>>())
    {
        None => client.scopes.clone(),
        Some(req) if req.is_empty() => client.scopes.clone(),
        Some(req) => {
            if let Some(bad) = req
                .iter()
                .find(|r| !KNOWN_SCOPES.contains(r) || !client.scopes.iter().any(|c| c == *r))
            {
                return Err(OAuthError::bad(
                    "invalid_scope",
                    format!("scope {bad:?} is unknown or not granted to this client"),
                ));
            }
            let mut v: Vec<String> = req.iter().map(|r| r.to_string()).collect();
            v.dedup();
            v
        }
    };
    let (token, _expires) = store
        .issue_access_token(client.id, &scopes, TOKEN_TTL_SECS * 1000)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "token not stored");
            OAuthError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
            )
        })?;
    let audit = NewAuditEvent {
        account_id: Some(client.account_id),
        client_id: Some(client.client_id.clone()),
        username: client.client_id.clone(),
        action: "API.IssueToken".into(),
        target: format!("client/{}", client.client_id),
        verb: "POST".into(),
        uri: "/oauth2/token".into(),
    };
    if let Err(e) = store.record_audit(&audit).await {
        tracing::error!(error = %e, "audit event not recorded");
    }
    let mut resp = Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_TTL_SECS,
        "scope": scopes.join(" "),
        "refresh_expires_in": 0,
        "not-before-policy": 0,
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode_and_refuse_garbage() {
        let mut h = HeaderMap::new();
        assert!(basic_credentials(&h).is_none());
        let enc = base64::engine::general_purpose::STANDARD.encode("abc:s%3Acret");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {enc}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(Ok(("abc".into(), "s:cret".into())))
        );
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_credentials(&h), Some(Err(())));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(basic_credentials(&h).is_none());
    }
}
