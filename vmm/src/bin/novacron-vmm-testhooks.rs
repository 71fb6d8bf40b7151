//! `novacron-vmm` with the sandbox tests' misbehaviour hooks compiled in (the `test-hooks`
//! feature): the test build's VMM for showing that seccomp and the cgroup limits hold.

fn main() -> std::process::ExitCode {
    novacron_vmm::cli::main()
}
