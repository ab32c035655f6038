//! The sans-IO DHCP state machine: bytes and a context in, a [`Decision`] out.

use super::boot::{self, BootFile, Transport, choose_boot_file, proxy_defers_to_4011};
use super::config::{DhcpConfig, DhcpMode};
use super::packet::{DropReason, HwAddr, Request, encode, parse_request, reply_to};
use super::pool::SubnetPool;
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode, UnknownOption};
use ingot_types::net::{Lease, Sighting};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// PXE boot server (BINL) port: UEFI firmware asks here after a proxyDHCP OFFER without a boot
/// file.
pub const PXE_PORT: u16 = 4011;

/// Don't report the same MAC as sighted more often than this (DISCOVER retransmits), seconds.
const SIGHTING_INTERVAL: i64 = 10;

/// Which socket a packet arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenPort {
    /// UDP 67.
    Dhcp,
    /// UDP 4011.
    Pxe,
}

/// Everything about a packet that is not in its bytes.
#[derive(Debug, Clone, Copy)]
pub struct PacketContext {
    /// Unix seconds.
    pub now: i64,
    /// Where the packet came from (used for port-4011 answers).
    pub source: SocketAddrV4,
    pub port: ListenPort,
}

/// A reply to send.
#[derive(Debug, Clone)]
pub struct Reply {
    pub msg_type: MessageType,
    pub bytes: Vec<u8>,
    pub to: SocketAddrV4,
    /// Must be durable (`LeaseStore::commit`) before `bytes` are sent: an ACK promises the
    /// address, and a promise lost in a crash could hand it out twice.
    pub lease: Option<Lease>,
}

/// What to do with a packet.
#[derive(Debug, Clone)]
pub enum Decision {
    Drop(DropReason),
    Reply(Reply),
    /// RELEASE or DECLINE: remove the lease for this address from the store; no answer.
    Forget(Ipv4Addr),
}

/// Packet counts since start. Plain numbers: the core is owned by one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpCounters {
    pub received: u64,
    pub discovers: u64,
    pub requests: u64,
    pub declines: u64,
    pub releases: u64,
    pub informs: u64,
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    /// proxyDHCP OFFERs (no address) and port-4011 ACKs.
    pub proxy_offers: u64,
    pub proxy_acks: u64,
    pub dropped_truncated: u64,
    pub dropped_malformed: u64,
    pub dropped_not_request: u64,
    pub dropped_unsupported: u64,
    pub dropped_no_subnet: u64,
    pub dropped_no_address: u64,
    pub dropped_not_for_us: u64,
    pub dropped_not_netboot: u64,
    // Filled by the server, not the core.
    pub receive_errors: u64,
    pub send_errors: u64,
    pub commit_batches: u64,
    pub leases_committed: u64,
    pub commit_failures: u64,
    pub sightings_dropped: u64,
}

impl DhcpCounters {
    fn count_drop(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::Truncated => &mut self.dropped_truncated,
            DropReason::Malformed => &mut self.dropped_malformed,
            DropReason::NotRequest => &mut self.dropped_not_request,
            DropReason::UnsupportedType => &mut self.dropped_unsupported,
            DropReason::NoSubnet => &mut self.dropped_no_subnet,
            DropReason::NoAddress => &mut self.dropped_no_address,
            DropReason::NotForUs => &mut self.dropped_not_for_us,
            DropReason::NotNetboot => &mut self.dropped_not_netboot,
        };
        *c += 1;
    }

    pub fn dropped(&self) -> u64 {
        self.dropped_truncated
            + self.dropped_malformed
            + self.dropped_not_request
            + self.dropped_unsupported
            + self.dropped_no_subnet
            + self.dropped_no_address
            + self.dropped_not_for_us
            + self.dropped_not_netboot
    }
}

/// DHCP server state: subnets with their bindings, and counters.
#[derive(Debug)]
pub struct DhcpCore {
    config: DhcpConfig,
    pools: Vec<SubnetPool>,
    counters: DhcpCounters,
    last_sighting: HashMap<HwAddr, i64>,
}

