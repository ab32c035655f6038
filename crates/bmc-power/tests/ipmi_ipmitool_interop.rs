//! Cipher suite 17 against an independent implementation. No BMC emulator available here speaks
//! suite 17 (ipmi_sim 2.0.33 and VirtualBMC stop at suite 3), so the roles are swapped: a small
//! BMC responder built from this crate's public wire/crypto core answers `ipmitool -I lanplus
//! -C 17` (and `-C 3`). If ipmitool completes RAKP, verifies our RAKP 2/4 codes, accepts our
//! HMAC-SHA256-128 AuthCodes and decrypts our AES-CBC payloads (and we decrypt and verify its
//! packets), the suite-17 key derivation and framing agree with ipmitool's.
//!
//! Requirements (the tests fail, never skip, without them): `ipmitool` (Debian `ipmitool`).

use bmc_power::PowerDriver;
use bmc_power::PowerError;
use bmc_power::ipmi::crypto::{CipherSuite, RakpContext, SessionKeys};
use bmc_power::ipmi::wire::{
    self, AuthType, PayloadType, V15Header, V20Header, checksum, decode_v15, decode_v20, strip_rmcp,
};
use bmc_power::ipmi::{IpmiDriver, IpmiSettings};
use ingot_types::power::{PowerParameters, PowerState};
use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const USER: &str = "admin";
const PASSWORD: &str = "interop-pw";
const BMC_SESSION_ID: u32 = 0x5EED_0001;
const BMC_GUID: [u8; 16] = [
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0x00,
];

/// What the responder observed, for assertions.
#[derive(Default)]
struct Observed {
    suites: Mutex<Vec<u8>>,
    sessions_closed: AtomicU32,
    power_on: AtomicBool,
}

/// A one-session-at-a-time RMCP+ BMC on 127.0.0.1 that offers suites 17 and 3.
struct Responder {
    socket: UdpSocket,
    observed: Arc<Observed>,
    suite: Option<CipherSuite>,
    console_session_id: u32,
    console_random: [u8; 16],
    bmc_random: [u8; 16],
    role: u8,
    username: Vec<u8>,
    keys: Option<SessionKeys>,
    sequence: u32,
    iv_counter: u8,
}

fn request_parts(message: &[u8]) -> (u8, u8, u8, Vec<u8>) {
    // rsAddr, netFn/LUN, chk1, rqAddr, rqSeq/LUN, cmd, data.., chk2
    assert_eq!(
        checksum(&message[..2]),
        message[2],
        "header checksum from the client"
    );
    assert_eq!(
        checksum(&message[3..message.len() - 1]),
        message[message.len() - 1]
    );
    (
        message[1] >> 2,
        message[5],
        message[4],
        message[6..message.len() - 1].to_vec(),
    )
}

fn response_message(netfn: u8, cmd: u8, rq_seq_byte: u8, completion: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81, (netfn | 1) << 2];
    out.push(checksum(&out));
    out.extend_from_slice(&[0x20, rq_seq_byte, cmd, completion]);
    out.extend_from_slice(data);
    let sum = checksum(&out[3..]);
    out.push(sum);
    out
}

impl Responder {
    fn start(observed: Arc<Observed>) -> u16 {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let mut responder = Responder {
            socket,
            observed,
            suite: None,
            console_session_id: 0,
            console_random: [0; 16],
            bmc_random: [0x5A; 16],
            role: 0,
            username: vec![],
            keys: None,
            sequence: 0,
            iv_counter: 0,
        };
        // Detached: the thread ends with the test process.
        std::thread::spawn(move || responder.serve());
        port
    }

    fn serve(&mut self) {
        let mut buffer = [0u8; 1024];
        loop {
            let Ok((len, from)) = self.socket.recv_from(&mut buffer) else {
                return;
            };
            if let Some(answer) = self.answer(&buffer[..len]) {
                let _ = self.socket.send_to(&answer, from);
            }
        }
    }

