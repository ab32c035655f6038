//! TFTP wire format (RFC 1350 with the option extension of RFC 2347): parse from bytes,
//! encode into a caller's buffer. No I/O.

use std::fmt;

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// Header bytes in front of a DATA payload (opcode + block number).
pub const DATA_HEADER_LEN: usize = 4;

/// RFC 1350 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTransferId = 5,
    FileExists = 6,
    NoSuchUser = 7,
    /// RFC 2347: the server refuses the requested options.
    OptionRefused = 8,
}

impl ErrorCode {
    fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTransferId,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionRefused,
            _ => ErrorCode::NotDefined,
        }
    }
}

/// A read or write request. Option names are lowercased; values are kept as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: String,
    pub options: Vec<(String, String)>,
}

impl Request {
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, payload: &'a [u8] },
    Ack { block: u16 },
    Error { code: ErrorCode, message: String },
    Oack { options: Vec<(String, String)> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParsePacketError {
    #[error("packet shorter than its fixed header")]
    Truncated,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("string field not NUL-terminated")]
    UnterminatedString,
    #[error("string field is not valid UTF-8")]
    NotUtf8,
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Parses one datagram.
pub fn parse(bytes: &[u8]) -> Result<Packet<'_>, ParsePacketError> {
    if bytes.len() < 2 {
        return Err(ParsePacketError::Truncated);
    }
    let opcode = u16::from_be_bytes([bytes[0], bytes[1]]);
    let body = &bytes[2..];
    match opcode {
        OP_RRQ => parse_request(body).map(Packet::Rrq),
        OP_WRQ => parse_request(body).map(Packet::Wrq),
        OP_DATA => {
            let block = read_u16(body)?;
            Ok(Packet::Data {
                block,
                payload: &body[2..],
            })
        }
        OP_ACK => Ok(Packet::Ack {
            block: read_u16(body)?,
        }),
        OP_ERROR => {
            let code = ErrorCode::from_u16(read_u16(body)?);
            // Be lenient: some clients omit the trailing NUL of the message.
            let raw = &body[2..];
            let raw = raw.split(|b| *b == 0).next().unwrap_or_default();
            let message = String::from_utf8_lossy(raw).into_owned();
            Ok(Packet::Error { code, message })
        }
        OP_OACK => {
            let mut fields = Fields { rest: body };
            Ok(Packet::Oack {
                options: fields.options()?,
            })
        }
        other => Err(ParsePacketError::UnknownOpcode(other)),
    }
}

fn read_u16(body: &[u8]) -> Result<u16, ParsePacketError> {
    match body {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(ParsePacketError::Truncated),
    }
}

struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Result<Option<&'a str>, ParsePacketError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let end = self
            .rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(ParsePacketError::UnterminatedString)?;
        let field =
            std::str::from_utf8(&self.rest[..end]).map_err(|_| ParsePacketError::NotUtf8)?;
        self.rest = &self.rest[end + 1..];
        Ok(Some(field))
    }

    fn options(&mut self) -> Result<Vec<(String, String)>, ParsePacketError> {
        let mut options = Vec::new();
        while let Some(name) = self.next()? {
            // Some clients pad requests with trailing NULs; an empty name ends the list.
            if name.is_empty() {
                break;
            }
            let value = self
                .next()?
                .ok_or_else(|| ParsePacketError::OptionWithoutValue(name.to_string()))?;
            options.push((name.to_ascii_lowercase(), value.to_string()));
        }
        Ok(options)
    }
}

fn parse_request(body: &[u8]) -> Result<Request, ParsePacketError> {
    let mut fields = Fields { rest: body };
    let filename = fields
        .next()?
        .ok_or(ParsePacketError::Truncated)?
        .to_string();
    let mode = fields
        .next()?
        .ok_or(ParsePacketError::Truncated)?
        .to_ascii_lowercase();
    let options = fields.options()?;
    Ok(Request {
        filename,
        mode,
        options,
    })
}

