//! `ingot-agent`: run by the ephemeral environment's /init (see `images/ephemeral/init`).
//!
//! ```text
//! ingot-agent [--power-off] [--cmdline "<kernel command line>"] [--root DIR]
//! ```
//! `--power-off` powers the machine off when the agent is done, succeeded or not (only ever
//! passed by /init). `--cmdline` replaces /proc/cmdline and `--root` uses `DIR/proc`,
//! `DIR/sys` and `DIR/dev` instead of the live ones (both for tests).

use ingot_agent::client::error_chain;
use ingot_agent::run::Console;
use ingot_agent::{BootConfig, Done, RetryPolicy, Roots};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The real agent is more patient than the client's default: at boot the region may be
/// restarting, and giving up means a wasted boot. About 80 s in all.
const AGENT_ATTEMPTS: u32 = 20;

struct Args {
    power_off: bool,
    cmdline: Option<String>,
    root: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        power_off: false,
        cmdline: None,
        root: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--power-off" => args.power_off = true,
            "--cmdline" => args.cmdline = Some(it.next().ok_or("--cmdline needs a value")?),
            "--root" => args.root = Some(it.next().ok_or("--root needs a directory")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let started = Instant::now();
    let console: Console = Arc::new(move |msg: &str| {
        eprintln!(
            "ingot-agent [{:6.2}s]: {msg}",
            started.elapsed().as_secs_f64()
        );
    });
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            console(&format!("usage error: {e}"));
            return ExitCode::from(2);
        }
    };
    let ok = agent(&args, &console);
    if args.power_off {
        power_off(&console);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the agent; prints the outcome or a clear failure. True on success.
fn agent(args: &Args, console: &Console) -> bool {
    let roots = match &args.root {
        Some(dir) => Roots::under(dir.as_ref()),
        None => Roots::live(),
    };
    let cmdline = match &args.cmdline {
        Some(c) => c.clone(),
        None => match std::fs::read_to_string(roots.proc.join("cmdline")) {
            Ok(c) => c,
            Err(e) => {
                fail(
                    console,
                    &format!("cannot read {}: {e}", roots.proc.join("cmdline").display()),
                );
                return false;
            }
        },
    };
    let cfg = match BootConfig::from_cmdline(&cmdline) {
        Ok(c) => c,
        Err(e) => {
            fail(console, &e.to_string());
            return false;
        }
    };
    console(&format!(
        "region {}, purpose {:?}, boot MAC {:?}",
        cfg.region_url, cfg.purpose, cfg.boot_mac
    ));
    let retry = RetryPolicy {
        attempts: cfg.attempts.unwrap_or(AGENT_ATTEMPTS),
        ..RetryPolicy::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            fail(console, &format!("cannot start the async runtime: {e}"));
            return false;
        }
    };
    match runtime.block_on(ingot_agent::run(&cfg, &roots, retry, console.clone())) {
        Ok(outcome) => {
            let id = outcome
                .machine_id
                .map(|m| m.to_string())
                .unwrap_or_else(|| "?".into());
            let what = match outcome.done {
                Done::Commissioned => "commissioned",
                Done::Erased => "disks erased",
                Done::NothingToDo => "nothing to do",
            };
            let enlisted = if outcome.enlisted { "enlisted, " } else { "" };
            console(&format!("DONE: machine {id}: {enlisted}{what}"));
            true
        }
        Err(e) => {
            fail(console, &error_chain(&e));
            false
        }
    }
}

/// A failure an operator watching the console must not miss.
fn fail(console: &Console, message: &str) {
    console("================================================================");
    console(&format!("FAILED: {message}"));
    console("================================================================");
}

fn power_off(console: &Console) {
    console("powering off");
    nix::unistd::sync();
    // reboot(2) only returns on failure (e.g. not root); there is nothing better to do then
    // than to say so and let /init fall back to `poweroff -f`.
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    console(&format!("power off failed: {e}"));
    std::thread::sleep(Duration::from_secs(1));
}
