//! The binary, black-box: `admin create-user` prints a working key as its last line,
//! `serve` keeps the same simulated fleet across restarts and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ingot");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, port: u16, sims: usize) -> Server {
    let child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--sim-machines",
            &sims.to_string(),
            "--sim-delay-ms",
            "20",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env_remove("INGOT_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut s = Server(child);
    // The first stdout line is printed once the listener is bound.
    let mut line = String::new();
    BufReader::new(s.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    s
}

fn create_user(dir: &Path, name: &str, admin: bool) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["admin", "create-user", "--username", name])
        .arg("--data-dir")
        .arg(dir);
    if admin {
        cmd.arg("--admin");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

fn machines(port: u16, key: &str) -> Vec<serde_json::Value> {
    let resp = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/machines"))
        .bearer_auth(key)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().unwrap()
}

#[test]
fn key_fleet_restart_and_sigterm() {
    let dir = std::env::temp_dir().join(format!("ingot-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let key = create_user(&dir, "admin", true);
    assert_eq!(
        key.split(':').map(str::len).collect::<Vec<_>>(),
        [18, 18, 32],
        "{key}"
    );
    // Same name again fails loudly and creates nothing.
    let dup = Command::new(BIN)
        .args(["admin", "create-user", "--username", "admin"])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));

    let port = free_port();
    let first: Vec<String> = {
        let _s = serve(&dir, port, 3);
        let list = machines(port, &key);
        list.iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(first.len(), 3);
    // The database holds the key's hash, not the key.
    let db = std::fs::read(dir.join("ingot.db")).unwrap();
    let secret = key.rsplit(':').next().unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));

    let port = free_port();
    let mut s = serve(&dir, port, 3);
    let again: Vec<String> = machines(port, &key)
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(again, first, "the same fleet after a restart, not 3 more");

    // SIGTERM: graceful stop, exit status 0, promptly.
    let pid = i32::try_from(s.0.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let t = Instant::now();
    loop {
        if let Some(status) = s.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
