//! The 16550 UART at 0x3f8 (IRQ 4), from `vm-superio`, with its output sent to stdout, a file
//! or nowhere, and its interrupt delivered through an irqfd.

use super::bus::{BusDevice, GuestEvent};
use crate::config::SerialTarget;
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
    /// The interrupt eventfd could not be created.
    #[error("cannot create serial interrupt eventfd: {0}")]
    EventFd(io::Error),
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
            .map_err(|e| SerialError::EventFd(io::Error::other(format!("{e:?}"))))?;
        Ok(SerialDevice { uart })
    }

    /// The UART's register state, for snapshots.
    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// A duplicate of the interrupt eventfd (to rebuild the UART from saved state).
    pub fn irq_evt(&self) -> io::Result<EventFd> {
        self.uart.interrupt_evt().0.try_clone()
    }

    /// Queues input bytes for the guest; returns how many were accepted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
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
