//! The agent against a real in-process region (enlist, commission) and against stubs that
//! misbehave (malformed instructions, 5xx, nobody listening). No VM: see `qemu_enlist.rs`.

mod common;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::{fixture, region};
use ingot_agent::run::Console;
use ingot_agent::{BootConfig, Done, RetryPolicy, Roots, RunAgentError, collect, run};
use ingot_engine::Actor;
use ingot_types::boot::BootPurpose;
use ingot_types::lifecycle::NodeStatus;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FAST: RetryPolicy = RetryPolicy {
    attempts: 3,
    first_backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(50),
};

/// A console that keeps its lines for assertions.
fn console() -> (Console, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    (
        Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_owned())),
        lines,
    )
}

#[tokio::test]
async fn enlists_then_commissions_against_a_real_region() {
    let region = region("127.0.0.1").await;
    let roots = Roots::under(&fixture("qemu-bios-virtio"));
    let mac = "52:54:00:12:34:56"; // eth0 in the fixture, the interface with the default route

    // Unknown MAC: the boot decision carries an enlistment token. No ingot.purpose and no
    // BOOTIF (a hand-written command line): the agent learns from the 401 that it must
    // enlist, and picks the interface DHCP configured.
    let decision = region.engine.boot_decision(mac).await.unwrap();
    assert_eq!(decision.purpose, BootPurpose::Enlist);
    let cmdline = format!(
        "ingot.url={} ingot.token={}",
        decision.region_url,
        decision.boot_token.unwrap()
    );
    let cfg = BootConfig::from_cmdline(&cmdline).unwrap();
    let (con, _) = console();
    let outcome = run(&cfg, &roots, FAST, con).await.unwrap();
    assert!(outcome.enlisted);
    assert_eq!(
        outcome.done,
        Done::NothingToDo,
        "a New machine has nothing to do"
    );
    let id = outcome.machine_id.unwrap();
    let m = region.engine.store().machine(&id).await.unwrap();
    assert_eq!(m.status, NodeStatus::New);
    assert_eq!(m.boot_mac.as_deref(), Some(mac));
    let inv = collect(&roots).unwrap();
    assert_eq!(
        (m.cpu_count, m.memory_mib, &m.disks, &m.interfaces),
        (2, 1024, &inv.disks, &inv.interfaces)
    );

    // Commissioning: the next boot carries the machine's own token and the purpose.
    region
        .engine
        .commission(&Actor::system("test"), &id)
        .await
        .unwrap();
    let decision = region.engine.boot_decision(mac).await.unwrap();
    assert_eq!(decision.purpose, BootPurpose::Commission);
    let cmdline = format!(
        "ingot.url={} ingot.token={} ingot.purpose=commission BOOTIF=01-52-54-00-12-34-56",
        decision.region_url,
        decision.boot_token.unwrap()
    );
    let (con, lines) = console();
    let outcome = run(
        &BootConfig::from_cmdline(&cmdline).unwrap(),
        &roots,
        FAST,
        con,
    )
    .await
    .unwrap();
    assert_eq!(outcome.done, Done::Commissioned);
    assert!(!outcome.enlisted);
    let m = region.engine.store().machine(&id).await.unwrap();
    assert_eq!(m.status, NodeStatus::Ready, "{:?}", lines.lock().unwrap());
    assert_eq!(m.system.serial, "INGOT-VM-1");
}

#[tokio::test]
async fn a_spent_enlistment_token_is_refused_clearly() {
    let region = region("127.0.0.1").await;
    let roots = Roots::under(&fixture("qemu-bios-virtio"));
    let decision = region
        .engine
        .boot_decision("52:54:00:12:34:56")
        .await
        .unwrap();
    let cmdline = format!(
        "ingot.url={} ingot.token={} ingot.purpose=enlist",
        decision.region_url,
        decision.boot_token.unwrap()
    );
    let cfg = BootConfig::from_cmdline(&cmdline).unwrap();
    run(&cfg, &roots, FAST, console().0).await.unwrap();
    // Same boot again (a reset machine replaying its command line): the token is spent.
    let err = run(&cfg, &roots, FAST, console().0).await.unwrap_err();
    assert!(
        matches!(&err, RunAgentError::Region { step: "enlist", source } if source.is_unauthorized()),
        "{err:?}"
    );
}

