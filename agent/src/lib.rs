//! The NovaCron host agent: runs VMs as detached `novacron-vmm` processes (each watched by a
//! small supervisor process), keeps their specs, disks and console logs in its data
//! directory, re-adopts them after a restart, carries out live migrations with a peer agent,
//! and registers and heartbeats with the controller.
//!
//! Modules: [`manager`] (VM lifecycle and migration), [`supervise`] (per-VM supervisor),
//! [`cgroup`] (per-VM cgroups: limits, usage, OOM kills),
//! [`vmm_client`] (the VMM control socket), [`procfs`] (process inspection), [`disks`],
//! [`images_dir`] (the one resolver of kernel, initrd and image names: confined to the images
//! directory),
//! [`net`] (tap devices), [`host`] (inventory), [`api`] (gRPC service), [`storage_api`] (snapshots, restores, clones), [`registration`]
//! (controller registration and heartbeats), [`server`] (serving), [`summary`] (migration
//! summaries as proto messages).

pub mod api;
pub mod cgroup;
pub mod disk_copy;
pub mod disks;
pub mod host;
pub mod images_dir;
pub mod join;
pub mod manager;
pub mod net;
pub mod procfs;
pub mod registration;
pub mod server;
pub mod storage_api;
pub mod summary;
pub mod supervise;
pub mod vmm_client;
