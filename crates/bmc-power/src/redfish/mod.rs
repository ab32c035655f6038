//! Redfish power driver: a thin async shell over the sans-IO `proto` module, which decides
//! everything.
//!
//! Each driver call is one short conversation: GET the service root (unauthenticated, as the
//! spec allows), log in (a session when the service has one, else HTTP Basic), GET the Systems
//! collection and the chosen system, act, and log out. Nothing is cached between calls, so a
//! BMC reset or a firmware update between two calls cannot leave us with stale links.
//!
//! Sessions are always deleted, on error paths too, and even when the caller drops the future
//! (a timeout in the engine): BMCs allow only a handful of sessions and some never expire
//! them, which is how other provisioning systems ended up locked out of their BMCs.
//!
//! Tests: `proto` has table tests over captured and hand-written JSON; `tests/redfish_sessions.rs`
//! drives a mock BMC with sessions, ETags and faults; `tests/redfish_peers.rs` drives the real
//! sushy-emulator (`--fake`) over HTTP, TLS and Basic auth. The latter needs `python3` (with
//! venv), `openssl`, and sushy-tools 2.2.0 in the venv at `$INGOT_PY_VENV` or
//! `/var/cache/ingot-venv`, which the test creates with pip when it is missing.

mod proto;

use crate::{PowerDriver, PowerError};
use async_trait::async_trait;
use ingot_types::power::{BootDevice, BootPersistence, PowerParameters, PowerState};
use proto::{Method, Peer, Request, ResetKind, Response, ServiceRoot, SessionOutcome, System};
use reqwest::Url;
use reqwest::header::{ACCEPT, HeaderValue, IF_MATCH};
use std::time::Duration;

/// The longest one HTTP exchange with a BMC may take. BMCs are slow (seconds per request on
/// some), but a call that takes longer than this is stuck.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const AUTH_TOKEN: &str = "X-Auth-Token";

/// A Redfish BMC reached over HTTP(S).
pub struct RedfishDriver {
    http: reqwest::Client,
    base: Url,
    peer: Peer,
    /// `None`: the BMC needs no authentication (power_user unset).
    password: Option<String>,
    node_id: Option<String>,
    timeout: Duration,
}

/// What one driver call does once the system is known.
#[derive(Debug, Clone, Copy)]
enum Op {
    State,
    Reset(ResetKind),
    Boot(BootDevice, BootPersistence),
}

enum Auth {
    None,
    Basic,
    Session(SessionGuard),
}

impl RedfishDriver {
    pub fn new(params: &PowerParameters) -> Result<Self, PowerError> {
        Self::with_timeout(params, DEFAULT_TIMEOUT)
    }

    pub fn with_timeout(params: &PowerParameters, timeout: Duration) -> Result<Self, PowerError> {
        let address = params
            .power_address
            .clone()
            .ok_or(PowerError::MissingParameter {
                field: "power_address",
            })?;
        let base = proto::base_url(&address)?;
        let user = params.power_user.clone().filter(|u| !u.is_empty());
        let password = user
            .as_ref()
            .map(|_| params.power_pass.clone().unwrap_or_default());
        // BMCs ship self-signed certificates; verifying is opt-in, as in MAAS.
        let verify = params.power_verify_ssl == Some(true);
        Ok(Self {
            http: http_client(verify)?,
            base,
            peer: Peer {
                address,
                user: user.unwrap_or_default(),
            },
            password,
            node_id: params.node_id.clone().filter(|n| !n.trim().is_empty()),
            timeout,
        })
    }

    async fn run(&self, op: Op) -> Result<Option<PowerState>, PowerError> {
        let root = self.discover().await?;
        let auth = self.login(&root).await?;
        let result = self.execute(&auth, &root, op).await;
        if let Auth::Session(guard) = auth {
            guard.close().await;
        }
        result
    }

    async fn discover(&self) -> Result<ServiceRoot, PowerError> {
        let request = Request::get(proto::SERVICE_ROOT);
        let mut resp = self.send(&Auth::None, &request).await?;
        // The root is meant to be public, but some BMCs guard it too.
        if resp.status == 401 && self.password.is_some() {
            resp = self.send(&Auth::Basic, &request).await?;
        }
        proto::expect_success(&resp, &self.peer)?;
        proto::parse_service_root(&resp)
    }

    async fn login(&self, root: &ServiceRoot) -> Result<Auth, PowerError> {
        let Some(password) = &self.password else {
            return Ok(Auth::None);
        };
        let Some(sessions) = &root.sessions else {
            return Ok(Auth::Basic);
        };
        let request = proto::create_session(sessions, &self.peer.user, password);
        let resp = self.send(&Auth::None, &request).await?;
        Ok(match proto::parse_session_created(&resp, &self.peer)? {
            SessionOutcome::UseBasic => {
                tracing::debug!(address = %self.peer.address, "no usable Redfish session service, using Basic auth");
                Auth::Basic
            }
            SessionOutcome::Created(session) => Auth::Session(SessionGuard {
                http: self.http.clone(),
                url: session
                    .location
                    .as_deref()
                    .and_then(|l| self.resolve(l).ok()),
                token: Some(session.token),
                timeout: self.timeout,
            }),
        })
    }

