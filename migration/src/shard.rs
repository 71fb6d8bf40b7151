//! Sharding the page space over encoder threads: granules of contiguous pages, round-robin.

use serde::{Deserialize, Serialize};

/// Contiguous pages per shard granule: [`shard_of`] keeps runs of this many pages on one
/// shard so that batches keep the locality that helps compression.
pub const SHARD_GRANULE_PAGES: u64 = 64;

/// The shard (0..shards) that owns `page_index` when encoding with `shards` threads.
pub fn shard_of(page_index: u64, shards: u32) -> u32 {
    if shards <= 1 {
        0
    } else {
        ((page_index / SHARD_GRANULE_PAGES) % u64::from(shards)) as u32
    }
}

/// Which slice of the page space an encoder owns (see [`shard_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    /// This shard, `0..count`.
    pub index: u32,
    /// Number of shards (≥ 1).
    pub count: u32,
}

impl ShardSpec {
    /// The unsharded configuration: one encoder owns all pages.
    pub const SINGLE: ShardSpec = ShardSpec { index: 0, count: 1 };

    /// True if this shard owns `page_index`.
    pub fn owns(&self, page_index: u64) -> bool {
        shard_of(page_index, self.count) == self.index
    }
}

impl Default for ShardSpec {
    fn default() -> Self {
        ShardSpec::SINGLE
    }
}
