//! Shared helpers for integration tests: locating the built binaries and the test guest,
//! spawning VMMs that are killed on drop, and reading their serial logs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Directory holding the workspace binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// Path of a workspace binary, built by the README's test command before `cargo test`.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first (the README test command does)",
        p.display()
    );
    p
}

/// The novacron-vmm binary.
pub fn vmm() -> PathBuf {
    bin("novacron-vmm")
}

/// The test guest ELF.
pub fn guest() -> PathBuf {
    PathBuf::from(novacron_images::TESTGUEST_ELF)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates one named after `tag`.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("novacron-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }

    /// A path inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running VMM process, killed on drop.
pub struct Vmm {
    /// The process.
    pub child: Child,
    /// Its serial log.
    pub serial: PathBuf,
    /// Its API socket.
    pub sock: PathBuf,
    /// Its stderr file.
    pub stderr: PathBuf,
}

impl Vmm {
    /// Starts `novacron-vmm run` with `args`, serial to `dir/<name>.log`, API socket
    /// `dir/<name>.sock`.
    pub fn start(dir: &Scratch, name: &str, args: &[&str]) -> Vmm {
        let serial = dir.path(&format!("{name}.log"));
        let sock = dir.path(&format!("{name}.sock"));
        let stderr = dir.path(&format!("{name}.err"));
        let child = Command::new(vmm())
            .arg("run")
            .args(args)
            .arg("--serial")
            .arg(format!("file:{}", serial.display()))
            .arg("--api-socket")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn novacron-vmm");
        Vmm {
            child,
            serial,
            sock,
            stderr,
        }
    }

    /// Boots the test guest with `cmdline` and `memory`.
    pub fn boot_guest(dir: &Scratch, name: &str, cmdline: &str, memory: &str) -> Vmm {
        let g = guest();
        Vmm::start(
            dir,
            name,
            &[
                "--kernel",
                g.to_str().expect("utf8 path"),
                "--cmdline",
                cmdline,
                "--memory",
                memory,
            ],
        )
    }

    /// The serial log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// What the VMM wrote on stderr.
    pub fn err(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the serial log contains `needle` (after byte offset `from`); returns the
    /// log. Panics with the log on timeout or if the VMM exits first.
    pub fn wait_for(&mut self, needle: &str, from: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            // The serial port delivers a byte at a time: wait for the whole line.
            if log
                .get(from..)
                .and_then(|t| t.find(needle).map(|at| &t[at..]))
                .is_some_and(|rest| rest.contains('\n'))
            {
                return log;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "VMM exited ({st}) before '{needle}'\nstderr: {}\nserial:\n{log}",
                    self.err()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for '{needle}'\nstderr: {}\nserial:\n{log}",
                    self.err()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the guest is running and passes its self-check again from here on (after a
    /// failed migration, say).
    pub fn assert_still_passing(&mut self) {
        assert!(self.alive(), "VMM exited: {}", self.err());
        let len = self.log().len();
        let log = self.wait_for("CHECK PASS", len, Duration::from_secs(120));
        assert!(!log.contains("CHECK FAIL"), "{log}");
    }

    /// Runs `novacron-vmm <cmd> --api-socket SOCK`, returning (success, stdout, stderr).
    pub fn client(&self, cmd: &str, extra: &[&str]) -> (bool, String, String) {
        let out = Command::new(vmm())
            .arg(cmd)
            .arg("--api-socket")
            .arg(&self.sock)
            .args(extra)
            .output()
            .expect("run novacron-vmm client");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// All values of `key=<n>` in the log's lines starting with `prefix`.
pub fn field_values(log: &str, prefix: &str, key: &str) -> Vec<u64> {
    let pat = format!("{key}=");
    log.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(pat.as_str()))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

/// The highest tick count reported so far.
pub fn last_ticks(log: &str) -> u64 {
    field_values(log, "PROGRESS", "ticks")
        .into_iter()
        .max()
        .unwrap_or(0)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A source VMM booted with the test guest running `cmdline` in `memory` (past its first
/// self-check) and a destination VMM of `dst_memory` listening on a free port: (source,
/// destination, port).
pub fn migration_pair(
    dir: &Scratch,
    cmdline: &str,
    memory: &str,
    dst_memory: &str,
) -> (Vmm, Vmm, u16) {
    let mut src = Vmm::boot_guest(dir, "src", cmdline, memory);
    src.wait_for("CHECK PASS", 0, Duration::from_secs(120));
    let port = free_port();
    let dst = incoming(dir, "dst", port, dst_memory);
    (src, dst, port)
}

/// Starts a destination VMM with `--incoming tcp:127.0.0.1:PORT` and waits until it listens
/// (so a relay in front of it can connect).
pub fn incoming(dir: &Scratch, name: &str, port: u16, memory: &str) -> Vmm {
    let addr = format!("tcp:127.0.0.1:{port}");
    let mut v = Vmm::start(
        dir,
        name,
        &["--incoming", addr.as_str(), "--memory", memory],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !v.err().contains("waiting for incoming migration") {
        assert!(v.alive(), "destination exited: {}", v.err());
        assert!(Instant::now() < deadline, "destination never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    v
}
