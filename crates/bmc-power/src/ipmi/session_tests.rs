//! Sans-IO handshake and session tests against a scripted BMC built from the same wire and crypto
//! primitives (those are pinned by byte fixtures and independent vectors in their own modules).

use super::commands::{self, Privilege, Request};
use super::crypto::{CipherSuite, RakpContext, SessionKeys};
use super::rakp::RmcpPlusStatus;
use super::session::*;
use super::wire::{self, AuthType, PayloadType, V15Header, V20Header, checksum, u32_le};

const BMC_SESSION_ID: u32 = 0x0BAD_CAFE;
const BMC_RANDOM: [u8; 16] = [0x42; 16];
const BMC_GUID: [u8; 16] = [0xA5; 16];

fn credentials(password: &str) -> Credentials {
    Credentials {
        username: b"admin".to_vec(),
        password: password.as_bytes().to_vec(),
    }
}

fn seed() -> HandshakeSeed {
    HandshakeSeed {
        console_session_id: 0x1234_5678,
        console_random: [7; 16],
        rng_seed: [9; 32],
    }
}

fn v20(payload_type: PayloadType, payload: &[u8]) -> Vec<u8> {
    wire::encode_v20(
        &V20Header {
            payload_type,
            encrypted: false,
            authenticated: false,
            session_id: 0,
            sequence: 0,
        },
        payload,
    )
}

/// A scripted RMCP+ BMC: supports `suites`, knows `password`; or answers suite-17 proposals
/// with suite-3 algorithms like pyghmi does.
struct ScriptedBmc {
    password: &'static [u8],
    supported: Vec<CipherSuite>,
    answer_wrong_algorithms: bool,
    suite: Option<CipherSuite>,
    console_session_id: u32,
    console_random: [u8; 16],
    role: u8,
    username: Vec<u8>,
    keys: Option<SessionKeys>,
}

impl ScriptedBmc {
    fn new(password: &'static [u8], supported: Vec<CipherSuite>) -> Self {
        Self {
            password,
            supported,
            answer_wrong_algorithms: false,
            suite: None,
            console_session_id: 0,
            console_random: [0; 16],
            role: 0,
            username: vec![],
            keys: None,
        }
    }

