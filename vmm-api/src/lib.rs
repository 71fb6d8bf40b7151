//! The VMM's contracts with the rest of NovaCron, with no KVM dependency: the control
//! protocol and its line codec (`protocol`), the `run` command line (`machine`), the size and
//! rate syntax every command line accepts (`units`), migration options and the summary a
//! migration reports (`migration`), and the encoder statistics inside it (`stats`). The VMM's
//! control server and CLI and the host agent all use these types; nothing else defines them.

pub mod machine;
pub mod migration;
pub mod protocol;
pub mod stats;
pub mod units;
