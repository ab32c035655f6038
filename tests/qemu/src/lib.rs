//! The QEMU lab harness: a private network namespace with a bridge, taps for VMs, servers run
//! inside the namespace (in-process threads or child processes), and QEMU VMs with real
//! firmware (SeaBIOS + iPXE option ROM, or OVMF). Everything is torn down on drop; logs are
//! kept when the test panics.
//!
//! Network rule: every address, bridge and tap lives inside the lab's namespace; nothing is
//! bound on the host's interfaces.

pub mod pxe_stack;

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use pxe_stack::{LabDhcp, PxeStack, RecordingBackend};

/// Default OVMF image (Debian package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/ovmf/OVMF.fd";
/// Debian package `ipxe`: boot loaders the TFTP server hands out.
pub const IPXE_DIR: &str = "/usr/lib/ipxe";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("running `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("required lab file {0} is missing (install qemu-system-x86, ipxe, ipxe-qemu, ovmf)")]
    MissingFile(PathBuf),
    #[error("lab I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {0}")]
    Setns(String, #[source] nix::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a command to completion, failing with its stderr.
fn run(program: &str, args: &[&str]) -> Result<(), LabError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A private L2 segment: netns `ingot-lab-<pid>-<n>` holding bridge `br0` at `10.77.0.1/24`.
pub struct Lab {
    name: String,
    logs: PathBuf,
    taps: u32,
    children: Vec<(String, Child)>,
}

impl Lab {
    pub fn new() -> Result<Lab, LabError> {
        remove_stale_namespaces();
        let name = format!(
            "ingot-lab-{}-{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let logs = logs_root().join(&name);
        std::fs::create_dir_all(&logs).map_err(io_err(&logs))?;
        run("ip", &["netns", "add", &name])?;
        // From here on Drop cleans up, also when a later step fails.
        let lab = Lab {
            name,
            logs,
            taps: 0,
            children: Vec::new(),
        };
        let server = format!("{}/24", lab.server_ip());
        for args in [
            vec!["link", "set", "lo", "up"],
            vec![
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ],
            vec!["addr", "add", server.as_str(), "dev", "br0"],
            vec!["link", "set", "br0", "up"],
        ] {
            lab.ip(&args)?;
        }
        Ok(lab)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's own address on the bridge (servers bind here).
    pub fn server_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, 1)
    }

    /// Where this lab's logs go (`$INGOT_LAB_LOGS/<lab>` or `<target>/ingot-lab-logs/<lab>`).
    pub fn logs_dir(&self) -> &Path {
        &self.logs
    }

    /// `ip -n <lab> ...`
    pub fn ip(&self, args: &[&str]) -> Result<(), LabError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Adds a tap on the bridge for one VM NIC and returns its name.
    pub fn add_tap(&mut self) -> Result<String, LabError> {
        let tap = format!("tap{}", self.taps);
        self.taps += 1;
        self.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        self.ip(&["link", "set", &tap, "master", "br0"])?;
        self.ip(&["link", "set", &tap, "up"])?;
        Ok(tap)
    }

    /// Runs `f` on a new thread inside the namespace: sockets it creates (and threads it
    /// spawns, e.g. a tokio runtime's workers) live in the lab network.
    pub fn spawn_in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>, LabError> {
        let path = PathBuf::from("/run/netns").join(&self.name);
        let netns = File::open(&path).map_err(io_err(&path))?;
        let name = self.name.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("{name}-ns"))
            .spawn(move || {
                let entered = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                // Never run `f` in the host namespace.
                assert!(ok, "setns failed");
                f()
            })
            .map_err(|source| LabError::Spawn {
                command: "thread".into(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(LabError::Setns(name, e)),
            Err(_) => Err(LabError::Setns(name, nix::Error::UnknownErrno)),
        }
    }

    /// Starts `program args` inside the namespace with stdout and stderr in `<logs>/<label>.log`.
    /// The process is killed when the lab drops.
    pub fn spawn_process(
        &mut self,
        label: &str,
        program: &str,
        args: &[&str],
    ) -> Result<u32, LabError> {
        let log_path = self.logs.join(format!("{label}.log"));
        let log = File::create(&log_path).map_err(io_err(&log_path))?;
        let log2 = log.try_clone().map_err(io_err(&log_path))?;
        let command = format!("ip netns exec {} {program} {}", self.name, args.join(" "));
        // `ip netns exec` execs the program, so the child's PID is the program's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| LabError::Spawn { command, source })?;
        let pid = child.id();
        self.children.push((label.to_string(), child));
        Ok(pid)
    }

    /// Stops a process started with [`Lab::spawn_process`].
    pub fn stop_process(&mut self, label: &str) {
        if let Some(i) = self.children.iter().position(|(l, _)| l == label) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether a started process is still running.
    pub fn process_running(&mut self, label: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(l, _)| l == label)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// dnsmasq as DHCP server only (`port=0`, no TFTP): boot files point at the lab's own TFTP
    /// server on [`Lab::server_ip`]. iPXE clients (option 175) get `boot.ipxe`, UEFI PXE
    /// firmware `snponly.efi`, BIOS PXE firmware `undionly.kpxe`.
    pub fn start_dnsmasq_dhcp(&mut self) -> Result<(), LabError> {
        let server = self.server_ip();
        let conf = format!(
            "port=0\ninterface=br0\nbind-interfaces\ndhcp-authoritative\n\
             dhcp-range=10.77.0.100,10.77.0.200,255.255.255.0,1h\n\
             dhcp-match=set:ipxe,175\ndhcp-match=set:efi64,option:client-arch,7\n\
             dhcp-boot=tag:ipxe,boot.ipxe,,{server}\n\
             dhcp-boot=tag:efi64,tag:!ipxe,snponly.efi,,{server}\n\
             dhcp-boot=tag:!efi64,tag:!ipxe,undionly.kpxe,,{server}\n\
             log-dhcp\nlog-facility={logs}/dnsmasq-dhcp.log\ndhcp-leasefile={logs}/dnsmasq.leases\n",
            logs = self.logs.display()
        );
        let conf_path = self.logs.join("dnsmasq.conf");
        std::fs::write(&conf_path, conf).map_err(io_err(&conf_path))?;
        let conf_arg = format!("--conf-file={}", conf_path.display());
        self.spawn_process("dnsmasq", "dnsmasq", &["-k", "--pid-file", &conf_arg])?;
        Ok(())
    }

    /// Boots a VM on `tap` from the network. The VM is killed when the returned handle or the
    /// lab drops.
    pub fn launch_vm(&mut self, spec: &VmSpec) -> Result<Vm, LabError> {
        let qemu = which("qemu-system-x86_64")
            .ok_or_else(|| LabError::MissingFile("qemu-system-x86_64".into()))?;
        let accel = std::env::var("INGOT_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
        let serial = self.logs.join(format!("{}.serial.log", spec.name));
        let debugcon = self.logs.join(format!("{}.firmware.log", spec.name));
        let mut args: Vec<String> = [
            "-name",
            &spec.name,
            "-accel",
            &accel,
            "-m",
            &spec.memory_mb.to_string(),
            "-smp",
            "1",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-user-config",
            "-nodefaults",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("-serial".into());
        args.push(format!("file:{}", serial.display()));
        // SeaBIOS and OVMF debug output goes to port 0x402.
        args.extend([
            "-chardev".into(),
            format!("file,id=fwlog,path={}", debugcon.display()),
        ]);
        args.extend([
            "-device".into(),
            "isa-debugcon,iobase=0x402,chardev=fwlog".into(),
        ]);
        args.extend(["-boot".into(), "n".into()]);
        args.extend([
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
        ]);
        let mut nic = format!("virtio-net-pci,netdev=n0,mac={}", spec.mac);
        match spec.firmware {
            Firmware::Bios => {
                // SeaBIOS with QEMU's iPXE option ROM (package ipxe-qemu).
                require(Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom"))?;
            }
            Firmware::Uefi => {
                require(Path::new(OVMF_CODE))?;
                args.extend(["-bios".into(), OVMF_CODE.into()]);
                if spec.uefi_native_pxe {
                    // No option ROM: OVMF's own PXE stack fetches snponly.efi over TFTP, which
                    // then runs iPXE — the path real UEFI servers take.
                    nic.push_str(",romfile=");
                }
            }
        }
        args.extend(["-device".into(), nic]);
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let label = format!("qemu-{}", spec.name);
        let qemu_path = qemu.display().to_string();
        let pid = self.spawn_process(&label, &qemu_path, &arg_refs)?;
        Ok(Vm {
            label,
            pid,
            serial,
            started: Instant::now(),
        })
    }
}

/// Firmware a VM boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS + iPXE option ROM.
    Bios,
    /// OVMF.
    Uefi,
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub firmware: Firmware,
    pub mac: String,
    pub tap: String,
    pub memory_mb: u32,
    /// UEFI only: boot with OVMF's PXE instead of the iPXE option ROM.
    pub uefi_native_pxe: bool,
}

impl VmSpec {
    pub fn new(name: &str, firmware: Firmware, mac: &str, tap: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            firmware,
            mac: mac.into(),
            tap: tap.into(),
            memory_mb: 256,
            uefi_native_pxe: false,
        }
    }
}

pub struct Vm {
    pub label: String,
    pub pid: u32,
    pub serial: PathBuf,
    pub started: Instant,
}

impl Vm {
    pub fn serial_log(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = run("ip", &["netns", "del", &self.name]);
        if std::thread::panicking() || std::env::var_os("INGOT_LAB_KEEP_LOGS").is_some() {
            eprintln!("ingot-lab: logs kept in {}", self.logs.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

fn require(path: &Path) -> Result<(), LabError> {
    if path.exists() {
        Ok(())
    } else {
        Err(LabError::MissingFile(path.to_path_buf()))
    }
}

/// Fails (rather than skips) when a lab prerequisite is missing.
pub fn require_lab_files(firmware: Firmware) -> Result<(), LabError> {
    which("qemu-system-x86_64")
        .ok_or_else(|| LabError::MissingFile("qemu-system-x86_64".into()))?;
    which("dnsmasq").ok_or_else(|| LabError::MissingFile("dnsmasq".into()))?;
    for f in ["undionly.kpxe", "snponly.efi", "ipxe.efi"] {
        require(&Path::new(IPXE_DIR).join(f))?;
    }
    match firmware {
        Firmware::Bios => require(Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom")),
        Firmware::Uefi => require(Path::new(OVMF_CODE)),
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn logs_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("INGOT_LAB_LOGS") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("ingot-lab-logs")
}

/// Deletes namespaces left by lab processes that died without dropping their lab.
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("ingot-lab-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        let alive = Path::new("/proc").join(pid).exists();
        if !alive {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
