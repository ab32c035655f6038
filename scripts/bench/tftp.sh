#!/usr/bin/env bash
# TFTP boot storm: N concurrent clients fetch ipxe.efi (blksize 1432, tsize) from Ingot's TFTP
# server, tftpd-hpa (in.tftpd -L) and dnsmasq's TFTP (port=0, enable-tftp), each alone in a
# private network namespace reached over a veth from a client namespace. Measures wall time,
# failed transfers and server CPU (a cgroup holding the
# server and its children) per MB delivered. Nothing is bound outside the two namespaces.
#
# usage: scripts/bench/tftp.sh [clients...]        (default: 300 1000)
#   env: RUNS=3 (repeats per point), FILE=/usr/lib/ipxe/ipxe.efi, OUT=docs/bench-tftp.results
# needs: root, iproute2, tftpd-hpa, dnsmasq-base, ipxe, a release build of the pxe examples.
set -euo pipefail

cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/ingot-target}"
CLIENT_COUNTS=("${@:-300 1000}")
read -r -a CLIENT_COUNTS <<<"${CLIENT_COUNTS[*]}"
RUNS="${RUNS:-3}"
FILE="${FILE:-/usr/lib/ipxe/ipxe.efi}"
BLKSIZE=1432
SRV_NS="ingot-bench-srv-$$"
CLI_NS="ingot-bench-cli-$$"
SRV_IP=10.99.0.1
CLI_IP=10.99.0.2
WORK="$(mktemp -d /tmp/ingot-bench-tftp.XXXXXX)"
OUT="${OUT:-docs/bench-tftp.results}"
SERVER_PID=""

cleanup() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null || true
    sleep 0.5
    remove_cgroup
    ip netns del "$SRV_NS" 2>/dev/null || true
    ip netns del "$CLI_NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release -q -p pxe --example tftp_storm --example tftp_serve
BIN="$CARGO_TARGET_DIR/release/examples"

# Copy (not link) the file: tftpd-hpa chroots into its root.
mkdir -p "$WORK/root"
cp -L "$FILE" "$WORK/root/$(basename "$FILE")"
chmod -R a+rX "$WORK"
NAME="$(basename "$FILE")"
SIZE=$(stat -c %s "$WORK/root/$NAME")

ip netns add "$SRV_NS"
ip netns add "$CLI_NS"
ip link add veth-s netns "$SRV_NS" type veth peer name veth-c netns "$CLI_NS"
ip -n "$SRV_NS" addr add "$SRV_IP/24" dev veth-s
ip -n "$CLI_NS" addr add "$CLI_IP/24" dev veth-c
for ns in "$SRV_NS" "$CLI_NS"; do
    ip -n "$ns" link set lo up
done
ip -n "$SRV_NS" link set veth-s up
ip -n "$CLI_NS" link set veth-c up

ulimit -n "$(ulimit -Hn)" # 1000 clients need 1000+ sockets on each side
# Server CPU is read from a cgroup holding the server and every process it forks
# (tftpd-hpa forks per transfer and ignores SIGCHLD, so /proc/<pid>/stat would miss it).
CGROUP=""
make_cgroup() {
    if [[ -d /sys/fs/cgroup/cpuacct ]]; then
        CGROUP="/sys/fs/cgroup/cpuacct/ingot-bench-$$-$1"
    else
        CGROUP="/sys/fs/cgroup/ingot-bench-$$-$1"
    fi
    mkdir -p "$CGROUP"
}
cpu_seconds() {
    if [[ -f "$CGROUP/cpuacct.usage" ]]; then
        awk '{ print $1 / 1e9 }' "$CGROUP/cpuacct.usage"
    else
        awk '$1 == "usage_usec" { print $2 / 1e6 }' "$CGROUP/cpu.stat"
    fi
}
remove_cgroup() {
    [[ -n "$CGROUP" ]] && rmdir "$CGROUP" 2>/dev/null || true
    CGROUP=""
}

