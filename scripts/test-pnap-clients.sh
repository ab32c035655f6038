#!/usr/bin/env bash
# phoenixNAP Bare Metal Cloud clients against a real `ingot serve` with a simulated fleet:
#   1. pnap-bmc-api (phoenixNAP's Python SDK, PyPI, pinned in tests/clients/pnap/requirements.txt)
#      runs tests/clients/pnap/sdk_scenario.py: token by client credentials, 3 concurrent
#      creates, poll until powered-on, power off/on, reboot, patch hostname, list, SSH keys,
#      quotas, delete and deprovision.
#   2. tests/clients/pnap/demo_scenario.py replays the seed article's demo (k8s-demo.py) with
#      plain HTTP requests: token → 3 concurrent creates → poll every 2 s → delete.
#
#   scripts/test-pnap-clients.sh
#
# Needs: python3 with venv (Debian python3-venv) and PyPI for the first run (the venv is cached).
# Env: INGOT_BIN (default: builds the `ingot` binary), INGOT_VENV (default
# /var/cache/ingot-venv/pnap), INGOT_SIM_MACHINES (default 6).
set -euo pipefail
cd "$(dirname "$0")/.."

PNAP_VERSION=2.4.0
VENV=${INGOT_VENV:-/var/cache/ingot-venv/pnap}
SYSTEM_PYTHON=${INGOT_SYSTEM_PYTHON:-/usr/bin/python3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/ingot-target}

say() { printf '[pnap-clients] %s\n' "$*"; }

# --- pnap-bmc-api in a cached venv ----------------------------------------------------------
if ! "$VENV/bin/python" -c "import pnap_bmc_api, requests, sys; from importlib.metadata import version; sys.exit(version('pnap-bmc-api') != '$PNAP_VERSION')" 2>/dev/null; then
    say "creating $VENV with pnap-bmc-api==$PNAP_VERSION"
    rm -rf "$VENV"
    "$SYSTEM_PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/clients/pnap/requirements.txt
fi

# --- the region -----------------------------------------------------------------------------
. scripts/lib/region.sh
region_prepare
key=$("$INGOT_BIN" admin create-user --data-dir "$work/data" --username admin --admin | tail -1)
"$INGOT_BIN" tenant create --data-dir "$work/data" demo --max-servers 10 >/dev/null
creds=$("$INGOT_BIN" tenant create-credentials --data-dir "$work/data" demo | tail -1)
client_id=${creds%%:*}
client_secret=${creds#*:}
region_start "${INGOT_SIM_MACHINES:-6}"
url="$url_base"
say "region at $url (log: $work/server.log)"

# --- scenarios --------------------------------------------------------------------------------
# Run from the work dir so nothing in the tree shadows the client packages.
scenarios=$(pwd)/tests/clients/pnap
passed=0
(cd "$work" && "$VENV/bin/python" "$scenarios/commission.py" --url "$url" --apikey "$key") || fail "commissioning the sim fleet"
(cd "$work" && "$VENV/bin/python" "$scenarios/sdk_scenario.py" --url "$url" --client-id "$client_id" --client-secret "$client_secret") \
    || fail "pnap-bmc-api scenario"
passed=$((passed + 1))
# The first scenario's machines are wiped and back to Ready before the demo needs them.
(cd "$work" && "$VENV/bin/python" "$scenarios/commission.py" --url "$url" --apikey "$key") || fail "fleet back to Ready"
(cd "$work" && "$VENV/bin/python" "$scenarios/demo_scenario.py" --url "$url" --client-id "$client_id" --client-secret "$client_secret") \
    || fail "seed demo scenario"
passed=$((passed + 1))
say "pnap-bmc-api $PNAP_VERSION scenarios"
echo "pnap: $passed passed, 0 failed"
