#!/usr/bin/env bash
# Builds the "real data" initrd of the migration benchmarks (issue 11): an uncompressed newc
# cpio of ~400 MiB of installed Debian 12 files, the contents of a fixed list of ordinary
# packages (LLVM and GCC with their libraries and headers, ICU, the Perl and Python
# libraries, kernel headers, compiler message catalogs) fetched with `apt-get download` and
# unpacked with `dpkg-deb -x`: ELF code, data tables, source text and headers, in the
# proportions a real root filesystem has. The VMM loads it with `--initrd`; the test guest's
# `hot` workload finds it in the boot information and rewrites a hot set inside it.
#
# Usage: scripts/data-initrd.sh            prints the initrd's path (only that) on stdout
#
# Cache: $NOVACRON_IMAGE_CACHE/data-initrd, or images/linux/cache/data-initrd (git-ignored,
# like the Linux guest of images/linux/build.sh). The .debs are kept in debs/; the initrd is
# named by a hash of this script (which holds the package list), so it is rebuilt only when
# the list or the recipe changes. The package versions used are written next to it
# (data-initrd-<hash>.versions). The archive depends only on the files: sorted entries,
# fixed mtimes, root ownership (cpio --reproducible). Progress goes to stderr. Needs root
# (apt-get) on Debian 12 with the Debian mirrors reachable, unless the initrd is cached;
# exits 2 when the packages cannot be fetched (no network), 1 on other errors.
set -euo pipefail

PKGS=(
  libllvm14 gcc-12 cpp-12 g++-12 libstdc++-12-dev libgcc-12-dev libicu72
  libperl5.36 perl-modules-5.36 libpython3.11-stdlib libpython3.11-dev linux-libc-dev
  gcc-12-locales
)

log() { echo "data-initrd: $*" >&2; }
die() { echo "data-initrd: error: $*" >&2; exit "${2:-1}"; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${NOVACRON_IMAGE_CACHE:-$here/images/linux/cache}/data-initrd"
mkdir -p "$cache/debs" || die "cannot create cache dir $cache"
cache="$(cd "$cache" && pwd)"
key="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)"
out="$cache/data-initrd-$key.cpio"

report() { log "$(($(stat -c %s "$out") >> 20)) MiB ($(stat -c %s "$out") bytes)$1 $out"; }
if [ -s "$out" ]; then
  report " (cached)"
  echo "$out"
  exit 0
fi

# One build at a time per cache dir (a test and a benchmark may ask concurrently).
exec 9>"$cache/.lock"
command -v flock >/dev/null 2>&1 && flock 9
if [ -s "$out" ]; then
  report " (built by a concurrent run)"
  echo "$out"
  exit 0
fi

for t in cpio dpkg-deb; do
  if ! command -v "$t" >/dev/null 2>&1; then
    log "installing $t (scripts/setup.sh installs it too)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${t/dpkg-deb/dpkg}" >&2 ||
      die "cannot install $t"
  fi
done

# Fetch the .debs not in the cache yet; `apt-get update` once if apt does not know them.
fetch() {
  (cd "$cache/debs" && apt-get download -q -o APT::Sandbox::User=root "$@" >&2)
}
missing=()
for p in "${PKGS[@]}"; do
  compgen -G "$cache/debs/${p}_*.deb" >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "downloading ${missing[*]}"
  if ! fetch "${missing[@]}"; then
    log "apt-get download failed; running apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed (no network or not root?)" 2
    fetch "${missing[@]}" || die "apt-get download ${missing[*]} failed (no network?)" 2
  fi
fi

work="$(mktemp -d "$cache/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root"
for p in "${PKGS[@]}"; do
  # The newest cached version of each package (older ones are dropped).
  deb="$(ls -t "$cache/debs/${p}"_*.deb | head -n1)"
  find "$cache/debs" -maxdepth 1 -name "${p}_*.deb" ! -path "$deb" -delete
  dpkg-deb -x "$deb" "$work/root" || die "cannot unpack $deb"
  dpkg-deb --show --showformat='${Package}=${Version}\n' "$deb" >>"$work/versions"
done
# Fixed mtimes so the archive depends only on the file contents.
find "$work/root" -exec touch -h -d '2023-01-01 00:00:00 UTC' {} +
(cd "$work/root" && find . -mindepth 1 | LC_ALL=C sort |
  cpio -o -H newc --reproducible -R 0:0 --quiet >"$work/initrd.cpio") || die "cpio failed"
sort "$work/versions" >"$cache/data-initrd-$key.versions"
mv -f "$work/initrd.cpio" "$out"
report ""
echo "$out"
