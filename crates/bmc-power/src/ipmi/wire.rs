//! Byte layouts of IPMI over LAN (IPMI 2.0 spec §13): the RMCP header, the IPMI 1.5 session
//! wrapper, the IPMI 2.0 / RMCP+ session wrapper and the IPMI LAN message with its checksums.
//! Everything here is pure: bytes in, typed values out, or the reverse. Cryptography is applied by
//! the session layer, which knows the keys.

/// Why bytes could not be decoded. Decoders never panic on short or hostile input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what} is truncated: need {needed} bytes, got {got}")]
    Truncated {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("RMCP version {0:#04x} is not 0x06")]
    RmcpVersion(u8),
    #[error("RMCP class {0:#04x} is not IPMI (0x07)")]
    NotIpmiClass(u8),
    #[error("session auth type {0:#04x} is not the one expected here")]
    AuthType(u8),
    #[error("{which} checksum of the IPMI message is wrong")]
    Checksum { which: &'static str },
    #[error("payload type {0:#04x} is not supported")]
    PayloadType(u8),
    #[error("integrity trailer is malformed: {0}")]
    Trailer(&'static str),
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

pub(crate) fn need(what: &'static str, bytes: &[u8], needed: usize) -> Result<(), DecodeError> {
    if bytes.len() < needed {
        return Err(DecodeError::Truncated {
            what,
            needed,
            got: bytes.len(),
        });
    }
    Ok(())
}

pub(crate) fn u32_le(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

// ---------------------------------------------------------------------------------------------
// RMCP (ASF/DMTF) header

pub const RMCP_VERSION_1: u8 = 0x06;
/// IPMI messages never ask for an RMCP ACK.
pub const RMCP_SEQUENCE_NO_ACK: u8 = 0xFF;
pub const RMCP_CLASS_IPMI: u8 = 0x07;
pub const RMCP_HEADER: [u8; 4] = [RMCP_VERSION_1, 0x00, RMCP_SEQUENCE_NO_ACK, RMCP_CLASS_IPMI];

/// Strips and checks the RMCP header of an IPMI packet.
pub fn strip_rmcp(packet: &[u8]) -> Result<&[u8], DecodeError> {
    need("RMCP header", packet, 4)?;
    if packet[0] != RMCP_VERSION_1 {
        return Err(DecodeError::RmcpVersion(packet[0]));
    }
    // Bit 7 of the class byte marks an RMCP ACK; the class itself is in the low bits.
    if packet[3] & 0x1F != RMCP_CLASS_IPMI || packet[3] & 0x80 != 0 {
        return Err(DecodeError::NotIpmiClass(packet[3]));
    }
    Ok(&packet[4..])
}

// ---------------------------------------------------------------------------------------------
// IPMI 1.5 session wrapper

/// Authentication type byte of the session header (IPMI 1.5 §13.6 / 2.0 table 13-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AuthType {
    None = 0x00,
    Md2 = 0x01,
    Md5 = 0x02,
    StraightPassword = 0x04,
    Oem = 0x05,
    /// Marks an IPMI 2.0 / RMCP+ session header.
    RmcpPlus = 0x06,
}

impl AuthType {
    pub fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        Ok(match byte & 0x0F {
            0x00 => AuthType::None,
            0x01 => AuthType::Md2,
            0x02 => AuthType::Md5,
            0x04 => AuthType::StraightPassword,
            0x05 => AuthType::Oem,
            0x06 => AuthType::RmcpPlus,
            _ => return Err(DecodeError::AuthType(byte)),
        })
    }
}

/// An IPMI 1.5 session header. `auth_code` is present exactly when `auth_type` is not `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V15Header {
    pub auth_type: AuthType,
    pub sequence: u32,
    pub session_id: u32,
    pub auth_code: Option<[u8; 16]>,
}

