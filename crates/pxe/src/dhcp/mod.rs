//! DHCPv4 server with PXE/iPXE/UEFI-HTTP boot answers, full or proxyDHCP.
//!
//! - [`DhcpCore`] is sans-IO: [`DhcpCore::handle`] takes a packet's bytes and a
//!   [`PacketContext`] (time, source, port) and returns a [`Decision`]: drop (with a counted
//!   reason), reply (bytes, destination, and the lease that must be durable before sending), or
//!   forget a lease (RELEASE/DECLINE).
//! - [`boot`] chooses boot files as pure functions; [`pool`] allocates addresses.
//! - [`server`] owns the sockets (UDP 67, and 4011 in proxy mode, bound to one interface) and
//!   the lease group-commit.
//!
//! # Why iPXE sat idle for ~13 s after the DHCPACK in the dnsmasq lab
//!
//! Read in iPXE's source (ipxe/ipxe `src/net/udp/dhcp.c`, `src/net/ndp.c`,
//! `src/config/dhcp.h`, `src/usr/ifmgmt.c`):
//!
//! 1. **Not DHCP: IPv6 router discovery.** `ifconf` starts every configurator (DHCPv4 *and*
//!    IPv6 SLAAC) and waits until all have finished. With no IPv6 router on the link, router
//!    solicitation runs until its retry timer fails. Before commit 6ccd5239b (2020-10, "Reduce
//!    time spent waiting for router discovery") that timer used the default limits
//!    (0.25 s doubling up to 10 s), i.e. about 15.5 s from the start of configuration; Debian 12's
//!    `ipxe-qemu` ROMs are from 2019-01. DHCP finishes after ~2–3 s, so iPXE idles ~13 s after
//!    the ACK whatever the DHCP server says. Newer iPXE caps it at 3 s (~3.75 s in total). Fixes
//!    are outside DHCP: an IPv6 router advertisement on the provisioning link (measured: first
//!    HTTP request after 0.05 s instead of 16.09 s; [`router_advert`] sends one when
//!    [`DhcpConfig::router_advertisements`] is on), a newer iPXE build for the chain-loaded
//!    binary, or scripts that run `ifconf -c dhcp` instead of plain `autoboot`.
//! 2. **DHCP-caused waits, which this server avoids:**
//!    - In discovery iPXE keeps collecting ProxyDHCP offers for `DHCP_DISC_PROXY_TIMEOUT_SEC`
//!      (2 s, effectively until the 3 s retransmit) unless the chosen OFFER carries
//!      `ipxe.no-pxedhcp` (175.176) or some offer with vendor class "PXEClient" has arrived.
//!      We echo option 60 "PXEClient" to PXE clients, and send 175.176 = 1 to iPXE.
//!    - After the ACK, a ProxyDHCP offer *without* PXE options (siaddr + boot file, or a boot
//!      menu 43.9) makes iPXE send a ProxyDHCPREQUEST to port 4011 and wait up to
//!      `DHCP_REQ_PROXY_TIMEOUT_SEC` (2 s; ~3.75 s with backoff) when nobody answers. Every
//!      offer we send with "PXEClient" also carries siaddr and the boot file (full mode), and
//!      in proxy mode we do answer on 4011.
//!    - PXE ROMs get option 43 with PXE_DISCOVERY_CONTROL = 8 ("boot the file in this packet"),
//!      so none of them starts boot-server discovery or a menu prompt.
//!
//! # Reply addressing
//!
//! Relay (giaddr set): to giaddr:67. NAK or client without an address: broadcast to
//! 255.255.255.255:68 on the bound interface (we never unicast to an unconfigured client at
//! layer 2; every firmware tested accepts the broadcast). Otherwise: ciaddr:68. Port-4011
//! answers go back to the request's source.

pub mod boot;
pub mod config;
mod core;
pub mod packet;
pub mod pool;
pub mod router_advert;
pub mod server;
pub mod store;

pub use self::config::{BootConfig, DhcpConfig, DhcpMode, SubnetConfig};
pub use self::core::{
    CLIENT_PORT, Decision, DhcpCore, DhcpCounters, ListenPort, PXE_PORT, PacketContext, Reply,
    SERVER_PORT,
};
pub use self::packet::{DropReason, HwAddr};
pub use self::store::MemoryLeaseStore;
