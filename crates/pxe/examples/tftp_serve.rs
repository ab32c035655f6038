//! Ingot's TFTP server on its own, for benchmarks and manual tests:
//! `tftp_serve --listen 10.99.0.1:69 --root /usr/lib/ipxe [--runtime current|multi]`.
//! Runs until SIGINT or SIGTERM.

use async_trait::async_trait;
use ingot_types::boot::{BootDecision, BootPurpose};
use ingot_types::net::Sighting;
use pxe::backend::{BackendError, BootBackend, ClientInfo};
use pxe::tftp::{TftpConfig, server};
use std::net::SocketAddr;
use std::sync::Arc;

struct NoRegion;

#[async_trait]
impl BootBackend for NoRegion {
    async fn boot_decision(&self, _: &str, _: &ClientInfo) -> Result<BootDecision, BackendError> {
        Ok(BootDecision {
            purpose: BootPurpose::LocalDisk,
            machine_id: None,
            boot_token: None,
            region_url: String::new(),
        })
    }
    async fn record_sighting(&self, _: Sighting) -> Result<(), BackendError> {
        Ok(())
    }
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut listen: SocketAddr = "127.0.0.1:6969".parse().unwrap();
    let mut root = "/usr/lib/ipxe".to_string();
    let mut multi = true;
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value.parse().expect("--listen ip:port"),
            "--root" => root = value.clone(),
            "--runtime" => multi = value == "multi",
            other => panic!("unknown flag {other}"),
        }
    }
    let runtime = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("runtime");
    runtime.block_on(async move {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        eprintln!("tftp_serve: listening on {listen}, root {root}");
        server::run(listen, TftpConfig::new(root), Arc::new(NoRegion), shutdown)
            .await
            .expect("tftp server");
    });
}
