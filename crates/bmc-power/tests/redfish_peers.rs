//! The Redfish driver against the real sushy-emulator (sushy-tools 2.2.0, `--fake` system
//! driver: power changes land 1–11 s after the request, so the tests poll with a deadline).
//!
//! Each test starts its own emulator on 127.0.0.1 on a free port and kills it when done:
//! plain HTTP, TLS with a certificate made by `openssl` at test time, and HTTP Basic auth from
//! an htpasswd file (sushy accepts bcrypt hashes only).
//!
//! Requirements (the tests fail, never skip, without them): `python3` with the `venv` module
//! (Debian: python3-venv), the `openssl` CLI, and either a venv with sushy-tools at
//! `$INGOT_PY_VENV` or permission to create one at `/var/cache/ingot-venv` (first run does
//! `pip install sushy-tools==2.2.0`, which needs PyPI).

use bmc_power::redfish::RedfishDriver;
use bmc_power::{DriverFactory, Drivers, PowerDriver, PowerError};
use ingot_types::power::{BootDevice, BootPersistence, PowerParameters, PowerState, PowerType};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The fake driver applies a change at most 11 s after it was asked; leave room for a busy CI.
const POWER_DEADLINE: Duration = Duration::from_secs(40);

mod sushy {
    use std::fs;
    use std::net::{TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    pub const PACKAGE: &str = "sushy-tools==2.2.0";
    const DEFAULT_VENV: &str = "/var/cache/ingot-venv";

    /// The venv holding sushy-emulator: `$INGOT_PY_VENV`, else /var/cache/ingot-venv; created
    /// (once per process) if it has no sushy-emulator yet.
    pub fn venv() -> &'static Path {
        static VENV: OnceLock<PathBuf> = OnceLock::new();
        static CREATING: Mutex<()> = Mutex::new(());
        VENV.get_or_init(|| {
            let _one_at_a_time = CREATING.lock().unwrap();
            let dir = std::env::var_os("INGOT_PY_VENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
            if !dir.join("bin/sushy-emulator").exists() {
                eprintln!("creating {} with {PACKAGE}", dir.display());
                run(Command::new("python3").arg("-m").arg("venv").arg(&dir));
                run(Command::new(dir.join("bin/pip")).args(["install", "--quiet", PACKAGE]));
            }
            assert!(
                dir.join("bin/sushy-emulator").exists(),
                "no sushy-emulator in {} after installing {PACKAGE}",
                dir.display()
            );
            dir
        })
    }

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

    #[derive(Debug, Clone, Copy, Default)]
    pub struct Options {
        pub tls: bool,
        pub basic_auth: Option<(&'static str, &'static str)>,
        /// Fake systems with these ids instead of sushy's single default one.
        pub systems: &'static [&'static str],
        /// `SUSHY_EMULATOR_FEATURE_SET`: full (default), vmedia or minimum.
        pub feature_set: Option<&'static str>,
    }

    /// A running sushy-emulator; killed on drop.
    pub struct Emulator {
        child: Option<Child>,
        port: u16,
        tls: bool,
        dir: tempfile::TempDir,
    }