/// Encodes RMCP header + IPMI 1.5 session header + message.
pub fn encode_v15(header: &V15Header, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 10 + 16 + message.len());
    out.extend_from_slice(&RMCP_HEADER);
    out.push(header.auth_type as u8);
    out.extend_from_slice(&header.sequence.to_le_bytes());
    out.extend_from_slice(&header.session_id.to_le_bytes());
    if let Some(code) = &header.auth_code {
        out.extend_from_slice(code);
    }
    // IPMI messages on LAN are always shorter than 256 bytes; the length byte cannot overflow
    // for anything this crate builds.
    out.push(message.len() as u8);
    out.extend_from_slice(message);
    out
}

/// A decoded IPMI 1.5 packet, borrowing the message bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V15Packet<'a> {
    pub header: V15Header,
    pub message: &'a [u8],
}

pub fn decode_v15(packet: &[u8]) -> Result<V15Packet<'_>, DecodeError> {
    let body = strip_rmcp(packet)?;
    need("IPMI 1.5 session header", body, 10)?;
    let auth_type = AuthType::from_byte(body[0])?;
    if auth_type == AuthType::RmcpPlus {
        return Err(DecodeError::AuthType(body[0]));
    }
    let sequence = u32_le(&body[1..5]);
    let session_id = u32_le(&body[5..9]);
    let (auth_code, rest) = if auth_type == AuthType::None {
        (None, &body[9..])
    } else {
        need("IPMI 1.5 session header with auth code", body, 26)?;
        let mut code = [0u8; 16];
        code.copy_from_slice(&body[9..25]);
        (Some(code), &body[25..])
    };
    let length = rest[0] as usize;
    need("IPMI 1.5 message", &rest[1..], length)?;
    Ok(V15Packet {
        header: V15Header {
            auth_type,
            sequence,
            session_id,
            auth_code,
        },
        message: &rest[1..1 + length],
    })
}

// ---------------------------------------------------------------------------------------------
// IPMI 2.0 / RMCP+ session wrapper

/// RMCP+ payload types (IPMI 2.0 table 13-16) this crate speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PayloadType {
    Ipmi = 0x00,
    OpenSessionRequest = 0x10,
    OpenSessionResponse = 0x11,
    Rakp1 = 0x12,
    Rakp2 = 0x13,
    Rakp3 = 0x14,
    Rakp4 = 0x15,
}

impl PayloadType {
    pub fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        Ok(match byte & 0x3F {
            0x00 => PayloadType::Ipmi,
            0x10 => PayloadType::OpenSessionRequest,
            0x11 => PayloadType::OpenSessionResponse,
            0x12 => PayloadType::Rakp1,
            0x13 => PayloadType::Rakp2,
            0x14 => PayloadType::Rakp3,
            0x15 => PayloadType::Rakp4,
            other => return Err(DecodeError::PayloadType(other)),
        })
    }
}

const PAYLOAD_ENCRYPTED: u8 = 0x80;
const PAYLOAD_AUTHENTICATED: u8 = 0x40;
/// "Next header" byte of the session trailer: always 0x07 (RMCP class IPMI).
pub const NEXT_HEADER: u8 = 0x07;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V20Header {
    pub payload_type: PayloadType,
    pub encrypted: bool,
    pub authenticated: bool,
    pub session_id: u32,
    pub sequence: u32,
}

/// Encodes RMCP header + RMCP+ session header + payload. The session layer appends the integrity
/// trailer with [`append_integrity_trailer`] when the packet is authenticated.
pub fn encode_v20(header: &V20Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 12 + payload.len() + 32);
    out.extend_from_slice(&RMCP_HEADER);
    out.push(AuthType::RmcpPlus as u8);
    let mut payload_byte = header.payload_type as u8;
    if header.encrypted {
        payload_byte |= PAYLOAD_ENCRYPTED;
    }
    if header.authenticated {
        payload_byte |= PAYLOAD_AUTHENTICATED;
    }
    out.push(payload_byte);
    out.extend_from_slice(&header.session_id.to_le_bytes());
    out.extend_from_slice(&header.sequence.to_le_bytes());
    // RMCP+ payloads on LAN are far below 64 KiB.
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Appends integrity pad, pad length and next header to an encoded packet and returns the range
/// (from the session header's auth type byte to the next header byte) the AuthCode covers.
/// The caller computes the AuthCode over that range and appends it.
pub fn append_integrity_trailer(packet: &mut Vec<u8>) -> std::ops::Range<usize> {
    let start = RMCP_HEADER.len();
    // The pad makes (auth type .. next header) a multiple of 4 bytes.
    let unpadded = packet.len() - start + 2;
    let pad = (4 - unpadded % 4) % 4;
    packet.extend(std::iter::repeat_n(0xFF, pad));
    packet.push(pad as u8);
    packet.push(NEXT_HEADER);
    start..packet.len()
}

