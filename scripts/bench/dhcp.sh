#!/usr/bin/env bash
# DHCPv4 throughput: Ingot's server vs kea-dhcp4 vs dnsmasq, driven by perfdhcp over a veth pair
# between two private network namespaces. Leases are persisted by all three:
#   ingot   append-only file, one fdatasync per commit batch, ACK sent after the sync;
#   kea     memfile CSV (persist=true; written, not fsynced, per lease);
#   dnsmasq lease file (rewritten on change; --no-ping, or it pings every address first).
# Every server gets a fresh lease file for every rate. Runs are bounded: perfdhcp -p $PERIOD
# seconds (under `timeout`), and everything lives in namespaces that are deleted on exit.
#
# Usage: sudo scripts/bench/dhcp.sh [RATES...]      (default rates: 2000 4000 6000 8000 12000)
# Env:   PERIOD (s, default 10), CLIENTS (perfdhcp -R, default 50000), SERVERS ("ingot kea dnsmasq"),
#        OUT (markdown result file, default docs/bench-dhcp.md), KEEP_LOGS=1 to keep the work dir,
#        SKIP_BUILD=1 to use the already built example binary.
# Needs: root, iproute2, kea-admin (perfdhcp), kea-dhcp4-server, dnsmasq-base, cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RATES=("${@:-2000 4000 6000 8000 12000}")
read -r -a RATES <<< "${RATES[*]}"
PERIOD=${PERIOD:-10}
CLIENTS=${CLIENTS:-50000}
SERVERS=${SERVERS:-ingot kea dnsmasq}
OUT=${OUT:-$ROOT/docs/bench-dhcp.md}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/ingot-target}

for tool in ip perfdhcp kea-dhcp4 dnsmasq cargo; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }

ID=$$
SRV_NS=ingot-bench-dsrv-$ID
CLI_NS=ingot-bench-dcli-$ID
SRV_IF=bds$((ID % 100000))
CLI_IF=bdc$((ID % 100000))
WORK=$(mktemp -d /tmp/ingot-dhcp-bench.XXXXXX)
SERVER_PID=

cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    ip netns del "$SRV_NS" 2>/dev/null || true
    ip netns del "$CLI_NS" 2>/dev/null || true
    if [ -z "${KEEP_LOGS:-}" ]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
}
trap cleanup EXIT INT TERM

if [ -z "${SKIP_BUILD:-}" ]; then
    echo "building the Ingot server (release)..." >&2
    (cd "$ROOT" && cargo build --release -q -p pxe --example dhcp_bench_server)
fi
INGOT_BIN=$CARGO_TARGET_DIR/release/examples/dhcp_bench_server

ip netns add "$SRV_NS"
ip netns add "$CLI_NS"
ip link add "$SRV_IF" netns "$SRV_NS" type veth peer name "$CLI_IF" netns "$CLI_NS"
ip -n "$SRV_NS" addr add 10.88.0.1/16 dev "$SRV_IF"
ip -n "$CLI_NS" addr add 10.88.255.254/16 dev "$CLI_IF"
for ns_if in "$SRV_NS:$SRV_IF" "$CLI_NS:$CLI_IF"; do
    ip -n "${ns_if%%:*}" link set "${ns_if#*:}" up
    ip -n "${ns_if%%:*}" link set lo up
done

