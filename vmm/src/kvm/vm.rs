//! The KVM VM: creation with in-kernel irqchip and PIT, guest memory slots and the KVM side
//! of dirty-page logging.

use crate::layout;
use crate::memory::{self, GuestMem, RegionInfo};
use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_enable_cap, KVMIO,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::sync::{Arc, Mutex};
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
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

/// A created VM; its memory is registered by a helper thread ([`KvmVm::wait_memory`]).
pub struct KvmVm {
    /// The /dev/kvm handle.
    pub kvm: Kvm,
    /// The VM fd.
    pub fd: Arc<VmFd>,
    /// The thread registering the memory slots, until [`KvmVm::wait_memory`] joins it.
    pending_slots: Mutex<Option<JoinHandle<Result<(), VmError>>>>,
    /// The RAM regions as registered with KVM.
    pub regions: Vec<RegionInfo>,
    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is on: reading the dirty log does not re-protect
    /// pages; [`KvmVm::clear_dirty_log`] does, page range by page range, just before those
    /// pages are read, so the guest takes fewer write faults between rounds.
    pub manual_protect: bool,
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
        })
    }

    /// Waits until the guest memory is registered with KVM (see [`KvmVm::new`]); returns
    /// the registration's error, once. Cheap after the first call.
    pub fn wait_memory(&self) -> Result<(), VmError> {
        let pending = self
            .pending_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match pending {
            Some(h) => h.join().unwrap_or_else(|_| {
                Err(VmError::Ioctl {
                    what: "set memory region",
                    source: kvm_ioctls::Error::new(libc::EIO),
                })
            }),
            None => Ok(()),
        }
    }

    /// Registers (or re-registers) every RAM slot with KVM dirty logging on or off.
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), VmError> {
        self.wait_memory()?;
        set_memory_slots(&self.fd, &self.regions, on)
    }

    /// Re-protects (clears the dirty bits of) the pages set in `bits`, which covers
    /// `bits.len() * 64` pages of `slot` from `first_page` (a multiple of 64). Only meaningful
    /// with [`KvmVm::manual_protect`].
    pub fn clear_dirty_log(
        &self,
        slot: u32,
        first_page: u64,
        bits: &mut [u64],
    ) -> Result<(), VmError> {
        let Some(r) = self.regions.iter().find(|r| r.slot == slot) else {
            return Ok(());
        };
        let slot_pages = r.size / crate::layout::PAGE_SIZE;
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
            unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_CLEAR_DIRTY_LOG(), &c) };
        if rc < 0 {
            return Err(VmError::Ioctl {
                what: "clear dirty log",
                source: kvm_ioctls::Error::last(),
            });
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
