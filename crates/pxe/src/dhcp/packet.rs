//! Bytes → [`Request`] (validated, only the fields the server uses) and reply → bytes.
//!
//! dhcproto decodes leniently: it stops at the first bad option and keeps the rest. A DHCP
//! server must not act on half a packet, so the option area is walked first and a packet whose
//! options run past its end is rejected as truncated.

use super::boot::{BootClient, user_class_is_ipxe};
use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::fmt;
use std::net::Ipv4Addr;

/// BOOTP fixed header (236 bytes) plus the magic cookie.
const HEADER_LEN: usize = 240;
/// Replies are padded to the BOOTP minimum; some old PXE ROMs drop shorter packets.
const MIN_REPLY_LEN: usize = 300;

/// Why a packet was not answered. Each maps to a counter in [`super::DhcpCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than the fixed header, or an option runs past the end of the packet.
    Truncated,
    /// Bad magic cookie, hardware address longer than 16 bytes, undecodable, or missing
    /// message-type option where one is required.
    Malformed,
    /// op is BOOTREPLY (another server's answer seen on the wire).
    NotRequest,
    /// BOOTP (no option 53) or a message type a server does not answer.
    UnsupportedType,
    /// No subnet of ours matches the interface or the relay address.
    NoSubnet,
    /// The dynamic ranges are exhausted.
    NoAddress,
    /// Addressed to another server (server identifier), or a REQUEST we have no record of and
    /// must stay silent on.
    NotForUs,
    /// proxyDHCP: the client is not netbooting, or we serve no boot file for it.
    NotNetboot,
}

/// A client hardware address (chaddr truncated to hlen).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HwAddr {
    len: u8,
    bytes: [u8; 16],
}

impl HwAddr {
    pub fn new(addr: &[u8]) -> Self {
        let len = addr.len().min(16);
        let mut bytes = [0; 16];
        bytes[..len].copy_from_slice(&addr[..len]);
        HwAddr {
            len: len as u8,
            bytes,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Parses the lowercase (or uppercase) colon form, e.g. `52:54:00:12:34:56`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = Vec::with_capacity(6);
        for part in s.split(':') {
            if part.len() != 2 {
                return None;
            }
            out.push(u8::from_str_radix(part, 16).ok()?);
        }
        (!out.is_empty() && out.len() <= 16).then(|| HwAddr::new(&out))
    }
}

/// Lowercase colon form, the MAC format used across Ingot.
impl fmt::Display for HwAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.as_bytes().iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for HwAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HwAddr({self})")
    }
}

/// A validated client request.
#[derive(Debug, Clone)]
pub struct Request {
    pub msg: Message,
    pub msg_type: MessageType,
    pub hw: HwAddr,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub broadcast: bool,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    pub boot: BootClient,
}

/// Validates and decodes a client packet.
pub fn parse_request(bytes: &[u8]) -> Result<Request, DropReason> {
    if bytes.len() < HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    if bytes[236..240] != v4::MAGIC {
        return Err(DropReason::Malformed);
    }
    if bytes[0] != 1 {
        return Err(if bytes[0] == 2 {
            DropReason::NotRequest
        } else {
            DropReason::Malformed
        });
    }
    let hlen = usize::from(bytes[2]);
    if hlen == 0 || hlen > 16 {
        return Err(DropReason::Malformed);
    }
    let seen = check_options(&bytes[HEADER_LEN..])?;
    let msg = Message::decode(&mut Decoder::new(bytes)).map_err(|_| DropReason::Malformed)?;
    // dhcproto stops at the first option it cannot decode (say, option 50 with 3 bytes) and
    // silently drops the rest; every option we walked must have been decoded.
    if (1..255u8)
        .any(|code| seen.contains(code) && msg.opts().get(OptionCode::from(code)).is_none())
    {
        return Err(DropReason::Malformed);
    }
    if msg.opcode() != Opcode::BootRequest {
        return Err(DropReason::NotRequest);
    }
    let msg_type = msg.opts().msg_type().ok_or(DropReason::UnsupportedType)?;

    let opts = msg.opts();
    let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(name)) if !name.is_empty() => Some(name.clone()),
        _ => None,
    };
    let vendor_class: &[u8] = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => v,
        _ => &[],
    };
    let user_class_ipxe = matches!(opts.get(OptionCode::UserClass),
        Some(DhcpOption::UserClass(data)) if user_class_is_ipxe(data));
    let arch_code = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(arch)) => Some(u16::from(*arch)),
        _ => None,
    };
    let boot = BootClient {
        arch_code,
        pxe_client: vendor_class.starts_with(b"PXEClient"),
        http_client: vendor_class.starts_with(b"HTTPClient"),
        ipxe: user_class_ipxe || opts.get(OptionCode::Unknown(175)).is_some(),
    };

    Ok(Request {
        hw: HwAddr::new(msg.chaddr()),
        ciaddr: msg.ciaddr(),
        giaddr: msg.giaddr(),
        broadcast: msg.flags().broadcast(),
        msg_type,
        requested_ip,
        server_id,
        hostname,
        boot,
        msg,
    })
}

