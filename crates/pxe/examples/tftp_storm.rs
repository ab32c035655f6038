//! TFTP boot-storm load generator: N concurrent read requests (all started at once), every
//! byte checked against the expected file. Prints one JSON line.
//!
//! `tftp_storm --server 10.99.0.1:69 --file ipxe.efi --expect /usr/lib/ipxe/ipxe.efi --clients 1000 --blksize 1432`

use pxe::tftp::client::{self, FetchOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    server: SocketAddr,
    file: String,
    expect: String,
    clients: usize,
    blksize: u16,
    windowsize: Option<u16>,
    timeout: Duration,
    retries: u32,
}

fn parse_args() -> Args {
    let mut args = Args {
        server: "127.0.0.1:69".parse().unwrap(),
        file: "ipxe.efi".into(),
        expect: "/usr/lib/ipxe/ipxe.efi".into(),
        clients: 300,
        blksize: 1432,
        windowsize: None,
        timeout: Duration::from_secs(2),
        retries: 5,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => args.server = value.parse().expect("--server ip:port"),
            "--file" => args.file = value.clone(),
            "--expect" => args.expect = value.clone(),
            "--clients" => args.clients = value.parse().expect("--clients n"),
            "--blksize" => args.blksize = value.parse().expect("--blksize n"),
            "--windowsize" => args.windowsize = Some(value.parse().expect("--windowsize n")),
            "--timeout-ms" => {
                args.timeout = Duration::from_millis(value.parse().expect("--timeout-ms n"))
            }
            "--retries" => args.retries = value.parse().expect("--retries n"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let expected = Arc::new(std::fs::read(&args.expect).expect("reading --expect"));
    let options = FetchOptions {
        blksize: Some(args.blksize),
        windowsize: args.windowsize,
        tsize: true,
        timeout: args.timeout,
        retries: args.retries,
    };
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (expected, options, file, server) = (
            expected.clone(),
            options.clone(),
            args.file.clone(),
            args.server,
        );
        tasks.spawn(async move {
            let t = Instant::now();
            match client::fetch(server, &file, &options).await {
                Ok(got) if got.bytes == *expected => Ok((t.elapsed(), got.retransmissions)),
                Ok(got) => Err(format!("content differs: {} bytes", got.bytes.len())),
                Err(e) => Err(e.to_string()),
            }
        });
    }
    let (mut ok, mut failed, mut retransmissions) = (0usize, 0usize, 0u64);
    let mut latencies = Vec::new();
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok((latency, retrans)) => {
                ok += 1;
                retransmissions += u64::from(retrans);
                latencies.push(latency.as_secs_f64());
            }
            Err(e) => {
                failed += 1;
                *errors.entry(e).or_default() += 1;
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let errors: Vec<String> = errors.iter().map(|(e, n)| format!("{n}x {e}")).collect();
    println!(
        "{{\"clients\":{},\"ok\":{ok},\"failed\":{failed},\"wall_s\":{wall:.3},\"bytes\":{},\"retransmissions\":{retransmissions},\"p50_s\":{:.3},\"p99_s\":{:.3},\"errors\":{:?}}}",
        args.clients,
        ok * expected.len(),
        pct(0.5),
        pct(0.99),
        errors
    );
}
