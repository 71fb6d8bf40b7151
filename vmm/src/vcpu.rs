//! vCPUs: creation and boot setup, and the thread that runs each one, dispatching its exits to
//! the device buses and turning terminal exits into an [`ExitReason`].

use crate::control::{ExitReason, RunControl};
use crate::devices::{Bus, GuestEvent};
use crate::kvm::{cpuid, msrs, regs};
use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::{Arc, Mutex};
use thiserror::Error;

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
    /// Building an MSR list failed.
    #[error("vCPU {0}: cannot build MSR list")]
    MsrList(u8),
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

/// One vCPU: its index and fd. The fd is locked by the vCPU thread while it runs, and by
/// state save/restore while the VM is paused.
pub struct Vcpu {
    /// Index (also the APIC id).
    pub id: u8,
    /// The KVM vCPU.
    pub fd: Mutex<VcpuFd>,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` with CPUID normalised from `base`.
    pub fn new(vm: &VmFd, base: &CpuId, id: u8, count: u8) -> Result<Self, VcpuError> {
        let e = |what| move |source| VcpuError::Ioctl { id, what, source };
        let fd = vm.create_vcpu(u64::from(id)).map_err(e("create vCPU"))?;
        fd.set_cpuid2(&cpuid::for_vcpu(base, id, count))
            .map_err(e("set CPUID"))?;
        Ok(Vcpu {
            id,
            fd: Mutex::new(fd),
        })
    }

    /// Sets registers, segments, FPU, MSRs and LAPIC for the 64-bit boot entry at `entry`.
    /// Only the boot vCPU gets the entry registers; others wait for INIT/SIPI.
    pub fn setup_boot(&self, entry: u64) -> Result<(), VcpuError> {
        let id = self.id;
        let e = |what| move |source| VcpuError::Ioctl { id, what, source };
        let fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let entries = msrs::boot_msrs();
        let list = msrs::to_msrs(&entries).map_err(|_| VcpuError::MsrList(id))?;
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

/// Body of a vCPU thread: runs until the VM ends.
pub fn run_loop(vcpu: &Vcpu, env: &VcpuEnv) {
    env.control.register_vcpu_thread();
    while env.control.checkpoint() {
        let mut fd = vcpu.fd.lock().unwrap_or_else(|p| p.into_inner());
        let step = match fd.run() {
            Ok(exit) => match exit {
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
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
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
                env.control.request_exit(r);
            }
            Step::Fatal(what) => {
                let regs = dump_registers(&fd);
                drop(fd);
                env.control.request_exit(ExitReason::InternalError(format!(
                    "vCPU {}: {what}; {regs}",
                    vcpu.id
                )));
            }
        }
    }
    env.control.vcpu_thread_done();
}
