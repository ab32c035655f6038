//! The read-transfer state machine: option negotiation (RFC 2347/2348/2349/7440), block
//! windows, acknowledgements, retransmission and bounded retries. Sans-IO: the caller feeds
//! parsed packets and timeouts in and performs the returned [`Action`]s.

use super::packet::{Packet, Request};
use std::ops::RangeInclusive;
use std::time::Duration;

/// RFC 1350 block size, used when the client asks for no `blksize`.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348 bounds.
pub const MIN_BLKSIZE: u16 = 8;
pub const MAX_BLKSIZE: u16 = 65464;

/// Server-side limits applied while negotiating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted. 1468 fits a 1500-byte Ethernet MTU (IPv4 + UDP + TFTP headers).
    pub max_blksize: u16,
    /// Largest RFC 7440 window granted.
    pub max_windowsize: u16,
    /// Retransmission timeout when the client does not ask for one.
    pub default_timeout: Duration,
    /// Retransmissions of the same window before the transfer is abandoned.
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: 1468,
            max_windowsize: 64,
            default_timeout: Duration::from_secs(1),
            max_retries: 5,
        }
    }
}

/// The transfer parameters agreed with one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    /// Options to acknowledge in an OACK, in request order; empty means "no OACK, start with DATA 1".
    pub oack: Vec<(String, String)>,
}

/// Answers the request's options (unknown or malformed options are ignored, as RFC 2347 allows).
pub fn negotiate(req: &Request, file_len: u64, limits: &Limits) -> Negotiated {
    let mut out = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: limits.default_timeout,
        oack: Vec::new(),
    };
    for (name, value) in &req.options {
        let Ok(n) = value.trim().parse::<u64>() else {
            continue;
        };
        match name.as_str() {
            "blksize" if n >= u64::from(MIN_BLKSIZE) => {
                out.blksize = n.min(u64::from(limits.max_blksize.min(MAX_BLKSIZE))) as u16;
                out.oack.push((name.clone(), out.blksize.to_string()));
            }
            // The client sends 0 and learns the size; a non-zero value is only meaningful for writes.
            "tsize" => out.oack.push((name.clone(), file_len.to_string())),
            "timeout" if (1..=255).contains(&n) => {
                out.timeout = Duration::from_secs(n);
                out.oack.push((name.clone(), n.to_string()));
            }
            "windowsize" if (1..=65535).contains(&n) => {
                out.windowsize = n.min(u64::from(limits.max_windowsize.max(1))) as u16;
                out.oack.push((name.clone(), out.windowsize.to_string()));
            }
            _ => {}
        }
    }
    out
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send (or resend) the OACK.
    SendOack,
    /// Send DATA for these blocks (1-based, 64-bit so transfers may exceed 65535 blocks).
    SendBlocks(RangeInclusive<u64>),
    /// Nothing to send; keep waiting.
    Wait,
    /// The client acknowledged the last block.
    Finished,
    /// Retries exhausted.
    GaveUp,
    /// The client aborted with an ERROR packet.
    ClientAborted(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitOackAck,
    Transfer,
    Done,
}

#[derive(Debug)]
pub struct ReadTransfer {
    blksize: u64,
    windowsize: u64,
    file_len: u64,
    total_blocks: u64,
    /// Highest block the client acknowledged.
    acked: u64,
    /// Highest block sent so far.
    sent: u64,
    retries: u32,
    max_retries: u32,
    phase: Phase,
}

impl ReadTransfer {
    pub fn new(file_len: u64, negotiated: &Negotiated, max_retries: u32) -> ReadTransfer {
        let blksize = u64::from(negotiated.blksize);
        ReadTransfer {
            blksize,
            windowsize: u64::from(negotiated.windowsize),
            file_len,
            // The last block is always short, so an exact multiple ends with an empty block.
            total_blocks: file_len / blksize + 1,
            acked: 0,
            sent: 0,
            retries: 0,
            max_retries,
            phase: if negotiated.oack.is_empty() {
                Phase::Transfer
            } else {
                Phase::AwaitOackAck
            },
        }
    }

