//! Address allocation for one subnet.
//!
//! Invariant: at any `now`, an address is bound or offered to at most one hardware address.
//! An address is *available to* a client when it is inside the subnet, not ours, not reserved
//! for someone else, not quarantined after a DECLINE, and either unbound, bound to that client,
//! or its binding (lease or offer hold) has expired.

use super::config::SubnetConfig;
use super::packet::HwAddr;
use ingot_types::net::Lease;
use std::collections::HashMap;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindingState {
    /// Offered; held for the client until `expires_at`.
    Offered,
    /// Acknowledged and committed.
    Bound,
}

#[derive(Debug, Clone)]
struct Binding {
    hw: HwAddr,
    state: BindingState,
    expires_at: i64,
}

/// Why a REQUEST for an address cannot be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckRefusal {
    /// Outside this subnet, our own address, or the network/broadcast address.
    NotOnSubnet,
    /// Bound, offered or reserved to another client, or quarantined.
    InUse,
    /// On the subnet but neither in a dynamic range nor reserved for this client.
    NotAllocatable,
}

#[derive(Debug)]
pub struct SubnetPool {
    pub config: SubnetConfig,
    /// The subnet's name in [`Lease::subnet`]: its CIDR.
    pub name: String,
    server_ip: Ipv4Addr,
    bindings: HashMap<Ipv4Addr, Binding>,
    /// The latest address bound or offered to each client.
    by_hw: HashMap<HwAddr, Ipv4Addr>,
    reserved_for_hw: HashMap<HwAddr, Ipv4Addr>,
    reserved_ips: HashMap<Ipv4Addr, HwAddr>,
    /// Declined addresses and when they may be used again.
    quarantine: HashMap<Ipv4Addr, i64>,
    /// Inclusive dynamic ranges as integers, clipped to the subnet.
    ranges: Vec<(u32, u32)>,
    /// Next candidate of the free-address scan (range index, address). The scan continues where
    /// the last one stopped, so allocation is O(1) amortised while free addresses remain.
    cursor: (usize, u32),
}

impl SubnetPool {
    pub fn new(config: SubnetConfig, server_ip: Ipv4Addr) -> Self {
        let first = u32::from(config.cidr.network());
        let last = u32::from(config.cidr.broadcast());
        let ranges: Vec<(u32, u32)> = config
            .ranges
            .iter()
            .map(|(a, b)| (u32::from(*a).max(first), u32::from(*b).min(last)))
            .filter(|(a, b)| a <= b)
            .collect();
        let mut reserved_for_hw = HashMap::new();
        let mut reserved_ips = HashMap::new();
        for (mac, ip) in &config.reservations {
            match HwAddr::parse(mac) {
                Some(hw) if config.cidr.contains(ip) => {
                    reserved_for_hw.insert(hw, *ip);
                    reserved_ips.insert(*ip, hw);
                }
                _ => {
                    tracing::warn!(%mac, %ip, "ignoring DHCP reservation outside the subnet or with a bad MAC")
                }
            }
        }
        let cursor = (0, ranges.first().map_or(0, |r| r.0));
        SubnetPool {
            name: config.cidr.to_string(),
            config,
            server_ip,
            bindings: HashMap::new(),
            by_hw: HashMap::new(),
            reserved_for_hw,
            reserved_ips,
            quarantine: HashMap::new(),
            ranges,
            cursor,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.config.cidr.contains(&ip)
    }

    fn on_subnet(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip)
            && ip != self.server_ip
            && ip != self.config.cidr.network()
            && ip != self.config.cidr.broadcast()
            && Some(ip) != self.config.router
    }

