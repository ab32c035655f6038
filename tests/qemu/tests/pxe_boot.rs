//! Real firmware against Ingot's PXE services in a private namespace: DHCP (dnsmasq as DHCP
//! only until Ingot's DHCP server lands), TFTP and HTTP boot from `pxe`, QEMU under TCG.
//! One VM at a time (the machine has two cores). These tests fail, never skip, when QEMU or
//! firmware is missing.

use ingot_lab::pxe_stack::LabEvent;
use ingot_lab::{Firmware, Lab, PxeStack, RecordingBackend, VmSpec, require_lab_files};
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

fn netboot(
    spec_name: &str,
    firmware: Firmware,
    native_pxe: bool,
    mac: &str,
    purpose: BootPurpose,
) -> Booted {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_lab_files(firmware).expect("lab prerequisites");
    let mut lab = Lab::new().expect("lab namespace");
    let tap = lab.add_tap().expect("tap");
    let images = tempfile::tempdir().unwrap();
    let backend = Arc::new(RecordingBackend::new(
        "http://10.77.0.1:5240",
        &[(mac, purpose)],
    ));
    let stack = PxeStack::start(&lab, backend, images.path().to_path_buf()).expect("PXE services");
    lab.start_dnsmasq_dhcp().expect("dnsmasq");
    let mut spec = VmSpec::new(spec_name, firmware, mac, &tap);
    spec.uefi_native_pxe = native_pxe;
    let vm = lab.launch_vm(&spec).expect("qemu");
    let hyphens = mac.replace(':', "-");
    let script = stack.wait_for_event(BOOT_TIMEOUT, |e| match e {
        LabEvent::Script {
            path,
            status: 200,
            body,
        } if path.contains(&hyphens) => Some(body.clone()),
        _ => None,
    });
    let Some(script) = script else {
        panic!(
            "{spec_name}: no per-MAC script fetched within {BOOT_TIMEOUT:?}; qemu running: {}; events: {:#?}; logs in {}",
            lab.process_running(&vm.label),
            stack.events(),
            lab.logs_dir().display()
        );
    };
    eprintln!(
        "{spec_name}: script fetched {:.1} s after VM start",
        vm.started.elapsed().as_secs_f64()
    );
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

/// SeaBIOS + iPXE ROM: DHCP names `boot.ipxe`, fetched from our TFTP, which chains to our HTTP
/// service for the per-MAC script; a commissioning machine gets the ephemeral kernel script.
#[test]
fn bios_vm_fetches_its_ephemeral_script() {
    let mac = "52:54:00:77:00:01";
    let booted = netboot(
        "bios-commission",
        Firmware::Bios,
        false,
        mac,
        BootPurpose::Commission,
    );
    assert_eq!(
        decision_for(&booted, mac),
        (Some("bios".into()), BootPurpose::Commission)
    );
    assert!(
        tftp_finished(&booted, "boot.ipxe").is_some(),
        "boot.ipxe over TFTP: {:#?}",
        booted.stack.events()
    );
    assert!(
        booted
            .script
            .contains("kernel http://10.77.0.1:5248/images/ephemeral/vmlinuz "),
        "{}",
        booted.script
    );
    assert!(
        booted.script.contains("ingot.token=lab-token-525400770001"),
        "{}",
        booted.script
    );
    assert!(
        booted.script.contains("ingot.url=http://10.77.0.1:5240"),
        "{}",
        booted.script
    );
}

/// OVMF's own PXE (no option ROM) fetches `snponly.efi` from our TFTP, iPXE then chains to the
/// per-MAC script; a machine whose decision is LocalDisk gets the local-boot script.
#[test]
fn uefi_vm_with_local_disk_decision_gets_the_local_script() {
    let mac = "52:54:00:77:00:02";
    let booted = netboot(
        "uefi-local",
        Firmware::Uefi,
        true,
        mac,
        BootPurpose::LocalDisk,
    );
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
    // Shows what the firmware negotiates (EDK2 asks for blksize, tsize and windowsize).
    for event in booted.stack.events() {
        if let LabEvent::Tftp(r) = event {
            eprintln!(
                "uefi-local: TFTP {} {:?} -> {:?}",
                r.file, r.requested_options, r.outcome
            );
        }
    }
    assert!(
        booted.script.contains("from its local disk"),
        "{}",
        booted.script
    );
    assert!(booted.script.contains("\nexit 1"), "{}", booted.script);
    assert!(!booted.script.contains("kernel "), "{}", booted.script);
}
