#!/usr/bin/env bash
# Assemble a minimal Linux guest from Debian packages:
#   - the kernel bzImage of Debian's cloud kernel (linux-image-cloud-amd64 -> the versioned
#     linux-image-<abi>-cloud-amd64 package it depends on), and
#   - a gzip'd newc cpio initramfs holding busybox-static and an /init that mounts
#     proc/sys/dev, prints "NOVACRON-LINUX READY" and /proc/cmdline, then powers off.
#
# Outputs (printed on stdout, one path per line, nothing else on stdout):
#   $CACHE/vmlinuz
#   $CACHE/initrd.cpio.gz
# where CACHE is $NOVACRON_IMAGE_CACHE or images/linux/cache/ (git-ignored).
#
# Idempotent and cached: the downloaded .debs are kept in $CACHE/debs, and the outputs are
# rebuilt only when the resolved package versions or this script change. Progress goes to
# stderr. Needs root (apt-get) on Debian 12 with access to the Debian mirrors.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${NOVACRON_IMAGE_CACHE:-$SCRIPT_DIR/cache}"
META_PKG="linux-image-cloud-amd64"
BUSYBOX_PKG="busybox-static"

log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }
WORK=""
trap 'echo "build.sh: error: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR
trap 'rc=$?; [ -z "$WORK" ] || rm -rf "$WORK"; [ $rc -eq 0 ] || echo "build.sh: error: image build failed (exit $rc)" >&2' EXIT

mkdir -p "$CACHE/debs" || die "cannot create cache dir $CACHE"
CACHE="$(cd "$CACHE" && pwd)"

# One build at a time per cache dir (tests may run this concurrently).
exec 9>"$CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9 || die "cannot lock $CACHE/.lock"
fi

apt_updated=0
apt_update() {
    [ "$apt_updated" = 1 ] && return 0
    log "running apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed (are the Debian mirrors reachable? are we root?)"
    apt_updated=1
}

# Resolve, with one apt-cache call (apt's binary cache is disabled on these hosts, so each
# call re-reads the package lists):
#   KPKG/KVER: the versioned kernel package that the meta package's candidate depends on,
#              e.g. linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2);
#   BBVER:     the candidate version of busybox-static.
resolve() {
    local info
    KPKG=""; KVER=""; BBVER=""
    info="$(apt-cache show --no-all-versions "$META_PKG" "$BUSYBOX_PKG" 2>/dev/null || true)"
    local dep
    dep="$(printf '%s\n' "$info" | awk -v p="$META_PKG" '
        /^Package: / { cur = $2 }
        cur == p && /^Depends: / && !done { sub(/^Depends: /, ""); print; done = 1 }' |
        tr ',|' '\n\n' | sed 's/^ *//' | grep -E '^linux-image-[0-9][^ ]*-cloud-amd64( |$)' | head -n1 || true)"
    KPKG="${dep%% *}"
    case "$dep" in
        *"(= "*")"*) KVER="${dep#*(= }"; KVER="${KVER%)*}" ;;
    esac
    if [ -n "$KPKG" ] && [ -z "$KVER" ]; then
        KVER="$(apt-cache policy "$KPKG" 2>/dev/null | awk '/Candidate:/ { print $2; exit }' | sed 's/^(none)$//')"
    fi
    BBVER="$(printf '%s\n' "$info" | awk -v p="$BUSYBOX_PKG" '
        /^Package: / { cur = $2 }
        cur == p && /^Version: / && !done { print $2; done = 1 }')"
}

resolve
if [ -z "$KPKG" ] || [ -z "$KVER" ] || [ -z "$BBVER" ]; then
    apt_update
    resolve
fi
[ -n "$KPKG" ] || die "cannot resolve the versioned kernel package that $META_PKG depends on (apt-cache show $META_PKG)"
[ -n "$KVER" ] || die "no installable candidate for $KPKG"
[ -n "$BBVER" ] || die "no installable candidate for $BUSYBOX_PKG"
log "kernel: $KPKG $KVER; busybox: $BUSYBOX_PKG $BBVER"

OUT_KERNEL="$CACHE/vmlinuz"
OUT_INITRD="$CACHE/initrd.cpio.gz"
STAMP="$CACHE/stamp"
KEY="$KPKG=$KVER $BUSYBOX_PKG=$BBVER script=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"

if [ -s "$OUT_KERNEL" ] && [ -s "$OUT_INITRD" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ]; then
    log "up to date (cached)"
    echo "$OUT_KERNEL"
    echo "$OUT_INITRD"
    exit 0
fi

# Tools.
if ! command -v cpio >/dev/null 2>&1; then
    log "installing cpio"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio >&2; then
        apt_update
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio >&2 || die "cannot install cpio"
    fi
fi
for t in dpkg-deb gzip find sort; do
    command -v "$t" >/dev/null 2>&1 || die "required tool '$t' not found"
done