/// A decoded RMCP+ packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V20Packet<'a> {
    pub header: V20Header,
    pub payload: &'a [u8],
    /// The bytes the AuthCode covers (auth type .. next header), when authenticated.
    pub signed: &'a [u8],
    /// The AuthCode, when authenticated.
    pub auth_code: &'a [u8],
}

/// Decodes an RMCP+ packet. `auth_code_len` is the integrity algorithm's AuthCode length, used
/// only when the packet says it is authenticated.
pub fn decode_v20(packet: &[u8], auth_code_len: usize) -> Result<V20Packet<'_>, DecodeError> {
    let body = strip_rmcp(packet)?;
    need("RMCP+ session header", body, 12)?;
    if body[0] != AuthType::RmcpPlus as u8 {
        return Err(DecodeError::AuthType(body[0]));
    }
    let payload_byte = body[1];
    let payload_type = PayloadType::from_byte(payload_byte)?;
    let header = V20Header {
        payload_type,
        encrypted: payload_byte & PAYLOAD_ENCRYPTED != 0,
        authenticated: payload_byte & PAYLOAD_AUTHENTICATED != 0,
        session_id: u32_le(&body[2..6]),
        sequence: u32_le(&body[6..10]),
    };
    let length = u16::from_le_bytes([body[10], body[11]]) as usize;
    need("RMCP+ payload", &body[12..], length)?;
    let payload = &body[12..12 + length];
    let after = &body[12 + length..];
    if !header.authenticated {
        return Ok(V20Packet {
            header,
            payload,
            signed: &[],
            auth_code: &[],
        });
    }
    if auth_code_len == 0 {
        return Err(DecodeError::Trailer(
            "authenticated packet but no integrity algorithm",
        ));
    }
    need("RMCP+ integrity trailer", after, 2 + auth_code_len)?;
    let trailer_fixed = after.len() - auth_code_len;
    let next_header = after[trailer_fixed - 1];
    let pad_length = after[trailer_fixed - 2] as usize;
    if next_header != NEXT_HEADER {
        return Err(DecodeError::Trailer("next header is not 0x07"));
    }
    if pad_length != trailer_fixed - 2 || pad_length > 3 {
        return Err(DecodeError::Trailer(
            "integrity pad length does not match the packet",
        ));
    }
    if after[..pad_length].iter().any(|&b| b != 0xFF) {
        return Err(DecodeError::Trailer("integrity pad bytes are not 0xFF"));
    }
    let signed_len = 12 + length + trailer_fixed;
    if !signed_len.is_multiple_of(4) {
        return Err(DecodeError::Trailer(
            "integrity data is not a multiple of 4 bytes",
        ));
    }
    Ok(V20Packet {
        header,
        payload,
        signed: &body[..signed_len],
        auth_code: &after[trailer_fixed..],
    })
}

// ---------------------------------------------------------------------------------------------
// IPMI LAN message (IPMI 2.0 §13.8)

/// The BMC's slave address.
pub const BMC_SLAVE_ADDRESS: u8 = 0x20;
/// "Remote console software ID" used as requester address.
pub const REMOTE_CONSOLE_SWID: u8 = 0x81;

/// 8-bit two's-complement checksum: bytes plus checksum sum to zero.
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// Encodes a request message to the BMC (LUN 0). `rq_seq` is 6 bits.
pub fn encode_request_message(netfn: u8, cmd: u8, rq_seq: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + data.len());
    out.push(BMC_SLAVE_ADDRESS);
    out.push(netfn << 2);
    out.push(checksum(&out[0..2]));
    out.push(REMOTE_CONSOLE_SWID);
    out.push((rq_seq & 0x3F) << 2);
    out.push(cmd);
    out.extend_from_slice(data);
    out.push(checksum(&out[3..]));
    out
}

