//! The 16550 UART at 0x3f8 (IRQ 4), from `vm-superio`, with its output sent to stdout, a file
//! or nowhere, its interrupt delivered through an irqfd, and its saved registers
//! ([`SerialSaved`], through [`Persist`]).

use super::bus::{BusDevice, GuestEvent};
use crate::config::SerialTarget;
use crate::persist::Persist;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use thiserror::Error;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Errors setting up the serial console.
#[derive(Debug, Error)]
pub enum SerialError {
    /// The console file could not be opened.
    #[error("cannot open serial output file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The interrupt eventfd could not be created or duplicated.
    #[error("cannot create serial interrupt eventfd: {0}")]
    EventFd(io::Error),
    /// The UART refused saved register state.
    #[error("cannot restore the serial port's registers: {0}")]
    Restore(String),
}

/// Raises the UART's interrupt by signalling the irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where console bytes go; buffered per line.
pub struct ConsoleOut {
    sink: Sink,
    line: Vec<u8>,
}

enum Sink {
    Stdout(io::Stdout),
    File(File),
    Discard,
}

impl ConsoleOut {
    /// A console that drops everything.
    fn discard() -> Self {
        ConsoleOut {
            sink: Sink::Discard,
            line: Vec::new(),
        }
    }

    /// Opens the console for `target` (files are appended to).
    pub fn open(target: &SerialTarget) -> Result<Self, SerialError> {
        let sink = match target {
            SerialTarget::Stdout => Sink::Stdout(io::stdout()),
            SerialTarget::None => Sink::Discard,
            SerialTarget::File(p) => Sink::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| SerialError::Open {
                        path: p.clone(),
                        source,
                    })?,
            ),
        };
        Ok(ConsoleOut {
            sink,
            line: Vec::with_capacity(256),
        })
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        let r = match &mut self.sink {
            Sink::Stdout(s) => {
                let mut l = s.lock();
                l.write_all(&self.line).and_then(|_| l.flush())
            }
            Sink::File(f) => f.write_all(&self.line),
            Sink::Discard => Ok(()),
        };
        self.line.clear();
        r
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if matches!(self.sink, Sink::Discard) {
            return Ok(buf.len());
        }
        self.line.extend_from_slice(buf);
        if buf.contains(&b'\n') || self.line.len() >= 4096 {
            self.emit()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()
    }
}

/// The UART on the port-I/O bus.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, ConsoleOut>,
}

impl SerialDevice {
    /// A UART writing to `out`, interrupting through `irq`.
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Restores a UART from saved register state.
    pub fn from_state(
        state: &SerialState,
        irq: EventFd,
        out: ConsoleOut,
    ) -> Result<Self, SerialError> {
        let uart = Serial::from_state(state, IrqTrigger(irq), NoEvents, out)
            .map_err(|e| SerialError::Restore(e.to_string()))?;
        Ok(SerialDevice { uart })
    }

    /// Rebuilds the UART from `state`, keeping its interrupt eventfd and its console.
    fn replace_state(&mut self, state: &SerialState) -> Result<(), SerialError> {
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(SerialError::EventFd)?;
        let out = std::mem::replace(self.uart.writer_mut(), ConsoleOut::discard());
        *self = SerialDevice::from_state(state, irq, out)?;
        Ok(())
    }

    /// Queues input bytes for the guest; returns how many were accepted (0 while the FIFO is
    /// full).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                // The bytes are queued; only the interrupt announcing them failed.
                tracing::warn!("serial input: {e}");
                room
            }
        }
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.uart.writer_mut().flush()
    }
}

/// Saved 16550 registers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSaved {
    /// Registers in vm-superio order: DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub regs: [u8; 9],
    /// Unread input.
    pub in_buffer: Vec<u8>,
}

impl From<&SerialState> for SerialSaved {
    fn from(s: &SerialState) -> Self {
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

impl From<&SerialSaved> for SerialState {
    fn from(s: &SerialSaved) -> Self {
        let r = s.regs;
        SerialState {
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

/// The port as it sits on the bus, behind its lock.
impl Persist for Mutex<SerialDevice> {
    type State = SerialSaved;
    type Error = SerialError;

    fn save(&self) -> Result<SerialSaved, SerialError> {
        Ok(SerialSaved::from(&self.lock().uart.state()))
    }

    fn restore(&self, state: &SerialSaved) -> Result<(), SerialError> {
        self.lock().replace_state(&SerialState::from(state))
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestEvent> {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, b) {
                tracing::warn!("serial write failed: {e:?}");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> Mutex<SerialDevice> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let out = ConsoleOut::open(&SerialTarget::None).expect("console");
        Mutex::new(SerialDevice::new(irq, out))
    }

    #[test]
    fn registers_and_input_round_trip_through_persist() {
        let a = port();
        {
            let mut dev = a.lock();
            // LCR: 8N1 with DLAB set, then a divisor, then DLAB clear; scratch register.
            dev.write(3, &[0x83]);
            dev.write(0, &[0x0c]);
            dev.write(3, &[0x03]);
            dev.write(7, &[0x5a]);
            assert_eq!(dev.enqueue_input(b"hi"), 2);
        }
        let saved = a.save().expect("save");
        assert_eq!(saved.regs[0], 0x0c, "divisor low");
        assert_eq!(saved.regs[8], 0x5a, "scratch");
        assert_eq!(saved.in_buffer, b"hi");

        let b = port();
        b.restore(&saved).expect("restore");
        assert_eq!(b.save().expect("save"), saved);
        let mut byte = [0u8; 1];
        b.lock().read(0, &mut byte);
        assert_eq!(byte[0], b'h', "restored input is read first");
    }
}