    /// The first thing to send.
    pub fn start(&mut self) -> Action {
        match self.phase {
            Phase::AwaitOackAck => Action::SendOack,
            _ => self.next_window(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Byte range of the file carried by `block`.
    pub fn block_range(&self, block: u64) -> std::ops::Range<usize> {
        let start = (block - 1) * self.blksize;
        let end = (start + self.blksize).min(self.file_len);
        start as usize..end as usize
    }

    /// The 16-bit block number on the wire; it rolls over to 0 after 65535 as iPXE, tftpd-hpa
    /// and most clients expect.
    pub fn wire_block(block: u64) -> u16 {
        (block & 0xffff) as u16
    }

    fn next_window(&mut self) -> Action {
        let first = self.acked + 1;
        let last = (self.acked + self.windowsize).min(self.total_blocks);
        self.sent = self.sent.max(last);
        Action::SendBlocks(first..=last)
    }

    pub fn on_packet(&mut self, packet: &Packet<'_>) -> Action {
        if self.phase == Phase::Done {
            return Action::Wait;
        }
        match packet {
            Packet::Ack { block } => self.on_ack(*block),
            Packet::Error { message, .. } => {
                self.phase = Phase::Done;
                Action::ClientAborted(message.clone())
            }
            // Anything else on a transfer port is noise (e.g. a duplicated RRQ); ignoring it
            // lets the retransmission timer handle recovery.
            _ => Action::Wait,
        }
    }

    fn on_ack(&mut self, wire: u16) -> Action {
        if self.phase == Phase::AwaitOackAck {
            if wire != 0 {
                return Action::Wait;
            }
            self.phase = Phase::Transfer;
            self.retries = 0;
            return self.next_window();
        }
        // Map the 16-bit number onto an outstanding block; stale or duplicate ACKs are
        // ignored, which prevents the Sorcerer's Apprentice syndrome.
        let Some(block) = (self.acked + 1..=self.sent)
            .rev()
            .find(|b| Self::wire_block(*b) == wire)
        else {
            return Action::Wait;
        };
        self.acked = block;
        self.retries = 0;
        if self.acked == self.total_blocks {
            self.phase = Phase::Done;
            return Action::Finished;
        }
        // RFC 7440: an ACK inside the window means the client lost what followed it, so the
        // next window starts right after the acknowledged block either way.
        self.next_window()
    }

    /// The retransmission timer fired with no progress.
    pub fn on_timeout(&mut self) -> Action {
        if self.phase == Phase::Done {
            return Action::Wait;
        }
        self.retries += 1;
        if self.retries > self.max_retries {
            self.phase = Phase::Done;
            return Action::GaveUp;
        }
        match self.phase {
            Phase::AwaitOackAck => Action::SendOack,
            _ => Action::SendBlocks(self.acked + 1..=self.sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::packet::ErrorCode;

    fn req(options: &[(&str, &str)]) -> Request {
        Request {
            filename: "f".into(),
            mode: "octet".into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn check_negotiation(
        options: &[(&str, &str)],
        file_len: u64,
        blksize: u16,
        window: u16,
        oack: &[(&str, &str)],
    ) {
        let got = negotiate(&req(options), file_len, &Limits::default());
        assert_eq!(got.blksize, blksize, "{options:?}");
        assert_eq!(got.windowsize, window, "{options:?}");
        let want: Vec<(String, String)> = oack
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got.oack, want, "{options:?}");
    }

    #[test]
    fn negotiation_table() {
        check_negotiation(&[], 100, 512, 1, &[]);
        check_negotiation(
            &[("blksize", "1432"), ("tsize", "0")],
            999,
            1432,
            1,
            &[("blksize", "1432"), ("tsize", "999")],
        );
        check_negotiation(&[("blksize", "65464")], 1, 1468, 1, &[("blksize", "1468")]);
        check_negotiation(&[("blksize", "4")], 1, 512, 1, &[]);
        check_negotiation(&[("blksize", "x")], 1, 512, 1, &[]);
        check_negotiation(
            &[("windowsize", "1000")],
            1,
            512,
            64,
            &[("windowsize", "64")],
        );
        check_negotiation(&[("windowsize", "0")], 1, 512, 1, &[]);
        check_negotiation(
            &[("timeout", "3"), ("multicast", "")],
            1,
            512,
            1,
            &[("timeout", "3")],
        );
        check_negotiation(&[("timeout", "0")], 1, 512, 1, &[]);
    }

    fn ack(block: u16) -> Packet<'static> {
        Packet::Ack { block }
    }

    fn transfer(file_len: u64, blksize: u16, windowsize: u16, oack: bool) -> ReadTransfer {
        let negotiated = Negotiated {
            blksize,
            windowsize,
            timeout: Duration::from_secs(1),
            oack: if oack {
                vec![("blksize".into(), blksize.to_string())]
            } else {
                vec![]
            },
        };
        ReadTransfer::new(file_len, &negotiated, 2)
    }

    #[test]
    fn lockstep_without_options() {
        let mut t = transfer(1000, 512, 1, false);
        assert_eq!(t.start(), Action::SendBlocks(1..=1));
        assert_eq!(t.block_range(1), 0..512);
        assert_eq!(t.on_packet(&ack(1)), Action::SendBlocks(2..=2));
        assert_eq!(t.block_range(2), 512..1000);
        // Duplicate ACK: no resend (Sorcerer's Apprentice).
        assert_eq!(t.on_packet(&ack(1)), Action::Wait);
        assert_eq!(t.on_packet(&ack(2)), Action::Finished);
        assert!(t.is_done());
    }

    #[test]
    fn exact_multiple_ends_with_empty_block() {
        let mut t = transfer(1024, 512, 1, true);
        assert_eq!(t.start(), Action::SendOack);
        assert_eq!(
            t.on_packet(&ack(1)),
            Action::Wait,
            "only ACK 0 answers an OACK"
        );
        assert_eq!(t.on_packet(&ack(0)), Action::SendBlocks(1..=1));
        assert_eq!(t.on_packet(&ack(1)), Action::SendBlocks(2..=2));
        assert_eq!(t.on_packet(&ack(2)), Action::SendBlocks(3..=3));
        assert_eq!(t.block_range(3), 1024..1024);
        assert_eq!(t.on_packet(&ack(3)), Action::Finished);
    }

    #[test]
    fn windows_and_partial_acks() {
        let mut t = transfer(10 * 100 + 5, 100, 4, true);
        assert_eq!(t.on_packet(&ack(0)), Action::SendBlocks(1..=4));
        // Client lost block 3: it acknowledges 2, we resend from 3.
        assert_eq!(t.on_packet(&ack(2)), Action::SendBlocks(3..=6));
        assert_eq!(t.on_packet(&ack(6)), Action::SendBlocks(7..=10));
        assert_eq!(t.on_packet(&ack(10)), Action::SendBlocks(11..=11));
        assert_eq!(t.on_packet(&ack(11)), Action::Finished);
    }

    #[test]
    fn timeouts_resend_then_give_up() {
        let mut t = transfer(5000, 512, 2, false);
        assert_eq!(t.start(), Action::SendBlocks(1..=2));
        assert_eq!(t.on_timeout(), Action::SendBlocks(1..=2));
        assert_eq!(t.on_packet(&ack(2)), Action::SendBlocks(3..=4));
        // Progress resets the retry budget.
        assert_eq!(t.on_timeout(), Action::SendBlocks(3..=4));
        assert_eq!(t.on_timeout(), Action::SendBlocks(3..=4));
        assert_eq!(t.on_timeout(), Action::GaveUp);
        assert!(t.is_done());
    }

    #[test]
    fn oack_is_resent_on_timeout() {
        let mut t = transfer(10, 512, 1, true);
        assert_eq!(t.start(), Action::SendOack);
        assert_eq!(t.on_timeout(), Action::SendOack);
    }

    #[test]
    fn block_numbers_roll_over() {
        let blocks = 70_000u64;
        let mut t = transfer(blocks * 8 + 3, 8, 1, false);
        assert_eq!(t.start(), Action::SendBlocks(1..=1));
        for b in 1..=blocks {
            assert_eq!(
                t.on_packet(&ack(ReadTransfer::wire_block(b))),
                Action::SendBlocks(b + 1..=b + 1)
            );
        }
        assert_eq!(ReadTransfer::wire_block(65536), 0);
        assert_eq!(
            t.on_packet(&ack(ReadTransfer::wire_block(blocks + 1))),
            Action::Finished
        );
    }

    #[test]
    fn client_error_aborts() {
        let mut t = transfer(10, 512, 1, true);
        t.start();
        let err = Packet::Error {
            code: ErrorCode::OptionRefused,
            message: "tsize only".into(),
        };
        assert_eq!(
            t.on_packet(&err),
            Action::ClientAborted("tsize only".into())
        );
        assert_eq!(t.on_timeout(), Action::Wait);
    }
}
