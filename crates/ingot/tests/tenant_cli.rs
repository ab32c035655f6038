//! `ingot tenant`, black-box: create an account, issue credentials (last line
//! `client_id:secret`), refuse bad input with a non-zero exit, and the credentials get a token
//! from a running `ingot serve`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ingot");

fn ingot(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("INGOT_DATABASE_URL")
        .output()
        .unwrap()
}

fn last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn tenant_create_and_credentials_then_a_token() {
    let dir = tempfile_dir();
    let o = ingot(&dir, &["tenant", "create", "acme", "--max-servers", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Refusals: duplicate, bad name, unknown scope, unknown account.
    for args in [
        &["tenant", "create", "acme"][..],
        &["tenant", "create", "Bad Name"],
        &["tenant", "create-credentials", "acme", "--scopes", "root"],
        &["tenant", "create-credentials", "nobody"],
    ] {
        let o = ingot(&dir, args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(!o.stderr.is_empty(), "{args:?} says why");
    }
    let o = ingot(&dir, &["tenant", "create-credentials", "acme"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let creds = last_line(&o);
    let (id, secret) = creds.split_once(':').expect("client_id:secret");
    assert!(id.len() >= 16 && secret.len() >= 32, "{creds}");
    let o = ingot(
        &dir,
        &[
            "tenant",
            "create-credentials",
            "acme",
            "--scopes",
            "bmc.read",
        ],
    );
    let (ro_id, ro_secret) = last_line(&o)
        .split_once(':')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    let o = ingot(
        &dir,
        &["tenant", "add-member", "acme", "--username", "alice"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let member_key = last_line(&o);
    assert_eq!(member_key.split(':').count(), 3, "{member_key}");
    assert!(
        !ingot(
            &dir,
            &["tenant", "add-member", "acme", "--username", "alice"]
        )
        .status
        .success()
    );
    let o = ingot(&dir, &["tenant", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "acme\t0/3 servers"
    );

    // The credentials work against a running region.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--power-sync-interval",
            "0",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .env_remove("INGOT_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let http = reqwest::blocking::Client::new();
    let token = |id: &str, secret: &str| {
        http.post(format!("http://127.0.0.1:{port}/oauth2/token"))
            .basic_auth(id, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .unwrap()
    };
    let resp = token(id, secret);
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().unwrap();
    let ro: serde_json::Value = token(&ro_id, &ro_secret).json().unwrap();
    let wrong = token(id, "wrong").status().as_u16();
    let member_servers = http
        .get(format!("http://127.0.0.1:{port}/bmc/v1/servers"))
        .bearer_auth(&member_key)
        .send()
        .unwrap()
        .status()
        .as_u16();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, 200, "{body}");
    assert!(
        body["access_token"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert_eq!(ro["scope"], "bmc.read");
    assert_eq!(wrong, 401);
    assert_eq!(member_servers, 200, "a member's key works on the cloud API");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ingot-tenant-cli-{}-{}",
        std::process::id(),
        line!()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
