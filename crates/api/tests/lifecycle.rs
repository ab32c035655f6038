//! Every lifecycle path through the native API, with the sim fleet doing the machine's part.

mod common;
use common::{Options, Region, region};
use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

async fn setup() -> Region {
    region(Options::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commission_deploy_release_round_trip() {
    let r = setup().await;
    let k = r.admin_key.clone();
    let id = r.machine_ids().await[0].clone();
    let (st, m) = r.act(&k, &id, "commission", None).await;
    assert_eq!(
        (st, m["status_name"].as_str()),
        (StatusCode::OK, Some("Commissioning"))
    );
    let m = r.wait_status(&id, "Ready").await;
    assert!(m["cpu_count"].as_u64().unwrap() > 0 && m["memory_mib"].as_u64().unwrap() > 0);
    assert_eq!(m["disks"].as_array().unwrap().len(), 1);
    assert_eq!(m["interfaces"][0]["mac"], m["boot_mac"]);
    assert_eq!(m["status"], 4);

    let (st, m) = r.act(&k, &id, "allocate", None).await;
    assert_eq!(
        (st, m["status_name"].as_str(), m["owner"].as_str()),
        (StatusCode::OK, Some("Allocated"), Some("admin"))
    );
    let (st, m) = r
        .act(
            &k,
            &id,
            "deploy",
            Some(r#"{"distro_series":"jammy","user_data":"I2Nsb3VkLWNvbmZpZwo="}"#),
        )
        .await;
    assert_eq!(
        (st, m["status_name"].as_str()),
        (StatusCode::OK, Some("Deploying"))
    );
    let m = r.wait_status(&id, "Deployed").await;
    assert_eq!(
        (m["distro_series"].as_str(), m["power_state"].as_str()),
        (Some("jammy"), Some("on"))
    );

    let (st, _) = r.act(&k, &id, "release", None).await;
    assert_eq!(st, StatusCode::OK);
    let m = r.wait_status(&id, "Ready").await;
    assert_eq!(
        (m["owner"].clone(), m["distro_series"].as_str()),
        (json!(null), Some(""))
    );
    assert_eq!(
        r.sim.actual_state(&r.bmc_of(&id).await),
        Some(ingot_types::power::PowerState::Off)
    );

    let events = r.get(&format!("/api/v1/machines/{id}/events")).await;
    let path: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "transition")
        .map(|e| e["to_status_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        path,
        [
            "New",
            "Commissioning",
            "Ready",
            "Allocated",
            "Deploying",
            "Deployed",
            "Releasing",
            "Ready"
        ]
    );
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["at"].is_string() && e["actor"].is_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_a_ready_machine_allocates_it_implicitly_and_erase_release() {
    let r = setup().await;
    let k = r.admin_key.clone();
    let id = r.machine_ids().await[1].clone();
    r.act(&k, &id, "commission", None).await;
    r.wait_status(&id, "Ready").await;
    let (st, m) = r.act(&k, &id, "deploy", None).await;
    assert_eq!(
        (st, m["status_name"].as_str()),
        (StatusCode::OK, Some("Deploying"))
    );
    r.wait_status(&id, "Deployed").await;
    let (st, m) = r.act(&k, &id, "release", Some(r#"{"erase": true}"#)).await;
    assert_eq!(
        (st, m["status_name"].as_str()),
        (StatusCode::OK, Some("Disk erasing"))
    );
    let m = r.wait_status(&id, "Ready").await;
    assert_eq!(m["owner"], json!(null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mark_broken_and_fixed() {
    let r = region(Options {
        sim_delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await
    .unwrap();
    let k = r.admin_key.clone();
    let id = r.machine_ids().await[0].clone();
    r.act(&k, &id, "commission", None).await;
    let (st, m) = r.act(&k, &id, "abort", None).await;
    assert_eq!(
        (st, m["status_name"].as_str()),
        (StatusCode::OK, Some("New"))
    );
    let (st, m) = r
        .act(&k, &id, "mark-broken", Some(r#"{"message":"bad DIMM"}"#))
        .await;
    assert_eq!(
        (st, m["status_name"].as_str(), m["status_message"].as_str()),
        (StatusCode::OK, Some("Broken"), Some("bad DIMM"))
    );
    let (st, m) = r.act(&k, &id, "mark-fixed", None).await;
    assert_eq!(
        (st, m["status_name"].as_str()),
        (StatusCode::OK, Some("Ready"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_machine_times_out_into_failed_commissioning() {
    let r = region(Options {
        commission_timeout: Duration::from_millis(400),
        ..Default::default()
    })
    .await
    .unwrap();
    let id = r.machine_ids().await[0].clone();
    // A stuck BMC accepts power-on but the machine never boots.
    let bmc = r.bmc_of(&id).await;
    let (st, _) = r
        .call(
            Some(&r.admin_key),
            Method::PUT,
            &format!("/api/v1/sim/bmcs/{bmc}/faults"),
            Some(r#"{"stuck":true}"#),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    r.act(&r.admin_key, &id, "commission", None).await;
    let m = r.wait_status(&id, "Failed commissioning").await;
    assert!(
        m["status_message"].as_str().unwrap().contains("timed out"),
        "{m}"
    );
    assert_eq!(m["deadline"], json!(null));
    // Recoverable: fix the BMC and commission again.
    r.call(
        Some(&r.admin_key),
        Method::PUT,
        &format!("/api/v1/sim/bmcs/{bmc}/faults"),
        Some("{}"),
    )
    .await;
    r.act(&r.admin_key, &id, "commission", None).await;
    r.wait_status(&id, "Ready").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bmc_faults_fail_workflows_with_clear_messages() {
    let r = setup().await;
    let k = r.admin_key.clone();
    let ids = r.machine_ids().await;
    let faults = [
        (r#"{"unreachable":true}"#, "unreachable"),
        (r#"{"delay_ms":10000}"#, "did not answer"),
    ];
    for (id, (fault, words)) in ids.iter().zip(faults) {
        let bmc = r.bmc_of(id).await;
        r.call(
            Some(&k),
            Method::PUT,
            &format!("/api/v1/sim/bmcs/{bmc}/faults"),
            Some(fault),
        )
        .await;
        r.act(&k, id, "commission", None).await;
        let m = r.wait_status(id, "Failed commissioning").await;
        assert_eq!(m["power_state"], "error");
        assert!(m["power_error"].as_str().unwrap().contains(words), "{m}");
        assert!(m["status_message"].as_str().unwrap().contains(words), "{m}");
    }
    // Wrong password: change the stored password so it no longer matches the BMC's.
    let id = &ids[2];
    let body = json!({"power_type":"sim","power_parameters":{"power_address": r.bmc_of(id).await, "power_user":"admin","power_pass":"wrong"}});
    let (st, m) = r
        .call(
            Some(&k),
            Method::PUT,
            &format!("/api/v1/machines/{id}/power-parameters"),
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        m["power_parameters"].get("power_pass").is_none(),
        "password never returned: {m}"
    );
    let (st, e) = r.act(&k, id, "power-on", None).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rejected the credentials"),
        "{e}"
    );
    let m = r.get(&format!("/api/v1/machines/{id}")).await;
    assert_eq!(m["power_state"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_with_dead_bmc_fails_visibly() {
    let r = setup().await;
    let k = r.admin_key.clone();
    let id = r.machine_ids().await[0].clone();
    r.act(&k, &id, "commission", None).await;
    r.wait_status(&id, "Ready").await;
    r.act(&k, &id, "deploy", None).await;
    r.wait_status(&id, "Deployed").await;
    let bmc = r.bmc_of(&id).await;
    r.call(
        Some(&k),
        Method::PUT,
        &format!("/api/v1/sim/bmcs/{bmc}/faults"),
        Some(r#"{"unreachable":true}"#),
    )
    .await;
    r.act(&k, &id, "release", None).await;
    let m = r.wait_status(&id, "Releasing failed").await;
    assert!(
        m["status_message"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );
    r.call(
        Some(&k),
        Method::PUT,
        &format!("/api/v1/sim/bmcs/{bmc}/faults"),
        Some("{}"),
    )
    .await;
    r.act(&k, &id, "release", None).await;
    r.wait_status(&id, "Ready").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_allocations_over_http() {
    let r = region(Options {
        sim_machines: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    let ids = r.machine_ids().await;
    for id in &ids {
        r.act(&r.admin_key, id, "commission", None).await;
    }
    for id in &ids {
        r.wait_status(id, "Ready").await;
    }
    let mut keys = Vec::new();
    for i in 0..20 {
        keys.push(r.user_key(&format!("racer{i}"), false).await);
    }
    // Every racer tries every machine.
    let attempts = keys
        .iter()
        .flat_map(|k| ids.iter().map(move |id| (k.clone(), id.clone())));
    let results = join_all(attempts.map(|(k, id)| {
        let r = &r;
        async move {
            (
                k.clone(),
                id.clone(),
                r.act(&k, &id, "allocate", None).await,
            )
        }
    }))
    .await;
    let mut winners = HashSet::new();
    for (k, id, (st, body)) in results {
        match st {
            StatusCode::OK => assert!(winners.insert(id), "allocated twice"),
            // Either already someone else's (invisible → 404) or no longer Ready (409).
            StatusCode::NOT_FOUND | StatusCode::CONFLICT => {}
            other => panic!("{k}: {other} {body}"),
        }
    }
    assert_eq!(winners.len(), ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bmc_without_boot_override_still_commissions() {
    let r = setup().await;
    let id = r.machine_ids().await[0].clone();
    let bmc = r.bmc_of(&id).await;
    let (st, _) = r
        .call(
            Some(&r.admin_key),
            Method::PUT,
            &format!("/api/v1/sim/bmcs/{bmc}/faults"),
            Some(r#"{"refuse_boot_override":true}"#),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    r.act(&r.admin_key, &id, "commission", None).await;
    r.wait_status(&id, "Ready").await;
    let events = r.get(&format!("/api/v1/machines/{id}/events")).await;
    assert!(
        events.as_array().unwrap().iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("could not set next boot to PXE")),
        "{events:#}"
    );
}
