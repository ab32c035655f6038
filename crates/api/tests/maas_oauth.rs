//! OAuth 1.0a PLAINTEXT on the MAAS API and the metadata service: what is refused (401 with
//! `WWW-Authenticate` and `Date`), and who sees which machines.

mod common;
mod maas_support;

use common::{Options, Region, region};
use maas_support::*;
use reqwest::{Method, StatusCode};

async fn sqlite_region() -> Region {
    region(Options::default()).await.unwrap()
}

fn assert_refused(reply: &Reply, why: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "{why}: {}",
        reply.text
    );
    assert_eq!(
        reply
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("OAuth realm=\"OAuth\""),
        "{why}"
    );
    assert!(
        reply.headers.contains_key("date"),
        "{why}: 401 without Date"
    );
    assert!(
        reply.text.starts_with("Authorization Error: "),
        "{why}: {}",
        reply.text
    );
}

const MACHINES: &str = "/MAAS/api/2.0/machines/";

async fn oauth_refusals(r: &Region) {
    let key = r.admin_key.clone();
    let (ck, tk, _) = {
        let mut p = key.split(':');
        (
            p.next().unwrap().to_owned(),
            p.next().unwrap().to_owned(),
            p.next().unwrap().to_owned(),
        )
    };

    // The right key works.
    let ok = send(
        r,
        Some(&oauth_header(&key, &fresh_nonce(), now())),
        Method::GET,
        MACHINES,
        Body::None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert!(ok.headers.contains_key("date"));

    // Wrong signature (token secret).
    let wrong = format!("{ck}:{tk}:not-the-secret");
    assert_refused(
        &send(
            r,
            Some(&oauth_header(&wrong, &fresh_nonce(), now())),
            Method::GET,
            MACHINES,
            Body::None,
        )
        .await,
        "wrong secret",
    );
    // Wrong consumer key with the right token and secret.
    let secret = key.rsplit(':').next().unwrap();
    let wrong_ck = format!("other:{tk}:{secret}");
    assert_refused(
        &send(
            r,
            Some(&oauth_header(&wrong_ck, &fresh_nonce(), now())),
            Method::GET,
            MACHINES,
            Body::None,
        )
        .await,
        "wrong consumer",
    );
    // Unknown key.
    assert_refused(
        &send(
            r,
            Some(&oauth_header("nobody:nothing:nada", &fresh_nonce(), now())),
            Method::GET,
            MACHINES,
            Body::None,
        )
        .await,
        "unknown key",
    );
    // Stale and future timestamps, just outside the 300 s window either way.
    assert_refused(
        &send(
            r,
            Some(&oauth_header(&key, &fresh_nonce(), now() - 400)),
            Method::GET,
            MACHINES,
            Body::None,
        )
        .await,
        "stale",
    );
    assert_refused(
        &send(
            r,
            Some(&oauth_header(&key, &fresh_nonce(), now() + 400)),
            Method::GET,
            MACHINES,
            Body::None,
        )
        .await,
        "future",
    );
    // A replayed nonce: the first use passes, the second is refused, a new nonce passes.
    let nonce = fresh_nonce();
    let ts = now();
    let first = send(
        r,
        Some(&oauth_header(&key, &nonce, ts)),
        Method::GET,
        MACHINES,
        Body::None,
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let replay = send(
        r,
        Some(&oauth_header(&key, &nonce, ts)),
        Method::GET,
        MACHINES,
        Body::None,
    )
    .await;
    assert_refused(&replay, "replayed nonce");
    assert!(replay.text.contains("nonce"), "{}", replay.text);
    // HMAC-SHA1 is not accepted, and neither is a missing nonce.
    let hmac = oauth_header(&key, &fresh_nonce(), now()).replace("PLAINTEXT", "HMAC-SHA1");
    assert_refused(
        &send(r, Some(&hmac), Method::GET, MACHINES, Body::None).await,
        "HMAC-SHA1",
    );
    let no_nonce = format!(
        "OAuth oauth_signature_method=\"PLAINTEXT\", oauth_consumer_key=\"{ck}\", oauth_token=\"{tk}\", \
         oauth_signature=\"%26{secret}\", oauth_timestamp=\"{}\"",
        now()
    );
    assert_refused(
        &send(r, Some(&no_nonce), Method::GET, MACHINES, Body::None).await,
        "no nonce",
    );
    // Anonymous, and the native API's bearer form, are not MAAS credentials.
    assert_refused(
        &send(r, None, Method::GET, MACHINES, Body::None).await,
        "anonymous",
    );
    assert_refused(
        &send(
            r,
            Some(&format!("Bearer {key}")),
            Method::GET,
            MACHINES,
            Body::None,
        )
        .await,
        "bearer",
    );
    // MAAS's own scripts send unquoted values with a literal '&'; that is accepted.
    let unquoted = format!(
        "OAuth oauth_version=1.0, oauth_signature_method=PLAINTEXT, oauth_consumer_key={ck}, \
         oauth_token={tk}, oauth_signature=&{secret}, oauth_nonce={}, oauth_timestamp={}",
        fresh_nonce(),
        now()
    );
    assert_eq!(
        send(r, Some(&unquoted), Method::GET, MACHINES, Body::None)
            .await
            .status,
        StatusCode::OK
    );
    // OAuth parameters in the query string work too (MAAS reads them from GET/POST data).
    let q = format!(
        "{MACHINES}?oauth_signature_method=PLAINTEXT&oauth_consumer_key={ck}&oauth_token={tk}\
         &oauth_signature=%26{secret}&oauth_nonce={}&oauth_timestamp={}",
        fresh_nonce(),
        now()
    );
    assert_eq!(
        send(r, None, Method::GET, &q, Body::None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn oauth_refusals_sqlite() {
    oauth_refusals(&sqlite_region().await).await;
}

#[tokio::test]
async fn oauth_refusals_postgres() {
    // Nonces are a unique constraint in the store; check it on PostgreSQL too.
    let Some(r) = region(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    oauth_refusals(&r).await;
}

#[tokio::test]
async fn anonymous_endpoints_and_date_everywhere() {
    let r = sqlite_region().await;
    for path in [
        "/MAAS/api/2.0/describe/",
        "/MAAS/api/2.0/version/",
        "/MAAS/metadata/",
    ] {
        let reply = send(&r, None, Method::GET, path, Body::None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        assert!(reply.headers.contains_key("date"), "{path}");
    }
    let missing = call(
        &r,
        &r.admin_key,
        Method::GET,
        "/MAAS/api/2.0/machines/zzzzzz/",
        Body::None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.headers.contains_key("date"));
}

#[tokio::test]
async fn users_see_and_act_only_on_their_own_and_unowned_machines() {
    let r = sqlite_region().await;
    let ids = commission_all(&r).await;
    let alice = r.user_key("alice", false).await;
    let bob = r.user_key("bob", false).await;

    // Alice allocates one machine; Bob one of the rest.
    let a = post_ok(
        &r,
        &alice,
        "/MAAS/api/2.0/machines/?op=allocate",
        &[("system_id", &ids[0])],
    )
    .await;
    assert_eq!(a["owner"], "alice");
    let b = post_ok(
        &r,
        &bob,
        "/MAAS/api/2.0/machines/?op=allocate",
        &[("system_id", &ids[1])],
    )
    .await;
    assert_eq!(b["owner"], "bob");

    // Bob's list has his machine and the unowned ones, never Alice's; the admin sees all.
    let listed = |v: serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["system_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let bobs = listed(get_ok(&r, &bob, MACHINES).await);
    assert!(
        !bobs.contains(&ids[0]) && bobs.contains(&ids[1]) && bobs.contains(&ids[2]),
        "{bobs:?}"
    );
    let filtered = listed(get_ok(&r, &bob, &format!("{MACHINES}?id={}", ids[0])).await);
    assert!(
        filtered.is_empty(),
        "an id filter does not reveal it: {filtered:?}"
    );
    assert_eq!(
        listed(get_ok(&r, &r.admin_key, MACHINES).await).len(),
        ids.len()
    );
    let nodes = listed(get_ok(&r, &bob, "/MAAS/api/2.0/nodes/").await);
    assert!(!nodes.contains(&ids[0]), "nodes/ too: {nodes:?}");

    // Every way Bob can address Alice's machine answers 404, and nothing changes.
    let alices = format!("/MAAS/api/2.0/machines/{}/", ids[0]);
    for (method, path) in [
        (Method::GET, alices.clone()),
        (Method::GET, format!("/MAAS/api/2.0/nodes/{}/", ids[0])),
        (Method::POST, format!("{alices}?op=deploy")),
        (Method::POST, format!("{alices}?op=release")),
        (Method::POST, format!("{alices}?op=power_off")),
        (Method::POST, format!("{alices}op-power_on")),
        (Method::POST, format!("{alices}?op=abort")),
        (Method::POST, format!("{alices}?op=mark_broken")),
        (Method::GET, format!("{alices}?op=query_power_state")),
    ] {
        let reply = call(&r, &bob, method.clone(), &path, Body::Multipart(&[])).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            reply.text
        );
    }
    // Bob cannot allocate it either: to him it does not exist among the free machines.
    let taken = call(
        &r,
        &bob,
        Method::POST,
        "/MAAS/api/2.0/machines/?op=allocate",
        Body::Form(&[("system_id", &ids[0])]),
    )
    .await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.text);
    // Tag and event queries do not leak it.
    let events = get_ok(
        &r,
        &bob,
        &format!("/MAAS/api/2.0/events/?op=query&id={}", ids[0]),
    )
    .await;
    assert_eq!(events["count"], 0, "{events}");
    let m = machine(&r, &alice, &ids[0]).await;
    assert_eq!(
        (m["status_name"].as_str(), m["owner"].as_str()),
        (Some("Allocated"), Some("alice"))
    );

    // Users cannot commission, create machines or issue metadata credentials.
    for (path, form) in [
        (
            format!("/MAAS/api/2.0/machines/{}/?op=commission", ids[2]),
            vec![],
        ),
        (
            "/MAAS/api/2.0/machines/".to_owned(),
            vec![("mac_addresses", "52:54:00:aa:bb:cc")],
        ),
    ] {
        let reply = call(&r, &bob, Method::POST, &path, Body::Multipart(&form)).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            reply.text
        );
    }
    let token = call(
        &r,
        &bob,
        Method::GET,
        &format!("/MAAS/api/2.0/machines/{}/?op=get_token", ids[1]),
        Body::None,
    )
    .await;
    assert_eq!(token.status, StatusCode::FORBIDDEN, "{}", token.text);
}

#[tokio::test]
async fn metadata_credentials_and_user_keys_do_not_cross() {
    let r = sqlite_region().await;
    let ids = commission_all(&r).await;
    let token = get_ok(
        &r,
        &r.admin_key,
        &format!("/MAAS/api/2.0/machines/{}/?op=get_token", ids[0]),
    )
    .await;
    let machine_key = format!(
        "{}:{}:{}",
        token["consumer_key"].as_str().unwrap(),
        token["token_key"].as_str().unwrap(),
        token["token_secret"].as_str().unwrap()
    );
    let md = "/MAAS/metadata/2012-03-01/meta-data/instance-id";
    let own = call(&r, &machine_key, Method::GET, md, Body::None).await;
    assert_eq!(
        (own.status, own.text.as_str()),
        (StatusCode::OK, ids[0].as_str())
    );
    // A user's API key is not a machine credential, and a machine's is not an API key.
    assert_refused(
        &call(&r, &r.admin_key, Method::GET, md, Body::None).await,
        "user key on metadata",
    );
    assert_refused(
        &call(&r, &machine_key, Method::GET, MACHINES, Body::None).await,
        "machine key on the API",
    );
    // Anonymous metadata access is refused; there is no by-id credential endpoint.
    assert_refused(
        &send(&r, None, Method::GET, md, Body::None).await,
        "anonymous metadata",
    );
    let preseed = format!("/MAAS/metadata/latest/by-id/{}/?op=get_preseed", ids[0]);
    let reply = send(&r, None, Method::GET, &preseed, Body::None).await;
    assert_ne!(reply.status, StatusCode::OK);
    assert!(!reply.text.contains(token["token_key"].as_str().unwrap()));
    let reply = call(&r, &machine_key, Method::GET, &preseed, Body::None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    // Replays and stale timestamps are refused on the metadata service as well.
    let nonce = fresh_nonce();
    let ts = now();
    assert_eq!(
        send(
            &r,
            Some(&oauth_header(&machine_key, &nonce, ts)),
            Method::GET,
            md,
            Body::None
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_refused(
        &send(
            &r,
            Some(&oauth_header(&machine_key, &nonce, ts)),
            Method::GET,
            md,
            Body::None,
        )
        .await,
        "metadata replay",
    );
    assert_refused(
        &send(
            &r,
            Some(&oauth_header(&machine_key, &fresh_nonce(), ts - 1000)),
            Method::GET,
            md,
            Body::None,
        )
        .await,
        "metadata stale",
    );
    // Issuing again replaces the old credentials.
    get_ok(
        &r,
        &r.admin_key,
        &format!("/MAAS/api/2.0/machines/{}/?op=get_token", ids[0]),
    )
    .await;
    assert_refused(
        &call(&r, &machine_key, Method::GET, md, Body::None).await,
        "replaced token",
    );
}

#[tokio::test]
async fn tenant_member_keys_are_refused_on_the_maas_api() {
    let r = sqlite_region().await;
    let s = r.engine.store();
    let account = s.create_account("acme", 5).await.unwrap();
    let member = s
        .create_account_member(account.id, "acme-dev")
        .await
        .unwrap();
    let key = s
        .create_api_key(member.id, "t")
        .await
        .unwrap()
        .as_maas_key();
    for path in [MACHINES, "/MAAS/api/2.0/machines/?op=allocate"] {
        let method = if path.contains("allocate") {
            Method::POST
        } else {
            Method::GET
        };
        let reply = call(&r, &key, method, path, Body::Multipart(&[])).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            reply.text
        );
        assert!(reply.text.contains("cloud API"), "{}", reply.text);
    }
    // A plain MAAS user is unaffected.
    let plain = r.user_key("plain", false).await;
    assert_eq!(
        call(&r, &plain, Method::GET, MACHINES, Body::None)
            .await
            .status,
        StatusCode::OK
    );
}
