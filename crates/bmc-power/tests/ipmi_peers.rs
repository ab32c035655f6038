//! The IPMI driver against real BMC emulators that each test starts on 127.0.0.1 (free ports) and
//! tears down:
//! - OpenIPMI `ipmi_sim` (Debian `openipmi`): power on runs a tiny TCG QEMU (`startcmd`), power
//!   off stops it, so the tests check a real process appears and disappears. It enforces session
//!   privilege and offers cipher suites 0–11 (so 3, not 17) and IPMI 1.5 MD5/straight auth.
//! - VirtualBMC 3.3.0 (pyghmi) in front of a libvirt `type='qemu'` domain: power really starts
//!   and stops the domain, and boot flags rewrite the domain's `<boot dev=...>`. It offers cipher
//!   suite 3 only, answers Get Channel Cipher Suites with "invalid command" and answers a
//!   suite-17 proposal with suite-3 algorithms, which exercises the driver's fallback.
//! - `ipmitool -I lanplus -C 3` (Debian `ipmitool`) as an independent client reading the same BMC.
//!
//! Requirements (the tests fail, never skip, without them):
//! - Debian: `openipmi ipmitool qemu-system-x86 libvirt-daemon-system libvirt-clients
//!   libvirt-daemon-driver-qemu libvirt-dev pkg-config gcc python3-venv`;
//! - a venv with `virtualbmc==3.3.0 libvirt-python` at `$INGOT_VBMC_VENV`, else
//!   `/var/cache/ingot-vbmc-venv` (created on first use with pip, which needs PyPI);
//! - libvirtd: used if it answers on qemu:///system, else started here (`virtlogd -d`,
//!   `libvirtd -d`, no systemd needed) and left running like any system service. Before the
//!   first start the test appends the lab settings of crates-and-lab.md part a to
//!   /etc/libvirt/qemu.conf (QEMU as root, no namespaces); without them every domain define
//!   takes ~30 s here and VirtualBMC's boot-device command outlives any IPMI timeout.

use bmc_power::ipmi::crypto::CipherSuite;
use bmc_power::ipmi::{IpmiDriver, IpmiSettings};
use bmc_power::{DriverFactory, Drivers, PowerDriver, PowerError};
use ingot_types::power::{BootDevice, BootPersistence, PowerParameters, PowerState, PowerType};
use std::time::{Duration, Instant};

const USER: &str = "admin";
const PASSWORD: &str = "ingot-test-pw";

