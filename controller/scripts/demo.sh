#!/usr/bin/env bash
# NovaCron management-plane demo: builds the binaries, creates a CA and certificates, brings
# up a secured controller (mutual TLS) and two agents on this machine (127.0.0.2 and
# 127.0.0.3; node-a joins with a one-time token, node-b gets an issued certificate), creates
# three VMs from the in-repo test guest,
# live-migrates one, drains a host, and shows the result with novactl. Everything it started
# is stopped on exit. Needs /dev/kvm. Usage: bash controller/scripts/demo.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."
KEEP=${1:-}
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-target}")
echo "== building (cargo build)"
cargo build -q -p novacron-controller -p novacron-agent -p novacron-vmm -p novacron-images
BIN=$TARGET/debug
GUEST=$BIN/novacron-testguest.elf
DEMO=$(mktemp -d /tmp/novacron-demo.XXXXXX)
CTL=127.0.0.1:17070
PIDS=()

cleanup() {
    if [ "$KEEP" = "--keep" ]; then
        echo "== left running (--keep): pids ${PIDS[*]}, data in $DEMO"
        return
    fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    # VMMs and their supervisors are detached from the agents by design: stop them by their
    # recorded pids.
    for f in "$DEMO"/*/vms/*/vmm.pid "$DEMO"/*/vms/*/supervisor.pid; do
        [ -f "$f" ] && kill -9 "$(cut -d' ' -f1 "$f")" 2>/dev/null || true
    done
    rm -rf "$DEMO"
}
trap cleanup EXIT

JOIN=127.0.0.1:17071
ctl() { NOVACRON_CONFIG_DIR="$DEMO/novactl" "$BIN/novactl" --controller "$CTL" "$@"; }

# Agents take kernels only from their images directory (<data-dir>/images).
for n in node-a node-b; do
    mkdir -p "$DEMO/$n/images" && cp "$GUEST" "$DEMO/$n/images/"
done

echo "== certificates: a new CA, the controller's certificate and novactl's (certs init)"
"$BIN/novacron-controller" certs init --data-dir "$DEMO/controller"
export NOVACRON_TLS_DIR=$DEMO/controller/pki/clients/admin
echo "== creating the first admin (novacron-controller bootstrap-admin)"
printf 'demo-password\n' >"$DEMO/password"
"$BIN/novacron-controller" bootstrap-admin --data-dir "$DEMO/controller" --user admin \
    --password-file "$DEMO/password"
echo "== starting novacron-controller on $CTL (join endpoint $JOIN)"
"$BIN/novacron-controller" --listen "$CTL" --join-listen "$JOIN" --data-dir "$DEMO/controller" \
    >"$DEMO/controller.log" 2>&1 &
PIDS+=($!)
echo "== node-a joins with a one-time token; node-b's certificate is issued directly"
TOKEN=$("$BIN/novacron-controller" certs join-token --data-dir "$DEMO/controller" --host node-a)
for _ in $(seq 50); do
    "$BIN/novacron-agent" join --token "$TOKEN" --controller-join "$JOIN" --data-dir "$DEMO/node-a" \
        2>/dev/null && break
    sleep 0.2
done
"$BIN/novacron-controller" certs issue --data-dir "$DEMO/controller" --host node-b --out "$DEMO/node-b/tls"
echo "== starting agents node-a (127.0.0.2) and node-b (127.0.0.3)"
"$BIN/novacron-agent" --listen 127.0.0.2:17080 --controller "$CTL" --name node-a --data-dir "$DEMO/node-a" \
    --vmm-binary "$BIN/novacron-vmm" --capacity-memory 1G --label zone=a >"$DEMO/node-a.log" 2>&1 &
PIDS+=($!)
"$BIN/novacron-agent" --listen 127.0.0.3:17080 --controller "$CTL" --name node-b --data-dir "$DEMO/node-b" \
    --vmm-binary "$BIN/novacron-vmm" --capacity-memory 1G --label zone=b >"$DEMO/node-b.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do
    ctl login --user admin --password-file "$DEMO/password" >/dev/null 2>&1 && break
    sleep 0.2
done
ctl whoami
for _ in $(seq 50); do
    [ "$(ctl -o json host list 2>/dev/null | grep -c '"state": "Ready"')" = 2 ] && break
    sleep 0.2
done
ctl host list

echo "== creating three VMs from the test guest (workload=ab: a self-checking memory writer)"
for i in 1 2 3; do
    ctl vm create "demo-$i" --memory 64M --kernel "$(basename "$GUEST")" --cmdline "workload=ab mib=16" >/dev/null
done
ctl vm list
sleep 2

SRC=$(ctl -o json vm get demo-1 | sed -n 's/^  "host": "\(.*\)",/\1/p')
DST=node-b; [ "$SRC" = node-b ] && DST=node-a
echo "== live-migrating demo-1 from $SRC to $DST"
ctl vm migrate demo-1 --to "$DST"
sleep 2
LOG=$(ctl -o json vm get demo-1 | sed -n 's/^    "console_log": "\(.*\)",/\1/p')
echo "== demo-1's console on $DST after the migration (self-check lines):"
grep -E "CHECK (PASS|FAIL)" "$LOG" | tail -3 || true

echo "== draining node-a (every VM live-migrates to node-b)"
ctl host drain node-a
ctl vm list
ctl host list
echo "== events"
ctl events | tail -20
if grep -q "CHECK FAIL" "$DEMO"/node-*/vms/*/console.log 2>/dev/null; then
    echo "RESULT: a workload self-check FAILED"
    exit 1
fi
echo "RESULT: all VMs running, workloads' self-checks passing after migration and drain"