    fn context(&self) -> RakpContext<'_> {
        RakpContext {
            suite: self.suite.unwrap(),
            console_session_id: self.console_session_id,
            bmc_session_id: BMC_SESSION_ID,
            console_random: self.console_random,
            bmc_random: BMC_RANDOM,
            bmc_guid: BMC_GUID,
            role: self.role,
            username: &self.username,
        }
    }

    fn answer(&mut self, packet: &[u8]) -> Vec<u8> {
        if packet[5] & 0x3F == PayloadType::Ipmi as u8 {
            return self.answer_ipmi(packet);
        }
        let decoded = wire::decode_v20(packet, 0).expect("console packets decode");
        let p = decoded.payload;
        match decoded.header.payload_type {
            PayloadType::OpenSessionRequest => {
                let tag = p[0];
                self.console_session_id = u32_le(&p[4..8]);
                let auth = p[12];
                let proposed = if auth == 0x03 {
                    CipherSuite::Suite17
                } else {
                    CipherSuite::Suite3
                };
                let mut out = vec![tag, 0, 0x04, 0];
                out.extend_from_slice(&self.console_session_id.to_le_bytes());
                let answered = if self.answer_wrong_algorithms {
                    CipherSuite::Suite3
                } else if self.supported.contains(&proposed) {
                    proposed
                } else {
                    out[1] = 0x11;
                    return v20(PayloadType::OpenSessionResponse, &out);
                };
                self.suite = Some(answered);
                let (a, i, c) = answered.algorithms();
                out.extend_from_slice(&BMC_SESSION_ID.to_le_bytes());
                for (t, alg) in [(0u8, a), (1, i), (2, c)] {
                    out.extend_from_slice(&[t, 0, 0, 8, alg, 0, 0, 0]);
                }
                v20(PayloadType::OpenSessionResponse, &out)
            }
            PayloadType::Rakp1 => {
                let tag = p[0];
                self.console_random.copy_from_slice(&p[8..24]);
                self.role = p[24];
                self.username = p[28..28 + p[27] as usize].to_vec();
                let code = self.context().rakp2_auth_code(self.password);
                let mut out = vec![tag, 0, 0, 0];
                out.extend_from_slice(&self.console_session_id.to_le_bytes());
                out.extend_from_slice(&BMC_RANDOM);
                out.extend_from_slice(&BMC_GUID);
                out.extend_from_slice(&code);
                v20(PayloadType::Rakp2, &out)
            }
            PayloadType::Rakp3 => {
                let tag = p[0];
                assert_eq!(p[1], 0, "console reported an error in RAKP 3");
                let expected = self.context().rakp3_auth_code(self.password);
                let mut out = vec![tag, 0, 0, 0];
                out.extend_from_slice(&self.console_session_id.to_le_bytes());
                if p[8..] != expected[..] {
                    out[1] = RmcpPlusStatus::INVALID_INTEGRITY_CHECK_VALUE;
                    return v20(PayloadType::Rakp4, &out);
                }
                let sik = self.context().session_integrity_key(self.password);
                out.extend_from_slice(&self.context().rakp4_check_value(&sik));
                self.keys = Some(SessionKeys::derive(self.suite.unwrap(), sik));
                v20(PayloadType::Rakp4, &out)
            }
            other => panic!("unexpected payload {other:?}"),
        }
    }

    /// Decrypts a request and answers it with completion code 0 and data [0x01] (power on).
    fn answer_ipmi(&self, packet: &[u8]) -> Vec<u8> {
        let keys = self.keys.as_ref().unwrap();
        let decoded = wire::decode_v20(packet, keys.suite.integrity_len()).unwrap();
        assert_eq!(decoded.header.session_id, BMC_SESSION_ID);
        assert!(decoded.header.authenticated && decoded.header.encrypted);
        assert_eq!(keys.integrity_code(decoded.signed), decoded.auth_code);
        let request = keys.decrypt(decoded.payload).unwrap();
        let response = response_message(&request, 0x00, &[0x01, 0x00, 0x00]);
        let mut out = wire::encode_v20(
            &V20Header {
                payload_type: PayloadType::Ipmi,
                encrypted: true,
                authenticated: true,
                session_id: self.console_session_id,
                sequence: 1,
            },
            &keys.encrypt([3; 16], &response),
        );
        let signed = wire::append_integrity_trailer(&mut out);
        let code = keys.integrity_code(&out[signed]);
        out.extend_from_slice(&code);
        out
    }
}

/// The response message a BMC sends for request message `request`.
fn response_message(request: &[u8], completion_code: u8, data: &[u8]) -> Vec<u8> {
    let netfn = (request[1] >> 2) | 1;
    let mut out = vec![0x81, netfn << 2];
    out.push(checksum(&out));
    out.extend_from_slice(&[0x20, request[4], request[5], completion_code]);
    out.extend_from_slice(data);
    let sum = checksum(&out[3..]);
    out.push(sum);
    out
}

fn run_handshake(
    bmc: &mut ScriptedBmc,
    password: &str,
    suites: &[CipherSuite],
) -> Result<LanplusSession, HandshakeError> {
    let (mut handshake, mut packet) = LanplusHandshake::start(
        credentials(password),
        Privilege::Administrator,
        suites,
        seed(),
    )?;
    for _ in 0..6 {
        let answer = bmc.answer(&packet);
        match handshake.handle(&answer)? {
            HandshakeStep::Send(next) => packet = next,
            HandshakeStep::Established(session) => return Ok(session),
        }
    }
    panic!("handshake did not finish");
}