    fn context(&self) -> RakpContext<'_> {
        RakpContext {
            suite: self.suite.unwrap(),
            console_session_id: self.console_session_id,
            bmc_session_id: BMC_SESSION_ID,
            console_random: self.console_random,
            bmc_random: self.bmc_random,
            bmc_guid: BMC_GUID,
            role: self.role,
            username: &self.username,
        }
    }

    fn plain(&self, payload_type: PayloadType, payload: &[u8]) -> Vec<u8> {
        let header = V20Header {
            payload_type,
            encrypted: false,
            authenticated: false,
            session_id: 0,
            sequence: 0,
        };
        wire::encode_v20(&header, payload)
    }

    fn answer(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        let body = strip_rmcp(packet).ok()?;
        if body[0] != AuthType::RmcpPlus as u8 {
            // Sessionless IPMI 1.5 framing: Get Channel Auth Capabilities / Cipher Suites.
            let request = decode_v15(packet).ok()?;
            let (netfn, cmd, rq_seq, _data) = request_parts(request.message);
            let (completion, data) = self.sessionless(netfn, cmd);
            let header = V15Header {
                auth_type: AuthType::None,
                sequence: 0,
                session_id: 0,
                auth_code: None,
            };
            let reply = response_message(netfn, cmd, rq_seq, completion, &data);
            return Some(wire::encode_v15(&header, &reply));
        }
        let integrity_len = self.suite.map_or(0, CipherSuite::integrity_len);
        let decoded = decode_v20(packet, integrity_len).ok()?;
        let p = decoded.payload;
        match decoded.header.payload_type {
            PayloadType::OpenSessionRequest => {
                self.console_session_id = u32::from_le_bytes(p[4..8].try_into().unwrap());
                let algorithms = (p[12], p[20], p[28]);
                let suite = [CipherSuite::Suite17, CipherSuite::Suite3]
                    .into_iter()
                    .find(|s| s.algorithms() == algorithms);
                let mut out = vec![p[0], 0x00, 0x04, 0x00];
                out.extend_from_slice(&self.console_session_id.to_le_bytes());
                let Some(suite) = suite else {
                    out[1] = 0x11; // no cipher suite match
                    return Some(self.plain(PayloadType::OpenSessionResponse, &out));
                };
                self.observed.suites.lock().unwrap().push(suite.id());
                self.suite = Some(suite);
                self.keys = None;
                out.extend_from_slice(&BMC_SESSION_ID.to_le_bytes());
                out.extend_from_slice(&p[8..32]);
                Some(self.plain(PayloadType::OpenSessionResponse, &out))
            }
            PayloadType::Rakp1 => {
                self.console_random.copy_from_slice(&p[8..24]);
                self.role = p[24];
                self.username = p[28..28 + p[27] as usize].to_vec();
                let mut out = vec![p[0], 0x00, 0, 0];
                out.extend_from_slice(&self.console_session_id.to_le_bytes());
                out.extend_from_slice(&self.bmc_random);
                out.extend_from_slice(&BMC_GUID);
                out.extend_from_slice(&self.context().rakp2_auth_code(PASSWORD.as_bytes()));
                Some(self.plain(PayloadType::Rakp2, &out))
            }
            PayloadType::Rakp3 => {
                let mut out = vec![p[0], 0x00, 0, 0];
                out.extend_from_slice(&self.console_session_id.to_le_bytes());
                let expected = self.context().rakp3_auth_code(PASSWORD.as_bytes());
                if p[1] != 0 || p[8..] != expected[..] {
                    out[1] = 0x0F;
                    return Some(self.plain(PayloadType::Rakp4, &out));
                }
                let sik = self.context().session_integrity_key(PASSWORD.as_bytes());
                out.extend_from_slice(&self.context().rakp4_check_value(&sik));
                self.keys = Some(SessionKeys::derive(self.suite.unwrap(), sik));
                self.sequence = 0;
                Some(self.plain(PayloadType::Rakp4, &out))
            }
            PayloadType::Ipmi if decoded.header.session_id == 0 => {
                // Sessionless request in RMCP+ framing.
                let (netfn, cmd, rq_seq, _data) = request_parts(decoded.payload);
                let (completion, data) = self.sessionless(netfn, cmd);
                let reply = response_message(netfn, cmd, rq_seq, completion, &data);
                Some(self.plain(PayloadType::Ipmi, &reply))
            }
            PayloadType::Ipmi => self.in_session(&decoded),
            _ => None,
        }
    }

    fn sessionless(&self, netfn: u8, cmd: u8) -> (u8, Vec<u8>) {
        match (netfn, cmd) {
            // Channel 1; IPMI 2.0 extended data; MD5 + straight; non-null users; 1.5 and 2.0.
            (0x06, 0x38) => (0x00, vec![0x01, 0x80 | 0x14, 0x04, 0x03, 0, 0, 0, 0]),
            // Records for suites 17 and 3, in one short chunk (end of list).
            (0x06, 0x54) => (
                0x00,
                vec![
                    0x01, 0xC0, 0x11, 0x03, 0x44, 0x81, 0xC0, 0x03, 0x01, 0x41, 0x81,
                ],
            ),
            _ => (0xC1, vec![]),
        }
    }

    fn in_session(&mut self, decoded: &wire::V20Packet<'_>) -> Option<Vec<u8>> {
        let keys = self.keys.as_ref()?;
        assert_eq!(
            decoded.header.session_id, BMC_SESSION_ID,
            "client used our session ID"
        );
        assert!(decoded.header.authenticated && decoded.header.encrypted);
        assert_eq!(
            keys.integrity_code(decoded.signed),
            decoded.auth_code,
            "client AuthCode verifies with our K1"
        );
        let message = keys
            .decrypt(decoded.payload)
            .expect("client payload decrypts with our K2");
        let (netfn, cmd, rq_seq, data) = request_parts(&message);
        let (completion, reply_data) = match (netfn, cmd) {
            // Get Device ID (ipmitool asks after opening a session): IPMI 2.0, no OEM.
            (0x06, 0x01) => (
                0x00,
                vec![0x20, 0x81, 0x01, 0x00, 0x02, 0x1F, 0, 0, 0, 0, 0],
            ),
            (0x06, 0x3B) => (0x00, vec![data[0] & 0x0F]),
            (0x06, 0x3C) => {
                self.observed.sessions_closed.fetch_add(1, Ordering::SeqCst);
                (0x00, vec![])
            }
            (0x00, 0x01) => {
                let on = self.observed.power_on.load(Ordering::SeqCst);
                (0x00, vec![u8::from(on), 0x00, 0x40])
            }
            (0x00, 0x02) => {
                match data[0] {
                    0 | 5 => self.observed.power_on.store(false, Ordering::SeqCst),
                    1..=3 => self.observed.power_on.store(true, Ordering::SeqCst),
                    _ => return None,
                }
                (0x00, vec![])
            }
            _ => (0xC1, vec![]),
        };
        let reply = response_message(netfn, cmd, rq_seq, completion, &reply_data);
        self.sequence += 1;
        self.iv_counter = self.iv_counter.wrapping_add(1);
        let header = V20Header {
            payload_type: PayloadType::Ipmi,
            encrypted: true,
            authenticated: true,
            session_id: self.console_session_id,
            sequence: self.sequence,
        };
        let mut out = wire::encode_v20(&header, &keys.encrypt([self.iv_counter; 16], &reply));
        let signed = wire::append_integrity_trailer(&mut out);
        let code = keys.integrity_code(&out[signed]);
        out.extend_from_slice(&code);
        Some(out)
    }
}