start_server() { # name rate
    local name=$1 dir=$WORK/$1-$2
    mkdir -p "$dir"
    case $name in
    ingot)
        ip netns exec "$SRV_NS" "$INGOT_BIN" --interface "$SRV_IF" --server-ip 10.88.0.1 \
            --subnet 10.88.0.0/16 --range 10.88.0.10-10.88.254.254 --lease-file "$dir/leases" \
            >"$dir/log" 2>&1 &
        ;;
    kea)
        cat >"$dir/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": ["$SRV_IF"], "dhcp-socket-type": "raw" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$dir/leases.csv", "lfc-interval": 0 },
    "valid-lifetime": 600,
    "subnet4": [ { "subnet": "10.88.0.0/16", "pools": [ { "pool": "10.88.0.10 - 10.88.254.254" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN", "output_options": [ { "output": "$dir/kea.log" } ] } ]
} }
JSON
        KEA_PIDFILE_DIR=$dir KEA_LOCKFILE_DIR=$dir ip netns exec "$SRV_NS" kea-dhcp4 -c "$dir/kea.json" \
            >"$dir/log" 2>&1 &
        ;;
    dnsmasq)
        ip netns exec "$SRV_NS" dnsmasq -k --conf-file=/dev/null --port=0 --user=root \
            --interface="$SRV_IF" --bind-interfaces --dhcp-authoritative --no-ping \
            --dhcp-range=10.88.0.10,10.88.254.254,255.255.0.0,10m --dhcp-lease-max=100000 \
            --dhcp-leasefile="$dir/leases" --pid-file="$dir/pid" >"$dir/log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    # Wait until UDP 67 is bound in the server namespace (at most 10 s).
    for _ in $(seq 100); do
        if ip netns exec "$SRV_NS" ss -lun 2>/dev/null | grep -q ':67 '; then
            sleep 0.3; return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$dir/log" >&2; return 1; }
        sleep 0.1
    done
    echo "$name did not start" >&2; cat "$dir/log" >&2; return 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# Prints: achieved-rate do-sent do-drops ra-sent ra-drops avg-delay-ms
run_perfdhcp() { # rate logfile
    timeout $((PERIOD + 20)) ip netns exec "$CLI_NS" perfdhcp -4 -l "$CLI_IF" -r "$1" -R "$CLIENTS" \
        -p "$PERIOD" -W 500000 >"$2" 2>&1 || true
    awk '
        /^Rate:/ { rate = $2 }
        /Statistics for: DISCOVER-OFFER/ { sec = "do" }
        /Statistics for: REQUEST-ACK/ { sec = "ra" }
        /^sent packets:/ { sent[sec] = $3 }
        /^drops:/ { drops[sec] = $2 }
        /^avg delay:/ { delay[sec] = $3 }
        END { printf "%s %s %s %s %s %s\n", rate == "" ? 0 : rate, sent["do"] + 0, drops["do"] + 0, sent["ra"] + 0, drops["ra"] + 0, delay["ra"] == "" ? "-" : delay["ra"] }
    ' "$2"
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
# Servers alternate within each rate, so load from other processes on the machine drifts over
# all of them alike.
for rate in "${RATES[@]}"; do
    for server in $SERVERS; do
        start_server "$server" "$rate"
        line=$(run_perfdhcp "$rate" "$WORK/$server-$rate/perfdhcp.log")
        stop_server
        leases=$(case $server in
            ingot) cut -d' ' -f1 "$WORK/$server-$rate/leases" | sort -u | wc -l ;;
            kea) tail -n +2 "$WORK/$server-$rate/leases.csv" | cut -d, -f1 | sort -u | wc -l ;;
            dnsmasq) wc -l <"$WORK/$server-$rate/leases" ;;
        esac)
        leases=${leases// /}
        echo "$server $rate $line $leases" | tee -a "$RESULTS" >&2
        sleep 1
    done
done

# The results block; in an existing OUT it replaces the part between the bench markers, so the
# hand-written analysis around it survives a re-run.
BLOCK=$WORK/results.md
{
    echo "<!-- bench:begin (generated by scripts/bench/dhcp.sh; edits inside are overwritten) -->"
    echo "Generated by \`scripts/bench/dhcp.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -r))."
    echo "perfdhcp (Kea $(perfdhcp -v 2>&1 | head -1)) in one network namespace, the server in another, over a veth pair;"
    echo "each row is one ${PERIOD}s run at a fixed offered rate of DORA exchanges (\`-r\`), ${CLIENTS} simulated clients (\`-R\`),"
    echo "fresh lease file per row. *Completed/s* = (REQUESTs sent − ACK drops) / ${PERIOD} s, i.e. full DORA exchanges that got"
    echo "their ACK; *perfdhcp rate* is perfdhcp's own figure (its run time includes a 0.5 s exit wait). Drops are packets"
    echo "unanswered within 1 s; *drop %* = (OFFER drops + ACK drops) / DISCOVERs sent."
    echo
    echo "| server | offered/s | completed/s | perfdhcp rate | DISCOVERs | OFFER drops | ACK drops | drop % | avg ACK delay (ms) | distinct leases on disk |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    awk -v period="$PERIOD" '{
        completed = ($6 - $7) / period; pct = $4 > 0 ? 100 * ($5 + $7) / $4 : 0
        printf "| %s | %s | %d | %d | %s | %s | %s | %.2f | %s | %s |\n", $1, $2, completed, $3, $4, $5, $7, pct, $8, $9
    }' "$RESULTS"
    echo
    echo "Per server: peak completed exchanges/s (any drop rate), and the highest offered rate served with < 1 % drops:"
    echo
    for server in $SERVERS; do
        awk -v s="$server" -v period="$PERIOD" '$1 == s {
            c = ($6 - $7) / period; if (c > peak) peak = c
            if ($4 > 0 && ($5 + $7) / $4 < 0.01 && $2 > clean) clean = $2
        } END { printf "- %s: peak %d completed/s; clean up to %d offered/s\n", s, peak, clean }' "$RESULTS"
    done
    echo "<!-- bench:end -->"
} >"$BLOCK"
if [ -f "$OUT" ] && grep -q '<!-- bench:begin' "$OUT"; then
    awk -v block="$BLOCK" '
        /<!-- bench:begin/ { while ((getline line < block) > 0) print line; skip = 1; next }
        /<!-- bench:end -->/ { skip = 0; next }
        !skip { print }' "$OUT" >"$WORK/out.md"
    cp "$WORK/out.md" "$OUT"
else
    { echo "# DHCPv4 benchmark: Ingot vs Kea vs dnsmasq"; echo; cat "$BLOCK"; } >"$OUT"
fi
echo "wrote $OUT" >&2
