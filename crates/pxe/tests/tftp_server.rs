//! The TFTP server over loopback: files, options, refusals, retransmission, concurrency,
//! generated files and sightings.

use async_trait::async_trait;
use ingot_types::boot::{BootDecision, BootPurpose};
use ingot_types::net::Sighting;
use pxe::backend::{BackendError, BootBackend, ClientInfo};
use pxe::tftp::client::{self, FetchError, FetchOptions};
use pxe::tftp::packet::{self, ErrorCode, Packet};
use pxe::tftp::{DynamicFiles, OpenFileError, TftpConfig, server};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

#[derive(Default)]
struct RecordingBackend {
    sightings: Mutex<Vec<Sighting>>,
}

#[async_trait]
impl BootBackend for RecordingBackend {
    async fn boot_decision(
        &self,
        _mac: &str,
        _client: &ClientInfo,
    ) -> Result<BootDecision, BackendError> {
        Ok(BootDecision {
            purpose: BootPurpose::LocalDisk,
            machine_id: None,
            boot_token: None,
            region_url: String::new(),
        })
    }
    async fn record_sighting(&self, sighting: Sighting) -> Result<(), BackendError> {
        self.sightings.lock().unwrap().push(sighting);
        Ok(())
    }
}

struct Generated;

#[async_trait]
impl DynamicFiles for Generated {
    async fn open(&self, path: &str, client: SocketAddr) -> Option<Result<Vec<u8>, OpenFileError>> {
        match path {
            "hello.ipxe" => Some(Ok(
                format!("#!ipxe\necho hello {}\n", client.ip()).into_bytes()
            )),
            "broken" => Some(Err(OpenFileError::Dynamic {
                path: path.into(),
                reason: "backend down".into(),
            })),
            _ => None,
        }
    }
}

