//! The KVM VM: creation with in-kernel irqchip and PIT, guest memory slots (the one place
//! that numbers them), the KVM side of dirty-page logging, and the saved state of the
//! VM-wide KVM devices ([`VmState`]: PICs, IOAPIC, PIT, kvmclock).

use crate::kvm::msrs::{MsrError, SavedMsrs};
use crate::layout::{self, PAGE_SIZE};
use crate::memory::{self, GuestMem, RegionInfo};
use crate::persist::Persist;
use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_enable_cap, KVMIO,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
};
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::thread::JoinHandle;

vmm_sys_util::ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
use thiserror::Error;

/// Errors from setting up or driving the KVM VM.
#[derive(Debug, Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error(
        "cannot open /dev/kvm: {0} (is KVM available, and may this user read and write /dev/kvm?)"
    )]
    OpenKvm(kvm_ioctls::Error),
    /// The host kernel lacks a capability the VMM needs.
    #[error("the host KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// Which operation.
        what: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// The memory-registration thread panicked.
    #[error("the thread registering guest memory with KVM panicked")]
    SlotThread,
    /// Listing the MSRs to save failed.
    #[error(transparent)]
    Msrs(#[from] MsrError),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

/// A created VM; its memory is registered by a helper thread ([`KvmVm::wait_memory`]).
pub struct KvmVm {
    /// The /dev/kvm handle.
    kvm: Kvm,
    /// The VM fd.
    fd: Arc<VmFd>,
    /// The thread registering the memory slots, until [`KvmVm::wait_memory`] joins it.
    pending_slots: Mutex<Option<JoinHandle<Result<(), VmError>>>>,
    /// The RAM regions as registered with KVM, slot `i` being region `i`.
    regions: Vec<RegionInfo>,
    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is on: reading the dirty log does not re-protect
    /// pages; [`KvmVm::rearm_dirty_log`] does, page range by page range, just before those
    /// pages are read, so the guest takes fewer write faults between rounds.
    manual_protect: bool,
    /// The MSRs saved with each vCPU.
    msrs: Arc<SavedMsrs>,
}

/// Saved state of the VM-wide KVM devices.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// Master PIC.
    pub pic_master: kvm_irqchip,
    /// Slave PIC.
    pub pic_slave: kvm_irqchip,
    /// IOAPIC.
    pub ioapic: kvm_irqchip,
    /// PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

/// Capabilities the VMM cannot run without.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::AdjustClock, "KVM_CAP_ADJUST_CLOCK"),
    (Cap::VcpuEvents, "KVM_CAP_VCPU_EVENTS"),
    (Cap::Debugregs, "KVM_CAP_DEBUGREGS"),
    (Cap::Xcrs, "KVM_CAP_XCRS"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

impl KvmVm {
    /// Opens /dev/kvm, creates the VM with an in-kernel irqchip and PIT, and starts
    /// registering `mem` on a helper thread: call [`KvmVm::wait_memory`] before any vCPU
    /// runs.
    pub fn new(mem: &GuestMem) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let msrs = Arc::new(SavedMsrs::new(&kvm)?);
        let fd = Arc::new(kvm.create_vm().map_err(ioctl("create VM"))?);
        let regions = memory::regions(mem);
        let manual_protect = kvm
            .check_extension_raw(u64::from(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) as _)
            & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE as i32
            != 0
            && fd
                .enable_cap(&kvm_enable_cap {
                    cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                    args: [u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE), 0, 0, 0],
                    ..Default::default()
                })
                .is_ok();
        // The irqchip and PIT first: both take the VM's slots lock, which registering memory
        // holds for its whole duration.
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(ioctl("set TSS address"))?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(ioctl("set identity map address"))?;
        fd.create_irq_chip().map_err(ioctl("create irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(ioctl("create PIT"))?;
        // Registering memory takes 4-10 ms in the kernel on nested hosts: it runs on a helper
        // thread while the vCPUs, devices and the kernel image are set up, and is joined just
        // before the vCPUs start or their state is restored.
        let pending = {
            let (fd, regions) = (fd.clone(), regions.clone());
            std::thread::Builder::new()
                .name("memslots".into())
                .stack_size(64 << 10)
                .spawn(move || set_memory_slots(&fd, &regions, false))
        };
        let pending = match pending {
            Ok(h) => Some(h),
            // No thread: register inline.
            Err(_) => {
                set_memory_slots(&fd, &regions, false)?;
                None
            }
        };
        Ok(KvmVm {
            kvm,
            fd,
            pending_slots: Mutex::new(pending),
            regions,
            manual_protect,
            msrs,
        })
    }

    /// The /dev/kvm handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM fd (for creating vCPUs and wiring interrupts and notifications).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Whether KVM's manual dirty-log protection is on (see [`KvmVm::rearm_dirty_log`]).
    pub fn manual_protect(&self) -> bool {
        self.manual_protect
    }

    /// The MSRs saved with each vCPU of this VM.
    pub fn saved_msrs(&self) -> &Arc<SavedMsrs> {
        &self.msrs
    }

    /// Waits until the guest memory is registered with KVM (see [`KvmVm::new`]); returns
    /// the registration's error, once. Cheap after the first call.
    pub fn wait_memory(&self) -> Result<(), VmError> {
        let pending = self.pending_slots.lock().take();
        match pending {
            Some(h) => h.join().map_err(|_| VmError::SlotThread)?,
            None => Ok(()),
        }
    }

    /// Registers (or re-registers) every RAM slot with KVM dirty logging on or off.
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), VmError> {
        self.wait_memory()?;
        set_memory_slots(&self.fd, &self.regions, on)
    }

    /// ORs into `out`, a bitmap over guest page frame numbers, the pages KVM logged as written
    /// since the log was last read (dirty logging must be on). With `rearm_now` false and
    /// manual protection on, the pages stay writable until [`KvmVm::rearm_dirty_log`].
    pub fn collect_dirty_log(&self, out: &mut [u64], rearm_now: bool) -> Result<(), VmError> {
        for r in &self.regions {
            let mut bits = self
                .fd
                .get_dirty_log(r.slot, r.size as usize)
                .map_err(ioctl("get dirty log"))?;
            merge_bits(out, r.guest_addr / PAGE_SIZE, &bits);
            if self.manual_protect && rearm_now {
                for (i, chunk) in bits.chunks_mut(REARM_WORDS).enumerate() {
                    self.clear_dirty_log(r.slot, (i * REARM_WORDS * 64) as u64, chunk)?;
                }
            }
        }
        Ok(())
    }

    /// Re-protects in KVM the pages set in `words`, a window of a guest-PFN bitmap starting at
    /// word `word_index` (manual-protect mode; a no-op otherwise). Call right before reading
    /// those pages.
    pub fn rearm_dirty_log(&self, word_index: usize, words: &[u64]) -> Result<(), VmError> {
        if !self.manual_protect {
            return Ok(());
        }
        let first_pfn = word_index as u64 * 64;
        let last_pfn = first_pfn + words.len() as u64 * 64;
        for r in &self.regions {
            let (start, pages) = (r.guest_addr / PAGE_SIZE, r.size / PAGE_SIZE);
            let end = start + pages;
            if last_pfn <= start || first_pfn >= end {
                continue;
            }
            // Regions start on 64-page boundaries, so windows map to whole bitmap words.
            let lo = first_pfn.max(start);
            let hi = last_pfn.min(end);
            let (w0, w1) = (
                ((lo - first_pfn) / 64) as usize,
                (hi - first_pfn).div_ceil(64) as usize,
            );
            let mut chunk = words[w0..w1.min(words.len())].to_vec();
            self.clear_dirty_log(r.slot, lo - start, &mut chunk)?;
        }
        Ok(())
    }

    /// Re-protects (clears the dirty bits of) the pages set in `bits`, which covers
    /// `bits.len() * 64` pages of `slot` from `first_page` (a multiple of 64).
    fn clear_dirty_log(&self, slot: u32, first_page: u64, bits: &mut [u64]) -> Result<(), VmError> {
        let Some(r) = self.regions.iter().find(|r| r.slot == slot) else {
            return Ok(());
        };
        let slot_pages = r.size / PAGE_SIZE;
        if first_page >= slot_pages || bits.iter().all(|w| *w == 0) {
            return Ok(());
        }
        let num_pages = (bits.len() as u64 * 64).min(slot_pages - first_page);
        let c = kvm_clear_dirty_log {
            slot,
            num_pages: num_pages as u32,
            first_page,
            __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
                dirty_bitmap: bits.as_mut_ptr().cast(),
            },
        };
        // SAFETY: `c` names a registered slot and a page range inside it; the bitmap pointer
        // is valid for num_pages bits (bits.len() * 64 >= num_pages) and outlives the call.
        let rc =
            unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&*self.fd, KVM_CLEAR_DIRTY_LOG(), &c) };
        if rc < 0 {
            return Err(VmError::Ioctl {
                what: "clear dirty log",
                source: kvm_ioctls::Error::last(),
            });
        }
        Ok(())
    }

    fn get_chip(&self, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, VmError> {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        self.fd.get_irqchip(&mut chip).map_err(ioctl(what))?;
        Ok(chip)
    }
}