impl DhcpCore {
    pub fn new(config: DhcpConfig) -> Self {
        let pools = config
            .subnets
            .iter()
            .map(|s| SubnetPool::new(s.clone(), config.server_ip))
            .collect();
        DhcpCore {
            config,
            pools,
            counters: DhcpCounters::default(),
            last_sighting: HashMap::new(),
        }
    }

    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    pub fn counters(&self) -> &DhcpCounters {
        &self.counters
    }

    pub fn counters_mut(&mut self) -> &mut DhcpCounters {
        &mut self.counters
    }

    /// Restores persisted leases (oldest first, so a client's newest lease wins). Leases for
    /// subnets we no longer serve or with unparsable MACs are skipped and counted.
    pub fn restore_leases(&mut self, mut leases: Vec<Lease>) -> usize {
        leases.sort_by_key(|l| l.starts_at);
        let mut skipped = 0;
        for lease in &leases {
            let pool = self.pools.iter_mut().find(|p| p.contains(lease.ip));
            match (pool, HwAddr::parse(&lease.mac)) {
                (Some(pool), Some(hw)) => pool.restore(lease, hw),
                _ => skipped += 1,
            }
        }
        skipped
    }

    /// Number of addresses offered or leased at `now`, over all subnets.
    pub fn active_leases(&self, now: i64) -> usize {
        self.pools.iter().map(|p| p.active_count(now)).sum()
    }

    /// Handles one packet. Never panics on any input; every dropped packet is counted.
    pub fn handle(&mut self, bytes: &[u8], ctx: &PacketContext) -> (Decision, Option<Sighting>) {
        self.counters.received += 1;
        let (decision, sighting) = match parse_request(bytes) {
            Ok(req) => {
                let sighting = self.sighting(&req, ctx);
                (self.dispatch(&req, ctx), sighting)
            }
            Err(reason) => (Decision::Drop(reason), None),
        };
        match &decision {
            Decision::Drop(reason) => self.counters.count_drop(*reason),
            Decision::Reply(reply) => {
                let proxy = reply.lease.is_none()
                    && (self.config.mode == DhcpMode::Proxy || ctx.port == ListenPort::Pxe);
                match (reply.msg_type, proxy) {
                    (MessageType::Offer, true) => self.counters.proxy_offers += 1,
                    (MessageType::Ack, true) => self.counters.proxy_acks += 1,
                    (MessageType::Offer, false) => self.counters.offers += 1,
                    (MessageType::Ack, false) => self.counters.acks += 1,
                    (MessageType::Nak, _) => self.counters.naks += 1,
                    _ => {}
                }
            }
            Decision::Forget(_) => {}
        }
        // A sighting is only worth reporting when we answered.
        let sighting = sighting.filter(|_| matches!(decision, Decision::Reply(_)));
        (decision, sighting)
    }

    fn dispatch(&mut self, req: &Request, ctx: &PacketContext) -> Decision {
        match req.msg_type {
            MessageType::Discover => self.counters.discovers += 1,
            MessageType::Request => self.counters.requests += 1,
            MessageType::Decline => self.counters.declines += 1,
            MessageType::Release => self.counters.releases += 1,
            MessageType::Inform => self.counters.informs += 1,
            _ => return Decision::Drop(DropReason::UnsupportedType),
        }
        if ctx.port == ListenPort::Pxe {
            return self.pxe_request(req, ctx);
        }
        match (self.config.mode, req.msg_type) {
            (DhcpMode::Proxy, MessageType::Discover) => self.proxy_offer(req),
            // The client's REQUEST/RELEASE/… go to the DHCP server that owns addresses.
            (DhcpMode::Proxy, _) => Decision::Drop(DropReason::NotForUs),
            (DhcpMode::Full, MessageType::Discover) => self.discover(req, ctx),
            (DhcpMode::Full, MessageType::Request) => self.request(req, ctx),
            (DhcpMode::Full, MessageType::Decline) => self.decline(req, ctx),
            (DhcpMode::Full, MessageType::Release) => self.release(req),
            (DhcpMode::Full, MessageType::Inform) => self.inform(req),
            (DhcpMode::Full, _) => Decision::Drop(DropReason::UnsupportedType),
        }
    }

    /// The subnet of the client's link: the relay's (giaddr) or our interface's.
    fn link_pool(&self, req: &Request) -> Option<usize> {
        let link = if req.giaddr.is_unspecified() {
            self.config.server_ip
        } else {
            req.giaddr
        };
        self.pools.iter().position(|p| p.contains(link))
    }

