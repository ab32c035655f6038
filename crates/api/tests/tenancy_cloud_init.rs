//! cloud-init user-data: every rendering passes `cloud-init schema` (Debian's cloud-init
//! package; `/etc/cloud/cloud-init.disabled` keeps it from acting on the host), matches its
//! snapshot under tests/snapshots/cloud-init/ (INGOT_UPDATE_SNAPSHOTS=1 rewrites them), and a
//! 3-node cluster's nodes agree on the join token and the control plane's address.

mod common;
mod tenancy_common;

use ingot_api::tenancy::cloudinit::{
    ClusterRole, Microk8sNode, UserDataInput, combine_user_data, os_image, render_user_data,
};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::path::PathBuf;
use tenancy_common::*;

/// Runs `cloud-init schema` on a cloud-config document; Err carries its report.
fn cloud_init_schema(doc: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user-data");
    std::fs::write(&path, doc).unwrap();
    let out = std::process::Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&path)
        .output()
        .expect(
            "the cloud-init CLI is needed: apt-get install -y --no-install-recommends cloud-init \
             && touch /etc/cloud/cloud-init.disabled",
        );
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn check_snapshot(name: &str, rendered: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots/cloud-init")
        .join(format!("{name}.yaml"));
    if std::env::var_os("INGOT_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rendered).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing snapshot {}; run with INGOT_UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    assert_eq!(
        rendered, want,
        "snapshot {name} differs; if intended, rerun with INGOT_UPDATE_SNAPSHOTS=1"
    );
}

fn node(role: ClusterRole) -> Microk8sNode {
    Microk8sNode {
        channel: "1.30/stable".into(),
        addons: vec!["dns".into(), "ingress".into(), "dashboard".into()],
        role,
        join_token: "0123456789abcdefghijABCDEFGHIJ01".into(),
        control_plane_address: "10.0.0.2".into(),
    }
}

#[test]
fn every_template_rendering_passes_cloud_init_schema_and_matches_its_snapshot() {
    let base = |os: &str| UserDataInput {
        server_id: "5e848339ed8dd52b946f0386".into(),
        os: os_image(os).unwrap(),
        hostname: "host-0".into(),
        ssh_keys: vec![ssh_key(1), ssh_key(2)],
        private_ip: "10.0.0.2".into(),
        public_ip: Some("198.51.100.2".into()),
        microk8s: None,
    };
    let cases = vec![
        ("ubuntu-plain", base("ubuntu/bionic")),
        ("debian-plain", base("debian/bookworm")),
        (
            "ubuntu-no-keys-private-only",
            UserDataInput {
                ssh_keys: vec![],
                public_ip: None,
                ..base("ubuntu/noble")
            },
        ),
        // Quotes, colons and a YAML-ish comment in values must stay data.
        (
            "ubuntu-awkward-values",
            UserDataInput {
                hostname: "Web(1).Prod".into(),
                ssh_keys: vec![format!("{} \"quoted\": #not-a-comment", ssh_key(3))],
                ..base("ubuntu/jammy")
            },
        ),
        (
            "ubuntu-microk8s-control-plane",
            UserDataInput {
                microk8s: Some(node(ClusterRole::ControlPlane)),
                ..base("ubuntu/jammy")
            },
        ),
        (
            "ubuntu-microk8s-worker",
            UserDataInput {
                microk8s: Some(node(ClusterRole::Worker)),
                ..base("ubuntu/jammy")
            },
        ),
        (
            "debian-microk8s-control-plane",
            UserDataInput {
                microk8s: Some(node(ClusterRole::ControlPlane)),
                ..base("debian/bookworm")
            },
        ),
        (
            "debian-microk8s-worker",
            UserDataInput {
                microk8s: Some(node(ClusterRole::Worker)),
                ..base("debian/bookworm")
            },
        ),
    ];
    for (name, input) in cases {
        let doc = render_user_data(&input).unwrap();
        assert!(doc.starts_with("#cloud-config\n"), "{name}");
        cloud_init_schema(&doc)
            .unwrap_or_else(|e| panic!("{name} fails cloud-init schema: {e}\n{doc}"));
        check_snapshot(name, &doc);
        for k in &input.ssh_keys {
            assert!(
                doc.contains(&serde_json::to_string(k).unwrap()),
                "{name}: key missing"
            );
        }
    }
    // The checker itself refuses a broken document (so the checks above can fail).
    assert!(cloud_init_schema("#cloud-config\nruncmd: 5\n").is_err());
}

#[test]
fn tenant_user_data_rides_beside_ours_in_a_multipart_archive() {
    let ours = render_user_data(&UserDataInput {
        server_id: "s".into(),
        os: os_image("ubuntu/jammy").unwrap(),
        hostname: "h".into(),
        ssh_keys: vec![ssh_key(1)],
        private_ip: "10.0.0.2".into(),
        public_ip: None,
        microk8s: None,
    })
    .unwrap();
    let theirs = "#cloud-config\npackages: [nginx]\n";
    let m = combine_user_data(&ours, Some(theirs));
    let boundary = "--==INGOT-USER-DATA==";
    let parts: Vec<&str> = m.split(boundary).collect();
    assert_eq!(parts.len(), 4, "preamble, two parts, closing: {m}");
    for (i, part) in parts[1..3].iter().enumerate() {
        let (headers, body) = part.split_once("\n\n").unwrap();
        assert!(
            headers.contains("Content-Type: text/cloud-config"),
            "part {i}: {headers}"
        );
        cloud_init_schema(body).unwrap_or_else(|e| panic!("part {i}: {e}\n{body}"));
    }
    assert!(parts[2].contains("Merge-Type: list(append)"));
}

