//! Shared by the VMM control-socket tests (`control_fuzz`, `migration_bad_input`,
//! `pause_resume`): one raw connection to a VMM's API socket that sends lines and reads the
//! JSON envelopes back, the `migrate` CLI call, and a seeded generator.

#![allow(dead_code)]

use novacron_testsupport::Vmm;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A connection to a VMM's control socket.
pub struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Conn {
    /// Connects to `sock`; replies must come within `timeout`.
    pub fn open(sock: &Path, timeout: Duration) -> Conn {
        let w = UnixStream::connect(sock).expect("connect to the API socket");
        w.set_read_timeout(Some(timeout)).expect("read timeout");
        let r = BufReader::new(w.try_clone().expect("clone"));
        Conn { w, r }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.write_all(bytes)
    }

    /// Reads one reply line (`None` at end of stream or timeout).
    pub fn reply(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line),
        }
    }

    /// Sends one request line and returns its parsed reply envelope.
    pub fn request(&mut self, line: &str) -> serde_json::Value {
        self.send(format!("{line}\n").as_bytes())
            .expect("send request");
        let reply = self.reply().unwrap_or_else(|| panic!("no reply to {line}"));
        envelope(&reply).unwrap_or_else(|e| panic!("reply to {line}: {e}: {reply}"))
    }

    /// Closes the sending half (the VMM sees the end of the requests).
    pub fn finish(&mut self) {
        let _ = self.w.shutdown(std::net::Shutdown::Write);
    }
}

/// Parses a reply line as the protocol's envelope: `{"ok": bool, ...}`, with `error` a
/// string when not ok.
pub fn envelope(line: &str) -> Result<serde_json::Value, String> {
    if !line.ends_with('\n') {
        return Err("reply line not terminated".into());
    }
    let v: serde_json::Value =
        serde_json::from_str(line.trim_end()).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("ok").and_then(|o| o.as_bool()) {
        Some(true) => Ok(v),
        Some(false) if v.get("error").is_some_and(|e| e.is_string()) => Ok(v),
        _ => Err("not a response envelope".into()),
    }
}

/// The VMM's lifecycle state from `info` on a fresh connection.
pub fn state(vm: &Vmm) -> String {
    let v = Conn::open(&vm.sock, Duration::from_secs(30)).request(r#"{"cmd":"info"}"#);
    v["data"]["state"].as_str().unwrap_or_default().to_string()
}

/// `novacron-vmm migrate --to tcp:127.0.0.1:PORT EXTRA...`: (success, summary, stderr).
pub fn migrate(src: &Vmm, port: u16, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let to = format!("tcp:127.0.0.1:{port}");
    let mut args = vec!["--to", to.as_str()];
    args.extend_from_slice(extra);
    let (ok, out, err) = src.client("migrate", &args);
    let v = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (ok, v, err)
}

/// splitmix64: a seeded generator, so a failing case can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}
