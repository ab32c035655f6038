#!/usr/bin/env bash
# Ensures a PostgreSQL server from Debian's packages is running on 127.0.0.1:5432 with a
# role `ingot` (password `ingot`, CREATEDB) for the test suite, and prints its URL.
# Installs the server when it is missing. Safe to run repeatedly.
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi
ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | grep -q "^$ver main$"; then
    pg_createcluster "$ver" main >/dev/null
fi
if ! pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online; then
    # No systemd here: start the cluster directly.
    pg_ctlcluster "$ver" main start
fi
for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.2
done
su postgres -c "psql -q -p 5432 -tAc \"SELECT 1 FROM pg_roles WHERE rolname='ingot'\"" | grep -q 1 ||
    su postgres -c "psql -q -p 5432 -c \"CREATE ROLE ingot LOGIN CREATEDB PASSWORD 'ingot'\""
echo "postgres://ingot:ingot@127.0.0.1:5432/postgres"
