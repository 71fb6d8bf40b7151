#!/usr/bin/env bash
# Installs the host packages NovaCron's tests and demo need (idempotent; run as root on a
# fresh Debian machine that has only the Rust toolchain).
set -euo pipefail
need=()
command -v iasl >/dev/null 2>&1 || need+=(acpica-tools)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
# mkfs.xfs: tests/mgmt_snapshots.rs measures block sharing of clones on an XFS (reflink)
# loop filesystem.
command -v mkfs.xfs >/dev/null 2>&1 || need+=(xfsprogs)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
  echo "setup: /dev/kvm is not readable and writable by $(id -un); NovaCron needs KVM" >&2
  exit 1
fi
# The real-data initrd of tests/hot_workload.rs and `cargo bench --bench data_migration`
# (~400 MiB of Debian files; ~30 s the first time, ~90 MB downloaded, then cached). Without
# network the test reports that it is skipped.
bash "$(dirname "$0")/data-initrd.sh" >/dev/null ||
  echo "setup: the data initrd could not be built (see above)" >&2
