#!/usr/bin/env bash
# The main job. Part 1 (the VMM): boots the test guest running the `ab` workload (64 MiB
# dirtied continuously), live-migrates it over loopback TCP to a second VMM with page-by-page
# verification, and shows the guest's self-check still passing on the destination.
# Part 2 (the management plane): a controller and two agents on this machine create VMs from
# the test guest, live-migrate one and drain a host (controller/scripts/demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --bins
bin=${CARGO_TARGET_DIR:-target}/debug
guest=$bin/novacron-testguest.elf
work=$(mktemp -d /tmp/novacron-demo.XXXXXX)
cleanup() { kill "${src:-}" "${dst:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(( 20000 + RANDOM % 20000 ))

echo "== booting the test guest (workload=ab mib=64, 256 MiB RAM)"
$bin/novacron-vmm run --kernel "$guest" --cmdline "workload=ab mib=64" --memory 256M \
  --serial "file:$work/src.log" --api-socket "$work/src.sock" & src=$!
until grep -q "CHECK PASS" "$work/src.log" 2>/dev/null; do sleep 0.1; done
head -4 "$work/src.log"; grep -m1 "CHECK PASS" "$work/src.log"
$bin/novacron-vmm info --api-socket "$work/src.sock"

echo "== destination VMM waiting on tcp:127.0.0.1:$port"
$bin/novacron-vmm run --incoming "tcp:127.0.0.1:$port" --memory 256M \
  --serial "file:$work/dst.log" --api-socket "$work/dst.sock" & dst=$!

echo "== live migration (verify on)"
$bin/novacron-vmm migrate --api-socket "$work/src.sock" --to "tcp:127.0.0.1:$port" --verify > "$work/summary.json"
python3 - "$work/summary.json" <<'PY' 2>/dev/null || cat "$work/summary.json"
import json, sys
d = json.load(open(sys.argv[1]))
print(f"total {d['total_ms']:.1f} ms, downtime {d['downtime_ms']:.2f} ms (destination {d['dest_downtime_ms']:.2f} ms), "
      f"{d['rounds']} rounds, {d['wire_bytes']/2**20:.1f} MiB on the wire, verified={d['verified']}")
for r in d["round_details"]:
    print(f"  round {r['round']}: {r['pages']} pages, {r['bytes']/2**20:.2f} MiB, {r['ms']:.1f} ms, dirty {r['dirty_pages']}")
PY
wait "$src" && echo "== source VMM exited 0 after the destination confirmed"
sleep 1
echo "== destination serial after migration:"
tail -4 "$work/dst.log"
$bin/novacron-vmm info --api-socket "$work/dst.sock"
$bin/novacron-vmm shutdown --api-socket "$work/dst.sock"

echo
echo "== part 2: management plane (controller + two agents)"
bash controller/scripts/demo.sh
