//! Model-specific registers: the boot values the 64-bit entry expects, and the list of MSRs
//! saved and restored with a vCPU.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::Kvm;

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_APIC_BASE.
pub const MSR_IA32_APICBASE: u32 = 0x1b;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// Fast-string enable bit of IA32_MISC_ENABLE.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// IA32_TSC_DEADLINE.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// STAR.
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL_MASK.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// KVM paravirt clock (new).
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// KVM paravirt wall clock (new).
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;

fn entry(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// MSR values for a vCPU entering through the 64-bit boot protocol.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        // MTRRs enabled, default type write-back.
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// Builds an `Msrs` wrapper from entries.
pub fn to_msrs(entries: &[kvm_msr_entry]) -> Result<Msrs, vmm_sys_util::fam::Error> {
    Msrs::from_entries(entries)
}

/// The MSRs to save with a vCPU: KVM's saveable and emulated list, in KVM's order (restore needs TSC-related MSRs after the
/// others; IA32_TSC_DEADLINE after IA32_TSC is handled by putting the deadline last).
pub fn saveable_list(kvm: &Kvm) -> Result<Vec<u32>, kvm_ioctls::Error> {
    // KVM_GET_MSR_INDEX_LIST returns the saveable MSRs followed by the emulated ones.
    let mut list: Vec<u32> = kvm.get_msr_index_list()?.as_slice().to_vec();
    // Restore IA32_TSC_DEADLINE only after IA32_TSC, else the deadline is relative to an
    // old TSC.
    if let Some(pos) = list.iter().position(|&m| m == MSR_IA32_TSC_DEADLINE) {
        let d = list.remove(pos);
        list.push(d);
    }
    Ok(list)
}