fn ipmitool(port: u16, suite: u8, password: &str, command: &[&str]) -> (bool, String) {
    let binary = ["/usr/bin/ipmitool", "/usr/local/bin/ipmitool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("ipmitool is missing: install Debian package ipmitool");
    let out = Command::new(binary)
        .args(["-I", "lanplus", "-C", &suite.to_string(), "-H", "127.0.0.1"])
        .args([
            "-p",
            &port.to_string(),
            "-U",
            USER,
            "-E",
            "-N",
            "1",
            "-R",
            "2",
        ])
        .args(command)
        .env("IPMI_PASSWORD", password)
        .output()
        .expect("run ipmitool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn ipmitool_completes_suite_17_and_suite_3_sessions_with_the_ingot_core() {
    let observed = Arc::new(Observed::default());
    let port = Responder::start(observed.clone());
    for suite in [17u8, 3] {
        let (ok, text) = ipmitool(port, suite, PASSWORD, &["power", "status"]);
        assert!(ok, "ipmitool -C {suite} power status: {text}");
        assert_eq!(text.trim(), "Chassis Power is off");
        let (ok, text) = ipmitool(port, suite, PASSWORD, &["power", "on"]);
        assert!(ok, "ipmitool -C {suite} power on: {text}");
        assert!(observed.power_on.load(Ordering::SeqCst));
        let (ok, text) = ipmitool(port, suite, PASSWORD, &["power", "status"]);
        assert!(ok && text.trim() == "Chassis Power is on", "{text}");
        let (ok, text) = ipmitool(port, suite, PASSWORD, &["power", "off"]);
        assert!(ok, "ipmitool -C {suite} power off: {text}");
        assert!(!observed.power_on.load(Ordering::SeqCst));
    }
    assert_eq!(
        *observed.suites.lock().unwrap(),
        [17, 17, 17, 17, 3, 3, 3, 3]
    );
    // ipmitool closes each session; the responder decrypted and verified every Close Session.
    assert_eq!(observed.sessions_closed.load(Ordering::SeqCst), 8);
    let (ok, text) = ipmitool(port, 17, "wrong-password", &["power", "status"]);
    assert!(!ok, "a wrong password must fail: {text}");
}

/// Our driver prefers 17 when the BMC lists it, and reads what ipmitool reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_negotiates_suite_17_when_offered() {
    let observed = Arc::new(Observed::default());
    let port = Responder::start(observed.clone());
    let params = PowerParameters {
        power_address: Some(format!("127.0.0.1:{port}")),
        power_user: Some(USER.into()),
        power_pass: Some(PASSWORD.into()),
        ..Default::default()
    };
    let settings = IpmiSettings {
        call_timeout: Duration::from_secs(5),
        first_attempt_timeout: Duration::from_millis(300),
        ..IpmiSettings::default()
    };
    let driver = IpmiDriver::from_parameters(&params)
        .unwrap()
        .with_settings(settings.clone());
    assert_eq!(driver.power_state().await, Ok(PowerState::Off));
    assert_eq!(driver.negotiated_suite(), Some(CipherSuite::Suite17));
    driver.power_on().await.unwrap();
    let (ok, text) = ipmitool(port, 17, PASSWORD, &["power", "status"]);
    assert!(ok && text.trim() == "Chassis Power is on", "{text}");
    driver.power_off().await.unwrap();
    assert_eq!(driver.power_state().await, Ok(PowerState::Off));
    // Four driver sessions and one ipmitool session, all suite 17, all closed.
    assert_eq!(*observed.suites.lock().unwrap(), [17; 5]);
    assert_eq!(observed.sessions_closed.load(Ordering::SeqCst), 5);

    let wrong = IpmiDriver::from_parameters(&PowerParameters {
        power_pass: Some("wrong-password".into()),
        ..params
    })
    .unwrap()
    .with_settings(settings);
    assert_eq!(
        wrong.power_state().await,
        Err(PowerError::AuthFailed { user: USER.into() })
    );
}
