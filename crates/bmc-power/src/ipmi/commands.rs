//! The IPMI commands the power driver uses: requests as (NetFn, command, data) and typed parsers
//! for their response data. Completion codes are checked by [`Response::into_data`].

use super::wire::{AuthType, DecodeError, need, u32_le};

pub const NETFN_CHASSIS: u8 = 0x00;
pub const NETFN_APP: u8 = 0x06;

/// An IPMI request to the BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub netfn: u8,
    pub cmd: u8,
    pub data: Vec<u8>,
    /// For errors and logs: which command this is.
    pub name: &'static str,
}

/// A response whose envelope (checksums, session, sequence) was already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub netfn: u8,
    pub cmd: u8,
    pub completion_code: u8,
    pub data: Vec<u8>,
}

/// A BMC answered with a non-zero completion code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{command} failed with completion code {code:#04x} ({})", completion_code_message(*.code))]
pub struct CompletionCodeError {
    pub command: &'static str,
    pub code: u8,
}

impl Response {
    pub fn into_data(self, request: &Request) -> Result<Vec<u8>, CompletionCodeError> {
        if self.completion_code != 0 {
            return Err(CompletionCodeError {
                command: request.name,
                code: self.completion_code,
            });
        }
        Ok(self.data)
    }
}

/// Generic completion codes (IPMI 2.0 table 5-2) plus Set System Boot Options' own.
pub fn completion_code_message(code: u8) -> &'static str {
    match code {
        0x00 => "command completed normally",
        0x80 => "parameter not supported",
        0x81 => "attempt to set 'set in progress' when not in 'set complete' state",
        0x82 => "attempt to write a read-only parameter",
        0xC0 => "node busy",
        0xC1 => "invalid command",
        0xC2 => "command invalid for given LUN",
        0xC3 => "timeout while processing command",
        0xC4 => "out of space",
        0xC5 => "reservation canceled or invalid reservation ID",
        0xC6 => "request data truncated",
        0xC7 => "request data length invalid",
        0xC8 => "request data field length limit exceeded",
        0xC9 => "parameter out of range",
        0xCA => "cannot return number of requested data bytes",
        0xCB => "requested sensor, data, or record not present",
        0xCC => "invalid data field in request",
        0xCD => "command illegal for specified sensor or record type",
        0xCE => "command response could not be provided",
        0xCF => "cannot execute duplicated request",
        0xD0 => "SDR repository in update mode",
        0xD1 => "device in firmware update mode",
        0xD2 => "BMC initialization in progress",
        0xD3 => "destination unavailable",
        0xD4 => "insufficient privilege level",
        0xD5 => "command not supported in present state",
        0xD6 => "parameter is illegal because subfunction is disabled or unavailable",
        0xFF => "unspecified error",
        _ => "device-specific or reserved completion code",
    }
}

/// Session privilege levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Privilege {
    Callback = 0x01,
    User = 0x02,
    Operator = 0x03,
    Administrator = 0x04,
}

// ---------------------------------------------------------------------------------------------
// Session management (NetFn App)

/// Channel number 0x0E means "the channel this request arrives on".
const CURRENT_CHANNEL: u8 = 0x0E;

