//! A small TFTP read client over the same packet core: used by tests, the lab and the boot-storm
//! load generator (`examples/tftp_storm.rs`). Supports blksize, tsize and windowsize.

use super::packet::{self, ErrorCode, Packet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub blksize: Option<u16>,
    pub windowsize: Option<u16>,
    pub tsize: bool,
    /// Wait for each packet before retransmitting our last one.
    pub timeout: Duration,
    pub retries: u32,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            blksize: None,
            windowsize: None,
            tsize: false,
            timeout: Duration::from_secs(1),
            retries: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("socket error")]
    Io(#[from] std::io::Error),
    #[error("no answer after {0} retries")]
    TimedOut(u32),
    #[error("server error {code}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// What a completed fetch returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// The options the server acknowledged (empty without OACK).
    pub oack: Vec<(String, String)>,
    pub retransmissions: u32,
}

pub async fn fetch(
    server: SocketAddr,
    filename: &str,
    opts: &FetchOptions,
) -> Result<Fetched, FetchError> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    let mut options = Vec::new();
    if let Some(b) = opts.blksize {
        options.push(("blksize".to_string(), b.to_string()));
    }
    if opts.tsize {
        options.push(("tsize".to_string(), "0".to_string()));
    }
    if let Some(w) = opts.windowsize {
        options.push(("windowsize".to_string(), w.to_string()));
    }
    let rrq = packet::encode_rrq(filename, &options);
    socket.send_to(&rrq, server).await?;

    let mut peer: Option<SocketAddr> = None;
    let mut blksize = 512usize;
    let mut windowsize = 1u16;
    let mut oack = Vec::new();
    let mut bytes = Vec::new();
    let mut expected: u16 = 1;
    let mut in_window = 0u16;
    let mut last_sent = rrq;
    let mut retries = 0;
    let mut retransmissions = 0;
    let mut buf = vec![0u8; 65536];
    loop {
        let received = tokio::time::timeout(opts.timeout, socket.recv_from(&mut buf)).await;
        let (len, from) = match received {
            Ok(r) => r?,
            Err(_) => {
                retries += 1;
                retransmissions += 1;
                if retries > opts.retries {
                    return Err(FetchError::TimedOut(opts.retries));
                }
                socket.send_to(&last_sent, peer.unwrap_or(server)).await?;
                in_window = 0;
                continue;
            }
        };
        match peer {
            None if from.ip() == server.ip() => peer = Some(from),
            Some(p) if p == from => {}
            _ => {
                let reply =
                    packet::encode_error(ErrorCode::UnknownTransferId, "unknown transfer id");
                socket.send_to(&reply, from).await?;
                continue;
            }
        }
        let from = peer.unwrap_or(from);
        let parsed = packet::parse(&buf[..len]).map_err(|e| FetchError::Protocol(e.to_string()))?;
        match parsed {
            Packet::Oack { options } if bytes.is_empty() && expected == 1 => {
                for (k, v) in &options {
                    match k.as_str() {
                        "blksize" => {
                            blksize = v
                                .parse()
                                .map_err(|_| FetchError::Protocol("bad blksize".into()))?
                        }
                        "windowsize" => {
                            windowsize = v
                                .parse()
                                .map_err(|_| FetchError::Protocol("bad windowsize".into()))?
                        }
                        _ => {}
                    }
                }
                oack = options;
                last_sent = packet::encode_ack(0).to_vec();
                socket.send_to(&last_sent, from).await?;
                retries = 0;
            }
            Packet::Data { block, payload } => {
                if block != expected {
                    // Out of order or duplicate: acknowledge what we have (RFC 7440 §4),
                    // once per window so duplicates don't multiply.
                    if in_window != 0 || block != expected.wrapping_sub(1) {
                        last_sent = packet::encode_ack(expected.wrapping_sub(1)).to_vec();
                        socket.send_to(&last_sent, from).await?;
                        in_window = 0;
                    }
                    continue;
                }
                if payload.len() > blksize {
                    return Err(FetchError::Protocol(format!(
                        "block {block} longer than blksize"
                    )));
                }
                bytes.extend_from_slice(payload);
                retries = 0;
                in_window += 1;
                let last = payload.len() < blksize;
                if last || in_window >= windowsize {
                    last_sent = packet::encode_ack(block).to_vec();
                    socket.send_to(&last_sent, from).await?;
                    in_window = 0;
                }
                expected = expected.wrapping_add(1);
                if last {
                    return Ok(Fetched {
                        bytes,
                        oack,
                        retransmissions,
                    });
                }
            }
            Packet::Error { code, message } => return Err(FetchError::Server { code, message }),
            other => return Err(FetchError::Protocol(format!("unexpected {other:?}"))),
        }
    }
}
