//! Codec statistics: the shared counters (`novacron_vmm_api::stats`) and the thread CPU
//! clock the encoder and decoder charge their work to.

pub use novacron_vmm_api::stats::{BatchStats, CodecStats, KindCounts, ModeStats};

/// CPU time consumed by the calling thread, in nanoseconds (0 if unavailable).
pub(crate) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`, a valid, exclusively borrowed timespec
    // that outlives the call; CLOCK_THREAD_CPUTIME_ID needs no other resource.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
