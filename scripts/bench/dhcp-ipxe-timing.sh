#!/usr/bin/env bash
# Timeline of a real iPXE DHCP exchange against Ingot's DHCP server: QEMU (TCG, SeaBIOS + the
# distribution's iPXE virtio ROM) on a tap in a private network namespace, tcpdump on the tap.
# Shows how long iPXE spends in DHCP and what it does between the DHCPACK and its first HTTP
# request (see crates/pxe/src/dhcp/mod.rs: IPv6 router discovery in old iPXE builds).
# Bounded: QEMU runs for $DURATION seconds (default 40); the namespace is deleted on exit.
#
# Usage: sudo scripts/bench/dhcp-ipxe-timing.sh [ingot|dnsmasq]
# Env:   RA=1 also answers IPv6 router solicitations on the tap (Ingot's own advertiser, or a
#        python3 sender for dnsmasq), which removes iPXE's wait;
#        SKIP_BUILD=1 uses the already built example binary; KEEP_LOGS=1 keeps the pcap.
# Needs: root, iproute2, qemu-system-x86, ipxe-qemu, tcpdump, cargo (and dnsmasq-base for the
# comparison run).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SERVER=${1:-ingot}
DURATION=${DURATION:-40}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/ingot-target}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }

NS=ingot-ipxe-$$
TAP=ipxtap$(($$ % 10000))
WORK=$(mktemp -d /tmp/ingot-ipxe-timing.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    [ -n "${KEEP_LOGS:-}" ] && echo "logs in $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [ "$SERVER" = ingot ] && [ -z "${SKIP_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p pxe --example dhcp_bench_server)
fi

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" tuntap add dev "$TAP" mode tap
ip -n "$NS" addr add 10.77.0.1/24 dev "$TAP"
ip -n "$NS" link set "$TAP" up

ip netns exec "$NS" timeout $((DURATION + 5)) tcpdump -i "$TAP" -n -U -w "$WORK/pxe.pcap" \
    'udp port 67 or udp port 68 or icmp6 or tcp port 5248 or udp port 69' 2>/dev/null &
PIDS+=($!)
case $SERVER in
ingot)
    ip netns exec "$NS" "$CARGO_TARGET_DIR/release/examples/dhcp_bench_server" --interface "$TAP" \
        --server-ip 10.77.0.1 --subnet 10.77.0.0/24 --range 10.77.0.100-10.77.0.150 \
        --lease-file "$WORK/leases" ${RA:+--router-advertisements} 2>"$WORK/server.log" &
    ;;
dnsmasq)
    ip netns exec "$NS" dnsmasq -k --conf-file=/dev/null --port=0 --user=root --interface="$TAP" \
        --bind-interfaces --dhcp-authoritative --dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h \
        --dhcp-match=set:ipxe,175 --dhcp-boot=tag:ipxe,http://10.77.0.1:5248/ipxe/script \
        --dhcp-boot=tag:!ipxe,undionly.kpxe --dhcp-leasefile="$WORK/leases" 2>"$WORK/server.log" &
    ;;
*) echo "unknown server $SERVER" >&2; exit 2 ;;
esac
PIDS+=($!)
if [ -n "${RA:-}" ] && [ "$SERVER" != ingot ]; then
    # Ingot answers router solicitations itself (--router-advertisements); for the others: a minimal IPv6 router advertisement (no prefixes, M/O flags clear,
    # router lifetime 0) every 0.25 s ends iPXE's router discovery at once.
    ip netns exec "$NS" timeout "$DURATION" python3 -c '
import socket, sys, time
ifindex = socket.if_nametoindex(sys.argv[1])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
ra = bytes([134, 0, 0, 0, 64, 0, 0, 0]) + bytes(8)  # type, code, checksum (kernel), hop limit, flags, lifetime, timers
while True:
    try:
        s.sendto(ra, ("ff02::1", 0, 0, ifindex))
    except OSError:
        pass  # no carrier until QEMU opens the tap
    time.sleep(0.25)
' "$TAP" &
    PIDS+=($!)
fi
sleep 1
ip netns exec "$NS" timeout "$DURATION" qemu-system-x86_64 -accel tcg -m 256 -display none -boot n \
    -netdev tap,id=n0,ifname="$TAP",script=no,downscript=no \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:12:37:01 -no-reboot >/dev/null 2>&1 || true
sleep 1

echo "== $SERVER${RA:+ + router advertisements}: packets (seconds since the first DHCPDISCOVER) =="
{
    # DHCP message types need tcpdump -v (one packet spans several lines).
    tcpdump -r "$WORK/pxe.pcap" -n -tt -v 'udp port 67 or udp port 68' 2>/dev/null | awk '
        /^[0-9]+\.[0-9]+ / { ts = $1 }
        /> [0-9.]+: BOOTP/ { path = $1 " > " $3 }
        /DHCP-Message/ { print ts, "DHCP", $NF, path }
        /Vendor-Class|BF:|Bootfile|User-Class/ { sub(/^ +/, ""); print ts, "     ", $0 }'
    tcpdump -r "$WORK/pxe.pcap" -n -tt 'icmp6 or tcp port 5248 or udp port 69' 2>/dev/null
} | sort -s -n -k1,1 | awk '
    t0 == "" && /DHCP Discover/ { t0 = $1 }
    t0 != "" { ts = $1; $1 = ""; printf "%7.3f %s\n", ts - t0, substr($0, 1, 120) }'
