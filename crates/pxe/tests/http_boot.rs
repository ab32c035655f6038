//! The HTTP boot service: per-MAC scripts (snapshots in tests/snapshots/ipxe/), errors,
//! sightings, image files with Range, and serving over a real socket.

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use ingot_types::MachineId;
use ingot_types::boot::{BootDecision, BootPurpose};
use ingot_types::net::Sighting;
use pxe::backend::{BackendError, BootBackend, ClientInfo};
use pxe::http::{self, HttpConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;

const REGION: &str = "http://10.77.0.1:5240";

#[derive(Default)]
struct FakeBackend {
    decisions: HashMap<String, BootPurpose>,
    down: bool,
    asked: Mutex<Vec<(String, ClientInfo)>>,
    sightings: Mutex<Vec<Sighting>>,
}

#[async_trait]
impl BootBackend for FakeBackend {
    async fn boot_decision(
        &self,
        mac: &str,
        client: &ClientInfo,
    ) -> Result<BootDecision, BackendError> {
        self.asked
            .lock()
            .unwrap()
            .push((mac.to_string(), client.clone()));
        if self.down {
            return Err(BackendError("region unreachable".into()));
        }
        let purpose = self
            .decisions
            .get(mac)
            .copied()
            .unwrap_or(BootPurpose::Enlist);
        let known = self.decisions.contains_key(mac);
        Ok(BootDecision {
            purpose,
            machine_id: known.then(|| MachineId::parse("abc123").unwrap()),
            boot_token: (purpose != BootPurpose::LocalDisk)
                .then(|| format!("tok-{}", mac.replace(':', ""))),
            region_url: REGION.into(),
        })
    }
    async fn record_sighting(&self, sighting: Sighting) -> Result<(), BackendError> {
        self.sightings.lock().unwrap().push(sighting);
        Ok(())
    }
}

fn backend() -> Arc<FakeBackend> {
    Arc::new(FakeBackend {
        decisions: HashMap::from([
            ("52:54:00:00:00:02".to_string(), BootPurpose::Commission),
            ("52:54:00:00:00:03".to_string(), BootPurpose::Deploy),
            ("52:54:00:00:00:04".to_string(), BootPurpose::LocalDisk),
        ]),
        ..FakeBackend::default()
    })
}

struct Ctx {
    router: axum::Router,
    backend: Arc<FakeBackend>,
    _images: tempfile::TempDir,
}

fn kernel_bytes() -> Vec<u8> {
    (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn ctx_with(backend: Arc<FakeBackend>, configure: impl FnOnce(&mut HttpConfig)) -> Ctx {
    let images = tempfile::tempdir().unwrap();
    std::fs::create_dir(images.path().join("ephemeral")).unwrap();
    std::fs::write(images.path().join("ephemeral/vmlinuz"), kernel_bytes()).unwrap();
    let mut cfg = HttpConfig::new(images.path());
    configure(&mut cfg);
    let dyn_backend: Arc<dyn BootBackend> = backend.clone();
    Ctx {
        router: http::router(dyn_backend, cfg).unwrap(),
        backend,
        _images: images,
    }
}

fn ctx() -> Ctx {
    ctx_with(backend(), |_| {})
}

async fn get(
    router: &axum::Router,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::get(uri).header(header::HOST, "10.77.0.1:5248");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// Compares with the checked-in snapshot; `INGOT_UPDATE_SNAPSHOTS=1` rewrites it.
fn check_snapshot(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots/ipxe")
        .join(name);
    if std::env::var_os("INGOT_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with INGOT_UPDATE_SNAPSHOTS=1 to create)",
            path.display()
        )
    });
    assert_eq!(got, want, "snapshot {name} differs");
}

#[tokio::test]
async fn scripts_by_decision_match_snapshots() {
    let c = ctx();
    for (uri, snapshot) in [
        ("/ipxe/52-54-00-00-00-01?platform=efi", "enlist.ipxe"),
        ("/ipxe/52:54:00:00:00:02?platform=pcbios", "commission.ipxe"),
        ("/ipxe/525400000003", "deploy.ipxe"),
        ("/ipxe/52:54:00:00:00:04?arch=bios", "local-bios.ipxe"),
        ("/ipxe/52:54:00:00:00:04?arch=uefi-x64", "local-efi.ipxe"),
        ("/ipxe/52-54-00-00-00-04?platform=pcbios", "local-bios.ipxe"),
        ("/ipxe/52-54-00-00-00-04?platform=efi", "local-efi.ipxe"),
        ("/ipxe/52%3A54%3A00%3A00%3A00%3A04", "local-unknown.ipxe"),
        ("/boot.ipxe", "chain.ipxe"),
    ] {
        let (status, headers, body) = get(&c.router, uri, &[]).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        check_snapshot(snapshot, std::str::from_utf8(&body).unwrap());
    }
    let asked = c.backend.asked.lock().unwrap().clone();
    let macs: Vec<&str> = asked.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        macs,
        [
            "52:54:00:00:00:01",
            "52:54:00:00:00:02",
            "52:54:00:00:00:03",
            "52:54:00:00:00:04",
            "52:54:00:00:00:04",
            "52:54:00:00:00:04",
            "52:54:00:00:00:04",
            "52:54:00:00:00:04"
        ]
    );
    assert_eq!(asked[0].1.arch.as_deref(), Some("uefi-x64"));
    assert_eq!(asked[1].1.arch.as_deref(), Some("bios"));
    assert_eq!(asked[2].1.arch, None);
    assert_eq!(asked[3].1.arch.as_deref(), Some("bios"));
    assert_eq!(asked[4].1.arch.as_deref(), Some("uefi-x64"));
}

#[tokio::test]
async fn ephemeral_script_carries_region_and_token() {
    let c = ctx();
    let (_, _, body) = get(&c.router, "/ipxe/52:54:00:00:00:02", &[]).await;
    let script = String::from_utf8(body).unwrap();
    let kernel = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .expect("kernel line");
    let cmdline = kernel.trim_start_matches("kernel ");
    assert_eq!(
        ingot_types::agent::cmdline_value(cmdline, ingot_types::agent::CMDLINE_REGION_URL),
        Some(REGION)
    );
    assert_eq!(
        ingot_types::agent::cmdline_value(cmdline, ingot_types::agent::CMDLINE_TOKEN),
        Some("tok-525400000002")
    );
    assert!(
        cmdline.starts_with("http://10.77.0.1:5248/images/ephemeral/vmlinuz "),
        "{cmdline}"
    );
    assert!(
        script.contains("\ninitrd http://10.77.0.1:5248/images/ephemeral/initrd.gz "),
        "{script}"
    );
    assert!(script.contains("\nboot "), "{script}");
}

#[tokio::test]
async fn public_url_overrides_host() {
    let c = ctx_with(backend(), |cfg| {
        cfg.public_url = Some("http://boot.example:8080/".into())
    });
    let (_, _, body) = get(&c.router, "/ipxe/52:54:00:00:00:02", &[]).await;
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("kernel http://boot.example:8080/images/ephemeral/vmlinuz ")
    );
}

