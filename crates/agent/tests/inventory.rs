//! Inventory collection on fixture trees (`tests/fixtures/inventory/<case>/{proc,sys}`), each
//! with the expected answer beside it: `expected.json` (the inventory) or `expected-error.txt`
//! (the error, with the case directory written as `<case>`). `INGOT_BLESS=1` rewrites the
//! expectations from what the code collects now; review the diff before committing it.

use ingot_agent::BootConfig;
use ingot_agent::inventory::{Roots, collect};
use ingot_agent::run::boot_mac;
use std::path::{Path, PathBuf};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory")
}

fn bless() -> bool {
    std::env::var_os("INGOT_BLESS").is_some_and(|v| v == "1")
}

fn check(case: &Path) {
    let got = collect(&Roots::under(case));
    let json_path = case.join("expected.json");
    let err_path = case.join("expected-error.txt");
    let rendered = match &got {
        Ok(inv) => serde_json::to_string_pretty(inv).unwrap() + "\n",
        Err(e) => e.to_string().replace(&case.display().to_string(), "<case>") + "\n",
    };
    let (want_path, other) = if got.is_ok() {
        (&json_path, &err_path)
    } else {
        (&err_path, &json_path)
    };
    if bless() {
        std::fs::write(want_path, &rendered).unwrap();
        let _ = std::fs::remove_file(other);
        return;
    }
    let want = std::fs::read_to_string(want_path).unwrap_or_else(|_| {
        panic!(
            "{}: no {} (run with INGOT_BLESS=1 to create it); collected:\n{rendered}",
            case.display(),
            want_path.display()
        )
    });
    if got.is_ok() {
        // Compare as values so formatting of the file does not matter.
        let want: serde_json::Value = serde_json::from_str(&want).unwrap();
        let got: serde_json::Value = serde_json::from_str(&rendered).unwrap();
        assert_eq!(got, want, "{}", case.display());
    } else {
        assert_eq!(rendered.trim(), want.trim(), "{}", case.display());
    }
}

#[test]
fn fixture_trees() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "fixture cases missing: {cases:?}");
    for case in cases {
        check(&case);
    }
}

#[test]
fn boot_mac_choice() {
    // (case, kernel command line, expected boot MAC)
    let table = [
        // BOOTIF from iPXE wins over everything.
        (
            "qemu-bios-virtio",
            "ingot.url=http://x ingot.token=t BOOTIF=01-52-54-00-aa-bb-cc",
            Some("52:54:00:aa:bb:cc"),
        ),
        // No BOOTIF: the interface with the default route (the one DHCP configured).
        (
            "qemu-bios-virtio",
            "ingot.url=http://x ingot.token=t",
            Some("52:54:00:12:34:56"),
        ),
        // No default route: the only interface with link (eno1; ib0 is not Ethernet).
        (
            "server-uefi-mixed",
            "ingot.url=http://x ingot.token=t",
            Some("3c:ec:ef:01:02:03"),
        ),
        // No interfaces at all: the agent cannot guess.
        ("minimal", "ingot.url=http://x ingot.token=t", None),
    ];
    for (case, cmdline, want) in table {
        let roots = Roots::under(&cases_dir().join(case));
        let inv = collect(&roots).unwrap();
        let cfg = BootConfig::from_cmdline(cmdline).unwrap();
        assert_eq!(
            boot_mac(&cfg, &roots, &inv).as_deref(),
            want,
            "{case}: {cmdline}"
        );
    }
}