fn status_round_trip(bmc: &ScriptedBmc, session: &mut LanplusSession) {
    let request = commands::get_chassis_status();
    let rq_seq = session.next_rq_seq();
    let packet = session.wrap(&request, rq_seq);
    let answer = bmc.answer_ipmi(&packet);
    let response = session.unwrap(&answer, &request, rq_seq).unwrap();
    assert_eq!(response.completion_code, 0);
    assert_eq!(response.data, [0x01, 0x00, 0x00]);
    // The same answer does not match the next request's sequence number.
    let next = session.next_rq_seq();
    assert!(matches!(
        session.unwrap(&answer, &request, next),
        Err(UnwrapError::NotOurs(_))
    ));
    // Any flipped bit breaks the AuthCode or the framing; never a panic, never accepted.
    for i in 4..answer.len() {
        let mut corrupted = answer.clone();
        corrupted[i] ^= 0x01;
        assert!(
            session.unwrap(&corrupted, &request, rq_seq).is_err(),
            "flip at {i} accepted"
        );
    }
    for cut in 0..answer.len() {
        assert!(session.unwrap(&answer[..cut], &request, rq_seq).is_err());
    }
}

#[test]
fn suite_17_handshake_and_encrypted_round_trip() {
    let mut bmc = ScriptedBmc::new(b"password", vec![CipherSuite::Suite3, CipherSuite::Suite17]);
    let suites = [CipherSuite::Suite17, CipherSuite::Suite3];
    let mut session = run_handshake(&mut bmc, "password", &suites).unwrap();
    assert_eq!(session.suite(), CipherSuite::Suite17);
    assert_eq!(session.bmc_session_id(), BMC_SESSION_ID);
    status_round_trip(&bmc, &mut session);
}

#[test]
fn suite_3_handshake_and_encrypted_round_trip() {
    let mut bmc = ScriptedBmc::new(b"password", vec![CipherSuite::Suite3]);
    let mut session = run_handshake(&mut bmc, "password", &[CipherSuite::Suite3]).unwrap();
    assert_eq!(session.suite(), CipherSuite::Suite3);
    status_round_trip(&bmc, &mut session);
}

#[test]
fn falls_back_to_suite_3_when_17_is_refused_or_answered_with_other_algorithms() {
    let suites = [CipherSuite::Suite17, CipherSuite::Suite3];
    let mut refusing = ScriptedBmc::new(b"password", vec![CipherSuite::Suite3]);
    assert_eq!(
        run_handshake(&mut refusing, "password", &suites)
            .unwrap()
            .suite(),
        CipherSuite::Suite3
    );
    let mut pyghmi_like = ScriptedBmc::new(b"password", vec![CipherSuite::Suite3]);
    pyghmi_like.answer_wrong_algorithms = true;
    // The first answer (suite-3 algorithms to a suite-17 proposal) triggers a new proposal.
    let session = run_handshake(&mut pyghmi_like, "password", &suites).unwrap();
    assert_eq!(session.suite(), CipherSuite::Suite3);
    let mut none = ScriptedBmc::new(b"password", vec![]);
    assert_eq!(
        run_handshake(&mut none, "password", &suites).unwrap_err(),
        HandshakeError::NoCommonCipherSuite { tried: vec![17, 3] }
    );
}

#[test]
fn wrong_password_fails_at_rakp2_and_prepares_a_refusal() {
    let mut bmc = ScriptedBmc::new(b"password", vec![CipherSuite::Suite3]);
    let (mut handshake, packet) = LanplusHandshake::start(
        credentials("wrong"),
        Privilege::Administrator,
        &[CipherSuite::Suite3],
        seed(),
    )
    .unwrap();
    let HandshakeStep::Send(rakp1) = handshake.handle(&bmc.answer(&packet)).unwrap() else {
        panic!("expected RAKP 1")
    };
    let error = handshake.handle(&bmc.answer(&rakp1)).unwrap_err();
    assert_eq!(
        error,
        HandshakeError::AuthenticationFailed { stage: "RAKP 2" }
    );
    assert!(error.is_fatal());
    let refusal = wire::decode_v20(handshake.abort_packet().unwrap(), 0).unwrap();
    assert_eq!(refusal.header.payload_type, PayloadType::Rakp3);
    assert_eq!(
        refusal.payload[1],
        RmcpPlusStatus::INVALID_INTEGRITY_CHECK_VALUE
    );
}