#[tokio::test]
async fn bad_mac_is_a_400_naming_the_field() {
    let c = ctx();
    for uri in [
        "/ipxe/not-a-mac",
        "/ipxe/52:54:00:00:00",
        "/ipxe/$%7Bmac%7D",
    ] {
        let (status, headers, body) = get(&c.router, uri, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["field"], "mac", "{uri}: {json}");
        assert!(
            json["error"].as_str().unwrap().contains("invalid MAC"),
            "{json}"
        );
    }
    assert!(
        c.backend.asked.lock().unwrap().is_empty(),
        "bad MACs never reach the backend"
    );
}

#[tokio::test]
async fn backend_failure_is_a_503() {
    let c = ctx_with(
        Arc::new(FakeBackend {
            down: true,
            ..FakeBackend::default()
        }),
        |_| {},
    );
    let (status, _, body) = get(&c.router, "/ipxe/52:54:00:00:00:09", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("region unreachable"),
        "{json}"
    );
}

async fn wait_for_sightings(backend: &FakeBackend, n: usize) -> Vec<Sighting> {
    for _ in 0..500 {
        let seen = backend.sightings.lock().unwrap().clone();
        if seen.len() >= n {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {n} sightings, got {:?}",
        backend.sightings.lock().unwrap()
    );
}

#[tokio::test]
async fn unknown_macs_record_sightings_known_ones_do_not() {
    let c = ctx();
    get(&c.router, "/ipxe/52:54:00:00:00:02", &[]).await;
    get(&c.router, "/ipxe/52:54:00:00:00:04", &[]).await;
    get(&c.router, "/ipxe/52-54-00-aa-bb-cc?platform=pcbios", &[]).await;
    let seen = wait_for_sightings(&c.backend, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen_later = c.backend.sightings.lock().unwrap().clone();
    assert_eq!(seen, seen_later, "only one sighting");
    assert_eq!(seen[0].mac, "52:54:00:aa:bb:cc");
    assert_eq!(seen[0].source, "http");
    assert_eq!(seen[0].arch.as_deref(), Some("bios"));
}

#[tokio::test]
async fn images_support_range_requests() {
    let c = ctx();
    let all = kernel_bytes();
    let (status, headers, body) = get(&c.router, "/images/ephemeral/vmlinuz", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(body, all);

    let (status, headers, body) = get(
        &c.router,
        "/images/ephemeral/vmlinuz",
        &[("range", "bytes=1000-1999")],
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(headers[header::CONTENT_RANGE], "bytes 1000-1999/100000");
    assert_eq!(body, &all[1000..2000]);

    let (status, _, body) = get(
        &c.router,
        "/images/ephemeral/vmlinuz",
        &[("range", "bytes=-10")],
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &all[all.len() - 10..]);

    let (status, _, _) = get(
        &c.router,
        "/images/ephemeral/vmlinuz",
        &[("range", "bytes=200000-")],
    )
    .await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);

    for uri in [
        "/images/ephemeral/missing",
        "/images/../Cargo.toml",
        "/images/%2e%2e/Cargo.toml",
    ] {
        let (status, _, _) = get(&c.router, uri, &[]).await;
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
            "{uri}: {status}"
        );
    }
}

/// Over a real socket: the client address reaches the sighting, and shutdown ends `serve`.
#[tokio::test]
async fn serves_over_tcp_with_client_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = ctx();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, c.router.clone(), async {
        let _ = stopped.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ipxe/52:54:00:12:34:56 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(&format!("kernel http://{addr}/images/ephemeral/vmlinuz")),
        "{response}"
    );
    let seen = wait_for_sightings(&c.backend, 1).await;
    assert_eq!(seen[0].ip, Some("127.0.0.1".parse().unwrap()));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
