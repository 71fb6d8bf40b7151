//! The `novacron-wanrelay` binary run as a child of a test or benchmark: started in front
//! of a target, its listening address read from its first line, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// A running relay; killed (by its own pid) when dropped.
pub struct RelayProcess {
    /// The process.
    pub child: Child,
    /// Its stdin: the relay exits when this is dropped.
    pub stdin: Option<ChildStdin>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RelayProcess {
    /// Starts `bin_dir/novacron-wanrelay` relaying to `to` with extra flags `extra`, and
    /// waits for its `LISTENING <addr>` line. Errors say what went wrong (for benchmarks
    /// that report instead of panicking).
    pub fn try_start(bin_dir: &Path, to: SocketAddr, extra: &[&str]) -> Result<Self, String> {
        let exe = bin_dir.join("novacron-wanrelay");
        let mut child = Command::new(&exe)
            .args(["--listen", "127.0.0.1:0", "--to", &to.to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .ok_or_else(|| "relay stdout not piped".to_string())
            .and_then(|out| {
                BufReader::new(out)
                    .read_line(&mut line)
                    .map_err(|e| format!("reading the relay's first line: {e}"))
            });
        let addr = read.and_then(|_| {
            line.trim()
                .strip_prefix("LISTENING ")
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("relay's first line is {line:?}, not LISTENING <addr>"))
        });
        match addr {
            Ok(addr) => {
                let stdin = child.stdin.take();
                Ok(RelayProcess { child, stdin, addr })
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// [`RelayProcess::try_start`] with the binary of this build (`target/<profile>`),
    /// panicking on failure.
    pub fn start(to: SocketAddr, extra: &[&str]) -> Self {
        Self::try_start(&crate::paths::bin_dir(), to, extra)
            .unwrap_or_else(|e| panic!("novacron-wanrelay: {e}"))
    }

    /// Starts one in front of 127.0.0.1:`port`.
    pub fn to_local_port(port: u16, extra: &[&str]) -> Self {
        Self::start(SocketAddr::from(([127, 0, 0, 1], port)), extra)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
