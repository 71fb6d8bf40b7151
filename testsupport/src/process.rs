//! Child processes tied to a test's lifetime: killed and reaped on drop.

use std::process::Child;

/// A child process, killed and reaped when dropped (also when the test panics).
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
