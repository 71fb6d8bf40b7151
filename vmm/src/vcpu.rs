//! vCPUs: creation and boot setup, their saved state ([`VcpuState`], through [`Persist`]), and
//! the thread that runs each one, dispatching its exits to the device buses and turning
//! terminal exits into an [`ExitReason`].
//!
//! Pausing ([`run_loop`], mechanism in the `control` module docs): before every `KVM_RUN`
//! the thread reads the pause flag. A vCPU parks only at an instruction boundary: if its last
//! exit was port I/O or MMIO it first re-enters `KVM_RUN` with `kvm_run.immediate_exit = 1`,
//! so KVM finishes that instruction (an `in` or MMIO read lands in the guest's registers,
//! string I/O advances) and returns `EINTR` without running guest code. Then it issues
//! `KVM_KVMCLOCK_CTRL` and parks; the saved state therefore never holds a half-done I/O
//! instruction that the destination would execute again.

use crate::control::{ExitReason, RunControl};
use crate::devices::{Bus, GuestEvent};
use crate::kvm::msrs::{self, MsrError, SavedMsrs};
use crate::kvm::{cpuid, regs};
use crate::persist::Persist;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use thiserror::Error;

/// MSRs per KVM_GET_MSRS / KVM_SET_MSRS call.
const MSR_CHUNK: usize = 200;

