//! What a migration stream moves: numbered fixed-size units (`PAGE_SIZE` bytes) of one or
//! more sources. The source side reads units from a [`UnitSource`] (guest memory today,
//! disks later) and the destination writes them into a [`UnitSink`]; [`UnitSet`] is the set
//! of units a pass sends.

use crate::store::PageStore;
use crate::PAGE_SIZE;

/// Which source a stream's units belong to (carried in every Pages frame).
pub type SourceId = u8;

/// The source id of guest memory.
pub const GUEST_MEMORY: SourceId = 0;

/// Errors of a unit source or sink, with the unit and source they concern.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    /// A unit could not be read.
    #[error("cannot read unit {unit} of source {source_id}: {reason}")]
    Read {
        /// The source.
        source_id: SourceId,
        /// The unit.
        unit: u64,
        /// Why.
        reason: String,
    },
    /// The source's dirty tracking failed.
    #[error("dirty tracking of source {source_id} failed: {reason}")]
    Dirty {
        /// The source.
        source_id: SourceId,
        /// Why.
        reason: String,
    },
}

/// A set of unit numbers `0..len`, one bit each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSet {
    words: Vec<u64>,
    len: u64,
}

impl UnitSet {
    /// An empty set of `len` units.
    pub fn new(len: u64) -> Self {
        UnitSet {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// Number of units the set can hold.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if the set can hold no unit.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Units in the set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Adds unit `n` (ignored if out of range).
    pub fn set(&mut self, n: u64) {
        if n < self.len {
            self.words[(n / 64) as usize] |= 1 << (n % 64);
        }
    }

    /// True if unit `n` is in the set.
    pub fn get(&self, n: u64) -> bool {
        n < self.len && self.words[(n / 64) as usize] & (1 << (n % 64)) != 0
    }

    /// Adds units `from..to` (clipped to the set's length).
    pub fn fill_range(&mut self, from: u64, to: u64) {
        let to = to.min(self.len);
        let mut n = from;
        while n < to {
            let (w, bit) = ((n / 64) as usize, n % 64);
            let span = (64 - bit).min(to - n);
            let bits = if span == 64 {
                u64::MAX
            } else {
                ((1u64 << span) - 1) << bit
            };
            self.words[w] |= bits;
            n += span;
        }
    }

    /// Empties the set.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// The units in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some(i as u64 * 64 + u64::from(bit))
            })
        })
    }

    /// The bitmap words (unit `n` is bit `n % 64` of word `n / 64`).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The bitmap words, for filling from a dirty log.
    pub fn words_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }
}

/// Where the source side reads units from. Calls are batch-sized or per unit without
/// allocation; the engine dispatches statically.
pub trait UnitSource {
    /// This source's id on the stream.
    fn id(&self) -> SourceId;
    /// Number of units (`0..count`).
    fn count(&self) -> u64;
    /// Puts into `set` the units that hold data now (the first pass sends them).
    fn populated(&mut self, set: &mut UnitSet) -> Result<(), UnitError>;
    /// Starts tracking writes: from now on [`UnitSource::dirty`] reports them.
    fn track(&mut self) -> Result<(), UnitError>;
    /// Adds to `set` the units written since the last call (or since tracking started).
    /// `final_pass` is true once the source is quiesced.
    fn dirty(&mut self, set: &mut UnitSet, final_pass: bool) -> Result<(), UnitError>;
    /// Called before units of bitmap words `word..` of `words` (the pass's set, as
    /// [`UnitSet::words`]) are read in a dirty pass (e.g. to re-arm write protection);
    /// returns the first word not yet prepared.
    fn prepare(&mut self, words: &[u64], word: usize) -> Result<usize, UnitError>;
    /// Copies unit `n` into `buf`.
    fn read(&self, n: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), UnitError>;
    /// Puts into `set` every unit that exists (can be read), holes between memory regions
    /// or disks left out; sampled verification draws from these. Default: all of
    /// `0..count`.
    fn addressable(&self, set: &mut UnitSet) {
        set.fill_range(0, self.count());
    }
}

