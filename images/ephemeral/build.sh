#!/bin/bash
# Builds Ingot's ephemeral environment: a Debian kernel and an initramfs with busybox, the
# drivers from modules.list (with their dependencies) and the statically linked ingot-agent.
#
#   images/ephemeral/build.sh [--agent PATH]
#
# Inputs are Debian packages (fetched with `apt-get download` from the configured mirror,
# kept in $INGOT_IMAGE_CACHE/debs so later builds run offline), this folder's files and the
# agent binary. The output goes to $INGOT_IMAGE_CACHE/ephemeral/<sha256 of the inputs>/
# {vmlinuz,initrd.gz,manifest.json}; a build whose inputs did not change reuses it. The
# output directory is the last line on stdout; progress goes to stderr.
#
# Environment:
#   INGOT_IMAGE_CACHE     cache root (default /var/cache/ingot-images)
#   INGOT_KERNEL_PACKAGE  e.g. linux-image-6.1.0-56-amd64 (default: what linux-image-amd64
#                         depends on in the apt lists)
#   INGOT_IMAGE_KEEP      how many builds to keep in the cache (default 5)
#   CARGO_TARGET_DIR      where cargo builds the agent (default <repo>/target)
# Needs: apt-get, dpkg-deb, depmod (kmod), cpio, gzip, sha256sum; cargo unless --agent.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${INGOT_IMAGE_CACHE:-/var/cache/ingot-images}
agent=""

while [ $# -gt 0 ]; do
    case "$1" in
        --agent) agent=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

say() { echo "ephemeral: $*" >&2; }
die() { echo "ephemeral: error: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio gzip sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
depmod=$(command -v depmod || true)
for p in /usr/sbin/depmod /sbin/depmod; do
    [ -n "$depmod" ] || { [ -x "$p" ] && depmod=$p; } || true
done
[ -n "$depmod" ] || die "depmod is missing (apt-get install kmod)"

# --- the agent: static, so the initramfs needs no C library -------------------------------
if [ -z "$agent" ]; then
    say "cargo build of ingot-agent (static, release; quick when up to date)"
    # crt-static with the host's own target: no extra toolchain download. The agent never
    # resolves host names through NSS, the one thing static glibc cannot do.
    (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release --target x86_64-unknown-linux-gnu -p ingot-agent) >&2
    agent=${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu/release/ingot-agent
fi
[ -x "$agent" ] || die "agent binary $agent not found"
if command -v readelf >/dev/null && readelf -d "$agent" 2>/dev/null | grep -q NEEDED; then
    die "$agent is dynamically linked; build it with RUSTFLAGS=\"-C target-feature=+crt-static\""
fi

# --- Debian packages -----------------------------------------------------------------------
# Newest candidate version of a package in the apt lists.
candidate() {
    local v
    v=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "apt knows no package $1 (run apt-get update)"
    echo "$v"
}

# Path of package $1 at version $2 in the deb cache, downloading it when missing.
fetch_deb() {
    local dir="$cache/debs/$1/$2"
    if ! ls "$dir"/*.deb >/dev/null 2>&1; then
        say "downloading $1 $2"
        mkdir -p "$dir.tmp"
        (cd "$dir.tmp" && apt-get download -q -o APT::Sandbox::User=root "$1=$2" >&2) || die "apt-get download $1=$2 failed"
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    ls "$dir"/*.deb | head -n1
}

kernel_pkg=${INGOT_KERNEL_PACKAGE:-$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')}
[ -n "$kernel_pkg" ] || die "cannot resolve linux-image-amd64 (run apt-get update)"
kernel_ver=$(candidate "$kernel_pkg")
busybox_ver=$(candidate busybox-static)
kernel_deb=$(fetch_deb "$kernel_pkg" "$kernel_ver")
busybox_deb=$(fetch_deb busybox-static "$busybox_ver")

# --- cache key: every input's content ------------------------------------------------------
inputs=$(
    for f in "$kernel_deb" "$busybox_deb" "$agent" "$here/build.sh" "$here/init" "$here/udhcpc.script" "$here/modules.list"; do
        printf '%s %s\n' "$(sha256sum < "$f" | cut -d' ' -f1)" "${f##*/}"
    done
)
key=$(printf '%s\n' "$inputs" | sha256sum | cut -d' ' -f1)
out="$cache/ephemeral/$key"
if [ -f "$out/manifest.json" ]; then
    say "up to date: $out"
    echo "$out"
    exit 0
fi

mkdir -p "$cache/ephemeral"
exec 9>"$cache/ephemeral/.lock"
flock 9
if [ -f "$out/manifest.json" ]; then   # built by a concurrent run while we waited
    echo "$out"
    exit 0
fi
say "building $key"
work=$(mktemp -d "$cache/ephemeral/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- kernel and modules --------------------------------------------------------------------
dpkg-deb -x "$kernel_deb" "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
[ "$(echo "$kver" | wc -l)" = 1 ] || die "expected one kernel in $kernel_deb, found: $kver"
"$depmod" -b "$work/kernel" "$kver"
moddir="$work/kernel/lib/modules/$kver"

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,etc/ingot,lib/modules/"$kver"}
# Each listed module and its dependencies (modules.dep: "path: dep dep ...").
wanted=$(grep -v '^\s*#' "$here/modules.list" | awk 'NF {print $1}')
paths=$(
    for m in $wanted; do
        # File names use either - or _ where module names have _.
        pattern=$(echo "$m" | sed 's/[-_]/[-_]/g')
        line=$(grep -E "(^|/)${pattern}\.ko(\.[a-z]+)?:" "$moddir/modules.dep") || die "module $m is not in $kernel_pkg"
        echo "$line" | tr -d ':' | tr ' ' '\n' | grep .
    done | sort -u
)
for p in $paths; do
    mkdir -p "$root/lib/modules/$kver/$(dirname "$p")"
    cp "$moddir/$p" "$root/lib/modules/$kver/$p"
done
cp "$moddir"/modules.order "$moddir"/modules.builtin "$moddir"/modules.builtin.modinfo "$root/lib/modules/$kver/"
"$depmod" -b "$root" "$kver"
cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"

# --- busybox, scripts, agent ---------------------------------------------------------------
dpkg-deb -x "$busybox_deb" "$work/busybox"
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$here/init" "$root/init"
install -m 0755 "$here/udhcpc.script" "$root/etc/ingot/udhcpc.script"
printf '%s\n' "$wanted" > "$root/etc/ingot/modules"
echo "$key" > "$root/etc/ingot/build-id"
install -m 0755 "$agent" "$root/bin/ingot-agent"
if command -v strip >/dev/null; then
    strip --strip-all "$root/bin/ingot-agent"   # debug info is 80 % of the file
fi

# --- initramfs: same inputs, same bytes (sorted entries, fixed owner and times) ------------
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) | gzip -n -6 > "$work/initrd.gz"

