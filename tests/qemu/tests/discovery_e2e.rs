//! The whole chain through the real binary: `ingot serve --pxe-interface br0` runs inside a lab
//! network namespace; unknown QEMU VMs (BIOS and UEFI; 2 vCPUs, 1 GiB, an 8 GiB virtio disk)
//! PXE-boot from it (DHCP → iPXE → per-MAC script → ephemeral kernel + initrd over HTTP), the
//! agent enlists them, and they appear in the API as New with exactly their hardware and as
//! discovered devices. Then the BIOS machine gets an IPMI BMC (OpenIPMI `ipmi_sim`, whose
//! `startcmd` is that same VM) and is commissioned through the API: Ingot powers it on over
//! RMCP+, it netboots, the agent reports, and it becomes Ready and is powered off.
//!
//! Needs root (network namespaces), qemu-system-x86, ipxe-qemu, ovmf, openipmi, and the
//! ephemeral image recipe's packages. Fails rather than skips when they are missing.

use ingot_lab::{Firmware, Lab, require_lab_files, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `ingot` binary next to this test's build directory (cargo builds it for the workspace).
fn ingot_bin() -> PathBuf {
    if let Ok(p) = std::env::var("INGOT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    let bin = debug.join("ingot");
    if !bin.exists() {
        let st = Command::new("cargo")
            .args(["build", "-q", "-p", "ingot"])
            .current_dir(repo_root())
            .status()
            .unwrap();
        assert!(st.success(), "cargo build -p ingot failed");
    }
    assert!(bin.exists(), "no ingot binary at {}", bin.display());
    bin
}

/// Builds (or reuses, by content hash) the ephemeral kernel + initrd.
fn ephemeral_image() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("images/ephemeral/build.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "images/ephemeral/build.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim(),
    );
    assert!(
        dir.join("vmlinuz").exists() && dir.join("initrd.gz").exists(),
        "{}",
        dir.display()
    );
    dir
}

/// Calls the region from inside the namespace (the only place its address exists).
fn api(lab: &Lab, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("http://{}:5240{path}", lab.server_ip());
    let (key, method) = (key.to_owned(), method.to_owned());
    lab.spawn_in_netns(move || {
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut req = c.request(method.parse().unwrap(), url).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send() {
            Ok(r) => {
                let st = r.status().as_u16();
                (st, r.json().unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    })
    .unwrap()
    .join()
    .unwrap()
}

fn machine_with_mac(lab: &Lab, key: &str, mac: &str) -> Option<Value> {
    let (st, list) = api(
        lab,
        key,
        "GET",
        &format!("/api/v1/machines?mac={mac}"),
        None,
    );
    (st == 200).then_some(())?;
    list.as_array()?.first().cloned()
}

/// The QEMU command line of the test machine, booting from the network first.
fn vm_command(
    firmware: Firmware,
    mac: &str,
    tap: &str,
    disk: &Path,
    serial: &Path,
    extra: &str,
) -> String {
    let fw = match firmware {
        Firmware::Bios => String::new(),
        Firmware::Uefi => "-bios /usr/share/ovmf/OVMF.fd ".into(),
    };
    let accel = std::env::var("INGOT_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    format!(
        "qemu-system-x86_64 -accel {accel} -m 1024 -smp 2 -display none -monitor none -nodefaults -no-user-config \
         {fw}-boot n -serial file:{serial} -drive file={disk},format=raw,if=virtio \
         -netdev tap,id=n0,ifname={tap},script=no,downscript=no -device virtio-net-pci,netdev=n0,mac={mac} {extra}",
        serial = serial.display(),
        disk = disk.display(),
    )
}

struct Setup {
    lab: Lab,
    key: String,
    data: tempfile::TempDir,
}

fn start_region() -> Setup {
    start_region_with(&[])
}

fn start_region_with(extra: &[&str]) -> Setup {
    for fw in [Firmware::Bios, Firmware::Uefi] {
        require_lab_files(fw)
            .expect("QEMU and firmware must be installed (scripts/install-deps.sh)");
    }
    let image = ephemeral_image();
    let bin = ingot_bin();
    let mut lab = Lab::new().expect("lab namespace");
    let data = tempfile::tempdir().unwrap();
    let images = data.path().join("images/ephemeral");
    std::fs::create_dir_all(&images).unwrap();
    for f in ["vmlinuz", "initrd.gz"] {
        std::fs::copy(image.join(f), images.join(f)).unwrap();
    }
    let out = Command::new(&bin)
        .args([
            "admin",
            "create-user",
            "--username",
            "admin",
            "--admin",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let ip = lab.server_ip();
    let net = ip.octets();
    let subnet = format!("{}.{}.{}.0/24", net[0], net[1], net[2]);
    let range = format!("{0}.{1}.{2}.100-{0}.{1}.{2}.150", net[0], net[1], net[2]);
    let proxy = extra.contains(&"--proxy-dhcp");
    let listen = format!("{ip}:5240");
    let region = format!("http://{ip}:5240");
    let data_dir = data.path().display().to_string();
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--region-url",
        &region,
        "--data-dir",
        &data_dir,
        "--pxe-interface",
        "br0",
        "--pxe-subnet",
        &subnet,
        "--commission-timeout",
        "600",
        "--power-sync-interval",
        "0",
    ];
    if proxy {
        args.push("--proxy-dhcp");
    } else {
        args.extend(["--pxe-range", &range]);
    }
    lab.spawn_process("ingot-serve", &bin.display().to_string(), &args)
        .unwrap();
    let up = wait_for(Duration::from_secs(30), || {
        (api(&lab, &key, "GET", "/api/v1/machines", None).0 == 200).then_some(())
    });
    assert!(
        up.is_some(),
        "ingot serve did not come up; see {}/ingot-serve.log",
        lab.logs_dir().display()
    );
    Setup { lab, key, data }
}

fn gib(n: u64) -> u64 {
    n << 30
}

/// Boots an unknown VM and waits for it to enlist. Returns the machine and seconds taken.
fn enlist(s: &mut Setup, firmware: Firmware, mac: &str) -> (Value, f64) {
    let tap = s.lab.add_tap().unwrap();
    let disk = s.data.path().join(format!("{}.img", mac.replace(':', "")));
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(gib(8))
        .unwrap();
    let serial = s
        .lab
        .logs_dir()
        .join(format!("enlist-{firmware:?}.serial.log"));
    let cmd = vm_command(firmware, mac, &tap, &disk, &serial, "-no-reboot");
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let started = Instant::now();
    s.lab
        .spawn_process(&format!("vm-{firmware:?}"), words[0], &words[1..])
        .unwrap();
    let m = wait_for(BOOT_TIMEOUT, || machine_with_mac(&s.lab, &s.key, mac)).unwrap_or_else(|| {
        panic!(
            "{firmware:?} VM never enlisted; serial log: {}",
            serial.display()
        )
    });
    (m, started.elapsed().as_secs_f64())
}

fn assert_hardware(m: &Value, mac: &str) {
    assert_eq!(m["status_name"], "New", "{m:#}");
    assert_eq!(m["boot_mac"], mac);
    assert_eq!(m["cpu_count"], 2, "{m:#}");
    let mem = m["memory_mib"].as_u64().unwrap();
    assert_eq!(mem, 1024, "memory as the VM has it: {m:#}");
    let disks = m["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "{m:#}");
    assert_eq!(disks[0]["size_bytes"].as_u64(), Some(gib(8)), "{m:#}");
    let nics = m["interfaces"].as_array().unwrap();
    assert!(nics.iter().any(|n| n["mac"] == mac), "{m:#}");
}

#[test]
fn unknown_vms_enlist_and_commission_through_a_virtual_bmc() {
    let mut s = start_region();

    // 1. Unknown BIOS and UEFI machines enlist themselves.
    let bios_mac = "52:54:00:e2:e0:01";
    let (bios, t_bios) = enlist(&mut s, Firmware::Bios, bios_mac);
    assert_hardware(&bios, bios_mac);
    let uefi_mac = "52:54:00:e2:e0:02";
    let (uefi, t_uefi) = enlist(&mut s, Firmware::Uefi, uefi_mac);
    assert_hardware(&uefi, uefi_mac);
    let (_, disc) = api(&s.lab, &s.key, "GET", "/api/v1/discoveries", None);
    for mac in [bios_mac, uefi_mac] {
        let d = disc
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["mac"] == mac)
            .unwrap_or_else(|| panic!("{mac} not discovered: {disc:#}"));
        assert!(d["ip"].is_string(), "{d}");
        assert!(d["machine_id"].is_string(), "{d}");
    }
    eprintln!("enlist: BIOS {t_bios:.1} s, UEFI {t_uefi:.1} s (VM start → New in the API)");
    // The VMs power themselves off after enlisting.
    for label in ["vm-Bios", "vm-Uefi"] {
        assert!(
            wait_for(Duration::from_secs(60), || (!s.lab.process_running(label))
                .then_some(()))
            .is_some(),
            "{label} kept running"
        );
    }

    // 2. Give each machine an IPMI BMC whose power-on starts that same VM, and commission it.
    let t_bios_c = commission_via_ipmi(&mut s, &bios, Firmware::Bios, bios_mac, 16230, 19002);
    let t_uefi_c = commission_via_ipmi(&mut s, &uefi, Firmware::Uefi, uefi_mac, 16231, 19003);
    eprintln!(
        "commission: BIOS {t_bios_c:.1} s, UEFI {t_uefi_c:.1} s (API commission → Ready, powered by IPMI through ipmi_sim)"
    );
    let _ = std::fs::write(
        std::env::temp_dir().join("ingot-e2e-timings.txt"),
        format!(
            "enlist_bios_s={t_bios:.1}\nenlist_uefi_s={t_uefi:.1}\ncommission_bios_s={t_bios_c:.1}\ncommission_uefi_s={t_uefi_c:.1}\n"
        ),
    );
}

/// Puts the VM behind an ipmi_sim BMC (its `startcmd` is the VM), commissions the machine
/// through the API and waits for Ready and power-off. Returns seconds from the API call to Ready.
fn commission_via_ipmi(
    s: &mut Setup,
    machine: &Value,
    firmware: Firmware,
    mac: &str,
    lan_port: u16,
    serial_port: u16,
) -> f64 {
    let id = machine["id"].as_str().unwrap().to_owned();
    let tap = s.lab.add_tap().unwrap();
    let disk = s.data.path().join(format!("{}.img", mac.replace(':', "")));
    let serial = s
        .lab
        .logs_dir()
        .join(format!("commission-{firmware:?}.serial.log"));
    let vm = vm_command(firmware, mac, &tap, &disk, &serial, "");
    let conf = format!(
        "name \"e2e{lan_port}\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {lan_port}\n    priv_limit admin\n    \
         allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n    \
         allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n    \
         guid a123456789abcdefa123456789abcdef\n  endlan\n  serial 15 127.0.0.1 {serial_port} codec VM\n  \
         startcmd \"{vm} -chardev socket,id=ipmi0,host=127.0.0.1,port={serial_port},reconnect=10 \
         -device ipmi-bmc-extern,id=bmc0,chardev=ipmi0 -device isa-ipmi-kcs,bmc=bmc0\"\n  startnow false\n  \
         poweroff_wait 2\n  kill_wait 2\nuser 2 true  \"admin\" \"bmc-secret\" admin 10 none md2 md5 straight\n"
    );
    let bmc_dir = s.data.path().join(format!("bmc-{lan_port}"));
    std::fs::create_dir_all(bmc_dir.join("state")).unwrap();
    std::fs::write(bmc_dir.join("lan.conf"), conf).unwrap();
    std::fs::copy(
        repo_root().join("crates/bmc-power/tests/peers/ipmi_sim/sim.emu"),
        bmc_dir.join("sim.emu"),
    )
    .unwrap();
    let arg = |p: PathBuf| p.display().to_string();
    let (c, f, st) = (
        arg(bmc_dir.join("lan.conf")),
        arg(bmc_dir.join("sim.emu")),
        arg(bmc_dir.join("state")),
    );
    s.lab
        .spawn_process(
            &format!("ipmi_sim-{lan_port}"),
            "ipmi_sim",
            &["-c", &c, "-f", &f, "-s", &st, "-n"],
        )
        .unwrap();
    // Wait until ipmi_sim has bound its LAN port inside the namespace.
    let ns = s.lab.name().to_owned();
    let bound = wait_for(Duration::from_secs(20), || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "ss",
                "-Hlun",
                &format!("sport = :{lan_port}"),
            ])
            .output()
            .ok()?;
        (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
    });
    assert!(bound.is_some(), "ipmi_sim never bound 127.0.0.1:{lan_port}");
    let params = serde_json::json!({"power_type": "ipmi", "power_parameters": {
        "power_address": format!("127.0.0.1:{lan_port}"), "power_user": "admin",
        "power_pass": "bmc-secret", "power_driver": "LAN_2_0"}});
    let (code, m) = api(
        &s.lab,
        &s.key,
        "PUT",
        &format!("/api/v1/machines/{id}/power-parameters"),
        Some(params),
    );
    assert_eq!(code, 200, "{m}");
    assert!(m["power_parameters"].get("power_pass").is_none());

    let started = Instant::now();
    let (code, m) = api(
        &s.lab,
        &s.key,
        "POST",
        &format!("/api/v1/machines/{id}/actions/commission"),
        None,
    );
    assert_eq!(
        (code, m["status_name"].as_str()),
        (200, Some("Commissioning")),
        "{m}"
    );
    let outcome = wait_for(BOOT_TIMEOUT, || {
        let (_, m) = api(
            &s.lab,
            &s.key,
            "GET",
            &format!("/api/v1/machines/{id}"),
            None,
        );
        match m["status_name"].as_str() {
            Some("Ready") => Some(Ok(m)),
            Some("Failed commissioning") => Some(Err(m)),
            _ => None,
        }
    });
    let m = match outcome {
        Some(Ok(m)) => m,
        Some(Err(m)) => panic!("{firmware:?} commissioning failed: {m:#}"),
        None => {
            let (_, ev) = api(
                &s.lab,
                &s.key,
                "GET",
                &format!("/api/v1/machines/{id}/events"),
                None,
            );
            panic!(
                "{firmware:?} never Ready; events: {ev:#}\nserial log: {}",
                serial.display()
            )
        }
    };
    let took = started.elapsed().as_secs_f64();
    assert_eq!(
        (m["cpu_count"].as_u64(), m["memory_mib"].as_u64()),
        (Some(2), Some(1024))
    );
    // Ingot powers the machine off when commissioning is done: the VM process ends.
    let off = wait_for(Duration::from_secs(60), || {
        let out = Command::new("pgrep")
            .args(["-f", &format!("mac={mac}")])
            .output()
            .unwrap();
        (!out.status.success()).then_some(())
    });
    assert!(
        off.is_some(),
        "the {firmware:?} VM is still running after commissioning"
    );
    let (_, ev) = api(
        &s.lab,
        &s.key,
        "GET",
        &format!("/api/v1/machines/{id}/events"),
        None,
    );
    assert!(ev.to_string().contains("commissioning complete"), "{ev:#}");
    took
}

/// proxyDHCP: a site DHCP server (dnsmasq) hands out addresses only; `ingot serve
/// --proxy-dhcp` answers the PXE part. An unknown BIOS VM still netboots from Ingot and enlists.
#[test]
fn proxy_dhcp_next_to_a_site_dhcp_server() {
    require_lab_files(Firmware::Bios)
        .expect("QEMU and firmware must be installed (scripts/install-deps.sh)");
    let mut s = start_region_with(&["--proxy-dhcp"]);
    let net = s.lab.server_ip().octets();
    let conf = format!(
        "port=0\ninterface=br0\nbind-interfaces\ndhcp-authoritative\n\
         dhcp-range={0}.{1}.{2}.160,{0}.{1}.{2}.200,255.255.255.0,1h\nlog-dhcp\n\
         dhcp-leasefile={3}/site.leases\n",
        net[0],
        net[1],
        net[2],
        s.lab.logs_dir().display()
    );
    let conf_path = s.lab.logs_dir().join("site-dnsmasq.conf");
    std::fs::write(&conf_path, conf).unwrap();
    s.lab
        .spawn_process(
            "site-dhcp",
            "dnsmasq",
            &[
                "-k",
                "--pid-file",
                &format!("--conf-file={}", conf_path.display()),
            ],
        )
        .unwrap();
    let mac = "52:54:00:e2:e0:11";
    let (m, t) = enlist(&mut s, Firmware::Bios, mac);
    assert_hardware(&m, mac);
    let (_, disc) = api(&s.lab, &s.key, "GET", "/api/v1/discoveries", None);
    let d = disc
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["mac"] == mac)
        .expect("discovered");
    // The address came from the site's range, not Ingot's.
    let ip: std::net::Ipv4Addr = d["ip"].as_str().unwrap().parse().unwrap();
    assert!((160..=200).contains(&ip.octets()[3]), "{d}");
    eprintln!("proxyDHCP enlist: {t:.1} s");
}