    fn boot_file(&self, req: &Request) -> Option<BootFile> {
        choose_boot_file(
            &self.config.boot,
            &req.boot,
            self.config.server_ip,
            &req.hw.to_string(),
        )
    }

    fn lease_time(&self, req: &Request) -> u32 {
        if req.boot.is_netboot() {
            self.config.pxe_lease_time
        } else {
            self.config.lease_time
        }
    }

    fn discover(&mut self, req: &Request, ctx: &PacketContext) -> Decision {
        let Some(pool_idx) = self.link_pool(req) else {
            return Decision::Drop(DropReason::NoSubnet);
        };
        let hold = self.config.offer_hold;
        let Some(ip) = self.pools[pool_idx].offer(req.hw, req.requested_ip, ctx.now, hold) else {
            return Decision::Drop(DropReason::NoAddress);
        };
        let mut msg = reply_to(req, MessageType::Offer);
        msg.set_yiaddr(ip);
        self.add_lease_options(&mut msg, pool_idx, self.lease_time(req));
        if let Some(boot) = self.boot_file(req) {
            self.add_boot(&mut msg, &boot, true);
        }
        self.reply(req, msg, MessageType::Offer, None)
    }

    fn request(&mut self, req: &Request, ctx: &PacketContext) -> Decision {
        // RFC 2131 §4.3.2: the state the client is in follows from the options it sent.
        let (ip, selecting) = match (req.server_id, req.requested_ip) {
            (Some(server), _) if server != self.config.server_ip => {
                // SELECTING another server's offer: release what we held for it.
                if let Some(i) = self.link_pool(req) {
                    self.pools[i].cancel_offer(req.hw);
                }
                return Decision::Drop(DropReason::NotForUs);
            }
            (Some(_), Some(ip)) => (ip, true),
            (Some(_), None) => return Decision::Drop(DropReason::Malformed),
            // INIT-REBOOT: verifying a remembered address.
            (None, Some(ip)) => (ip, false),
            // RENEWING (unicast) or REBINDING (broadcast).
            (None, None) if !req.ciaddr.is_unspecified() => (req.ciaddr, false),
            (None, None) => return Decision::Drop(DropReason::Malformed),
        };
        let Some(pool_idx) = self.link_pool(req) else {
            return Decision::Drop(DropReason::NoSubnet);
        };
        let lease_time = self.lease_time(req);
        let pool = &mut self.pools[pool_idx];
        // Without a record of this client a non-authoritative server must stay silent.
        if !selecting && !self.config.authoritative && !pool.knows(req.hw) {
            return Decision::Drop(DropReason::NotForUs);
        }
        match pool.ack(req.hw, ip, ctx.now, lease_time, req.hostname.clone()) {
            Ok(lease) => {
                let mut msg = reply_to(req, MessageType::Ack);
                msg.set_yiaddr(ip).set_ciaddr(req.ciaddr);
                self.add_lease_options(&mut msg, pool_idx, lease_time);
                if let Some(boot) = self.boot_file(req) {
                    self.add_boot(&mut msg, &boot, true);
                }
                self.reply(req, msg, MessageType::Ack, Some(lease))
            }
            Err(refusal) => {
                tracing::debug!(mac = %req.hw, %ip, ?refusal, "DHCPNAK");
                let mut msg = reply_to(req, MessageType::Nak);
                msg.opts_mut()
                    .insert(DhcpOption::ServerIdentifier(self.config.server_ip));
                if !req.giaddr.is_unspecified() {
                    // RFC 2131 §4.3.2: a relayed NAK asks the relay to broadcast it, since the
                    // client's address is the one being refused.
                    msg.set_flags(msg.flags().set_broadcast());
                }
                self.reply(req, msg, MessageType::Nak, None)
            }
        }
    }

    fn decline(&mut self, req: &Request, ctx: &PacketContext) -> Decision {
        if req.server_id != Some(self.config.server_ip) {
            return Decision::Drop(DropReason::NotForUs);
        }
        let Some(ip) = req.requested_ip else {
            return Decision::Drop(DropReason::Malformed);
        };
        let until = ctx.now + i64::from(self.config.decline_quarantine);
        let declined = self
            .pools
            .iter_mut()
            .find(|p| p.contains(ip))
            .is_some_and(|pool| pool.decline(req.hw, ip, until));
        if !declined {
            return Decision::Drop(DropReason::NotForUs);
        }
        tracing::warn!(mac = %req.hw, %ip, "DHCPDECLINE: address in use on the network, quarantined");
        Decision::Forget(ip)
    }