    impl Emulator {
        pub fn start(options: Options) -> Self {
            let venv = venv();
            let dir = tempfile::tempdir().unwrap();
            // sushy keeps fake-system state in SQLite under /tmp/sushy-emulator by default,
            // shared by every emulator on the machine: give each its own.
            let mut config = format!(
                "SUSHY_EMULATOR_STATE_DIR = {:?}\n",
                dir.path().join("state").display().to_string()
            );
            if options.tls {
                let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
                run(Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    ])
                    .args([
                        "-subj",
                        "/CN=127.0.0.1",
                        "-addext",
                        "subjectAltName=IP:127.0.0.1",
                    ])
                    // A leaf certificate, as a BMC has, not a CA.
                    .args(["-addext", "basicConstraints=critical,CA:FALSE"])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .stderr(Stdio::null()));
                config += &format!(
                    "SUSHY_EMULATOR_SSL_CERT = {:?}\nSUSHY_EMULATOR_SSL_KEY = {:?}\n",
                    cert.display().to_string(),
                    key.display().to_string()
                );
            }
            if let Some((user, password)) = options.basic_auth {
                // sushy checks the hash on every request: 4 rounds keeps that cheap.
                let hash = run(Command::new(venv.join("bin/python"))
                    .args(["-c", "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(rounds=4)).decode())"])
                    .arg(password));
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, format!("{user}:{}\n", hash.trim())).unwrap();
                config += &format!(
                    "SUSHY_EMULATOR_AUTH_FILE = {:?}\n",
                    htpasswd.display().to_string()
                );
            }
            if !options.systems.is_empty() {
                config += "SUSHY_EMULATOR_FAKE_SYSTEMS = [\n";
                for (i, id) in options.systems.iter().enumerate() {
                    config += &format!(
                        "    {{'uuid': {id:?}, 'name': 'node-{i}', 'power_state': 'Off', \
                         'nics': [{{'mac': '52:54:00:00:00:{i:02x}', 'ip': '192.0.2.{i}'}}]}},\n"
                    );
                }
                config += "]\n";
            }
            if let Some(feature_set) = options.feature_set {
                config += &format!("SUSHY_EMULATOR_FEATURE_SET = {feature_set:?}\n");
            }
            let config_file = dir.path().join("emulator.conf");
            fs::write(&config_file, config).unwrap();

            let port = free_port();
            let log = fs::File::create(dir.path().join("emulator.log")).unwrap();
            let child = Command::new(venv.join("bin/sushy-emulator"))
                .args(["--fake", "-i", "127.0.0.1", "-p", &port.to_string()])
                .arg("--config")
                .arg(&config_file)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start sushy-emulator: {e}"));
            let mut emulator = Self {
                child: Some(child),
                port,
                tls: options.tls,
                dir,
            };
            emulator.wait_listening();
            emulator
        }

        fn wait_listening(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("sushy-emulator exited with {status}:\n{}", self.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "sushy-emulator not listening:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        pub fn port(&self) -> u16 {
            self.port
        }

        /// `power_address` as an operator would type it: bare host:port for https (the
        /// driver's default scheme), explicit `http://` otherwise.
        pub fn address(&self) -> String {
            if self.tls {
                format!("127.0.0.1:{}", self.port)
            } else {
                format!("http://127.0.0.1:{}", self.port)
            }
        }

        pub fn url(&self, path: &str) -> String {
            let scheme = if self.tls { "https" } else { "http" };
            format!("{scheme}://127.0.0.1:{}{path}", self.port)
        }

        pub fn log(&self) -> String {
            fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default()
        }

        pub fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for Emulator {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

use sushy::{Emulator, Options};

fn params(emulator: &Emulator) -> PowerParameters {
    PowerParameters {
        power_address: Some(emulator.address()),
        ..Default::default()
    }
}

fn with_credentials(emulator: &Emulator, user: &str, password: &str) -> PowerParameters {
    PowerParameters {
        power_user: Some(user.into()),
        power_pass: Some(password.into()),
        ..params(emulator)
    }
}

/// Reads a resource straight from the emulator, to check what the driver did.
async fn raw_get(emulator: &Emulator, path: &str, basic: Option<(&str, &str)>) -> Value {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mut request = client.get(emulator.url(path));
    if let Some((user, password)) = basic {
        request = request.basic_auth(user, Some(password));
    }
    let resp = request.send().await.unwrap();
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.json().await.unwrap()
}

async fn system_path(emulator: &Emulator, basic: Option<(&str, &str)>) -> String {
    let systems = raw_get(emulator, "/redfish/v1/Systems", basic).await;
    systems["Members"][0]["@odata.id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls until the driver reports `want`; returns how long the emulator took.
async fn wait_for(driver: &dyn PowerDriver, want: PowerState) -> Duration {
    let started = Instant::now();
    loop {
        let got = driver.power_state().await.expect("power_state");
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < POWER_DEADLINE,
            "still {got} after {POWER_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn fake_system_over_http() {
    let emulator = Emulator::start(Options::default());
    let driver = RedfishDriver::new(&params(&emulator)).unwrap();
    let system = system_path(&emulator, None).await;
    assert_eq!(driver.power_state().await.unwrap(), PowerState::Off);

    driver
        .set_boot_device(BootDevice::Pxe, BootPersistence::Once)
        .await
        .unwrap();
    let boot = raw_get(&emulator, &system, None).await["Boot"].clone();
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe");
    // sushy-tools 2.2.0 stores every override as Continuous (it ignores
    // BootSourceOverrideEnabled); a real BMC reports Once.
    assert!(
        matches!(
            boot["BootSourceOverrideEnabled"].as_str(),
            Some("Once" | "Continuous")
        ),
        "{boot}"
    );

    driver.power_on().await.unwrap();
    let on = wait_for(&driver, PowerState::On).await;
    eprintln!("sushy fake (http): On after {on:?}");

    // ForceRestart: sushy's fake shows Off at once, then On after its delay.
    driver.power_cycle().await.unwrap();
    let cycled = wait_for(&driver, PowerState::On).await;
    eprintln!("sushy fake (http): cycle back On after {cycled:?}");

    driver.soft_off().await.unwrap();
    let off = wait_for(&driver, PowerState::Off).await;
    eprintln!("sushy fake (http): Off (GracefulShutdown) after {off:?}");
    driver
        .power_off()
        .await
        .expect("hard off of an off system is a no-op");

    driver.power_on().await.unwrap();
    wait_for(&driver, PowerState::On).await;
    driver.power_off().await.unwrap();
    let off = wait_for(&driver, PowerState::Off).await;
    eprintln!("sushy fake (http): Off (ForceOff) after {off:?}");

    driver
        .set_boot_device(BootDevice::Disk, BootPersistence::Persistent)
        .await
        .unwrap();
    let boot = raw_get(&emulator, &system, None).await["Boot"].clone();
    assert_eq!(boot["BootSourceOverrideTarget"], "Hdd");
    assert_eq!(boot["BootSourceOverrideEnabled"], "Continuous");
}

#[tokio::test]
async fn fake_system_over_tls_with_a_self_signed_certificate() {
    let emulator = Emulator::start(Options {
        tls: true,
        ..Default::default()
    });
    // Default: no verification, as BMCs ship self-signed certificates.
    let driver = RedfishDriver::new(&params(&emulator)).unwrap();
    assert_eq!(driver.power_state().await.unwrap(), PowerState::Off);
    driver
        .set_boot_device(BootDevice::Pxe, BootPersistence::Once)
        .await
        .unwrap();
    driver.power_on().await.unwrap();
    let on = wait_for(&driver, PowerState::On).await;
    eprintln!("sushy fake (tls): On after {on:?}");
    driver.power_off().await.unwrap();
    let off = wait_for(&driver, PowerState::Off).await;
    eprintln!("sushy fake (tls): Off after {off:?}");

    let explicit_off = PowerParameters {
        power_verify_ssl: Some(false),
        ..params(&emulator)
    };
    let driver = RedfishDriver::new(&explicit_off).unwrap();
    assert_eq!(driver.power_state().await.unwrap(), PowerState::Off);

    let verifying = PowerParameters {
        power_verify_ssl: Some(true),
        ..params(&emulator)
    };
    let err = RedfishDriver::new(&verifying)
        .unwrap()
        .power_on()
        .await
        .unwrap_err();
    match &err {
        PowerError::Unreachable { address, detail } => {
            assert_eq!(*address, emulator.address());
            assert!(detail.contains("TLS certificate rejected"), "{detail}");
            assert!(detail.contains("power_verify_ssl"), "{detail}");
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
    eprintln!("sushy fake (tls, verify on): {err}");
}

#[tokio::test]
async fn basic_auth_from_an_htpasswd_file_over_tls() {
    let emulator = Emulator::start(Options {
        tls: true,
        basic_auth: Some(("admin", "p4ss")),
        ..Default::default()
    });
    // sushy has no SessionService, so the driver must fall back to Basic on its own.
    let root = raw_get(&emulator, "/redfish/v1/", None).await;
    assert!(
        root.get("SessionService").is_none() && root.get("Links").is_none(),
        "{root}"
    );

    let driver = RedfishDriver::new(&with_credentials(&emulator, "admin", "p4ss")).unwrap();
    assert_eq!(driver.power_state().await.unwrap(), PowerState::Off);
    driver
        .set_boot_device(BootDevice::Pxe, BootPersistence::Once)
        .await
        .unwrap();
    let system = system_path(&emulator, Some(("admin", "p4ss"))).await;
    let boot = raw_get(&emulator, &system, Some(("admin", "p4ss"))).await["Boot"].clone();
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe");
    driver.power_on().await.unwrap();
    let on = wait_for(&driver, PowerState::On).await;
    eprintln!("sushy fake (tls + basic auth): On after {on:?}");

    let wrong = RedfishDriver::new(&with_credentials(&emulator, "admin", "nope")).unwrap();
    assert_eq!(
        wrong.power_off().await,
        Err(PowerError::AuthFailed {
            user: "admin".into()
        })
    );
    assert_eq!(
        wrong.power_state().await,
        Err(PowerError::AuthFailed {
            user: "admin".into()
        })
    );
    let anonymous = RedfishDriver::new(&params(&emulator)).unwrap();
    assert_eq!(
        anonymous.power_state().await,
        Err(PowerError::AuthFailed { user: "".into() })
    );
    assert_eq!(
        driver.power_state().await.unwrap(),
        PowerState::On,
        "nothing was switched off"
    );
}

#[tokio::test]
async fn node_id_and_the_driver_factory() {
    let emulator = Emulator::start(Options::default());
    let system = system_path(&emulator, None).await;
    let uuid = system.rsplit('/').next().unwrap().to_owned();

    let named = PowerParameters {
        node_id: Some(uuid.clone()),
        ..params(&emulator)
    };
    let driver = Drivers::default()
        .driver_for(PowerType::Redfish, &named)
        .unwrap();
    assert_eq!(driver.power_state().await.unwrap(), PowerState::Off);

    let unknown = PowerParameters {
        node_id: Some("nope".into()),
        ..params(&emulator)
    };
    let err = RedfishDriver::new(&unknown)
        .unwrap()
        .power_on()
        .await
        .unwrap_err();
    match err {
        PowerError::InvalidParameter {
            field: "node_id",
            reason,
        } => {
            assert!(reason.contains(&uuid), "{reason}")
        }
        other => panic!("expected InvalidParameter(node_id), got {other:?}"),
    }
}

#[tokio::test]
async fn stopped_emulator_is_unreachable() {
    let mut emulator = Emulator::start(Options::default());
    let driver = RedfishDriver::new(&params(&emulator)).unwrap();
    assert_eq!(driver.power_state().await.unwrap(), PowerState::Off);
    emulator.stop();
    let started = Instant::now();
    let err = driver.power_on().await.unwrap_err();
    assert!(
        matches!(&err, PowerError::Unreachable { address, detail }
            if *address == emulator.address() && detail.contains("refused")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusal is immediate"
    );
    eprintln!("sushy stopped (port {}): {err}", emulator.port());
}

#[tokio::test]
async fn several_systems_need_a_node_id() {
    const IDS: &[&str] = &["node-a-uuid", "node-b-uuid"];
    let emulator = Emulator::start(Options {
        systems: IDS,
        ..Default::default()
    });

    let unnamed = RedfishDriver::new(&params(&emulator)).unwrap();
    match unnamed.power_state().await.unwrap_err() {
        PowerError::InvalidParameter {
            field: "node_id",
            reason,
        } => {
            assert!(reason.contains("node-a-uuid, node-b-uuid"), "{reason}")
        }
        other => panic!("expected InvalidParameter(node_id), got {other:?}"),
    }

    let named = |id: &str| {
        RedfishDriver::new(&PowerParameters {
            node_id: Some(id.into()),
            ..params(&emulator)
        })
        .unwrap()
    };
    let (a, b) = (named(IDS[0]), named(IDS[1]));
    b.set_boot_device(BootDevice::Pxe, BootPersistence::Once)
        .await
        .unwrap();
    b.power_on().await.unwrap();
    let on = wait_for(&b, PowerState::On).await;
    eprintln!("sushy fake (2 systems): node-b On after {on:?}");
    assert_eq!(
        a.power_state().await.unwrap(),
        PowerState::Off,
        "only node-b was switched"
    );
    let boot_a = raw_get(&emulator, "/redfish/v1/Systems/node-a-uuid", None).await["Boot"].clone();
    let boot_b = raw_get(&emulator, "/redfish/v1/Systems/node-b-uuid", None).await["Boot"].clone();
    assert_eq!(
        (
            boot_a["BootSourceOverrideTarget"].as_str(),
            boot_b["BootSourceOverrideTarget"].as_str()
        ),
        (Some("Hdd"), Some("Pxe"))
    );
}

#[tokio::test]
async fn minimum_feature_set() {
    // sushy's smallest service root: Systems only, no Managers, Chassis or registries.
    let emulator = Emulator::start(Options {
        feature_set: Some("minimum"),
        ..Default::default()
    });
    let root = raw_get(&emulator, "/redfish/v1/", None).await;
    assert!(root.get("Managers").is_none(), "{root}");
    let driver = RedfishDriver::new(&params(&emulator)).unwrap();
    driver
        .set_boot_device(BootDevice::Pxe, BootPersistence::Once)
        .await
        .unwrap();
    driver.power_on().await.unwrap();
    let on = wait_for(&driver, PowerState::On).await;
    eprintln!("sushy fake (minimum feature set): On after {on:?}");
    driver.power_off().await.unwrap();
    wait_for(&driver, PowerState::Off).await;
}