/// A stub region: answers /instructions from a script of (status, body), records reports.
#[derive(Clone, Default)]
struct Stub {
    answers: Arc<Mutex<Vec<(StatusCode, String)>>>,
    reports: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn stub(answers: Vec<(StatusCode, &str)>) -> (String, Stub) {
    let state = Stub {
        answers: Arc::new(Mutex::new(
            answers
                .into_iter()
                .rev()
                .map(|(s, b)| (s, b.to_owned()))
                .collect(),
        )),
        ..Default::default()
    };
    let app = Router::new()
        .route(
            "/agent/v1/instructions",
            get(|State(s): State<Stub>| async move {
                s.answers
                    .lock()
                    .unwrap()
                    .pop()
                    .unwrap_or((StatusCode::GONE, "script exhausted".into()))
            }),
        )
        .route(
            "/agent/v1/report",
            post(|State(s): State<Stub>, body: String| async move {
                s.reports
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                r#"{"status_name":"Failed commissioning"}"#
            }),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

#[tokio::test]
async fn malformed_instructions_are_refused() {
    let roots = Roots::under(&fixture("qemu-bios-virtio"));
    for body in [
        "not json at all",
        r#"{"action":"format_everything"}"#,
        r#"{"action":"commission"}"#,
        r#"{"action":"commission","machine_id":"../../etc"}"#,
        r#"{"action":"erase","machine_id":"abc123","quick":"yes"}"#,
        "[]",
        "",
    ] {
        let (url, stub) = stub(vec![(StatusCode::OK, body)]).await;
        let cfg = BootConfig::from_cmdline(&format!(
            "ingot.url={url} ingot.token=t ingot.purpose=commission"
        ))
        .unwrap();
        let err = run(&cfg, &roots, FAST, console().0).await.unwrap_err();
        assert!(
            matches!(err, RunAgentError::MalformedInstructions(_)),
            "{body:?}: {err:?}"
        );
        // Nothing was carried out; the region was told why, once.
        let reports = stub.reports.lock().unwrap().clone();
        assert_eq!(reports.len(), 1, "{body:?}: {reports:?}");
        assert_eq!(reports[0]["event"], "failed", "{body:?}");
        let message = reports[0]["message"].as_str().unwrap();
        assert!(message.contains("malformed instructions"), "{message}");
    }
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let roots = Roots::under(&fixture("qemu-bios-virtio"));
    let (url, stub) = stub(vec![
        (StatusCode::SERVICE_UNAVAILABLE, "starting"),
        (StatusCode::BAD_GATEWAY, "starting"),
        (StatusCode::OK, r#"{"action":"power_off"}"#),
    ])
    .await;
    let cfg = BootConfig::from_cmdline(&format!(
        "ingot.url={url} ingot.token=t ingot.purpose=commission"
    ))
    .unwrap();
    let (con, lines) = console();
    let outcome = run(&cfg, &roots, FAST, con).await.unwrap();
    assert_eq!(outcome.done, Done::NothingToDo);
    let lines = lines.lock().unwrap();
    let retries: Vec<_> = lines.iter().filter(|l| l.contains("retrying in")).collect();
    assert_eq!(retries.len(), 2, "{lines:?}");
    assert!(
        retries[0].contains("HTTP 503") && retries[1].contains("HTTP 502"),
        "{retries:?}"
    );
    assert!(stub.reports.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_region_refusing_is_not_retried() {
    let roots = Roots::under(&fixture("qemu-bios-virtio"));
    let (url, _stub) = stub(vec![
        (StatusCode::FORBIDDEN, "no"),
        (StatusCode::OK, r#"{"action":"power_off"}"#),
    ])
    .await;
    let cfg = BootConfig::from_cmdline(&format!(
        "ingot.url={url} ingot.token=t ingot.purpose=commission"
    ))
    .unwrap();
    let err = run(&cfg, &roots, FAST, console().0).await.unwrap_err();
    assert!(
        matches!(
            &err,
            RunAgentError::Region {
                step: "get instructions",
                ..
            }
        ),
        "{err:?}"
    );
}

/// The binary as /init runs it (minus --power-off), against a port nobody listens on.
#[test]
fn unreachable_region_retries_then_says_so_clearly() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: connections are refused
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ingot-agent"))
        .args(["--root", fixture("qemu-bios-virtio").to_str().unwrap()])
        .args([
            "--cmdline",
            &format!(
                "console=ttyS0 ingot.url=http://127.0.0.1:{port} ingot.token=t ingot.attempts=4"
            ),
        ])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Backoff 0.2 + 0.4 + 0.8 s between the 4 tries.
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_secs(20),
        "{elapsed:?}"
    );
    assert_eq!(stderr.matches("retrying in").count(), 3, "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    let want = format!(
        "FAILED: region at http://127.0.0.1:{port} is unreachable: gave up trying to get instructions after 4 attempts"
    );
    assert!(stderr.contains(&want), "{stderr}");
}

#[test]
fn a_command_line_without_ingot_keys_fails_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_ingot-agent"))
        .args(["--root", fixture("qemu-bios-virtio").to_str().unwrap()])
        .args(["--cmdline", "console=ttyS0 quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("FAILED: the kernel command line has no ingot.url="),
        "{stderr}"
    );
}

#[tokio::test]
async fn quick_erase_zeroes_the_ends_of_each_disk_and_reports_erased() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let fixture = fixture("qemu-bios-virtio");
    let dev = tempfile::tempdir().unwrap();
    let roots = Roots {
        proc: fixture.join("proc"),
        sys: fixture.join("sys"),
        dev: dev.path().into(),
    };
    // vda is 8 GiB in the fixture: a sparse file stands in for the device node.
    let size: u64 = 8 << 30;
    let path = dev.path().join("vda");
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    for at in [0, size / 2, size - 4096] {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[0xA5; 4096]).unwrap();
    }
    drop(f);
    let (url, stub) = stub(vec![(
        StatusCode::OK,
        r#"{"action":"erase","machine_id":"abc123","quick":true}"#,
    )])
    .await;
    let cfg = BootConfig::from_cmdline(&format!(
        "ingot.url={url} ingot.token=t ingot.purpose=commission"
    ))
    .unwrap();
    let outcome = run(&cfg, &roots, FAST, console().0).await.unwrap();
    assert_eq!(outcome.done, Done::Erased);
    let events: Vec<_> = stub
        .reports
        .lock()
        .unwrap()
        .iter()
        .map(|r| r["event"].clone())
        .collect();
    assert_eq!(events, ["progress", "erased"]);
    let mut f = std::fs::File::open(&path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size);
    for (at, want) in [(0, 0u8), (size / 2, 0xA5), (size - 4096, 0)] {
        let mut buf = [1u8; 4096];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == want), "at {at}: want {want:#x}");
    }
}

#[tokio::test]
async fn a_full_erase_is_refused_and_reported_as_failed() {
    let roots = Roots::under(&fixture("qemu-bios-virtio"));
    let (url, stub) = stub(vec![(
        StatusCode::OK,
        r#"{"action":"erase","machine_id":"abc123","quick":false}"#,
    )])
    .await;
    let cfg = BootConfig::from_cmdline(&format!("ingot.url={url} ingot.token=t")).unwrap();
    let err = run(&cfg, &roots, FAST, console().0).await.unwrap_err();
    assert!(matches!(err, RunAgentError::Unsupported(_)), "{err:?}");
    let reports = stub.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["event"], "failed");
}
