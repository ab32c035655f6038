#!/usr/bin/env bash
# Real MAAS clients against a real `ingot serve`:
#   1. python-libmaas (PyPI, pinned below) runs tests/clients/maas/libmaas_scenario.py:
#      connect with an API key, list, commission, allocate with constraints and the 409
#      case, deploy with user_data to Deployed, power off/on/query, release to Ready, login.
#   2. cloud-init's own MAAS datasource (Debian package `cloud-init`, module
#      cloudinit.sources.DataSourceMAAS) reads instance-id, hostname, public keys, vendor-data
#      and user-data from Ingot's metadata service with a machine's OAuth credentials; that
#      read marks the Deploying machine Deployed.
#
#   scripts/test-maas-clients.sh
#
# Needs: python3 with venv (Debian python3-venv), the Debian cloud-init package (system
# python3 imports `cloudinit`), and PyPI for the first run (the venv is cached).
# Env: INGOT_BIN (default: builds the `ingot` binary), INGOT_VENV (default
# /var/cache/ingot-venv/maas), INGOT_SIM_MACHINES (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."

LIBMAAS_VERSION=0.6.8
VENV=${INGOT_VENV:-/var/cache/ingot-venv/maas}
SYSTEM_PYTHON=${INGOT_SYSTEM_PYTHON:-/usr/bin/python3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/ingot-target}

say() { printf '[maas-clients] %s\n' "$*"; }

# --- python-libmaas in a cached venv -------------------------------------------------------
if ! "$VENV/bin/python" -c "import maas.client, sys; from importlib.metadata import version; sys.exit(version('python-libmaas') != '$LIBMAAS_VERSION')" 2>/dev/null; then
    say "creating $VENV with python-libmaas==$LIBMAAS_VERSION"
    rm -rf "$VENV"
    "$SYSTEM_PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/clients/maas/requirements.txt
fi
if ! "$SYSTEM_PYTHON" -c "import cloudinit.sources.DataSourceMAAS" 2>/dev/null; then
    echo "cloud-init's MAAS datasource is not importable by $SYSTEM_PYTHON: apt-get install cloud-init" >&2
    exit 1
fi

# --- the region -----------------------------------------------------------------------------
if [ -z "${INGOT_BIN:-}" ]; then
    cargo build -p ingot --quiet
    INGOT_BIN="$CARGO_TARGET_DIR/debug/ingot"
fi
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid"
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$("$SYSTEM_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key=$("$INGOT_BIN" admin create-user --data-dir "$work/data" --username admin --admin | tail -1)
"$INGOT_BIN" serve --data-dir "$work/data" --listen "127.0.0.1:$port" --region-url "http://127.0.0.1:$port" \
    --sim-machines "${INGOT_SIM_MACHINES:-4}" --sim-delay-ms 50 --power-sync-interval 0 \
    >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    "$SYSTEM_PYTHON" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://127.0.0.1:$port/healthz" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
    sleep 0.1
done
url="http://127.0.0.1:$port/MAAS/"
say "region at $url (log: $work/server.log)"

fail() {
    say "FAILED: $*; server log follows"
    tail -n 80 "$work/server.log"
    exit 1
}

# --- scenarios --------------------------------------------------------------------------------
# Run from the work dir so nothing in the tree shadows the client packages.
scenarios=$(pwd)/tests/clients/maas
(cd "$work" && "$VENV/bin/python" "$scenarios/libmaas_scenario.py" lifecycle --url "$url" --apikey "$key") \
    || fail "python-libmaas lifecycle"
(cd "$work" && "$VENV/bin/python" "$scenarios/libmaas_scenario.py" prepare-metadata --url "$url" --apikey "$key" --out "$work/seed.json") \
    || fail "python-libmaas prepare-metadata"
(cd "$work" && "$SYSTEM_PYTHON" "$scenarios/cloudinit_datasource.py" "$work/seed.json") \
    || fail "cloud-init MAAS datasource"
(cd "$work" && "$VENV/bin/python" "$scenarios/libmaas_scenario.py" check-deployed --url "$url" --apikey "$key" --input "$work/seed.json") \
    || fail "Deployed after user-data"
say "4 passed, 0 failed"
