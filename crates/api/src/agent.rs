//! `/agent/v1`: the ephemeral agent's API (see `ingot_types::agent`).

use crate::AppState;
use crate::auth::bearer;
use crate::error::{ApiError, parse_json};
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use ingot_types::agent::{EnlistRequest, EnlistResponse, Instructions, Report, ReportAck};

/// The per-boot token the agent presents.
struct AgentToken(String);

impl FromRequestParts<AppState> for AgentToken {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        bearer(parts)
            .map(|t| AgentToken(t.to_owned()))
            .ok_or(ApiError::Unauthorized)
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/agent/v1/enlist", post(enlist))
        .route("/agent/v1/instructions", get(instructions))
        .route("/agent/v1/report", post(report))
}

async fn enlist(
    State(s): State<AppState>,
    AgentToken(t): AgentToken,
    body: Bytes,
) -> Result<Json<EnlistResponse>, ApiError> {
    let req: EnlistRequest = parse_json(&body)?;
    Ok(Json(s.engine.agent_enlist(&t, req).await?))
}

async fn instructions(
    State(s): State<AppState>,
    AgentToken(t): AgentToken,
) -> Result<Json<Instructions>, ApiError> {
    Ok(Json(s.engine.agent_instructions(&t).await?))
}

async fn report(
    State(s): State<AppState>,
    AgentToken(t): AgentToken,
    body: Bytes,
) -> Result<Json<ReportAck>, ApiError> {
    let r: Report = parse_json(&body)?;
    Ok(Json(s.engine.agent_report(&t, r).await?))
}