    async fn execute(
        &self,
        auth: &Auth,
        root: &ServiceRoot,
        op: Op,
    ) -> Result<Option<PowerState>, PowerError> {
        let systems = self.get(auth, &root.systems).await?;
        let system_path = proto::pick_system(&systems, self.node_id.as_deref())?;
        let system = proto::parse_system(&self.get(auth, &system_path).await?)?;
        match op {
            Op::State => Ok(Some(system.power_state)),
            Op::Reset(kind) => self.reset(auth, &system, kind).await.map(|()| None),
            Op::Boot(device, persistence) => self
                .boot(auth, &system_path, &system, device, persistence)
                .await
                .map(|()| None),
        }
    }

    async fn reset(&self, auth: &Auth, system: &System, kind: ResetKind) -> Result<(), PowerError> {
        let action = system.reset.as_ref().ok_or(PowerError::Unsupported {
            operation: "ComputerSystem.Reset (the system advertises no Reset action)",
        })?;
        // Cycling a machine that is off means starting it: many BMCs refuse or ignore a
        // restart of a powered-off system.
        let kind = match (kind, system.power_state) {
            (ResetKind::Cycle, PowerState::Off) => ResetKind::On,
            (kind, _) => kind,
        };
        if kind.already_done(system.power_state) {
            return Ok(());
        }
        let allowed = match (&action.allowed, &action.action_info) {
            (Some(allowed), _) => Some(allowed.clone()),
            // The ActionInfo only narrows the choice; if the BMC cannot serve it, try the
            // preferred ResetType and let the BMC judge.
            (None, Some(info)) => match self.get(auth, info).await {
                Ok(resp) => proto::parse_action_info(&resp).unwrap_or(None),
                Err(PowerError::Bmc { .. }) => None,
                Err(other) => return Err(other),
            },
            (None, None) => None,
        };
        let reset_type = proto::choose_reset_type(kind, allowed.as_deref())?;
        tracing::debug!(address = %self.peer.address, reset_type, "Redfish reset");
        let resp = self
            .send(auth, &proto::reset(&action.target, reset_type))
            .await?;
        proto::expect_success(&resp, &self.peer)
    }

    async fn boot(
        &self,
        auth: &Auth,
        system_path: &str,
        system: &System,
        device: BootDevice,
        persistence: BootPersistence,
    ) -> Result<(), PowerError> {
        let request = proto::boot_override(system_path, system, device, persistence)?;
        let resp = self.send(auth, &request).await?;
        if !matches!(resp.status, 412 | 428) {
            return proto::expect_success(&resp, &self.peer);
        }
        // Precondition failed/required: the ETag we sent is stale (or the BMC wants one we
        // did not have). Re-read once and retry; a second refusal is the BMC's answer.
        let fresh = proto::parse_system(&self.get(auth, system_path).await?)?;
        let request = proto::boot_override_retry(system_path, &fresh, device, persistence)?;
        let resp = self.send(auth, &request).await?;
        proto::expect_success(&resp, &self.peer)
    }

    /// GET that must succeed.
    async fn get(&self, auth: &Auth, path: &str) -> Result<Response, PowerError> {
        let resp = self.send(auth, &Request::get(path)).await?;
        proto::expect_success(&resp, &self.peer)?;
        Ok(resp)
    }

    /// Links are followed by path only, on the BMC we were configured with: a BMC that
    /// names itself differently (or a hostile one) cannot send our credentials elsewhere.
    fn resolve(&self, link: &str) -> Result<Url, PowerError> {
        let path = match Url::parse(link) {
            Ok(absolute) => match absolute.query() {
                Some(query) => format!("{}?{query}", absolute.path()),
                None => absolute.path().to_owned(),
            },
            Err(_) => link.to_owned(),
        };
        self.base.join(&path).map_err(|e| PowerError::Bmc {
            code: proto::INVALID_RESPONSE.into(),
            message: format!("unusable link {link:?}: {e}"),
        })
    }

    async fn send(&self, auth: &Auth, request: &Request) -> Result<Response, PowerError> {
        let url = self.resolve(&request.path)?;
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Patch => reqwest::Method::PATCH,
        };
        let mut builder = self
            .http
            .request(method, url)
            .timeout(self.timeout)
            .header(ACCEPT, "application/json");
        builder = match auth {
            Auth::None => builder,
            Auth::Basic => builder.basic_auth(&self.peer.user, self.password.as_ref()),
            Auth::Session(guard) => match guard.header() {
                Some(token) => builder.header(AUTH_TOKEN, token),
                None => builder,
            },
        };
        if let Some(tag) = &request.if_match {
            builder = builder.header(IF_MATCH, tag);
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let resp = builder.send().await.map_err(|e| self.transport_error(e))?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (status, etag, location, auth_token) = (
            resp.status().as_u16(),
            header("etag"),
            header("location"),
            header(AUTH_TOKEN),
        );
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?
            .to_vec();
        tracing::debug!(
            address = %self.peer.address,
            method = request.method.as_str(),
            path = %request.path,
            status,
            "Redfish exchange"
        );
        Ok(Response {
            status,
            etag,
            location,
            auth_token,
            body,
        })
    }