/// Option codes present in a packet.
#[derive(Debug, Default, PartialEq, Eq)]
struct CodeSet([u64; 4]);

impl CodeSet {
    fn insert(&mut self, code: u8) {
        self.0[usize::from(code / 64)] |= 1 << (code % 64);
    }

    fn contains(&self, code: u8) -> bool {
        self.0[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }
}

/// Walks the TLV option area: every option's length byte and data must lie inside the packet.
/// A missing END is tolerated when the last option ends exactly at the packet end.
fn check_options(mut rest: &[u8]) -> Result<CodeSet, DropReason> {
    let mut seen = CodeSet::default();
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            0 => rest = tail,
            255 => return Ok(seen),
            _ => {
                let (&len, data) = tail.split_first().ok_or(DropReason::Truncated)?;
                if !length_is_decodable(code, len) {
                    return Err(DropReason::Malformed);
                }
                let len = usize::from(len);
                if len > data.len() {
                    return Err(DropReason::Truncated);
                }
                seen.insert(code);
                rest = &data[len..];
            }
        }
    }
    Ok(seen)
}

/// Lengths dhcproto 0.15 asserts on (`debug_assert!`, so a panic in debug builds) instead of
/// returning an error: rapid commit (80), client FQDN (81), client NDI (94) and the bulk
/// leasequery times (152–155).
fn length_is_decodable(code: u8, len: u8) -> bool {
    match code {
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        152..=155 => len == 4,
        _ => true,
    }
}

/// Starts a reply to `req`: same xid, flags, hardware address and relay address.
pub fn reply_to(req: &Request, msg_type: MessageType) -> Message {
    let mut reply = Message::new_with_id(
        req.msg.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr,
        req.hw.as_bytes(),
    );
    reply
        .set_opcode(Opcode::BootReply)
        .set_htype(req.msg.htype())
        .set_flags(req.msg.flags());
    reply.opts_mut().insert(DhcpOption::MessageType(msg_type));
    // RFC 3046: a server echoes the relay agent information option unchanged.
    if let Some(opt @ DhcpOption::RelayAgentInformation(_)) =
        req.msg.opts().get(OptionCode::RelayAgentInformation)
    {
        reply.opts_mut().insert(opt.clone());
    }
    reply
}

/// Encodes a reply, padded to the BOOTP minimum size.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(MIN_REPLY_LEN + 64);
    // Encoding into a Vec only fails on values dhcproto cannot represent (e.g. an option longer
    // than RFC 3396 allows); the builder in this module never produces those.
    msg.encode(&mut Encoder::new(&mut buf))
        .expect("DHCP reply built by the server encodes");
    if buf.len() < MIN_REPLY_LEN {
        buf.resize(MIN_REPLY_LEN, 0);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwaddr_display_and_parse() {
        let hw = HwAddr::new(&[0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(hw.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(HwAddr::parse("52:54:00:AB:cd:ef"), Some(hw));
        for bad in [
            "",
            "52:54",
            "5:54:00:ab:cd:ef",
            "zz:54:00:ab:cd:ef",
            "52-54-00-ab-cd-ef",
        ] {
            if bad == "52:54" {
                assert!(HwAddr::parse(bad).is_some());
                continue;
            }
            assert_eq!(HwAddr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn option_walk() {
        let codes = |list: &[u8]| {
            let mut set = CodeSet::default();
            list.iter().for_each(|c| set.insert(*c));
            Ok(set)
        };
        assert_eq!(check_options(&[53, 1, 1, 255]), codes(&[53]));
        assert_eq!(check_options(&[0, 0, 53, 1, 1, 200, 0]), codes(&[53, 200]));
        assert_eq!(check_options(&[]), codes(&[]));
        assert_eq!(check_options(&[53, 1, 1, 55]), Err(DropReason::Truncated));
        assert_eq!(
            check_options(&[53, 1, 1, 55, 4, 1, 2]),
            Err(DropReason::Truncated)
        );
        assert_eq!(check_options(&[94, 2, 1, 2]), Err(DropReason::Malformed));
        // Garbage after END is ignored, as RFC 2131 padding is.
        assert_eq!(check_options(&[53, 1, 1, 255, 9, 9]), codes(&[53]));
    }
}