    fn in_dynamic_range(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&n))
    }

    /// Whether `ip` may be handed to `hw` now (see the module invariant).
    fn available_to(&self, ip: Ipv4Addr, hw: HwAddr, now: i64) -> bool {
        if self.reserved_ips.get(&ip).is_some_and(|owner| *owner != hw) {
            return false;
        }
        if self.quarantine.get(&ip).is_some_and(|until| *until > now) {
            return false;
        }
        match self.bindings.get(&ip) {
            None => true,
            Some(b) => b.hw == hw || b.expires_at <= now,
        }
    }

    /// Whether `ip` may be allocated to `hw` at all: its reservation, or any dynamic address
    /// when it has none.
    fn allocatable_to(&self, ip: Ipv4Addr, hw: HwAddr) -> bool {
        match self.reserved_for_hw.get(&hw) {
            Some(reserved) => *reserved == ip,
            None => self.in_dynamic_range(ip),
        }
    }

    /// Binds `ip` to `hw`, dropping whatever binding either had before.
    fn bind(&mut self, ip: Ipv4Addr, hw: HwAddr, state: BindingState, expires_at: i64) {
        if let Some(old) = self.bindings.insert(
            ip,
            Binding {
                hw,
                state,
                expires_at,
            },
        ) && old.hw != hw
            && self.by_hw.get(&old.hw) == Some(&ip)
        {
            self.by_hw.remove(&old.hw);
        }
        if let Some(prev) = self.by_hw.insert(hw, ip)
            && prev != ip
            && self.bindings.get(&prev).is_some_and(|b| b.hw == hw)
        {
            self.bindings.remove(&prev);
        }
    }

    /// Picks an address for a DISCOVER and holds it for `hold` seconds. Preference: the
    /// client's reservation, its current binding, the address it asked for, then the next free
    /// dynamic address.
    pub fn offer(
        &mut self,
        hw: HwAddr,
        requested: Option<Ipv4Addr>,
        now: i64,
        hold: u32,
    ) -> Option<Ipv4Addr> {
        let ip = self.pick(hw, requested, now)?;
        match self.bindings.get(&ip) {
            // Keep an active lease as it is; the offer just repeats it.
            Some(b) if b.hw == hw && b.state == BindingState::Bound && b.expires_at > now => {}
            _ => self.bind(ip, hw, BindingState::Offered, now + i64::from(hold)),
        }
        Some(ip)
    }

    fn pick(&mut self, hw: HwAddr, requested: Option<Ipv4Addr>, now: i64) -> Option<Ipv4Addr> {
        if let Some(ip) = self.reserved_for_hw.get(&hw).copied() {
            // A reservation is the only address this client may get.
            return (self.on_subnet(ip) && self.available_to(ip, hw, now)).then_some(ip);
        }
        if let Some(ip) = self.by_hw.get(&hw).copied()
            && self.in_dynamic_range(ip)
            && self.on_subnet(ip)
            && self.available_to(ip, hw, now)
        {
            return Some(ip);
        }
        if let Some(ip) = requested
            && self.in_dynamic_range(ip)
            && self.on_subnet(ip)
            && self.available_to(ip, hw, now)
        {
            return Some(ip);
        }
        self.scan(hw, now)
    }

    fn scan(&mut self, hw: HwAddr, now: i64) -> Option<Ipv4Addr> {
        let total: u64 = self.ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum();
        let (mut range, mut next) = self.cursor;
        for _ in 0..total {
            let (start, end) = self.ranges[range];
            let ip = Ipv4Addr::from(next);
            // Advance first so the next scan starts after this address.
            if next >= end {
                range = (range + 1) % self.ranges.len();
                next = self.ranges[range].0;
            } else {
                next += 1;
            }
            debug_assert!(start <= u32::from(ip));
            if self.on_subnet(ip) && self.available_to(ip, hw, now) {
                self.cursor = (range, next);
                return Some(ip);
            }
        }
        None
    }

    /// Acknowledges `ip` for `hw` until `now + lease_time`.
    pub fn ack(
        &mut self,
        hw: HwAddr,
        ip: Ipv4Addr,
        now: i64,
        lease_time: u32,
        hostname: Option<String>,
    ) -> Result<Lease, AckRefusal> {
        if !self.on_subnet(ip) {
            return Err(AckRefusal::NotOnSubnet);
        }
        if !self.available_to(ip, hw, now) {
            return Err(AckRefusal::InUse);
        }
        if !self.allocatable_to(ip, hw) {
            return Err(AckRefusal::NotAllocatable);
        }
        let expires_at = now + i64::from(lease_time);
        self.bind(ip, hw, BindingState::Bound, expires_at);
        Ok(Lease {
            ip,
            mac: hw.to_string(),
            subnet: self.name.clone(),
            hostname,
            starts_at: now,
            expires_at,
            offered: false,
        })
    }

    /// Whether we hold any record (offer or lease, even expired) for `hw`.
    pub fn knows(&self, hw: HwAddr) -> bool {
        self.by_hw.contains_key(&hw) || self.reserved_for_hw.contains_key(&hw)
    }

    /// The client chose another server: free the address we held for it (not a lease).
    pub fn cancel_offer(&mut self, hw: HwAddr) {
        if let Some(ip) = self.by_hw.get(&hw).copied()
            && self
                .bindings
                .get(&ip)
                .is_some_and(|b| b.state == BindingState::Offered)
        {
            self.bindings.remove(&ip);
            self.by_hw.remove(&hw);
        }
    }

    /// Frees `ip` if it is bound or offered to `hw`. Returns whether anything changed.
    pub fn release(&mut self, hw: HwAddr, ip: Ipv4Addr) -> bool {
        if self.bindings.get(&ip).is_some_and(|b| b.hw == hw) {
            self.bindings.remove(&ip);
            // Keep `by_hw` pointing at the address so the client gets it back if still free.
            return true;
        }
        false
    }

    /// The client found `ip` in use by someone else: drop its binding and keep the address out
    /// of the pool until `until`. Only the client the address was given to can decline it.
    pub fn decline(&mut self, hw: HwAddr, ip: Ipv4Addr, until: i64) -> bool {
        if self.bindings.get(&ip).is_some_and(|b| b.hw == hw) {
            self.bindings.remove(&ip);
            if self.by_hw.get(&hw) == Some(&ip) {
                self.by_hw.remove(&hw);
            }
            self.quarantine.insert(ip, until);
            return true;
        }
        false
    }

    /// Restores a persisted lease (server start).
    pub fn restore(&mut self, lease: &Lease, hw: HwAddr) {
        let state = if lease.offered {
            BindingState::Offered
        } else {
            BindingState::Bound
        };
        // A later lease for the same address (store order is not guaranteed) wins.
        if self
            .bindings
            .get(&lease.ip)
            .is_some_and(|b| b.expires_at > lease.expires_at)
        {
            return;
        }
        self.bind(lease.ip, hw, state, lease.expires_at);
    }

    /// Number of addresses currently offered or bound.
    pub fn active_count(&self, now: i64) -> usize {
        self.bindings
            .values()
            .filter(|b| b.expires_at > now)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn hw(n: u8) -> HwAddr {
        HwAddr::new(&[0x52, 0x54, 0, 0, 0, n])
    }

    fn pool(first: u8, last: u8) -> SubnetPool {
        let mut cfg = SubnetConfig::new(
            "10.0.0.0/24".parse().unwrap(),
            vec![(
                Ipv4Addr::new(10, 0, 0, first),
                Ipv4Addr::new(10, 0, 0, last),
            )],
        );
        cfg.reservations
            .insert("52:54:00:00:00:63".into(), Ipv4Addr::new(10, 0, 0, 200));
        SubnetPool::new(cfg, SERVER)
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    #[test]
    fn never_the_same_address_twice() {
        let mut p = pool(10, 12);
        let a = p.offer(hw(1), None, 0, 30).unwrap();
        let b = p.offer(hw(2), None, 0, 30).unwrap();
        let c = p.offer(hw(3), None, 0, 30).unwrap();
        assert_eq!([a, b, c], [ip(10), ip(11), ip(12)]);
        // Held offers block the range until they expire.
        assert_eq!(p.offer(hw(4), None, 10, 30), None);
        // The same client gets the same offer again.
        assert_eq!(p.offer(hw(2), None, 10, 30), Some(b));
        // Another client cannot take a held address by asking for it.
        assert_eq!(p.ack(hw(4), a, 10, 600, None), Err(AckRefusal::InUse));
        assert_eq!(p.offer(hw(4), Some(a), 10, 30), None);
        // After the hold of 1 and 3 expires (t=30), 4 gets one of them.
        p.ack(hw(2), b, 10, 600, None).unwrap();
        let d = p.offer(hw(4), None, 31, 30).unwrap();
        assert!(d == a || d == c, "{d}");
        assert_eq!(p.active_count(31), 2);
    }

    #[test]
    fn requested_address_and_reservations() {
        let mut p = pool(10, 20);
        assert_eq!(p.offer(hw(1), Some(ip(15)), 0, 30), Some(ip(15)));
        // Outside the dynamic range: ignored, next free instead.
        assert_eq!(p.offer(hw(2), Some(ip(100)), 0, 30), Some(ip(10)));
        // A reserved client gets its reservation whatever it asks for...
        assert_eq!(p.offer(hw(0x63), Some(ip(16)), 0, 30), Some(ip(200)));
        // ...and cannot be acknowledged another address.
        assert_eq!(
            p.ack(hw(0x63), ip(17), 0, 600, None),
            Err(AckRefusal::NotAllocatable)
        );
        // Nobody else can have the reserved address.
        assert_eq!(p.ack(hw(5), ip(200), 0, 600, None), Err(AckRefusal::InUse));
        assert_eq!(
            p.ack(hw(5), ip(1), 0, 600, None),
            Err(AckRefusal::NotOnSubnet)
        );
        assert_eq!(
            p.ack(hw(5), ip(255), 0, 600, None),
            Err(AckRefusal::NotOnSubnet)
        );
        assert_eq!(
            p.ack(hw(5), Ipv4Addr::new(10, 0, 1, 5), 0, 600, None),
            Err(AckRefusal::NotOnSubnet)
        );
    }

    #[test]
    fn ack_moves_a_client_and_frees_its_old_address() {
        let mut p = pool(10, 11);
        p.ack(hw(1), ip(10), 0, 600, None).unwrap();
        p.ack(hw(1), ip(11), 1, 600, None).unwrap();
        // 10 is free again; only one binding per client.
        assert_eq!(p.active_count(2), 1);
        assert_eq!(p.offer(hw(2), None, 2, 30), Some(ip(10)));
    }

    #[test]
    fn decline_quarantines_and_release_frees() {
        let mut p = pool(10, 11);
        let a = p.offer(hw(1), None, 0, 30).unwrap();
        // Only the holder can decline.
        assert!(!p.decline(hw(2), a, 100));
        assert!(p.decline(hw(1), a, 100));
        assert_eq!(p.offer(hw(1), None, 1, 30), Some(ip(11)));
        assert_eq!(p.offer(hw(3), None, 1, 30), None, "10 quarantined, 11 held");
        assert_eq!(p.offer(hw(3), None, 101, 30), Some(ip(10)));

        let mut p = pool(10, 10);
        p.ack(hw(1), ip(10), 0, 600, None).unwrap();
        assert!(!p.release(hw(2), ip(10)));
        assert!(p.release(hw(1), ip(10)));
        assert_eq!(p.offer(hw(2), None, 1, 30), Some(ip(10)));
    }

    #[test]
    fn restore_blocks_addresses() {
        let mut p = pool(10, 10);
        let lease = Lease {
            ip: ip(10),
            mac: hw(1).to_string(),
            subnet: "10.0.0.0/24".into(),
            hostname: None,
            starts_at: 0,
            expires_at: 600,
            offered: false,
        };
        p.restore(&lease, hw(1));
        assert_eq!(p.offer(hw(2), None, 5, 30), None);
        assert_eq!(p.offer(hw(1), None, 5, 30), Some(ip(10)));
        assert!(p.knows(hw(1)));
        // Expired leases are reused.
        assert_eq!(p.offer(hw(2), None, 601, 30), Some(ip(10)));
    }
}
