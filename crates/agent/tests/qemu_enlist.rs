//! The real ephemeral environment in QEMU against a real region: the image from
//! `images/ephemeral/build.sh` (cached by input hash), booted with `-kernel/-initrd` the way
//! the iPXE script would boot it, the region in-process on 127.0.0.1. QEMU's user-mode network
//! maps the guest's 10.0.2.2 to the host's loopback, so all traffic stays on this machine.
//!
//! A VM with 2 vCPUs, 1 GiB and an 8 GiB virtio disk enlists (New, with exactly its MAC, CPU
//! count, memory and disk), commissions to Ready, and is released with a quick erase (the
//! ends of its disk zeroed) back to Ready. A UEFI VM facing an unreachable region says so and
//! powers off. Serial logs are kept when a test fails (and with `INGOT_KEEP_VM_LOGS=1`).
//!
//! Needs qemu-system-x86, qemu-utils, kmod, cpio and the apt mirror (first build only). When
//! they are missing the test fails under `CI` or `INGOT_REQUIRE_LAB`, and otherwise says so
//! and passes (a developer machine without QEMU).

mod common;

use ingot_engine::Actor;
use ingot_store::AllocationConstraints;
use ingot_types::boot::BootPurpose;
use ingot_types::lifecycle::NodeStatus;
use ingot_types::machine::Machine;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// TCG boots take about 10 s here; leave room for a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const MAC: &str = "52:54:00:a9:00:01";
const DISK_BYTES: u64 = 8 << 30;
const DISK_SERIAL: &str = "INGOT-DISK-1";
const SYSTEM_SERIAL: &str = "INGOT-VM-1";
/// Debian package `ovmf`.
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// Two cores: one TCG VM at a time.
static ONE_VM_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firmware {
    /// SeaBIOS
    Bios,
    /// OVMF
    Uefi,
}

