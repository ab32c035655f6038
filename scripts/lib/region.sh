# Shared by the client-scenario scripts: build `ingot`, start a throwaway region on a free
# loopback port with a simulated fleet, stop it and remove its data on exit.
# Callers set SYSTEM_PYTHON and define say(); after region_prepare they have $work,
# $port and $url_base; region_start N launches the server and waits for /healthz.

region_prepare() {
    if [ -z "${INGOT_BIN:-}" ]; then
        cargo build -p ingot --quiet
        INGOT_BIN="$CARGO_TARGET_DIR/debug/ingot"
    fi
    work=$(mktemp -d)
    server_pid=
    trap region_cleanup EXIT
    port=$("$SYSTEM_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    url_base="http://127.0.0.1:$port"
}

region_cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid"
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}

# region_start SIM_MACHINES
region_start() {
    "$INGOT_BIN" serve --data-dir "$work/data" --listen "127.0.0.1:$port" --region-url "$url_base" \
        --sim-machines "$1" --sim-delay-ms 50 --power-sync-interval 0 \
        >"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 100); do
        "$SYSTEM_PYTHON" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
            "$url_base/healthz" 2>/dev/null && return 0
        kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
        sleep 0.1
    done
    say "region did not answer /healthz; log follows"
    cat "$work/server.log"
    exit 1
}

fail() {
    say "FAILED: $*; server log follows"
    tail -n 80 "$work/server.log"
    exit 1
}
