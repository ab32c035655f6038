//! RMCP+ session establishment payloads (IPMI 2.0 §13.17–13.23): Open Session Request/Response
//! and RAKP messages 1–4.

use super::crypto::CipherSuite;
use super::wire::{DecodeError, need, u32_le};

/// RMCP+ status codes (IPMI 2.0 table 13-15) carried by Open Session Response and RAKP 2/4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmcpPlusStatus(pub u8);

impl RmcpPlusStatus {
    pub const NO_ERRORS: u8 = 0x00;
    pub const INVALID_ROLE: u8 = 0x09;
    pub const UNAUTHORIZED_ROLE: u8 = 0x0A;
    pub const UNAUTHORIZED_NAME: u8 = 0x0D;
    pub const INVALID_INTEGRITY_CHECK_VALUE: u8 = 0x0F;

    pub fn describe(self) -> &'static str {
        match self.0 {
            0x00 => "no errors",
            0x01 => "insufficient resources to create a session",
            0x02 => "invalid session ID",
            0x03 => "invalid payload type",
            0x04 => "invalid authentication algorithm",
            0x05 => "invalid integrity algorithm",
            0x06 => "no matching authentication payload",
            0x07 => "no matching integrity payload",
            0x08 => "inactive session ID",
            0x09 => "invalid role",
            0x0A => "unauthorized role or privilege level requested",
            0x0B => "insufficient resources to create a session at the requested role",
            0x0C => "invalid name length",
            0x0D => "unauthorized name",
            0x0E => "unauthorized GUID",
            0x0F => "invalid integrity check value",
            0x10 => "invalid confidentiality algorithm",
            0x11 => "no cipher suite match with proposed security algorithms",
            0x12 => "illegal or unrecognized parameter",
            _ => "reserved status code",
        }
    }

    /// Statuses that mean "these credentials are not accepted", as opposed to a protocol problem.
    pub fn is_credentials_failure(self) -> bool {
        matches!(
            self.0,
            Self::UNAUTHORIZED_NAME
                | Self::INVALID_INTEGRITY_CHECK_VALUE
                | Self::UNAUTHORIZED_ROLE
                | Self::INVALID_ROLE
        )
    }

    /// Statuses that mean "propose a different cipher suite".
    pub fn is_algorithm_mismatch(self) -> bool {
        matches!(self.0, 0x04 | 0x05 | 0x06 | 0x07 | 0x10 | 0x11)
    }
}

impl std::fmt::Display for RmcpPlusStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#04x} ({})", self.0, self.describe())
    }
}

/// Open Session Request (payload type 0x10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSessionRequest {
    pub tag: u8,
    /// Requested maximum privilege level; 0 asks for the highest the algorithms allow.
    pub max_privilege: u8,
    pub console_session_id: u32,
    pub suite: CipherSuite,
}

impl OpenSessionRequest {
    pub fn encode(&self) -> Vec<u8> {
        let (auth, integrity, confidentiality) = self.suite.algorithms();
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&[self.tag, self.max_privilege, 0, 0]);
        out.extend_from_slice(&self.console_session_id.to_le_bytes());
        // Three 8-byte algorithm payloads: type, reserved(2), length 8, algorithm, reserved(3).
        for (payload_type, algorithm) in [(0x00, auth), (0x01, integrity), (0x02, confidentiality)]
        {
            out.extend_from_slice(&[payload_type, 0, 0, 0x08, algorithm, 0, 0, 0]);
        }
        out
    }
}

/// Open Session Response (payload type 0x11). On an error status the BMC may stop after the
/// console session ID, so the algorithm fields are only present on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSessionResponse {
    pub tag: u8,
    pub status: RmcpPlusStatus,
    pub max_privilege: u8,
    /// Absent from the shortest error answers.
    pub console_session_id: Option<u32>,
    pub accepted: Option<AcceptedSession>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedSession {
    pub bmc_session_id: u32,
    pub auth_algorithm: u8,
    pub integrity_algorithm: u8,
    pub confidentiality_algorithm: u8,
}

impl OpenSessionResponse {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        // ipmi_sim answers "insufficient resources" with only the tag and the status.
        need("Open Session Response", bytes, 2)?;
        let tag = bytes[0];
        let status = RmcpPlusStatus(bytes[1]);
        if status.0 != RmcpPlusStatus::NO_ERRORS {
            let max_privilege = bytes.get(2).copied().unwrap_or(0);
            let console_session_id = (bytes.len() >= 8).then(|| u32_le(&bytes[4..8]));
            return Ok(Self {
                tag,
                status,
                max_privilege,
                console_session_id,
                accepted: None,
            });
        }
        need("Open Session Response", bytes, 36)?;
        let max_privilege = bytes[2];
        let console_session_id = Some(u32_le(&bytes[4..8]));
        let algorithm = |offset: usize, expected_type: u8| {
            if bytes[offset] != expected_type {
                return Err(DecodeError::Invalid {
                    what: "Open Session Response",
                    detail: format!(
                        "algorithm payload at {offset} has type {:#04x}, expected {expected_type:#04x}",
                        bytes[offset]
                    ),
                });
            }
            Ok(bytes[offset + 4] & 0x3F)
        };
        Ok(Self {
            tag,
            status,
            max_privilege,
            console_session_id,
            accepted: Some(AcceptedSession {
                bmc_session_id: u32_le(&bytes[8..12]),
                auth_algorithm: algorithm(12, 0x00)?,
                integrity_algorithm: algorithm(20, 0x01)?,
                confidentiality_algorithm: algorithm(28, 0x02)?,
            }),
        })
    }
}

