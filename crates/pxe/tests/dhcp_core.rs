//! The sans-IO DHCP core against byte fixtures: packets are assembled by hand (not with
//! dhcproto) in the shape iPXE, SeaBIOS's iPXE ROM, EDK2 and OS clients send them; replies are
//! decoded with dhcproto.

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder};
use ingot_types::net::Lease;
use pxe::dhcp::{
    Decision, DhcpConfig, DhcpCore, DhcpMode, DropReason, ListenPort, PacketContext, SubnetConfig,
};
use std::net::{Ipv4Addr, SocketAddrV4};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const RELAY: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const BROADCAST_68: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn config() -> DhcpConfig {
    let mut local = SubnetConfig::new(
        "10.77.0.0/24".parse().unwrap(),
        vec![(ip(10, 77, 0, 100), ip(10, 77, 0, 150))],
    );
    local.router = Some(SERVER);
    local.dns_servers = vec![SERVER];
    local.domain_name = Some("maas".into());
    local
        .reservations
        .insert("52:54:00:00:00:99".into(), ip(10, 77, 0, 20));
    let relayed = SubnetConfig::new(
        "10.78.0.0/24".parse().unwrap(),
        vec![(ip(10, 78, 0, 100), ip(10, 78, 0, 101))],
    );
    DhcpConfig::new("veth0", SERVER, vec![local, relayed])
}

// ---- packet fixtures -------------------------------------------------------------------------

const DISCOVER: u8 = 1;
const REQUEST: u8 = 3;
const DECLINE: u8 = 4;
const RELEASE: u8 = 7;
const INFORM: u8 = 8;

/// A client packet, byte by byte (RFC 2131 §2).
struct Packet {
    xid: u32,
    broadcast: bool,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    mac: [u8; 6],
    options: Vec<(u8, Vec<u8>)>,
}

impl Packet {
    fn new(msg_type: u8, mac_last: u8) -> Self {
        Packet {
            xid: 0x1234_5600 | u32::from(mac_last),
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            mac: [0x52, 0x54, 0, 0, 0, mac_last],
            options: vec![(53, vec![msg_type])],
        }
    }

    fn opt(mut self, code: u8, data: &[u8]) -> Self {
        self.options.push((code, data.to_vec()));
        self
    }

    fn requested(self, addr: Ipv4Addr) -> Self {
        self.opt(50, &addr.octets())
    }

    fn server_id(self, addr: Ipv4Addr) -> Self {
        self.opt(54, &addr.octets())
    }

    /// What SeaBIOS's iPXE ROM (iPXE 2019) sends, from a capture: PXE vendor class, arch 0,
    /// UNDI version, user class "iPXE" and the encapsulated 175 feature list.
    fn ipxe_bios(self) -> Self {
        self.opt(57, &[0x05, 0xc0])
            .opt(93, &[0, 0])
            .opt(94, &[1, 2, 1])
            .opt(60, b"PXEClient:Arch:00000:UNDI:002001")
            .opt(77, b"iPXE")
            .opt(
                55,
                &[
                    1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133,
                    134, 135, 175, 203,
                ],
            )
            .opt(
                175,
                &[
                    0xb1, 0x05, 0x01, 0x1a, 0xf4, 0x10, 0x00, 0xeb, 0x03, 0x01, 0x00, 0x00, 0x17,
                    0x01, 0x01, 0x13, 0x01, 0x01,
                ],
            )
            .opt(61, &[1, 0x52, 0x54, 0, 0, 0, 1])
            .opt(97, &[0; 17])
    }

    /// An EDK2 (OVMF) PXE DISCOVER: arch 7, no user class, no 175.
    fn edk2_pxe(self) -> Self {
        self.opt(57, &[0x05, 0xc0])
            .opt(93, &[0, 7])
            .opt(94, &[1, 3, 0])
            .opt(60, b"PXEClient:Arch:00007:UNDI:003000")
            .opt(
                55,
                &[
                    1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54,
                    58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
                ],
            )
            .opt(97, &[0; 17])
    }

