//! The Redfish driver against an in-process mock BMC that has what sushy-emulator lacks: a
//! session service, ETags with `If-Match`, an ActionInfo for ResetType, and failure modes.
//! The point is the session lifecycle: every driver call logs out, on error paths and when the
//! caller drops the call half-way, so a BMC's small session table never fills up.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bmc_power::redfish::RedfishDriver;
use bmc_power::{PowerDriver, PowerError};
use ingot_types::power::{BootDevice, BootPersistence, PowerParameters, PowerState};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const USER: &str = "admin";
const PASSWORD: &str = "secret";
/// `Basic base64("admin:secret")`.
const BASIC: &str = "Basic YWRtaW46c2VjcmV0";
const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";
const SYSTEM: &str = "/redfish/v1/Systems/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionService {
    Works,
    /// Advertised, but POST answers this status.
    Refuses(u16),
    /// Not in the service root at all.
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthUsed {
    Basic,
    Token,
}

struct Bmc {
    session_service: SessionService,
    sessions: HashMap<String, u32>,
    next_session: u32,
    created: u32,
    deleted: u32,
    power: &'static str,
    boot: (String, String),
    etag: u32,
    /// Change the ETag right after the next GET of the system, as if someone else wrote.
    stale_etag_once: bool,
    reset_fails: bool,
    reset_delay: Duration,
    garbage_system: bool,
    /// Require If-Match on PATCH but publish no ETag (accepts `*`).
    hidden_etag: bool,
    /// Answer GET Systems with a redirect to this URL.
    redirect_systems: Option<String>,
    resets: Vec<String>,
    if_match_seen: Vec<Option<String>>,
    /// (method, path, auth) of every request after the service root.
    log: Vec<(String, String, AuthUsed)>,
}

type Shared = Arc<Mutex<Bmc>>;

impl Bmc {
    fn new(session_service: SessionService) -> Self {
        Self {
            session_service,
            sessions: HashMap::new(),
            next_session: 1,
            created: 0,
            deleted: 0,
            power: "Off",
            boot: ("None".into(), "Disabled".into()),
            etag: 1,
            stale_etag_once: false,
            reset_fails: false,
            reset_delay: Duration::ZERO,
            garbage_system: false,
            hidden_etag: false,
            redirect_systems: None,
            resets: Vec::new(),
            if_match_seen: Vec::new(),
            log: Vec::new(),
        }
    }

    fn auth(&self, headers: &HeaderMap) -> Option<AuthUsed> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match (header("x-auth-token"), header("authorization")) {
            (Some(token), _) => self.sessions.contains_key(token).then_some(AuthUsed::Token),
            (None, Some(basic)) => (basic == BASIC).then_some(AuthUsed::Basic),
            (None, None) => None,
        }
    }
}

fn redfish_error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {
        "code": "Base.1.8.GeneralError",
        "message": "A general error has occurred.",
        "@Message.ExtendedInfo": [{"MessageId": "Mock.1.0.Failed", "Message": message}]
    }});
    (status, axum::Json(body)).into_response()
}

