//! The IPMI driver against real BMC emulators that each test starts on 127.0.0.1 (free ports) and
//! tears down:
//! - OpenIPMI `ipmi_sim` (Debian `openipmi`): power on runs a tiny TCG QEMU (`startcmd`), power
//!   off stops it, so the tests check a real process appears and disappears. It enforces session
//!   privilege and offers cipher suites 0–11 (so 3, not 17) and IPMI 1.5 MD5/straight auth.
//! - `ipmitool -I lanplus -C 3` (Debian `ipmitool`) as an independent client reading the same BMC.
//!
//! Requirements (the tests fail, never skip, without them): `ipmi_sim`, `ipmitool`,
//! `qemu-system-x86_64`. Debian: `apt-get install openipmi ipmitool qemu-system-x86`.

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
