//! Model-specific registers: the boot values the 64-bit entry expects, and the list of MSRs
//! saved and restored with a vCPU ([`SavedMsrs`]).

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};
use std::sync::OnceLock;
use thiserror::Error;

/// Errors listing or probing the MSRs saved with a vCPU.
#[derive(Debug, Error)]
pub enum MsrError {
    /// KVM_GET_MSR_INDEX_LIST failed.
    #[error("cannot list the MSRs KVM can save: {0}")]
    List(kvm_ioctls::Error),
    /// Reading one candidate MSR failed outright (not merely unsupported).
    #[error("cannot probe MSR {index:#x}: {source}")]
    Probe {
        /// The MSR.
        index: u32,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// A FAM wrapper could not be built.
    #[error("cannot build an MSR list of {0} entries")]
    Fam(usize),
}

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

/// The MSRs to save with a vCPU: KVM's saveable and emulated list, in KVM's order (restore
/// needs TSC-related MSRs after the others; IA32_TSC_DEADLINE after IA32_TSC is handled by
/// putting the deadline last).
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

/// The MSRs saved with every vCPU of a VM: KVM's saveable list, narrowed on first use to those
/// a vCPU of this host actually returns. The narrowing is done once per VM (it costs one
/// ioctl per candidate, too slow for migration downtime); a failure is returned to the
/// caller and not remembered, so the next call probes again.
#[derive(Debug)]
pub struct SavedMsrs {
    candidates: Vec<u32>,
    readable: OnceLock<Vec<u32>>,
}

impl SavedMsrs {
    /// Lists KVM's saveable MSRs (not yet probed).
    pub fn new(kvm: &Kvm) -> Result<Self, MsrError> {
        Ok(SavedMsrs {
            candidates: saveable_list(kvm).map_err(MsrError::List)?,
            readable: OnceLock::new(),
        })
    }

    /// Whether the list has been narrowed already (a save will not probe).
    pub fn is_probed(&self) -> bool {
        self.readable.get().is_some()
    }

    /// The MSRs to save, probing them on `fd` (a paused vCPU) the first time.
    pub fn readable(&self, fd: &VcpuFd) -> Result<&[u32], MsrError> {
        if let Some(list) = self.readable.get() {
            return Ok(list);
        }
        let mut list = Vec::with_capacity(self.candidates.len());
        for &index in &self.candidates {
            let mut one = to_msrs(&[entry(index, 0)]).map_err(|_| MsrError::Fam(1))?;
            // KVM_GET_MSRS returns how many it read: 0 means this host cannot read it.
            match fd.get_msrs(&mut one) {
                Ok(1) => list.push(index),
                Ok(_) => {}
                Err(source) => return Err(MsrError::Probe { index, source }),
            }
        }
        Ok(self.readable.get_or_init(|| list))
    }
}