/// Bitmap words re-protected per KVM_CLEAR_DIRTY_LOG call (4096 pages, 16 MiB).
pub const REARM_WORDS: usize = 64;

impl Persist for KvmVm {
    type State = VmState;
    type Error = VmError;

    fn save(&self) -> Result<VmState, VmError> {
        Ok(VmState {
            pic_master: self.get_chip(KVM_IRQCHIP_PIC_MASTER, "get master PIC")?,
            pic_slave: self.get_chip(KVM_IRQCHIP_PIC_SLAVE, "get slave PIC")?,
            ioapic: self.get_chip(KVM_IRQCHIP_IOAPIC, "get IOAPIC")?,
            pit: self.fd.get_pit2().map_err(ioctl("get PIT"))?,
            clock: self.fd.get_clock().map_err(ioctl("get clock"))?,
        })
    }

    /// Restores the PIT, the clock, then the interrupt controllers. Guest-memory-backed state
    /// (kvmclock's page) is checked against the memslots, so this waits for them first.
    fn restore(&self, s: &VmState) -> Result<(), VmError> {
        self.wait_memory()?;
        self.fd.set_pit2(&s.pit).map_err(ioctl("set PIT"))?;
        let mut clock = s.clock;
        clock.flags = 0;
        self.fd.set_clock(&clock).map_err(ioctl("set clock"))?;
        for (chip, what) in [
            (&s.pic_master, "set master PIC"),
            (&s.pic_slave, "set slave PIC"),
            (&s.ioapic, "set IOAPIC"),
        ] {
            self.fd.set_irqchip(chip).map_err(ioctl(what))?;
        }
        Ok(())
    }
}