    fn uefi_http(self) -> Self {
        self.opt(93, &[0, 16])
            .opt(60, b"HTTPClient:Arch:00016:UNDI:003001")
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![1, 1, 6, 0];
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&[0, 4]); // secs
        b.extend_from_slice(&(if self.broadcast { 0x8000u16 } else { 0 }).to_be_bytes());
        b.extend_from_slice(&self.ciaddr.octets());
        b.extend_from_slice(&[0; 8]); // yiaddr, siaddr
        b.extend_from_slice(&self.giaddr.octets());
        b.extend_from_slice(&self.mac);
        b.extend_from_slice(&[0; 10 + 64 + 128]);
        b.extend_from_slice(&[99, 130, 83, 99]);
        for (code, data) in &self.options {
            b.push(*code);
            b.push(data.len() as u8);
            b.extend_from_slice(data);
        }
        b.push(255);
        b
    }
}

fn ctx(now: i64) -> PacketContext {
    PacketContext {
        now,
        source: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        port: ListenPort::Dhcp,
    }
}

/// Runs a packet through the core and decodes the reply.
struct Answer {
    msg: Message,
    to: SocketAddrV4,
    lease: Option<Lease>,
}

impl Answer {
    fn msg_type(&self) -> MessageType {
        self.msg.opts().msg_type().unwrap()
    }

    fn opt(&self, code: u8) -> Option<&DhcpOption> {
        self.msg.opts().get(OptionCode::from(code))
    }

    fn bytes_opt(&self, code: u8) -> Option<Vec<u8>> {
        match self.opt(code)? {
            DhcpOption::ClassIdentifier(v)
            | DhcpOption::BootfileName(v)
            | DhcpOption::TFTPServerName(v)
            | DhcpOption::VendorExtensions(v) => Some(v.clone()),
            DhcpOption::Unknown(u) => Some(u.data().to_vec()),
            other => panic!("not a byte option: {other:?}"),
        }
    }

    /// The BOOTP file field (dhcproto keeps its NUL terminator).
    fn file_field(&self) -> Option<String> {
        let raw = self.msg.fname()?;
        Some(String::from_utf8(raw.split(|b| *b == 0).next().unwrap().to_vec()).unwrap())
    }

    fn file(&self) -> Option<String> {
        self.bytes_opt(67).map(|v| String::from_utf8(v).unwrap())
    }

    fn lease_time(&self) -> Option<u32> {
        match self.opt(51)? {
            DhcpOption::AddressLeaseTime(t) => Some(*t),
            _ => None,
        }
    }
}

