#!/usr/bin/env bash
# The test command: installs what the tests need, builds every binary the integration tests
# spawn, then runs the whole workspace's tests (unit + integration on real /dev/kvm).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --bins
# The sandbox tests' VMM, with the misbehaviour hooks compiled in (never shipped).
cargo build -p novacron-vmm --features test-hooks --bin novacron-vmm-testhooks
cargo test --workspace -- --test-threads=2
