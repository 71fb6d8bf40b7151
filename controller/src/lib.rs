//! The NovaCron controller: desired state of VMs and hosts in an embedded crash-safe store,
//! a pure scheduler with atomic claims, the user-facing gRPC API, live-migration and drain
//! orchestration, and a reconcile loop against what agents report. Also the library side of
//! `novactl`, the command-line client.
//!
//! Modules: [`store`] (redb), [`scheduler`] (filters, scores, claims), [`state`] (in-memory
//! view), [`controller`] (operations), [`migration`] (migrate, drain), [`settle`] (ambiguous migration outcomes), [`reconcile`] (the
//! loop), [`events`] (event log and watch), [`agent_client`] (agents' gRPC clients), [`api`]
//! (gRPC services), [`server`] (serving; users' tokens checked by [`iam`], the agents'
//! shared token through [`novacron_proto::auth`]), [`ctl`] (novactl), [`storage`] (snapshots, clones,
//! templates), [`iam`] (users, projects, roles, tokens, quotas, audit log).

pub mod agent_client;
pub mod api;
pub mod certs;
pub mod controller;
pub mod ctl;
pub mod events;
pub mod iam;
pub mod join;
pub mod migration;
pub mod migration_tls;
pub mod reconcile;
pub mod scheduler;
pub mod server;
pub mod settle;
pub mod state;
pub mod storage;
pub mod store;
pub mod util;

pub use controller::{Config, Controller, ControllerError};
