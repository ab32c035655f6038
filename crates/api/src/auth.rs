//! Who is calling. The native API takes `Authorization: Bearer consumer_key:token_key:secret`
//! (a MAAS API key) or `Bearer <OAuth2 access token>` (tenancy); anything else is 401.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use ingot_engine::Actor;
use ingot_store::User;

/// An authenticated user. A tenant (an OAuth2 token, or a tenant member's key) acts as its
/// account's owner identity and sees only the account's machines.
pub struct Caller(pub User, pub CallerKind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    /// An operator or a plain MAAS user.
    User,
    /// A tenant of the cloud API.
    Tenant,
}

impl Caller {
    pub fn actor(&self) -> Actor {
        let mut a = Actor::user(&self.0);
        a.owned_only = self.is_tenant();
        a
    }

    pub fn is_tenant(&self) -> bool {
        self.1 == CallerKind::Tenant
    }
}

/// Splits a MAAS API key into its three parts.
pub fn split_api_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut parts = key.split(':');
    let (ck, tk, ts) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ck.is_empty() || tk.is_empty() || ts.is_empty() {
        return None;
    }
    Some((ck, tk, ts))
}

pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let Some((ck, tk, ts)) = split_api_key(key) else {
            // Not an API key: an OAuth2 access token acts as its account's owner identity.
            return crate::tenancy::caller_for_access_token(state.engine.store(), key).await;
        };
        let user = state
            .engine
            .store()
            .authenticate_api_key(Some(ck), tk, ts)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "authentication lookup failed");
                ApiError::Internal
            })?
            .ok_or(ApiError::Unauthorized)?;
        crate::tenancy::caller_for_user(state.engine.store(), user).await
    }
}
