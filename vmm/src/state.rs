//! The whole machine's state except guest memory ([`MachineState`]): a typed composition of
//! its components' [`Persist`](crate::persist::Persist) states (each vCPU, the VM-wide KVM
//! devices, the serial port, the virtio devices), and the envelope it travels in: magic,
//! format version, length and crc32 around a serde body. A state written by a newer format
//! version is refused; older ones are not read either (the version is bumped whenever the
//! body changes).

use crate::devices::serial::{SerialError, SerialSaved};
use crate::devices::virtio::{DevicesState, ManagerError};
use crate::kvm::vm::{VmError, VmState};
use crate::vcpu::{VcpuError, VcpuState};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Format version written by this build (2: typed device state, TSC frequency required).
pub const STATE_VERSION: u32 = 2;
/// Magic at the start of a state envelope.
pub const STATE_MAGIC: &[u8; 8] = b"NCSTATE\0";

/// Errors capturing, encoding or restoring VM state.
#[derive(Debug, Error)]
pub enum StateError {
    /// A vCPU's state could not be captured or restored.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The VM-wide KVM state could not be captured or restored.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The serial port's state could not be restored.
    #[error(transparent)]
    Serial(#[from] SerialError),
    /// The virtio devices' state could not be captured or restored.
    #[error(transparent)]
    Devices(#[from] ManagerError),
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
    /// The state was written by an older NovaCron whose format this build no longer reads.
    #[error("VM state format version {0} is older than this VMM reads ({STATE_VERSION}); take the snapshot again with this version")]
    TooOld(u32),
    /// The state is truncated.
    #[error("VM state is truncated")]
    Truncated,
    /// The body does not (de)serialize.
    #[error("VM state body is malformed: {0}")]
    Body(#[from] serde_json::Error),
    /// The state does not fit this machine.
    #[error("VM state does not match this machine: {0}")]
    Mismatch(String),
}

/// The whole machine's state except guest memory.
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmState,
    /// Serial port.
    pub serial: SerialSaved,
    /// virtio devices.
    pub devices: DevicesState,
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
    if version < STATE_VERSION {
        return Err(StateError::TooOld(version));
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

    use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};

    fn sample() -> MachineState {
        MachineState {
            memory: 128 << 20,
            vcpus: vec![],
            vm: VmState {
                pic_master: kvm_irqchip::default(),
                pic_slave: kvm_irqchip::default(),
                ioapic: kvm_irqchip::default(),
                pit: kvm_pit_state2::default(),
                clock: kvm_clock_data::default(),
            },
            serial: SerialSaved::default(),
            devices: DevicesState::default(),
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
        let mut older = bytes.clone();
        older[8..12].copy_from_slice(&(STATE_VERSION - 1).to_le_bytes());
        assert!(matches!(decode(&older), Err(StateError::TooOld(_))));
        assert!(matches!(decode(&bytes[..30]), Err(StateError::Truncated)));
        assert!(matches!(
            decode(b"garbage garbage garbage garbage"),
            Err(StateError::BadMagic)
        ));
    }
}