/// Registers `regions` as KVM memory slots, with dirty logging on or off.
fn set_memory_slots(fd: &VmFd, regions: &[RegionInfo], dirty_log: bool) -> Result<(), VmError> {
    for r in regions {
        let region = kvm_userspace_memory_region {
            slot: r.slot,
            guest_phys_addr: r.guest_addr,
            memory_size: r.size,
            userspace_addr: r.host_addr,
            flags: if dirty_log {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
        };
        // SAFETY: the host range [host_addr, host_addr+size) is a live mapping owned by the
        // GuestMem that outlives the VM (the VMM keeps both for the process lifetime), and
        // slots do not overlap (they come from disjoint layout ranges).
        unsafe { fd.set_user_memory_region(region) }.map_err(ioctl("set memory region"))?;
    }
    Ok(())
}

/// ORs `bits` (a bitmap starting at page 0 of a region) into `out` at page offset `first`.
pub fn merge_bits(out: &mut [u64], first: u64, bits: &[u64]) {
    if first.is_multiple_of(64) {
        let base = (first / 64) as usize;
        for (i, w) in bits.iter().enumerate() {
            if let Some(o) = out.get_mut(base + i) {
                *o |= *w;
            }
        }
        return;
    }
    for (i, &w) in bits.iter().enumerate() {
        let mut w = w;
        while w != 0 {
            let b = w.trailing_zeros() as u64;
            w &= w - 1;
            let page = first + i as u64 * 64 + b;
            if let Some(o) = out.get_mut((page / 64) as usize) {
                *o |= 1 << (page % 64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_state_round_trips_through_persist() {
        let mem = memory::create(64 << 20).expect("guest memory");
        let vm = KvmVm::new(&mem).expect("KVM VM");
        let st = vm.save().expect("save");
        assert_eq!(st.ioapic.chip_id, KVM_IRQCHIP_IOAPIC);
        let json = serde_json::to_string(&st).expect("serialize");
        let back: VmState = serde_json::from_str(&json).expect("deserialize");
        let other = KvmVm::new(&mem).expect("second KVM VM");
        other.restore(&back).expect("restore");
        let again = other.save().expect("save restored");
        for (a, b) in [
            (&st.pic_master, &again.pic_master),
            (&st.pic_slave, &again.pic_slave),
            (&st.ioapic, &again.ioapic),
        ] {
            assert_eq!(
                serde_json::to_value(a).expect("chip"),
                serde_json::to_value(b).expect("chip")
            );
        }
    }
}