sum() { sha256sum < "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
modules_json=$(for p in $paths; do basename "$p" | sed 's/\.ko.*//'; done | sort | awk '{printf "%s\"%s\"", (NR>1 ? ", " : ""), $1}')
mkdir -p "$work/out"
mv "$work/vmlinuz" "$work/initrd.gz" "$work/out/"
cat > "$work/out/manifest.json" <<JSON
{
  "key": "$key",
  "kernel": {"package": "$kernel_pkg", "version": "$kernel_ver", "release": "$kver", "deb_sha256": "$(sum "$kernel_deb")"},
  "busybox": {"package": "busybox-static", "version": "$busybox_ver", "deb_sha256": "$(sum "$busybox_deb")"},
  "agent": {"sha256": "$(sum "$agent")", "stripped_bytes": $(size "$root/bin/ingot-agent")},
  "modules": [$modules_json],
  "files": {
    "vmlinuz": {"bytes": $(size "$work/out/vmlinuz"), "sha256": "$(sum "$work/out/vmlinuz")"},
    "initrd.gz": {"bytes": $(size "$work/out/initrd.gz"), "sha256": "$(sum "$work/out/initrd.gz")"}
  },
  "kernel_args": "ingot.url=<region URL> ingot.token=<per-boot token> [ingot.purpose=enlist|commission|deploy] [BOOTIF=01-<mac>] console=ttyS0"
}
JSON
rm -rf "$out"
mv "$work/out" "$out"
ln -sfn "$key" "$cache/ephemeral/latest"
# Keep the newest few builds (about 16 MB each); older ones are only a rebuild away.
find "$cache/ephemeral" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%T@ %f\n' | sort -rn |
    tail -n +$((${INGOT_IMAGE_KEEP:-5} + 1)) | while read -r _ old; do
        [ "$old" = "$key" ] || rm -rf "${cache:?}/ephemeral/$old"
    done
say "built $out: vmlinuz $(size "$out/vmlinuz") bytes, initrd.gz $(size "$out/initrd.gz") bytes, $(echo "$paths" | wc -l) modules"
echo "$out"
