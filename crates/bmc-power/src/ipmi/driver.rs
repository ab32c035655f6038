//! The async shell: one UDP socket per call, bounded retries with backoff, a per-call deadline,
//! and a session that is always closed once it was opened.

use super::commands::{
    self, BootFlags, BootTarget, ChannelAuthCapabilities, ChassisControl, ChassisStatus,
    CompletionCodeError, Privilege, Request, Response,
};
use super::crypto::CipherSuite;
use super::session::{
    Credentials, HandshakeError, HandshakeSeed, HandshakeStep, Lan15Handshake, Lan15Session,
    LanplusHandshake, LanplusSession, MessageCodec, Sessionless, SessionlessFormat,
};
use super::wire::AuthType;
use crate::{PowerDriver, PowerError};
use async_trait::async_trait;
use ingot_types::power::{BootDevice, BootPersistence, PowerParameters, PowerState};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};

/// The standard RMCP port.
pub const DEFAULT_PORT: u16 = 623;
/// IPMI 2.0 passwords are at most 20 bytes, IPMI 1.5 ones 16; user names 16.
const MAX_PASSWORD_V2: usize = 20;
const MAX_PASSWORD_V15: usize = 16;
const MAX_USERNAME: usize = 16;
/// Fresh RMCP+ handshakes after one stalled midway (within the call deadline).
const HANDSHAKE_RESTARTS: u32 = 2;
/// Sends per RAKP step once the BMC has answered the Open Session Request (and per IPMI 1.5
/// Activate Session).
const RAKP_ATTEMPTS: u32 = 2;

/// `power_driver`: `LAN_2_0` (lanplus, the default) or `LAN` (IPMI 1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpmiProtocol {
    Lanplus,
    Lan15,
}

impl IpmiProtocol {
    pub fn from_power_driver(value: Option<&str>) -> Result<Self, PowerError> {
        match value.map(str::trim) {
            None | Some("") | Some("LAN_2_0") => Ok(IpmiProtocol::Lanplus),
            Some("LAN") => Ok(IpmiProtocol::Lan15),
            Some(other) => Err(PowerError::InvalidParameter {
                field: "power_driver",
                reason: format!("{other:?} is neither LAN_2_0 nor LAN"),
            }),
        }
    }
}

/// Timing and negotiation knobs. The defaults suit a BMC on a routed management network.
#[derive(Debug, Clone)]
pub struct IpmiSettings {
    /// Bound on a whole driver call: session setup, commands and all retries.
    pub call_timeout: Duration,
    /// How long the first attempt of each exchange waits for an answer; doubles per retry.
    pub first_attempt_timeout: Duration,
    pub max_attempt_timeout: Duration,
    /// Sends per exchange (first send plus retransmissions).
    pub max_attempts: u32,
    /// How long closing the session may take; closing is best effort.
    pub close_timeout: Duration,
    /// RMCP+ cipher suites in preference order.
    pub cipher_suites: Vec<CipherSuite>,
    /// Set the EFI bit in boot flags (MAAS `ipmi_boot_type = efi`).
    pub efi_boot: bool,
}

impl Default for IpmiSettings {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(20),
            first_attempt_timeout: Duration::from_secs(1),
            max_attempt_timeout: Duration::from_secs(4),
            max_attempts: 4,
            close_timeout: Duration::from_secs(1),
            cipher_suites: vec![CipherSuite::Suite17, CipherSuite::Suite3],
            efi_boot: false,
        }
    }
}

/// IPMI power driver for one BMC.
pub struct IpmiDriver {
    /// `power_address` as given, for error messages.
    address: String,
    host: String,
    port: u16,
    credentials: Credentials,
    protocol: IpmiProtocol,
    settings: IpmiSettings,
    /// The suite negotiated by the last successful session, tried first next time.
    negotiated_suite: Mutex<Option<CipherSuite>>,
}

impl std::fmt::Debug for IpmiDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmiDriver")
            .field("address", &self.address)
            .field("credentials", &self.credentials)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Splits `host`, `host:port`, `v6addr`, `[v6addr]` or `[v6addr]:port`.