/// Where the destination writes units: a [`PageStore`] the decoder applies batches to, that
/// can also list the units holding data (for verification).
pub trait UnitSink: PageStore {
    /// This sink's source id on the stream.
    fn id(&self) -> SourceId;
    /// Number of units (`0..count`).
    fn count(&self) -> u64;
    /// Puts into `set` every unit that may hold non-zero data.
    fn populated(&self, set: &mut UnitSet);
    /// crc32 of unit `n`, or `None` if it cannot be read.
    fn checksum(&self, n: u64, buf: &mut [u8; PAGE_SIZE]) -> Option<u32> {
        self.read_page(n, buf).then(|| crc32fast::hash(buf))
    }
    /// Puts into `set` every unit that exists (can be read and written); the same set as
    /// the source's [`UnitSource::addressable`] for a compatible machine. Default: all of
    /// `0..count`.
    fn addressable(&self, set: &mut UnitSet) {
        set.fill_range(0, self.count());
    }
    /// A precopy round ended (a disk starts writing back what it received).
    fn round_end(&mut self) {}
    /// Called before the destination starts the guest: makes what was received durable
    /// (a disk's fdatasync); the reason if it cannot.
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Units held in memory: a source and a sink for tests and tools. Every unit written since
/// the last [`UnitSource::dirty`] call is dirty.
#[derive(Clone, Debug)]
pub struct MemoryUnits {
    id: SourceId,
    units: Vec<[u8; PAGE_SIZE]>,
    written: UnitSet,
}

impl MemoryUnits {
    /// `count` zeroed units of source `id`.
    pub fn new(id: SourceId, count: u64) -> Self {
        MemoryUnits {
            id,
            units: vec![[0u8; PAGE_SIZE]; count as usize],
            written: UnitSet::new(count),
        }
    }

    /// The units.
    pub fn units(&self) -> &[[u8; PAGE_SIZE]] {
        &self.units
    }

    /// Overwrites unit `n` (as a guest would) and marks it dirty; ignored out of range.
    pub fn store(&mut self, n: u64, data: &[u8; PAGE_SIZE]) {
        if let Some(u) = self.units.get_mut(n as usize) {
            u.copy_from_slice(data);
            self.written.set(n);
        }
    }
}

impl UnitSource for MemoryUnits {
    fn id(&self) -> SourceId {
        self.id
    }

    fn count(&self) -> u64 {
        self.units.len() as u64
    }

    fn populated(&mut self, set: &mut UnitSet) -> Result<(), UnitError> {
        for (i, u) in self.units.iter().enumerate() {
            if !crate::is_zero_page(u) {
                set.set(i as u64);
            }
        }
        Ok(())
    }

    fn track(&mut self) -> Result<(), UnitError> {
        self.written.clear();
        Ok(())
    }

    fn dirty(&mut self, set: &mut UnitSet, _final_pass: bool) -> Result<(), UnitError> {
        for (o, w) in set.words.iter_mut().zip(self.written.words.iter()) {
            *o |= w;
        }
        self.written.clear();
        Ok(())
    }

    fn prepare(&mut self, words: &[u64], _word: usize) -> Result<usize, UnitError> {
        Ok(words.len())
    }

    fn read(&self, n: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), UnitError> {
        let u = self.units.get(n as usize).ok_or_else(|| UnitError::Read {
            source_id: self.id,
            unit: n,
            reason: format!("out of range (0..{})", self.units.len()),
        })?;
        buf.copy_from_slice(u);
        Ok(())
    }
}

impl PageStore for MemoryUnits {
    fn contains(&self, index: u64) -> bool {
        PageStore::contains(&self.units, index)
    }

    fn read_page(&self, index: u64, buf: &mut [u8; PAGE_SIZE]) -> bool {
        self.units.read_page(index, buf)
    }

    fn write_page(&mut self, index: u64, data: &[u8; PAGE_SIZE]) -> bool {
        self.units.write_page(index, data)
    }
}

impl UnitSink for MemoryUnits {
    fn id(&self) -> SourceId {
        self.id
    }

    fn count(&self) -> u64 {
        self.units.len() as u64
    }

    fn populated(&self, set: &mut UnitSet) {
        for (i, u) in self.units.iter().enumerate() {
            if !crate::is_zero_page(u) {
                set.set(i as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_set_operations() {
        let mut s = UnitSet::new(130);
        assert_eq!(s.words().len(), 3);
        for n in [0, 63, 64, 129, 130, 5000] {
            s.set(n);
        }
        assert_eq!(s.count(), 4);
        assert!(s.get(129) && !s.get(130) && !s.get(1));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 63, 64, 129]);
        s.clear();
        assert_eq!(s.count(), 0);
        s.fill_range(3, 70);
        s.fill_range(128, 500);
        let want: Vec<u64> = (3..70).chain(128..130).collect();
        assert_eq!(s.iter().collect::<Vec<_>>(), want);
        s.clear();
        s.fill_range(0, 128);
        assert_eq!(s.count(), 128);
    }

    #[test]
    fn memory_units_track_writes() {
        let mut m = MemoryUnits::new(GUEST_MEMORY, 8);
        m.store(3, &[1u8; PAGE_SIZE]);
        let mut s = UnitSet::new(8);
        UnitSource::populated(&mut m, &mut s).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3]);
        m.track().unwrap();
        m.store(5, &[2u8; PAGE_SIZE]);
        s.clear();
        m.dirty(&mut s, false).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![5]);
        let mut buf = [0u8; PAGE_SIZE];
        m.read(5, &mut buf).unwrap();
        assert_eq!(buf, [2u8; PAGE_SIZE]);
        assert!(m.read(8, &mut buf).is_err());
    }
}