    fn release(&mut self, req: &Request) -> Decision {
        if req.server_id.is_some_and(|s| s != self.config.server_ip) {
            return Decision::Drop(DropReason::NotForUs);
        }
        let ip = req.ciaddr;
        let released = self
            .pools
            .iter_mut()
            .find(|p| p.contains(ip))
            .is_some_and(|pool| pool.release(req.hw, ip));
        if released {
            Decision::Forget(ip)
        } else {
            Decision::Drop(DropReason::NotForUs)
        }
    }

    /// DHCPINFORM: configuration only, for a client that already has an address (RFC 2131
    /// §4.3.5): no yiaddr, no lease time.
    fn inform(&mut self, req: &Request) -> Decision {
        let link = if req.giaddr.is_unspecified() {
            req.ciaddr
        } else {
            req.giaddr
        };
        let Some(pool_idx) = self.pools.iter().position(|p| p.contains(link)) else {
            return Decision::Drop(DropReason::NoSubnet);
        };
        let mut msg = reply_to(req, MessageType::Ack);
        msg.set_ciaddr(req.ciaddr);
        self.add_subnet_options(&mut msg, pool_idx);
        if let Some(boot) = self.boot_file(req) {
            self.add_boot(&mut msg, &boot, true);
        }
        self.reply(req, msg, MessageType::Ack, None)
    }

    /// proxyDHCP OFFER: boot information only, no address (yiaddr 0).
    fn proxy_offer(&mut self, req: &Request) -> Decision {
        if !req.boot.is_netboot() {
            return Decision::Drop(DropReason::NotNetboot);
        }
        let Some(boot) = self.boot_file(req) else {
            return Decision::Drop(DropReason::NotNetboot);
        };
        let mut msg = reply_to(req, MessageType::Offer);
        msg.opts_mut()
            .insert(DhcpOption::ServerIdentifier(self.config.server_ip));
        let with_file = !proxy_defers_to_4011(&req.boot);
        self.add_boot(&mut msg, &boot, with_file);
        self.reply(req, msg, MessageType::Offer, None)
    }

