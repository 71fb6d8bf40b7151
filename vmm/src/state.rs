//! Complete, versioned VM state: per vCPU (registers, FPU/xsave, xcrs, debug registers, LAPIC,
//! MSRs, mp_state, events, TSC frequency, CPUID) and per VM (PIC, IOAPIC, PIT, kvmclock), the
//! serial port and the devices. Saved as a checksummed envelope around a serde body; a state
//! written by a newer format version is refused.

use crate::machine::Machine;
use crate::vcpu::Vcpu;
use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use thiserror::Error;

/// Format version written by this build.
pub const STATE_VERSION: u32 = 1;
/// Magic at the start of a state envelope.
pub const STATE_MAGIC: &[u8; 8] = b"NCSTATE\0";

/// Errors capturing, encoding or restoring VM state.
#[derive(Debug, Error)]
pub enum StateError {
    /// A KVM get/set ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: String,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// The envelope is not a NovaCron state.
    #[error("not a NovaCron VM state (bad magic)")]
    BadMagic,
    /// The state's checksum does not match its contents.
    #[error("VM state is corrupt: crc32 {found:#010x}, expected {expected:#010x}")]
    BadChecksum {
        /// Computed.
        found: u32,
        /// Stored.
        expected: u32,
    },
    /// The state was written by a newer NovaCron.
    #[error("VM state format version {0} is newer than this VMM supports ({STATE_VERSION}); upgrade the destination")]
    TooNew(u32),
    /// The state is truncated.
    #[error("VM state is truncated")]
    Truncated,
    /// The body does not deserialize.
    #[error("VM state body is malformed: {0}")]
    Body(#[from] serde_json::Error),
    /// The state does not fit this machine.
    #[error("VM state does not match this machine: {0}")]
    Mismatch(String),
    /// A FAM wrapper could not be built.
    #[error("cannot build {0} list")]
    Fam(&'static str),
    /// Registering guest memory with KVM failed.
    #[error(transparent)]
    Vm(#[from] crate::kvm::vm::VmError),
}

fn kvm_err(what: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    let what = what.into();
    move |source| StateError::Kvm { what, source }
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
    pub tsc_khz: Option<u32>,
}

/// Saved VM-wide interrupt controller and timer state.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmWideState {
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

/// Saved 16550 registers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SerialSaved {
    /// Registers in vm-superio order: DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub regs: [u8; 9],
    /// Unread input.
    pub in_buffer: Vec<u8>,
}

impl From<&vm_superio::serial::SerialState> for SerialSaved {
    fn from(s: &vm_superio::serial::SerialState) -> Self {
        SerialSaved {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl From<&SerialSaved> for vm_superio::serial::SerialState {
    fn from(s: &SerialSaved) -> Self {
        let r = s.regs;
        vm_superio::serial::SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// The whole machine's state except guest memory.
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: Vec<VcpuState>,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmWideState,
    /// Serial port.
    pub serial: SerialSaved,
    /// virtio devices (opaque to this module; owned by the device manager).
    #[serde(default)]
    pub devices: serde_json::Value,
}

/// MSRs KVM will actually return for this host, probed once.
fn readable_msrs(kvm: &Kvm, fd: &VcpuFd) -> &'static [u32] {
    MSR_LIST.get_or_init(|| {
        let all = crate::kvm::msrs::saveable_list(kvm).unwrap_or_default();
        all.into_iter()
            .filter(|&index| {
                let Ok(mut one) = Msrs::from_entries(&[kvm_msr_entry {
                    index,
                    ..Default::default()
                }]) else {
                    return false;
                };
                matches!(fd.get_msrs(&mut one), Ok(1))
            })
            .collect()
    })
}

/// Probes which MSRs KVM can save (once per process) so a later save, inside migration
/// downtime, does not. Briefly pauses the vCPUs if they are running.
pub fn prepare(m: &Machine) {
    let Some(v) = m.vcpus.first() else { return };
    if MSR_LIST.get().is_some() {
        return;
    }
    let was_paused = m.control().is_paused();
    if !was_paused {
        m.control().pause();
    }
    {
        let fd = v.fd.lock().unwrap_or_else(|p| p.into_inner());
        let _ = readable_msrs(&m.vm.kvm, &fd);
    }
    if !was_paused {
        m.control().resume();
    }
}

static MSR_LIST: OnceLock<Vec<u32>> = OnceLock::new();

/// Captures a (paused) vCPU's state.
pub fn save_vcpu(kvm: &Kvm, vcpu: &Vcpu) -> Result<VcpuState, StateError> {
    let fd = vcpu.fd.lock().unwrap_or_else(|p| p.into_inner());
    let id = vcpu.id;
    let w = |what: &str| kvm_err(format!("vCPU {id}: get {what}"));
    let cpuid = fd
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(w("CPUID"))?;
    let mp_state = fd.get_mp_state().map_err(w("mp_state"))?;
    let regs = fd.get_regs().map_err(w("registers"))?;
    let sregs = fd.get_sregs().map_err(w("special registers"))?;
    let xsave = fd.get_xsave().map_err(w("xsave"))?;
    let xcrs = fd.get_xcrs().map_err(w("xcrs"))?;
    let debugregs = fd.get_debug_regs().map_err(w("debug registers"))?;
    let lapic = fd.get_lapic().map_err(w("LAPIC"))?;
    let list = readable_msrs(kvm, &fd);
    let entries: Vec<kvm_msr_entry> = list
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(200) {
        let mut m = Msrs::from_entries(chunk).map_err(|_| StateError::Fam("MSR"))?;
        let n = fd.get_msrs(&mut m).map_err(w("MSRs"))?;
        if n != chunk.len() {
            return Err(StateError::Mismatch(format!(
                "vCPU {id}: KVM returned {n} of {} MSRs",
                chunk.len()
            )));
        }
        msrs.extend_from_slice(m.as_slice());
    }
    let events = fd.get_vcpu_events().map_err(w("vCPU events"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
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

/// Restores a vCPU, in the order KVM needs (CPUID first, MSRs and events last).
pub fn restore_vcpu(vcpu: &Vcpu, s: &VcpuState) -> Result<(), StateError> {
    let fd = vcpu.fd.lock().unwrap_or_else(|p| p.into_inner());
    let id = vcpu.id;
    let w = |what: &str| kvm_err(format!("vCPU {id}: set {what}"));
    if let Some(khz) = s.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            if let Err(e) = fd.set_tsc_khz(khz) {
                tracing::warn!(
                    "vCPU {id}: cannot scale TSC to {khz} kHz ({e}); guest time may drift"
                );
            }
        }
    }
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|_| StateError::Fam("CPUID"))?;
    fd.set_cpuid2(&cpuid).map_err(w("CPUID"))?;
    fd.set_mp_state(s.mp_state).map_err(w("mp_state"))?;
    fd.set_regs(&s.regs).map_err(w("registers"))?;
    fd.set_sregs(&s.sregs).map_err(w("special registers"))?;
    // SAFETY: the kvm_xsave buffer is the legacy 4 KiB layout that KVM_GET_XSAVE produced.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(w("xsave"))?;
    fd.set_xcrs(&s.xcrs).map_err(w("xcrs"))?;
    fd.set_debug_regs(&s.debugregs)
        .map_err(w("debug registers"))?;
    fd.set_lapic(&s.lapic).map_err(w("LAPIC"))?;
    for chunk in s.msrs.chunks(200) {
        let m = Msrs::from_entries(chunk).map_err(|_| StateError::Fam("MSR"))?;
        let n = fd.set_msrs(&m).map_err(w("MSRs"))?;
        if n != chunk.len() {
            let bad = chunk.get(n).map(|e| e.index).unwrap_or(0);
            return Err(StateError::Mismatch(format!(
                "vCPU {id}: KVM refused MSR {bad:#x}"
            )));
        }
    }
    fd.set_vcpu_events(&s.events).map_err(w("vCPU events"))?;
    Ok(())
}

fn get_chip(vm: &kvm_ioctls::VmFd, chip_id: u32) -> Result<kvm_irqchip, StateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(kvm_err(format!("get irqchip {chip_id}")))?;
    Ok(chip)
}

/// Captures the whole machine (vCPUs must be paused).
pub fn save(m: &Machine, devices: serde_json::Value) -> Result<MachineState, StateError> {
    let vm = &m.vm.fd;
    let vcpus = m
        .vcpus
        .iter()
        .map(|v| save_vcpu(&m.vm.kvm, v))
        .collect::<Result<Vec<_>, _>>()?;
    let wide = VmWideState {
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm_err("get PIT"))?,
        clock: vm.get_clock().map_err(kvm_err("get clock"))?,
    };
    let serial = SerialSaved::from(&m.serial.lock().unwrap_or_else(|p| p.into_inner()).state());
    Ok(MachineState {
        memory: m.config.memory,
        vcpus,
        vm: wide,
        serial,
        devices,
    })
}

/// Restores VM-wide state and every vCPU into a freshly built machine of the same shape.
pub fn restore(m: &Machine, s: &MachineState) -> Result<(), StateError> {
    if s.memory != m.config.memory || s.vcpus.len() != m.vcpus.len() {
        return Err(StateError::Mismatch(format!(
            "state has {} MiB and {} vCPUs, machine has {} MiB and {} vCPUs",
            s.memory >> 20,
            s.vcpus.len(),
            m.config.memory >> 20,
            m.vcpus.len()
        )));
    }
    // Guest-memory-backed vCPU state (kvmclock's page) is checked against the memslots.
    m.vm.wait_memory()?;
    let vm = &m.vm.fd;
    vm.set_pit2(&s.vm.pit).map_err(kvm_err("set PIT"))?;
    let mut clock = s.vm.clock;
    clock.flags = 0;
    vm.set_clock(&clock).map_err(kvm_err("set clock"))?;
    for chip in [&s.vm.pic_master, &s.vm.pic_slave, &s.vm.ioapic] {
        vm.set_irqchip(chip)
            .map_err(kvm_err(format!("set irqchip {}", chip.chip_id)))?;
    }
    for (v, vs) in m.vcpus.iter().zip(&s.vcpus) {
        restore_vcpu(v, vs)?;
    }
    let st = vm_superio::serial::SerialState::from(&s.serial);
    m.replace_serial_state(&st)
        .map_err(|e| StateError::Mismatch(format!("serial: {e}")))?;
    Ok(())
}

/// Encodes a state as `magic | version u32 | len u64 | crc32 u32 | body`.
pub fn encode(s: &MachineState) -> Result<Vec<u8>, StateError> {
    let body = serde_json::to_vec(s)?;
    let mut out = Vec::with_capacity(body.len() + 24);
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&STATE_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes and checks an envelope written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<MachineState, StateError> {
    if bytes.len() < 24 {
        return Err(StateError::Truncated);
    }
    if &bytes[..8] != STATE_MAGIC {
        return Err(StateError::BadMagic);
    }
    let word = |r: std::ops::Range<usize>| bytes.get(r).ok_or(StateError::Truncated);
    let version = u32::from_le_bytes(word(8..12)?.try_into().map_err(|_| StateError::Truncated)?);
    if version > STATE_VERSION {
        return Err(StateError::TooNew(version));
    }
    let len = u64::from_le_bytes(
        word(12..20)?
            .try_into()
            .map_err(|_| StateError::Truncated)?,
    );
    let expected = u32::from_le_bytes(
        word(20..24)?
            .try_into()
            .map_err(|_| StateError::Truncated)?,
    );
    let body = usize::try_from(len)
        .ok()
        .and_then(|l| bytes.get(24..24usize.checked_add(l)?))
        .ok_or(StateError::Truncated)?;
    let found = crc32fast::hash(body);
    if found != expected {
        return Err(StateError::BadChecksum { found, expected });
    }
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MachineState {
        MachineState {
            memory: 128 << 20,
            vcpus: vec![],
            vm: VmWideState {
                pic_master: kvm_irqchip::default(),
                pic_slave: kvm_irqchip::default(),
                ioapic: kvm_irqchip::default(),
                pit: kvm_pit_state2::default(),
                clock: kvm_clock_data::default(),
            },
            serial: SerialSaved::default(),
            devices: serde_json::Value::Null,
        }
    }

    #[test]
    fn envelope_round_trip_and_checks() {
        let bytes = encode(&sample()).expect("encode");
        assert_eq!(decode(&bytes).expect("decode").memory, 128 << 20);
        let mut bad = bytes.clone();
        let last = bad.len() - 2;
        bad[last] ^= 1;
        assert!(matches!(decode(&bad), Err(StateError::BadChecksum { .. })));
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(STATE_VERSION + 1).to_le_bytes());
        assert!(matches!(decode(&newer), Err(StateError::TooNew(_))));
        assert!(matches!(decode(&bytes[..30]), Err(StateError::Truncated)));
        assert!(matches!(
            decode(b"garbage garbage garbage garbage"),
            Err(StateError::BadMagic)
        ));
    }
}
