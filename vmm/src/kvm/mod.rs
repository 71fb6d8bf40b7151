//! Everything that talks to /dev/kvm: the VM (irqchip, PIT, memory slots, dirty log), vCPU
//! register setup, CPUID normalisation and MSR lists.

pub mod cpuid;
pub mod msrs;
pub mod regs;
pub mod vm;
