//! The benchmarks' shared helpers, which live in `novacron_testsupport::bench`.

pub use novacron_testsupport::bench::*;