/// RAKP 1 bit 4 of the role byte: look the user up by name only (ipmitool's default).
pub const ROLE_NAME_ONLY_LOOKUP: u8 = 0x10;

/// RAKP Message 1 (payload type 0x12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp1<'a> {
    pub tag: u8,
    pub bmc_session_id: u32,
    pub console_random: [u8; 16],
    /// Privilege level plus lookup bit; the same byte enters the RAKP HMACs.
    pub role: u8,
    pub username: &'a [u8],
}

impl Rakp1<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(28 + self.username.len());
        out.extend_from_slice(&[self.tag, 0, 0, 0]);
        out.extend_from_slice(&self.bmc_session_id.to_le_bytes());
        out.extend_from_slice(&self.console_random);
        out.extend_from_slice(&[self.role, 0, 0, self.username.len() as u8]);
        out.extend_from_slice(self.username);
        out
    }
}

/// RAKP Message 2 (payload type 0x13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp2 {
    pub tag: u8,
    pub status: RmcpPlusStatus,
    /// Absent from the shortest error answers.
    pub console_session_id: Option<u32>,
    pub bmc_random: [u8; 16],
    pub bmc_guid: [u8; 16],
    pub auth_code: Vec<u8>,
}

impl Rakp2 {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        need("RAKP 2", bytes, 2)?;
        let tag = bytes[0];
        let status = RmcpPlusStatus(bytes[1]);
        let console_session_id = (bytes.len() >= 8).then(|| u32_le(&bytes[4..8]));
        if status.0 != RmcpPlusStatus::NO_ERRORS {
            return Ok(Self {
                tag,
                status,
                console_session_id,
                bmc_random: [0; 16],
                bmc_guid: [0; 16],
                auth_code: Vec::new(),
            });
        }
        need("RAKP 2", bytes, 40)?;
        let mut bmc_random = [0u8; 16];
        bmc_random.copy_from_slice(&bytes[8..24]);
        let mut bmc_guid = [0u8; 16];
        bmc_guid.copy_from_slice(&bytes[24..40]);
        Ok(Self {
            tag,
            status,
            console_session_id,
            bmc_random,
            bmc_guid,
            auth_code: bytes[40..].to_vec(),
        })
    }
}

/// RAKP Message 3 (payload type 0x14). A non-zero status tells the BMC we reject its RAKP 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp3 {
    pub tag: u8,
    pub status: RmcpPlusStatus,
    pub bmc_session_id: u32,
    pub auth_code: Vec<u8>,
}

impl Rakp3 {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.auth_code.len());
        out.extend_from_slice(&[self.tag, self.status.0, 0, 0]);
        out.extend_from_slice(&self.bmc_session_id.to_le_bytes());
        out.extend_from_slice(&self.auth_code);
        out
    }
}

/// RAKP Message 4 (payload type 0x15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp4 {
    pub tag: u8,
    pub status: RmcpPlusStatus,
    /// Absent from the shortest error answers.
    pub console_session_id: Option<u32>,
    pub integrity_check_value: Vec<u8>,
}

