//! Table tests for the sans-IO Redfish core. Fixtures under `testdata/`: `sushy_*` were
//! captured from sushy-emulator 2.2.0 (`--fake`); `bmc_*` are hand-written in the shape the
//! DMTF schemas give for BMCs with sessions, ActionInfo and ETags.

use super::*;

const SUSHY_ROOT: &str = include_str!("../testdata/sushy_root.json");
const SUSHY_SYSTEMS: &str = include_str!("../testdata/sushy_systems.json");
const SUSHY_SYSTEM: &str = include_str!("../testdata/sushy_system.json");
const SUSHY_ERROR_404: &str = include_str!("../testdata/sushy_error_404.json");
const BMC_ROOT: &str = include_str!("../testdata/bmc_root_sessions.json");
const BMC_SYSTEM: &str = include_str!("../testdata/bmc_system_actioninfo.json");
const BMC_ACTION_INFO: &str = include_str!("../testdata/bmc_reset_actioninfo.json");
const BMC_ERROR: &str = include_str!("../testdata/bmc_error_extended.json");

const SUSHY_SYSTEM_PATH: &str = "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094";

fn ok(body: &str) -> Response {
    Response {
        status: 200,
        body: body.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn status(status: u16, body: &str) -> Response {
    Response {
        status,
        body: body.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn peer() -> Peer {
    Peer {
        address: "10.0.0.9".into(),
        user: "admin".into(),
    }
}

fn strs(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| (*s).to_owned()).collect()
}

/// The code of a `Bmc` error, for tables that only care which kind of failure it was.
fn bmc_code<T: fmt::Debug>(result: Result<T, PowerError>) -> String {
    match result {
        Err(PowerError::Bmc { code, .. }) => code,
        other => panic!("expected a Bmc error, got {other:?}"),
    }
}

#[test]
fn base_url_from_power_address() {
    fn check(address: &str, expected: Result<&str, &str>) {
        let got = base_url(address)
            .map(|u| u.to_string())
            .map_err(|e| e.to_string());
        match (&got, expected) {
            (Ok(url), Ok(want)) => assert_eq!(url, want, "{address:?}"),
            (Err(err), Err(want)) => assert!(err.contains(want), "{address:?}: {err}"),
            _ => panic!("{address:?}: got {got:?}, want {expected:?}"),
        }
    }
    check("10.0.0.5", Ok("https://10.0.0.5/"));
    check(" 10.0.0.5:8443 ", Ok("https://10.0.0.5:8443/"));
    check("bmc-12.example", Ok("https://bmc-12.example/"));
    check("http://127.0.0.1:8000", Ok("http://127.0.0.1:8000/"));
    check(
        "HTTPS://bmc.example/redfish/v1/",
        Ok("https://bmc.example/"),
    );
    check(
        "https://root:calvin@bmc.example",
        Ok("https://bmc.example/"),
    );
    check("[fd00::5]:443", Ok("https://[fd00::5]/"));
    check("fd00::5", Ok("https://[fd00::5]/"));
    check("", Err("power_address is required"));
    check("ftp://bmc", Err("scheme \"ftp\""));
    check("http://", Err("power_address is invalid"));
    check("bmc:notaport", Err("power_address is invalid"));
}

#[test]
fn service_root_discovery() {
    fn check(body: &str, expected: Result<(&str, Option<&str>), &str>) {
        let got = parse_service_root(&ok(body));
        match expected {
            Ok((systems, sessions)) => assert_eq!(
                got.unwrap(),
                ServiceRoot {
                    systems: systems.into(),
                    sessions: sessions.map(str::to_owned)
                }
            ),
            Err(code) => assert_eq!(bmc_code(got), code, "{body}"),
        }
    }
    // sushy: no Links and no SessionService → Basic auth.
    check(SUSHY_ROOT, Ok(("/redfish/v1/Systems", None)));
    check(
        BMC_ROOT,
        Ok((
            "/redfish/v1/Systems",
            Some("/redfish/v1/SessionService/Sessions"),
        )),
    );
    check(
        r#"{"Systems":{"@odata.id":"/rf/Systems"},"Links":{"Sessions":{"@odata.id":"/rf/S"}}}"#,
        Ok(("/rf/Systems", Some("/rf/S"))),
    );
    // SessionService without Links.Sessions: the spec's fixed URI.
    check(
        r#"{"Systems":{"@odata.id":"/redfish/v1/Systems"},"SessionService":{"@odata.id":"/redfish/v1/SessionService"}}"#,
        Ok((
            "/redfish/v1/Systems",
            Some("/redfish/v1/SessionService/Sessions"),
        )),
    );
    check(r#"{"Links":{}}"#, Err(INVALID_RESPONSE));
    check(r#"{"Systems":{"@odata.id":""}}"#, Err(INVALID_RESPONSE));
    check(
        r#"{"Systems":"/redfish/v1/Systems"}"#,
        Err(INVALID_RESPONSE),
    );
    check(
        "{\"Systems\": {\"@odata.id\": \"/redfish/v1/Sys",
        Err(INVALID_RESPONSE),
    );
    check("<html>Login</html>", Err(INVALID_RESPONSE));
    check("[]", Err(INVALID_RESPONSE));
    check("", Err(INVALID_RESPONSE));
}

#[test]
fn system_selection() {
    fn check(body: &str, node_id: Option<&str>, expected: Result<&str, &str>) {
        let got = pick_system(&ok(body), node_id);
        match expected {
            Ok(path) => assert_eq!(got.unwrap(), path),
            Err(want) => {
                let err = got.unwrap_err().to_string();
                assert!(err.contains(want), "{node_id:?}: {err}");
            }
        }
    }
    let two = r#"{"Members":[{"@odata.id":"/redfish/v1/Systems/1"},{"@odata.id":"/redfish/v1/Systems/2/"}]}"#;
    check(SUSHY_SYSTEMS, None, Ok(SUSHY_SYSTEM_PATH));
    check(
        SUSHY_SYSTEMS,
        Some("27946b59-9e44-4fa7-8e91-f3527a1ef094"),
        Ok(SUSHY_SYSTEM_PATH),
    );
    check(SUSHY_SYSTEMS, Some(" "), Ok(SUSHY_SYSTEM_PATH));
    check(
        SUSHY_SYSTEMS,
        Some("nope"),
        Err("no system \"nope\" (it has: 27946b59"),
    );
    check(two, Some("2"), Ok("/redfish/v1/Systems/2/"));
    check(two, Some("1"), Ok("/redfish/v1/Systems/1"));
    check(two, None, Err("has 2 systems (1, 2); set node_id"));
    check(
        r#"{"Members":[]}"#,
        None,
        Err("Systems collection is empty"),
    );
    check(
        r#"{"Members":[]}"#,
        Some("1"),
        Err("Systems collection is empty"),
    );
    check(r#"{"Name":"x"}"#, None, Err("no Members array"));
    check("{\"Members\": [", None, Err("not JSON"));
}

#[test]
fn system_parsing() {
    let sushy = parse_system(&ok(SUSHY_SYSTEM)).unwrap();
    assert_eq!(
        sushy,
        System {
            power_state: PowerState::Off,
            reset: Some(ResetAction {
                target: format!("{SUSHY_SYSTEM_PATH}/Actions/ComputerSystem.Reset"),
                allowed: Some(strs(&[
                    "On",
                    "ForceOff",
                    "GracefulShutdown",
                    "GracefulRestart",
                    "ForceRestart",
                    "Nmi",
                    "ForceOn"
                ])),
                action_info: None,
            }),
            boot_targets: Some(strs(&["Pxe", "Cd", "Hdd", "UefiHttp"])),
            boot_enabled_values: None,
            etag: None,
        }
    );

    let bmc = parse_system(&ok(BMC_SYSTEM)).unwrap();
    assert_eq!(
        bmc.power_state,
        PowerState::Off,
        "PoweringOn has not reached On yet"
    );
    assert_eq!(bmc.etag.as_deref(), Some("W/\"12345\""));
    assert_eq!(bmc.boot_enabled_values, Some(strs(&["Once", "Disabled"])));
    let reset = bmc.reset.unwrap();
    assert_eq!(reset.allowed, None);
    assert_eq!(
        reset.action_info.as_deref(),
        Some("/redfish/v1/Systems/System.Embedded.1/ResetActionInfo")
    );

    // The ETag header wins over the body's @odata.etag.
    let with_header = Response {
        etag: Some("\"abc\"".into()),
        ..ok(BMC_SYSTEM)
    };
    assert_eq!(
        parse_system(&with_header).unwrap().etag.as_deref(),
        Some("\"abc\"")
    );

    // Degenerate but valid: nothing advertised.
    let bare = parse_system(&ok(r#"{"Id":"1"}"#)).unwrap();
    assert_eq!(
        (bare.power_state, bare.reset, bare.boot_targets),
        (PowerState::Unknown, None, None)
    );
    let no_target = parse_system(&ok(r##"{"Actions":{"#ComputerSystem.Reset":{}}}"##)).unwrap();
    assert_eq!(no_target.reset, None);

    // Truncated and non-JSON answers are typed errors.
    assert_eq!(
        bmc_code(parse_system(&ok(&SUSHY_SYSTEM[..200]))),
        INVALID_RESPONSE
    );
    assert_eq!(
        bmc_code(parse_system(&ok("\u{0}\u{1}garbage"))),
        INVALID_RESPONSE
    );
    assert_eq!(bmc_code(parse_system(&ok("null"))), INVALID_RESPONSE);
}

#[test]
fn power_state_mapping() {
    fn check(redfish: Option<&str>, expected: PowerState) {
        assert_eq!(power_state(redfish), expected, "{redfish:?}");
    }
    check(Some("On"), PowerState::On);
    check(Some("Off"), PowerState::Off);
    check(Some("PoweringOn"), PowerState::Off);
    check(Some("PoweringOff"), PowerState::On);
    check(Some("Paused"), PowerState::On);
    check(Some("on"), PowerState::Unknown);
    check(None, PowerState::Unknown);
}

#[test]
fn action_info_parsing() {
    assert_eq!(
        parse_action_info(&ok(BMC_ACTION_INFO)).unwrap(),
        Some(strs(&["On", "ForceOff", "GracefulShutdown", "PowerCycle"]))
    );
    assert_eq!(
        parse_action_info(&ok(r#"{"Parameters":[]}"#)).unwrap(),
        None
    );
    assert_eq!(bmc_code(parse_action_info(&ok("{"))), INVALID_RESPONSE);
}

#[test]
fn reset_type_choice() {
    fn check(kind: ResetKind, allowed: Option<&[&str]>, expected: Result<&str, ()>) {
        let allowed = allowed.map(strs);
        let got = choose_reset_type(kind, allowed.as_deref());
        match expected {
            Ok(want) => assert_eq!(got.unwrap(), want, "{kind:?} {allowed:?}"),
            Err(()) => assert_eq!(
                got.unwrap_err(),
                PowerError::Unsupported {
                    operation: kind.operation()
                },
                "{kind:?} {allowed:?}"
            ),
        }
    }
    use ResetKind::*;
    let sushy: &[&str] = &[
        "On",
        "ForceOff",
        "GracefulShutdown",
        "GracefulRestart",
        "ForceRestart",
        "Nmi",
        "ForceOn",
    ];
    check(On, Some(sushy), Ok("On"));
    check(HardOff, Some(sushy), Ok("ForceOff"));
    check(SoftOff, Some(sushy), Ok("GracefulShutdown"));
    check(Cycle, Some(sushy), Ok("ForceRestart"));
    // Nothing advertised: the preferred type, and the BMC judges.
    check(On, None, Ok("On"));
    check(Cycle, None, Ok("ForceRestart"));
    // Fallbacks.
    check(On, Some(&["ForceOn", "ForceOff"]), Ok("ForceOn"));
    check(
        Cycle,
        Some(&["On", "ForceOff", "PowerCycle"]),
        Ok("PowerCycle"),
    );
    check(
        Cycle,
        Some(&["On", "GracefulRestart"]),
        Ok("GracefulRestart"),
    );
    // No fit.
    check(HardOff, Some(&["On", "GracefulShutdown"]), Err(()));
    check(SoftOff, Some(&["On", "ForceOff"]), Err(()));
    check(Cycle, Some(&["On", "ForceOff"]), Err(()));
    check(On, Some(&[]), Err(()));
}

#[test]
fn reset_is_skipped_when_already_there() {
    use ResetKind::*;
    for (kind, state, done) in [
        (On, PowerState::On, true),
        (On, PowerState::Off, false),
        (On, PowerState::Unknown, false),
        (HardOff, PowerState::Off, true),
        (SoftOff, PowerState::Off, true),
        (HardOff, PowerState::On, false),
        (Cycle, PowerState::On, false),
        (Cycle, PowerState::Off, false),
    ] {
        assert_eq!(kind.already_done(state), done, "{kind:?} in {state:?}");
    }
}

#[test]
fn reset_request_body() {
    let request = reset(
        "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
        "ForceOff",
    );
    assert_eq!(request.method, Method::Post);
    assert_eq!(
        request.path,
        "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
    );
    assert_eq!(request.body, Some(json!({"ResetType": "ForceOff"})));
    assert_eq!(request.if_match, None);
}

#[test]
fn boot_override_requests() {
    let sushy = parse_system(&ok(SUSHY_SYSTEM)).unwrap();
    let bmc = parse_system(&ok(BMC_SYSTEM)).unwrap();
    fn check(
        system: &System,
        device: BootDevice,
        persistence: BootPersistence,
        expected: Result<(Value, Option<&str>), &str>,
    ) {
        let got = boot_override("/redfish/v1/Systems/1", system, device, persistence);
        match expected {
            Ok((body, if_match)) => {
                let request = got.unwrap();
                assert_eq!(request.method, Method::Patch);
                assert_eq!(request.path, "/redfish/v1/Systems/1");
                assert_eq!(request.body, Some(body));
                assert_eq!(request.if_match.as_deref(), if_match);
            }
            Err(want) => assert_eq!(got.unwrap_err().to_string(), want),
        }
    }
    use BootDevice::*;
    use BootPersistence::*;
    let patch = |target: &str, enabled: &str| json!({"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}});
    check(&sushy, Pxe, Once, Ok((patch("Pxe", "Once"), None)));
    check(
        &sushy,
        Disk,
        Persistent,
        Ok((patch("Hdd", "Continuous"), None)),
    );
    check(
        &bmc,
        Pxe,
        Once,
        Ok((patch("Pxe", "Once"), Some("W/\"12345\""))),
    );
    check(
        &bmc,
        Disk,
        Persistent,
        Err("persistent boot override is not supported by this BMC"),
    );
    let no_pxe = System {
        boot_targets: Some(strs(&["Hdd", "Cd"])),
        ..sushy.clone()
    };
    check(
        &no_pxe,
        Pxe,
        Once,
        Err("boot override to Pxe is not supported by this BMC"),
    );
    let unadvertised = System {
        boot_targets: None,
        ..sushy.clone()
    };
    check(
        &unadvertised,
        Pxe,
        Persistent,
        Ok((patch("Pxe", "Continuous"), None)),
    );

    // The retry after 412/428 always carries If-Match: the ETag if known, else `*`.
    let retry = |system: &System| {
        boot_override_retry("/redfish/v1/Systems/1", system, Pxe, Once)
            .unwrap()
            .if_match
    };
    assert_eq!(retry(&sushy).as_deref(), Some("*"));
    assert_eq!(retry(&bmc).as_deref(), Some("W/\"12345\""));
}

#[test]
fn status_and_error_mapping() {
    fn check(resp: Response, expected: Result<(), PowerError>) {
        assert_eq!(expect_success(&resp, &peer()), expected, "{resp:?}");
    }
    let bmc = |code: &str, message: &str| {
        Err(PowerError::Bmc {
            code: code.into(),
            message: message.into(),
        })
    };
    let auth_failed = Err(PowerError::AuthFailed {
        user: "admin".into(),
    });
    check(status(200, ""), Ok(()));
    check(status(204, ""), Ok(()));
    check(status(202, "{}"), Ok(()));
    check(status(401, ""), auth_failed.clone());
    check(status(403, BMC_ERROR), auth_failed);
    check(
        status(404, SUSHY_ERROR_404),
        bmc("404", "Fake system nope was not found"),
    );
    check(
        status(400, BMC_ERROR),
        bmc(
            "400",
            "The value Floppy for the property BootSourceOverrideTarget is not in the list of \
             acceptable values.; Unable to complete the operation because the server is in a \
             transition state.",
        ),
    );
    // sushy answers some 400s in plain text.
    check(
        status(400, "PATCH only works for Boot and IndicatorLED elements"),
        bmc("400", "PATCH only works for Boot and IndicatorLED elements"),
    );
    check(status(500, ""), bmc("500", "HTTP 500"));
    check(status(503, "{\"error\": {}}"), bmc("503", "HTTP 503"));
    check(
        status(
            409,
            r#"{"error":{"message":"busy","@Message.ExtendedInfo":[{}]}}"#,
        ),
        bmc("409", "busy"),
    );
    check(status(502, "{\"error\""), bmc("502", "{\"error\""));
    let long = "x".repeat(1000);
    let Err(PowerError::Bmc { message, .. }) = expect_success(&status(500, &long), &peer()) else {
        panic!("expected a Bmc error");
    };
    assert_eq!(message.chars().count(), 301, "long bodies are cut");
}

#[test]
fn session_creation() {
    fn check(resp: Response, expected: Result<SessionOutcome, PowerError>) {
        assert_eq!(parse_session_created(&resp, &peer()), expected, "{resp:?}");
    }
    let created = |location: Option<&str>| {
        Ok(SessionOutcome::Created(Session {
            token: "tok".into(),
            location: location.map(str::to_owned),
        }))
    };
    let with =
        |status_code: u16, token: Option<&str>, location: Option<&str>, body: &str| Response {
            auth_token: token.map(str::to_owned),
            location: location.map(str::to_owned),
            ..status(status_code, body)
        };
    let s1 = "/redfish/v1/SessionService/Sessions/1";
    check(with(201, Some("tok"), Some(s1), "{}"), created(Some(s1)));
    check(
        with(
            200,
            Some("tok"),
            None,
            &format!(r#"{{"@odata.id":"{s1}"}}"#),
        ),
        created(Some(s1)),
    );
    check(with(201, Some("tok"), None, "not json"), created(None));
    check(
        with(201, None, Some(s1), "{}"),
        Ok(SessionOutcome::UseBasic),
    );
    check(
        with(201, Some(""), Some(s1), "{}"),
        Ok(SessionOutcome::UseBasic),
    );
    check(status(404, SUSHY_ERROR_404), Ok(SessionOutcome::UseBasic));
    check(status(405, ""), Ok(SessionOutcome::UseBasic));
    check(
        status(401, ""),
        Err(PowerError::AuthFailed {
            user: "admin".into(),
        }),
    );
    check(
        status(500, SUSHY_ERROR_404),
        Err(PowerError::Bmc {
            code: "500".into(),
            message: "Fake system nope was not found".into(),
        }),
    );
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let request = create_session("/redfish/v1/SessionService/Sessions", "admin", "hunter2");
    assert_eq!(
        request.body,
        Some(json!({"UserName": "admin", "Password": "hunter2"}))
    );
    assert!(!format!("{request:?}").contains("hunter2"));
    let resp = Response {
        auth_token: Some("s3cr3t-token".into()),
        ..status(201, "{}")
    };
    assert!(!format!("{resp:?}").contains("s3cr3t-token"));
    let session = Session {
        token: "s3cr3t-token".into(),
        location: None,
    };
    assert!(!format!("{session:?}").contains("s3cr3t-token"));
}

#[test]
fn truncated_and_mangled_bodies_never_panic() {
    let fixtures = [
        SUSHY_ROOT,
        SUSHY_SYSTEMS,
        SUSHY_SYSTEM,
        SUSHY_ERROR_404,
        BMC_ROOT,
        BMC_SYSTEM,
        BMC_ACTION_INFO,
        BMC_ERROR,
    ];
    for fixture in fixtures {
        let bytes = fixture.as_bytes();
        for cut in 0..bytes.len() {
            for body in [&bytes[..cut], &bytes[cut..]] {
                let resp = Response {
                    body: body.to_vec(),
                    ..status(200, "")
                };
                let _ = parse_service_root(&resp);
                let _ = pick_system(&resp, None);
                let _ = pick_system(&resp, Some("1"));
                let _ = parse_system(&resp);
                let _ = parse_action_info(&resp);
                let _ = parse_session_created(
                    &Response {
                        status: 201,
                        ..resp.clone()
                    },
                    &peer(),
                );
                let _ = expect_success(
                    &Response {
                        status: 500,
                        ..resp
                    },
                    &peer(),
                );
            }
        }
    }
    // Right types in the wrong places are typed errors or ignored, not panics.
    for body in [
        r#"{"Systems":{"@odata.id":5},"Links":{"Sessions":[]}}"#,
        r#"{"Members":[5,"x",{"@odata.id":null}]}"#,
        r##"{"PowerState":5,"Boot":[],"Actions":{"#ComputerSystem.Reset":{"target":5}}}"##,
        r#"{"error":{"@Message.ExtendedInfo":{"Message":"x"},"message":5}}"#,
    ] {
        let resp = ok(body);
        let _ = (
            parse_service_root(&resp),
            pick_system(&resp, None),
            parse_system(&resp),
        );
        let _ = expect_success(
            &Response {
                status: 500,
                ..resp
            },
            &peer(),
        );
    }
}