/// Errors creating or configuring a vCPU.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {id}: KVM {what} failed: {source}")]
    Ioctl {
        /// vCPU index.
        id: u8,
        /// Which operation.
        what: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// Building an MSR or CPUID list failed.
    #[error("vCPU {0}: cannot build {1} list")]
    List(u8, &'static str),
    /// Listing or probing the MSRs to save failed.
    #[error("vCPU {id}: {source}")]
    Msrs {
        /// vCPU index.
        id: u8,
        /// The error.
        source: MsrError,
    },
    /// KVM read fewer MSRs than asked for.
    #[error("vCPU {id}: KVM returned {got} of {wanted} MSRs")]
    MsrsNotRead {
        /// vCPU index.
        id: u8,
        /// How many were read.
        got: usize,
        /// How many were asked for.
        wanted: usize,
    },
    /// KVM refused a saved MSR.
    #[error("vCPU {id}: KVM refused MSR {index:#x}")]
    MsrRefused {
        /// vCPU index.
        id: u8,
        /// The MSR.
        index: u32,
    },
    /// The saved state belongs to another vCPU.
    #[error("saved state of vCPU {saved} given to vCPU {id}")]
    WrongVcpu {
        /// vCPU index.
        id: u8,
        /// Index in the state.
        saved: u8,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("vCPU {id}: KVM accepted only {set} of {wanted} MSRs")]
    MsrsNotSet {
        /// vCPU index.
        id: u8,
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
}

/// One vCPU: its index, fd and the VM's list of MSRs to save. The fd is locked by the vCPU
/// thread while it runs, and by state save/restore while the VM is paused.
pub struct Vcpu {
    id: u8,
    fd: Mutex<VcpuFd>,
    msrs: Arc<SavedMsrs>,
}

/// Saved state of one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index.
    pub id: u8,
    /// CPUID as set on the vCPU.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// mp_state (running, halted, waiting for SIPI...).
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state.
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// MSRs, in the order they must be restored.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs.
    pub events: kvm_vcpu_events,
    /// Guest TSC frequency (kHz).
    pub tsc_khz: u32,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` with CPUID normalised from `base`; its state saves the
    /// MSRs of `msrs`.
    pub fn new(
        vm: &VmFd,
        base: &CpuId,
        msrs: Arc<SavedMsrs>,
        id: u8,
        count: u8,
    ) -> Result<Self, VcpuError> {
        let e = |what| move |source| VcpuError::Ioctl { id, what, source };
        let fd = vm.create_vcpu(u64::from(id)).map_err(e("create vCPU"))?;
        fd.set_cpuid2(&cpuid::for_vcpu(base, id, count))
            .map_err(e("set CPUID"))?;
        Ok(Vcpu {
            id,
            fd: Mutex::new(fd),
            msrs,
        })
    }

    /// Index (also the APIC id).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Narrows the VM's list of MSRs to save on this vCPU (which must be paused), so a later
    /// save does not have to.
    pub fn probe_msrs(&self) -> Result<(), VcpuError> {
        let fd = self.fd.lock();
        self.msrs
            .readable(&fd)
            .map(|_| ())
            .map_err(|source| VcpuError::Msrs {
                id: self.id,
                source,
            })
    }

    /// Sets registers, segments, FPU, MSRs and LAPIC for the 64-bit boot entry at `entry`.
    /// Only the boot vCPU gets the entry registers; others wait for INIT/SIPI.
    pub fn setup_boot(&self, entry: u64) -> Result<(), VcpuError> {
        let id = self.id;
        let e = |what| move |source| VcpuError::Ioctl { id, what, source };
        let fd = self.fd.lock();
        let entries = msrs::boot_msrs();
        let list = msrs::to_msrs(&entries).map_err(|_| VcpuError::List(id, "MSR"))?;
        let set = fd.set_msrs(&list).map_err(e("set MSRs"))?;
        if set != entries.len() {
            return Err(VcpuError::MsrsNotSet {
                id,
                set,
                wanted: entries.len(),
            });
        }
        let lapic = fd.get_lapic().map_err(e("get LAPIC"))?;
        fd.set_lapic(&regs::boot_lapic(lapic))
            .map_err(e("set LAPIC"))?;
        if id == 0 {
            fd.set_regs(&regs::boot_regs(entry))
                .map_err(e("set registers"))?;
            let sregs = fd.get_sregs().map_err(e("get special registers"))?;
            fd.set_sregs(&regs::boot_sregs(sregs))
                .map_err(e("set special registers"))?;
            fd.set_fpu(&regs::boot_fpu()).map_err(e("set FPU"))?;
        }
        Ok(())
    }
}

impl Persist for Vcpu {
    type State = VcpuState;
    type Error = VcpuError;

    fn save(&self) -> Result<VcpuState, VcpuError> {
        let fd = self.fd.lock();
        let id = self.id;
        let e = |what| move |source| VcpuError::Ioctl { id, what, source };
        let cpuid = fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(e("get CPUID"))?;
        let mp_state = fd.get_mp_state().map_err(e("get mp_state"))?;
        let regs = fd.get_regs().map_err(e("get registers"))?;
        let sregs = fd.get_sregs().map_err(e("get special registers"))?;
        let xsave = fd.get_xsave().map_err(e("get xsave"))?;
        let xcrs = fd.get_xcrs().map_err(e("get xcrs"))?;
        let debugregs = fd.get_debug_regs().map_err(e("get debug registers"))?;
        let lapic = fd.get_lapic().map_err(e("get LAPIC"))?;
        let list = self
            .msrs
            .readable(&fd)
            .map_err(|source| VcpuError::Msrs { id, source })?;
        let mut msrs = Vec::with_capacity(list.len());
        for chunk in list.chunks(MSR_CHUNK) {
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut m = Msrs::from_entries(&entries).map_err(|_| VcpuError::List(id, "MSR"))?;
            let got = fd.get_msrs(&mut m).map_err(e("get MSRs"))?;
            if got != chunk.len() {
                return Err(VcpuError::MsrsNotRead {
                    id,
                    got,
                    wanted: chunk.len(),
                });
            }
            msrs.extend_from_slice(m.as_slice());
        }
        let events = fd.get_vcpu_events().map_err(e("get vCPU events"))?;
        let tsc_khz = fd.get_tsc_khz().map_err(e("get TSC frequency"))?;
        Ok(VcpuState {
            id,
            cpuid: cpuid.as_slice().to_vec(),
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
            tsc_khz,
        })
    }

    /// Restores in the order KVM needs: TSC frequency and CPUID first, MSRs and events last.
    fn restore(&self, s: &VcpuState) -> Result<(), VcpuError> {
        let id = self.id;
        if s.id != id {
            return Err(VcpuError::WrongVcpu { id, saved: s.id });
        }
        let fd = self.fd.lock();
        let e = |what| move |source| VcpuError::Ioctl { id, what, source };
        let khz = s.tsc_khz;
        if fd.get_tsc_khz().map_err(e("get TSC frequency"))? != khz {
            if let Err(err) = fd.set_tsc_khz(khz) {
                tracing::warn!(
                    "vCPU {id}: cannot scale TSC to {khz} kHz ({err}); guest time may drift"
                );
            }
        }
        let cpuid = CpuId::from_entries(&s.cpuid).map_err(|_| VcpuError::List(id, "CPUID"))?;
        fd.set_cpuid2(&cpuid).map_err(e("set CPUID"))?;
        fd.set_mp_state(s.mp_state).map_err(e("set mp_state"))?;
        fd.set_regs(&s.regs).map_err(e("set registers"))?;
        fd.set_sregs(&s.sregs).map_err(e("set special registers"))?;
        // SAFETY: the kvm_xsave buffer is the legacy 4 KiB layout that KVM_GET_XSAVE produced.
        unsafe { fd.set_xsave(&s.xsave) }.map_err(e("set xsave"))?;
        fd.set_xcrs(&s.xcrs).map_err(e("set xcrs"))?;
        fd.set_debug_regs(&s.debugregs)
            .map_err(e("set debug registers"))?;
        fd.set_lapic(&s.lapic).map_err(e("set LAPIC"))?;
        for chunk in s.msrs.chunks(MSR_CHUNK) {
            let m = Msrs::from_entries(chunk).map_err(|_| VcpuError::List(id, "MSR"))?;
            let n = fd.set_msrs(&m).map_err(e("set MSRs"))?;
            if n != chunk.len() {
                let index = chunk.get(n).map(|m| m.index).unwrap_or(0);
                return Err(VcpuError::MsrRefused { id, index });
            }
        }
        fd.set_vcpu_events(&s.events)
            .map_err(e("set vCPU events"))?;
        Ok(())
    }
}

/// What the vCPU threads need to run: the buses and the run control.
pub struct VcpuEnv {
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    /// Pause/exit control.
    pub control: Arc<RunControl>,
}

impl From<GuestEvent> for ExitReason {
    fn from(e: GuestEvent) -> Self {
        match e {
            GuestEvent::Reset => ExitReason::Reset,
            GuestEvent::PowerOff => ExitReason::PowerOff,
        }
    }
}

/// Formats the vCPU's registers for an error report.
pub fn dump_registers(fd: &VcpuFd) -> String {
    match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} \
             cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}/l{} ss={:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, s.cr0, s.cr3, s.cr4, s.efer,
            s.cs.selector, s.cs.l, s.ss.selector
        ),
        (Err(e), _) | (_, Err(e)) => format!("(registers unavailable: {e})"),
    }
}

enum Step {
    Continue,
    Exit(ExitReason),
    Fatal(String),
}

/// Tells KVM the guest was paused (`KVM_KVMCLOCK_CTRL`), so the guest's watchdogs do not take
/// the pause for a lockup. EINVAL means the guest has not set up kvmclock: nothing to tell.
fn kvmclock_paused(id: u8, fd: &VcpuFd) {
    if let Err(e) = fd.kvmclock_ctrl() {
        if e.errno() != libc::EINVAL {
            tracing::debug!("vCPU {id}: KVM_KVMCLOCK_CTRL failed: {e}");
        }
    }
}

/// Body of a vCPU thread: runs until the VM ends. Pauses park the thread only at an
/// instruction boundary (see the `control` module docs): after a port-I/O or MMIO exit the
/// vCPU first re-enters KVM with `immediate_exit` set, so KVM completes the instruction.
pub fn run_loop(vcpu: &Vcpu, env: &VcpuEnv) {
    // Before the first KVM_RUN: guest code never runs on an unfiltered thread.
    crate::sandbox::install_or_exit(crate::sandbox::ThreadKind::Vcpu);
    let ctl = &env.control;
    {
        let mut fd = vcpu.fd.lock();
        let target: *mut u8 = &mut fd.get_kvm_run().immediate_exit;
        // SAFETY: the pointer is into the kvm_run mapping of this vCPU's fd, which `vcpu`
        // (borrowed for this whole function) owns; it is unregistered before returning.
        unsafe { crate::control::set_kick_target(target) };
    }
    ctl.register_vcpu_thread();
    // The last KVM_RUN returned a port-I/O or MMIO exit: its instruction completes only when
    // KVM is entered again.
    let mut pending_io: Option<&'static str> = None;
    loop {
        if ctl.exit_requested() {
            break;
        }
        let mut fd = vcpu.fd.lock();
        let pausing = ctl.pause_requested();
        if pausing && pending_io.is_none() {
            kvmclock_paused(vcpu.id, &fd);
            drop(fd);
            if !ctl.park() {
                break;
            }
            continue;
        }
        if let (true, Some(kind)) = (pausing, pending_io) {
            // Complete the pending instruction without running further guest code.
            tracing::debug!(
                "vCPU {}: pause with a {kind} exit pending: completing its instruction first",
                vcpu.id
            );
            fd.set_kvm_immediate_exit(1);
        }
        let step = match fd.run() {
            Ok(exit) => {
                pending_io = match &exit {
                    VcpuExit::IoIn(..) => Some("port-I/O read"),
                    VcpuExit::IoOut(..) => Some("port-I/O write"),
                    VcpuExit::MmioRead(..) => Some("MMIO read"),
                    VcpuExit::MmioWrite(..) => Some("MMIO write"),
                    _ => None,
                };
                dispatch(exit, env)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Cleared before the pause flag is read again at the top of the loop, so a
                // kick that lands in between is not lost (its pause flag was set first).
                fd.set_kvm_immediate_exit(0);
                pending_io = None;
                Step::Continue
            }
            Err(e) => Step::Exit(ExitReason::Error(format!(
                "vCPU {}: KVM_RUN failed: {e}",
                vcpu.id
            ))),
        };
        match step {
            Step::Continue => {}
            Step::Exit(r) => {
                drop(fd);
                ctl.request_exit(r);
            }
            Step::Fatal(what) => {
                let regs = dump_registers(&fd);
                drop(fd);
                ctl.request_exit(ExitReason::InternalError(format!(
                    "vCPU {}: {what}; {regs}",
                    vcpu.id
                )));
            }
        }
    }
    // SAFETY: null unregisters; nothing is written through it afterwards.
    unsafe { crate::control::set_kick_target(std::ptr::null_mut()) };
    ctl.vcpu_thread_done();
}

/// Handles one exit of KVM_RUN.
fn dispatch(exit: VcpuExit<'_>, env: &VcpuEnv) -> Step {
    match exit {
        VcpuExit::IoIn(port, data) => {
            env.pio.read(u64::from(port), data);
            Step::Continue
        }
        VcpuExit::IoOut(port, data) => match env.pio.write(u64::from(port), data) {
            Some(ev) => Step::Exit(ev.into()),
            None => Step::Continue,
        },
        VcpuExit::MmioRead(addr, data) => {
            env.mmio.read(addr, data);
            Step::Continue
        }
        VcpuExit::MmioWrite(addr, data) => match env.mmio.write(addr, data) {
            Some(ev) => Step::Exit(ev.into()),
            None => Step::Continue,
        },
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => Step::Continue,
        VcpuExit::Shutdown => Step::Exit(ExitReason::TripleFault),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Step::Exit(ExitReason::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Step::Exit(ExitReason::Reset),
            other => Step::Fatal(format!("unhandled system event {other}")),
        },
        VcpuExit::InternalError => Step::Fatal("KVM_EXIT_INTERNAL_ERROR".into()),
        VcpuExit::FailEntry(reason, cpu) => Step::Fatal(format!(
            "KVM_EXIT_FAIL_ENTRY reason {reason:#x} on host cpu {cpu}"
        )),
        other => Step::Fatal(format!("unhandled exit {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::vm::KvmVm;

    #[test]
    fn state_round_trips_through_persist() {
        let mem = crate::memory::create(64 << 20).expect("guest memory");
        let vm = KvmVm::new(&mem).expect("KVM VM");
        let base = cpuid::supported(vm.kvm()).expect("CPUID");
        let msrs = vm.saved_msrs().clone();
        let v0 = Vcpu::new(vm.fd(), &base, msrs.clone(), 0, 2).expect("vCPU 0");
        let v1 = Vcpu::new(vm.fd(), &base, msrs, 1, 2).expect("vCPU 1");
        v0.setup_boot(0x10_0000).expect("boot setup");
        vm.wait_memory().expect("memory slots");
        assert!(!vm.saved_msrs().is_probed());
        v0.probe_msrs().expect("MSR probe");
        assert!(vm.saved_msrs().is_probed());

        let st = v0.save().expect("save");
        assert_eq!(st.id, 0);
        assert_eq!(st.regs.rip, 0x10_0000);
        assert!(!st.msrs.is_empty(), "the probed MSRs are saved");
        assert!(st.tsc_khz > 0);
        assert!(matches!(
            v1.restore(&st),
            Err(VcpuError::WrongVcpu { id: 1, saved: 0 })
        ));

        let mut moved = v0.save().expect("save");
        moved.regs.rip = 0x20_0000;
        v0.restore(&moved).expect("restore");
        let again = v0.save().expect("save after restore");
        assert_eq!(again.regs.rip, 0x20_0000);
        assert_eq!(again.msrs.len(), st.msrs.len());
        assert_eq!(again.sregs.cr0, st.sregs.cr0);
    }
}