impl Rakp4 {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        need("RAKP 4", bytes, 2)?;
        let status = RmcpPlusStatus(bytes[1]);
        if status.0 == RmcpPlusStatus::NO_ERRORS {
            need("RAKP 4", bytes, 8)?;
        }
        Ok(Self {
            tag: bytes[0],
            status,
            console_session_id: (bytes.len() >= 8).then(|| u32_le(&bytes[4..8])),
            integrity_check_value: bytes.get(8..).unwrap_or_default().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_session_request_bytes_for_both_suites() {
        let request = OpenSessionRequest {
            tag: 0x2A,
            max_privilege: 0x04,
            console_session_id: 0xA1B2_C3D4,
            suite: CipherSuite::Suite17,
        };
        assert_eq!(
            request.encode(),
            [
                0x2A, 0x04, 0, 0, 0xD4, 0xC3, 0xB2, 0xA1, //
                0x00, 0, 0, 0x08, 0x03, 0, 0, 0, //
                0x01, 0, 0, 0x08, 0x04, 0, 0, 0, //
                0x02, 0, 0, 0x08, 0x01, 0, 0, 0,
            ]
        );
        let suite3 = OpenSessionRequest {
            suite: CipherSuite::Suite3,
            ..request
        };
        let bytes = suite3.encode();
        assert_eq!((bytes[12], bytes[20], bytes[28]), (0x01, 0x01, 0x01));
    }

    fn open_session_response_bytes() -> Vec<u8> {
        let mut bytes = vec![0x2A, 0x00, 0x04, 0x00];
        bytes.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
        bytes.extend_from_slice(&0x0102_0304u32.to_le_bytes());
        bytes.extend_from_slice(&[0x00, 0, 0, 0x08, 0x01, 0, 0, 0]);
        bytes.extend_from_slice(&[0x01, 0, 0, 0x08, 0x01, 0, 0, 0]);
        bytes.extend_from_slice(&[0x02, 0, 0, 0x08, 0x01, 0, 0, 0]);
        bytes
    }

    #[test]
    fn open_session_response_decodes_and_rejects_truncation() {
        let bytes = open_session_response_bytes();
        let decoded = OpenSessionResponse::decode(&bytes).unwrap();
        assert_eq!(decoded.status, RmcpPlusStatus(0));
        assert_eq!(decoded.console_session_id, Some(0xA1B2_C3D4));
        assert_eq!(
            decoded.accepted,
            Some(AcceptedSession {
                bmc_session_id: 0x0102_0304,
                auth_algorithm: 1,
                integrity_algorithm: 1,
                confidentiality_algorithm: 1,
            })
        );
        for cut in 0..bytes.len() {
            assert!(matches!(
                OpenSessionResponse::decode(&bytes[..cut]),
                Err(DecodeError::Truncated { .. })
            ));
        }
        // Error answers may be as short as tag + status (ipmi_sim when out of sessions).
        let short = OpenSessionResponse::decode(&[0x2A, 0x01]).unwrap();
        assert_eq!(
            (short.status, short.console_session_id),
            (RmcpPlusStatus(0x01), None)
        );
        let mut swapped = bytes.clone();
        swapped[12] = 0x01;
        assert!(matches!(
            OpenSessionResponse::decode(&swapped),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn open_session_error_response_may_be_short() {
        let bytes = [0x2A, 0x11, 0x00, 0x00, 0xD4, 0xC3, 0xB2, 0xA1];
        let decoded = OpenSessionResponse::decode(&bytes).unwrap();
        assert!(decoded.status.is_algorithm_mismatch());
        assert_eq!(decoded.accepted, None);
    }

    #[test]
    fn rakp1_bytes() {
        let rakp1 = Rakp1 {
            tag: 1,
            bmc_session_id: 0x0102_0304,
            console_random: [0xEE; 16],
            role: 0x14,
            username: b"admin",
        };
        let bytes = rakp1.encode();
        assert_eq!(&bytes[..8], &[1, 0, 0, 0, 0x04, 0x03, 0x02, 0x01]);
        assert_eq!(&bytes[8..24], &[0xEE; 16]);
        assert_eq!(&bytes[24..28], &[0x14, 0, 0, 5]);
        assert_eq!(&bytes[28..], b"admin");
    }

    #[test]
    fn rakp2_and_rakp4_decode_and_reject_truncation() {
        let mut bytes = vec![1, 0, 0, 0, 0xD4, 0xC3, 0xB2, 0xA1];
        bytes.extend_from_slice(&[0x11; 16]);
        bytes.extend_from_slice(&[0x22; 16]);
        bytes.extend_from_slice(&[0x33; 20]);
        let rakp2 = Rakp2::decode(&bytes).unwrap();
        assert_eq!(rakp2.console_session_id, Some(0xA1B2_C3D4));
        assert_eq!(rakp2.bmc_random, [0x11; 16]);
        assert_eq!(rakp2.bmc_guid, [0x22; 16]);
        assert_eq!(rakp2.auth_code, vec![0x33; 20]);
        for cut in 0..40 {
            assert!(Rakp2::decode(&bytes[..cut]).is_err());
        }
        let failed = Rakp2::decode(&[1, 0x0D, 0, 0, 0, 0, 0, 0]).unwrap();
        assert!(failed.status.is_credentials_failure());

        let rakp4 = Rakp4::decode(&[1, 0, 0, 0, 4, 3, 2, 1, 9, 9]).unwrap();
        assert_eq!(rakp4.console_session_id, Some(0x0102_0304));
        assert_eq!(rakp4.integrity_check_value, vec![9, 9]);
        assert!(Rakp4::decode(&[1, 0, 0]).is_err());
        assert!(Rakp4::decode(&[1]).is_err());
        assert_eq!(
            Rakp4::decode(&[1, 0x0F]).unwrap().status,
            RmcpPlusStatus(0x0F)
        );
    }

    #[test]
    fn rakp3_bytes() {
        let rakp3 = Rakp3 {
            tag: 3,
            status: RmcpPlusStatus(0x0F),
            bmc_session_id: 0x0A0B_0C0D,
            auth_code: vec![],
        };
        assert_eq!(rakp3.encode(), [3, 0x0F, 0, 0, 0x0D, 0x0C, 0x0B, 0x0A]);
    }
}