    fn transport_error(&self, err: reqwest::Error) -> PowerError {
        let address = self.peer.address.clone();
        if err.is_timeout() {
            return PowerError::Timeout {
                address,
                after: self.timeout,
            };
        }
        let chain = error_chain(&err);
        let detail = if chain.contains("certificate") {
            format!(
                "TLS certificate rejected ({chain}); power_verify_ssl is true, set it to false \
                 to accept the BMC's self-signed certificate"
            )
        } else {
            chain
        };
        PowerError::Unreachable { address, detail }
    }
}

/// `outer: inner: innermost`, without repeating a message its source already says.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = inner.source();
    }
    parts.join(": ")
}

/// One client per driver: its pool keeps the connection open across the few requests of a
/// call. Not shared process-wide on purpose: pooled connections belong to the tokio runtime
/// that opened them, and a client shared across runtimes (tests, `block_on` callers) hands out
/// connections whose runtime is gone.
fn http_client(verify: bool) -> Result<reqwest::Client, PowerError> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(!verify)
        // Loading the system's trust store is wasted work when nothing is verified.
        .tls_built_in_root_certs(verify)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(same_host_redirects())
        .user_agent(concat!("ingot-bmc-power/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| PowerError::Unreachable {
            address: String::new(),
            detail: format!("cannot set up the HTTP client: {}", error_chain(&e)),
        })
}

/// Redirects are followed only on the same host: reqwest strips `Authorization` when a
/// redirect leaves the origin, but not our `X-Auth-Token`.
fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_host = attempt.previous().first().map(|first| first.host_str())
            == Some(attempt.url().host_str());
        if attempt.previous().len() > 5 || !same_host {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

/// A live session. [`SessionGuard::close`] deletes it; if the call's future is dropped before
/// that (the caller timed out), `Drop` deletes it from a spawned task instead.
struct SessionGuard {
    http: reqwest::Client,
    /// The session's URI; `None` if the BMC did not say (nothing to delete then).
    url: Option<Url>,
    token: Option<String>,
    timeout: Duration,
}

impl SessionGuard {
    fn header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(self.token.as_deref()?).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    async fn close(mut self) {
        if let Some((request, url)) = self.logout_request() {
            logout(request, url).await;
        }
    }

    fn logout_request(&mut self) -> Option<(reqwest::RequestBuilder, Url)> {
        let token = self.token.take()?;
        let url = self.url.take()?;
        let mut value = HeaderValue::from_str(&token).ok()?;
        value.set_sensitive(true);
        let request = self
            .http
            .delete(url.clone())
            .timeout(self.timeout)
            .header(AUTH_TOKEN, value);
        Some((request, url))
    }
}

async fn logout(request: reqwest::RequestBuilder, url: Url) {
    match request.send().await {
        Ok(resp) if resp.status().is_success() || resp.status().as_u16() == 404 => {
            tracing::debug!(session = %url.path(), "Redfish session deleted");
        }
        Ok(resp) => {
            tracing::warn!(session = %url.path(), status = resp.status().as_u16(), "Redfish session logout refused");
        }
        Err(e) => {
            tracing::warn!(session = %url.path(), error = %error_chain(&e), "Redfish session logout failed");
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some((request, url)) = self.logout_request() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(logout(request, url));
                }
                Err(_) => {
                    tracing::warn!(session = %url.path(), "Redfish session left open: no runtime to delete it");
                }
            }
        }
    }
}

#[async_trait]
impl PowerDriver for RedfishDriver {
    async fn power_on(&self) -> Result<(), PowerError> {
        self.run(Op::Reset(ResetKind::On)).await.map(drop)
    }

    async fn power_off(&self) -> Result<(), PowerError> {
        self.run(Op::Reset(ResetKind::HardOff)).await.map(drop)
    }

    async fn soft_off(&self) -> Result<(), PowerError> {
        self.run(Op::Reset(ResetKind::SoftOff)).await.map(drop)
    }

    async fn power_cycle(&self) -> Result<(), PowerError> {
        self.run(Op::Reset(ResetKind::Cycle)).await.map(drop)
    }

    async fn power_state(&self) -> Result<PowerState, PowerError> {
        Ok(self.run(Op::State).await?.unwrap_or(PowerState::Unknown))
    }

    async fn set_boot_device(
        &self,
        device: BootDevice,
        persistence: BootPersistence,
    ) -> Result<(), PowerError> {
        self.run(Op::Boot(device, persistence)).await.map(drop)
    }
}
