//! NovaCron VMM library: one process runs one guest on /dev/kvm. Modules hold one concern
//! each: `kvm` (VM, vCPU registers, CPUID, MSRs), `memory` and `layout`, `boot` (Linux boot
//! protocol), `devices` (buses, serial, i8042, CMOS), `vcpu` and `control` (threads, pause,
//! exit), `persist` (the save/restore contract), `state` (the machine state and its envelope),
//! `machine` (putting it together), `api` and `runtime` (control socket), `snapshot` and
//! `backup` (snapshots on disk, and as one file to carry elsewhere), `cli` (the command
//! line of both VMM binaries), `sandbox` (the seccomp filter of each thread kind).

pub mod acpi;
pub mod api;
pub mod backup;
pub mod boot;
pub mod cli;
pub mod config;
pub mod control;
pub mod devices;
pub mod dirty;
pub mod kvm;
pub mod layout;
pub mod machine;
pub mod memory;
pub mod migration;
pub mod persist;
pub mod runtime;
pub mod sandbox;
pub mod snapshot;
pub mod state;
pub mod vcpu;
