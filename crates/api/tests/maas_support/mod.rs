//! A small MAAS 2.0 client for the in-process region: OAuth PLAINTEXT signing as
//! python-libmaas does it, urlencoded and multipart bodies, status polling.
#![allow(dead_code)]

use crate::common::Region;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const API: &str = "/MAAS/api/2.0";

static NONCE: AtomicU64 = AtomicU64::new(1);

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn fresh_nonce() -> String {
    format!(
        "n{}-{}",
        std::process::id(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// The Authorization header oauthlib builds for PLAINTEXT with an empty consumer secret.
pub fn oauth_header(key: &str, nonce: &str, timestamp: i64) -> String {
    let mut parts = key.split(':');
    let (ck, tk, ts) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    format!(
        "OAuth realm=\"OAuth\", oauth_nonce=\"{nonce}\", oauth_timestamp=\"{timestamp}\", \
         oauth_version=\"1.0\", oauth_signature_method=\"PLAINTEXT\", \
         oauth_consumer_key=\"{ck}\", oauth_token=\"{tk}\", oauth_signature=\"%26{ts}\""
    )
}

pub enum Body<'a> {
    None,
    Form(&'a [(&'a str, &'a str)]),
    Multipart(&'a [(&'a str, &'a str)]),
    Json(&'a str),
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a request signed with `key` (or a raw Authorization header, or none).
pub async fn send(
    r: &Region,
    auth: Option<&str>,
    method: Method,
    path: &str,
    body: Body<'_>,
) -> Reply {
    let mut req = r.http.request(method, format!("{}{path}", r.url));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req = match body {
        Body::None => req,
        Body::Form(pairs) => req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(pairs).unwrap()),
        Body::Multipart(pairs) => {
            let boundary = "ingot-test-boundary";
            let mut b = String::new();
            for (k, v) in pairs {
                b.push_str(&format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                ));
            }
            b.push_str(&format!("--{boundary}--\r\n"));
            req.header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(b)
        }
        Body::Json(s) => req
            .header("content-type", "application/json")
            .body(s.to_owned()),
    };
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Reply {
        status,
        headers,
        text,
    }
}

/// A correctly signed request with `key`.
pub async fn call(r: &Region, key: &str, method: Method, path: &str, body: Body<'_>) -> Reply {
    let auth = oauth_header(key, &fresh_nonce(), now());
    send(r, Some(&auth), method, path, body).await
}

pub async fn get_ok(r: &Region, key: &str, path: &str) -> Value {
    let reply = call(r, key, Method::GET, path, Body::None).await;
    assert_eq!(reply.status, StatusCode::OK, "GET {path}: {}", reply.text);
    reply.json()
}

pub async fn post_ok(r: &Region, key: &str, path: &str, form: &[(&str, &str)]) -> Value {
    let reply = call(r, key, Method::POST, path, Body::Multipart(form)).await;
    assert_eq!(reply.status, StatusCode::OK, "POST {path}: {}", reply.text);
    reply.json()
}

pub async fn machine(r: &Region, key: &str, id: &str) -> Value {
    get_ok(r, key, &format!("{API}/machines/{id}/")).await
}

/// Polls the machine through the MAAS API until it reaches `status_name`.
pub async fn wait_maas_status(r: &Region, key: &str, id: &str, status_name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = machine(r, key, id).await;
        if m["status_name"] == status_name {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {status_name}; now {}",
            m["status_name"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commissions every machine and waits until all are Ready; returns their ids.
pub async fn commission_all(r: &Region) -> Vec<String> {
    let list = get_ok(r, &r.admin_key, &format!("{API}/machines/")).await;
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["system_id"].as_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        post_ok(
            r,
            &r.admin_key,
            &format!("{API}/machines/{id}/?op=commission"),
            &[],
        )
        .await;
    }
    for id in &ids {
        wait_maas_status(r, &r.admin_key, id, "Ready").await;
    }
    ids
}

/// Switches a machine to manual power, so nothing netboots it: workflows then wait for
/// the metadata service (or a deadline).
pub async fn make_manual(r: &Region, id: &str) {
    let reply = call(
        r,
        &r.admin_key,
        Method::PUT,
        &format!("{API}/machines/{id}/"),
        Body::Form(&[("power_type", "manual")]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}