#[test]
fn stray_and_malformed_handshake_packets_are_not_fatal() {
    let mut bmc = ScriptedBmc::new(b"password", vec![CipherSuite::Suite3]);
    let (mut handshake, packet) = LanplusHandshake::start(
        credentials("password"),
        Privilege::Administrator,
        &[CipherSuite::Suite3],
        seed(),
    )
    .unwrap();
    let answer = bmc.answer(&packet);
    for cut in 0..answer.len() {
        let error = handshake.handle(&answer[..cut]).unwrap_err();
        assert!(!error.is_fatal(), "truncated at {cut}: {error:?}");
    }
    // A RAKP 4 while waiting for the Open Session Response is stray.
    let stray = v20(PayloadType::Rakp4, &[1, 0, 0, 0, 0x78, 0x56, 0x34, 0x12]);
    assert!(matches!(
        handshake.handle(&stray),
        Err(HandshakeError::Stray(_))
    ));
    // A late answer with another tag is stray too.
    let mut other_tag = answer.clone();
    other_tag[16] ^= 0xFF;
    assert!(matches!(
        handshake.handle(&other_tag),
        Err(HandshakeError::Stray(_))
    ));
    // After all that the real answer is still accepted; only it counts as progress.
    assert_eq!(handshake.answers_accepted(), 0);
    assert!(matches!(
        handshake.handle(&answer),
        Ok(HandshakeStep::Send(_))
    ));
    assert_eq!(handshake.answers_accepted(), 1);
    assert_eq!(handshake.retransmit()[5], PayloadType::Rakp1 as u8);
}

#[test]
fn rejected_open_session_status_is_typed() {
    let (mut handshake, _) = LanplusHandshake::start(
        credentials("password"),
        Privilege::Administrator,
        &[CipherSuite::Suite3],
        seed(),
    )
    .unwrap();
    let refusal = v20(
        PayloadType::OpenSessionResponse,
        &[1, 0x01, 0, 0, 0x78, 0x56, 0x34, 0x12],
    );
    assert_eq!(
        handshake.handle(&refusal).unwrap_err(),
        HandshakeError::Rejected {
            stage: "Open Session Request",
            status: RmcpPlusStatus(0x01)
        }
    );
}

#[test]
fn sessionless_round_trip_in_both_formats() {
    for format in [SessionlessFormat::V15, SessionlessFormat::V20] {
        let mut codec = Sessionless::new(format);
        let request = commands::get_channel_auth_capabilities(true, Privilege::Administrator);
        let rq_seq = codec.next_rq_seq();
        let packet = codec.wrap(&request, rq_seq);
        let message = match format {
            SessionlessFormat::V15 => wire::decode_v15(&packet).unwrap().message.to_vec(),
            SessionlessFormat::V20 => wire::decode_v20(&packet, 0).unwrap().payload.to_vec(),
        };
        let reply = response_message(&message, 0, &[0x01, 0x97, 0x04, 0x03, 0, 0, 0, 0]);
        // The BMC answers in IPMI 1.5 format either way.
        let answer = wire::encode_v15(
            &V15Header {
                auth_type: AuthType::None,
                sequence: 0,
                session_id: 0,
                auth_code: None,
            },
            &reply,
        );
        let response = codec.unwrap(&answer, &request, rq_seq).unwrap();
        assert_eq!(response.netfn, 0x07);
        assert_eq!(response.data[1], 0x97);
        let other: Request = commands::get_chassis_status();
        assert!(codec.unwrap(&answer, &other, rq_seq).is_err());
    }
}