async fn handle(
    State(bmc): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if method == Method::GET && path == "/redfish/v1/" {
        let service = bmc.lock().unwrap().session_service;
        let mut root = json!({"Id": "Mock", "Systems": {"@odata.id": "/redfish/v1/Systems"}});
        if service != SessionService::Absent {
            root["SessionService"] = json!({"@odata.id": "/redfish/v1/SessionService"});
            root["Links"] = json!({"Sessions": {"@odata.id": SESSIONS}});
        }
        return axum::Json(root).into_response();
    }
    if method == Method::POST && path == SESSIONS {
        let mut state = bmc.lock().unwrap();
        if let SessionService::Refuses(code) = state.session_service {
            return redfish_error(StatusCode::from_u16(code).unwrap(), "no sessions here");
        }
        if body["UserName"] != USER || body["Password"] != PASSWORD {
            return redfish_error(StatusCode::UNAUTHORIZED, "bad credentials");
        }
        let id = state.next_session;
        state.next_session += 1;
        state.created += 1;
        let token = format!("token-{id}");
        state.sessions.insert(token.clone(), id);
        let location = format!("{SESSIONS}/{id}");
        let headers = [("X-Auth-Token", token), ("Location", location.clone())];
        return (
            StatusCode::CREATED,
            headers,
            axum::Json(json!({"@odata.id": location})),
        )
            .into_response();
    }

    let reset_delay = {
        let mut state = bmc.lock().unwrap();
        let Some(auth) = state.auth(&headers) else {
            return redfish_error(StatusCode::UNAUTHORIZED, "authentication required");
        };
        state.log.push((method.to_string(), path.clone(), auth));
        state.reset_delay
    };
    if method == Method::POST && path.ends_with("/ComputerSystem.Reset") {
        // Outside the lock: a slow BMC, for the cancellation test.
        tokio::time::sleep(reset_delay).await;
    }

    let mut state = bmc.lock().unwrap();
    match (method.as_str(), path.as_str()) {
        ("DELETE", p) if p.starts_with(SESSIONS) => {
            let token = headers
                .get("x-auth-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            match state.sessions.get(token) {
                Some(id) if p == format!("{SESSIONS}/{id}") => {
                    state.sessions.remove(token);
                    state.deleted += 1;
                    StatusCode::NO_CONTENT.into_response()
                }
                _ => redfish_error(StatusCode::FORBIDDEN, "not your session"),
            }
        }
        ("GET", "/redfish/v1/Systems") if state.redirect_systems.is_some() => {
            let location = state.redirect_systems.clone().unwrap();
            (StatusCode::TEMPORARY_REDIRECT, [("Location", location)]).into_response()
        }
        ("GET", "/redfish/v1/Systems" | "/redfish/v1/Systems/") => axum::Json(json!({
            "Members": [{"@odata.id": SYSTEM}],
            "Members@odata.count": 1
        }))
        .into_response(),
        ("GET", SYSTEM) => {
            if state.garbage_system {
                return (StatusCode::OK, "{\"PowerState\": \"On\", \"Boot\": {").into_response();
            }
            let etag = format!("\"{}\"", state.etag);
            if std::mem::take(&mut state.stale_etag_once) {
                state.etag += 1;
            }
            let system = json!({
                "@odata.id": SYSTEM,
                "Id": "1",
                "PowerState": state.power,
                "Boot": {
                    "BootSourceOverrideTarget": state.boot.0,
                    "BootSourceOverrideEnabled": state.boot.1,
                    "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd"],
                },
                "Actions": {"#ComputerSystem.Reset": {
                    "target": format!("{SYSTEM}/Actions/ComputerSystem.Reset"),
                    "@Redfish.ActionInfo": format!("{SYSTEM}/ResetActionInfo"),
                }},
            });
            if state.hidden_etag {
                return axum::Json(system).into_response();
            }
            ([("ETag", etag)], axum::Json(system)).into_response()
        }
        ("GET", "/redfish/v1/Systems/1/ResetActionInfo") => axum::Json(json!({
            "Parameters": [{
                "Name": "ResetType",
                "AllowableValues": ["On", "ForceOff", "GracefulShutdown", "PowerCycle"],
            }]
        }))
        .into_response(),
        ("POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset") => {
            if state.reset_fails {
                return redfish_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The BMC is busy updating firmware.",
                );
            }
            let reset_type = body["ResetType"].as_str().unwrap_or_default().to_owned();
            state.power = match reset_type.as_str() {
                "On" | "PowerCycle" => "On",
                "ForceOff" | "GracefulShutdown" => "Off",
                _ => return redfish_error(StatusCode::BAD_REQUEST, "unknown ResetType"),
            };
            state.resets.push(reset_type);
            StatusCode::NO_CONTENT.into_response()
        }
        ("PATCH", SYSTEM) => {
            let if_match = headers
                .get("if-match")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            state.if_match_seen.push(if_match.clone());
            let current = format!("\"{}\"", state.etag);
            let accepted = match if_match.as_deref() {
                Some("*") => state.hidden_etag,
                Some(tag) => tag == current,
                None => false,
            };
            if !accepted {
                return redfish_error(StatusCode::PRECONDITION_FAILED, "ETag mismatch");
            }
            let boot = &body["Boot"];
            state.boot = (
                boot["BootSourceOverrideTarget"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                boot["BootSourceOverrideEnabled"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            state.etag += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        _ => redfish_error(StatusCode::NOT_FOUND, "no such resource"),
    }
}

async fn start(session_service: SessionService) -> (Shared, String) {
    start_on("127.0.0.1", session_service).await
}

async fn start_on(ip: &str, session_service: SessionService) -> (Shared, String) {
    let bmc = Arc::new(Mutex::new(Bmc::new(session_service)));
    let app = Router::new().fallback(handle).with_state(bmc.clone());
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (bmc, address)
}

fn params(address: &str, password: &str) -> PowerParameters {
    PowerParameters {
        power_address: Some(address.into()),
        power_user: Some(USER.into()),
        power_pass: Some(password.into()),
        ..Default::default()
    }
}

fn driver(address: &str) -> RedfishDriver {
    RedfishDriver::new(&params(address, PASSWORD)).unwrap()
}

/// Live sessions, created, deleted.
fn sessions(bmc: &Shared) -> (usize, u32, u32) {
    let state = bmc.lock().unwrap();
    (state.sessions.len(), state.created, state.deleted)
}

#[tokio::test]
async fn every_call_logs_in_with_a_session_and_logs_out() {
    let (bmc, address) = start(SessionService::Works).await;
    let d = driver(&address);
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    d.set_boot_device(BootDevice::Pxe, BootPersistence::Once)
        .await
        .unwrap();
    d.power_on().await.unwrap();
    assert_eq!(d.power_state().await.unwrap(), PowerState::On);
    d.power_cycle().await.unwrap();
    d.soft_off().await.unwrap();
    d.power_on().await.unwrap();
    d.power_off().await.unwrap();
    assert_eq!(
        sessions(&bmc),
        (0, 8, 8),
        "one session per call, all deleted"
    );

    let state = bmc.lock().unwrap();
    assert!(
        state
            .log
            .iter()
            .all(|(_, _, auth)| *auth == AuthUsed::Token),
        "no Basic auth when sessions work: {:?}",
        state.log
    );
    // Cycle on a machine that is on: PowerCycle, the only cycle type the ActionInfo allows.
    assert_eq!(
        state.resets,
        ["On", "PowerCycle", "GracefulShutdown", "On", "ForceOff"]
    );
    assert_eq!(state.boot, ("Pxe".to_owned(), "Once".to_owned()));
    assert_eq!(state.if_match_seen, [Some("\"1\"".to_owned())]);
}

#[tokio::test]
async fn no_reset_is_sent_when_the_system_is_already_there() {
    let (bmc, address) = start(SessionService::Works).await;
    let d = driver(&address);
    d.power_off().await.unwrap();
    d.soft_off().await.unwrap();
    // Cycling an off machine starts it.
    d.power_cycle().await.unwrap();
    d.power_on().await.unwrap();
    assert_eq!(bmc.lock().unwrap().resets, ["On"]);
    assert_eq!(sessions(&bmc), (0, 4, 4));
}

#[tokio::test]
async fn wrong_password_is_auth_failed_and_creates_nothing() {
    let (bmc, address) = start(SessionService::Works).await;
    let d = RedfishDriver::new(&params(&address, "wrong")).unwrap();
    assert_eq!(
        d.power_on().await,
        Err(PowerError::AuthFailed { user: USER.into() })
    );
    assert_eq!(sessions(&bmc), (0, 0, 0));
    assert!(bmc.lock().unwrap().resets.is_empty());
}

#[tokio::test]
async fn bmc_errors_still_log_out() {
    let (bmc, address) = start(SessionService::Works).await;
    bmc.lock().unwrap().reset_fails = true;
    let d = driver(&address);
    assert_eq!(
        d.power_on().await,
        Err(PowerError::Bmc {
            code: "500".into(),
            message: "The BMC is busy updating firmware.".into()
        })
    );
    bmc.lock().unwrap().garbage_system = true;
    let err = d.power_state().await.unwrap_err();
    assert!(
        matches!(&err, PowerError::Bmc { code, message }
            if code == "invalid-response" && message.contains("not JSON")),
        "{err:?}"
    );
    let bad_node = RedfishDriver::new(&PowerParameters {
        node_id: Some("7".into()),
        ..params(&address, PASSWORD)
    })
    .unwrap();
    assert!(matches!(
        bad_node.power_state().await,
        Err(PowerError::InvalidParameter {
            field: "node_id",
            ..
        })
    ));
    assert_eq!(sessions(&bmc), (0, 3, 3));
}

#[tokio::test]
async fn a_dropped_call_still_deletes_its_session() {
    let (bmc, address) = start(SessionService::Works).await;
    bmc.lock().unwrap().reset_delay = Duration::from_secs(3);
    let d = driver(&address);
    let cut = tokio::time::timeout(Duration::from_millis(300), d.power_on()).await;
    assert!(
        cut.is_err(),
        "the call should still be waiting for the slow BMC"
    );
    // The guard's Drop spawned the logout; wait for it (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sessions(&bmc).0 != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sessions(&bmc), (0, 1, 1));
}

#[tokio::test]
async fn stale_etag_is_re_read_once() {
    let (bmc, address) = start(SessionService::Works).await;
    bmc.lock().unwrap().stale_etag_once = true;
    let d = driver(&address);
    d.set_boot_device(BootDevice::Disk, BootPersistence::Persistent)
        .await
        .unwrap();
    let state = bmc.lock().unwrap();
    assert_eq!(state.boot, ("Hdd".to_owned(), "Continuous".to_owned()));
    assert_eq!(
        state.if_match_seen,
        [Some("\"1\"".to_owned()), Some("\"2\"".to_owned())]
    );
    assert_eq!(
        (state.sessions.len(), state.created, state.deleted),
        (0, 1, 1)
    );
}

#[tokio::test]
async fn if_match_star_when_the_bmc_hides_its_etag() {
    let (bmc, address) = start(SessionService::Works).await;
    bmc.lock().unwrap().hidden_etag = true;
    driver(&address)
        .set_boot_device(BootDevice::Pxe, BootPersistence::Once)
        .await
        .unwrap();
    let state = bmc.lock().unwrap();
    assert_eq!(state.boot, ("Pxe".to_owned(), "Once".to_owned()));
    assert_eq!(state.if_match_seen, [None, Some("*".to_owned())]);
    assert_eq!(
        (state.sessions.len(), state.created, state.deleted),
        (0, 1, 1)
    );
}

#[tokio::test]
async fn basic_auth_when_sessions_are_unavailable() {
    for service in [
        SessionService::Refuses(404),
        SessionService::Refuses(405),
        SessionService::Absent,
    ] {
        let (bmc, address) = start(service).await;
        let d = driver(&address);
        d.power_on().await.unwrap();
        assert_eq!(
            d.power_state().await.unwrap(),
            PowerState::On,
            "{service:?}"
        );
        let state = bmc.lock().unwrap();
        assert_eq!(state.created, 0);
        assert!(
            state
                .log
                .iter()
                .all(|(_, _, auth)| *auth == AuthUsed::Basic),
            "{service:?}: {:?}",
            state.log
        );
    }
    // Basic with a wrong password is refused like a session would be.
    let (_, address) = start(SessionService::Absent).await;
    let d = RedfishDriver::new(&params(&address, "wrong")).unwrap();
    assert_eq!(
        d.power_state().await,
        Err(PowerError::AuthFailed { user: USER.into() })
    );
}

#[tokio::test]
async fn session_service_errors_other_than_404_405_are_reported() {
    let (_, address) = start(SessionService::Refuses(503)).await;
    let err = driver(&address).power_state().await.unwrap_err();
    assert_eq!(
        err,
        PowerError::Bmc {
            code: "503".into(),
            message: "no sessions here".into()
        }
    );
}

#[tokio::test]
async fn silent_peer_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let d = RedfishDriver::with_timeout(&params(&address, PASSWORD), Duration::from_millis(300))
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        d.power_state().await,
        Err(PowerError::Timeout {
            address: address.clone(),
            after: Duration::from_millis(300)
        })
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    hold.abort();
}

#[tokio::test]
async fn closed_port_is_unreachable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let address = format!("http://127.0.0.1:{port}");
    let err = driver(&address).power_on().await.unwrap_err();
    assert!(
        matches!(&err, PowerError::Unreachable { address: a, detail }
            if *a == address && detail.contains("refused")),
        "{err:?}"
    );
}

