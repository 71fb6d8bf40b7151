//! Management-plane end-to-end tests with real processes: a `novacron-controller`, two
//! `novacron-agent`s on 127.0.0.2 and 127.0.0.3, and real `novacron-vmm` processes on
//! /dev/kvm booting the in-repo test guest (`workload=ab`). Scenarios live in
//! `mgmt_scenarios/`.

mod mgmt_scenarios;
use mgmt_scenarios as scenarios;

use std::time::Duration;

use novacron_testsupport::mgmt::Vmm;

#[test]
fn real_placement_lifecycle_and_errors() {
    scenarios::run(
        Duration::from_secs(120),
        scenarios::placement_lifecycle_and_errors(Vmm::Real),
    );
}

#[test]
fn real_migrate_and_drain() {
    scenarios::run(
        Duration::from_secs(150),
        scenarios::migrate_and_drain(Vmm::Real),
    );
}

#[test]
fn real_agent_restart_readopts() {
    scenarios::run(
        Duration::from_secs(120),
        scenarios::agent_restart_readopts(Vmm::Real),
    );
}

#[test]
fn real_controller_restart() {
    scenarios::run(
        Duration::from_secs(120),
        scenarios::controller_restart(Vmm::Real),
    );
}

#[test]
fn real_concurrent_creates() {
    scenarios::run(
        Duration::from_secs(120),
        scenarios::concurrent_creates(Vmm::Real, 1),
    );
}

#[test]
fn real_eviction() {
    scenarios::run(Duration::from_secs(120), scenarios::eviction(Vmm::Real));
}
