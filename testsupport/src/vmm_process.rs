//! A `novacron-vmm` process under test: started with its serial log, API socket and stderr
//! in a scratch directory, driven through its client commands, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::paths::{guest, vmm};
use crate::scratch::Scratch;

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
        Vmm::start_bin(&vmm(), dir, name, args)
    }

    /// As [`Vmm::start`], with another VMM binary (e.g. [`crate::paths::vmm_testhooks`]).
    pub fn start_bin(bin: &std::path::Path, dir: &Scratch, name: &str, args: &[&str]) -> Vmm {
        let serial = dir.path(&format!("{name}.log"));
        let sock = dir.path(&format!("{name}.sock"));
        let stderr = dir.path(&format!("{name}.err"));
        let child = Command::new(bin)
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

    /// Waits up to `timeout` for the process to end and returns how it ended. Panics, with
    /// its stderr, if it is still running at the deadline.
    pub fn wait_status(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return st,
                Ok(None) => {}
                Err(e) => panic!("cannot wait for the VMM: {e}"),
            }
            if Instant::now() > deadline {
                panic!(
                    "VMM still running {timeout:?} after it was expected to end\nstderr: {}\nserial:\n{}",
                    self.err(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its exit code (`None` if a
    /// signal ended it). Panics, with its stderr and serial log, if it is still running at
    /// the deadline: a hung VMM never passes for one that exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.wait_status(timeout).code()
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