/// IPMI 1.5: challenge, activation with an MD5 AuthCode, then a signed request.
#[test]
fn lan15_md5_handshake_and_session() {
    let password = padded16(b"password");
    let creds = credentials("password");
    let (mut handshake, challenge_packet) =
        Lan15Handshake::start(&creds, AuthType::Md5, Privilege::Administrator, 0x100);
    let challenge_request = wire::decode_v15(&challenge_packet).unwrap();
    assert_eq!(challenge_request.header.auth_type, AuthType::None);
    assert_eq!(challenge_request.message[5], 0x39);

    let mut data = 0x0000_0077u32.to_le_bytes().to_vec();
    data.extend_from_slice(&[0x33; 16]);
    let reply = response_message(challenge_request.message, 0, &data);
    let none = V15Header {
        auth_type: AuthType::None,
        sequence: 0,
        session_id: 0,
        auth_code: None,
    };
    let HandshakeStep::Send(activate) = handshake.handle(&wire::encode_v15(&none, &reply)).unwrap()
    else {
        panic!("expected Activate Session")
    };
    let activate = wire::decode_v15(&activate).unwrap();
    assert_eq!(activate.header.session_id, 0x77);
    let expected_code =
        super::crypto::v15_auth_code(AuthType::Md5, &password, 0x77, activate.message, 0);
    assert_eq!(activate.header.auth_code, expected_code);
    assert_eq!(&activate.message[8..24], &[0x33; 16], "challenge echoed");

    // Activated: session 0x99, our next sequence number 0x500.
    let reply = response_message(
        activate.message,
        0,
        &[0x02, 0x99, 0, 0, 0, 0x00, 0x05, 0, 0, 0x04],
    );
    let code = super::crypto::v15_auth_code(AuthType::Md5, &password, 0x77, &reply, 0);
    let header = V15Header {
        auth_type: AuthType::Md5,
        sequence: 0,
        session_id: 0x77,
        auth_code: code,
    };
    let HandshakeStep::Established(mut session) = handshake
        .handle(&wire::encode_v15(&header, &reply))
        .unwrap()
    else {
        panic!("expected an activated session")
    };
    assert_eq!(session.session_id(), 0x99);

    let request = commands::set_session_privilege(Privilege::Administrator);
    let rq_seq = session.next_rq_seq();
    let packet = wire::decode_v15(&session.wrap(&request, rq_seq))
        .unwrap()
        .message
        .to_vec();
    let sent = session.wrap(&request, rq_seq);
    let sent = wire::decode_v15(&sent).unwrap();
    // Each packet consumes a sequence number starting at the BMC's choice.
    assert_eq!(sent.header.sequence, 0x501);
    assert_eq!(sent.header.session_id, 0x99);
    let reply = response_message(&packet, 0, &[0x04]);
    let code = super::crypto::v15_auth_code(AuthType::Md5, &password, 0x99, &reply, 9);
    let header = V15Header {
        auth_type: AuthType::Md5,
        sequence: 9,
        session_id: 0x99,
        auth_code: code,
    };
    let answer = wire::encode_v15(&header, &reply);
    assert_eq!(
        session.unwrap(&answer, &request, rq_seq).unwrap().data,
        [0x04]
    );
    let mut forged = answer.clone();
    forged[14] ^= 1; // inside the AuthCode
    assert_eq!(
        session.unwrap(&forged, &request, rq_seq),
        Err(UnwrapError::Integrity)
    );
}

#[test]
fn lan15_unknown_user_is_an_authentication_failure() {
    let (mut handshake, packet) = Lan15Handshake::start(
        &credentials("x"),
        AuthType::Md5,
        Privilege::Administrator,
        1,
    );
    let request = wire::decode_v15(&packet).unwrap();
    let reply = response_message(request.message, 0x81, &[]);
    let none = V15Header {
        auth_type: AuthType::None,
        sequence: 0,
        session_id: 0,
        auth_code: None,
    };
    assert!(matches!(
        handshake.handle(&wire::encode_v15(&none, &reply)),
        Err(HandshakeError::AuthenticationFailed { .. })
    ));
}