fn lab_required() -> bool {
    ["CI", "INGOT_REQUIRE_LAB"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Where this run's serial logs, QEMU logs and disk live; removed on success, kept (and
/// named) on failure.
struct Logs {
    dir: PathBuf,
}

impl Logs {
    fn new(name: &str) -> Self {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Logs { dir }
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("VM logs kept in {}", self.dir.display());
            for log in [
                "enlist.serial.log",
                "commission.serial.log",
                "unreachable.serial.log",
            ] {
                if let Ok(text) = std::fs::read_to_string(self.dir.join(log)) {
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    eprintln!("--- last lines of {log} ---");
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        } else if std::env::var_os("INGOT_KEEP_VM_LOGS").is_some() {
            eprintln!(
                "VM logs kept in {} (INGOT_KEEP_VM_LOGS)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct Image {
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

/// Runs the recipe; a no-op apart from the agent's cargo check when nothing changed.
fn build_image() -> Result<Image, String> {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(repo_root().join("images/ephemeral/build.sh"))
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run images/ephemeral/build.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("images/ephemeral/build.sh failed ({})", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    eprintln!(
        "image {} ready in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(Image {
        vmlinuz: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
    })
}

/// Everything a test needs from the host: the image. When something is missing the test
/// fails under CI/INGOT_REQUIRE_LAB; elsewhere it says why and gets None (the test returns).
fn prerequisites(firmware: Firmware) -> Option<Image> {
    let check = || {
        for program in ["qemu-system-x86_64", "qemu-img"] {
            if !have(program) {
                return Err(format!(
                    "{program} is missing (apt-get install qemu-system-x86 qemu-utils)"
                ));
            }
        }
        if firmware == Firmware::Uefi && !Path::new(OVMF).exists() {
            return Err(format!("{OVMF} is missing (apt-get install ovmf)"));
        }
        build_image()
    };
    match check() {
        Ok(image) => Some(image),
        Err(why) if !lab_required() => {
            eprintln!("NOT RUN (set CI or INGOT_REQUIRE_LAB to make this a failure): {why}");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

/// Runs a `qemu-io` command on the (stopped) VM's disk; `read -P` verifies a pattern.
fn qemu_io(disk: &Path, command: &str) {
    let out = Command::new("qemu-io")
        .args(["-c", command])
        .arg(disk)
        .output()
        .expect("qemu-io (qemu-utils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {command}: {text}"
    );
}

fn create_disk(logs: &Logs) -> PathBuf {
    let disk = logs.dir.join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg(DISK_BYTES.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img create");
    disk
}

struct Vm {
    child: Child,
    started: Instant,
    serial: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Powers on a VM that boots the ephemeral environment directly (what iPXE does after
/// fetching kernel and initrd). The NIC gets no option ROM: nothing netboots here, and
/// loading iPXE costs seconds under TCG.
fn power_on(
    image: &Image,
    logs: &Logs,
    disk: &Path,
    label: &str,
    cmdline: &str,
    firmware: Firmware,
) -> Vm {
    let accel = std::env::var("INGOT_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    let serial = logs.dir.join(format!("{label}.serial.log"));
    let qemu_log = std::fs::File::create(logs.dir.join(format!("{label}.qemu.log"))).unwrap();
    let mut qemu = Command::new("qemu-system-x86_64");
    if firmware == Firmware::Uefi {
        qemu.args(["-bios", OVMF]);
    }
    let child = qemu
        .args([
            "-accel",
            &accel,
            "-m",
            "1024",
            "-smp",
            "2",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args([
            "-serial",
            &format!("file:{}", serial.display()),
            "-monitor",
            "none",
        ])
        .arg("-kernel")
        .arg(&image.vmlinuz)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", cmdline])
        .args(["-netdev", "user,id=n0,ipv6=off"])
        .args([
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={MAC},romfile="),
        ])
        .args([
            "-drive",
            &format!("file={},if=none,id=d0,format=qcow2", disk.display()),
        ])
        .args([
            "-device",
            &format!("virtio-blk-pci,drive=d0,serial={DISK_SERIAL}"),
        ])
        .args(["-smbios", &format!("type=1,serial={SYSTEM_SERIAL}")])
        .stdin(Stdio::null())
        .stdout(qemu_log.try_clone().unwrap())
        .stderr(qemu_log)
        .spawn()
        .expect("start qemu-system-x86_64");
    Vm {
        child,
        started: Instant::now(),
        serial,
    }
}

impl Vm {
    /// Waits (bounded) for the guest to power itself off.
    async fn powered_off(&mut self) -> Duration {
        while self.started.elapsed() < BOOT_TIMEOUT {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "qemu exited with {status}");
                return self.started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "VM still running after {BOOT_TIMEOUT:?}; serial log {}",
            self.serial.display()
        );
    }

    fn serial_log(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }
}

/// The kernel command line as `templates/ipxe/ephemeral.ipxe.tera` renders it.
fn cmdline(region_url: &str, token: &str, purpose: &str) -> String {
    format!(
        "console=ttyS0 quiet ingot.url={region_url} ingot.token={token} ingot.purpose={purpose} BOOTIF=01-{}",
        MAC.replace(':', "-")
    )
}

fn assert_hardware(m: &Machine) {
    assert_eq!(m.boot_mac.as_deref(), Some(MAC));
    assert_eq!(m.cpu_count, 2, "vCPUs");
    // 1 GiB configured; the memory-block view reports it exactly, MemTotal (the fallback)
    // lacks what the kernel reserved for itself.
    assert!(
        (900..=1024).contains(&m.memory_mib),
        "memory {} MiB",
        m.memory_mib
    );
    assert_eq!(m.disks.len(), 1, "{:?}", m.disks);
    assert_eq!(
        (m.disks[0].size_bytes, m.disks[0].serial.as_str()),
        (DISK_BYTES, DISK_SERIAL),
        "{:?}",
        m.disks
    );
    assert_eq!(m.interfaces.len(), 1, "{:?}", m.interfaces);
    let nic = &m.interfaces[0];
    assert_eq!(
        (nic.mac.as_str(), nic.driver.as_str(), nic.link_up),
        (MAC, "virtio_net", true),
        "{nic:?}"
    );
    assert_eq!(
        (m.system.vendor.as_str(), m.system.serial.as_str()),
        ("QEMU", SYSTEM_SERIAL)
    );
}

/// Guest uptime of the first `ingot-init [..s]` line: when the kernel handed over to /init.
fn init_uptime(serial: &str) -> Option<f64> {
    let start = serial.find("ingot-init [")? + "ingot-init [".len();
    serial[start..].split('s').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_vm_enlists_commissions_and_is_released_with_erase() {
    let _one = ONE_VM_AT_A_TIME.lock().await;
    let Some(image) = prerequisites(Firmware::Bios) else {
        return;
    };
    let logs = Logs::new("qemu-enlist");
    let disk = create_disk(&logs);

    // The guest reaches the loopback-bound region as 10.0.2.2.
    let region = common::region("10.0.2.2").await;
    let store = region.engine.store().clone();

    // --- enlistment: unknown MAC ----------------------------------------------------------
    let decision = region.engine.boot_decision(MAC).await.unwrap();
    assert_eq!(decision.purpose, BootPurpose::Enlist);
    let line = cmdline(
        &decision.region_url,
        decision.boot_token.as_deref().unwrap(),
        "enlist",
    );
    let mut vm = power_on(&image, &logs, &disk, "enlist", &line, Firmware::Bios);
    let enlisted_after = loop {
        if store.machine_by_mac(MAC).await.unwrap().is_some() {
            break vm.started.elapsed();
        }
        assert!(
            vm.started.elapsed() < BOOT_TIMEOUT,
            "no enlistment within {BOOT_TIMEOUT:?}"
        );
        if let Some(status) = vm.child.try_wait().unwrap() {
            panic!("VM powered off ({status}) without enlisting");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let off_after = vm.powered_off().await;
    let serial = vm.serial_log();
    assert!(
        serial.contains("DONE: machine"),
        "agent did not finish cleanly"
    );
    let m = store.machine_by_mac(MAC).await.unwrap().unwrap();
    assert_eq!(m.status, NodeStatus::New);
    assert_hardware(&m);
    let enlist_init = init_uptime(&serial);
    drop(vm);

    // --- commissioning: New -> Commissioning -> Ready ---------------------------------------
    // Enlisted machines have the manual power type: the engine records that it cannot power
    // the machine, and the test presses the power button.
    region
        .engine
        .commission(&Actor::system("qemu-test"), &m.id)
        .await
        .unwrap();
    let decision = region.engine.boot_decision(MAC).await.unwrap();
    assert_eq!(decision.purpose, BootPurpose::Commission);
    assert_eq!(decision.machine_id.as_ref(), Some(&m.id));
    let line = cmdline(
        &decision.region_url,
        decision.boot_token.as_deref().unwrap(),
        "commission",
    );
    let mut vm = power_on(&image, &logs, &disk, "commission", &line, Firmware::Bios);
    let ready_after = loop {
        let now = store.machine(&m.id).await.unwrap();
        match now.status {
            NodeStatus::Ready => break vm.started.elapsed(),
            NodeStatus::Commissioning => {}
            other => panic!("commissioning ended in {other:?}: {}", now.status_message),
        }
        assert!(
            vm.started.elapsed() < BOOT_TIMEOUT,
            "not Ready within {BOOT_TIMEOUT:?}"
        );
        if let Some(status) = vm.child.try_wait().unwrap() {
            panic!("VM powered off ({status}) before the machine was Ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let commission_off_after = vm.powered_off().await;
    let serial = vm.serial_log();
    let m = store.machine(&m.id).await.unwrap();
    assert_eq!(m.status, NodeStatus::Ready);
    assert_hardware(&m);
    assert!(m.deadline.is_none(), "Ready machines have no deadline");

    eprintln!(
        "BENCH enlist: power-on -> enlisted {:.1} s, -> powered off {:.1} s (kernel -> /init at {:?} s guest uptime)",
        enlisted_after.as_secs_f64(),
        off_after.as_secs_f64(),
        enlist_init
    );
    eprintln!(
        "BENCH commission: power-on -> Ready {:.1} s, -> powered off {:.1} s (kernel -> /init at {:?} s guest uptime)",
        ready_after.as_secs_f64(),
        commission_off_after.as_secs_f64(),
        init_uptime(&serial)
    );

    // --- release with quick erase: Ready -> Allocated -> Disk erasing -> Ready -------------
    // Data at both ends (where partition tables live) and in the middle of the disk.
    let mib = 1u64 << 20;
    for at in [0, DISK_BYTES / 2, DISK_BYTES - mib] {
        qemu_io(&disk, &format!("write -P 0xa5 {at} 1M"));
    }
    let tenant = store.create_user("tenant", false).await.unwrap();
    let actor = Actor::user(&tenant);
    let want = AllocationConstraints {
        system_id: Some(m.id.to_string()),
        ..Default::default()
    };
    region.engine.allocate(&actor, &want).await.unwrap();
    let releasing = region.engine.release(&actor, &m.id, true).await.unwrap();
    assert_eq!(releasing.status, NodeStatus::DiskErasing);
    let decision = region.engine.boot_decision(MAC).await.unwrap();
    // The iPXE template names the ephemeral purpose "commission" for erasing too.
    assert_eq!(decision.purpose, BootPurpose::Commission);
    let line = cmdline(
        &decision.region_url,
        decision.boot_token.as_deref().unwrap(),
        "commission",
    );
    let mut vm = power_on(&image, &logs, &disk, "erase", &line, Firmware::Bios);
    let erased_after = loop {
        let now = store.machine(&m.id).await.unwrap();
        match now.status {
            NodeStatus::Ready => break vm.started.elapsed(),
            NodeStatus::DiskErasing => {}
            other => panic!("erasing ended in {other:?}: {}", now.status_message),
        }
        assert!(
            vm.started.elapsed() < BOOT_TIMEOUT,
            "not Ready within {BOOT_TIMEOUT:?}"
        );
        if let Some(status) = vm.child.try_wait().unwrap() {
            panic!("VM powered off ({status}) before the erase was reported");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    vm.powered_off().await;
    drop(vm);
    let m = store.machine(&m.id).await.unwrap();
    assert_eq!((m.status, m.owner), (NodeStatus::Ready, None), "released");
    qemu_io(&disk, "read -P 0 0 1M");
    qemu_io(&disk, &format!("read -P 0 {} 1M", DISK_BYTES - mib));
    qemu_io(&disk, &format!("read -P 0xa5 {} 1M", DISK_BYTES / 2));
    eprintln!(
        "BENCH release with quick erase: power-on -> Ready {:.1} s",
        erased_after.as_secs_f64()
    );
}

/// UEFI firmware, and a region nobody answers at: the agent retries, says why on the console
/// in words an operator can act on, and the environment powers the machine off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uefi_vm_facing_an_unreachable_region_says_so_and_powers_off() {
    let _one = ONE_VM_AT_A_TIME.lock().await;
    let Some(image) = prerequisites(Firmware::Uefi) else {
        return;
    };
    let logs = Logs::new("qemu-unreachable");
    let disk = create_disk(&logs);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: the guest's connections to 10.0.2.2:port are refused
    let region_url = format!("http://10.0.2.2:{port}");
    let line = format!(
        "{} ingot.attempts=3",
        cmdline(&region_url, "t0ken", "commission")
    );
    let mut vm = power_on(&image, &logs, &disk, "unreachable", &line, Firmware::Uefi);
    let off_after = vm.powered_off().await;
    let serial = vm.serial_log();
    for want in [
        "Uefi boot".to_owned(),
        "region not answering /instructions (attempt 1/3: Connection refused".to_owned(),
        format!(
            "FAILED: region at {region_url} is unreachable: gave up trying to get instructions after 3 attempts"
        ),
        "powering off".to_owned(),
    ] {
        assert!(serial.contains(&want), "serial console lacks {want:?}");
    }
    assert!(
        !serial.contains("t0ken"),
        "the token must not appear on the console"
    );
    eprintln!(
        "BENCH unreachable (UEFI): power-on -> powered off {:.1} s",
        off_after.as_secs_f64()
    );
}
