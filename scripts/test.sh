#!/usr/bin/env bash
# The test command: installs what the tests need, builds every binary the integration tests
# spawn, then runs the whole workspace's tests (unit + integration on real /dev/kvm).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
