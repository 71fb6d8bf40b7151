//! Shared by the storage scenarios (`mgmt_snapshots`, `mgmt_backup`): reading what the test
//! guest's `counter` workload left on its disk and console, the storage API client, and
//! resuming a restored guest and watching it count on.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use novacron_proto::controller::storage_service_client::StorageServiceClient;
use novacron_testsupport::mgmt::{wait_for, Cluster};
use novacron_testsupport::paths;

/// First word of every record of the guest's `counter` workload ("NCCOUNT1").
const MAGIC: u64 = u64::from_le_bytes(*b"NCCOUNT1");

/// The counter values recorded on a disk image (record `n` in sector `n % sectors`).
pub fn records(path: &Path) -> Vec<u64> {
    let b = std::fs::read(path).unwrap();
    b.chunks_exact(512)
        .filter_map(|s| {
            let w = |i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap());
            (w(0) == MAGIC && w(16) == !w(8)).then(|| w(8))
        })
        .collect()
}

/// The highest counter value recorded on a disk image.
pub fn max_record(path: &Path) -> u64 {
    records(path)
        .into_iter()
        .max()
        .expect("no counter record on the disk")
}

/// The `COUNT n=` values of the whole lines of a console log from byte `from` on (the
/// guest may be in the middle of printing the last one).
pub fn counts(console: &Path, from: usize) -> Vec<u64> {
    let s = std::fs::read(console).unwrap_or_default();
    let text = String::from_utf8_lossy(&s[from.min(s.len())..]).into_owned();
    let whole = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    whole
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COUNT n=")?.parse().ok())
        .collect()
}

/// The last `COUNT n=` value of a console log (0 if none).
pub fn last_count(console: &Path) -> u64 {
    counts(console, 0).last().copied().unwrap_or(0)
}

/// The controller's storage service of `c`.
pub async fn storage(c: &Cluster) -> StorageServiceClient<novacron_testsupport::mgmt::Authed> {
    c.storage().await
}

/// Resumes the paused VMM of `vmdir` (its `api.sock`) and waits until its guest printed
/// more than 100 counts after byte `mark` of `console`; returns those counts.
pub async fn resume_and_count(vmdir: &Path, console: &Path, mark: usize, what: &str) -> Vec<u64> {
    let out = Command::new(paths::vmm())
        .args(["resume", "--api-socket"])
        .arg(vmdir.join("api.sock"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console_path = console.to_path_buf();
    wait_for(what, Duration::from_secs(20), || {
        let console = console_path.clone();
        async move { (counts(&console, mark).len() > 100).then_some(()) }
    })
    .await;
    counts(console, mark)
}