#[tokio::test]
async fn parameters_are_checked_up_front() {
    let missing = RedfishDriver::new(&PowerParameters::default()).err();
    assert_eq!(
        missing,
        Some(PowerError::MissingParameter {
            field: "power_address"
        })
    );
    let bad = RedfishDriver::new(&params("gopher://bmc", PASSWORD)).err();
    assert!(matches!(
        bad,
        Some(PowerError::InvalidParameter {
            field: "power_address",
            ..
        })
    ));
}

#[tokio::test]
async fn redirects_to_another_host_are_not_followed() {
    let (bmc, address) = start(SessionService::Works).await;
    let (elsewhere, other) = start_on("127.0.0.2", SessionService::Works).await;
    // Another host (127.0.0.2): the token must not go there.
    bmc.lock().unwrap().redirect_systems = Some(format!("{other}/redfish/v1/Systems"));
    let err = driver(&address).power_state().await.unwrap_err();
    assert!(
        matches!(&err, PowerError::Bmc { code, .. } if code == "307"),
        "{err:?}"
    );
    assert!(
        elsewhere.lock().unwrap().log.is_empty(),
        "nothing reached the other host"
    );
    assert_eq!(sessions(&bmc), (0, 1, 1));

    // On the same host a redirect is followed, with the session token.
    bmc.lock().unwrap().redirect_systems = Some(format!("{address}/redfish/v1/Systems/"));
    assert_eq!(
        driver(&address).power_state().await.unwrap(),
        PowerState::Off
    );
    assert_eq!(sessions(&bmc), (0, 2, 2));
}
