//! MAAS 2.0 API behaviour: describe/, op dispatch (query, `/op-<name>`, GET vs POST), form
//! encodings, MAAS error bodies, allocation constraints, deploy through the metadata
//! service, signals and status events, power parameters, tags, zones, pools, SSH keys.

mod common;
mod maas_support;

use common::{Options, Region, region};
use maas_support::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn fresh() -> Region {
    region(Options::default()).await.unwrap()
}

fn ids_of(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["system_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn describe_is_what_python_libmaas_bootstraps_from() {
    let r = fresh().await;
    let reply = send(&r, None, Method::GET, "/MAAS/api/2.0/describe/", Body::None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), "application/json");
    let d = reply.json();
    let host = r.url.trim_start_matches("http://");
    let by_name = |name: &str| -> Value {
        d["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let machine = by_name("MachineHandler");
    assert_eq!(machine["anon"], Value::Null);
    assert_eq!(
        machine["auth"]["path"],
        "/MAAS/api/2.0/machines/{system_id}/"
    );
    assert_eq!(
        machine["auth"]["uri"],
        format!("http://{host}/MAAS/api/2.0/machines/{{system_id}}/")
    );
    assert_eq!(machine["auth"]["params"], json!(["system_id"]));
    let actions: Vec<(String, String, Value)> = machine["auth"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["method"].as_str().unwrap().to_owned(),
                a["op"].clone(),
            )
        })
        .collect();
    for want in [
        ("read", "GET", Value::Null),
        ("deploy", "POST", json!("deploy")),
        ("release", "POST", json!("release")),
        ("query_power_state", "GET", json!("query_power_state")),
        ("power_on", "POST", json!("power_on")),
        ("commission", "POST", json!("commission")),
    ] {
        let want = (want.0.to_owned(), want.1.to_owned(), want.2);
        assert!(actions.contains(&want), "{want:?} in {actions:?}");
    }
    assert_eq!(
        by_name("MachinesHandler")["auth"]["path"],
        "/MAAS/api/2.0/machines/"
    );
    assert_eq!(
        by_name("VersionHandler")["anon"]["path"],
        "/MAAS/api/2.0/version/"
    );
    assert_eq!(
        by_name("ResourcePoolHandler")["auth"]["path"],
        "/MAAS/api/2.0/resourcepool/{id}/"
    );
    assert_eq!(
        by_name("SSHKeysHandler")["auth"]["path"],
        "/MAAS/api/2.0/account/prefs/sshkeys/"
    );
    assert_eq!(
        by_name("DiscoveriesHandler")["auth"]["path"],
        "/MAAS/api/2.0/discovery/"
    );
    assert_eq!(
        d["handlers"].as_array().unwrap().len(),
        d["resources"].as_array().unwrap().len()
    );
    // Every handler answers on its path (no describe entry without a route).
    for res in d["resources"].as_array().unwrap() {
        let h = if res["auth"].is_null() {
            &res["anon"]
        } else {
            &res["auth"]
        };
        if h["params"].as_array().unwrap().is_empty()
            && h["actions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["name"] == "read")
        {
            let reply = call(
                &r,
                &r.admin_key,
                Method::GET,
                h["path"].as_str().unwrap(),
                Body::None,
            )
            .await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{}: {}",
                h["path"],
                reply.text
            );
            assert!(
                reply.content_type().starts_with("application/json"),
                "{}",
                h["path"]
            );
        }
    }
    let v = send(&r, None, Method::GET, "/MAAS/api/2.0/version/", Body::None)
        .await
        .json();
    assert!(
        v["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("authenticate-api"))
    );
}

#[tokio::test]
async fn op_dispatch_forms_and_error_bodies() {
    let r = fresh().await;
    let ids = commission_all(&r).await;
    let key = r.admin_key.clone();

    // Read-only ops are GET; using POST (or GET for a POST op) is MAAS's 400.
    let wrong = call(
        &r,
        &key,
        Method::GET,
        "/MAAS/api/2.0/machines/?op=allocate",
        Body::None,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong.text, "Unrecognised signature: method=GET op=allocate");
    assert!(wrong.content_type().starts_with("text/plain"));
    let unknown = call(
        &r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/?op=frobnicate",
        Body::Multipart(&[]),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.text);
    let q = call(
        &r,
        &key,
        Method::POST,
        &format!("/MAAS/api/2.0/machines/{}/?op=query_power_state", ids[0]),
        Body::None,
    )
    .await;
    assert_eq!(
        q.status,
        StatusCode::BAD_REQUEST,
        "query_power_state is GET only"
    );

    // The `/op-<name>` form, op in a urlencoded body, op in a multipart body.
    let a = call(
        &r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/op-allocate",
        Body::Form(&[("system_id", &ids[0])]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["status_name"], "Allocated");
    let b = call(
        &r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/",
        Body::Form(&[("op", "allocate"), ("system_id", &ids[1])]),
    )
    .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    let c = call(
        &r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/",
        Body::Multipart(&[("op", "allocate"), ("system_id", &ids[2])]),
    )
    .await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);
    let state = get_ok(
        &r,
        &key,
        &format!("/MAAS/api/2.0/machines/{}/op-query_power_state", ids[0]),
    )
    .await;
    assert!(
        ["on", "off", "unknown"].contains(&state["state"].as_str().unwrap()),
        "{state}"
    );

    // Nothing left: 409 with a plain-text body.
    let none = call(
        &r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/?op=allocate",
        Body::Multipart(&[]),
    )
    .await;
    assert_eq!(none.status, StatusCode::CONFLICT, "{}", none.text);
    assert!(none.content_type().starts_with("text/plain"));
    assert!(
        none.text
            .starts_with("No available machine matches constraints"),
        "{}",
        none.text
    );

    // Validation errors are MAAS's JSON object of field -> messages.
    let bad = call(
        &r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/?op=allocate",
        Body::Form(&[("cpu_count", "lots")]),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let body = bad.json();
    assert!(
        body["cpu_count"][0].as_str().unwrap().contains("lots"),
        "{body}"
    );
    let unsupported = call(
        &r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/?op=allocate",
        Body::Form(&[("storage", "root:100")]),
    )
    .await;
    assert_eq!(unsupported.status, StatusCode::BAD_REQUEST);
    assert!(unsupported.json()["storage"].is_array());
    let typo = call(
        &r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/?op=allocate",
        Body::Form(&[("cpus", "2")]),
    )
    .await;
    assert_eq!(typo.status, StatusCode::BAD_REQUEST);
    assert!(
        typo.json()["cpus"].is_array(),
        "unknown parameters are named"
    );
    let bad_status = call(
        &r,
        &key,
        Method::GET,
        "/MAAS/api/2.0/machines/?status=sleepy",
        Body::None,
    )
    .await;
    assert_eq!(bad_status.status, StatusCode::BAD_REQUEST);
    let no_route = call(&r, &key, Method::GET, "/MAAS/api/2.0/widgets/", Body::None).await;
    assert_eq!(no_route.status, StatusCode::NOT_FOUND);

    // List filters.
    let allocated = get_ok(&r, &key, "/MAAS/api/2.0/machines/?status=allocated").await;
    assert_eq!(ids_of(&allocated).len(), 3);
    let two = get_ok(
        &r,
        &key,
        &format!("/MAAS/api/2.0/machines/?id={}&id={}", ids[0], ids[1]),
    )
    .await;
    let mut got = ids_of(&two);
    got.sort();
    let mut want = vec![ids[0].clone(), ids[1].clone()];
    want.sort();
    assert_eq!(got, want);
    let m0 = machine(&r, &key, &ids[0]).await;
    let by_host = get_ok(
        &r,
        &key,
        &format!(
            "/MAAS/api/2.0/machines/?hostname={}",
            m0["fqdn"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(ids_of(&by_host), vec![ids[0].clone()]);
    let mac = m0["boot_interface"]["mac_address"].as_str().unwrap();
    let by_mac = get_ok(
        &r,
        &key,
        &format!("/MAAS/api/2.0/machines/?mac_address={mac}"),
    )
    .await;
    assert_eq!(ids_of(&by_mac), vec![ids[0].clone()]);
    assert!(ids_of(&get_ok(&r, &key, "/MAAS/api/2.0/machines/?zone=nowhere").await).is_empty());
}

#[tokio::test]
async fn machine_json_has_the_fields_clients_read() {
    let r = fresh().await;
    let ids = commission_all(&r).await;
    let m = machine(&r, &r.admin_key, &ids[0]).await;
    for field in [
        "system_id",
        "hostname",
        "fqdn",
        "domain",
        "architecture",
        "status",
        "status_name",
        "status_action",
        "status_message",
        "power_type",
        "power_state",
        "cpu_count",
        "memory",
        "osystem",
        "distro_series",
        "hwe_kernel",
        "min_hwe_kernel",
        "owner",
        "owner_data",
        "locked",
        "netboot",
        "pool",
        "zone",
        "tag_names",
        "ip_addresses",
        "interface_set",
        "boot_interface",
        "boot_disk",
        "blockdevice_set",
        "node_type",
        "disable_ipv4",
        "pod",
        "resource_uri",
        "raids",
        "volume_groups",
        "bcaches",
        "cache_sets",
        "storage",
    ] {
        assert!(m.get(field).is_some(), "missing {field} in {m}");
    }
    assert_eq!(m["status"], 4);
    assert_eq!(m["status_name"], "Ready");
    assert!(m["cpu_count"].as_u64().unwrap() > 0 && m["memory"].as_u64().unwrap() > 0);
    assert_eq!(
        m["resource_uri"],
        format!("/MAAS/api/2.0/machines/{}/", ids[0])
    );
    assert_eq!(m["zone"]["name"], "default");
    assert_eq!(m["pool"]["name"], "default");
    assert_eq!(m["owner"], Value::Null);
    assert_eq!(m["node_type"], 0);
    assert_eq!(
        m["boot_interface"]["mac_address"],
        m["interface_set"][0]["mac_address"]
    );
    assert!(m["blockdevice_set"][0]["size"].as_u64().unwrap() > 0);
    assert!(m.get("power_parameters").is_none());
    assert!(!m.to_string().contains("power_pass"));
}

#[tokio::test]
async fn allocation_constraints_sqlite() {
    allocation_constraints(&fresh().await).await;
}

/// Zones, pools, tags, SSH keys and passwords are store tables: PostgreSQL too.
#[tokio::test]
async fn allocation_constraints_postgres() {
    let Some(r) = region(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    allocation_constraints(&r).await;
}

async fn allocation_constraints(r: &Region) {
    let ids = commission_all(r).await;
    let key = r.admin_key.clone();
    let ms: Vec<Value> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(machine(r, &key, id).await);
        }
        v
    };
    let biggest = ms.iter().max_by_key(|m| m["cpu_count"].as_u64()).unwrap();
    let cpus = biggest["cpu_count"].as_u64().unwrap().to_string();
    let mem = biggest["memory"].as_u64().unwrap().to_string();

    // A manual tag, applied by hand.
    post_ok(
        r,
        &key,
        "/MAAS/api/2.0/tags/",
        &[("name", "fast"), ("comment", "hand-picked")],
    )
    .await;
    let sys = biggest["system_id"].as_str().unwrap();
    let upd = post_ok(
        r,
        &key,
        "/MAAS/api/2.0/tags/fast/?op=update_nodes",
        &[("add", sys)],
    )
    .await;
    assert_eq!(upd, json!({"added": 1, "removed": 0}));
    let tagged = get_ok(r, &key, "/MAAS/api/2.0/tags/fast/?op=machines").await;
    assert_eq!(ids_of(&tagged), vec![sys.to_owned()]);

    // Constraints that exclude it: 409, and nothing is allocated.
    for form in [
        vec![("tags", "fast"), ("cpu_count", "1000")],
        vec![("tags", "fast"), ("not_tags", "fast")],
        vec![
            ("tags", "fast"),
            ("zone", "default"),
            ("pool", "default"),
            ("mem", "99999999"),
        ],
        vec![("tags", "slow")],
        vec![("name", "no-such-host")],
    ] {
        let reply = call(
            r,
            &key,
            Method::POST,
            "/MAAS/api/2.0/machines/?op=allocate",
            Body::Form(&form),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{form:?}: {}",
            reply.text
        );
    }
    let unknown_zone = call(
        r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/?op=allocate",
        Body::Form(&[("zone", "mars")]),
    )
    .await;
    assert_eq!(unknown_zone.status, StatusCode::BAD_REQUEST);
    assert!(unknown_zone.json()["zone"].is_array());
    assert!(ids_of(&get_ok(r, &key, "/MAAS/api/2.0/machines/?status=allocated").await).is_empty());

    // The constraints that match only it.
    let m = post_ok(
        r,
        &key,
        "/MAAS/api/2.0/machines/?op=allocate",
        &[
            ("tags", "fast"),
            ("cpu_count", &cpus),
            ("mem", &mem),
            ("zone", "default"),
            ("pool", "default"),
            ("arch", "amd64"),
        ],
    )
    .await;
    assert_eq!(m["system_id"], sys);
    assert_eq!(m["status_name"], "Allocated");
    assert_eq!(m["owner"], "admin");
    // By name (FQDN accepted) and by system_id.
    let other = ms.iter().find(|x| x["system_id"] != sys).unwrap();
    let by_name = post_ok(
        r,
        &key,
        "/MAAS/api/2.0/machines/?op=allocate",
        &[("name", other["fqdn"].as_str().unwrap())],
    )
    .await;
    assert_eq!(by_name["system_id"], other["system_id"]);
    let again = call(
        r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/?op=allocate",
        Body::Form(&[("system_id", sys)]),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "already allocated");

    // Removing the tag; deleting it takes it off the machines.
    let rm = post_ok(
        r,
        &key,
        "/MAAS/api/2.0/tags/fast/?op=update_nodes",
        &[("remove", sys)],
    )
    .await;
    assert_eq!(rm, json!({"added": 0, "removed": 1}));
    post_ok(
        r,
        &key,
        "/MAAS/api/2.0/tags/fast/?op=update_nodes",
        &[("add", sys)],
    )
    .await;
    let del = call(
        r,
        &key,
        Method::DELETE,
        "/MAAS/api/2.0/tags/fast/",
        Body::None,
    )
    .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert_eq!(machine(r, &key, sys).await["tag_names"], json!([]));
    // XPath definitions are refused by name.
    let xpath = call(
        r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/tags/",
        Body::Form(&[
            ("name", "virtual"),
            ("definition", "//node[@class='system']"),
        ]),
    )
    .await;
    assert_eq!(xpath.status, StatusCode::BAD_REQUEST);
    assert!(xpath.json()["definition"].is_array());
}

#[tokio::test]
async fn deploy_completes_when_the_deployed_os_reads_user_data() {
    let r = fresh().await;
    let ids = commission_all(&r).await;
    let key = r.admin_key.clone();
    let id = &ids[0];
    make_manual(&r, id).await;
    // Ready + deploy = implicit allocation; user_data is base64 (wrapped, as Python sends it).
    let m = post_ok(
        &r,
        &key,
        &format!("/MAAS/api/2.0/machines/{id}/?op=deploy"),
        &[
            (
                "user_data",
                "I2Nsb3VkLWNvbmZp\nZwpydW5jbWQ6IFtb\nZWNobywgaGldXQo=\n",
            ),
            ("distro_series", "ubuntu/jammy"),
            ("hwe_kernel", "ga-22.04"),
        ],
    )
    .await;
    assert_eq!(m["status_name"], "Deploying");
    assert_eq!(m["owner"], "admin");
    assert_eq!(
        (m["osystem"].as_str(), m["distro_series"].as_str()),
        (Some("ubuntu"), Some("jammy"))
    );
    let token = get_ok(
        &r,
        &key,
        &format!("/MAAS/api/2.0/machines/{id}/?op=get_token"),
    )
    .await;
    let mk = format!(
        "{}:{}:{}",
        token["consumer_key"].as_str().unwrap(),
        token["token_key"].as_str().unwrap(),
        token["token_secret"].as_str().unwrap()
    );

    // meta-data listings and items, as cloud-init reads them (including a doubled slash).
    let index = call(
        &r,
        &mk,
        Method::GET,
        "/MAAS/metadata/2012-03-01/",
        Body::None,
    )
    .await;
    assert_eq!(index.text, "meta-data\nuser-data\n");
    let listing = call(
        &r,
        &mk,
        Method::GET,
        "/MAAS/metadata/2012-03-01/meta-data/",
        Body::None,
    )
    .await;
    assert!(
        listing.text.contains("instance-id\nlocal-hostname\n"),
        "{}",
        listing.text
    );
    assert!(
        !listing.text.contains("public-keys"),
        "the owner has no keys yet"
    );
    let host = call(
        &r,
        &mk,
        Method::GET,
        "/MAAS/metadata//latest/meta-data/local-hostname",
        Body::None,
    )
    .await;
    assert_eq!(host.text, m["fqdn"].as_str().unwrap());
    let vendor = call(
        &r,
        &mk,
        Method::GET,
        "/MAAS/metadata/latest/meta-data/vendor-data",
        Body::None,
    )
    .await;
    assert!(
        vendor.text.starts_with("cloud-init: |\n  #cloud-config\n"),
        "{}",
        vendor.text
    );
    let nope = call(
        &r,
        &mk,
        Method::GET,
        "/MAAS/metadata/2019-01-01/meta-data/instance-id",
        Body::None,
    )
    .await;
    assert_eq!(nope.status, StatusCode::NOT_FOUND);
    // Reading meta-data does not finish the deployment.
    assert_eq!(machine(&r, &key, id).await["status_name"], "Deploying");

    // The owner's SSH keys appear once added.
    let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeployTestKeyDeployTestKeyDeployTest00 t@ingot";
    let created = call(
        &r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/account/prefs/sshkeys/",
        Body::Multipart(&[("key", k)]),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let keys = call(
        &r,
        &mk,
        Method::GET,
        "/MAAS/metadata/2012-03-01/meta-data/public-keys",
        Body::None,
    )
    .await;
    assert_eq!(keys.text, k);

    // The first user-data read marks it Deployed; the data is served decoded.
    let ud = call(
        &r,
        &mk,
        Method::GET,
        "/MAAS/metadata/2012-03-01/user-data",
        Body::None,
    )
    .await;
    assert_eq!(ud.status, StatusCode::OK);
    assert_eq!(ud.text, "#cloud-config\nruncmd: [[echo, hi]]\n");
    assert_eq!(ud.content_type(), "application/octet-stream");
    let m = machine(&r, &key, id).await;
    assert_eq!(m["status_name"], "Deployed");
    assert!(!m["netboot"].as_bool().unwrap());
    // Later reads still serve it and change nothing.
    let again = call(
        &r,
        &mk,
        Method::GET,
        "/MAAS/metadata/latest/user-data",
        Body::None,
    )
    .await;
    assert_eq!(again.text, ud.text);
    let events = get_ok(
        &r,
        &key,
        &format!("/MAAS/api/2.0/events/?op=query&id={id}&limit=5"),
    )
    .await;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["description"] == "deployed: user-data read"),
        "{events}"
    );

    // Release (quick erase) is accepted; user data is gone after the release completes.
    let rel = post_ok(
        &r,
        &key,
        &format!("/MAAS/api/2.0/machines/{id}/?op=release"),
        &[("quick_erase", "true"), ("erase", "True")],
    )
    .await;
    assert_eq!(rel["status_name"], "Disk erasing");
    // Manual power: nothing boots the eraser. The erase finishes with the ephemeral
    // environment's OK signal.
    let ok = call(
        &r,
        &mk,
        Method::POST,
        "/MAAS/metadata/2012-03-01/?op=signal",
        Body::Multipart(&[("status", "OK")]),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let m = wait_maas_status(&r, &key, id, "Ready").await;
    assert_eq!(m["owner"], Value::Null);
    let gone = call(
        &r,
        &mk,
        Method::GET,
        "/MAAS/metadata/latest/user-data",
        Body::None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn signals_and_status_events() {
    let r = fresh().await;
    let ids = commission_all(&r).await;
    let key = r.admin_key.clone();
    let token_for = |t: Value| {
        format!(
            "{}:{}:{}",
            t["consumer_key"].as_str().unwrap(),
            t["token_key"].as_str().unwrap(),
            t["token_secret"].as_str().unwrap()
        )
    };

    // Commissioning finished by the ephemeral environment's OK signal.
    let a = &ids[0];
    make_manual(&r, a).await;
    post_ok(
        &r,
        &key,
        &format!("/MAAS/api/2.0/machines/{a}/?op=commission"),
        &[],
    )
    .await;
    let mk = token_for(
        get_ok(
            &r,
            &key,
            &format!("/MAAS/api/2.0/machines/{a}/?op=get_token"),
        )
        .await,
    );
    let working = call(
        &r,
        &mk,
        Method::POST,
        "/MAAS/metadata/latest/",
        Body::Form(&[("op", "signal"), ("status", "WORKING")]),
    )
    .await;
    assert_eq!(working.status, StatusCode::OK, "{}", working.text);
    assert_eq!(machine(&r, &key, a).await["status_name"], "Commissioning");
    let bad = call(
        &r,
        &mk,
        Method::POST,
        "/MAAS/metadata/latest/?op=signal",
        Body::Form(&[("status", "GREAT")]),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json()["status"].is_array());
    let ok = call(
        &r,
        &mk,
        Method::POST,
        "/MAAS/metadata/latest/?op=signal",
        Body::Form(&[("status", "OK")]),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(machine(&r, &key, a).await["status_name"], "Ready");
    // A signal from a machine with no workflow running is MAAS's 409.
    let late = call(
        &r,
        &mk,
        Method::POST,
        "/MAAS/metadata/latest/?op=signal",
        Body::Form(&[("status", "OK")]),
    )
    .await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.text);

    // A deployment failed by a top-level FAIL finish event on the status webhook.
    let b = &ids[1];
    make_manual(&r, b).await;
    post_ok(
        &r,
        &key,
        &format!("/MAAS/api/2.0/machines/{b}/?op=deploy"),
        &[],
    )
    .await;
    let bk = token_for(
        get_ok(
            &r,
            &key,
            &format!("/MAAS/api/2.0/machines/{b}/?op=get_token"),
        )
        .await,
    );
    let hook = format!("/MAAS/metadata/status/{b}");
    let progress = r#"{"event_type":"start","origin":"curtin","name":"cmd-install/stage-partitioning","description":"partitioning","timestamp":1700000000.0}"#;
    let reply = call(&r, &bk, Method::POST, &hook, Body::Json(progress)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    let missing = call(
        &r,
        &bk,
        Method::POST,
        &hook,
        Body::Json(r#"{"event_type":"finish","origin":"curtin"}"#),
    )
    .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.json()["name"].is_array(), "{}", missing.text);
    // Another machine's credentials cannot post for this one.
    let other = call(&r, &mk, Method::POST, &hook, Body::Json(progress)).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let fail = r#"{"event_type":"finish","origin":"curtin","name":"cmd-install","description":"curtin failed","result":"FAIL"}"#;
    assert_eq!(
        call(&r, &bk, Method::POST, &hook, Body::Json(fail))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let m = machine(&r, &key, b).await;
    assert_eq!(m["status_name"], "Failed deployment");
    assert_eq!(m["status_message"], "curtin failed");

    // A deployment finished by cloud-init's modules-final event.
    let c = &ids[2];
    make_manual(&r, c).await;
    post_ok(
        &r,
        &key,
        &format!("/MAAS/api/2.0/machines/{c}/?op=deploy"),
        &[],
    )
    .await;
    let ck = token_for(
        get_ok(
            &r,
            &key,
            &format!("/MAAS/api/2.0/machines/{c}/?op=get_token"),
        )
        .await,
    );
    let done = r#"{"event_type":"finish","origin":"cloudinit","name":"modules-final","description":"running modules for final","result":"SUCCESS"}"#;
    let reply = call(
        &r,
        &ck,
        Method::POST,
        &format!("/MAAS/metadata/status/{c}"),
        Body::Json(done),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    assert_eq!(machine(&r, &key, c).await["status_name"], "Deployed");
}

#[tokio::test]
async fn power_parameters_on_update_and_machine_create_sqlite() {
    power_parameters_on_update_and_machine_create(&fresh().await).await;
}

/// Zones, pools, tags, SSH keys and passwords are store tables: PostgreSQL too.
#[tokio::test]
async fn power_parameters_on_update_and_machine_create_postgres() {
    let Some(r) = region(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    power_parameters_on_update_and_machine_create(&r).await;
}

async fn power_parameters_on_update_and_machine_create(r: &Region) {
    let ids = commission_all(r).await;
    let key = r.admin_key.clone();
    let id = &ids[0];
    let path = format!("/MAAS/api/2.0/machines/{id}/");
    let before = get_ok(r, &key, &format!("{path}?op=power_parameters")).await;
    assert!(before["power_address"].is_string());
    assert!(before.get("power_pass").is_none(), "{before}");

    // Merge: only power_user changes.
    let upd = call(
        r,
        &key,
        Method::PUT,
        &path,
        Body::Multipart(&[
            ("power_parameters_power_user", "operator"),
            ("power_parameters_skip_check", "true"),
        ]),
    )
    .await;
    assert_eq!(upd.status, StatusCode::OK, "{}", upd.text);
    let after = get_ok(r, &key, &format!("{path}?op=power_parameters")).await;
    assert_eq!(after["power_user"], "operator");
    assert_eq!(after["power_address"], before["power_address"]);
    // The stored password still works: power control goes through.
    let q = get_ok(r, &key, &format!("{path}?op=query_power_state")).await;
    assert!(["on", "off"].contains(&q["state"].as_str().unwrap()), "{q}");

    // Bad input names the field and writes nothing (not even the valid hostname).
    let host_before = machine(r, &key, id).await["hostname"].clone();
    for (form, field) in [
        (
            vec![
                ("hostname", "renamed"),
                ("power_parameters_power_colour", "blue"),
            ],
            "power_parameters_power_colour",
        ),
        (
            vec![("hostname", "renamed"), ("power_type", "wol")],
            "power_type",
        ),
        (
            vec![("hostname", "renamed"), ("power_type", "ipmi")],
            "power_parameters_power_address",
        ),
        (vec![("hostname", "renamed"), ("zone", "mars")], "zone"),
        (vec![("hostname", "bad_name!")], "hostname"),
        (
            vec![
                ("hostname", "renamed"),
                ("power_parameters_power_driver", "LAN_9"),
            ],
            "power_parameters_power_driver",
        ),
    ] {
        let reply = call(r, &key, Method::PUT, &path, Body::Form(&form)).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{form:?}: {}",
            reply.text
        );
        assert!(reply.json()[field].is_array(), "{form:?}: {}", reply.text);
    }
    assert_eq!(machine(r, &key, id).await["hostname"], host_before);

    // Zones and pools: create, move the machine, refuse deleting one in use.
    post_ok(
        r,
        &key,
        "/MAAS/api/2.0/zones/",
        &[("name", "rack-2"), ("description", "second rack")],
    )
    .await;
    let pool = post_ok(r, &key, "/MAAS/api/2.0/resourcepools/", &[("name", "gpu")]).await;
    let moved = call(
        r,
        &key,
        Method::PUT,
        &path,
        Body::Form(&[("zone", "rack-2"), ("pool", "gpu"), ("hostname", "renamed")]),
    )
    .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    let m = moved.json();
    assert_eq!(
        (
            m["zone"]["name"].as_str(),
            m["pool"]["name"].as_str(),
            m["hostname"].as_str()
        ),
        (Some("rack-2"), Some("gpu"), Some("renamed"))
    );
    assert_eq!(m["pool"]["id"], pool["id"]);
    let listed = get_ok(r, &key, "/MAAS/api/2.0/machines/?zone=rack-2&pool=gpu").await;
    assert_eq!(ids_of(&listed), vec![id.clone()]);
    let in_use = call(
        r,
        &key,
        Method::DELETE,
        "/MAAS/api/2.0/zones/rack-2/",
        Body::None,
    )
    .await;
    assert_eq!(in_use.status, StatusCode::CONFLICT, "{}", in_use.text);
    let by_id = get_ok(
        r,
        &key,
        &format!("/MAAS/api/2.0/resourcepool/{}/", pool["id"]),
    )
    .await;
    assert_eq!(by_id["name"], "gpu");

    // Creating a machine: MACs validated, power parameters as form fields, commissioning starts.
    let bad_mac = call(
        r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/",
        Body::Form(&[("mac_addresses", "nope"), ("architecture", "amd64")]),
    )
    .await;
    assert_eq!(bad_mac.status, StatusCode::BAD_REQUEST);
    assert!(bad_mac.json()["mac_addresses"].is_array());
    let created = call(
        r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/",
        Body::Multipart(&[
            ("architecture", "amd64/generic"),
            ("mac_addresses", "52:54:00:de:ad:01"),
            ("hostname", "added-by-hand"),
            ("power_type", "manual"),
        ]),
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let c = created.json();
    assert_eq!(c["status_name"], "Commissioning");
    assert_eq!(c["power_type"], "manual");
    let dup = call(
        r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/machines/",
        Body::Form(&[
            ("mac_addresses", "52:54:00:de:ad:01"),
            ("commission", "false"),
        ]),
    )
    .await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{}", dup.text);
}

#[tokio::test]
async fn users_keys_login_and_read_only_resources_sqlite() {
    users_keys_login_and_read_only_resources(&fresh().await).await;
}

/// Zones, pools, tags, SSH keys and passwords are store tables: PostgreSQL too.
#[tokio::test]
async fn users_keys_login_and_read_only_resources_postgres() {
    let Some(r) = region(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    users_keys_login_and_read_only_resources(&r).await;
}

async fn users_keys_login_and_read_only_resources(r: &Region) {
    let key = r.admin_key.clone();
    let who = get_ok(r, &key, "/MAAS/api/2.0/users/?op=whoami").await;
    assert_eq!(
        (who["username"].as_str(), who["is_superuser"].as_bool()),
        (Some("admin"), Some(true))
    );

    // A user with a password can log in and gets a working key.
    let short = call(
        r,
        &key,
        Method::POST,
        "/MAAS/api/2.0/users/",
        Body::Form(&[
            ("username", "carol"),
            ("password", "short"),
            ("email", "c@example.com"),
            ("is_superuser", "0"),
        ]),
    )
    .await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    post_ok(
        r,
        &key,
        "/MAAS/api/2.0/users/",
        &[
            ("username", "carol"),
            ("password", "a-long-password"),
            ("email", "c@example.com"),
            ("is_superuser", "0"),
        ],
    )
    .await;
    let wrong = send(
        r,
        None,
        Method::POST,
        "/MAAS/accounts/authenticate/",
        Body::Form(&[
            ("username", "carol"),
            ("password", "wrong-password"),
            ("consumer", "t"),
        ]),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let login = send(
        r,
        None,
        Method::POST,
        "/MAAS/accounts/authenticate/",
        Body::Multipart(&[
            ("username", "carol"),
            ("password", "a-long-password"),
            ("consumer", "test@host"),
        ]),
    )
    .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    let t = login.json();
    let carol = format!(
        "{}:{}:{}",
        t["consumer_key"].as_str().unwrap(),
        t["token_key"].as_str().unwrap(),
        t["token_secret"].as_str().unwrap()
    );
    let me = get_ok(r, &carol, "/MAAS/api/2.0/users/?op=whoami").await;
    assert_eq!(
        (
            me["username"].as_str(),
            me["email"].as_str(),
            me["is_superuser"].as_bool()
        ),
        (Some("carol"), Some("c@example.com"), Some(false))
    );
    // A non-admin lists only herself and cannot read other users.
    assert_eq!(
        get_ok(r, &carol, "/MAAS/api/2.0/users/")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        call(
            r,
            &carol,
            Method::GET,
            "/MAAS/api/2.0/users/admin/",
            Body::None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    // Account tokens: create, list (no secrets), delete; the deleted key stops working.
    let tok = post_ok(
        r,
        &carol,
        "/MAAS/api/2.0/account/?op=create_authorisation_token",
        &[("name", "ci")],
    )
    .await;
    let second = format!(
        "{}:{}:{}",
        tok["consumer_key"].as_str().unwrap(),
        tok["token_key"].as_str().unwrap(),
        tok["token_secret"].as_str().unwrap()
    );
    get_ok(r, &second, "/MAAS/api/2.0/users/?op=whoami").await;
    let list = get_ok(
        r,
        &carol,
        "/MAAS/api/2.0/account/?op=list_authorisation_tokens",
    )
    .await;
    assert!(
        !list
            .to_string()
            .contains(tok["token_secret"].as_str().unwrap()),
        "{list}"
    );
    let del = call(
        r,
        &carol,
        Method::POST,
        "/MAAS/api/2.0/account/?op=delete_authorisation_token",
        Body::Form(&[("token_key", tok["token_key"].as_str().unwrap())]),
    )
    .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
    let dead = call(
        r,
        &second,
        Method::GET,
        "/MAAS/api/2.0/users/?op=whoami",
        Body::None,
    )
    .await;
    assert_eq!(dead.status, StatusCode::UNAUTHORIZED);

    // SSH keys are per user; bad keys are refused by field.
    let bad = call(
        r,
        &carol,
        Method::POST,
        "/MAAS/api/2.0/account/prefs/sshkeys/",
        Body::Form(&[("key", "not a key")]),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json()["key"].is_array());
    let k = call(
        r,
        &carol,
        Method::POST,
        "/MAAS/api/2.0/account/prefs/sshkeys/",
        Body::Form(&[(
            "key",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC0carolcarolcarol carol@laptop",
        )]),
    )
    .await;
    assert_eq!(k.status, StatusCode::CREATED, "{}", k.text);
    let kid = k.json()["id"].as_i64().unwrap();
    assert!(
        get_ok(r, &key, "/MAAS/api/2.0/account/prefs/sshkeys/")
            .await
            .as_array()
            .unwrap()
            .is_empty(),
        "admin has none"
    );
    assert_eq!(
        call(
            r,
            &key,
            Method::GET,
            &format!("/MAAS/api/2.0/account/prefs/sshkeys/{kid}/"),
            Body::None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            r,
            &carol,
            Method::DELETE,
            &format!("/MAAS/api/2.0/account/prefs/sshkeys/{kid}/"),
            Body::None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );

    // Read-only networking and images, domains, discovery, config.
    assert_eq!(
        get_ok(r, &key, "/MAAS/api/2.0/fabrics/").await[0]["name"],
        "fabric-0"
    );
    assert_eq!(
        get_ok(r, &key, "/MAAS/api/2.0/fabrics/0/vlans/").await[0]["vid"],
        0
    );
    assert_eq!(
        get_ok(r, &key, "/MAAS/api/2.0/fabrics/0/vlans/0/").await["name"],
        "untagged"
    );
    assert!(get_ok(r, &key, "/MAAS/api/2.0/subnets/").await.is_array());
    assert_eq!(get_ok(r, &key, "/MAAS/api/2.0/ipranges/").await, json!([]));
    assert_eq!(
        get_ok(r, &key, "/MAAS/api/2.0/boot-resources/").await[0]["name"],
        "ubuntu/noble"
    );
    assert_eq!(
        get_ok(r, &key, "/MAAS/api/2.0/domains/").await[0]["name"],
        "maas"
    );
    assert_eq!(
        get_ok(
            r,
            &key,
            "/MAAS/api/2.0/maas/?op=get_config&name=default_distro_series"
        )
        .await,
        json!("noble")
    );
    // The sim fleet netbooted, so discovery has seen its MACs.
    let disc = get_ok(r, &key, "/MAAS/api/2.0/discovery/").await;
    let list = disc.as_array().unwrap();
    if let Some(first) = list.first() {
        let id = first["discovery_id"].as_str().unwrap();
        assert_eq!(
            get_ok(r, &key, &format!("/MAAS/api/2.0/discovery/{id}/")).await["mac_address"],
            first["mac_address"]
        );
    }
    assert_eq!(
        call(
            r,
            &key,
            Method::GET,
            "/MAAS/api/2.0/discovery/nope/",
            Body::None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn broken_fixed_abort_bulk_release_and_user_deploy() {
    let r = fresh().await;
    let ids = commission_all(&r).await;
    let key = r.admin_key.clone();
    let m = |i: usize| format!("/MAAS/api/2.0/machines/{}/", ids[i]);

    let broken = post_ok(
        &r,
        &key,
        &format!("{}?op=mark_broken", m(0)),
        &[("comment", "fan noise")],
    )
    .await;
    assert_eq!(
        (
            broken["status_name"].as_str(),
            broken["status_message"].as_str()
        ),
        (Some("Broken"), Some("fan noise"))
    );
    let again = call(
        &r,
        &key,
        Method::POST,
        &format!("{}?op=mark_broken", m(0)),
        Body::Multipart(&[]),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let fixed = post_ok(&r, &key, &format!("{}?op=mark_fixed", m(0)), &[]).await;
    assert_eq!(fixed["status_name"], "Ready");

    // Abort a commissioning that nothing will finish (manual power).
    make_manual(&r, &ids[1]).await;
    assert_eq!(
        post_ok(&r, &key, &format!("{}?op=commission", m(1)), &[]).await["status_name"],
        "Commissioning"
    );
    assert_eq!(
        post_ok(&r, &key, &format!("{}?op=abort", m(1)), &[]).await["status_name"],
        "New"
    );

    // A user deploys a Ready machine directly: it is allocated to them on the way.
    let dana = r.user_key("dana", false).await;
    let d = post_ok(
        &r,
        &dana,
        &format!("{}?op=deploy", m(2)),
        &[("distro_series", "noble")],
    )
    .await;
    assert_eq!(
        (d["status_name"].as_str(), d["owner"].as_str()),
        (Some("Deploying"), Some("dana"))
    );
    wait_maas_status(&r, &dana, &ids[2], "Deployed").await;
    // Bulk release checks every id first: an unknown one releases nothing.
    let bad = call(
        &r,
        &dana,
        Method::POST,
        "/MAAS/api/2.0/machines/?op=release",
        Body::Form(&[("machines", &ids[2]), ("machines", "zzzzzz")]),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    assert_eq!(machine(&r, &dana, &ids[2]).await["status_name"], "Deployed");
    let released = post_ok(
        &r,
        &dana,
        "/MAAS/api/2.0/machines/?op=release",
        &[("machines", &ids[2])],
    )
    .await;
    assert_eq!(released, json!([ids[2]]));
    wait_maas_status(&r, &dana, &ids[2], "Ready").await;
}