# Fetch a package's .deb into $CACHE/debs (kept across runs); prints the .deb's path.
fetch_deb() {
    local pkg="$1" ver="$2" deb
    # apt-get download names files <pkg>_<version with ':' as %3a>_<arch>.deb.
    deb="$CACHE/debs/${pkg}_${ver//:/%3a}_amd64.deb"
    if [ -s "$deb" ] && dpkg-deb --info "$deb" >/dev/null 2>&1; then
        log "using cached $(basename "$deb")"
    else
        log "downloading $pkg=$ver"
        local tmp
        tmp="$(mktemp -d "$CACHE/debs/.dl.XXXXXX")"
        chmod 755 "$tmp"
        if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2); then
            apt_update
            (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) ||
                { rm -rf "$tmp"; die "apt-get download $pkg=$ver failed"; }
        fi
        local got
        got="$(ls "$tmp"/*.deb 2>/dev/null | head -n1 || true)"
        [ -n "$got" ] || { rm -rf "$tmp"; die "apt-get download $pkg=$ver produced no .deb"; }
        mv -f "$got" "$deb"
        rm -rf "$tmp"
        # Drop older versions of the same package.
        find "$CACHE/debs" -maxdepth 1 -name "${pkg}_*.deb" ! -path "$deb" -delete
    fi
    echo "$deb"
}

KDEB="$(fetch_deb "$KPKG" "$KVER")"
BBDEB="$(fetch_deb "$BUSYBOX_PKG" "$BBVER")"

WORK="$(mktemp -d "$CACHE/.work.XXXXXX")"

# Kernel: /boot/vmlinuz-* from the package.
log "extracting kernel"
mkdir -p "$WORK/kpkg"
dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$WORK/kpkg" --wildcards './boot/vmlinuz-*' ||
    die "no /boot/vmlinuz-* in $(basename "$KDEB")"
KIMG="$(ls "$WORK"/kpkg/boot/vmlinuz-* | head -n1)"
[ -s "$KIMG" ] || die "extracted kernel image is empty"
# A bzImage has the "HdrS" magic at offset 0x202.
[ "$(dd if="$KIMG" bs=1 skip=514 count=4 2>/dev/null)" = "HdrS" ] || die "$KIMG is not a bzImage"

# Initramfs: busybox + /init.
log "building initramfs"
ROOT="$WORK/root"
mkdir -p "$WORK/bbpkg" "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc}
dpkg-deb -x "$BBDEB" "$WORK/bbpkg"
[ -x "$WORK/bbpkg/bin/busybox" ] || die "no /bin/busybox in $(basename "$BBDEB")"
cp "$WORK/bbpkg/bin/busybox" "$ROOT/bin/busybox"
chmod 755 "$ROOT/bin/busybox"

# Applet links. Ask the (static, same-arch) binary for its list; fall back to what /init needs.
APPLETS="$("$ROOT/bin/busybox" --list-full 2>/dev/null || true)"
if [ -z "$APPLETS" ]; then
    APPLETS="bin/sh bin/mount bin/cat bin/echo bin/ls bin/sleep bin/dmesg sbin/poweroff sbin/reboot sbin/halt"
fi
set -f
for a in $APPLETS; do
    [ "$a" = "bin/busybox" ] && continue
    mkdir -p "$ROOT/$(dirname "$a")"
    [ -e "$ROOT/$a" ] || ln -s /bin/busybox "$ROOT/$a"
done
set +f
[ -L "$ROOT/bin/sh" ] || ln -s busybox "$ROOT/bin/sh"

cat >"$ROOT/init" <<'EOF'
#!/bin/sh
# NovaCron minimal Linux guest init.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
echo "NOVACRON-LINUX READY"
echo "NOVACRON-LINUX cmdline: $(cat /proc/cmdline)"
sync
poweroff -f
# poweroff should not return; if it does, leave init and let the kernel panic (panic=N reboots).
exit 1
EOF
chmod 755 "$ROOT/init"

# /dev/console so init has a console before devtmpfs is mounted (the kernel's built-in
# initramfs provides one too, so this is best effort when mknod is not permitted).
mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null || log "warning: cannot mknod dev/console (not root?)"

# Reproducible archive: fixed mtimes, root ownership, sorted entries, no gzip timestamp.
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -n -9 >"$WORK/initrd.cpio.gz" ||
    die "cpio/gzip failed"
gzip -t "$WORK/initrd.cpio.gz" || die "produced initramfs is not valid gzip"

# Publish atomically.
cp "$KIMG" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUT_KERNEL"
mv -f "$WORK/initrd.cpio.gz" "$OUT_INITRD"
echo "$KEY" >"$STAMP"
log "built $(basename "$KIMG") ($(stat -c %s "$OUT_KERNEL") bytes), initrd $(stat -c %s "$OUT_INITRD") bytes"
echo "$OUT_KERNEL"
echo "$OUT_INITRD"