fn answer(core: &mut DhcpCore, p: &Packet, ctx: &PacketContext) -> Answer {
    match core.handle(&p.bytes(), ctx).0 {
        Decision::Reply(r) => Answer {
            msg: Message::decode(&mut Decoder::new(&r.bytes)).unwrap(),
            to: r.to,
            lease: r.lease,
        },
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn decision(core: &mut DhcpCore, p: &Packet, now: i64) -> Decision {
    core.handle(&p.bytes(), &ctx(now)).0
}

/// DISCOVER + REQUEST; returns the ACK.
fn dora(core: &mut DhcpCore, p: impl Fn(u8) -> Packet, now: i64) -> Answer {
    let offer = answer(core, &p(DISCOVER), &ctx(now));
    assert_eq!(offer.msg_type(), MessageType::Offer);
    let request = p(REQUEST).requested(offer.msg.yiaddr()).server_id(SERVER);
    answer(core, &request, &ctx(now))
}

// ---- tests -----------------------------------------------------------------------------------

#[test]
fn ipxe_rom_discover_gets_script_url_and_no_proxy_wait() {
    let mut core = DhcpCore::new(config());
    let offer = answer(&mut core, &Packet::new(DISCOVER, 1).ipxe_bios(), &ctx(1000));
    assert_eq!(offer.msg_type(), MessageType::Offer);
    assert_eq!(offer.msg.yiaddr(), ip(10, 77, 0, 100));
    assert_eq!(offer.msg.siaddr(), SERVER);
    assert_eq!(offer.to, BROADCAST_68, "no address yet: broadcast");
    assert_eq!(
        offer.file().as_deref(),
        Some("http://10.77.0.1:5248/ipxe/52:54:00:00:00:01")
    );
    assert_eq!(
        offer.file_field().unwrap(),
        "http://10.77.0.1:5248/ipxe/52:54:00:00:00:01"
    );
    // The two things that keep iPXE from waiting for ProxyDHCP offers.
    assert_eq!(offer.bytes_opt(60).as_deref(), Some(&b"PXEClient"[..]));
    assert_eq!(offer.bytes_opt(175).as_deref(), Some(&[176u8, 1, 1][..]));
    assert_eq!(offer.bytes_opt(43), None, "iPXE gets no PXE menu options");
    assert_eq!(offer.lease_time(), Some(30), "PXE clients get short leases");
    assert_eq!(offer.opt(54), Some(&DhcpOption::ServerIdentifier(SERVER)));
    assert_eq!(
        offer.opt(1),
        Some(&DhcpOption::SubnetMask(ip(255, 255, 255, 0)))
    );
    assert_eq!(offer.opt(3), Some(&DhcpOption::Router(vec![SERVER])));
    assert_eq!(offer.msg.xid(), 0x1234_5601);
    assert_eq!(offer.msg.chaddr(), &[0x52, 0x54, 0, 0, 0, 1]);
    assert!(offer.lease.is_none(), "offers are not persisted");
}

#[test]
fn edk2_pxe_gets_snponly_over_tftp_with_discovery_control() {
    let mut core = DhcpCore::new(config());
    let ack = dora(&mut core, |t| Packet::new(t, 2).edk2_pxe(), 1000);
    assert_eq!(ack.msg_type(), MessageType::Ack);
    assert_eq!(ack.file().as_deref(), Some("snponly.efi"));
    assert_eq!(ack.file_field().unwrap(), "snponly.efi");
    assert_eq!(ack.msg.siaddr(), SERVER);
    assert_eq!(ack.bytes_opt(66).as_deref(), Some(&b"10.77.0.1"[..]));
    assert_eq!(ack.bytes_opt(43).as_deref(), Some(&[6u8, 1, 8, 255][..]));
    assert_eq!(ack.bytes_opt(60).as_deref(), Some(&b"PXEClient"[..]));
    let lease = ack.lease.expect("ACK carries the lease to commit");
    assert_eq!(lease.mac, "52:54:00:00:00:02");
    assert_eq!(lease.subnet, "10.77.0.0/24");
    assert_eq!(
        (lease.starts_at, lease.expires_at, lease.offered),
        (1000, 1030, false)
    );
}

#[test]
fn uefi_http_boot_gets_url_and_httpclient() {
    let mut core = DhcpCore::new(config());
    let offer = answer(&mut core, &Packet::new(DISCOVER, 3).uefi_http(), &ctx(0));
    assert_eq!(
        offer.file().as_deref(),
        Some("http://10.77.0.1:5248/images/ipxe.efi")
    );
    assert_eq!(offer.bytes_opt(60).as_deref(), Some(&b"HTTPClient"[..]));
    assert_eq!(offer.bytes_opt(66), None, "no TFTP server for HTTP boot");
}

#[test]
fn os_client_gets_plain_lease_without_boot_options() {
    let mut core = DhcpCore::new(config());
    let ack = dora(&mut core, |t| Packet::new(t, 4).opt(12, b"node4"), 0);
    assert_eq!(ack.lease_time(), Some(600));
    assert_eq!(ack.opt(58), Some(&DhcpOption::Renewal(300)));
    assert_eq!(ack.opt(59), Some(&DhcpOption::Rebinding(525)));
    assert_eq!(ack.file(), None);
    assert_eq!(ack.opt(60), None);
    assert_eq!(ack.msg.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.lease.unwrap().hostname.as_deref(), Some("node4"));
}

#[test]
fn request_states() {
    let mut core = DhcpCore::new(config());
    let ack = dora(&mut core, |t| Packet::new(t, 5), 0);
    let addr = ack.msg.yiaddr();

    // RENEWING: unicast from ciaddr, answered to ciaddr:68, lease extended.
    let mut renew = Packet::new(REQUEST, 5);
    renew.ciaddr = addr;
    let ack = answer(&mut core, &renew, &ctx(300));
    assert_eq!(ack.msg_type(), MessageType::Ack);
    assert_eq!(ack.to, SocketAddrV4::new(addr, 68));
    assert_eq!(ack.msg.ciaddr(), addr);
    assert_eq!(ack.lease.unwrap().expires_at, 900);

    // INIT-REBOOT for its own address: ACK, broadcast (no ciaddr).
    let ack = answer(
        &mut core,
        &Packet::new(REQUEST, 5).requested(addr),
        &ctx(400),
    );
    assert_eq!((ack.msg_type(), ack.to), (MessageType::Ack, BROADCAST_68));

    // INIT-REBOOT for another client's address: NAK, broadcast.
    let nak = answer(
        &mut core,
        &Packet::new(REQUEST, 6).requested(addr),
        &ctx(400),
    );
    assert_eq!((nak.msg_type(), nak.to), (MessageType::Nak, BROADCAST_68));
    assert_eq!(nak.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(nak.lease.is_none());

    // INIT-REBOOT from another network (moved laptop): NAK.
    let nak = answer(
        &mut core,
        &Packet::new(REQUEST, 6).requested(ip(192, 168, 1, 9)),
        &ctx(400),
    );
    assert_eq!(nak.msg_type(), MessageType::Nak);

    // SELECTING with a wrong address: NAK.
    let nak = answer(
        &mut core,
        &Packet::new(REQUEST, 6).requested(addr).server_id(SERVER),
        &ctx(400),
    );
    assert_eq!(nak.msg_type(), MessageType::Nak);

    // REQUEST without any address: malformed.
    assert!(matches!(
        decision(&mut core, &Packet::new(REQUEST, 6), 400),
        Decision::Drop(DropReason::Malformed)
    ));
    assert_eq!(core.counters().naks, 3);
    assert_eq!(core.counters().dropped_malformed, 1);
}

#[test]
fn selecting_another_server_frees_our_offer() {
    let mut core = DhcpCore::new(config());
    let offer = answer(&mut core, &Packet::new(DISCOVER, 7), &ctx(0));
    let other = Packet::new(REQUEST, 7)
        .requested(ip(10, 77, 0, 222))
        .server_id(ip(10, 77, 0, 2));
    assert!(matches!(
        decision(&mut core, &other, 1),
        Decision::Drop(DropReason::NotForUs)
    ));
    // The held address goes to the next client at once, not after the hold.
    let next = answer(
        &mut core,
        &Packet::new(DISCOVER, 8).requested(offer.msg.yiaddr()),
        &ctx(2),
    );
    assert_eq!(next.msg.yiaddr(), offer.msg.yiaddr());
}

#[test]
fn broadcast_flag_and_relay_addressing() {
    let mut core = DhcpCore::new(config());
    let mut p = Packet::new(DISCOVER, 9);
    p.broadcast = true;
    let offer = answer(&mut core, &p, &ctx(0));
    assert_eq!(offer.to, BROADCAST_68);
    assert!(offer.msg.flags().broadcast(), "flags are echoed");

    // Relayed: the relay's subnet, answered to giaddr:67, option 82 echoed.
    let relayed = |t| {
        let mut p = Packet::new(t, 10).opt(82, &[1, 4, b'p', b'o', b'r', b't']);
        p.giaddr = RELAY;
        p
    };
    let offer = answer(&mut core, &relayed(DISCOVER), &ctx(0));
    assert_eq!(offer.msg.yiaddr(), ip(10, 78, 0, 100));
    assert_eq!(offer.to, SocketAddrV4::new(RELAY, 67));
    assert_eq!(offer.msg.giaddr(), RELAY);
    assert!(offer.opt(82).is_some(), "relay agent information echoed");
    assert_eq!(
        offer.opt(1),
        Some(&DhcpOption::SubnetMask(ip(255, 255, 255, 0)))
    );
    let ack = answer(
        &mut core,
        &relayed(REQUEST)
            .requested(offer.msg.yiaddr())
            .server_id(SERVER),
        &ctx(0),
    );
    assert_eq!(
        (ack.msg_type(), ack.to),
        (MessageType::Ack, SocketAddrV4::new(RELAY, 67))
    );
    assert_eq!(ack.lease.unwrap().subnet, "10.78.0.0/24");

    // A relayed NAK sets the broadcast bit for the relay.
    let nak = answer(
        &mut core,
        &relayed(REQUEST).requested(ip(10, 78, 0, 7)),
        &ctx(0),
    );
    assert_eq!(
        (nak.msg_type(), nak.to),
        (MessageType::Nak, SocketAddrV4::new(RELAY, 67))
    );
    assert!(nak.msg.flags().broadcast());

    // A relay from a network we do not serve: dropped.
    let mut unknown = Packet::new(DISCOVER, 11);
    unknown.giaddr = ip(10, 99, 0, 1);
    assert!(matches!(
        decision(&mut core, &unknown, 0),
        Decision::Drop(DropReason::NoSubnet)
    ));
}

#[test]
fn exhausted_pool_drops_and_never_hands_out_twice() {
    let mut core = DhcpCore::new(config());
    let mut seen = std::collections::HashSet::new();
    for n in 0..2u8 {
        let mut p = Packet::new(DISCOVER, 100 + n);
        p.giaddr = RELAY;
        let mut r = Packet::new(REQUEST, 100 + n);
        r.giaddr = RELAY;
        let offer = answer(&mut core, &p, &ctx(0));
        assert!(seen.insert(offer.msg.yiaddr()));
        let ack = answer(
            &mut core,
            &r.requested(offer.msg.yiaddr()).server_id(SERVER),
            &ctx(0),
        );
        assert_eq!(ack.msg_type(), MessageType::Ack);
    }
    let mut p = Packet::new(DISCOVER, 102);
    p.giaddr = RELAY;
    assert!(matches!(
        decision(&mut core, &p, 0),
        Decision::Drop(DropReason::NoAddress)
    ));
    assert_eq!(core.counters().dropped_no_address, 1);
}

#[test]
fn reservation_is_used() {
    let mut core = DhcpCore::new(config());
    let ack = dora(&mut core, |t| Packet::new(t, 0x99), 0);
    assert_eq!(ack.msg.yiaddr(), ip(10, 77, 0, 20));
}

#[test]
fn decline_quarantines_and_release_forgets() {
    let mut core = DhcpCore::new(config());
    let addr = dora(&mut core, |t| Packet::new(t, 12), 0).msg.yiaddr();
    // DECLINE needs our server identifier and the address.
    assert!(matches!(
        decision(&mut core, &Packet::new(DECLINE, 12).requested(addr), 1),
        Decision::Drop(DropReason::NotForUs)
    ));
    let d = decision(
        &mut core,
        &Packet::new(DECLINE, 12).requested(addr).server_id(SERVER),
        1,
    );
    assert!(matches!(d, Decision::Forget(a) if a == addr), "{d:?}");
    let other = answer(
        &mut core,
        &Packet::new(DISCOVER, 13).requested(addr),
        &ctx(2),
    );
    assert_ne!(other.msg.yiaddr(), addr, "declined address is quarantined");
    let again = answer(&mut core, &Packet::new(DISCOVER, 12), &ctx(2));
    assert_ne!(again.msg.yiaddr(), addr);

    let addr = dora(&mut core, |t| Packet::new(t, 14), 10).msg.yiaddr();
    let mut release = Packet::new(RELEASE, 14).server_id(SERVER);
    release.ciaddr = addr;
    assert!(matches!(decision(&mut core, &release, 11), Decision::Forget(a) if a == addr));
    // Releasing again (or someone else's address) changes nothing.
    assert!(matches!(
        decision(&mut core, &release, 12),
        Decision::Drop(DropReason::NotForUs)
    ));
    assert_eq!(core.counters().declines, 2);
    assert_eq!(core.counters().releases, 2);
}

#[test]
fn inform_gets_configuration_only() {
    let mut core = DhcpCore::new(config());
    let mut p = Packet::new(INFORM, 15);
    p.ciaddr = ip(10, 77, 0, 33);
    let ack = answer(&mut core, &p, &ctx(0));
    assert_eq!(ack.msg_type(), MessageType::Ack);
    assert_eq!(ack.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.lease_time(), None);
    assert_eq!(ack.to, SocketAddrV4::new(ip(10, 77, 0, 33), 68));
    assert!(ack.lease.is_none());
    assert_eq!(
        ack.opt(6),
        Some(&DhcpOption::DomainNameServer(vec![SERVER]))
    );
}

#[test]
fn non_authoritative_server_stays_silent_for_unknown_clients() {
    let mut cfg = config();
    cfg.authoritative = false;
    let mut core = DhcpCore::new(cfg);
    let p = Packet::new(REQUEST, 16).requested(ip(10, 77, 0, 120));
    assert!(matches!(
        decision(&mut core, &p, 0),
        Decision::Drop(DropReason::NotForUs)
    ));
    let mut core = DhcpCore::new(config());
    assert_eq!(
        answer(&mut core, &p, &ctx(0)).msg_type(),
        MessageType::Ack,
        "authoritative: ACK a free address"
    );
}

#[test]
fn leases_survive_a_restart_of_the_core() {
    let mut core = DhcpCore::new(config());
    let ack = dora(&mut core, |t| Packet::new(t, 17), 0);
    let lease = ack.lease.unwrap();

    let mut restarted = DhcpCore::new(config());
    assert_eq!(restarted.restore_leases(vec![lease.clone()]), 0);
    // Another client cannot get or claim it...
    let other = answer(&mut restarted, &Packet::new(DISCOVER, 18), &ctx(10));
    assert_ne!(other.msg.yiaddr(), lease.ip);
    let nak = answer(
        &mut restarted,
        &Packet::new(REQUEST, 18).requested(lease.ip),
        &ctx(10),
    );
    assert_eq!(nak.msg_type(), MessageType::Nak);
    // ...while its owner gets it back.
    let again = answer(&mut restarted, &Packet::new(DISCOVER, 17), &ctx(10));
    assert_eq!(again.msg.yiaddr(), lease.ip);
    assert_eq!(restarted.active_leases(10), 2);
}

#[test]
fn sightings_for_netbooting_clients_only_and_rate_limited() {
    let mut core = DhcpCore::new(config());
    let (_, s) = core.handle(&Packet::new(DISCOVER, 0x19).edk2_pxe().bytes(), &ctx(0));
    let s = s.expect("PXE DISCOVER is a sighting");
    assert_eq!(
        (s.mac.as_str(), s.arch.as_deref(), s.source.as_str(), s.at),
        ("52:54:00:00:00:19", Some("uefi-x64"), "dhcp", 0)
    );
    assert!(
        core.handle(&Packet::new(DISCOVER, 0x19).edk2_pxe().bytes(), &ctx(5))
            .1
            .is_none()
    );
    assert!(
        core.handle(&Packet::new(DISCOVER, 0x19).edk2_pxe().bytes(), &ctx(11))
            .1
            .is_some()
    );
    assert!(
        core.handle(&Packet::new(DISCOVER, 0x20).bytes(), &ctx(0))
            .1
            .is_none(),
        "OS client"
    );
}

#[test]
fn proxy_mode_answers_boot_info_only() {
    let mut cfg = config();
    cfg.mode = DhcpMode::Proxy;
    cfg.subnets.clear();
    let mut core = DhcpCore::new(cfg);

    // BIOS PXE ROM: everything in the OFFER.
    let bios = Packet::new(DISCOVER, 21)
        .opt(93, &[0, 0])
        .opt(60, b"PXEClient:Arch:00000:UNDI:002001");
    let offer = answer(&mut core, &bios, &ctx(0));
    assert_eq!(offer.msg_type(), MessageType::Offer);
    assert_eq!(offer.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.msg.siaddr(), SERVER);
    assert_eq!(offer.file().as_deref(), Some("undionly.kpxe"));
    assert_eq!(offer.bytes_opt(43).as_deref(), Some(&[6u8, 1, 8, 255][..]));
    assert_eq!(offer.lease_time(), None);
    assert_eq!(offer.opt(54), Some(&DhcpOption::ServerIdentifier(SERVER)));
    assert_eq!(offer.to, BROADCAST_68);

    // UEFI PXE ROM: PXEClient and next-server but no file and no option 43, so the firmware
    // asks port 4011 (EDK2 "ProxyBinl").
    let offer = answer(&mut core, &Packet::new(DISCOVER, 22).edk2_pxe(), &ctx(0));
    assert_eq!(offer.file(), None);
    assert_eq!(offer.msg.fname(), None);
    assert_eq!(offer.bytes_opt(43), None);
    assert_eq!(offer.bytes_opt(60).as_deref(), Some(&b"PXEClient"[..]));
    assert_eq!(offer.msg.siaddr(), SERVER);

    // The port-4011 REQUEST gets the file, answered to its source.
    let mut req = Packet::new(REQUEST, 22).edk2_pxe();
    req.ciaddr = ip(192, 168, 5, 50);
    let source = SocketAddrV4::new(ip(192, 168, 5, 50), 68);
    let ack = answer(
        &mut core,
        &req,
        &PacketContext {
            now: 0,
            source,
            port: ListenPort::Pxe,
        },
    );
    assert_eq!(ack.msg_type(), MessageType::Ack);
    assert_eq!(ack.file().as_deref(), Some("snponly.efi"));
    assert_eq!(ack.bytes_opt(43).as_deref(), Some(&[6u8, 1, 8, 255][..]));
    assert_eq!(ack.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.to, source);
    assert!(ack.lease.is_none());

    // iPXE: the script URL straight away.
    let offer = answer(&mut core, &Packet::new(DISCOVER, 23).ipxe_bios(), &ctx(0));
    assert_eq!(
        offer.file().as_deref(),
        Some("http://10.77.0.1:5248/ipxe/52:54:00:00:00:17")
    );

    // Not netbooting, and REQUESTs meant for the real DHCP server: ignored.
    assert!(matches!(
        decision(&mut core, &Packet::new(DISCOVER, 24), 0),
        Decision::Drop(DropReason::NotNetboot)
    ));
    let to_other = Packet::new(REQUEST, 21)
        .requested(ip(192, 168, 5, 51))
        .server_id(ip(192, 168, 5, 1))
        .edk2_pxe();
    assert!(matches!(
        decision(&mut core, &to_other, 0),
        Decision::Drop(DropReason::NotForUs)
    ));
    let c = core.counters();
    assert_eq!(
        (c.proxy_offers, c.proxy_acks, c.offers, c.acks),
        (3, 1, 0, 0)
    );
}

/// `check(packet bytes, expected drop)`: malformed and truncated packets are dropped and counted.
#[test]
fn bad_packets_are_dropped_and_counted() {
    let good = Packet::new(DISCOVER, 30).edk2_pxe().bytes();
    let mut core = DhcpCore::new(config());
    let mut check = |bytes: Vec<u8>, want: DropReason| {
        let (d, s) = core.handle(&bytes, &ctx(0));
        assert!(
            matches!(d, Decision::Drop(r) if r == want),
            "{want:?}: got {d:?}"
        );
        assert!(s.is_none());
    };
    check(vec![], DropReason::Truncated);
    check(good[..239].to_vec(), DropReason::Truncated);
    // Cut inside the option area: an option runs past the end.
    check(good[..260].to_vec(), DropReason::Truncated);
    check(good[..good.len() - 3].to_vec(), DropReason::Truncated);
    let mut bad_cookie = good.clone();
    bad_cookie[236] = 0;
    check(bad_cookie, DropReason::Malformed);
    let mut reply = good.clone();
    reply[0] = 2;
    check(reply, DropReason::NotRequest);
    let mut bad_op = good.clone();
    bad_op[0] = 7;
    check(bad_op, DropReason::Malformed);
    let mut long_hw = good.clone();
    long_hw[2] = 17;
    check(long_hw, DropReason::Malformed);
    // Options dhcproto would choke on or silently stop at.
    check(
        Packet::new(DISCOVER, 30).opt(94, &[1, 2]).bytes(),
        DropReason::Malformed,
    );
    check(
        Packet::new(DISCOVER, 30)
            .opt(50, &[10, 77, 0])
            .opt(60, b"PXEClient")
            .bytes(),
        DropReason::Malformed,
    );
    // BOOTP (no option 53) and unknown or server-side message types.
    let mut bootp = good[..240].to_vec();
    bootp.push(255);
    check(bootp, DropReason::UnsupportedType);
    check(Packet::new(200, 30).bytes(), DropReason::UnsupportedType);
    check(Packet::new(2, 30).bytes(), DropReason::UnsupportedType);

    let c = core.counters();
    assert_eq!(c.received, 13);
    assert_eq!(
        (
            c.dropped_truncated,
            c.dropped_malformed,
            c.dropped_not_request,
            c.dropped_unsupported
        ),
        (4, 5, 1, 3)
    );
    assert_eq!(c.dropped(), 13);
    assert_eq!(c.offers, 0);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic, and only well-formed requests are answered.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let mut core = DhcpCore::new(config());
            let _ = core.handle(&bytes, &ctx(0));
            prop_assert_eq!(core.counters().received, 1);
        }

        /// Mutations of a real iPXE DISCOVER never panic; the core either answers or counts a drop.
        #[test]
        fn mutated_discover_never_panics(
            edits in proptest::collection::vec((0usize..400, any::<u8>()), 1..8),
            cut in 0usize..400,
        ) {
            let mut bytes = Packet::new(DISCOVER, 31).ipxe_bios().bytes();
            for (at, value) in edits {
                if at < bytes.len() {
                    bytes[at] = value;
                }
            }
            bytes.truncate(cut.max(1).min(bytes.len()));
            let mut core = DhcpCore::new(config());
            let (d, _) = core.handle(&bytes, &ctx(0));
            let c = core.counters();
            match d {
                Decision::Drop(_) => prop_assert_eq!(c.dropped(), 1),
                Decision::Reply(_) => prop_assert_eq!(c.dropped(), 0),
                Decision::Forget(_) => {}
            }
        }
    }
}