fn parse_address(address: &str) -> Result<(String, u16), PowerError> {
    let invalid = |reason: &str| PowerError::InvalidParameter {
        field: "power_address",
        reason: format!("{address:?}: {reason}"),
    };
    let address = address.trim();
    if address.is_empty() {
        return Err(PowerError::MissingParameter {
            field: "power_address",
        });
    }
    let parse_port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("bad port"))
    };
    if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid("unclosed '['"))?;
        let port = match after {
            "" => DEFAULT_PORT,
            _ => parse_port(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| invalid("junk after ']'"))?,
            )?,
        };
        return Ok((host.to_owned(), port));
    }
    if address.parse::<Ipv6Addr>().is_ok() {
        return Ok((address.to_owned(), DEFAULT_PORT));
    }
    match address.split_once(':') {
        Some((host, port)) if !host.is_empty() => Ok((host.to_owned(), parse_port(port)?)),
        Some(_) => Err(invalid("empty host")),
        None => Ok((address.to_owned(), DEFAULT_PORT)),
    }
}

impl IpmiDriver {
    pub fn from_parameters(params: &PowerParameters) -> Result<Self, PowerError> {
        let address = params
            .power_address
            .clone()
            .ok_or(PowerError::MissingParameter {
                field: "power_address",
            })?;
        let (host, port) = parse_address(&address)?;
        let protocol = IpmiProtocol::from_power_driver(params.power_driver.as_deref())?;
        // MAAS allows an empty user (anonymous login); a missing password is an error.
        let username = params.power_user.clone().unwrap_or_default().into_bytes();
        let password = params
            .power_pass
            .clone()
            .ok_or(PowerError::MissingParameter {
                field: "power_pass",
            })?
            .into_bytes();
        if username.len() > MAX_USERNAME {
            return Err(PowerError::InvalidParameter {
                field: "power_user",
                reason: format!("IPMI user names are at most {MAX_USERNAME} bytes"),
            });
        }
        let max_password = match protocol {
            IpmiProtocol::Lanplus => MAX_PASSWORD_V2,
            IpmiProtocol::Lan15 => MAX_PASSWORD_V15,
        };
        if password.len() > max_password {
            return Err(PowerError::InvalidParameter {
                field: "power_pass",
                reason: format!("this IPMI version allows at most {max_password} bytes"),
            });
        }
        Ok(Self {
            address,
            host,
            port,
            credentials: Credentials { username, password },
            protocol,
            settings: IpmiSettings::default(),
            negotiated_suite: Mutex::new(None),
        })
    }

    pub fn with_settings(mut self, settings: IpmiSettings) -> Self {
        self.settings = settings;
        self
    }

    pub fn protocol(&self) -> IpmiProtocol {
        self.protocol
    }

    /// The cipher suite the last successful RMCP+ session used.
    pub fn negotiated_suite(&self) -> Option<CipherSuite> {
        *self.negotiated_suite.lock().unwrap()
    }

    fn user(&self) -> String {
        String::from_utf8_lossy(&self.credentials.username).into_owned()
    }

    fn auth_failed(&self) -> PowerError {
        PowerError::AuthFailed { user: self.user() }
    }

    fn unreachable(&self, detail: impl Into<String>) -> PowerError {
        PowerError::Unreachable {
            address: self.address.clone(),
            detail: detail.into(),
        }
    }

    fn map_handshake_error(&self, error: HandshakeError) -> PowerError {
        match error {
            HandshakeError::AuthenticationFailed { .. } => self.auth_failed(),
            HandshakeError::Rejected { status, .. } if status.is_credentials_failure() => {
                self.auth_failed()
            }
            HandshakeError::Rejected { stage, status } => PowerError::Bmc {
                code: format!("rmcp+ {:#04x}", status.0),
                message: format!("{stage} rejected: {}", status.describe()),
            },
            HandshakeError::NoCommonCipherSuite { .. } => PowerError::Unsupported {
                operation: "RMCP+ cipher suite 17 or 3",
            },
            HandshakeError::Completion(error) => bmc_error(error),
            other => PowerError::Bmc {
                code: "protocol".into(),
                message: other.to_string(),
            },
        }
    }

