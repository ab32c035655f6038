//! Real firmware against Ingot's PXE services in a private namespace: Ingot's DHCP, TFTP and
//! HTTP boot (and once with dnsmasq as the DHCP server, for sites that keep their own DHCP),
//! QEMU under TCG. One VM at a time (the machine has two cores). These tests fail, never skip,
//! when QEMU, dnsmasq or firmware is missing.

use ingot_lab::pxe_stack::LabEvent;
use ingot_lab::{Firmware, Lab, LabDhcp, PxeStack, RecordingBackend, VmSpec, require_lab_files};
use ingot_types::boot::BootPurpose;
use pxe::tftp::TransferOutcome;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// TCG boots take 20-40 s to the script fetch here; leave room for a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Booted {
    stack: PxeStack,
    script: String,
    _lab: Lab,
    _images: tempfile::TempDir,
}

struct Boot<'a> {
    name: &'a str,
    firmware: Firmware,
    /// UEFI: OVMF's own PXE instead of the iPXE option ROM.
    native_pxe: bool,
    dhcp: LabDhcp,
    mac: &'a str,
    purpose: BootPurpose,
}

fn netboot(b: Boot<'_>) -> Booted {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_lab_files(b.firmware).expect("lab prerequisites");
    let mut lab = Lab::new().expect("lab namespace");
    let tap = lab.add_tap().expect("tap");
    let images = tempfile::tempdir().unwrap();
    let backend = Arc::new(RecordingBackend::new(
        "http://10.77.0.1:5240",
        &[(b.mac, b.purpose)],
    ));
    let stack =
        PxeStack::start(&lab, backend, images.path().to_path_buf(), b.dhcp).expect("PXE services");
    if b.dhcp == LabDhcp::External {
        lab.start_dnsmasq_dhcp().expect("dnsmasq");
    }
    let mut spec = VmSpec::new(b.name, b.firmware, b.mac, &tap);
    spec.uefi_native_pxe = b.native_pxe;
    let vm = lab.launch_vm(&spec).expect("qemu");
    let hyphens = b.mac.replace(':', "-");
    let script = stack.wait_for_event(BOOT_TIMEOUT, |e| match e {
        // iPXE percent-encodes the colons of `${mac}` in URLs.
        LabEvent::Script {
            path,
            status: 200,
            body,
        } if path.replace("%3A", ":").contains(b.mac) || path.contains(&hyphens) => {
            Some(body.clone())
        }
        _ => None,
    });
    let Some(script) = script else {
        panic!(
            "{}: no per-MAC script fetched within {BOOT_TIMEOUT:?}; qemu running: {}; events: {:#?}; logs in {}",
            b.name,
            lab.process_running(&vm.label),
            stack.events(),
            lab.logs_dir().display()
        );
    };
    eprintln!(
        "{}: per-MAC script fetched {:.1} s after VM start",
        b.name,
        vm.started.elapsed().as_secs_f64()
    );
    for event in stack.events() {
        if let LabEvent::Tftp(r) = event {
            eprintln!(
                "{}: TFTP {} {:?} -> {:?}",
                b.name, r.file, r.requested_options, r.outcome
            );
        }
    }
    Booted {
        stack,
        script,
        _lab: lab,
        _images: images,
    }
}

fn decision_for(booted: &Booted, mac: &str) -> (Option<String>, BootPurpose) {
    booted
        .stack
        .events()
        .iter()
        .find_map(|e| match e {
            LabEvent::BootDecision {
                mac: m,
                client,
                purpose,
            } if m == mac => Some((client.arch.clone(), *purpose)),
            _ => None,
        })
        .expect("the backend saw the VM's MAC")
}

fn tftp_finished(booted: &Booted, file: &str) -> Option<u64> {
    booted.stack.events().iter().find_map(|e| match e {
        LabEvent::Tftp(r)
            if r.file.trim_start_matches('/') == file && r.outcome == TransferOutcome::Finished =>
        {
            Some(r.bytes)
        }
        _ => None,
    })
}

fn dhcp_sighted(booted: &Booted, mac: &str) -> bool {
    booted
        .stack
        .events()
        .iter()
        .any(|e| matches!(e, LabEvent::Sighting(s) if s.mac == mac && s.source == "dhcp"))
}

/// SeaBIOS + iPXE ROM with Ingot's DHCP: iPXE gets its per-MAC script URL in the DHCP answer;
/// a commissioning machine gets the ephemeral kernel script.
#[test]
fn bios_vm_fetches_its_ephemeral_script() {
    let mac = "52:54:00:77:00:01";
    let booted = netboot(Boot {
        name: "bios-commission",
        firmware: Firmware::Bios,
        native_pxe: false,
        dhcp: LabDhcp::Ingot,
        mac,
        purpose: BootPurpose::Commission,
    });
    assert_eq!(
        decision_for(&booted, mac),
        (Some("bios".into()), BootPurpose::Commission)
    );
    assert!(dhcp_sighted(&booted, mac), "{:#?}", booted.stack.events());
    let s = &booted.script;
    assert!(
        s.contains("kernel http://10.77.0.1:5248/images/ephemeral/vmlinuz "),
        "{s}"
    );
    assert!(s.contains("ingot.token=lab-token-525400770001"), "{s}");
    assert!(s.contains("ingot.url=http://10.77.0.1:5240"), "{s}");
}

/// OVMF's own PXE (no option ROM) with Ingot's DHCP fetches `snponly.efi` from our TFTP, iPXE
/// then asks for the per-MAC script; a machine whose decision is LocalDisk gets the
/// local-boot script (UEFI flavour).
#[test]
fn uefi_vm_with_local_disk_decision_gets_the_local_script() {
    let mac = "52:54:00:77:00:02";
    let booted = netboot(Boot {
        name: "uefi-local",
        firmware: Firmware::Uefi,
        native_pxe: true,
        dhcp: LabDhcp::Ingot,
        mac,
        purpose: BootPurpose::LocalDisk,
    });
    assert_eq!(
        decision_for(&booted, mac),
        (Some("uefi-x64".into()), BootPurpose::LocalDisk)
    );
    let snponly = std::fs::metadata("/usr/lib/ipxe/snponly.efi")
        .unwrap()
        .len();
    assert_eq!(
        tftp_finished(&booted, "snponly.efi"),
        Some(snponly),
        "{:#?}",
        booted.stack.events()
    );
    let s = &booted.script;
    assert!(s.contains("from its local disk"), "{s}");
    assert!(s.contains("\nexit 1"), "{s}");
    assert!(!s.contains("kernel ") && !s.contains("sanboot"), "{s}");
}

/// With a third-party DHCP server (dnsmasq, DHCP only) naming `boot.ipxe`: iPXE fetches the
/// chain script from our TFTP and follows it to our HTTP service; LocalDisk on BIOS hands
/// over to the first disk.
#[test]
fn bios_vm_behind_dnsmasq_chains_through_boot_ipxe() {
    let mac = "52:54:00:77:00:03";
    let booted = netboot(Boot {
        name: "bios-dnsmasq-local",
        firmware: Firmware::Bios,
        native_pxe: false,
        dhcp: LabDhcp::External,
        mac,
        purpose: BootPurpose::LocalDisk,
    });
    assert_eq!(
        decision_for(&booted, mac),
        (Some("bios".into()), BootPurpose::LocalDisk)
    );
    assert!(
        tftp_finished(&booted, "boot.ipxe").is_some(),
        "{:#?}",
        booted.stack.events()
    );
    let s = &booted.script;
    assert!(s.contains("sanboot --no-describe --drive 0x80"), "{s}");
}