start_server() {
    make_cgroup "$1"
    # The server is exec'd from a shell that already joined the cgroup.
    local enter="echo \$\$ > $CGROUP/cgroup.procs; exec"
    case "$1" in
    ingot)
        sh -c "$enter \"\$@\"" sh ip netns exec "$SRV_NS" "$BIN/tftp_serve" --listen "$SRV_IP:69" --root "$WORK/root" --runtime "${INGOT_RUNTIME:-multi}" \
            2>"$WORK/ingot.log" &
        ;;
    tftpd-hpa)
        # -L foreground, -s chroot into the root, forks one child per transfer (reaped, so
        # children's CPU shows up in cutime/cstime).
        sh -c "$enter \"\$@\"" sh ip netns exec "$SRV_NS" /usr/sbin/in.tftpd -L -s -u nobody -a "$SRV_IP:69" "$WORK/root" \
            2>"$WORK/tftpd-hpa.log" &
        ;;
    dnsmasq)
        sh -c "$enter \"\$@\"" sh ip netns exec "$SRV_NS" dnsmasq -k --conf-file=/dev/null --port=0 --enable-tftp --tftp-root="$WORK/root" \
            --listen-address="$SRV_IP" --bind-interfaces --tftp-max=5000 --user=root --pid-file \
            2>"$WORK/dnsmasq.log" &
        ;;
    esac
    SERVER_PID=$!
    sleep 0.5
    kill -0 "$SERVER_PID"
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    sleep 0.5
    remove_cgroup
}

echo "# TFTP boot storm: $NAME ($SIZE bytes), blksize $BLKSIZE, $(nproc) cores, $(date -u +%FT%TZ)" | tee "$OUT"
echo "server mode clients run ok failed wall_s cpu_s cpu_ms_per_mb retransmissions p50_s p99_s" | tee -a "$OUT"
for server in ${SERVERS:-ingot tftpd-hpa dnsmasq}; do
    start_server "$server"
    # Warm-up (page cache, Ingot's file cache) outside the measurement.
    ip netns exec "$CLI_NS" "$BIN/tftp_storm" --server "$SRV_IP:69" --file "$NAME" --expect "$WORK/root/$NAME" \
        --clients 5 --blksize "$BLKSIZE" >/dev/null
    for mode in ${MODES:-lockstep window4}; do
    # lockstep: what iPXE and BIOS PXE ROMs do. window4: the client also asks for RFC 7440
    # windowsize 4, as EDK2's UEFI PXE does by default; servers without RFC 7440 ignore it.
    window_args=()
    [[ "$mode" == window4 ]] && window_args=(--windowsize 4)
    for clients in "${CLIENT_COUNTS[@]}"; do
        for run in $(seq 1 "$RUNS"); do
            before=$(cpu_seconds "$SERVER_PID")
            json=$(ip netns exec "$CLI_NS" "$BIN/tftp_storm" --server "$SRV_IP:69" --file "$NAME" \
                --expect "$WORK/root/$NAME" --clients "$clients" --blksize "$BLKSIZE" --timeout-ms 2000 --retries 5 "${window_args[@]}")
            sleep 1
            after=$(cpu_seconds "$SERVER_PID")
            echo "$json" >>"$WORK/$server.json"
            python3 - "$server $mode" "$clients" "$run" "$before" "$after" "$SIZE" "$json" <<'PY' | tee -a "$OUT"
import json, sys
server, clients, run, before, after, size, raw = sys.argv[1:]
r = json.loads(raw)
cpu = float(after) - float(before)
mb = r["ok"] * int(size) / 1e6
per_mb = cpu * 1000 / mb if mb else float("nan")
print(f'{server} {clients} {run} {r["ok"]} {r["failed"]} {r["wall_s"]:.2f} {cpu:.2f} {per_mb:.3f} {r["retransmissions"]} {r["p50_s"]:.2f} {r["p99_s"]:.2f}')
if r["errors"]:
    print("#   errors:", r["errors"], file=sys.stderr)
PY
        done
    done
    done
    stop_server
done