    /// Runs one operation in its own session, within the call deadline. The session is closed
    /// whatever the operation's outcome.
    async fn execute(&self, operation: Operation) -> Result<Outcome, PowerError> {
        let deadline = Instant::now() + self.settings.call_timeout;
        let timed_out = || PowerError::Timeout {
            address: self.address.clone(),
            after: self.settings.call_timeout,
        };
        let mut link = timeout_at(deadline, self.connect())
            .await
            .map_err(|_| timed_out())??;
        let mut session = timeout_at(deadline, self.open_session(&mut link))
            .await
            .map_err(|_| timed_out())??;
        let outcome = timeout_at(deadline, self.perform(&mut link, &mut session, operation))
            .await
            .map_err(|_| timed_out())
            .and_then(|result| result);
        self.close_session(&mut link, &mut session).await;
        outcome
    }

    async fn connect(&self) -> Result<Link, PowerError> {
        let target = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.unreachable(format!("cannot resolve {}: {e}", self.host)))?
            .next()
            .ok_or_else(|| self.unreachable(format!("{} resolves to no address", self.host)))?;
        // Bind the loopback when the BMC is local so tests never open a socket on a real
        // interface; otherwise the wildcard of the target's family.
        let bind_ip = match (target.ip().is_loopback(), target.ip()) {
            (true, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (true, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (false, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (false, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0))
            .await
            .map_err(|e| self.unreachable(format!("cannot open a UDP socket: {e}")))?;
        // A connected socket only receives from the BMC and reports ICMP port unreachable.
        socket
            .connect(target)
            .await
            .map_err(|e| self.unreachable(format!("cannot route to {target}: {e}")))?;
        Ok(Link {
            socket,
            refused: false,
        })
    }

    async fn open_session(&self, link: &mut Link) -> Result<ActiveSession, PowerError> {
        match self.protocol {
            IpmiProtocol::Lanplus => self
                .open_lanplus(link)
                .await
                .map(|s| ActiveSession::Lanplus(Box::new(s))),
            IpmiProtocol::Lan15 => self.open_lan15(link).await.map(ActiveSession::Lan15),
        }
    }

    async fn sessionless_call(
        &self,
        link: &mut Link,
        format: SessionlessFormat,
        request: Request,
        attempts: u32,
    ) -> Result<Vec<u8>, PowerError> {
        let mut codec = Sessionless::new(format);
        let rq_seq = codec.next_rq_seq();
        let mut exchange = CommandExchange {
            codec: &mut codec,
            request: &request,
            rq_seq,
        };
        let response = self.round_trip(link, &mut exchange, attempts).await?;
        response.into_data(&request).map_err(bmc_error)
    }

    async fn channel_capabilities(
        &self,
        link: &mut Link,
        ipmi_v2: bool,
    ) -> Result<ChannelAuthCapabilities, PowerError> {
        let request = commands::get_channel_auth_capabilities(ipmi_v2, Privilege::Administrator);
        let data = self
            .sessionless_call(
                link,
                SessionlessFormat::V15,
                request,
                self.settings.max_attempts,
            )
            .await?;
        ChannelAuthCapabilities::parse(&data).map_err(|e| PowerError::Bmc {
            code: "malformed".into(),
            message: format!("Get Channel Authentication Capabilities: {e}"),
        })
    }

    /// The cipher suites the BMC lists, or `None` if it does not answer the query.
    async fn offered_suites(&self, link: &mut Link) -> Option<Vec<u8>> {
        let mut records = Vec::new();
        // 64 records of 16 bytes cover every suite a BMC can list.
        for index in 0..64u8 {
            let request = commands::get_channel_cipher_suites(index);
            // Optional query: one attempt, so a BMC that ignores it costs little.
            let data = self
                .sessionless_call(link, SessionlessFormat::V15, request, 1)
                .await
                .ok()?;
            let (chunk, more) = commands::cipher_suite_chunk(&data).ok()?;
            records.extend_from_slice(chunk);
            if !more {
                break;
            }
        }
        commands::parse_cipher_suite_ids(&records).ok()
    }

    async fn open_lanplus(&self, link: &mut Link) -> Result<LanplusSession, PowerError> {
        let capabilities = self.channel_capabilities(link, true).await?;
        if !capabilities.supports_ipmi_v2 {
            return Err(PowerError::Unsupported {
                operation: "IPMI 2.0 (RMCP+) sessions; set power_driver=LAN for IPMI 1.5",
            });
        }
        let mut suites = self.settings.cipher_suites.clone();
        let cached = self.negotiated_suite();
        if let Some(cached) = cached.filter(|s| suites.contains(s)) {
            suites.retain(|s| *s != cached);
            suites.insert(0, cached);
        } else if let Some(offered) = self.offered_suites(link).await {
            tracing::debug!(address = %self.address, ?offered, "BMC cipher suites");
            suites.retain(|s| offered.contains(&s.id()));
            if suites.is_empty() {
                return Err(PowerError::Unsupported {
                    operation: "RMCP+ cipher suite 17 or 3",
                });
            }
        }
        let mut restarts = 0;
        loop {
            let (mut handshake, first) = LanplusHandshake::start(
                self.credentials.clone(),
                Privilege::Administrator,
                &suites,
                HandshakeSeed::random(),
            )
            .map_err(|e| self.map_handshake_error(e))?;
            match self
                .run_lanplus_handshake(link, &mut handshake, first)
                .await
            {
                Ok(session) => {
                    tracing::debug!(address = %self.address, suite = session.suite().id(), "RMCP+ session open");
                    *self.negotiated_suite.lock().unwrap() = Some(session.suite());
                    return Ok(session);
                }
                // The BMC answered earlier steps, then went silent: typically a lost RAKP 4,
                // which BMCs do not resend for a duplicate RAKP 3. Start over with a fresh
                // session (the half-open one expires on the BMC).
                Err(PowerError::Timeout { .. })
                    if handshake.answers_accepted() > 0 && restarts < HANDSHAKE_RESTARTS =>
                {
                    restarts += 1;
                    tracing::debug!(address = %self.address, restarts, "restarting the RMCP+ handshake");
                    if let Some(suite) = handshake.suite() {
                        suites = vec![suite];
                    }
                }
                Err(error) => {
                    if let Some(abort) = handshake.abort_packet() {
                        // Best effort: lets the BMC free the half-open session at once.
                        let _ = link.socket.send(abort).await;
                    }
                    return Err(error);
                }
            }
        }
    }

    async fn run_lanplus_handshake(
        &self,
        link: &mut Link,
        handshake: &mut LanplusHandshake,
        first: Vec<u8>,
    ) -> Result<LanplusSession, PowerError> {
        let mut packet = Some(first);
        loop {
            // Once the BMC has answered, a silent RAKP step is usually a lost answer that the
            // BMC will not resend for a duplicate request: give up early and let the caller
            // restart the handshake instead of sitting through the whole backoff.
            let attempts = if handshake.answers_accepted() > 0 {
                self.settings.max_attempts.min(RAKP_ATTEMPTS)
            } else {
                self.settings.max_attempts
            };
            let mut exchange = LanplusHandshakeExchange {
                handshake,
                first: packet.take(),
            };
            match self.round_trip(link, &mut exchange, attempts).await? {
                HandshakeStep::Send(next) => packet = Some(next),
                HandshakeStep::Established(session) => return Ok(session),
            }
        }
    }

    async fn open_lan15(&self, link: &mut Link) -> Result<Lan15Session, PowerError> {
        let capabilities = self.channel_capabilities(link, false).await?;
        let auth_type = if capabilities.supports(AuthType::Md5) {
            AuthType::Md5
        } else if capabilities.supports(AuthType::StraightPassword) {
            AuthType::StraightPassword
        } else {
            return Err(PowerError::Unsupported {
                operation: "IPMI 1.5 sessions without MD5 or straight-password authentication",
            });
        };
        // A wrong password and a lost Activate Session answer look the same (silence), so a
        // silent activation gets one fresh challenge before it counts as a wrong password.
        let mut silent_activations = 0;
        loop {
            let initial_sequence = rand::random::<u32>().max(1);
            let (mut handshake, first) = Lan15Handshake::start(
                &self.credentials,
                auth_type,
                Privilege::Administrator,
                initial_sequence,
            );
            match self.run_lan15_handshake(link, &mut handshake, first).await {
                Ok(session) => return Ok(session),
                // The BMC answered the challenge but ignores the signed Activate Session: 1.5
                // BMCs drop packets whose AuthCode does not verify, i.e. the password is wrong.
                Err(PowerError::Timeout { .. }) if handshake.awaiting_activation() => {
                    silent_activations += 1;
                    if silent_activations > 1 {
                        return Err(self.auth_failed());
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn run_lan15_handshake(
        &self,
        link: &mut Link,
        handshake: &mut Lan15Handshake,
        first: Vec<u8>,
    ) -> Result<Lan15Session, PowerError> {
        let mut packet = Some(first);
        loop {
            // A duplicate Activate Session is not answered either: retry it once at most.
            let attempts = if handshake.awaiting_activation() {
                self.settings.max_attempts.min(RAKP_ATTEMPTS)
            } else {
                self.settings.max_attempts
            };
            let mut exchange = Lan15HandshakeExchange {
                handshake,
                first: packet.take(),
            };
            match self.round_trip(link, &mut exchange, attempts).await? {
                HandshakeStep::Send(next) => packet = Some(next),
                HandshakeStep::Established(session) => return Ok(session),
            }
        }
    }

    async fn call(
        &self,
        link: &mut Link,
        session: &mut ActiveSession,
        request: Request,
    ) -> Result<Vec<u8>, PowerError> {
        let codec = session.codec();
        let rq_seq = codec.next_rq_seq();
        let mut exchange = CommandExchange {
            codec,
            request: &request,
            rq_seq,
        };
        let response = self
            .round_trip(link, &mut exchange, self.settings.max_attempts)
            .await?;
        response.into_data(&request).map_err(bmc_error)
    }

    async fn perform(
        &self,
        link: &mut Link,
        session: &mut ActiveSession,
        operation: Operation,
    ) -> Result<Outcome, PowerError> {
        self.call(
            link,
            session,
            commands::set_session_privilege(Privilege::Administrator),
        )
        .await?;
        match operation {
            Operation::Status => {
                let data = self
                    .call(link, session, commands::get_chassis_status())
                    .await?;
                let status = ChassisStatus::parse(&data).map_err(|e| PowerError::Bmc {
                    code: "malformed".into(),
                    message: format!("Get Chassis Status: {e}"),
                })?;
                Ok(Outcome::Power(if status.power_on {
                    PowerState::On
                } else {
                    PowerState::Off
                }))
            }
            Operation::Control(action) => {
                self.call(link, session, commands::chassis_control(action))
                    .await?;
                Ok(Outcome::Done)
            }
            Operation::Cycle => {
                // Chassis Control "cycle" is refused by many BMCs when the chassis is off.
                let data = self
                    .call(link, session, commands::get_chassis_status())
                    .await?;
                let on = ChassisStatus::parse(&data).is_ok_and(|s| s.power_on);
                let action = if on {
                    ChassisControl::PowerCycle
                } else {
                    ChassisControl::PowerUp
                };
                self.call(link, session, commands::chassis_control(action))
                    .await?;
                Ok(Outcome::Done)
            }
            Operation::BootFlags(flags) => {
                self.call(link, session, commands::set_boot_flags(flags))
                    .await?;
                Ok(Outcome::Done)
            }
        }
    }

    /// Best effort, bounded by `close_timeout`: errors are logged, never returned, so they do not
    /// hide the operation's own outcome.
    async fn close_session(&self, link: &mut Link, session: &mut ActiveSession) {
        let request = commands::close_session(session.bmc_session_id());
        let deadline = Instant::now() + self.settings.close_timeout;
        match timeout_at(deadline, self.call(link, session, request)).await {
            Ok(Ok(_)) => tracing::debug!(address = %self.address, "IPMI session closed"),
            Ok(Err(error)) => {
                tracing::debug!(address = %self.address, %error, "closing the IPMI session failed")
            }
            Err(_) => {
                tracing::debug!(address = %self.address, "closing the IPMI session timed out")
            }
        }
    }

    /// Sends `exchange`'s packet and waits for an accepted answer, retransmitting with
    /// exponential backoff up to `attempts` sends.
    async fn round_trip<E: Exchange>(
        &self,
        link: &mut Link,
        exchange: &mut E,
        attempts: u32,
    ) -> Result<E::Output, PowerError> {
        let started = Instant::now();
        let mut wait = self.settings.first_attempt_timeout;
        let mut buffer = vec![0u8; 2048];
        // One ICMP port unreachable may be stale (from an earlier packet); two attempts in a
        // row refused mean nothing listens there, so stop retrying.
        let mut refused_in_a_row = 0;
        for attempt in 0..attempts.max(1) {
            if refused_in_a_row >= 2 {
                break;
            }
            let mut refused_now = false;
            let packet = exchange.packet();
            if attempt > 0 {
                tracing::debug!(address = %self.address, attempt, "retransmitting IPMI packet");
            }
            if let Err(error) = link.socket.send(&packet).await {
                if error.kind() != io::ErrorKind::ConnectionRefused {
                    return Err(self.unreachable(format!("send failed: {error}")));
                }
                link.refused = true;
                refused_now = true;
            }
            let attempt_end = Instant::now() + wait;
            loop {
                let received = match timeout_at(attempt_end, link.socket.recv(&mut buffer)).await {
                    Err(_) => break,
                    Ok(received) => received,
                };
                match received {
                    Ok(len) => match exchange.accept(&buffer[..len]) {
                        Verdict::Done(output) => return Ok(output),
                        Verdict::Ignore(reason) => {
                            tracing::debug!(address = %self.address, %reason, "ignoring IPMI packet")
                        }
                        Verdict::Fail(error) => return Err(self.map_exchange_error(error)),
                    },
                    Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                        // ICMP port unreachable. Keep the backoff rhythm: the error may be stale.
                        link.refused = true;
                        refused_now = true;
                        tokio::time::sleep_until(attempt_end).await;
                        break;
                    }
                    Err(error) => return Err(self.unreachable(format!("receive failed: {error}"))),
                }
            }
            refused_in_a_row = if refused_now { refused_in_a_row + 1 } else { 0 };
            wait = (wait * 2).min(self.settings.max_attempt_timeout);
        }
        if link.refused {
            Err(self.unreachable("ICMP port unreachable: nothing answers IPMI on that port"))
        } else {
            Err(PowerError::Timeout {
                address: self.address.clone(),
                after: started.elapsed(),
            })
        }
    }

    fn map_exchange_error(&self, error: ExchangeError) -> PowerError {
        match error {
            ExchangeError::Handshake(error) => self.map_handshake_error(error),
        }
    }
}

fn bmc_error(error: CompletionCodeError) -> PowerError {
    PowerError::Bmc {
        code: format!("{:#04x}", error.code),
        message: error.to_string(),
    }
}

/// The UDP socket of one call.
struct Link {
    socket: UdpSocket,
    /// An ICMP port unreachable was seen: report Unreachable rather than Timeout.
    refused: bool,
}

enum ActiveSession {
    // Boxed: the RMCP+ session carries its keys and IV generator, the 1.5 one a few words.
    Lanplus(Box<LanplusSession>),
    Lan15(Lan15Session),
}

impl ActiveSession {
    fn codec(&mut self) -> &mut (dyn MessageCodec + Send) {
        match self {
            ActiveSession::Lanplus(session) => session.as_mut(),
            ActiveSession::Lan15(session) => session,
        }
    }

    fn bmc_session_id(&self) -> u32 {
        match self {
            ActiveSession::Lanplus(session) => session.bmc_session_id(),
            ActiveSession::Lan15(session) => session.session_id(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Operation {
    Status,
    Control(ChassisControl),
    Cycle,
    BootFlags(BootFlags),
}

enum Outcome {
    Done,
    Power(PowerState),
}

enum ExchangeError {
    Handshake(HandshakeError),
}

enum Verdict<T> {
    Done(T),
    Ignore(String),
    Fail(ExchangeError),
}

/// One request/answer pair over UDP, as the retry loop sees it.
trait Exchange {
    type Output;
    /// The packet for the next attempt.
    fn packet(&mut self) -> Vec<u8>;
    fn accept(&mut self, packet: &[u8]) -> Verdict<Self::Output>;
}

struct CommandExchange<'a> {
    codec: &'a mut (dyn MessageCodec + Send),
    request: &'a Request,
    rq_seq: u8,
}

impl Exchange for CommandExchange<'_> {
    type Output = Response;

    fn packet(&mut self) -> Vec<u8> {
        self.codec.wrap(self.request, self.rq_seq)
    }

    fn accept(&mut self, packet: &[u8]) -> Verdict<Response> {
        match self.codec.unwrap(packet, self.request, self.rq_seq) {
            Ok(response) => Verdict::Done(response),
            Err(error) => Verdict::Ignore(error.to_string()),
        }
    }
}

struct LanplusHandshakeExchange<'a> {
    handshake: &'a mut LanplusHandshake,
    first: Option<Vec<u8>>,
}

impl Exchange for LanplusHandshakeExchange<'_> {
    type Output = HandshakeStep<LanplusSession>;

    fn packet(&mut self) -> Vec<u8> {
        self.first
            .take()
            .unwrap_or_else(|| self.handshake.retransmit())
    }

    fn accept(&mut self, packet: &[u8]) -> Verdict<Self::Output> {
        handshake_verdict(self.handshake.handle(packet))
    }
}

struct Lan15HandshakeExchange<'a> {
    handshake: &'a mut Lan15Handshake,
    first: Option<Vec<u8>>,
}

impl Exchange for Lan15HandshakeExchange<'_> {
    type Output = HandshakeStep<Lan15Session>;

    fn packet(&mut self) -> Vec<u8> {
        self.first
            .take()
            .unwrap_or_else(|| self.handshake.retransmit())
    }

    fn accept(&mut self, packet: &[u8]) -> Verdict<Self::Output> {
        handshake_verdict(self.handshake.handle(packet))
    }
}

fn handshake_verdict<T>(result: Result<T, HandshakeError>) -> Verdict<T> {
    match result {
        Ok(step) => Verdict::Done(step),
        Err(error) if error.is_fatal() => Verdict::Fail(ExchangeError::Handshake(error)),
        Err(error) => Verdict::Ignore(error.to_string()),
    }
}

#[async_trait]
impl PowerDriver for IpmiDriver {
    async fn power_on(&self) -> Result<(), PowerError> {
        self.execute(Operation::Control(ChassisControl::PowerUp))
            .await
            .map(|_| ())
    }

    async fn power_off(&self) -> Result<(), PowerError> {
        self.execute(Operation::Control(ChassisControl::PowerDown))
            .await
            .map(|_| ())
    }

    async fn soft_off(&self) -> Result<(), PowerError> {
        self.execute(Operation::Control(ChassisControl::SoftShutdown))
            .await
            .map(|_| ())
    }

    async fn power_cycle(&self) -> Result<(), PowerError> {
        self.execute(Operation::Cycle).await.map(|_| ())
    }

    async fn power_state(&self) -> Result<PowerState, PowerError> {
        match self.execute(Operation::Status).await? {
            Outcome::Power(state) => Ok(state),
            Outcome::Done => Ok(PowerState::Unknown),
        }
    }

    async fn set_boot_device(
        &self,
        device: BootDevice,
        persistence: BootPersistence,
    ) -> Result<(), PowerError> {
        let flags = BootFlags {
            target: match device {
                BootDevice::Pxe => BootTarget::Pxe,
                BootDevice::Disk => BootTarget::Disk,
            },
            persistent: persistence == BootPersistence::Persistent,
            efi: self.settings.efi_boot,
        };
        self.execute(Operation::BootFlags(flags)).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let check = |input: &str, host: &str, port: u16| {
            assert_eq!(
                parse_address(input).unwrap(),
                (host.to_owned(), port),
                "{input}"
            );
        };
        check("10.0.0.5", "10.0.0.5", 623);
        check("10.0.0.5:6230", "10.0.0.5", 6230);
        check("bmc.example", "bmc.example", 623);
        check("fe80::1", "fe80::1", 623);
        check("[fe80::1]", "fe80::1", 623);
        check("[::1]:6230", "::1", 6230);
        for bad in [
            "10.0.0.5:",
            "10.0.0.5:0",
            "10.0.0.5:x",
            "[::1",
            "[::1]x",
            ":623",
        ] {
            assert!(parse_address(bad).is_err(), "{bad} must be rejected");
        }
        assert_eq!(
            parse_address(" "),
            Err(PowerError::MissingParameter {
                field: "power_address"
            })
        );
    }

    fn params(driver: Option<&str>, pass: &str) -> PowerParameters {
        PowerParameters {
            power_address: Some("127.0.0.1:6230".into()),
            power_user: Some("admin".into()),
            power_pass: Some(pass.into()),
            power_driver: driver.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn parameters() {
        let driver = IpmiDriver::from_parameters(&params(None, "password")).unwrap();
        assert_eq!(driver.protocol(), IpmiProtocol::Lanplus);
        assert!(
            !format!("{driver:?}").contains("password\""),
            "password must not be in Debug"
        );
        let lan = IpmiDriver::from_parameters(&params(Some("LAN"), "password")).unwrap();
        assert_eq!(lan.protocol(), IpmiProtocol::Lan15);
        assert!(matches!(
            IpmiDriver::from_parameters(&params(Some("SOAP"), "x")),
            Err(PowerError::InvalidParameter {
                field: "power_driver",
                ..
            })
        ));
        assert!(matches!(
            IpmiDriver::from_parameters(&params(Some("LAN"), "seventeen-bytes!!")),
            Err(PowerError::InvalidParameter {
                field: "power_pass",
                ..
            })
        ));
        assert!(IpmiDriver::from_parameters(&params(None, "twenty-bytes-exactly")).is_ok());
        let mut missing = params(None, "x");
        missing.power_pass = None;
        assert_eq!(
            IpmiDriver::from_parameters(&missing).unwrap_err(),
            PowerError::MissingParameter {
                field: "power_pass"
            }
        );
    }

    /// No BMC listening: a closed loopback port answers with ICMP port unreachable.
    #[tokio::test]
    async fn closed_port_is_unreachable_not_a_panic() {
        let port = {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap().port()
        };
        let mut p = params(None, "password");
        p.power_address = Some(format!("127.0.0.1:{port}"));
        let driver = IpmiDriver::from_parameters(&p)
            .unwrap()
            .with_settings(IpmiSettings {
                first_attempt_timeout: Duration::from_millis(200),
                max_attempt_timeout: Duration::from_millis(800),
                max_attempts: 6,
                ..IpmiSettings::default()
            });
        let started = std::time::Instant::now();
        let error = driver.power_state().await.unwrap_err();
        assert!(matches!(error, PowerError::Unreachable { .. }), "{error:?}");
        // Two refused attempts (0.2 s + 0.4 s) end it, not the whole 3.8 s schedule.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }

    /// A peer that reads but never answers: bounded retries end in Timeout.
    #[tokio::test]
    async fn silent_peer_times_out_within_the_call_deadline() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut p = params(None, "password");
        p.power_address = Some(silent.local_addr().unwrap().to_string());
        let driver = IpmiDriver::from_parameters(&p)
            .unwrap()
            .with_settings(IpmiSettings {
                call_timeout: Duration::from_millis(300),
                first_attempt_timeout: Duration::from_millis(50),
                max_attempt_timeout: Duration::from_millis(100),
                max_attempts: 10,
                ..IpmiSettings::default()
            });
        let started = std::time::Instant::now();
        let error = driver.power_on().await.unwrap_err();
        assert_eq!(
            error,
            PowerError::Timeout {
                address: p.power_address.unwrap(),
                after: Duration::from_millis(300)
            }
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // The retry loop sent more than one packet before the deadline.
        let mut buffer = [0u8; 512];
        let mut received = 0;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(10), silent.recv_from(&mut buffer)).await
        {
            received += 1;
        }
        assert!(
            received >= 2,
            "expected retransmissions, got {received} packets"
        );
    }

    /// With the whole budget available, an exchange sends exactly `max_attempts` packets with
    /// doubling waits (1 + 2 + 4 + 4 s, capped), then reports Timeout after that much time.
    /// Paused tokio time makes the schedule exact.
    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_backoff_schedule_then_time_out() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut p = params(None, "password");
        p.power_address = Some(silent.local_addr().unwrap().to_string());
        let driver = IpmiDriver::from_parameters(&p)
            .unwrap()
            .with_settings(IpmiSettings {
                call_timeout: Duration::from_secs(60),
                first_attempt_timeout: Duration::from_secs(1),
                max_attempt_timeout: Duration::from_secs(4),
                max_attempts: 4,
                ..IpmiSettings::default()
            });
        let error = driver.power_state().await.unwrap_err();
        assert_eq!(
            error,
            PowerError::Timeout {
                address: p.power_address.unwrap(),
                after: Duration::from_secs(11)
            }
        );
        let mut buffer = [0u8; 512];
        let mut first = None;
        let mut received = 0;
        while let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_millis(10), silent.recv_from(&mut buffer)).await
        {
            // Every attempt is the same sessionless Get Channel Authentication Capabilities.
            let packet = buffer[..len].to_vec();
            assert_eq!(first.get_or_insert_with(|| packet.clone()), &packet);
            received += 1;
        }
        assert_eq!(received, 4);
    }
}
