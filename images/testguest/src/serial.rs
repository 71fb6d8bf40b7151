//! COM1 output (polled 16550), and a line buffer for formatting.
//!
//! Every port access is a VM exit to the VMM, so output is written in FIFO-sized bursts:
//! wait until the line status register says the transmitter is empty (LSR bit 5), then write
//! up to the FIFO depth (16 bytes if the UART reports FIFOs enabled in IIR bits 6-7, else 1).

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::sys::{inb, outb};

const COM1: u16 = 0x3f8;
const THR: u16 = COM1;
const IIR_FCR: u16 = COM1 + 2;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

static FIFO_DEPTH: AtomicUsize = AtomicUsize::new(1);

/// Enables the transmit FIFO if the UART has one.
pub fn init() {
    outb(IIR_FCR, 0x07); // enable and clear both FIFOs
    if inb(IIR_FCR) & 0xc0 == 0xc0 {
        FIFO_DEPTH.store(16, Ordering::Relaxed);
    }
}

/// Writes raw bytes.
pub fn write_bytes(bytes: &[u8]) {
    let depth = FIFO_DEPTH.load(Ordering::Relaxed);
    for chunk in bytes.chunks(depth) {
        while inb(LSR) & LSR_THR_EMPTY == 0 {
            core::hint::spin_loop();
        }
        for &b in chunk {
            outb(THR, b);
        }
    }
}

/// A fixed-size line being formatted; longer text is truncated.
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }

    pub fn push_bytes(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    /// Appends a newline (replacing the last byte if full) and writes the line out.
    pub fn emit(mut self) {
        if self.len == self.buf.len() {
            self.len -= 1;
        }
        self.buf[self.len] = b'\n';
        write_bytes(&self.buf[..=self.len]);
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes());
        Ok(())
    }
}

/// Formats one line and writes it to COM1 (with a trailing `\n`).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        let mut line = $crate::serial::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
        line.emit();
    }};
}
