//! The HTTP client for the agent API (`ingot_types::agent`), shared by the real agent binary
//! and the sim fleet so both speak exactly one protocol. Retries transient failures
//! (connection refused, timeouts, 5xx) with backoff; refuses malformed answers.

use ingot_types::agent::{
    AGENT_API_PREFIX, EnlistRequest, EnlistResponse, Instructions, Report, ReportAck,
};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("region URL {0:?} is not usable")]
    BadUrl(String),
    #[error("region unreachable after {attempts} attempts")]
    Unreachable {
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("region refused the request: HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("region sent a malformed answer")]
    Malformed(#[source] serde_json::Error),
}

impl AgentError {
    /// The region does not know the credential (HTTP 401).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, AgentError::Refused { status: 401, .. })
    }
}

/// How often and how patiently a call is retried while the region is unreachable or failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries per call, the first included.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// About 16 s of trying: enough for a region restart, short enough that a sim fleet
    /// notices a dead region quickly.
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// One failed try that will be retried: what the caller may show on a console.
#[derive(Debug, Clone)]
pub struct RetryNotice {
    pub path: String,
    pub attempt: u32,
    pub attempts: u32,
    pub wait: Duration,
    pub reason: String,
}

type RetryObserver = Arc<dyn Fn(&RetryNotice) + Send + Sync>;

#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    token: String,
    pub retry: RetryPolicy,
    on_retry: Option<RetryObserver>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never print it.
        f.debug_struct("AgentClient")
            .field("base", &self.base)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    pub fn new(region_url: &str, token: &str) -> Result<Self, AgentError> {
        if !(region_url.starts_with("http://") || region_url.starts_with("https://")) {
            return Err(AgentError::BadUrl(region_url.to_owned()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            // A region that drops packets must not cost 30 s per try.
            .connect_timeout(Duration::from_secs(5))
            // The agent talks to its region directly; proxy variables on a test host must not
            // reroute that traffic.
            .no_proxy()
            .build()
            .map_err(|_| AgentError::BadUrl(region_url.to_owned()))?;
        Ok(Self {
            http,
            base: format!("{}{AGENT_API_PREFIX}", region_url.trim_end_matches('/')),
            token: token.to_owned(),
            retry: RetryPolicy::default(),
            on_retry: None,
        })
    }

    /// Calls `observer` before each retry wait (the real agent prints it on the console).
    pub fn on_retry(mut self, observer: impl Fn(&RetryNotice) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(observer));
        self
    }

    pub fn set_token(&mut self, token: &str) {
        self.token = token.to_owned();
    }

    /// Enlists with the enlistment token this client holds. Not retried after the region has
    /// answered: the enlistment token is single-use, so a repeat would only be refused.
    pub async fn enlist(&self, req: &EnlistRequest) -> Result<EnlistResponse, AgentError> {
        self.call(
            reqwest::Method::POST,
            "/enlist",
            Some(serde_json::to_value(req).map_err(AgentError::Malformed)?),
        )
        .await
    }

    pub async fn instructions(&self) -> Result<Instructions, AgentError> {
        self.call(reqwest::Method::GET, "/instructions", None).await
    }

    pub async fn report(&self, report: &Report) -> Result<ReportAck, AgentError> {
        self.call(
            reqwest::Method::POST,
            "/report",
            Some(serde_json::to_value(report).map_err(AgentError::Malformed)?),
        )
        .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, AgentError> {
        let url = format!("{}{path}", self.base);
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            let reason = match req.send().await {
                Ok(resp) if resp.status().is_server_error() && attempt < self.retry.attempts => {
                    format!("HTTP {}", resp.status().as_u16())
                }
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
                Err(e) if attempt >= self.retry.attempts => {
                    return Err(AgentError::Unreachable {
                        attempts: attempt,
                        source: e,
                    });
                }
                Err(e) => innermost(&e),
            };
            if let Some(observer) = &self.on_retry {
                observer(&RetryNotice {
                    path: path.to_owned(),
                    attempt,
                    attempts: self.retry.attempts,
                    wait: backoff,
                    reason,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
        }
    }
}

/// "outer: inner: innermost" (reqwest hides the useful part, e.g. "Connection refused", in
/// its sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The root cause alone ("Connection refused (os error 111)"), short enough for a retry line.
fn innermost(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(inner) = cur.source() {
        cur = inner;
    }
    cur.to_string()
}
