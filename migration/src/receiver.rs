//! The destination side over a [`UnitSink`]: checks the handshake (through the VMM's
//! [`Takeover`] hooks), applies page batches (every unit's crc32 is verified by the
//! decoder), restores state, verifies the final units if the source lists them, and only
//! then starts the guest and confirms. Anything short of that and the guest never runs
//! here.

use std::io::{BufReader, BufWriter};
use std::net::TcpStream;
use std::time::Instant;

use crate::decoder::BatchDecoder;
use crate::protocol::{
    Abort, Confirm, Frame, FrameReader, FrameType, FrameWriter, Hello, HelloAck, ProtocolError,
    RoundEnd,
};
use crate::session::{Expect, HookError, SessionError};
use crate::unit::{UnitSet, UnitSink};
use crate::{is_zero_page, Encoding, PAGE_SIZE};

/// What the engine asks of the VMM receiving the guest.
pub trait Takeover {
    /// Checks the source's Hello against this machine; the refusal reason if any.
    fn check(&self, hello: &Hello) -> Result<(), String>;
    /// Restores the VM state envelope the source sent.
    fn restore(&mut self, state: &[u8]) -> Result<(), HookError>;
    /// Starts the guest: every unit and the state are in place.
    fn start(&mut self) -> Result<(), HookError>;
}

/// What the destination reports when it has taken over the guest.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Page batches applied.
    pub batches: u64,
    /// Downtime seen here: Switchover to guest running (ms).
    pub downtime_ms: f64,
    /// Units checked against the source's Verify records (`None`: no verification).
    pub verified_pages: Option<u64>,
}

/// Receives one migration from `stream` into `sink`. On success the guest is running
/// here; on error the source has been told (best effort) and the guest never ran.
pub fn receive<K: UnitSink, T: Takeover>(
    stream: TcpStream,
    sink: &mut K,
    takeover: &mut T,
    expect: &Expect,
) -> Result<Received, SessionError> {
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(expect.read_timeout))
        .map_err(ProtocolError::Io)?;
    let mut out = FrameWriter::new(BufWriter::new(
        stream.try_clone().map_err(ProtocolError::Io)?,
    ));
    let mut input = FrameReader::new(BufReader::with_capacity(1 << 20, stream));
    match receive_stream(&mut input, &mut out, sink, takeover, expect) {
        Ok(r) => Ok(r),
        Err(e) => {
            if !matches!(e, SessionError::Aborted(_) | SessionError::Protocol(_)) {
                let _ = out.json(
                    FrameType::Abort,
                    &Abort {
                        reason: e.to_string(),
                    },
                );
                let _ = out.flush();
            }
            Err(e)
        }
    }
}

/// Writes a JSON frame and flushes it.
fn reply<T: serde::Serialize>(
    out: &mut FrameWriter<BufWriter<TcpStream>>,
    kind: FrameType,
    v: &T,
) -> Result<(), SessionError> {
    out.json(kind, v)?;
    out.flush()?;
    Ok(())
}

/// Checks a frame is about the sink's source.
fn check_source<K: UnitSink>(f: &Frame, sink: &K) -> Result<(), SessionError> {
    if f.source != sink.id() {
        return Err(SessionError::UnknownSource {
            got: f.source,
            have: sink.id(),
        });
    }
    Ok(())
}

fn receive_stream<K: UnitSink, T: Takeover>(
    input: &mut FrameReader<BufReader<TcpStream>>,
    out: &mut FrameWriter<BufWriter<TcpStream>>,
    sink: &mut K,
    takeover: &mut T,
    expect: &Expect,
) -> Result<Received, SessionError> {
    let _ = expect; // migration id and step order: issue 11 (receiver helper)
    let first = input.read()?;
    if first.kind != FrameType::Hello {
        return Err(ProtocolError::Unexpected {
            got: first.kind,
            want: "Hello",
        }
        .into());
    }
    let hello: Hello = first.json()?;
    if let Err(reason) = takeover.check(&hello) {
        let ack = HelloAck {
            ok: false,
            error: reason.clone(),
            encodings: vec![],
        };
        reply(out, FrameType::HelloAck, &ack)?;
        return Err(SessionError::Refused(reason));
    }
    let ack = HelloAck {
        ok: true,
        error: String::new(),
        encodings: Encoding::ALL.iter().map(|e| e.name().to_string()).collect(),
    };
    reply(out, FrameType::HelloAck, &ack)?;

    let mut decoder = BatchDecoder::new()?;
    let mut received = Received::default();
    let mut switchover: Option<Instant> = None;
    let mut have_state = false;
    let mut listed: Option<UnitSet> = None;
    let mut buf = [0u8; PAGE_SIZE];
    loop {
        let f = input.read()?;
        match f.kind {
            FrameType::Pages => {
                check_source(&f, sink)?;
                decoder.decode(&f.payload, sink)?;
                received.batches += 1;
            }
            FrameType::RoundEnd => {
                let r: RoundEnd = f.json()?;
                reply(out, FrameType::RoundAck, &r)?;
            }
            FrameType::Switchover => switchover = Some(Instant::now()),
            FrameType::State => {
                takeover
                    .restore(&f.payload)
                    .map_err(SessionError::Restore)?;
                have_state = true;
            }
            FrameType::Verify => {
                check_source(&f, sink)?;
                let count = sink.count();
                let set = listed.get_or_insert_with(|| UnitSet::new(count));
                for (n, crc) in crate::protocol::decode_verify(&f.payload)? {
                    if n >= count {
                        return Err(SessionError::Verify(format!(
                            "page {n:#x} is outside guest memory"
                        )));
                    }
                    let got = sink.checksum(n, &mut buf).ok_or_else(|| {
                        SessionError::Verify(format!("page {n:#x} cannot be read here"))
                    })?;
                    if got != crc {
                        return Err(SessionError::Verify(format!(
                            "page {n:#x}: crc32 {got:#010x} here, {crc:#010x} at the source"
                        )));
                    }
                    set.set(n);
                    *received.verified_pages.get_or_insert(0) += 1;
                }
                received.verified_pages.get_or_insert(0);
            }
            FrameType::Complete => {
                if !have_state {
                    return Err(SessionError::Verify("Complete before State".into()));
                }
                if let Some(listed) = &listed {
                    // Every unit the source did not list must be zero here.
                    let mut populated = UnitSet::new(sink.count());
                    sink.populated(&mut populated);
                    for n in populated.iter().filter(|n| !listed.get(*n)) {
                        if !sink.read_page(n, &mut buf) || !is_zero_page(&buf) {
                            return Err(SessionError::Verify(format!(
                                "page {n:#x} is non-zero here but zero at the source"
                            )));
                        }
                    }
                }
                takeover.start().map_err(SessionError::Start)?;
                received.downtime_ms = switchover
                    .map(|t| t.elapsed().as_secs_f64() * 1e3)
                    .unwrap_or(0.0);
                let confirm = Confirm {
                    ok: true,
                    error: String::new(),
                    downtime_ms: received.downtime_ms,
                    verified_pages: received.verified_pages,
                };
                reply(out, FrameType::Confirm, &confirm)?;
                return Ok(received);
            }
            FrameType::Abort => {
                let a: Abort = f.json()?;
                return Err(SessionError::Aborted(a.reason));
            }
            other => {
                return Err(ProtocolError::Unexpected {
                    got: other,
                    want: "Pages, State, Verify or Complete",
                }
                .into())
            }
        }
    }
}