/// A decoded response message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseMessage {
    /// The response NetFn (request NetFn + 1).
    pub netfn: u8,
    pub cmd: u8,
    pub rq_seq: u8,
    pub completion_code: u8,
    pub data: Vec<u8>,
}

pub fn decode_response_message(bytes: &[u8]) -> Result<ResponseMessage, DecodeError> {
    // rqAddr, netFn/LUN, chk1, rsAddr, rqSeq/LUN, cmd, completion code, chk2.
    need("IPMI response message", bytes, 8)?;
    if checksum(&bytes[0..2]) != bytes[2] {
        return Err(DecodeError::Checksum { which: "header" });
    }
    let last = bytes.len() - 1;
    if checksum(&bytes[3..last]) != bytes[last] {
        return Err(DecodeError::Checksum { which: "data" });
    }
    Ok(ResponseMessage {
        netfn: bytes[1] >> 2,
        cmd: bytes[5],
        rq_seq: bytes[4] >> 2,
        completion_code: bytes[6],
        data: bytes[7..last].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_makes_sum_zero() {
        for bytes in [
            &[0x20u8, 0x18][..],
            &[0x81, 0x04, 0x38, 0x8E, 0x04],
            &[],
            &[0xFF],
        ] {
            let c = checksum(bytes);
            let total = bytes.iter().fold(c, |s, b| s.wrapping_add(*b));
            assert_eq!(total, 0);
        }
    }

    #[test]
    fn request_message_matches_hand_encoded_get_channel_auth_caps() {
        // Get Channel Authentication Capabilities (App 0x38), channel 0x8E, admin, rqSeq 0.
        let bytes = encode_request_message(0x06, 0x38, 0, &[0x8E, 0x04]);
        assert_eq!(
            bytes,
            [0x20, 0x18, 0xC8, 0x81, 0x00, 0x38, 0x8E, 0x04, 0xB5]
        );
    }

    #[test]
    fn response_message_round_trip_and_checksum_errors() {
        // A Get Chassis Status response: rqSeq 5, power on.
        let mut bytes = vec![
            0x81,
            0x01 << 2,
            0,
            0x20,
            5 << 2,
            0x01,
            0x00,
            0x01,
            0x10,
            0x40,
        ];
        bytes[2] = checksum(&bytes[0..2]);
        let sum = checksum(&bytes[3..]);
        bytes.push(sum);
        let decoded = decode_response_message(&bytes).unwrap();
        assert_eq!(
            decoded,
            ResponseMessage {
                netfn: 0x01,
                cmd: 0x01,
                rq_seq: 5,
                completion_code: 0,
                data: vec![0x01, 0x10, 0x40],
            }
        );
        let mut bad_header = bytes.clone();
        bad_header[2] ^= 1;
        assert_eq!(
            decode_response_message(&bad_header),
            Err(DecodeError::Checksum { which: "header" })
        );
        let mut bad_data = bytes.clone();
        bad_data[7] ^= 1;
        assert_eq!(
            decode_response_message(&bad_data),
            Err(DecodeError::Checksum { which: "data" })
        );
        for cut in 0..8 {
            assert!(matches!(
                decode_response_message(&bytes[..cut]),
                Err(DecodeError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn v15_round_trip_with_and_without_auth_code() {
        let message = encode_request_message(0x06, 0x38, 0, &[0x0E, 0x04]);
        let plain = V15Header {
            auth_type: AuthType::None,
            sequence: 0,
            session_id: 0,
            auth_code: None,
        };
        let bytes = encode_v15(&plain, &message);
        assert_eq!(&bytes[..4], &[0x06, 0x00, 0xFF, 0x07]);
        assert_eq!(
            &bytes[4..14],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, message.len() as u8]
        );
        let decoded = decode_v15(&bytes).unwrap();
        assert_eq!(decoded.header, plain);
        assert_eq!(decoded.message, &message[..]);

        let signed = V15Header {
            auth_type: AuthType::Md5,
            sequence: 0x0102_0304,
            session_id: 0xA0B0_C0D0,
            auth_code: Some([0x5A; 16]),
        };
        let bytes = encode_v15(&signed, &message);
        let decoded = decode_v15(&bytes).unwrap();
        assert_eq!(decoded.header, signed);
        assert_eq!(decoded.message, &message[..]);
        for cut in 0..bytes.len() {
            assert!(
                decode_v15(&bytes[..cut]).is_err(),
                "cut at {cut} must be rejected"
            );
        }
    }

    #[test]
    fn rmcp_header_is_checked() {
        assert_eq!(
            strip_rmcp(&[0x05, 0, 0xFF, 7]),
            Err(DecodeError::RmcpVersion(5))
        );
        // ASF class (presence pong) is not IPMI.
        assert_eq!(
            strip_rmcp(&[0x06, 0, 0xFF, 6]),
            Err(DecodeError::NotIpmiClass(6))
        );
        assert!(matches!(
            strip_rmcp(&[0x06]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn v20_round_trip_with_integrity_trailer() {
        let header = V20Header {
            payload_type: PayloadType::Ipmi,
            encrypted: true,
            authenticated: true,
            session_id: 0x1122_3344,
            sequence: 7,
        };
        for payload_len in 0..9 {
            let payload = vec![0xAB; payload_len];
            let mut bytes = encode_v20(&header, &payload);
            let signed = append_integrity_trailer(&mut bytes);
            assert_eq!(signed.len() % 4, 0);
            bytes.extend_from_slice(&[0xCC; 12]);
            let decoded = decode_v20(&bytes, 12).unwrap();
            assert_eq!(decoded.header, header);
            assert_eq!(decoded.payload, &payload[..]);
            assert_eq!(decoded.signed, &bytes[signed]);
            assert_eq!(decoded.auth_code, &[0xCC; 12]);
            for cut in 0..bytes.len() {
                assert!(
                    decode_v20(&bytes[..cut], 12).is_err(),
                    "cut at {cut} must be rejected"
                );
            }
        }
    }

    #[test]
    fn v20_exact_bytes_of_an_unauthenticated_open_session_header() {
        let header = V20Header {
            payload_type: PayloadType::OpenSessionRequest,
            encrypted: false,
            authenticated: false,
            session_id: 0,
            sequence: 0,
        };
        let bytes = encode_v20(&header, &[1, 2, 3]);
        assert_eq!(
            bytes,
            [
                0x06, 0x00, 0xFF, 0x07, 0x06, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x03, 0x00, 1, 2, 3
            ]
        );
        let decoded = decode_v20(&bytes, 0).unwrap();
        assert_eq!(decoded.header, header);
        assert_eq!(decoded.payload, &[1, 2, 3]);
    }

    #[test]
    fn v20_rejects_bad_trailers_and_payload_types() {
        let header = V20Header {
            payload_type: PayloadType::Ipmi,
            encrypted: false,
            authenticated: true,
            session_id: 1,
            sequence: 1,
        };
        let mut bytes = encode_v20(&header, &[1, 2, 3, 4, 5]);
        append_integrity_trailer(&mut bytes);
        bytes.extend_from_slice(&[0; 12]);
        let mut wrong_next = bytes.clone();
        let idx = wrong_next.len() - 13;
        wrong_next[idx] = 0x06;
        assert!(matches!(
            decode_v20(&wrong_next, 12),
            Err(DecodeError::Trailer(_))
        ));
        let mut wrong_pad = bytes.clone();
        let idx = wrong_pad.len() - 15;
        wrong_pad[idx] = 0x00;
        assert!(matches!(
            decode_v20(&wrong_pad, 12),
            Err(DecodeError::Trailer(_))
        ));
        let mut oem = bytes.clone();
        oem[5] = 0x02;
        assert_eq!(decode_v20(&oem, 12), Err(DecodeError::PayloadType(0x02)));
        // Claimed payload length past the end.
        let mut long = bytes.clone();
        long[14] = 0xFF;
        assert!(matches!(
            decode_v20(&long, 12),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