/// Writes a DATA header into `buf[..4]`; the caller places the payload after it.
pub fn write_data_header(buf: &mut [u8], block: u16) {
    buf[..2].copy_from_slice(&OP_DATA.to_be_bytes());
    buf[2..4].copy_from_slice(&block.to_be_bytes());
}

pub fn encode_ack(block: u16) -> [u8; 4] {
    let mut out = [0u8; 4];
    out[..2].copy_from_slice(&OP_ACK.to_be_bytes());
    out[2..].copy_from_slice(&block.to_be_bytes());
    out
}

pub fn encode_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&(code as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out.push(0);
    out
}

pub fn encode_oack(options: &[(String, String)]) -> Vec<u8> {
    encode_with_options(OP_OACK, &[], options)
}

pub fn encode_rrq(filename: &str, options: &[(String, String)]) -> Vec<u8> {
    encode_with_options(OP_RRQ, &[filename, "octet"], options)
}

pub fn encode_wrq(filename: &str, options: &[(String, String)]) -> Vec<u8> {
    encode_with_options(OP_WRQ, &[filename, "octet"], options)
}

fn encode_with_options(opcode: u16, head: &[&str], options: &[(String, String)]) -> Vec<u8> {
    let mut out = opcode.to_be_bytes().to_vec();
    for field in head
        .iter()
        .copied()
        .chain(options.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
    {
        out.extend_from_slice(field.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rrq_with_options_round_trips() {
        let bytes = encode_rrq("ipxe.efi", &opts(&[("blksize", "1432"), ("tsize", "0")]));
        let Packet::Rrq(req) = parse(&bytes).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(req.filename, "ipxe.efi");
        assert_eq!(req.mode, "octet");
        assert_eq!(req.option("blksize"), Some("1432"));
        assert_eq!(req.option("tsize"), Some("0"));
    }

    #[test]
    fn option_names_are_case_insensitive_and_padding_is_ignored() {
        let mut bytes = b"\x00\x01f\x00OCTET\x00BlkSize\x001024\x00".to_vec();
        bytes.extend_from_slice(&[0, 0]);
        let Packet::Rrq(req) = parse(&bytes).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(req.mode, "octet");
        assert_eq!(req.option("blksize"), Some("1024"));
    }

    #[test]
    fn malformed_packets_are_errors() {
        for (bytes, want) in [
            (&b""[..], ParsePacketError::Truncated),
            (b"\x00", ParsePacketError::Truncated),
            (b"\x00\x09", ParsePacketError::UnknownOpcode(9)),
            (b"\x00\x01file", ParsePacketError::UnterminatedString),
            (b"\x00\x01file\x00", ParsePacketError::Truncated),
            (
                b"\x00\x01f\x00octet\x00blksize\x00",
                ParsePacketError::OptionWithoutValue("blksize".into()),
            ),
            (b"\x00\x04\x00", ParsePacketError::Truncated),
            (b"\x00\x01\xff\x00octet\x00", ParsePacketError::NotUtf8),
        ] {
            assert_eq!(parse(bytes), Err(want), "{bytes:?}");
        }
    }

    #[test]
    fn ack_error_and_data() {
        assert_eq!(parse(&encode_ack(7)).unwrap(), Packet::Ack { block: 7 });
        assert_eq!(
            parse(&encode_error(ErrorCode::FileNotFound, "nope")).unwrap(),
            Packet::Error {
                code: ErrorCode::FileNotFound,
                message: "nope".into()
            }
        );
        let mut buf = [0u8; 7];
        write_data_header(&mut buf, 65535);
        buf[4..].copy_from_slice(b"abc");
        assert_eq!(
            parse(&buf).unwrap(),
            Packet::Data {
                block: 65535,
                payload: b"abc"
            }
        );
        let oack = encode_oack(&opts(&[("tsize", "10")]));
        assert_eq!(
            parse(&oack).unwrap(),
            Packet::Oack {
                options: opts(&[("tsize", "10")])
            }
        );
    }
}