mod peers {
    use std::fs;
    use std::net::{TcpListener, UdpSocket};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Fails the test (never skips) when a peer tool is missing.
    pub fn require(tool: &str, debian_package: &str) -> PathBuf {
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(tool))
                .find(|path| path.is_file())
        });
        found.unwrap_or_else(|| {
            panic!(
                "peer tool {tool} is missing: install Debian package {debian_package} \
                 (CI: apt-get install -y openipmi ipmitool qemu-system-x86)"
            )
        })
    }

    pub fn free_udp_port() -> u16 {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    pub fn free_tcp_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn template(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/peers/ipmi_sim")
            .join(name);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// PIDs of processes whose command line contains `token`.
    pub fn processes_with(token: &str) -> Vec<u32> {
        let mut pids = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(token) && !cmdline.contains("ipmi_sim") {
                pids.push(pid);
            }
        }
        pids
    }

    /// A running ipmi_sim; killed (with the QEMU it started) on drop.
    pub struct IpmiSim {
        child: Option<Child>,
        pub port: u16,
        /// Unique QEMU `-name`, to find the guest process.
        pub qemu_name: String,
        _dir: tempfile::TempDir,
        log: PathBuf,
    }

    impl IpmiSim {
        pub fn start(password: &str) -> Self {
            let binary = require("ipmi_sim", "openipmi");
            require("qemu-system-x86_64", "qemu-system-x86");
            let dir = tempfile::tempdir().unwrap();
            let port = free_udp_port();
            let serial_port = free_tcp_port();
            let qemu_name = format!("ingot-ipmi-{}-{port}", std::process::id());
            let config = template("lan.conf.in")
                .replace("@NAME@", &format!("ingot{port}"))
                .replace("@LAN_PORT@", &port.to_string())
                .replace("@SERIAL_PORT@", &serial_port.to_string())
                .replace("@QEMU_NAME@", &qemu_name)
                .replace("@USER@", super::USER)
                .replace("@PASSWORD@", password);
            fs::write(dir.path().join("lan.conf"), config).unwrap();
            fs::write(dir.path().join("sim.emu"), template("sim.emu")).unwrap();
            fs::create_dir(dir.path().join("state")).unwrap();
            let log = dir.path().join("ipmi_sim.log");
            let child = Command::new(binary)
                .arg("-c")
                .arg(dir.path().join("lan.conf"))
                .arg("-f")
                .arg(dir.path().join("sim.emu"))
                .arg("-s")
                .arg(dir.path().join("state"))
                .arg("-n")
                .stdin(Stdio::null())
                .stdout(fs::File::create(&log).unwrap())
                .stderr(Stdio::from(
                    fs::File::create(dir.path().join("ipmi_sim.err")).unwrap(),
                ))
                .spawn()
                .expect("start ipmi_sim");
            let sim = IpmiSim {
                child: Some(child),
                port,
                qemu_name,
                _dir: dir,
                log,
            };
            sim.wait_until_listening();
            sim
        }

        /// ipmi_sim binds its LAN port after reading the config; wait until the port is taken.
        fn wait_until_listening(&self) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if UdpSocket::bind(("127.0.0.1", self.port)).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!(
                "ipmi_sim did not bind 127.0.0.1:{} (log: {})",
                self.port,
                self.log()
            );
        }

        pub fn log(&self) -> String {
            fs::read_to_string(&self.log).unwrap_or_default()
        }

        pub fn qemu_pids(&self) -> Vec<u32> {
            processes_with(&self.qemu_name)
        }

        /// Stops the BMC (the guest QEMU too), as if it lost power.
        pub fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            for pid in self.qemu_pids() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }

    impl Drop for IpmiSim {
        fn drop(&mut self) {
            self.stop();
        }
    }

    /// `ipmitool -I lanplus -C 3 ... power status` → "on"/"off". The password goes through the
    /// environment (`-E`), not the command line.
    pub fn ipmitool_power_status(port: u16, password: &str) -> String {
        let binary = require("ipmitool", "ipmitool");
        let out = Command::new(binary)
            .args([
                "-I",
                "lanplus",
                "-C",
                "3",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .args([
                "-U",
                super::USER,
                "-E",
                "-N",
                "1",
                "-R",
                "3",
                "power",
                "status",
            ])
            .env("IPMI_PASSWORD", password)
            .output()
            .expect("run ipmitool");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ipmitool failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match stdout.trim() {
            "Chassis Power is on" => "on".into(),
            "Chassis Power is off" => "off".into(),
            other => panic!("unexpected ipmitool output {other:?}"),
        }
    }

    pub fn wait_for(
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut() -> bool,
    ) -> Duration {
        let started = Instant::now();
        while !condition() {
            assert!(
                started.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    }
}

use peers::IpmiSim;

mod vbmc {
    use super::peers::{free_tcp_port, free_udp_port, require};
    use std::fs;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    const PACKAGES: [&str; 2] = ["virtualbmc==3.3.0", "libvirt-python"];
    const DEFAULT_VENV: &str = "/var/cache/ingot-vbmc-venv";
    const LIBVIRT_URI: &str = "qemu:///system";
    const LIBVIRTD_SOCKET: &str = "/run/libvirt/libvirt-sock";
    const VIRTLOGD_SOCKET: &str = "/run/libvirt/virtlogd-sock";
    const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";
    const LAB_QEMU_CONF: &str = "\n# ingot lab (crates-and-lab.md part a): QEMU as root, no namespaces, no chown\n\
        user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\nnamespaces = []\n";

    fn run(command: &mut Command) -> String {
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (is it installed?)"));
        assert!(
            out.status.success(),
            "{command:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The venv holding vbmc/vbmcd, created once per process if missing.
    pub fn venv() -> &'static Path {
        static VENV: OnceLock<PathBuf> = OnceLock::new();
        static CREATING: Mutex<()> = Mutex::new(());
        VENV.get_or_init(|| {
            let _one_at_a_time = CREATING.lock().unwrap();
            let dir = std::env::var_os("INGOT_VBMC_VENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
            if !dir.join("bin/vbmcd").exists() {
                require("python3", "python3-venv");
                require("pkg-config", "pkg-config");
                eprintln!("creating {} with {PACKAGES:?}", dir.display());
                run(Command::new("python3").arg("-m").arg("venv").arg(&dir));
                run(Command::new(dir.join("bin/pip"))
                    .args(["install", "--quiet"])
                    .args(PACKAGES));
            }
            assert!(
                dir.join("bin/vbmcd").exists(),
                "no vbmcd in {}",
                dir.display()
            );
            dir
        })
    }

    fn virsh(args: &[&str]) -> Command {
        let mut command = Command::new(require("virsh", "libvirt-clients"));
        command.arg("-c").arg(LIBVIRT_URI).args(args);
        command
    }

    fn socket_answers(path: &str) -> bool {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    }

    fn libvirt_answers() -> bool {
        socket_answers(VIRTLOGD_SOCKET)
            && socket_answers(LIBVIRTD_SOCKET)
            && virsh(&["uri"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Starts a daemon that detaches itself (`-d`); stdio is not inherited, so nothing waits on
    /// the daemon's pipes.
    fn start_daemon(binary: PathBuf) {
        let status = Command::new(&binary)
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        assert!(status.success(), "{} -d failed: {status}", binary.display());
    }

    /// Makes sure libvirtd (and virtlogd, which starts domains' logging) answer.
    pub fn ensure_libvirt() {
        static READY: OnceLock<()> = OnceLock::new();
        static STARTING: Mutex<()> = Mutex::new(());
        READY.get_or_init(|| {
            let _one_at_a_time = STARTING.lock().unwrap();
            let virtlogd = require("virtlogd", "libvirt-daemon-system");
            let libvirtd = require("libvirtd", "libvirt-daemon-system");
            let configured = fs::read_to_string(QEMU_CONF)
                .unwrap_or_default()
                .lines()
                .any(|line| line.trim() == r#"user = "root""#);
            if libvirt_answers() {
                assert!(
                    configured,
                    "libvirtd runs without the lab settings in {QEMU_CONF}; every domain define \
                     then re-probes QEMU as libvirt-qemu (~30 s). Stop it, then rerun: the test \
                     adds {LAB_QEMU_CONF:?} and starts libvirtd"
                );
                return;
            }
            if !configured {
                // crates-and-lab.md part a: without these, QEMU runs as libvirt-qemu, which
                // cannot open /dev/kvm here, and libvirt re-probes capabilities on each define.
                let mut conf = fs::OpenOptions::new().append(true).open(QEMU_CONF).unwrap();
                std::io::Write::write_all(&mut conf, LAB_QEMU_CONF.as_bytes()).unwrap();
            }
            if !socket_answers(VIRTLOGD_SOCKET) {
                start_daemon(virtlogd);
            }
            if !socket_answers(LIBVIRTD_SOCKET) {
                fs::create_dir_all("/run/libvirt").unwrap();
                start_daemon(libvirtd);
            }
            // The first start probes QEMU's capabilities, which takes a while under TCG.
            let deadline = Instant::now() + Duration::from_secs(120);
            while !libvirt_answers() {
                assert!(
                    Instant::now() < deadline,
                    "libvirtd did not answer on {LIBVIRT_URI}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }

    /// A libvirt domain (TCG, 64 MiB, no disk) behind its own vbmcd; all removed on drop.
    pub struct VirtualBmc {
        vbmcd: Option<Child>,
        pub port: u16,
        pub domain: String,
        home: tempfile::TempDir,
    }

    impl VirtualBmc {
        pub fn start(user: &str, password: &str) -> Self {
            require("qemu-system-x86_64", "qemu-system-x86");
            let venv = venv();
            ensure_libvirt();
            let home = tempfile::tempdir().unwrap();
            let port = free_udp_port();
            let domain = format!("ingot-vbmc-{}-{port}", std::process::id());
            let xml = fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/vbmc/domain.xml.in"),
            )
            .unwrap()
            .replace("@NAME@", &domain);
            fs::write(home.path().join("domain.xml"), xml).unwrap();
            run(virsh(&["define"]).arg(home.path().join("domain.xml")));
            // vbmcd's ZMQ control port is global by default (50891): one per test instead.
            let config_dir = home.path().join(".vbmc");
            fs::create_dir_all(&config_dir).unwrap();
            fs::write(
                config_dir.join("virtualbmc.conf"),
                format!(
                    "[default]\nserver_port = {}\nconfig_dir = {}\n[log]\nlogfile = {}\n",
                    free_tcp_port(),
                    config_dir.display(),
                    home.path().join("vbmc.log").display()
                ),
            )
            .unwrap();
            // Own process group: vbmcd forks one child per BMC, and teardown must get both.
            let vbmcd = Command::new(venv.join("bin/vbmcd"))
                .arg("--foreground")
                .env("HOME", home.path())
                .current_dir(home.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(home.path().join("vbmcd.err")).unwrap())
                .process_group(0)
                .spawn()
                .expect("start vbmcd");
            let bmc = VirtualBmc {
                vbmcd: Some(vbmcd),
                port,
                domain,
                home,
            };
            let port_arg = port.to_string();
            let add = [
                "add",
                &bmc.domain,
                "--port",
                &port_arg,
                "--address",
                "127.0.0.1",
                "--username",
                user,
                "--password",
                password,
                "--libvirt-uri",
                LIBVIRT_URI,
            ];
            // vbmcd needs a moment before its control socket answers.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !bmc.vbmc(&add).status().is_ok_and(|s| s.success()) {
                assert!(Instant::now() < deadline, "vbmcd did not accept `vbmc add`");
                std::thread::sleep(Duration::from_millis(300));
            }
            run(&mut bmc.vbmc(&["start", &bmc.domain]));
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "virtual BMC did not bind port {port}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            bmc
        }

        fn vbmc(&self, args: &[&str]) -> Command {
            let mut command = Command::new(venv().join("bin/vbmc"));
            command
                .args(args)
                .env("HOME", self.home.path())
                .current_dir(self.home.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command
        }

        /// `virsh domstate`: "running", "shut off", ...
        pub fn domain_state(&self) -> String {
            run(&mut virsh(&["domstate", &self.domain]))
                .trim()
                .to_owned()
        }

        /// The `<boot dev=...>` of the persistent definition.
        pub fn boot_devices(&self) -> Vec<String> {
            let xml = run(&mut virsh(&["dumpxml", "--inactive", &self.domain]));
            xml.lines()
                .filter_map(|line| line.trim().strip_prefix("<boot dev='"))
                .filter_map(|rest| rest.split('\'').next().map(str::to_owned))
                .collect()
        }

        /// Stops the virtual BMC (the domain stays).
        pub fn stop_bmc(&mut self) {
            if let Some(mut child) = self.vbmcd.take() {
                // `-- -PGID` addresses the process group this test created (vbmcd and the BMC
                // process it forked).
                let group = format!("-{}", child.id());
                let _ = Command::new("kill")
                    .args(["-s", "KILL", "--", &group])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while child.try_wait().ok().flatten().is_none() {
                    assert!(
                        Instant::now() < deadline,
                        "vbmcd group {group} did not exit"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    impl Drop for VirtualBmc {
        fn drop(&mut self) {
            self.stop_bmc();
            let quiet = |args: &[&str]| {
                let _ = virsh(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            };
            quiet(&["destroy", &self.domain]);
            quiet(&["undefine", &self.domain]);
        }
    }
}

use vbmc::VirtualBmc;

fn parameters(port: u16, password: &str, power_driver: Option<&str>) -> PowerParameters {
    PowerParameters {
        power_address: Some(format!("127.0.0.1:{port}")),
        power_user: Some(USER.into()),
        power_pass: Some(password.into()),
        power_driver: power_driver.map(str::to_owned),
        ..Default::default()
    }
}

/// Short retry windows: the peers are on loopback.
fn fast_settings() -> IpmiSettings {
    IpmiSettings {
        call_timeout: Duration::from_secs(10),
        first_attempt_timeout: Duration::from_millis(300),
        max_attempt_timeout: Duration::from_secs(1),
        max_attempts: 4,
        ..IpmiSettings::default()
    }
}

/// VirtualBMC answers boot-device and power commands only after libvirt redefined or started
/// the domain, which takes seconds on a loaded 2-core machine: longer attempts, fewer duplicates.
fn vbmc_settings() -> IpmiSettings {
    IpmiSettings {
        call_timeout: Duration::from_secs(60),
        first_attempt_timeout: Duration::from_secs(3),
        max_attempt_timeout: Duration::from_secs(6),
        max_attempts: 4,
        ..IpmiSettings::default()
    }
}

fn vbmc_driver(port: u16, password: &str) -> IpmiDriver {
    IpmiDriver::from_parameters(&parameters(port, password, None))
        .unwrap()
        .with_settings(vbmc_settings())
}

fn driver(port: u16, password: &str, power_driver: Option<&str>) -> IpmiDriver {
    IpmiDriver::from_parameters(&parameters(port, password, power_driver))
        .unwrap()
        .with_settings(fast_settings())
}

/// Power changes land asynchronously on a BMC (ipmi_sim reports off once the guest's connection
/// closes), so poll with a deadline like the engine does.
async fn wait_for_power(driver: &dyn PowerDriver, expected: PowerState) -> Duration {
    let started = Instant::now();
    loop {
        let state = driver.power_state().await;
        if state == Ok(expected) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "power state still {state:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn timed<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let result = future.await;
    eprintln!("{what}: {:?}", started.elapsed());
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmi_sim_power_on_off_status_round_trip_drives_a_real_qemu() {
    let sim = IpmiSim::start(PASSWORD);
    // Through the factory, as the engine builds it.
    let driver = Drivers::default()
        .driver_for(PowerType::Ipmi, &parameters(sim.port, PASSWORD, None))
        .unwrap();

    assert_eq!(
        timed("status (cold)", driver.power_state()).await,
        Ok(PowerState::Off)
    );
    assert_eq!(peers::ipmitool_power_status(sim.port, PASSWORD), "off");
    assert!(sim.qemu_pids().is_empty());

    timed("power on", driver.power_on()).await.unwrap();
    let appeared = peers::wait_for("the QEMU guest to start", Duration::from_secs(20), || {
        !sim.qemu_pids().is_empty()
    });
    eprintln!("QEMU process appeared {appeared:?} after power on");
    let settled = wait_for_power(driver.as_ref(), PowerState::On).await;
    eprintln!("BMC reported on {settled:?} later");
    assert_eq!(peers::ipmitool_power_status(sim.port, PASSWORD), "on");

    timed("power off", driver.power_off()).await.unwrap();
    let gone = peers::wait_for("the QEMU guest to stop", Duration::from_secs(20), || {
        sim.qemu_pids().is_empty()
    });
    eprintln!("QEMU process gone {gone:?} after power off");
    let settled = wait_for_power(driver.as_ref(), PowerState::Off).await;
    eprintln!("BMC reported off {settled:?} later");
    assert_eq!(peers::ipmitool_power_status(sim.port, PASSWORD), "off");

    // Cycle from off powers on (Chassis Control "cycle" is refused when off).
    timed("power cycle (from off)", driver.power_cycle())
        .await
        .unwrap();
    peers::wait_for(
        "the QEMU guest to start again",
        Duration::from_secs(20),
        || !sim.qemu_pids().is_empty(),
    );
    wait_for_power(driver.as_ref(), PowerState::On).await;
    driver.power_off().await.unwrap();
    peers::wait_for(
        "the QEMU guest to stop again",
        Duration::from_secs(20),
        || sim.qemu_pids().is_empty(),
    );
}

/// Cycle while on restarts the guest (a new QEMU process). Soft off only asks the guest (ACPI);
/// this guest has no OS to honour it, so the BMC accepts it and the guest keeps running until a
/// hard power off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmi_sim_cycle_restarts_the_guest_and_soft_off_is_only_a_request() {
    let sim = IpmiSim::start(PASSWORD);
    let driver = driver(sim.port, PASSWORD, None);
    driver.power_on().await.unwrap();
    peers::wait_for("the QEMU guest to start", Duration::from_secs(20), || {
        !sim.qemu_pids().is_empty()
    });
    wait_for_power(&driver, PowerState::On).await;
    let before = sim.qemu_pids();

    timed("power cycle (from on)", driver.power_cycle())
        .await
        .unwrap();
    let restarted = peers::wait_for("a new QEMU process", Duration::from_secs(30), || {
        let now = sim.qemu_pids();
        !now.is_empty() && now != before
    });
    eprintln!(
        "guest restarted {restarted:?} after the cycle: {before:?} -> {:?}",
        sim.qemu_pids()
    );
    wait_for_power(&driver, PowerState::On).await;

    timed("soft off", driver.soft_off()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(driver.power_state().await, Ok(PowerState::On));
    assert!(
        !sim.qemu_pids().is_empty(),
        "an OS-less guest ignores the ACPI request"
    );
    driver.power_off().await.unwrap();
    peers::wait_for("the guest to stop", Duration::from_secs(20), || {
        sim.qemu_pids().is_empty()
    });
    wait_for_power(&driver, PowerState::Off).await;
    assert_eq!(peers::ipmitool_power_status(sim.port, PASSWORD), "off");
}

#[tokio::test]
async fn ipmi_sim_negotiates_suite_3_because_17_is_not_offered() {
    let sim = IpmiSim::start(PASSWORD);
    let driver = driver(sim.port, PASSWORD, None);
    assert_eq!(driver.power_state().await, Ok(PowerState::Off));
    assert_eq!(driver.negotiated_suite(), Some(CipherSuite::Suite3));

    // Forcing suite 17 only: the BMC's list rules it out before any session is opened.
    let only_17 = IpmiDriver::from_parameters(&parameters(sim.port, PASSWORD, None))
        .unwrap()
        .with_settings(IpmiSettings {
            cipher_suites: vec![CipherSuite::Suite17],
            ..fast_settings()
        });
    assert!(matches!(
        only_17.power_state().await,
        Err(PowerError::Unsupported { .. })
    ));
}

#[tokio::test]
async fn ipmi_sim_rejects_boot_flags_with_a_typed_bmc_error() {
    let sim = IpmiSim::start(PASSWORD);
    let driver = driver(sim.port, PASSWORD, None);
    let error = timed(
        "set boot device",
        driver.set_boot_device(BootDevice::Pxe, BootPersistence::Once),
    )
    .await
    .unwrap_err();
    eprintln!("ipmi_sim answered: {error}");
    let PowerError::Bmc { code, message } = error else {
        panic!("expected a BMC error, got {error:?}")
    };
    assert!(code.starts_with("0x"), "completion code, got {code}");
    assert!(message.contains("Set System Boot Options"), "{message}");
}

#[tokio::test]
async fn ipmi_sim_wrong_password_is_auth_failed() {
    let sim = IpmiSim::start(PASSWORD);
    let wrong = driver(sim.port, "not-the-password", None);
    let error = timed("wrong password", wrong.power_state())
        .await
        .unwrap_err();
    assert_eq!(error, PowerError::AuthFailed { user: USER.into() });
    assert!(!error.to_string().contains("not-the-password"));
    // The right password still works afterwards.
    assert_eq!(
        driver(sim.port, PASSWORD, None).power_state().await,
        Ok(PowerState::Off)
    );
}

#[tokio::test]
async fn ipmi_sim_stopped_bmc_is_unreachable_or_timeout_without_panic() {
    let mut sim = IpmiSim::start(PASSWORD);
    let driver = driver(sim.port, PASSWORD, None);
    assert_eq!(driver.power_state().await, Ok(PowerState::Off));
    sim.stop();
    let started = Instant::now();
    let error = driver.power_on().await.unwrap_err();
    eprintln!("stopped BMC: {error} after {:?}", started.elapsed());
    assert!(
        matches!(
            error,
            PowerError::Unreachable { .. } | PowerError::Timeout { .. }
        ),
        "{error:?}"
    );
    assert!(started.elapsed() <= fast_settings().call_timeout + Duration::from_secs(1));
}

/// ipmi_sim has a small session table: if any path leaked sessions, later calls would be refused
/// with "insufficient resources". Success, completion-code errors and wrong passwords all run
/// more times than the table has slots (63 on ipmi_sim 2.0.33).
#[tokio::test]
async fn ipmi_sim_sessions_are_closed_on_success_and_error_paths() {
    let sim = IpmiSim::start(PASSWORD);
    let good = driver(sim.port, PASSWORD, None);
    let wrong = driver(sim.port, "wrong", None);
    let started = Instant::now();
    for round in 0..70 {
        assert_eq!(
            good.power_state().await,
            Ok(PowerState::Off),
            "round {round}"
        );
        let boot = good
            .set_boot_device(BootDevice::Disk, BootPersistence::Persistent)
            .await;
        assert!(
            matches!(boot, Err(PowerError::Bmc { ref code, .. }) if code == "0xcc"),
            "round {round}: {boot:?}"
        );
        let denied = wrong.power_state().await;
        assert!(
            matches!(denied, Err(PowerError::AuthFailed { .. })),
            "round {round}: {denied:?}"
        );
    }
    eprintln!(
        "210 sessions (70 ok, 70 BMC errors, 70 wrong passwords) in {:?}",
        started.elapsed()
    );
    assert_eq!(good.power_state().await, Ok(PowerState::Off));
}

#[tokio::test]
async fn ipmi_sim_lan15_md5_power_round_trip() {
    let sim = IpmiSim::start(PASSWORD);
    let driver = Drivers::default()
        .driver_for(
            PowerType::Ipmi,
            &parameters(sim.port, PASSWORD, Some("LAN")),
        )
        .unwrap();
    assert_eq!(
        timed("IPMI 1.5 status", driver.power_state()).await,
        Ok(PowerState::Off)
    );
    timed("IPMI 1.5 power on", driver.power_on()).await.unwrap();
    peers::wait_for("the QEMU guest to start", Duration::from_secs(20), || {
        !sim.qemu_pids().is_empty()
    });
    wait_for_power(driver.as_ref(), PowerState::On).await;
    assert_eq!(peers::ipmitool_power_status(sim.port, PASSWORD), "on");
    driver.power_off().await.unwrap();
    peers::wait_for("the QEMU guest to stop", Duration::from_secs(20), || {
        sim.qemu_pids().is_empty()
    });
    wait_for_power(driver.as_ref(), PowerState::Off).await;
    assert_eq!(peers::ipmitool_power_status(sim.port, PASSWORD), "off");
}

/// ipmi_sim (like IPMI 1.5 BMCs in general) silently drops an Activate Session whose MD5 AuthCode
/// does not verify; the driver reports that as AuthFailed, not as a flaky network.
#[tokio::test]
async fn ipmi_sim_lan15_wrong_password_is_auth_failed() {
    let sim = IpmiSim::start(PASSWORD);
    let wrong = driver(sim.port, "not-the-password", Some("LAN"));
    let error = timed("IPMI 1.5 wrong password", wrong.power_state())
        .await
        .unwrap_err();
    assert_eq!(error, PowerError::AuthFailed { user: USER.into() });
    let mut unknown = parameters(sim.port, PASSWORD, Some("LAN"));
    unknown.power_user = Some("nobody".into());
    let unknown = IpmiDriver::from_parameters(&unknown)
        .unwrap()
        .with_settings(fast_settings());
    assert_eq!(
        timed("IPMI 1.5 unknown user", unknown.power_state()).await,
        Err(PowerError::AuthFailed {
            user: "nobody".into()
        })
    );
    assert_eq!(
        driver(sim.port, PASSWORD, Some("LAN")).power_state().await,
        Ok(PowerState::Off)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vbmc_power_and_boot_device_drive_a_libvirt_domain() {
    let started = Instant::now();
    let bmc = VirtualBmc::start(USER, PASSWORD);
    eprintln!("vbmc + domain ready in {:?}", started.elapsed());
    let driver = vbmc_driver(bmc.port, PASSWORD);

    assert_eq!(
        timed("vbmc status (cold)", driver.power_state()).await,
        Ok(PowerState::Off)
    );
    assert_eq!(bmc.domain_state(), "shut off");
    // pyghmi rejects Get Channel Cipher Suites and answers a suite-17 proposal with suite-3
    // algorithms: the driver falls back to suite 3.
    assert_eq!(driver.negotiated_suite(), Some(CipherSuite::Suite3));

    timed(
        "vbmc set boot pxe once",
        driver.set_boot_device(BootDevice::Pxe, BootPersistence::Once),
    )
    .await
    .unwrap();
    assert_eq!(bmc.boot_devices(), ["network"]);
    timed(
        "vbmc set boot disk persistent",
        driver.set_boot_device(BootDevice::Disk, BootPersistence::Persistent),
    )
    .await
    .unwrap();
    assert_eq!(bmc.boot_devices(), ["hd"]);
    driver
        .set_boot_device(BootDevice::Pxe, BootPersistence::Persistent)
        .await
        .unwrap();
    assert_eq!(bmc.boot_devices(), ["network"]);

    timed("vbmc power on", driver.power_on()).await.unwrap();
    let settled = wait_for_power(&driver, PowerState::On).await;
    eprintln!("vbmc reported on {settled:?} after the call returned");
    assert_eq!(bmc.domain_state(), "running");
    assert_eq!(peers::ipmitool_power_status(bmc.port, PASSWORD), "on");

    timed("vbmc power off", driver.power_off()).await.unwrap();
    wait_for_power(&driver, PowerState::Off).await;
    assert_eq!(bmc.domain_state(), "shut off");
    assert_eq!(peers::ipmitool_power_status(bmc.port, PASSWORD), "off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vbmc_wrong_password_and_stopped_bmc() {
    let mut bmc = VirtualBmc::start(USER, PASSWORD);
    let wrong = vbmc_driver(bmc.port, "not-the-password");
    assert_eq!(
        timed("vbmc wrong password", wrong.power_state()).await,
        Err(PowerError::AuthFailed { user: USER.into() })
    );
    let good = driver(bmc.port, PASSWORD, None);
    assert_eq!(good.power_state().await, Ok(PowerState::Off));
    bmc.stop_bmc();
    let error = timed("vbmc stopped", good.power_state()).await.unwrap_err();
    assert!(
        matches!(
            error,
            PowerError::Unreachable { .. } | PowerError::Timeout { .. }
        ),
        "{error:?}"
    );
}

/// A UDP relay between the driver and a BMC that drops every fourth packet in each direction
/// and duplicates every fifth answer: handshakes and commands must still finish through
/// retransmissions (and handshake restarts), and duplicate or late answers must be ignored.
mod lossy {
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    pub struct Relay {
        pub port: u16,
        pub dropped: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
    }

    impl Relay {
        pub fn start(bmc_port: u16) -> Relay {
            let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
            let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
            back.connect(("127.0.0.1", bmc_port)).unwrap();
            for socket in [&front, &back] {
                // Lets the threads notice `stop`.
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
            }
            let port = front.local_addr().unwrap().port();
            let dropped = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
            {
                let (front, back, dropped, stop, client) = (
                    front.clone(),
                    back.clone(),
                    dropped.clone(),
                    stop.clone(),
                    client.clone(),
                );
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 2048];
                    let mut count = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((len, from)) = front.recv_from(&mut buffer) else {
                            continue;
                        };
                        *client.lock().unwrap() = Some(from);
                        count += 1;
                        if count % 4 == 2 {
                            dropped.fetch_add(1, Ordering::SeqCst);
                        } else {
                            let _ = back.send(&buffer[..len]);
                        }
                    }
                });
            }
            {
                let (dropped, stop) = (dropped.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 2048];
                    let mut count = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let Ok(len) = back.recv(&mut buffer) else {
                            continue;
                        };
                        let Some(client) = *client.lock().unwrap() else {
                            continue;
                        };
                        count += 1;
                        if count.is_multiple_of(4) {
                            dropped.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        let _ = front.send_to(&buffer[..len], client);
                        if count.is_multiple_of(5) {
                            let _ = front.send_to(&buffer[..len], client);
                        }
                    }
                });
            }
            Relay {
                port,
                dropped,
                stop,
            }
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmi_sim_through_a_lossy_link_still_answers() {
    let sim = IpmiSim::start(PASSWORD);
    let relay = lossy::Relay::start(sim.port);
    // Loopback answers in microseconds: short attempt timers keep the many retransmissions fast.
    let driver = IpmiDriver::from_parameters(&parameters(relay.port, PASSWORD, None))
        .unwrap()
        .with_settings(IpmiSettings {
            first_attempt_timeout: Duration::from_millis(100),
            max_attempt_timeout: Duration::from_millis(400),
            ..fast_settings()
        });
    let started = Instant::now();
    for round in 0..8 {
        let state = driver.power_state().await;
        assert_eq!(state, Ok(PowerState::Off), "round {round}");
    }
    let dropped = relay.dropped.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "8 status calls over a lossy link: {:?}, {dropped} packets dropped",
        started.elapsed()
    );
    assert!(
        dropped >= 10,
        "the relay must actually lose packets, dropped {dropped}"
    );
    driver.power_on().await.unwrap();
    peers::wait_for("the QEMU guest to start", Duration::from_secs(20), || {
        !sim.qemu_pids().is_empty()
    });
    wait_for_power(&driver, PowerState::On).await;
    driver.power_off().await.unwrap();
    wait_for_power(&driver, PowerState::Off).await;

    // IPMI 1.5 over the same link: lost Activate Session answers must not read as a wrong
    // password.
    let lan = IpmiDriver::from_parameters(&parameters(relay.port, PASSWORD, Some("LAN")))
        .unwrap()
        .with_settings(IpmiSettings {
            first_attempt_timeout: Duration::from_millis(100),
            max_attempt_timeout: Duration::from_millis(400),
            ..fast_settings()
        });
    for round in 0..6 {
        assert_eq!(
            lan.power_state().await,
            Ok(PowerState::Off),
            "IPMI 1.5 round {round}"
        );
    }
}
