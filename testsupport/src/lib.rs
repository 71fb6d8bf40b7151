//! Support shared by NovaCron's integration tests and benchmarks: locating the built
//! binaries and the test guest, scratch directories, processes killed on drop, VMM
//! processes and their serial logs, deterministic test data, private network namespaces with taps, the WAN relay
//! and the management-plane harness (controller, agents, VMMs).

pub mod bench;
pub mod data;
pub mod mgmt;
pub mod migration;
pub mod net;
pub mod paths;
pub mod process;
pub mod relay_process;
pub mod scratch;
pub mod serial;
pub mod vmm_process;
pub mod wanrelay;

pub use data::noise;
pub use migration::{incoming, incoming_tls, migration_pair, tls_flags};
pub use net::free_port;
pub use paths::{bin, bin_dir, guest, vmm};
pub use process::Kill;
pub use relay_process::RelayProcess;
pub use scratch::Scratch;
pub use serial::{field_values, last_ticks};
pub use vmm_process::Vmm;
