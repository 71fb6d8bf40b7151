//! A seeded fuzzer of the control socket against a running VMM on /dev/kvm: random bytes,
//! garbage text, binary, over-long and partial lines, connections closed mid-request, and
//! random JSON shaped like requests (known and unknown commands, wrong field types, nested
//! values). Each connection's replies must all be well-formed envelopes, one per line sent,
//! or the connection must end cleanly; the VMM stays up and the guest keeps running and
//! passing its self-check. Requests that would legitimately end or move the guest
//! (`shutdown`, a `migrate` or `snapshot` with a usable target) are not generated.
//!
//! `NOVACRON_FUZZ_SEED` replays a run; `NOVACRON_FUZZ_CASES` sets its length.

mod vmm_conn;

use novacron_testsupport::*;
use std::time::Duration;
use vmm_conn::{envelope, state, Conn, Rng};

/// Longest request line the VMM accepts (`novacron_vmm_api::protocol::MAX_REQUEST_LINE`).
const MAX_LINE: usize = 64 << 10;

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn random_string(rng: &mut Rng) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 _-:/.\\\"{}[],\t\x01";
    let n = rng.below(24) as usize;
    (0..n)
        .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize] as char)
        .collect()
}

/// A random JSON value, `depth` levels deep at most.
fn random_value(rng: &mut Rng, depth: u32) -> serde_json::Value {
    use serde_json::Value;
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 1),
        2 => match rng.below(4) {
            0 => Value::from(rng.next()),
            1 => Value::from(-(rng.below(1 << 40) as i64)),
            2 => Value::from(rng.below(4)),
            _ => serde_json::Number::from_f64(rng.next() as f64 / 3.0)
                .map(Value::Number)
                .unwrap_or(Value::Null),
        },
        3 | 4 => Value::String(random_string(rng)),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| (random_string(rng), random_value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// A value for `to` that can never name a usable target: for a snapshot not a non-empty
/// string (any such string is a directory it would write), for a migration also a string
/// that is not `tcp:...`.
fn unusable_target(rng: &mut Rng, cmd: &str) -> serde_json::Value {
    match rng.below(4) {
        0 => serde_json::Value::String(String::new()),
        1 if cmd != "snapshot" => serde_json::Value::String(format!("udp:{}", random_string(rng))),
        2 => serde_json::Value::from(rng.next()),
        _ => serde_json::Value::Null,
    }
}

/// A JSON object shaped like a request.
fn random_request(rng: &mut Rng) -> String {
    const CMDS: [&str; 9] = [
        "info", "pause", "resume", "snapshot", "migrate", "cancel", "", "Info", "reboot",
    ];
    let mut obj = serde_json::Map::new();
    match rng.below(10) {
        0 => {}
        1 => {
            obj.insert("cmd".into(), random_value(rng, 2));
        }
        _ => {
            let cmd = CMDS[rng.below(CMDS.len() as u64) as usize];
            obj.insert("cmd".into(), cmd.into());
        }
    }
    for _ in 0..rng.below(4) {
        let key = match rng.below(8) {
            0 => "diff".to_string(),
            1 => "downtime_ms".to_string(),
            2 => "bandwidth".to_string(),
            3 => "compression".to_string(),
            4 => "verify".to_string(),
            5 => "cache_bytes".to_string(),
            _ => random_string(rng),
        };
        obj.insert(key, random_value(rng, 3));
    }
    // `to` last, so no random field can make a snapshot or a migration usable.
    let cmd = obj
        .get("cmd")
        .and_then(|c| c.as_str())
        .unwrap_or_default()
        .to_string();
    if cmd == "snapshot" || cmd == "migrate" || rng.below(4) == 0 {
        obj.insert("to".into(), unusable_target(rng, &cmd));
    } else {
        obj.remove("to");
    }
    serde_json::Value::Object(obj).to_string()
}

/// One connection's payload: (bytes, whether to read the replies before closing).
fn random_payload(rng: &mut Rng) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(6) {
        match rng.below(8) {
            // Random bytes, newline-terminated.
            0 => {
                out.extend((0..rng.below(200)).map(|_| rng.next() as u8));
                out.push(b'\n');
            }
            // Printable garbage.
            1 => {
                out.extend(random_string(rng).bytes());
                out.push(b'\n');
            }
            // Over-long, sometimes with a request in its tail (which must not run).
            2 => {
                let n = MAX_LINE + 1 + rng.below(3 * MAX_LINE as u64) as usize;
                out.extend((0..n).map(|_| b'a' + (rng.below(26) as u8)));
                if rng.below(2) == 0 {
                    out.extend_from_slice(br#"{"cmd":"pause"}"#);
                }
                out.push(b'\n');
            }
            // Empty or whitespace lines.
            3 => out.extend_from_slice(if rng.below(2) == 0 {
                b"\n"
            } else {
                b" \t \r\n"
            }),
            // A valid harmless request.
            4 => out.extend_from_slice(b"{\"cmd\":\"info\"}\n"),
            // Random JSON requests.
            _ => {
                out.extend(random_request(rng).bytes());
                out.push(b'\n');
            }
        }
    }
    // Sometimes a partial line at the end (the VMM sees it at end of stream).
    if rng.below(4) == 0 {
        let partial = random_request(rng);
        let cut = rng.below(partial.len() as u64 + 1) as usize;
        out.extend_from_slice(&partial.as_bytes()[..cut]);
    }
    (out, rng.below(8) != 0)
}

/// Replies the VMM owes for `payload`: one per line, the last one even if unterminated.
fn expected_replies(payload: &[u8]) -> usize {
    let segments = payload.split(|&b| b == b'\n').count();
    if payload.last() == Some(&b'\n') || payload.is_empty() {
        segments - 1
    } else {
        segments
    }
}

/// Runs `cases` random connections against `sock`; the first broken promise, if any.
fn fuzz(sock: &std::path::Path, seed: u64, cases: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    for case in 0..cases {
        let (payload, read) = random_payload(&mut rng);
        let shown = || String::from_utf8_lossy(&payload[..payload.len().min(400)]).into_owned();
        let mut c = Conn::open(sock, Duration::from_secs(30));
        // A failed send means the VMM closed the connection: allowed, as long as it lives
        // (checked by the caller).
        if c.send(&payload).is_err() {
            continue;
        }
        c.finish();
        if !read {
            continue;
        }
        let want = expected_replies(&payload);
        let mut got = 0;
        while let Some(line) = c.reply() {
            envelope(&line).map_err(|e| {
                format!(
                    "case {case} (seed {seed:#x}): malformed reply ({e}): {line:?}\npayload: {:?}",
                    shown()
                )
            })?;
            got += 1;
        }
        if got != want {
            return Err(format!(
                "case {case} (seed {seed:#x}): {got} replies for {want} lines\npayload: {:?}",
                shown()
            ));
        }
    }
    Ok(())
}

#[test]
fn control_socket_survives_random_input_and_the_guest_keeps_running() {
    let seed = env_u64("NOVACRON_FUZZ_SEED", 0x5eed_0011);
    let cases = env_u64("NOVACRON_FUZZ_CASES", 2000);
    let dir = Scratch::new("control-fuzz");
    let mut vm = Vmm::boot_guest(&dir, "fuzz", "workload=ab mib=16", "128M");
    vm.wait_for("CHECK PASS", 0, Duration::from_secs(120));
    // One client at a time, then four at once (different seeds).
    if let Err(e) = fuzz(&vm.sock, seed, cases) {
        panic!("{e}\nVMM alive: {}, stderr: {}", vm.alive(), vm.err());
    }
    assert!(vm.alive(), "VMM died: {}", vm.err());
    let clients: Vec<_> = (1..=4u64)
        .map(|i| {
            let sock = vm.sock.clone();
            std::thread::spawn(move || fuzz(&sock, seed.wrapping_add(i), cases / 4))
        })
        .collect();
    for c in clients {
        if let Err(e) = c.join().expect("fuzz client") {
            panic!("{e}\nVMM alive: {}, stderr: {}", vm.alive(), vm.err());
        }
    }
    assert!(vm.alive(), "VMM died: {}", vm.err());
    // Random pauses may have left the guest paused: resume it, then it must run and pass.
    let v = Conn::open(&vm.sock, Duration::from_secs(30)).request(r#"{"cmd":"resume"}"#);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(state(&vm), "running");
    vm.assert_still_passing();
}