/// Pulls the join token and address out of a node's user-data.
fn join_facts(doc: &str) -> (Option<String>, Option<String>) {
    let token = doc.lines().find(|l| l.contains("add-node")).map(|l| {
        let after = l.split("--token, \"").nth(1).unwrap();
        after.split('"').next().unwrap().to_owned()
    });
    let join = doc.lines().find(|l| l.contains("microk8s join ")).map(|l| {
        let after = l.split("microk8s join ").nth(1).unwrap();
        after.split(' ').next().unwrap().to_owned()
    });
    (token, join)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_forms_itself_from_cloud_init() {
    let r = cloud(3, false).await.unwrap();
    let t = tenant(&r, "kube", 5).await;
    let body = json!({
        "name": "demo",
        "nodes": 3,
        "type": "d0.t1.tiny",
        "location": "PHX",
        "microk8sChannel": "1.30/stable",
        "addons": ["dns", "ingress", "dashboard"],
        "sshKeys": [ssh_key(7)],
    });
    for (bad, field) in [
        (
            json!({"nodes": 0, "type": "d0.t1.tiny", "location": "PHX"}),
            "nodes",
        ),
        (
            json!({"nodes": 2, "type": "d0.t1.tiny", "location": "PHX", "addons": ["x; rm -rf /"]}),
            "addons[0]",
        ),
        (
            json!({"nodes": 2, "type": "d0.t1.tiny", "location": "PHX", "microk8sChannel": "$(id)"}),
            "microk8sChannel",
        ),
    ] {
        let (st, v) = bmc(&r, &t.token, Method::POST, "/bmc/v1/clusters", Some(bad)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["validationErrors"][0]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{v}"
        );
    }
    let (st, c) = bmc(&r, &t.token, Method::POST, "/bmc/v1/clusters", Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{c}");
    let nodes = c["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let cp = &nodes[0];
    assert_eq!(c["controlPlane"]["serverId"], cp["id"]);
    let cp_addr = cp["privateIpAddresses"][0].as_str().unwrap().to_owned();
    assert_eq!(c["controlPlane"]["address"], cp_addr.as_str());
    let hostnames: Vec<&str> = nodes
        .iter()
        .map(|n| n["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(hostnames, ["demo-1", "demo-2", "demo-3"]);

    // Each node's rendered user-data: valid, and all agree on token and address.
    let (_, servers) = r
        .call(
            Some(&r.admin_key),
            Method::GET,
            "/api/v1/accounts/kube/servers",
            None,
        )
        .await;
    let mut tokens = Vec::new();
    for n in nodes {
        assert_eq!(n["clusterId"], c["id"]);
        let srv = servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == n["id"])
            .unwrap();
        let machine = srv["machineId"].as_str().unwrap();
        let resp = r
            .http
            .get(format!("{}/api/v1/machines/{machine}/user-data", r.url))
            .bearer_auth(&r.admin_key)
            .send()
            .await
            .unwrap();
        let doc = resp.text().await.unwrap();
        cloud_init_schema(&doc).unwrap_or_else(|e| panic!("{}: {e}\n{doc}", n["hostname"]));
        assert!(
            doc.contains("--channel=1.30/stable") && doc.contains(&ssh_key(7)),
            "{doc}"
        );
        let (token, join) = join_facts(&doc);
        if n["id"] == cp["id"] {
            let token = token.expect("control plane registers the token");
            assert_eq!(token.len(), 32);
            for addon in ["dns", "ingress", "dashboard"] {
                assert!(
                    doc.contains(&format!("[microk8s, enable, \"{addon}\"]")),
                    "{addon}: {doc}"
                );
            }
            assert!(join.is_none(), "the control plane joins nobody");
            tokens.push(token);
        } else {
            let join = join.expect("workers join the control plane");
            let (addr, token) = join.split_once(":25000/").unwrap();
            assert_eq!(addr, cp_addr);
            assert!(!doc.contains("add-node"), "workers do not register tokens");
            tokens.push(token.to_owned());
        }
    }
    assert!(tokens.iter().all(|t| t == &tokens[0]), "{tokens:?}");

    for n in nodes {
        wait_server(&r, &t.token, n["id"].as_str().unwrap(), "powered-on").await;
    }
    let (st, list) = bmc(&r, &t.token, Method::GET, "/bmc/v1/clusters", None).await;
    assert_eq!((st, list.as_array().unwrap().len()), (StatusCode::OK, 1));
    // No capacity for a second cluster: 406 and nothing left taken.
    let (st, v) = bmc(
        &r,
        &t.token,
        Method::POST,
        "/bmc/v1/clusters",
        Some(json!({"nodes": 2, "type": "d0.t1.tiny", "location": "PHX"})),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_ACCEPTABLE, "{v}");
    let (_, q) = bmc(&r, &t.token, Method::GET, "/bmc/v1/quotas", None).await;
    assert_eq!(q[0]["used"], 3);
    let (st, v) = bmc(
        &r,
        &t.token,
        Method::DELETE,
        &format!("/bmc/v1/clusters/{}", c["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(
        (st, v["serverIds"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(3)),
        "{v}"
    );
    let (_, list) = bmc(&r, &t.token, Method::GET, "/bmc/v1/servers", None).await;
    assert_eq!(list, json!([]));
    let (_, q) = bmc(&r, &t.token, Method::GET, "/bmc/v1/quotas", None).await;
    assert_eq!(q[0]["used"], 0);
}
