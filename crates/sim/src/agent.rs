//! An HTTP client for the agent API, as the ephemeral agent uses it. Retries transient
//! failures (connection refused, 5xx) with backoff; refuses malformed answers.

use ingot_types::agent::{AGENT_API_PREFIX, EnlistRequest, EnlistResponse, Instructions, Report, ReportAck};
use serde::de::DeserializeOwned;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("region URL {0:?} is not usable")]
    BadUrl(String),
    #[error("region unreachable after {attempts} attempts")]
    Unreachable { attempts: u32, #[source] source: reqwest::Error },
    #[error("region refused the request: HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("region sent a malformed answer")]
    Malformed(#[source] serde_json::Error),
}

pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    token: String,
    pub attempts: u32,
}

impl AgentClient {
    pub fn new(region_url: &str, token: &str) -> Result<Self, AgentError> {
        if !(region_url.starts_with("http://") || region_url.starts_with("https://")) {
            return Err(AgentError::BadUrl(region_url.to_owned()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|_| AgentError::BadUrl(region_url.to_owned()))?;
        Ok(Self { http, base: format!("{}{AGENT_API_PREFIX}", region_url.trim_end_matches('/')), token: token.to_owned(), attempts: 8 })
    }

    pub fn set_token(&mut self, token: &str) {
        self.token = token.to_owned();
    }

    pub async fn enlist(&self, req: &EnlistRequest) -> Result<EnlistResponse, AgentError> {
        self.call(reqwest::Method::POST, "/enlist", Some(serde_json::to_value(req).map_err(AgentError::Malformed)?)).await
    }

    pub async fn instructions(&self) -> Result<Instructions, AgentError> {
        self.call(reqwest::Method::GET, "/instructions", None).await
    }

    pub async fn report(&self, report: &Report) -> Result<ReportAck, AgentError> {
        self.call(reqwest::Method::POST, "/report", Some(serde_json::to_value(report).map_err(AgentError::Malformed)?)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, AgentError> {
        let url = format!("{}{path}", self.base);
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.http.request(method.clone(), &url).bearer_auth(&self.token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_server_error() && attempt < self.attempts => {}
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    if !status.is_success() {
                        return Err(AgentError::Refused {
                            status: status.as_u16(),
                            body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                        });
                    }
                    return serde_json::from_slice(&bytes).map_err(AgentError::Malformed);
                }
                Err(e) if attempt >= self.attempts => {
                    return Err(AgentError::Unreachable { attempts: attempt, source: e });
                }
                Err(_) => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
