//! The one API error type, and the one place it becomes an HTTP status and a JSON body:
//! `{"error": {"code", "message", "field"?, "current_status"?, "current_status_name"?}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ingot_engine::EngineError;
use ingot_types::NodeStatus;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    #[error("authentication required")]
    Unauthorized,
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{message}")]
    Conflict {
        message: String,
        current: Option<NodeStatus>,
    },
    #[error("this requires an administrator")]
    Forbidden,
    #[error("{0}")]
    BadGateway(String),
    /// No machine can serve the request right now (phoenixNAP answers 406).
    #[error("{0}")]
    NoCapacity(String),
    /// The account's quota does not allow it.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The credential lacks the OAuth2 scope the operation needs.
    #[error("{0}")]
    InsufficientScope(String),
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound { kind, id } => ApiError::NotFound { kind, id },
            EngineError::IllegalTransition(t) => ApiError::Conflict {
                message: t.to_string(),
                current: Some(t.current),
            },
            EngineError::NoMatch => ApiError::Conflict {
                message: "no machine matches the constraints".into(),
                current: None,
            },
            EngineError::InvalidInput { field, message } => ApiError::field(field, message),
            EngineError::Conflict { kind, field, value } => ApiError::Conflict {
                message: format!("{kind} with {field} {value:?} already exists"),
                current: None,
            },
            EngineError::Forbidden => ApiError::Forbidden,
            EngineError::BadAgentToken => ApiError::Unauthorized,
            EngineError::Power(p) => ApiError::BadGateway(format!("power control failed: {p}")),
            EngineError::Store(s) => {
                tracing::error!(error = %ingot_engine::error_chain(&s), "store failure");
                ApiError::Internal
            }
        }
    }
}

impl ApiError {
    /// The HTTP status and the machine-readable code of this error. Other body formats (the
    /// MAAS 2.0 API's plain-text errors) take the status from here too.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict {
                current: Some(_), ..
            } => (StatusCode::CONFLICT, "illegal_transition"),
            ApiError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bmc_error"),
            ApiError::NoCapacity(_) => (StatusCode::NOT_ACCEPTABLE, "no_capacity"),
            ApiError::QuotaExceeded(_) => (StatusCode::FORBIDDEN, "quota_exceeded"),
            ApiError::InsufficientScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut err = json!({ "code": code, "message": self.to_string() });
        if let ApiError::BadRequest { field: Some(f), .. } = &self {
            err["field"] = json!(f);
        }
        if let ApiError::Conflict {
            current: Some(s), ..
        } = &self
        {
            err["current_status"] = json!(s.code());
            err["current_status_name"] = json!(s.name());
        }
        let mut resp = (status, Json(json!({ "error": err }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Parses a JSON body strictly, naming the offending field on failure.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return parse_json(b"{}");
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // "unknown field `x`" is reported at the parent; name the field itself.
        let field = if let Some(rest) = message.strip_prefix("unknown field `") {
            rest.split('`').next().map(str::to_owned)
        } else if let Some(rest) = message.strip_prefix("missing field `") {
            rest.split('`').next().map(str::to_owned)
        } else if path == "." || path == "?" || path.is_empty() {
            None
        } else {
            Some(path)
        };
        ApiError::BadRequest { field, message }
    })
}
