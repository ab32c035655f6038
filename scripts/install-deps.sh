#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian/Ubuntu machine, skipping what is
# already there: Debian packages for the real peers (PostgreSQL, QEMU + firmware, virtual
# BMCs, DHCP/TFTP servers, cloud-init) and Rust components. Python client libraries live in
# per-scenario venvs created by the scenario scripts. Idempotent; run as root.
set -euo pipefail

# package → a file or command that proves it is installed
declare -A PROBE=(
    [postgresql]=/usr/lib/postgresql
    [qemu-system-x86]=/usr/bin/qemu-system-x86_64
    [qemu-utils]=/usr/bin/qemu-img
    [ipxe]=/usr/lib/ipxe/undionly.kpxe
    [ipxe-qemu]=/usr/lib/ipxe/qemu/efi-virtio.rom
    [ovmf]=/usr/share/ovmf/OVMF.fd
    [seabios]=/usr/share/seabios/bios.bin
    [openipmi]=/usr/bin/ipmi_sim
    [ipmitool]=/usr/bin/ipmitool
    [dnsmasq-base]=/usr/sbin/dnsmasq
    [kea-dhcp4-server]=/usr/sbin/kea-dhcp4
    [kea-admin]=/usr/sbin/perfdhcp
    [tftpd-hpa]=/usr/sbin/in.tftpd
    [busybox-static]=/bin/busybox
    [cpio]=/usr/bin/cpio
    [kmod]=/usr/sbin/depmod
    [iproute2]=/usr/sbin/ip
    [tcpdump]=/usr/bin/tcpdump
    [openssl]=/usr/bin/openssl
    [apache2-utils]=/usr/bin/htpasswd
    [pkg-config]=/usr/bin/pkg-config
    [libvirt-dev]=/usr/include/libvirt/libvirt.h
    [libvirt-daemon-system]=/usr/sbin/libvirtd
    [libvirt-clients]=/usr/bin/virsh
    [libvirt-daemon-driver-qemu]=/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so
    [binutils]=/usr/bin/strip
    [gzip]=/usr/bin/gzip
    [procps]=/usr/bin/pgrep
    [python3-venv]=/usr/lib/python3.11/ensurepip
    [curl]=/usr/bin/curl
)

missing=()
for pkg in "${!PROBE[@]}"; do
    [ -e "${PROBE[$pkg]}" ] || missing+=("$pkg")
done
# cloud-init is only used for `cloud-init schema` and its MAAS datasource code: install it
# without recommends and disable it first so it never configures this host.
need_cloud_init=0
[ -e /usr/bin/cloud-init ] || need_cloud_init=1

export DEBIAN_FRONTEND=noninteractive
if [ ${#missing[@]} -gt 0 ] || [ $need_cloud_init = 1 ]; then
    echo "install-deps: installing ${missing[*]} $([ $need_cloud_init = 1 ] && echo cloud-init)"
    apt-get update -qq
    if [ ${#missing[@]} -gt 0 ]; then
        # policy-rc.d keeps package scripts from starting services we start ourselves.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [ $need_cloud_init = 1 ]; then
        mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
        apt-get install -y -qq --no-install-recommends cloud-init >/dev/null
    fi
fi
mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled

# Rust components the checks use (the toolchain itself is pinned by rust-toolchain.toml).
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
    rustup component add clippy rustfmt
fi
echo "install-deps: ok"
