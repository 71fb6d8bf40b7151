//! NovaCron gRPC protocols, generated from `agent.proto` and `controller.proto` by
//! tonic-prost-build. [`agent`] is the host agent's API, [`controller`] the controller's
//! user-facing VM/host/storage services, the identity and access service (`iam.proto`) and the
//! registry agents report to. [`FILE_DESCRIPTOR_SET`] is
//! what the servers publish through gRPC server reflection; [`serving`] holds what both
//! servers share, [`auth`] the bearer-token interceptors of every client and server, [`mac`]
//! the MACs of VMs made from other VMs.

/// Generated code, laid out like the proto packages (`novacron.agent.v1`, ...).
pub mod novacron {
    /// `novacron.agent.v1`.
    pub mod agent {
        /// The host agent's API.
        pub mod v1 {
            #![allow(missing_docs, clippy::all)]
            tonic::include_proto!("novacron.agent.v1");
        }
    }
    /// `novacron.controller.v1`.
    pub mod controller {
        /// The controller's API.
        pub mod v1 {
            #![allow(missing_docs, clippy::all)]
            tonic::include_proto!("novacron.controller.v1");
        }
    }
}

pub use novacron::agent::v1 as agent;
pub use novacron::controller::v1 as controller;

pub mod auth;
pub mod mac;
pub mod serving;

/// Encoded `FileDescriptorSet` of both protocols, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("novacron_descriptor");
