//! Helpers for the tenancy tests: a region with a commissioned sim fleet, tenants with
//! client credentials and tokens, and phoenixNAP-style calls.
#![allow(dead_code)]

use crate::common::{Options, Region, region};
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A region whose `n` sim machines are all commissioned (Ready), on SQLite or PostgreSQL.
/// None when PostgreSQL is asked for and not configured.
pub async fn cloud(n: usize, postgres: bool) -> Option<Region> {
    let r = region(Options {
        sim_machines: n,
        postgres,
        ..Default::default()
    })
    .await?;
    let ids = r.machine_ids().await;
    for id in &ids {
        let (st, v) = r.act(&r.admin_key.clone(), id, "commission", None).await;
        assert_eq!(st, StatusCode::OK, "commission {id}: {v}");
    }
    for id in &ids {
        r.wait_status(id, "Ready").await;
    }
    Some(r)
}

pub struct Tenant {
    pub name: String,
    pub client_id: String,
    pub client_secret: String,
    pub token: String,
}

/// Creates an account with a quota and a credential, and fetches a token.
pub async fn tenant(r: &Region, name: &str, max_servers: i64) -> Tenant {
    let (st, v) = r
        .call(
            Some(&r.admin_key),
            Method::POST,
            "/api/v1/accounts",
            Some(&json!({ "name": name, "max_servers": max_servers }).to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = r
        .call(
            Some(&r.admin_key),
            Method::POST,
            &format!("/api/v1/accounts/{name}/credentials"),
            Some("{}"),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let client_id = v["client_id"].as_str().unwrap().to_owned();
    let client_secret = v["client_secret"].as_str().unwrap().to_owned();
    let (st, tok) = token_basic(
        r,
        &client_id,
        &client_secret,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{tok}");
    Tenant {
        name: name.into(),
        client_id,
        client_secret,
        token: tok["access_token"].as_str().unwrap().to_owned(),
    }
}

/// POSTs a form to the token endpoint with HTTP Basic client authentication.
pub async fn token_basic(r: &Region, id: &str, secret: &str, form: &str) -> (StatusCode, Value) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let resp = r
        .http
        .post(format!(
            "{}/auth/realms/BMC/protocol/openid-connect/token",
            r.url
        ))
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .unwrap();
    let st = resp.status();
    (st, resp.json().await.unwrap_or(Value::Null))
}

/// A call to the cloud API with a bearer token.
pub async fn bmc(
    r: &Region,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    r.call(
        Some(token),
        method,
        path,
        body.map(|b| b.to_string()).as_deref(),
    )
    .await
}

/// A syntactically valid OpenSSH ed25519 public key, distinct per seed.
pub fn ssh_key(seed: u8) -> String {
    let mut blob = vec![0, 0, 0, 11];
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&[0, 0, 0, 32]);
    blob.extend_from_slice(&[seed; 32]);
    format!(
        "ssh-ed25519 {} test{seed}@ingot",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

pub fn server_body(hostname: &str) -> Value {
    json!({
        "hostname": hostname,
        "description": hostname,
        "public": true,
        "location": "PHX",
        "os": "ubuntu/bionic",
        "type": "d0.t1.tiny",
        "sshKeys": [ssh_key(1)],
    })
}

/// Polls a server until its status is `want` (bounded); panics with the last answer if not.
pub async fn wait_server(r: &Region, token: &str, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, v) = bmc(
            r,
            token,
            Method::GET,
            &format!("/bmc/v1/servers/{id}"),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        if v["status"] == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "server {id} never reached {want:?}; now {v}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The server document fields the pnap-bmc-api SDK requires, with their JSON types.
pub fn assert_server_shape(v: &Value) {
    for f in [
        "id",
        "status",
        "hostname",
        "type",
        "location",
        "cpu",
        "ram",
        "storage",
        "pricingModel",
    ] {
        assert!(v[f].is_string(), "{f} must be a string in {v}");
    }
    for f in ["cpuCount", "coresPerCpu"] {
        assert!(
            v[f].as_u64().is_some_and(|n| n >= 1),
            "{f} must be an integer >= 1 in {v}"
        );
    }
    assert!(
        v["cpuFrequency"].as_f64().is_some_and(|f| f >= 0.0),
        "cpuFrequency in {v}"
    );
    assert!(
        v["privateIpAddresses"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string)),
        "{v}"
    );
    assert!(
        v["publicIpAddresses"]
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string)),
        "{v}"
    );
    assert!(
        v["networkConfiguration"].is_object() && v["storageConfiguration"].is_object(),
        "{v}"
    );
}