    /// Port 4011: the firmware asks the boot server for its boot file (after a proxy OFFER
    /// without one). Answered with an ACK carrying only boot information.
    fn pxe_request(&mut self, req: &Request, ctx: &PacketContext) -> Decision {
        if !matches!(req.msg_type, MessageType::Request | MessageType::Inform) {
            return Decision::Drop(DropReason::UnsupportedType);
        }
        let Some(boot) = self.boot_file(req) else {
            return Decision::Drop(DropReason::NotNetboot);
        };
        let mut msg = reply_to(req, MessageType::Ack);
        msg.set_ciaddr(req.ciaddr);
        msg.opts_mut()
            .insert(DhcpOption::ServerIdentifier(self.config.server_ip));
        self.add_boot(&mut msg, &boot, true);
        // The PXE spec has the boot server answer the client's source address and port.
        let to = if ctx.source.ip().is_unspecified() {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, ctx.source.port())
        } else {
            ctx.source
        };
        Decision::Reply(Reply {
            msg_type: MessageType::Ack,
            bytes: encode(&msg),
            to,
            lease: None,
        })
    }

    fn add_subnet_options(&self, msg: &mut Message, pool_idx: usize) {
        let subnet = &self.pools[pool_idx].config;
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::ServerIdentifier(self.config.server_ip));
        opts.insert(DhcpOption::SubnetMask(subnet.cidr.netmask()));
        if let Some(router) = subnet.router {
            opts.insert(DhcpOption::Router(vec![router]));
        }
        if !subnet.dns_servers.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(subnet.dns_servers.clone()));
        }
        if let Some(domain) = &subnet.domain_name {
            opts.insert(DhcpOption::DomainName(domain.clone()));
        }
    }

    fn add_lease_options(&self, msg: &mut Message, pool_idx: usize, lease_time: u32) {
        self.add_subnet_options(msg, pool_idx);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::AddressLeaseTime(lease_time));
        // RFC 2131 §4.4.5 defaults: T1 = 0.5, T2 = 0.875 of the lease.
        opts.insert(DhcpOption::Renewal(lease_time / 2));
        opts.insert(DhcpOption::Rebinding(
            (u64::from(lease_time) * 7 / 8) as u32,
        ));
    }

    /// Boot information. `with_file = false` leaves out the file and option 43 (proxy OFFER to
    /// UEFI PXE ROMs, see [`proxy_defers_to_4011`]) but keeps "PXEClient" and next-server, which
    /// is what makes the firmware ask port 4011.
    fn add_boot(&self, msg: &mut Message, boot: &BootFile, with_file: bool) {
        msg.set_siaddr(self.config.server_ip);
        let opts = msg.opts_mut();
        // See `dhcp/mod.rs`: echoing the vendor class makes this packet count as iPXE's
        // ProxyDHCP offer too, so iPXE does not wait for one.
        opts.insert(DhcpOption::ClassIdentifier(
            boot.vendor_class.as_bytes().to_vec(),
        ));
        if !with_file {
            return;
        }
        if boot.transport == Transport::Tftp {
            opts.insert(DhcpOption::TFTPServerName(
                self.config.server_ip.to_string().into_bytes(),
            ));
        }
        opts.insert(DhcpOption::BootfileName(boot.filename.as_bytes().to_vec()));
        if boot.ipxe {
            opts.insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(175),
                boot::ipxe_encapsulated_options(),
            )));
        } else if boot.vendor_class == "PXEClient" {
            opts.insert(DhcpOption::VendorExtensions(boot::pxe_vendor_options()));
        }
        // The BOOTP file field too: PXE ROMs read the file field, not option 67. URLs longer than
        // the field (128 bytes) only go in option 67, which iPXE and UEFI HTTP boot read.
        if boot.filename.len() < 128 {
            msg.set_fname_str(&boot.filename);
        }
    }

    /// Addresses the reply per RFC 2131 §4.1.
    fn reply(
        &self,
        req: &Request,
        msg: Message,
        msg_type: MessageType,
        lease: Option<Lease>,
    ) -> Decision {
        let to = if !req.giaddr.is_unspecified() {
            // Via a relay: to the relay's server port; it forwards to the client.
            SocketAddrV4::new(req.giaddr, SERVER_PORT)
        } else if msg_type == MessageType::Nak || req.ciaddr.is_unspecified() {
            // A client without an address (or being NAKed) can only be reached by broadcast,
            // unless we unicast to yiaddr at layer 2 (needs an ARP entry or a raw socket).
            // iPXE, EDK2, PXE ROMs and OS clients all accept the broadcast, so we always use it.
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        } else {
            SocketAddrV4::new(req.ciaddr, CLIENT_PORT)
        };
        Decision::Reply(Reply {
            msg_type,
            bytes: encode(&msg),
            to,
            lease,
        })
    }

    /// A sighting for netbooting clients' DISCOVERs (and port-4011 REQUESTs), at most one per
    /// MAC per [`SIGHTING_INTERVAL`].
    fn sighting(&mut self, req: &Request, ctx: &PacketContext) -> Option<Sighting> {
        let asks_to_boot = req.msg_type == MessageType::Discover || ctx.port == ListenPort::Pxe;
        if !asks_to_boot || !req.boot.is_netboot() {
            return None;
        }
        if self
            .last_sighting
            .get(&req.hw)
            .is_some_and(|t| ctx.now - t < SIGHTING_INTERVAL)
        {
            return None;
        }
        if self.last_sighting.len() > 100_000 {
            self.last_sighting
                .retain(|_, t| ctx.now - *t < SIGHTING_INTERVAL);
        }
        self.last_sighting.insert(req.hw, ctx.now);
        let ip = (!req.ciaddr.is_unspecified()).then_some(req.ciaddr);
        Some(Sighting {
            mac: req.hw.to_string(),
            ip,
            arch: Some(boot_arch_name(req).to_string()),
            source: "dhcp".into(),
            at: ctx.now,
        })
    }
}

fn boot_arch_name(req: &Request) -> &'static str {
    req.boot.arch().name()
}
