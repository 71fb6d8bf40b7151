//! The root package holds no code: it is NovaCron's workspace-level integration tests
//! (`tests/`) and benchmarks (`benches/`); their shared helpers live in `novacron-testsupport`.
