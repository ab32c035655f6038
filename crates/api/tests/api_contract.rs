//! Authentication, bad input, visibility and the OpenAPI document.

mod common;
use common::{Options, region};
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[tokio::test]
async fn auth_is_required_everywhere_but_healthz() {
    let r = region(Options::default()).await.unwrap();
    let (st, v) = r.call(None, Method::GET, "/healthz", None).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let wrong_secret = {
        let mut parts: Vec<&str> = r.admin_key.split(':').collect();
        parts[2] = "x";
        parts.join(":")
    };
    for key in [
        None,
        Some("garbage"),
        Some("a:b"),
        Some("a:b:c"),
        Some(wrong_secret.as_str()),
    ] {
        for path in [
            "/api/v1/machines",
            "/api/v1/openapi.json",
            "/api/v1/discoveries",
            "/agent/v1/instructions",
        ] {
            let (st, v) = r.call(key, Method::GET, path, None).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{path} with {key:?}");
            assert_eq!(v["error"]["code"], "unauthorized");
        }
    }
    let resp = r
        .http
        .get(format!("{}/api/v1/machines", r.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    // A user's API key is not an agent token.
    let (st, _) = r
        .call(
            Some(&r.admin_key),
            Method::GET,
            "/agent/v1/instructions",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

/// (method, path, body, expected status, field named in the error)
type Case<'a> = (Method, String, Option<&'a str>, StatusCode, Option<&'a str>);

#[tokio::test]
async fn bad_input_names_the_field_and_changes_nothing() {
    let r = region(Options::default()).await.unwrap();
    let k = r.admin_key.clone();
    let id = r.machine_ids().await[0].clone();
    let before = r.get("/api/v1/machines").await;
    let cases: &[Case] = &[
        (
            Method::POST,
            "/api/v1/machines".into(),
            Some(r#"{"hostname":"ok","mac_addresses":["nope"]}"#),
            StatusCode::BAD_REQUEST,
            Some("mac_addresses[0]"),
        ),
        (
            Method::POST,
            "/api/v1/machines".into(),
            Some(r#"{"hostname":"bad host!"}"#),
            StatusCode::BAD_REQUEST,
            Some("hostname"),
        ),
        (
            Method::POST,
            "/api/v1/machines".into(),
            Some(r#"{"hostname":"x","colour":"red"}"#),
            StatusCode::BAD_REQUEST,
            Some("colour"),
        ),
        (
            Method::POST,
            "/api/v1/machines".into(),
            Some(r#"{"power_type":"telepathy"}"#),
            StatusCode::BAD_REQUEST,
            Some("power_type"),
        ),
        (
            Method::POST,
            "/api/v1/machines".into(),
            Some(r#"{"hostname": 5}"#),
            StatusCode::BAD_REQUEST,
            Some("hostname"),
        ),
        (
            Method::POST,
            "/api/v1/machines".into(),
            Some("{not json"),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::POST,
            "/api/v1/machines".into(),
            Some(r#"{"hostname":"sim-0001"}"#),
            StatusCode::CONFLICT,
            None,
        ),
        (
            Method::GET,
            "/api/v1/machines?status=sleepy".into(),
            None,
            StatusCode::BAD_REQUEST,
            Some("status"),
        ),
        (
            Method::GET,
            "/api/v1/machines?limit=-4".into(),
            None,
            StatusCode::BAD_REQUEST,
            Some("limit"),
        ),
        (
            Method::GET,
            "/api/v1/machines?mac=zz".into(),
            None,
            StatusCode::BAD_REQUEST,
            Some("mac"),
        ),
        (
            Method::GET,
            "/api/v1/machines?colour=red".into(),
            None,
            StatusCode::BAD_REQUEST,
            Some("colour"),
        ),
        (
            Method::GET,
            "/api/v1/machines/zzzzzz".into(),
            None,
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::GET,
            "/api/v1/machines/../../etc".into(),
            None,
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/machines/{id}/actions/explode"),
            None,
            StatusCode::BAD_REQUEST,
            Some("action"),
        ),
        (
            Method::POST,
            format!("/api/v1/machines/{id}/actions/release"),
            Some(r#"{"erase":"yes"}"#),
            StatusCode::BAD_REQUEST,
            Some("erase"),
        ),
        (
            Method::POST,
            format!("/api/v1/machines/{id}/actions/deploy"),
            Some(r#"{"distro":"x"}"#),
            StatusCode::BAD_REQUEST,
            Some("distro"),
        ),
        (
            Method::PUT,
            format!("/api/v1/machines/{id}/power-parameters"),
            Some(r#"{"power_type":"ipmi"}"#),
            StatusCode::BAD_REQUEST,
            Some("power_parameters.power_address"),
        ),
        (
            Method::PUT,
            format!("/api/v1/machines/{id}/power-parameters"),
            Some(
                r#"{"power_type":"ipmi","power_parameters":{"power_address":"10.0.0.1","power_driver":"LAN_3"}}"#,
            ),
            StatusCode::BAD_REQUEST,
            Some("power_parameters.power_driver"),
        ),
        (
            Method::PUT,
            format!("/api/v1/machines/{id}/power-parameters"),
            Some(r#"{"power_type":"ipmi","power_parameters":{"power_adress":"10.0.0.1"}}"#),
            StatusCode::BAD_REQUEST,
            Some("power_adress"),
        ),
    ];
    for (method, path, body, want, field) in cases {
        let (st, v) = r.call(Some(&k), method.clone(), path, *body).await;
        assert_eq!(st, *want, "{method} {path} {body:?}: {v}");
        assert!(v["error"]["message"].is_string(), "{method} {path}: {v}");
        assert_eq!(
            v["error"]["field"].as_str(),
            *field,
            "{method} {path} {body:?}: {v}"
        );
    }
    // Illegal transitions: 409 with the current status.
    let (st, v) = r.act(&k, &id, "deploy", None).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        (
            v["error"]["current_status"].as_i64(),
            v["error"]["current_status_name"].as_str()
        ),
        (Some(0), Some("New"))
    );
    let (st, v) = r.act(&k, &id, "release", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("illegal_transition"))
    );
    assert_eq!(r.get("/api/v1/machines").await, before, "nothing changed");
}

#[tokio::test]
async fn users_see_unowned_and_their_own_machines_only() {
    let r = region(Options::default()).await.unwrap();
    let ids = r.machine_ids().await;
    for id in &ids {
        r.act(&r.admin_key, id, "commission", None).await;
    }
    for id in &ids {
        r.wait_status(id, "Ready").await;
    }
    let alice = r.user_key("alice", false).await;
    let bob = r.user_key("bob", false).await;
    let (st, m) = r.act(&alice, &ids[0], "allocate", None).await;
    assert_eq!((st, m["owner"].as_str()), (StatusCode::OK, Some("alice")));
    let (_, list) = r
        .call(Some(&bob), Method::GET, "/api/v1/machines", None)
        .await;
    let seen: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        !seen.contains(&ids[0].as_str()) && seen.len() == ids.len() - 1,
        "{seen:?}"
    );
    for (method, path) in [
        (Method::GET, format!("/api/v1/machines/{}", ids[0])),
        (Method::GET, format!("/api/v1/machines/{}/events", ids[0])),
        (
            Method::POST,
            format!("/api/v1/machines/{}/actions/deploy", ids[0]),
        ),
        (
            Method::POST,
            format!("/api/v1/machines/{}/actions/release", ids[0]),
        ),
        (
            Method::POST,
            format!("/api/v1/machines/{}/actions/power-off", ids[0]),
        ),
    ] {
        let (st, _) = r.call(Some(&bob), method.clone(), &path, None).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{method} {path}");
    }
    let (st, _) = r.act(&bob, &ids[1], "commission", None).await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "commissioning is for administrators"
    );
    let (st, _) = r
        .call(Some(&bob), Method::GET, "/api/v1/discoveries", None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "discoveries are operator data");
    let (st, _) = r
        .call(Some(&bob), Method::POST, "/api/v1/machines", Some("{}"))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Alice deploys and releases her own.
    let (st, _) = r.act(&alice, &ids[0], "deploy", None).await;
    assert_eq!(st, StatusCode::OK);
    r.wait_status(&ids[0], "Deployed").await;
    let (st, _) = r.act(&alice, &ids[0], "release", None).await;
    assert_eq!(st, StatusCode::OK);
    r.wait_status(&ids[0], "Ready").await;
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let r = region(Options {
        sim_machines: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let doc = r.get("/api/v1/openapi.json").await;
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    let id = r.machine_ids().await[0].clone();
    let bmc = r.bmc_of(&id).await;
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", &id)
            .replace("{action}", "query-power-state")
            .replace("{address}", &bmc)
            .replace("{name}", "nobody")
            .replace("{client_id}", "nobody")
            .replace("{code}", "NOWHERE");
        for method in ops.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = if m == Method::GET { None } else { Some("{}") };
            let (st, v) = r.call(Some(&r.admin_key), m.clone(), &concrete, body).await;
            // The router's fallback says "route … not found"; a handler's 404 (an unknown
            // account, say) proves the route exists.
            let unrouted = st == StatusCode::NOT_FOUND
                && v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("route "));
            assert!(
                !unrouted,
                "{method} {path} is documented but not routed: {v}"
            );
            assert_ne!(st, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
    // And the documented machine shape is what the API returns.
    let m: Value = r.get(&format!("/api/v1/machines/{id}")).await;
    for field in doc["components"]["schemas"]["Machine"]["required"]
        .as_array()
        .unwrap()
    {
        assert!(m.get(field.as_str().unwrap()).is_some(), "missing {field}");
    }
}

#[tokio::test]
async fn the_same_flow_runs_on_postgres() {
    let Some(r) = region(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        eprintln!("PostgreSQL not configured; set INGOT_TEST_POSTGRES_URL");
        return;
    };
    let id = r.machine_ids().await[0].clone();
    r.act(&r.admin_key, &id, "commission", None).await;
    r.wait_status(&id, "Ready").await;
    r.act(&r.admin_key, &id, "deploy", None).await;
    r.wait_status(&id, "Deployed").await;
    r.act(&r.admin_key, &id, "release", None).await;
    r.wait_status(&id, "Ready").await;
}
