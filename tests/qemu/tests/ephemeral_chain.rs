//! The whole netboot chain on real firmware: Ingot DHCP → iPXE → per-MAC script → kernel and
//! initrd over Ingot's HTTP boot service → the ephemeral agent calls the region with the
//! one-time token it found on its kernel command line.
//!
//! The ephemeral image comes from `images/ephemeral/build.sh` (cached by content hash), or from
//! `$INGOT_EPHEMERAL_DIR` when set. The test fails, never skips, when it cannot be built.

use ingot_lab::pxe_stack::LabEvent;
use ingot_lab::{Firmware, Lab, LabDhcp, PxeStack, RecordingBackend, VmSpec, require_lab_files};
use ingot_types::boot::BootPurpose;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// PXE (≈18 s) + kernel and initrd over HTTP + Linux boot + DHCP + agent start, under TCG.
const CHAIN_TIMEOUT: Duration = Duration::from_secs(300);

fn ephemeral_image() -> PathBuf {
    if let Some(dir) = std::env::var_os("INGOT_EPHEMERAL_DIR") {
        return PathBuf::from(dir);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(repo.join("images/ephemeral/build.sh"))
        .current_dir(&repo)
        .output()
        .expect("running images/ephemeral/build.sh");
    assert!(
        out.status.success(),
        "images/ephemeral/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("build.sh prints its output directory")
            .trim(),
    );
    for file in ["vmlinuz", "initrd.gz"] {
        assert!(dir.join(file).is_file(), "{} has no {file}", dir.display());
    }
    dir
}

/// Request line and `Authorization` header of each request the stand-in region saw.
type RegionLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A stand-in region on 10.77.0.1:5240 inside the lab: records each request's line and
/// `Authorization` header and answers 503, so the agent keeps retrying until the test ends.
fn start_fake_region(lab: &Lab) -> RegionLog {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    lab.spawn_in_netns(move || {
        let listener = TcpListener::bind("10.77.0.1:5240").expect("bind fake region");
        bound_tx.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut auth = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("authorization")
                {
                    auth = Some(value.trim().to_string());
                }
            }
            log.lock().unwrap().push((request_line.trim().to_string(), auth));
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    })
    .expect("fake region thread");
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("fake region bound");
    seen
}

#[test]
fn bios_vm_boots_the_ephemeral_agent_which_calls_the_region_with_its_token() {
    require_lab_files(Firmware::Bios).expect("lab prerequisites");
    let image = ephemeral_image();
    let images = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&image, images.path().join("ephemeral")).unwrap();

    let mac = "52:54:00:77:00:04";
    let mut lab = Lab::new().expect("lab namespace");
    let tap = lab.add_tap().expect("tap");
    let region = start_fake_region(&lab);
    let backend = Arc::new(RecordingBackend::new(
        "http://10.77.0.1:5240",
        &[(mac, BootPurpose::Commission)],
    ));
    let stack = PxeStack::start(&lab, backend, images.path().to_path_buf(), LabDhcp::Ingot)
        .expect("PXE services");
    let mut spec = VmSpec::new("bios-ephemeral", Firmware::Bios, mac, &tap);
    spec.memory_mb = 1024;
    let vm = lab.launch_vm(&spec).expect("qemu");

    let token = "lab-token-525400770004";
    let call = ingot_lab::wait_for(CHAIN_TIMEOUT, || {
        region
            .lock()
            .unwrap()
            .iter()
            .find(|(_, auth)| auth.is_some())
            .cloned()
    });
    let Some((request_line, auth)) = call else {
        panic!(
            "the agent never called the region within {CHAIN_TIMEOUT:?}; region saw {:?}; script served: {}; serial:\n{}\nlogs in {}",
            region.lock().unwrap(),
            stack
                .events()
                .iter()
                .any(|e| matches!(e, LabEvent::Script { .. })),
            vm.serial_log(),
            lab.logs_dir().display()
        );
    };
    eprintln!(
        "bios-ephemeral: agent called the region {:.1} s after VM start: {request_line}",
        vm.started.elapsed().as_secs_f64()
    );
    assert_eq!(auth.as_deref(), Some(format!("Bearer {token}").as_str()));
    assert!(request_line.contains(" /agent/v1/"), "{request_line}");
    let serial = vm.serial_log();
    assert!(
        serial.contains(&format!("ingot.token={token}")),
        "kernel command line on the console:\n{serial}"
    );
}
