//! The destination side: waits for one migration stream, checks the handshake against this
//! machine (memory, vCPUs, CPUID features, devices), applies page batches (every page's crc32
//! is verified by the decoder), restores state, verifies the final memory if asked, and only
//! then starts the vCPUs and confirms. Anything short of that and the guest never runs here.

use super::guest_pages::GuestMemoryPages;
use super::options::parse_tcp;
use super::MigrationError;
use novacron_migration::protocol::{
    self, Abort, Confirm, FrameType, Hello, HelloAck, PROTOCOL_VERSION,
};
use novacron_migration::{BatchDecoder, Encoding, PAGE_SIZE};
use crate::dirty;
use crate::kvm::cpuid;
use crate::machine::Machine;
use crate::memory::is_zero_page;
use std::io::{BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

/// What the destination reports when it has taken over the guest.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Page batches applied.
    pub batches: u64,
    /// Downtime seen here: Switchover to vCPUs running (ms).
    pub downtime_ms: f64,
}

/// Checks the source's Hello against this machine; returns the refusal reason if any.
pub fn check_hello(m: &Machine, h: &Hello) -> Result<(), String> {
    if h.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} not supported (this VMM speaks {PROTOCOL_VERSION})",
            h.version
        ));
    }
    if h.memory != m.config.memory {
        return Err(format!(
            "memory size differs: source {} MiB, destination {} MiB",
            h.memory >> 20,
            m.config.memory >> 20
        ));
    }
    if h.vcpus != m.config.vcpus {
        return Err(format!(
            "vCPU count differs: source {}, destination {}",
            h.vcpus, m.config.vcpus
        ));
    }
    if h.disks != m.config.disks.len() || h.nets != m.config.nets.len() {
        return Err(format!(
            "device set differs: source {} disks/{} nets, destination {} disks/{} nets",
            h.disks,
            h.nets,
            m.config.disks.len(),
            m.config.nets.len()
        ));
    }
    let missing = cpuid::missing_features(&h.cpuid, &cpuid::feature_words(&m.cpuid));
    if !missing.is_empty() {
        return Err(format!(
            "destination CPU lacks features the guest may use: {}",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// Listens on `addr` (`tcp:HOST:PORT`) and receives one migration into `m`, which must be
/// built but not started. On success the guest is running here. `on_listening` is called once
/// the socket is bound.
pub fn receive(
    m: &Arc<Machine>,
    addr: &str,
    restore_devices: &dyn Fn(&serde_json::Value) -> Result<(), String>,
    on_listening: &dyn Fn(std::net::SocketAddr),
) -> Result<Received, MigrationError> {
    let sa = parse_tcp(addr)?;
    let listener = TcpListener::bind(sa).map_err(|source| MigrationError::Listen {
        addr: addr.to_string(),
        source,
    })?;
    if let Ok(local) = listener.local_addr() {
        on_listening(local);
    }
    let (stream, _) = listener.accept().map_err(|source| MigrationError::Listen {
        addr: addr.to_string(),
        source,
    })?;
    drop(listener);
    let _ = stream.set_nodelay(true);
    let mut out = BufWriter::new(stream.try_clone().map_err(protocol::ProtocolError::Io)?);
    let mut input = BufReader::with_capacity(1 << 20, stream);
    match receive_stream(m, &mut input, &mut out, restore_devices) {
        Ok(r) => Ok(r),
        Err(e) => {
            if !matches!(e, MigrationError::Aborted(_) | MigrationError::Protocol(_)) {
                let _ = protocol::write_json(
                    &mut out,
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

fn receive_stream(
    m: &Arc<Machine>,
    input: &mut BufReader<TcpStream>,
    out: &mut BufWriter<TcpStream>,
    restore_devices: &dyn Fn(&serde_json::Value) -> Result<(), String>,
) -> Result<Received, MigrationError> {
    let first = protocol::read_frame(input)?;
    if first.kind != FrameType::Hello {
        return Err(protocol::ProtocolError::Unexpected {
            got: first.kind,
            want: "Hello",
        }
        .into());
    }
    let hello: Hello = first.json()?;
    if let Err(reason) = check_hello(m, &hello) {
        protocol::write_json(
            out,
            FrameType::HelloAck,
            &HelloAck {
                ok: false,
                error: reason.clone(),
                encodings: vec![],
            },
        )?;
        out.flush().map_err(protocol::ProtocolError::Io)?;
        return Err(MigrationError::Refused(reason));
    }
    protocol::write_json(
        out,
        FrameType::HelloAck,
        &HelloAck {
            ok: true,
            error: String::new(),
            encodings: Encoding::ALL.iter().map(|e| e.name().to_string()).collect(),
        },
    )?;
    out.flush().map_err(protocol::ProtocolError::Io)?;

    let mut decoder = BatchDecoder::new()?;
    let mut received = Received::default();
    let mut switchover: Option<Instant> = None;
    let mut have_state = false;
    let mut verify: Option<dirty::PageBitmap> = None;
    let mut buf = [0u8; PAGE_SIZE];
    loop {
        let f = protocol::read_frame(input)?;
        match f.kind {
            FrameType::Pages => {
                decoder.decode(&f.payload, &mut GuestMemoryPages(&m.mem))?;
                received.batches += 1;
            }
            FrameType::RoundEnd => {
                let r: protocol::RoundEnd = f.json()?;
                protocol::write_json(out, FrameType::RoundAck, &r)?;
                out.flush().map_err(protocol::ProtocolError::Io)?;
            }
            FrameType::Switchover => switchover = Some(Instant::now()),
            FrameType::State => {
                let st = crate::state::decode(&f.payload)?;
                crate::state::restore(m, &st)?;
                restore_devices(&st.devices).map_err(MigrationError::Start)?;
                have_state = true;
            }
            FrameType::Verify => {
                let listed =
                    verify.get_or_insert_with(|| dirty::PageBitmap::new(dirty::frame_count(m)));
                for (pfn, crc) in protocol::decode_verify(&f.payload)? {
                    m.mem
                        .read_slice(&mut buf, GuestAddress(pfn.saturating_mul(PAGE_SIZE as u64)))
                        .map_err(|_| {
                            MigrationError::Verify(format!("page {pfn:#x} is outside guest memory"))
                        })?;
                    let got = crc32fast::hash(&buf);
                    if got != crc {
                        return Err(MigrationError::Verify(format!(
                            "page {pfn:#x}: crc32 {got:#010x} here, {crc:#010x} at the source"
                        )));
                    }
                    listed.set(pfn);
                }
            }
            FrameType::Complete => {
                if !have_state {
                    return Err(MigrationError::Verify("Complete before State".into()));
                }
                if let Some(listed) = &verify {
                    // Every page the source did not list must be zero here.
                    for pfn in dirty::touched_pages(m).iter().filter(|p| !listed.get(*p)) {
                        m.mem
                            .read_slice(&mut buf, GuestAddress(pfn * PAGE_SIZE as u64))?;
                        if !is_zero_page(&buf) {
                            return Err(MigrationError::Verify(format!(
                                "page {pfn:#x} is non-zero here but zero at the source"
                            )));
                        }
                    }
                }
                // Writes made while receiving are not guest activity.
                vm_memory::GuestMemoryBackend::iter(&m.mem)
                    .for_each(|r| std::ops::Deref::deref(r).bitmap().reset());
                m.start()
                    .map_err(|e| MigrationError::Start(e.to_string()))?;
                received.downtime_ms = switchover
                    .map(|t| t.elapsed().as_secs_f64() * 1e3)
                    .unwrap_or(0.0);
                protocol::write_json(
                    out,
                    FrameType::Confirm,
                    &Confirm {
                        ok: true,
                        error: String::new(),
                        downtime_ms: received.downtime_ms,
                    },
                )?;
                out.flush().map_err(protocol::ProtocolError::Io)?;
                return Ok(received);
            }
            FrameType::Abort => {
                let a: Abort = f.json()?;
                return Err(MigrationError::Aborted(a.reason));
            }
            other => {
                return Err(protocol::ProtocolError::Unexpected {
                    got: other,
                    want: "Pages, State, Verify or Complete",
                }
                .into())
            }
        }
    }
}
