#!/usr/bin/env bash
# Builds an initrd (uncompressed cpio, newc) of ~400 MiB of real installed distro files: a
# fixed list of ordinary Debian packages (compilers, libraries, the Perl and Python
# libraries, locales) fetched with `apt-get download` and unpacked with `dpkg-deb -x`. The
# benchmarks load it as guest memory that holds real data (issue 11).
#
# Usage: scripts/data-initrd.sh [CACHE_DIR]    (default: target/data-initrd)
# Prints the initrd's path on stdout's last line and its size on stderr.
#
# Idempotent and cached: the initrd is rebuilt only when the package list changes (its
# hash names the output). Reproducible for a given set of package versions: files are
# archived in sorted order with fixed mtimes and owners (cpio --reproducible); the versions
# used are written next to it (data-initrd-<hash>.versions). Needs root on a fresh Debian
# machine only to install cpio/dpkg if absent; `apt-get update` is run when the package
# lists are missing.
set -euo pipefail
PKGS=(
  libllvm14 gcc-12 cpp-12 g++-12 libstdc++-12-dev libgcc-12-dev libicu72
  libperl5.36 perl-modules-5.36 libpython3.11-stdlib libpython3.11-dev linux-libc-dev
  gcc-12-locales
)
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${1:-$here/target/data-initrd}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
key=$(printf '%s\n' "${PKGS[@]}" | sha256sum | cut -c1-12)
out=$cache/data-initrd-$key.cpio
if [ -s "$out" ]; then
  echo "data-initrd: $(du -m "$out" | cut -f1) MiB (cached) $out" >&2
  echo "$out"
  exit 0
fi
need=()
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
if ! apt-cache show --no-all-versions "${PKGS[0]}" >/dev/null 2>&1 || [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then apt-get install -y -qq "${need[@]}" >/dev/null; fi
fi
work=$cache/work-$key
rm -rf "$work"
mkdir -p "$work/debs" "$work/root"
(cd "$work/debs" && apt-get download -q "${PKGS[@]}" >/dev/null)
for d in "$work"/debs/*.deb; do
  dpkg-deb -x "$d" "$work/root"
  dpkg-deb -f "$d" Package Version | paste -sd' ' >>"$work/versions"
done
# Fixed mtimes so the archive depends only on the file contents.
find "$work/root" -exec touch -h -d '2023-01-01 00:00:00 UTC' {} +
(cd "$work/root" && find . -mindepth 1 | LC_ALL=C sort |
  cpio -o -H newc --reproducible -R 0:0 --quiet >"$out.tmp")
mv "$out.tmp" "$out"
sort "$work/versions" >"$cache/data-initrd-$key.versions"
rm -rf "$work"
echo "data-initrd: $(du -m "$out" | cut -f1) MiB ($(stat -c %s "$out") bytes) $out" >&2
echo "$out"
