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
. scripts/lib/region.sh
region_prepare
key=$("$INGOT_BIN" admin create-user --data-dir "$work/data" --username admin --admin | tail -1)
region_start "${INGOT_SIM_MACHINES:-4}"
url="$url_base/MAAS/"
say "region at $url (log: $work/server.log)"

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
