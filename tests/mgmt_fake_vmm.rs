//! The management-plane scenarios of `mgmt_e2e.rs`, run with real controller and agent
//! processes but with `fake_vmm` (agent/examples), a stand-in that follows the VMM's
//! command-line and control-socket contract (`vmm/API.md`) without a guest. An addition to
//! the real-VMM tests, not a replacement: it checks the management plane's own logic fast
//! and independently of the VMM.

mod mgmt_scenarios;
use mgmt_scenarios as scenarios;

use std::time::Duration;

use novacron_testsupport::mgmt::Vmm;

#[test]
fn fake_placement_lifecycle_and_errors() {
    scenarios::run(
        Duration::from_secs(60),
        scenarios::placement_lifecycle_and_errors(Vmm::Fake),
    );
}

#[test]
fn fake_migrate_and_drain() {
    scenarios::run(
        Duration::from_secs(60),
        scenarios::migrate_and_drain(Vmm::Fake),
    );
}

#[test]
fn fake_agent_restart_readopts() {
    scenarios::run(
        Duration::from_secs(60),
        scenarios::agent_restart_readopts(Vmm::Fake),
    );
}

#[test]
fn fake_controller_restart() {
    scenarios::run(
        Duration::from_secs(60),
        scenarios::controller_restart(Vmm::Fake),
    );
}

#[test]
fn fake_concurrent_creates() {
    scenarios::run(
        Duration::from_secs(60),
        scenarios::concurrent_creates(Vmm::Fake, 5),
    );
}

#[test]
fn fake_eviction() {
    scenarios::run(Duration::from_secs(60), scenarios::eviction(Vmm::Fake));
}