struct TestServer {
    addr: SocketAddr,
    backend: Arc<RecordingBackend>,
    _root: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    // xorshift: incompressible, position-dependent content catches misplaced blocks.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn start(configure: impl FnOnce(&mut TftpConfig)) -> TestServer {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("small.txt"), b"hello tftp\n").unwrap();
    std::fs::write(root.path().join("exact.bin"), pattern(1024, 1)).unwrap();
    std::fs::write(root.path().join("big.bin"), pattern(300_000, 2)).unwrap();
    std::fs::create_dir(root.path().join("sub")).unwrap();
    std::fs::write(root.path().join("sub/nested.bin"), pattern(5000, 3)).unwrap();
    let secret_dir = root
        .path()
        .parent()
        .unwrap()
        .join(format!("{}-secret", root.path().display()));
    let _ = std::fs::write(secret_dir, b"outside");
    let arp = root.path().join("arp");
    std::fs::write(
        &arp,
        "IP address       HW type     Flags       HW address            Mask     Device\n\
         127.0.0.1        0x1         0x2         52:54:00:ab:cd:ef     *        lo\n",
    )
    .unwrap();
    let mut cfg = TftpConfig::new(root.path());
    cfg.arp_table = arp;
    cfg.dynamic = Some(Arc::new(Generated));
    configure(&mut cfg);
    let socket = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let backend = Arc::new(RecordingBackend::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let serve_backend: Arc<dyn BootBackend> = backend.clone();
    tokio::spawn(server::serve(socket, cfg, serve_backend, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        backend,
        _root: root,
        _stop: stop,
    }
}

fn opts(blksize: Option<u16>, windowsize: Option<u16>, tsize: bool) -> FetchOptions {
    FetchOptions {
        blksize,
        windowsize,
        tsize,
        ..FetchOptions::default()
    }
}

#[tokio::test]
async fn serves_files_with_and_without_options() {
    let s = start(|_| {}).await;
    let cases: Vec<(&str, FetchOptions, Vec<u8>)> = vec![
        (
            "small.txt",
            opts(None, None, false),
            b"hello tftp\n".to_vec(),
        ),
        (
            "/small.txt",
            opts(None, None, false),
            b"hello tftp\n".to_vec(),
        ),
        ("exact.bin", opts(None, None, false), pattern(1024, 1)),
        ("exact.bin", opts(Some(512), None, true), pattern(1024, 1)),
        ("big.bin", opts(Some(1432), None, true), pattern(300_000, 2)),
        (
            "big.bin",
            opts(Some(1432), Some(8), true),
            pattern(300_000, 2),
        ),
        (
            "big.bin",
            opts(Some(8), Some(64), false),
            pattern(300_000, 2),
        ),
        (
            "sub/nested.bin",
            opts(Some(1468), None, false),
            pattern(5000, 3),
        ),
    ];
    for (file, options, want) in cases {
        let got = client::fetch(s.addr, file, &options)
            .await
            .unwrap_or_else(|e| panic!("{file} {options:?}: {e}"));
        assert!(
            got.bytes == want,
            "{file} {options:?}: content differs ({} vs {} bytes)",
            got.bytes.len(),
            want.len()
        );
        assert_eq!(got.retransmissions, 0, "{file} {options:?}");
    }
}

#[tokio::test]
async fn oack_reports_tsize_and_clamps_blksize() {
    let s = start(|cfg| cfg.limits.max_blksize = 1024).await;
    let got = client::fetch(s.addr, "big.bin", &opts(Some(8192), Some(4), true))
        .await
        .unwrap();
    let oack: Vec<(&str, &str)> = got
        .oack
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        oack,
        vec![
            ("blksize", "1024"),
            ("tsize", "300000"),
            ("windowsize", "4")
        ]
    );
    assert_eq!(got.bytes, pattern(300_000, 2));
}

async fn expect_error(addr: SocketAddr, file: &str, code: ErrorCode) {
    match client::fetch(addr, file, &FetchOptions::default()).await {
        Err(FetchError::Server { code: got, .. }) => assert_eq!(got, code, "{file}"),
        other => panic!("{file}: expected error {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn refuses_traversal_missing_files_and_directories() {
    let s = start(|_| {}).await;
    let escape = format!(
        "../{}-secret",
        s._root.path().file_name().unwrap().to_string_lossy()
    );
    expect_error(s.addr, &escape, ErrorCode::AccessViolation).await;
    expect_error(s.addr, "sub/../../etc/passwd", ErrorCode::AccessViolation).await;
    expect_error(s.addr, "..\\..\\etc\\passwd", ErrorCode::AccessViolation).await;
    // An absolute path is taken relative to the root, never to the host's /.
    expect_error(s.addr, "/etc/passwd", ErrorCode::FileNotFound).await;
    expect_error(s.addr, "missing.efi", ErrorCode::FileNotFound).await;
    expect_error(s.addr, "sub", ErrorCode::FileNotFound).await;
    expect_error(s.addr, "broken", ErrorCode::NotDefined).await;
}

#[tokio::test]
async fn refuses_writes() {
    let s = start(|_| {}).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&packet::encode_wrq("upload.bin", &[]), s.addr)
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    match packet::parse(&buf[..n]).unwrap() {
        Packet::Error { code, .. } => assert_eq!(code, ErrorCode::AccessViolation),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(!s._root.path().join("upload.bin").exists());
}

#[tokio::test]
async fn serves_generated_files() {
    let s = start(|_| {}).await;
    let got = client::fetch(s.addr, "hello.ipxe", &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(got.bytes, b"#!ipxe\necho hello 127.0.0.1\n");
}

/// A client that ignores the first DATA sees it again after the timeout, and a client that
/// never answers sees exactly `1 + max_retries` copies before the server gives up.
#[tokio::test]
async fn retransmits_then_gives_up() {
    let s = start(|cfg| {
        cfg.limits.default_timeout = Duration::from_millis(100);
        cfg.limits.max_retries = 3;
    })
    .await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&packet::encode_rrq("small.txt", &[]), s.addr)
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut copies = 0;
    let started = tokio::time::Instant::now();
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(600), socket.recv_from(&mut buf)).await
    {
        assert_eq!(
            packet::parse(&buf[..n]).unwrap(),
            Packet::Data {
                block: 1,
                payload: b"hello tftp\n"
            }
        );
        copies += 1;
    }
    assert_eq!(copies, 4, "1 send + 3 retries");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "retransmissions must wait for the timeout"
    );

    // Recovery: ignore the first copy of block 1, acknowledge the retransmission.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&packet::encode_rrq("exact.bin", &[]), s.addr)
        .await
        .unwrap();
    let (mut dropped, mut got, mut expected) = (false, Vec::new(), 1u16);
    loop {
        let (n, peer) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let Packet::Data { block, payload } = packet::parse(&buf[..n]).unwrap() else {
            panic!("not data")
        };
        if !dropped {
            dropped = true;
            continue;
        }
        if block != expected {
            continue;
        }
        got.extend_from_slice(payload);
        socket
            .send_to(&packet::encode_ack(block), peer)
            .await
            .unwrap();
        if payload.len() < 512 {
            break;
        }
        expected += 1;
    }
    assert_eq!(got, pattern(1024, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_transfers() {
    let s = start(|_| {}).await;
    let want = Arc::new(pattern(300_000, 2));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let addr = s.addr;
        let want = want.clone();
        tasks.spawn(async move {
            let window = if i % 2 == 0 { None } else { Some(4) };
            let got = client::fetch(addr, "big.bin", &opts(Some(1432), window, true))
                .await
                .unwrap();
            assert!(got.bytes == *want, "transfer {i} differs");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

#[tokio::test]
async fn records_a_tftp_sighting_from_the_neighbour_table() {
    let s = start(|_| {}).await;
    client::fetch(s.addr, "small.txt", &FetchOptions::default())
        .await
        .unwrap();
    client::fetch(s.addr, "small.txt", &FetchOptions::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = s.backend.sightings.lock().unwrap().clone();
        if !seen.is_empty() {
            assert_eq!(
                seen.len(),
                1,
                "repeat requests within the interval are one sighting: {seen:?}"
            );
            assert_eq!(seen[0].mac, "52:54:00:ab:cd:ef");
            assert_eq!(seen[0].source, "tftp");
            assert_eq!(seen[0].ip, Some("127.0.0.1".parse().unwrap()));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sighting recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn serves_the_ipxe_chain_script() {
    let renderer = pxe::http::script::ScriptRenderer::new(None).unwrap();
    let chain =
        pxe::tftp::boot_files::IpxeChainFile::new(&renderer, "http://${next-server}:5248").unwrap();
    let s = start(|cfg| cfg.dynamic = Some(Arc::new(chain))).await;
    let got = client::fetch(s.addr, "boot.ipxe", &FetchOptions::default())
        .await
        .unwrap();
    let script = String::from_utf8(got.bytes).unwrap();
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains("chain --autofree http://${next-server}:5248/ipxe/${netX/mac:hexhyp}"),
        "{script}"
    );
}

#[tokio::test]
async fn observer_sees_each_request_outcome() {
    let records = Arc::new(Mutex::new(Vec::new()));
    let sink = records.clone();
    let s = start(move |cfg| {
        cfg.on_transfer = Some(Arc::new(move |r| sink.lock().unwrap().push(r)));
    })
    .await;
    client::fetch(s.addr, "exact.bin", &FetchOptions::default())
        .await
        .unwrap();
    let _ = client::fetch(s.addr, "missing", &FetchOptions::default()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while records.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            records.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = records.lock().unwrap().clone();
    assert_eq!(got[0].file, "exact.bin");
    assert_eq!(got[0].bytes, 1024);
    assert_eq!(got[0].outcome, pxe::tftp::TransferOutcome::Finished);
    assert_eq!(got[1].file, "missing");
    assert!(
        matches!(got[1].outcome, pxe::tftp::TransferOutcome::Refused(_)),
        "{:?}",
        got[1]
    );
}

/// Windowed transfers give the same bytes with whole windows sent as one GSO datagram train
/// and with one send per block.
#[tokio::test]
async fn windowed_transfers_with_and_without_gso() {
    for gso in [true, false] {
        let s = start(|cfg| cfg.udp_gso = gso).await;
        for (blksize, window) in [(512, 4), (1432, 4), (1468, 16), (1024, 64)] {
            let got = client::fetch(s.addr, "big.bin", &opts(Some(blksize), Some(window), true))
                .await
                .unwrap_or_else(|e| panic!("gso {gso} blksize {blksize} window {window}: {e}"));
            assert!(
                got.bytes == pattern(300_000, 2),
                "gso {gso} blksize {blksize} window {window}"
            );
        }
    }
}

/// RFC 7440 recovery: a client that loses a block in the middle of a window acknowledges the
/// last block it has, and the server's next window starts right after it.
#[tokio::test]
async fn windowed_transfer_recovers_from_a_lost_block() {
    let s = start(|_| {}).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let options = vec![
        ("blksize".to_string(), "512".to_string()),
        ("windowsize".to_string(), "4".to_string()),
    ];
    socket
        .send_to(&packet::encode_rrq("big.bin", &options), s.addr)
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, peer) = socket.recv_from(&mut buf).await.unwrap();
    assert!(matches!(
        packet::parse(&buf[..n]).unwrap(),
        Packet::Oack { .. }
    ));
    socket.send_to(&packet::encode_ack(0), peer).await.unwrap();

    let (mut got, mut expected, mut in_window, mut dropped) = (Vec::new(), 1u16, 0, false);
    let mut first_after_loss = None;
    loop {
        let recv = tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf));
        let (n, _) = recv.await.expect("server stalled").unwrap();
        let Packet::Data { block, payload } = packet::parse(&buf[..n]).unwrap() else {
            panic!("not data")
        };
        if block == 3 && !dropped {
            dropped = true; // lose block 3 of the first window
            continue;
        }
        if dropped && first_after_loss.is_none() && block != 4 {
            first_after_loss = Some(block);
        }
        if block != expected {
            if block == expected + 1 {
                // The rest of the damaged window: acknowledge what we have, once.
                socket
                    .send_to(&packet::encode_ack(expected - 1), peer)
                    .await
                    .unwrap();
                in_window = 0;
            }
            continue;
        }
        got.extend_from_slice(payload);
        in_window += 1;
        let last = payload.len() < 512;
        if last || in_window == 4 {
            socket
                .send_to(&packet::encode_ack(block), peer)
                .await
                .unwrap();
            in_window = 0;
        }
        if last {
            break;
        }
        expected += 1;
    }
    assert_eq!(
        first_after_loss,
        Some(3),
        "the next window restarts at the lost block"
    );
    assert!(got == pattern(300_000, 2));
}

#[tokio::test]
async fn answers_busy_beyond_max_sessions() {
    let s = start(|cfg| cfg.max_sessions = 0).await;
    match client::fetch(s.addr, "small.txt", &FetchOptions::default()).await {
        Err(FetchError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::NotDefined);
            assert_eq!(message, "server busy");
        }
        other => panic!("expected a busy error, got {other:?}"),
    }
}