/// Get Channel Authentication Capabilities (App 0x38). `ipmi_v2` sets bit 7 of the channel byte so
/// an IPMI 2.0 BMC reports its extended capabilities.
pub fn get_channel_auth_capabilities(ipmi_v2: bool, privilege: Privilege) -> Request {
    let channel = if ipmi_v2 {
        0x80 | CURRENT_CHANNEL
    } else {
        CURRENT_CHANNEL
    };
    Request {
        netfn: NETFN_APP,
        cmd: 0x38,
        data: vec![channel, privilege as u8],
        name: "Get Channel Authentication Capabilities",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelAuthCapabilities {
    pub channel: u8,
    /// Bitmask of IPMI 1.5 auth types: bit 0 none, 1 MD2, 2 MD5, 4 straight password, 5 OEM.
    pub auth_types: u8,
    pub per_message_auth_disabled: bool,
    pub supports_ipmi_v2: bool,
}

impl ChannelAuthCapabilities {
    pub fn parse(data: &[u8]) -> Result<Self, DecodeError> {
        need("Get Channel Authentication Capabilities response", data, 3)?;
        let extended = data[1] & 0x80 != 0;
        // Byte 4 (extended capabilities) bit 1: channel supports IPMI 2.0 connections.
        let supports_ipmi_v2 = extended && data.get(3).is_some_and(|b| b & 0x02 != 0);
        Ok(Self {
            channel: data[0],
            auth_types: data[1] & 0x3F,
            per_message_auth_disabled: data[2] & 0x10 != 0,
            supports_ipmi_v2,
        })
    }

    pub fn supports(&self, auth_type: AuthType) -> bool {
        self.auth_types & (1 << (auth_type as u8)) != 0
    }
}

/// Get Channel Cipher Suites (App 0x54), listing by cipher suite, IPMI payload, record `index`.
pub fn get_channel_cipher_suites(index: u8) -> Request {
    Request {
        netfn: NETFN_APP,
        cmd: 0x54,
        data: vec![CURRENT_CHANNEL, 0x00, 0x80 | (index & 0x3F)],
        name: "Get Channel Cipher Suites",
    }
}

/// Response data of one Get Channel Cipher Suites call: the channel byte, then up to 16 bytes of
/// record data. A chunk shorter than 16 bytes ends the list.
pub fn cipher_suite_chunk(data: &[u8]) -> Result<(&[u8], bool), DecodeError> {
    need("Get Channel Cipher Suites response", data, 1)?;
    let records = &data[1..];
    Ok((records, records.len() == 16))
}

/// Parses concatenated cipher suite records into suite IDs. Standard records start with 0xC0
/// followed by the ID; OEM records (0xC1) carry a 3-byte IANA number after the ID; algorithm bytes
/// (top bits 00/01/10) follow each.
pub fn parse_cipher_suite_ids(records: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut ids = Vec::new();
    let mut i = 0;
    while i < records.len() {
        match records[i] {
            0xC0 => {
                need("cipher suite record", &records[i..], 2)?;
                ids.push(records[i + 1]);
                i += 2;
            }
            0xC1 => {
                need("OEM cipher suite record", &records[i..], 5)?;
                i += 5;
            }
            byte if byte & 0xC0 != 0xC0 => i += 1, // an algorithm byte of the current record
            other => {
                return Err(DecodeError::Invalid {
                    what: "cipher suite records",
                    detail: format!("unknown record start byte {other:#04x}"),
                });
            }
        }
    }
    Ok(ids)
}

/// Get Session Challenge (App 0x39), IPMI 1.5.
pub fn get_session_challenge(auth_type: AuthType, username: &[u8; 16]) -> Request {
    let mut data = vec![auth_type as u8];
    data.extend_from_slice(username);
    Request {
        netfn: NETFN_APP,
        cmd: 0x39,
        data,
        name: "Get Session Challenge",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionChallenge {
    pub temporary_session_id: u32,
    pub challenge: [u8; 16],
}

impl SessionChallenge {
    pub fn parse(data: &[u8]) -> Result<Self, DecodeError> {
        need("Get Session Challenge response", data, 20)?;
        let mut challenge = [0u8; 16];
        challenge.copy_from_slice(&data[4..20]);
        Ok(Self {
            temporary_session_id: u32_le(&data[0..4]),
            challenge,
        })
    }
}

/// Activate Session (App 0x3A), IPMI 1.5.
pub fn activate_session(
    auth_type: AuthType,
    privilege: Privilege,
    challenge: &[u8; 16],
    initial_outbound_sequence: u32,
) -> Request {
    let mut data = vec![auth_type as u8, privilege as u8];
    data.extend_from_slice(challenge);
    data.extend_from_slice(&initial_outbound_sequence.to_le_bytes());
    Request {
        netfn: NETFN_APP,
        cmd: 0x3A,
        data,
        name: "Activate Session",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivatedSession {
    pub auth_type: u8,
    pub session_id: u32,
    /// The sequence number the BMC wants our next packet to carry.
    pub initial_inbound_sequence: u32,
    pub max_privilege: u8,
}

impl ActivatedSession {
    pub fn parse(data: &[u8]) -> Result<Self, DecodeError> {
        need("Activate Session response", data, 10)?;
        Ok(Self {
            auth_type: data[0] & 0x0F,
            session_id: u32_le(&data[1..5]),
            initial_inbound_sequence: u32_le(&data[5..9]),
            max_privilege: data[9] & 0x0F,
        })
    }
}

/// Set Session Privilege Level (App 0x3B). Sessions start at User level; chassis control needs
/// Operator or above (ipmi_sim answers 0xD4 otherwise).
pub fn set_session_privilege(privilege: Privilege) -> Request {
    Request {
        netfn: NETFN_APP,
        cmd: 0x3B,
        data: vec![privilege as u8],
        name: "Set Session Privilege Level",
    }
}

/// Close Session (App 0x3C) for the BMC-side session ID.
pub fn close_session(bmc_session_id: u32) -> Request {
    Request {
        netfn: NETFN_APP,
        cmd: 0x3C,
        data: bmc_session_id.to_le_bytes().to_vec(),
        name: "Close Session",
    }
}

// ---------------------------------------------------------------------------------------------
// Chassis (NetFn 0x00)

pub fn get_chassis_status() -> Request {
    Request {
        netfn: NETFN_CHASSIS,
        cmd: 0x01,
        data: vec![],
        name: "Get Chassis Status",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChassisStatus {
    pub power_on: bool,
    pub power_fault: bool,
    pub power_control_fault: bool,
}

impl ChassisStatus {
    pub fn parse(data: &[u8]) -> Result<Self, DecodeError> {
        need("Get Chassis Status response", data, 3)?;
        Ok(Self {
            power_on: data[0] & 0x01 != 0,
            power_fault: data[0] & 0x08 != 0,
            power_control_fault: data[0] & 0x10 != 0,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ChassisControl {
    PowerDown = 0x00,
    PowerUp = 0x01,
    PowerCycle = 0x02,
    HardReset = 0x03,
    SoftShutdown = 0x05,
}

pub fn chassis_control(action: ChassisControl) -> Request {
    Request {
        netfn: NETFN_CHASSIS,
        cmd: 0x02,
        data: vec![action as u8],
        name: "Chassis Control",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootTarget {
    Pxe,
    Disk,
}

/// Boot flags (Set System Boot Options parameter 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootFlags {
    pub target: BootTarget,
    /// Applies to all future boots instead of only the next one.
    pub persistent: bool,
    /// Ask for an EFI boot instead of a PC-compatible (legacy BIOS) one.
    pub efi: bool,
}

impl BootFlags {
    pub fn encode(self) -> [u8; 5] {
        let mut first = 0x80; // boot flags valid
        if self.persistent {
            first |= 0x40;
        }
        if self.efi {
            first |= 0x20;
        }
        let device = match self.target {
            BootTarget::Pxe => 0x01,
            BootTarget::Disk => 0x02,
        };
        [first, device << 2, 0, 0, 0]
    }
}

const BOOT_PARAMETER_FLAGS: u8 = 5;

/// Set System Boot Options (Chassis 0x08), boot flags parameter, marked valid.
pub fn set_boot_flags(flags: BootFlags) -> Request {
    let mut data = vec![BOOT_PARAMETER_FLAGS];
    data.extend_from_slice(&flags.encode());
    Request {
        netfn: NETFN_CHASSIS,
        cmd: 0x08,
        data,
        name: "Set System Boot Options",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_flag_bytes() {
        let check = |target, persistent, efi, expected: [u8; 5]| {
            assert_eq!(
                BootFlags {
                    target,
                    persistent,
                    efi
                }
                .encode(),
                expected
            );
        };
        check(BootTarget::Pxe, false, false, [0x80, 0x04, 0, 0, 0]);
        check(BootTarget::Pxe, true, false, [0xC0, 0x04, 0, 0, 0]);
        check(BootTarget::Disk, false, true, [0xA0, 0x08, 0, 0, 0]);
        check(BootTarget::Disk, true, true, [0xE0, 0x08, 0, 0, 0]);
        let request = set_boot_flags(BootFlags {
            target: BootTarget::Pxe,
            persistent: false,
            efi: true,
        });
        assert_eq!((request.netfn, request.cmd), (0x00, 0x08));
        assert_eq!(request.data, [0x05, 0xA0, 0x04, 0, 0, 0]);
    }

    #[test]
    fn chassis_requests() {
        assert_eq!(chassis_control(ChassisControl::PowerDown).data, [0x00]);
        assert_eq!(chassis_control(ChassisControl::PowerUp).data, [0x01]);
        assert_eq!(chassis_control(ChassisControl::PowerCycle).data, [0x02]);
        assert_eq!(chassis_control(ChassisControl::HardReset).data, [0x03]);
        assert_eq!(chassis_control(ChassisControl::SoftShutdown).data, [0x05]);
        assert_eq!(set_session_privilege(Privilege::Administrator).data, [0x04]);
        assert_eq!(close_session(0x0102_0304).data, [4, 3, 2, 1]);
    }

    #[test]
    fn chassis_status_parse() {
        assert!(ChassisStatus::parse(&[0x01, 0x00, 0x40]).unwrap().power_on);
        assert!(
            !ChassisStatus::parse(&[0x60, 0x10, 0x40, 0x00])
                .unwrap()
                .power_on
        );
        assert!(matches!(
            ChassisStatus::parse(&[0x01]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn channel_auth_capabilities_parse() {
        // ipmi_sim-like answer: channel 1, v2 extended, none/md2/md5/straight, v1.5+v2.0.
        let caps = ChannelAuthCapabilities::parse(&[0x01, 0x97, 0x04, 0x03, 0, 0, 0, 0]).unwrap();
        assert!(caps.supports_ipmi_v2);
        assert!(caps.supports(AuthType::Md5));
        assert!(caps.supports(AuthType::StraightPassword));
        assert!(!caps.supports(AuthType::Oem));
        let v15_only = ChannelAuthCapabilities::parse(&[0x01, 0x04, 0x14, 0x01]).unwrap();
        assert!(!v15_only.supports_ipmi_v2);
        assert!(v15_only.per_message_auth_disabled);
        assert!(ChannelAuthCapabilities::parse(&[0x01, 0x04]).is_err());
    }

    #[test]
    fn cipher_suite_records_parse() {
        // Suites 3 and 17 as standard records, one OEM record in between.
        let records = [
            0xC0, 0x03, 0x01, 0x41, 0x81, //
            0xC1, 0x50, 0x00, 0x00, 0x00, 0x01, 0x41, 0x81, //
            0xC0, 0x11, 0x03, 0x44, 0x81,
        ];
        assert_eq!(parse_cipher_suite_ids(&records).unwrap(), vec![3, 17]);
        assert!(parse_cipher_suite_ids(&[0xC0]).is_err());
        assert!(parse_cipher_suite_ids(&[0xC1, 1, 2]).is_err());
        assert!(parse_cipher_suite_ids(&[0xC5, 1]).is_err());
        let (records, more) = cipher_suite_chunk(&[0x01, 0xC0, 0x03]).unwrap();
        assert_eq!((records, more), (&[0xC0, 0x03][..], false));
        assert!(cipher_suite_chunk(&[]).is_err());
    }

    #[test]
    fn v15_session_requests_and_responses() {
        let mut user = [0u8; 16];
        user[..5].copy_from_slice(b"admin");
        let challenge = get_session_challenge(AuthType::Md5, &user);
        assert_eq!(challenge.data[0], 0x02);
        assert_eq!(&challenge.data[1..6], b"admin");
        let mut data = vec![0x78, 0x56, 0x34, 0x12];
        data.extend_from_slice(&[9; 16]);
        let parsed = SessionChallenge::parse(&data).unwrap();
        assert_eq!(parsed.temporary_session_id, 0x1234_5678);
        assert!(SessionChallenge::parse(&data[..19]).is_err());
        let activate = activate_session(AuthType::Md5, Privilege::Administrator, &[9; 16], 1);
        assert_eq!(activate.data.len(), 22);
        let activated = ActivatedSession::parse(&[0x02, 1, 0, 0, 0, 0x10, 0, 0, 0, 0x04]).unwrap();
        assert_eq!(activated.session_id, 1);
        assert_eq!(activated.initial_inbound_sequence, 0x10);
        assert!(ActivatedSession::parse(&[0x02, 1, 0]).is_err());
    }

    #[test]
    fn completion_codes() {
        let response = Response {
            netfn: 0x01,
            cmd: 0x02,
            completion_code: 0xD4,
            data: vec![],
        };
        let err = response
            .into_data(&chassis_control(ChassisControl::PowerUp))
            .unwrap_err();
        assert_eq!(err.code, 0xD4);
        assert_eq!(
            err.to_string(),
            "Chassis Control failed with completion code 0xd4 (insufficient privilege level)"
        );
    }
}
