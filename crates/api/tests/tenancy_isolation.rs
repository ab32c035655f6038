//! The cloud API in-process: OAuth2 tokens, the phoenixNAP server lifecycle, tenant
//! isolation (every endpoint, another account's objects: 404), the quota under a race of
//! creates, capacity and rollback, audit and usage.

mod common;
mod tenancy_common;

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use tenancy_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_endpoint_follows_rfc6749() {
    let r = cloud(1, false).await.unwrap();
    let t = tenant(&r, "acme", 5).await;
    let form = "grant_type=client_credentials";

    // Basic credentials at the Keycloak path (the demo's call); the answer is not cacheable.
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{}:{}", t.client_id, t.client_secret),
    );
    let resp = r
        .http
        .post(format!(
            "{}/auth/realms/BMC/protocol/openid-connect/token",
            r.url
        ))
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["token_type"].as_str(), v["expires_in"].as_i64()),
        (Some("Bearer"), Some(3600))
    );
    assert_eq!(v["scope"], "bmc bmc.read tags tags.read audit.read");

    // Form credentials at /oauth2/token, with the scopes Terraform asks for.
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&scope=bmc+bmc.read",
        t.client_id, t.client_secret
    );
    let resp = r
        .http
        .post(format!("{}/oauth2/token", r.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["scope"], "bmc bmc.read");

    // Errors, as data: (form, Basic secret, expected status, expected RFC 6749 error).
    let cases: &[(&str, &str, StatusCode, &str)] = &[
        (
            form,
            "wrong-secret",
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "grant_type=password&username=a&password=b",
            &t.client_secret,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            "scope=bmc",
            &t.client_secret,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "grant_type=client_credentials&scope=root",
            &t.client_secret,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "grant_type=client_credentials&grant_type=client_credentials",
            &t.client_secret,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "grant_type=client_credentials&client_secret=x",
            &t.client_secret,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (form, secret, status, error) in cases {
        let (st, v) = token_basic(&r, &t.client_id, secret, form).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (*status, Some(*error)),
            "{form}: {v}"
        );
        assert!(v["error_description"].is_string(), "{v}");
    }
    let resp = r
        .http
        .post(format!("{}/oauth2/token", r.url))
        .basic_auth(&t.client_id, Some("nope"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"BMC\"");
    let resp = r
        .http
        .post(format!("{}/oauth2/token", r.url))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "JSON bodies are not OAuth2"
    );

    // A read-only token reads but cannot create.
    let (_, ro) = token_basic(
        &r,
        &t.client_id,
        &t.client_secret,
        "grant_type=client_credentials&scope=bmc.read",
    )
    .await;
    let ro = ro["access_token"].as_str().unwrap();
    assert_eq!(
        bmc(&r, ro, Method::GET, "/bmc/v1/servers", None).await.0,
        StatusCode::OK
    );
    let (st, v) = bmc(
        &r,
        ro,
        Method::POST,
        "/bmc/v1/servers",
        Some(server_body("h1")),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().contains("bmc"), "{v}");

    // Bearer tokens: the native API takes them too (as the account, never as an operator).
    let (st, v) = r
        .call(Some(&t.token), Method::GET, "/api/v1/whoami", None)
        .await;
    assert_eq!(
        (st, v["username"].as_str(), v["is_admin"].as_bool()),
        (StatusCode::OK, Some("tenant:acme"), Some(false))
    );
    assert_eq!(
        r.call(Some(&t.token), Method::GET, "/api/v1/accounts", None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (st, v) = bmc(&r, "not-a-token", Method::GET, "/bmc/v1/servers", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(v["message"].is_string(), "phoenixNAP error body: {v}");
    let (st, _) = bmc(&r, &r.admin_key, Method::GET, "/bmc/v1/servers", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "operators use the native API");

    // On the native API a tenant sees its own machines only, not the free pool.
    let (st, v) = r
        .call(Some(&t.token), Method::GET, "/api/v1/machines", None)
        .await;
    assert_eq!((st, v), (StatusCode::OK, json!([])));
    let free = r.machine_ids().await[0].clone();
    let (st, _) = r
        .call(
            Some(&t.token),
            Method::GET,
            &format!("/api/v1/machines/{free}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = r.act(&t.token, &free, "deploy", None).await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "tenants cannot grab hardware past the cloud API"
    );

    // Unknown paths under the phoenixNAP prefixes keep the phoenixNAP error shape.
    let (st, v) = bmc(&r, &t.token, Method::GET, "/bmc/v1/no-such-thing", None).await;
    assert_eq!(
        (st, v["message"].is_string()),
        (StatusCode::NOT_FOUND, true),
        "{v}"
    );

    // A revoked credential's tokens stop working.
    let (st, _) = r
        .call(
            Some(&r.admin_key),
            Method::DELETE,
            &format!("/api/v1/accounts/acme/credentials/{}", t.client_id),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(
        bmc(&r, &t.token, Method::GET, "/bmc/v1/servers", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifecycle_capacity_audit_and_usage() {
    let r = cloud(3, false).await.unwrap();
    let t = tenant(&r, "acme", 10).await;
    let tok = t.token.as_str();

    // Bad input: 400 naming the field, nothing taken.
    let mut no_host = server_body("x");
    no_host.as_object_mut().unwrap().remove("hostname");
    let bad: Vec<(Value, &str)> = vec![
        (no_host, "hostname"),
        (
            json!({"hostname": "a", "os": "ubuntu/bionic", "type": "s9.huge", "location": "PHX"}),
            "type",
        ),
        (
            json!({"hostname": "a", "os": "ubuntu/bionic", "type": "d0.t1.tiny", "location": "MARS"}),
            "location",
        ),
        (
            json!({"hostname": "a", "os": "windows/srv2019std", "type": "d0.t1.tiny", "location": "PHX"}),
            "os",
        ),
        (
            json!({"hostname": "a_b", "os": "ubuntu/bionic", "type": "d0.t1.tiny", "location": "PHX"}),
            "hostname",
        ),
        (
            json!({"hostname": "a", "os": "ubuntu/bionic", "type": "d0.t1.tiny", "location": "PHX", "sshKeys": ["nope"]}),
            "sshKeys[0]",
        ),
        (
            json!({"hostname": "a", "os": "ubuntu/bionic", "type": "d0.t1.tiny", "location": "PHX", "osConfiguration": {"cloudInit": {"userData": "***"}}}),
            "osConfiguration.cloudInit.userData",
        ),
    ];
    for (body, field) in bad {
        let (st, v) = bmc(&r, tok, Method::POST, "/bmc/v1/servers", Some(body.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(
            v["validationErrors"][0]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{field}: {v}"
        );
    }

    // Create: 200 with status creating and both addresses at once (the demo SSHes to them).
    // Slow BMCs keep the deployment in progress for the 409 check below.
    let bmcs: Vec<String> =
        futures::future::join_all(r.machine_ids().await.iter().map(|m| r.bmc_of(m))).await;
    for b in &bmcs {
        r.sim.set_faults(
            b,
            bmc_power::sim::Faults {
                delay_ms: 100,
                ..Default::default()
            },
        );
    }
    let user_data = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "#!/bin/sh\necho tenant-script\n",
    );
    let mut body = server_body("web-1");
    body["osConfiguration"] = json!({ "cloudInit": { "userData": user_data } });
    body["tags"] = json!([{ "name": "env", "value": "prod" }]);
    let (st, s) = bmc(&r, tok, Method::POST, "/bmc/v1/servers", Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{s}");
    assert_server_shape(&s);
    assert_eq!(
        (
            s["status"].as_str(),
            s["type"].as_str(),
            s["location"].as_str()
        ),
        (Some("creating"), Some("d0.t1.tiny"), Some("PHX"))
    );
    assert_eq!(s["privateIpAddresses"], json!(["10.0.0.2"]));
    assert_eq!(s["publicIpAddresses"], json!(["198.51.100.2"]));
    assert_eq!(s["tags"][0]["name"], "env");
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 24);
    let (st, v) = bmc(
        &r,
        tok,
        Method::POST,
        &format!("/bmc/v1/servers/{id}/actions/power-off"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "power-off while creating: {v}");
    for b in &bmcs {
        r.sim.set_faults(b, bmc_power::sim::Faults::default());
    }

    let up = wait_server(&r, tok, &id, "powered-on").await;
    assert_server_shape(&up);
    assert_eq!(up["publicIpAddresses"], s["publicIpAddresses"]);

    // The operator sees which machine it is and what cloud-init got.
    let (_, servers) = r
        .call(
            Some(&r.admin_key),
            Method::GET,
            "/api/v1/accounts/acme/servers",
            None,
        )
        .await;
    let machine = servers[0]["machineId"].as_str().unwrap().to_owned();
    let resp = r
        .http
        .get(format!("{}/api/v1/machines/{machine}/user-data", r.url))
        .bearer_auth(&r.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ud = resp.text().await.unwrap();
    assert!(
        ud.contains("hostname: \"web-1\"")
            && ud.contains(&ssh_key(1))
            && ud.contains("echo tenant-script"),
        "{ud}"
    );
    assert_eq!(
        r.call(
            Some(tok),
            Method::GET,
            &format!("/api/v1/machines/{machine}/user-data"),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );

    // Power, straight between powered-on and powered-off.
    for (action, want) in [
        ("power-off", "powered-off"),
        ("power-on", "powered-on"),
        ("shutdown", "powered-off"),
        ("power-on", "powered-on"),
    ] {
        let (st, v) = bmc(
            &r,
            tok,
            Method::POST,
            &format!("/bmc/v1/servers/{id}/actions/{action}"),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{action}: {v}");
        assert!(v["result"].is_string());
        let (_, v) = bmc(&r, tok, Method::GET, &format!("/bmc/v1/servers/{id}"), None).await;
        assert_eq!(v["status"], want, "after {action}");
    }
    let (st, _) = bmc(
        &r,
        tok,
        Method::POST,
        &format!("/bmc/v1/servers/{id}/actions/reboot"),
        Some(json!({"bootType": "STANDARD"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    wait_server(&r, tok, &id, "powered-on").await;
    let (st, v) = bmc(
        &r,
        tok,
        Method::POST,
        &format!("/bmc/v1/servers/{id}/actions/levitate"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    // Patch, tags, list (also under /bmc/v1beta).
    let (st, v) = bmc(
        &r,
        tok,
        Method::PATCH,
        &format!("/bmc/v1/servers/{id}"),
        Some(json!({"hostname": "web-renamed", "description": "d"})),
    )
    .await;
    assert_eq!(
        (st, v["hostname"].as_str(), v["description"].as_str()),
        (StatusCode::OK, Some("web-renamed"), Some("d"))
    );
    let (st, v) = bmc(
        &r,
        tok,
        Method::PATCH,
        &format!("/bmc/v1/servers/{id}"),
        Some(json!({"hostname": "bad host"})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = bmc(
        &r,
        tok,
        Method::PUT,
        &format!("/bmc/v1/servers/{id}/tags"),
        Some(json!([{"name": "team", "value": "web"}])),
    )
    .await;
    assert_eq!(
        (st, v["tags"].as_array().unwrap().len()),
        (StatusCode::OK, 1),
        "{v}"
    );
    let (_, list) = bmc(
        &r,
        tok,
        Method::GET,
        "/bmc/v1beta/servers?tag=team.web&location=PHX&location=ASH",
        None,
    )
    .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, list) = bmc(&r, tok, Method::GET, "/bmc/v1/servers?tag=env.prod", None).await;
    assert_eq!(list.as_array().unwrap().len(), 0, "PUT tags replaces them");

    let (st, v) = bmc(
        &r,
        tok,
        Method::POST,
        &format!("/bmc/v1/servers/{id}/actions/reset"),
        Some(json!({"sshKeys": [ssh_key(2)]})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    // Reset reinstalls on the same machine: `resetting`, then powered-on with the same
    // addresses and user-data. A slow BMC keeps the reset visibly in progress meanwhile.
    let bmc_addr = r.bmc_of(&machine).await;
    // (below the test registry's 300 ms BMC timeout)
    let slow = bmc_power::sim::Faults {
        delay_ms: 100,
        ..Default::default()
    };
    assert!(r.sim.set_faults(&bmc_addr, slow));
    let (st, v) = bmc(
        &r,
        tok,
        Method::POST,
        &format!("/bmc/v1/servers/{id}/actions/reset"),
        Some(json!({})),
    )
    .await;
    assert_eq!((st, v["result"].is_string()), (StatusCode::OK, true), "{v}");
    let (_, v) = bmc(&r, tok, Method::GET, &format!("/bmc/v1/servers/{id}"), None).await;
    assert_eq!(v["status"], "resetting");
    let (st, v) = bmc(
        &r,
        tok,
        Method::POST,
        &format!("/bmc/v1/servers/{id}/actions/power-off"),
        None,
    )
    .await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "no power actions while resetting: {v}"
    );
    r.sim
        .set_faults(&bmc_addr, bmc_power::sim::Faults::default());
    let after = wait_server(&r, tok, &id, "powered-on").await;
    assert_eq!(after["publicIpAddresses"], s["publicIpAddresses"]);
    let resp = r
        .http
        .get(format!("{}/api/v1/machines/{machine}/user-data", r.url))
        .bearer_auth(&r.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), ud);

    // A tenant member (a user of the account with their own API key) sees the same servers.
    let (st, m) = r
        .call(
            Some(&r.admin_key),
            Method::POST,
            "/api/v1/accounts/acme/members",
            Some(r#"{"username": "alice"}"#),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let alice = m["api_key"].as_str().unwrap();
    let (st, list) = bmc(&r, alice, Method::GET, "/bmc/v1/servers", None).await;
    assert_eq!(
        (st, list[0]["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let (_, me) = r
        .call(Some(alice), Method::GET, "/api/v1/whoami", None)
        .await;
    assert_eq!(me["username"], "tenant:acme");
    let (_, mine) = r
        .call(Some(alice), Method::GET, "/api/v1/machines", None)
        .await;
    assert_eq!(
        mine.as_array().unwrap().len(),
        1,
        "the member sees the account's one machine: {mine}"
    );

    // Capacity: 3 machines; two more servers fit, the next is 406 and takes nothing.
    for h in ["web-2", "web-3"] {
        let (st, v) = bmc(
            &r,
            tok,
            Method::POST,
            "/bmc/v1beta/servers",
            Some(server_body(h)),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let (st, v) = bmc(
        &r,
        tok,
        Method::POST,
        "/bmc/v1/servers",
        Some(server_body("web-4")),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_ACCEPTABLE, "{v}");
    let (_, q) = bmc(
        &r,
        tok,
        Method::GET,
        "/bmc/v1/quotas/bmc.servers.max_count",
        None,
    )
    .await;
    assert_eq!(
        (
            q["used"].as_i64(),
            q["limit"].as_i64(),
            q["status"].as_str()
        ),
        (Some(3), Some(10), Some("WITHIN_LIMIT")),
        "{q}"
    );

    // Delete (200 DeleteResult) and deprovision (202 with a JSON string).
    let (st, v) = bmc(
        &r,
        tok,
        Method::DELETE,
        &format!("/bmc/v1/servers/{id}"),
        None,
    )
    .await;
    assert_eq!(
        (st, v),
        (
            StatusCode::OK,
            json!({"result": "Server deleted", "serverId": id})
        )
    );
    assert_eq!(
        bmc(&r, tok, Method::GET, &format!("/bmc/v1/servers/{id}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        bmc(
            &r,
            tok,
            Method::DELETE,
            &format!("/bmc/v1/servers/{id}"),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (_, list) = bmc(&r, tok, Method::GET, "/bmc/v1/servers", None).await;
    let other = list[0]["id"].as_str().unwrap().to_owned();
    let (st, v) = bmc(
        &r,
        tok,
        Method::POST,
        &format!("/bmc/v1/servers/{other}/actions/deprovision"),
        Some(json!({"deleteIpBlocks": false})),
    )
    .await;
    assert_eq!(
        (st, v),
        (StatusCode::ACCEPTED, json!("Server deprovisioned"))
    );
    // The wiped machine is sellable again, with the freed addresses.
    r.wait_status(&machine, "Ready").await;
    let (st, v) = bmc(
        &r,
        tok,
        Method::POST,
        "/bmc/v1/servers",
        Some(server_body("web-5")),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, q) = bmc(&r, tok, Method::GET, "/bmc/v1/quotas", None).await;
    assert_eq!(q[0]["used"], 2);

    // Audit: every action, with account, client, action, target and time.
    let (_, ev) = bmc(&r, tok, Method::GET, "/audit/v1/events", None).await;
    let names: Vec<&str> = ev
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for want in [
        "API.IssueToken",
        "API.CreateServer",
        "API.PowerOffServer",
        "API.RebootServer",
        "API.UpdateServer",
        "API.SetServerTags",
        "API.DeleteServer",
        "API.DeprovisionServer",
        "API.ResetServer",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let create = ev
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "API.CreateServer")
        .unwrap();
    assert_eq!(
        (
            create["userInfo"]["accountId"].as_str(),
            create["userInfo"]["clientId"].as_str()
        ),
        (Some("acme"), Some(t.client_id.as_str()))
    );
    assert!(
        create["timestamp"].is_string()
            && create["target"].as_str().unwrap().starts_with("server/")
    );

    // Usage: every server ever created is metered (at least one started hour each).
    let (_, u) = bmc(&r, tok, Method::GET, "/bmc/v1/usage", None).await;
    assert_eq!(
        (
            u["serverHours"].as_i64(),
            u["servers"].as_array().unwrap().len()
        ),
        (Some(4), 4),
        "{u}"
    );
    let (_, u) = r
        .call(
            Some(&r.admin_key),
            Method::GET,
            "/api/v1/accounts/acme/usage",
            None,
        )
        .await;
    assert_eq!(u["serverHours"], 4);

    // An operator can retire a tenant's server; the tenant then no longer sees it.
    let (_, list) = bmc(&r, tok, Method::GET, "/bmc/v1/servers", None).await;
    let victim = list[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/accounts/acme/servers/{victim}");
    assert_eq!(
        r.call(Some(tok), Method::DELETE, &path, None).await.0,
        StatusCode::FORBIDDEN
    );
    let (st, v) = r
        .call(Some(&r.admin_key), Method::DELETE, &path, None)
        .await;
    assert_eq!(
        (st, v["serverId"].as_str()),
        (StatusCode::OK, Some(victim.as_str())),
        "{v}"
    );
    assert_eq!(
        bmc(
            &r,
            tok,
            Method::GET,
            &format!("/bmc/v1/servers/{victim}"),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (st, _) = r
        .call(
            Some(&r.admin_key),
            Method::DELETE,
            "/api/v1/accounts/nobody/servers/x",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// Every tenant-facing endpoint, called by account B with account A's object ids, answers
/// 404; B's lists show none of A's objects; A's objects are untouched afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_sweep_every_endpoint_answers_404_across_accounts_sqlite() {
    isolation_sweep(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_sweep_every_endpoint_answers_404_across_accounts_postgres() {
    isolation_sweep(true).await;
}

async fn isolation_sweep(postgres: bool) {
    let Some(r) = cloud(4, postgres).await else {
        return;
    };
    let a = tenant(&r, "alpha", 10).await;
    let b = tenant(&r, "beta", 10).await;
    let (st, srv) = bmc(
        &r,
        &a.token,
        Method::POST,
        "/bmc/v1/servers",
        Some(server_body("alpha-1")),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{srv}");
    let sid = srv["id"].as_str().unwrap().to_owned();
    let (st, key) = bmc(
        &r,
        &a.token,
        Method::POST,
        "/bmc/v1/ssh-keys",
        Some(json!({"default": true, "name": "k", "key": ssh_key(9)})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{key}");
    let kid = key["id"].as_str().unwrap().to_owned();
    let (st, tag) = bmc(
        &r,
        &a.token,
        Method::POST,
        "/tag-manager/v1/tags",
        Some(json!({"name": "secret-tag", "isBillingTag": false})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{tag}");
    let tid = tag["id"].as_str().unwrap().to_owned();
    let (st, cl) = bmc(
        &r,
        &a.token,
        Method::POST,
        "/bmc/v1/clusters",
        Some(json!({"nodes": 1, "type": "d0.t1.tiny", "location": "PHX"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{cl}");
    let cid = cl["id"].as_str().unwrap().to_owned();
    wait_server(&r, &a.token, &sid, "powered-on").await;

    let json_body = Some(json!({}));
    let mut calls: Vec<(Method, String, Option<Value>)> = Vec::new();
    for p in ["/bmc/v1", "/bmc/v1beta"] {
        calls.extend([
            (Method::GET, format!("{p}/servers/{sid}"), None),
            (
                Method::PATCH,
                format!("{p}/servers/{sid}"),
                Some(json!({"hostname": "stolen"})),
            ),
            (
                Method::PUT,
                format!("{p}/servers/{sid}/tags"),
                Some(json!([{"name": "x"}])),
            ),
            (Method::GET, format!("{p}/ssh-keys/{kid}"), None),
            (
                Method::PUT,
                format!("{p}/ssh-keys/{kid}"),
                Some(json!({"default": false, "name": "stolen"})),
            ),
            (Method::GET, format!("{p}/tags/{tid}"), None),
            (Method::GET, format!("{p}/clusters/{cid}"), None),
        ]);
        for action in [
            "power-on",
            "power-off",
            "reboot",
            "reset",
            "shutdown",
            "deprovision",
        ] {
            calls.push((
                Method::POST,
                format!("{p}/servers/{sid}/actions/{action}"),
                json_body.clone(),
            ));
        }
    }
    calls.push((Method::GET, format!("/tag-manager/v1/tags/{tid}"), None));
    // Destructive calls last, so that a leak would show as a missing object below.
    for p in ["/bmc/v1", "/bmc/v1beta"] {
        calls.extend([
            (Method::DELETE, format!("{p}/ssh-keys/{kid}"), None),
            (Method::DELETE, format!("{p}/tags/{tid}"), None),
            (Method::DELETE, format!("{p}/clusters/{cid}"), None),
            (Method::DELETE, format!("{p}/servers/{sid}"), None),
        ]);
    }
    calls.push((Method::DELETE, format!("/tag-manager/v1/tags/{tid}"), None));
    for (m, path, body) in &calls {
        let (st, v) = bmc(&r, &b.token, m.clone(), path, body.clone()).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{m} {path} as beta: {v}");
        assert!(v["message"].is_string(), "{m} {path}: {v}");
    }

    // Lists show nothing of alpha's.
    for path in [
        "/bmc/v1/servers",
        "/bmc/v1/ssh-keys",
        "/bmc/v1/tags",
        "/tag-manager/v1/tags",
        "/bmc/v1/clusters",
        "/bmc/v1/usage",
    ] {
        let (st, v) = bmc(&r, &b.token, Method::GET, path, None).await;
        assert_eq!(st, StatusCode::OK, "{path}");
        for needle in [&sid, &kid, &tid, &cid] {
            assert!(
                !v.to_string().contains(needle.as_str()),
                "{path} leaks {needle}: {v}"
            );
        }
    }
    let (_, ev) = bmc(&r, &b.token, Method::GET, "/audit/v1/events", None).await;
    assert!(
        ev.as_array()
            .unwrap()
            .iter()
            .all(|e| e["userInfo"]["accountId"] == "beta"),
        "{ev}"
    );
    let (_, q) = bmc(&r, &b.token, Method::GET, "/bmc/v1/quotas", None).await;
    assert_eq!(q[0]["used"], 0);
    // Through the native API, beta's token cannot see alpha's machine either.
    let (_, servers) = r
        .call(
            Some(&r.admin_key),
            Method::GET,
            "/api/v1/accounts/alpha/servers",
            None,
        )
        .await;
    let machine = servers[0]["machineId"].as_str().unwrap();
    assert_eq!(
        r.call(
            Some(&b.token),
            Method::GET,
            &format!("/api/v1/machines/{machine}"),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // Alpha's objects are intact.
    let (_, v) = bmc(
        &r,
        &a.token,
        Method::GET,
        &format!("/bmc/v1/servers/{sid}"),
        None,
    )
    .await;
    assert_eq!(
        (v["hostname"].as_str(), v["status"].as_str()),
        (Some("alpha-1"), Some("powered-on"))
    );
    assert_eq!(
        bmc(
            &r,
            &a.token,
            Method::GET,
            &format!("/bmc/v1/ssh-keys/{kid}"),
            None
        )
        .await
        .1["name"],
        "k"
    );
    assert_eq!(
        bmc(
            &r,
            &a.token,
            Method::GET,
            &format!("/tag-manager/v1/tags/{tid}"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        bmc(
            &r,
            &a.token,
            Method::GET,
            &format!("/bmc/v1/clusters/{cid}"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
}

async fn quota_race(postgres: bool) {
    let Some(r) = cloud(12, postgres).await else {
        return;
    };
    let t = tenant(&r, "racer", 10).await;
    let creates = (0..50).map(|i| {
        bmc(
            &r,
            &t.token,
            Method::POST,
            "/bmc/v1/servers",
            Some(server_body(&format!("race-{i}"))),
        )
    });
    let results = join_all(creates).await;
    let ok = results
        .iter()
        .filter(|(st, _)| *st == StatusCode::OK)
        .count();
    let over = results
        .iter()
        .filter(|(st, _)| *st == StatusCode::FORBIDDEN)
        .count();
    assert_eq!(
        (ok, over),
        (10, 40),
        "{:?}",
        results
            .iter()
            .map(|(s, v)| format!("{s} {v}"))
            .collect::<Vec<_>>()
    );
    let (_, q) = bmc(
        &r,
        &t.token,
        Method::GET,
        "/bmc/v1/quotas/bmc.servers.max_count",
        None,
    )
    .await;
    assert_eq!(
        (q["used"].as_i64(), q["status"].as_str()),
        (Some(10), Some("ON_LIMIT")),
        "{q}"
    );
    let (_, list) = bmc(&r, &t.token, Method::GET, "/bmc/v1/servers", None).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 10);
    // Distinct machines and distinct addresses.
    let ips: std::collections::HashSet<_> = list
        .iter()
        .map(|s| s["publicIpAddresses"][0].as_str().unwrap())
        .collect();
    assert_eq!(ips.len(), 10);
    let (_, servers) = r
        .call(
            Some(&r.admin_key),
            Method::GET,
            "/api/v1/accounts/racer/servers",
            None,
        )
        .await;
    let machines: std::collections::HashSet<_> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["machineId"].as_str().unwrap())
        .collect();
    assert_eq!(machines.len(), 10);
    // A quota raise lets one more in.
    let (st, _) = r
        .call(
            Some(&r.admin_key),
            Method::PUT,
            "/api/v1/accounts/racer/quota",
            Some(r#"{"max_servers": 11}"#),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = bmc(
        &r,
        &t.token,
        Method::POST,
        "/bmc/v1/servers",
        Some(server_body("race-late")),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_creates_against_a_quota_of_ten_sqlite() {
    quota_race(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_creates_against_a_quota_of_ten_postgres() {
    quota_race(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_keys_quotas_and_tags() {
    let r = cloud(1, false).await.unwrap();
    let t = tenant(&r, "keys", 3).await;
    let tok = t.token.as_str();
    let (st, k) = bmc(
        &r,
        tok,
        Method::POST,
        "/bmc/v1/ssh-keys",
        Some(json!({"default": true, "name": "laptop", "key": ssh_key(3)})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{k}");
    for f in [
        "id",
        "name",
        "key",
        "fingerprint",
        "createdOn",
        "lastUpdatedOn",
    ] {
        assert!(k[f].is_string(), "{f}: {k}");
    }
    assert!(k["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    let (st, v) = bmc(
        &r,
        tok,
        Method::POST,
        "/bmc/v1/ssh-keys",
        Some(json!({"default": true, "name": "laptop", "key": ssh_key(4)})),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (st, v) = bmc(
        &r,
        tok,
        Method::POST,
        "/bmc/v1/ssh-keys",
        Some(json!({"default": true, "name": "bad", "key": "ssh-rsa AAAA"})),
    )
    .await;
    assert_eq!(
        (
            st,
            v["validationErrors"][0]
                .as_str()
                .map(|s| s.starts_with("key:"))
        ),
        (StatusCode::BAD_REQUEST, Some(true)),
        "{v}"
    );
    let id = k["id"].as_str().unwrap();
    let (st, v) = bmc(
        &r,
        tok,
        Method::PUT,
        &format!("/bmc/v1/ssh-keys/{id}"),
        Some(json!({"default": false, "name": "renamed"})),
    )
    .await;
    assert_eq!(
        (st, v["name"].as_str(), v["default"].as_bool()),
        (StatusCode::OK, Some("renamed"), Some(false))
    );

    let (st, q) = bmc(&r, tok, Method::GET, "/bmc/v1/quotas", None).await;
    assert_eq!(
        (
            st,
            q[0]["id"].as_str(),
            q[0]["limit"].as_i64(),
            q[0]["unit"].as_str()
        ),
        (
            StatusCode::OK,
            Some("bmc.servers.max_count"),
            Some(3),
            Some("COUNT")
        )
    );
    let (st, _) = bmc(
        &r,
        tok,
        Method::POST,
        "/bmc/v1/quotas/bmc.servers.max_count/actions/request-edit",
        Some(json!({"limit": 20, "reason": "growth"})),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (_, q) = bmc(
        &r,
        tok,
        Method::GET,
        "/bmc/v1/quotas/bmc.servers.max_count",
        None,
    )
    .await;
    assert_eq!(q["quotaEditLimitRequestDetails"][0]["limit"], 20);
    assert_eq!(
        bmc(&r, tok, Method::GET, "/bmc/v1/quotas/bmc.nothing", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    let (st, tag) = bmc(
        &r,
        tok,
        Method::POST,
        "/tag-manager/v1/tags",
        Some(json!({"name": "env", "isBillingTag": true})),
    )
    .await;
    assert_eq!(
        (st, tag["isBillingTag"].as_bool()),
        (StatusCode::CREATED, Some(true))
    );
    let (_, tags) = bmc(&r, tok, Method::GET, "/bmc/v1/tags", None).await;
    assert_eq!(tags.as_array().unwrap().len(), 1);
    let (st, v) = bmc(
        &r,
        tok,
        Method::DELETE,
        &format!("/bmc/v1/ssh-keys/{id}"),
        None,
    )
    .await;
    assert_eq!((st, v["sshKeyId"].as_str()), (StatusCode::OK, Some(id)));
}

/// A claim is all or nothing: a 3-node cluster on 2 machines takes no slot, machine or address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_cannot_be_met_takes_nothing() {
    let r = cloud(2, false).await.unwrap();
    let t = tenant(&r, "greedy", 10).await;
    let body = json!({"nodes": 3, "type": "d0.t1.tiny", "location": "PHX"});
    let (st, v) = bmc(&r, &t.token, Method::POST, "/bmc/v1/clusters", Some(body)).await;
    assert_eq!(st, StatusCode::NOT_ACCEPTABLE, "{v}");
    let (_, q) = bmc(&r, &t.token, Method::GET, "/bmc/v1/quotas", None).await;
    assert_eq!(q[0]["used"], 0);
    assert_eq!(
        bmc(&r, &t.token, Method::GET, "/bmc/v1/servers", None)
            .await
            .1,
        json!([])
    );
    assert_eq!(
        bmc(&r, &t.token, Method::GET, "/bmc/v1/clusters", None)
            .await
            .1,
        json!([])
    );
    for m in r.get("/api/v1/machines").await.as_array().unwrap() {
        assert_eq!(
            (m["status_name"].as_str(), &m["owner"]),
            (Some("Ready"), &json!(null)),
            "{m}"
        );
    }
    // Quota below the request: 403, and again nothing taken.
    let (st, _) = r
        .call(
            Some(&r.admin_key),
            Method::PUT,
            "/api/v1/accounts/greedy/quota",
            Some(r#"{"max_servers": 1}"#),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let body = json!({"nodes": 2, "type": "d0.t1.tiny", "location": "PHX"});
    let (st, v) = bmc(&r, &t.token, Method::POST, "/bmc/v1/clusters", Some(body)).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().contains("quota"), "{v}");
    // The two machines are still there for a fitting request.
    let (st, v) = bmc(
        &r,
        &t.token,
        Method::POST,
        "/bmc/v1/servers",
        Some(server_body("fits")),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}
