//! `novacron-vmm`: runs one guest (`run`) or talks to a running VMM's control socket; see
//! [`novacron_vmm::cli`].

fn main() -> std::process::ExitCode {
    novacron_vmm::cli::main()
}
