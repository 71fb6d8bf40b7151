//! The controller's durable state: an embedded, crash-safe redb database in
//! `<data-dir>/controller.redb`. Every change is one ACID transaction, committed with fsync
//! before the API answers, so a controller killed at any point restarts with every
//! acknowledged change.
//!
//! Tables hold protobuf-encoded records: `vms` (id -> `Vm`), `hosts` (name -> `Host`),
//! `events` (sequence -> `Event`), `requests` (client request id -> the first answer, for
//! idempotent retries) and `storage` (the storage objects of `crate::storage`: key ->
//! encoded record, keys prefixed by kind), `iam` (users, projects, members and API tokens of
//! `crate::iam`: key -> encoded record, keys prefixed by kind) and `audit` (sequence -> an
//! `AuditRecord`, appended by every mutating call).

use std::path::Path;

use novacron_proto::controller as pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
const STORAGE: TableDefinition<&str, &[u8]> = TableDefinition::new("storage");
const IAM: TableDefinition<&str, &[u8]> = TableDefinition::new("iam");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be read or written.
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    /// A record could not be decoded (corrupt or from an incompatible version).
    #[error("store: undecodable record in {table}: {source}")]
    Decode {
        /// Table name.
        table: &'static str,
        /// Decoder error.
        source: prost::DecodeError,
    },
    /// The data directory could not be created.
    #[error("store: cannot create {path}: {source}")]
    Dir {
        /// Directory.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
}

macro_rules! db {
    ($e:expr) => {
        $e.map_err(|e| StoreError::Db(e.into()))
    };
}

/// A stored idempotency record: which call made it and its encoded answer.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRequest {
    /// Method name, e.g. "CreateVm".
    pub method: String,
    /// The VM or host the call was about.
    pub target: String,
    /// Encoded response message.
    pub response: Vec<u8>,
    /// When it was recorded (ms since the epoch).
    pub at_ms: i64,
}

impl StoredRequest {
    fn encode(&self) -> Vec<u8> {
        // method \0 target \0 at_ms(8 bytes LE) response
        let mut v =
            Vec::with_capacity(self.method.len() + self.target.len() + 10 + self.response.len());
        v.extend_from_slice(self.method.as_bytes());
        v.push(0);
        v.extend_from_slice(self.target.as_bytes());
        v.push(0);
        v.extend_from_slice(&self.at_ms.to_le_bytes());
        v.extend_from_slice(&self.response);
        v
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let m = b.iter().position(|&c| c == 0)?;
        let rest = &b[m + 1..];
        let t = rest.iter().position(|&c| c == 0)?;
        let tail = &rest[t + 1..];
        if tail.len() < 8 {
            return None;
        }
        let mut at = [0u8; 8];
        at.copy_from_slice(&tail[..8]);
        Some(StoredRequest {
            method: String::from_utf8_lossy(&b[..m]).into_owned(),
            target: String::from_utf8_lossy(&rest[..t]).into_owned(),
            at_ms: i64::from_le_bytes(at),
            response: tail[8..].to_vec(),
        })
    }
}

/// One change inside a transaction.
#[derive(Debug, Clone)]
pub enum Op<'a> {
    /// Insert or replace a VM.
    PutVm(&'a pb::Vm),
    /// Remove a VM by id.
    DeleteVm(&'a str),
    /// Insert or replace a host.
    PutHost(&'a pb::Host),
    /// Record a request's answer.
    PutRequest(&'a str, StoredRequest),
    /// Insert or replace a storage record (key, encoded record).
    PutRecord(&'a str, Vec<u8>),
    /// Remove a storage record.
    DeleteRecord(&'a str),
    /// Insert or replace an identity record (key, encoded record).
    PutIam(&'a str, Vec<u8>),
    /// Remove an identity record.
    DeleteIam(&'a str),
}

/// Everything loaded at startup.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// All VMs.
    pub vms: Vec<pb::Vm>,
    /// All hosts.
    pub hosts: Vec<pb::Host>,
    /// Highest event sequence number used.
    pub last_event_seq: u64,
}

/// One row of [`Store::dump_except_audit`]: table name, key bytes, value bytes.
pub type DumpRow = (&'static str, Vec<u8>, Vec<u8>);

/// The embedded database. Cheap to share behind an `Arc`; redb serialises writers.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) `<dir>/controller.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let db = db!(Database::create(dir.join("controller.redb")))?;
        let store = Store { db };
        // Create the tables so readers never see "table does not exist".
        let txn = db!(store.db.begin_write())?;
        {
            db!(txn.open_table(VMS))?;
            db!(txn.open_table(HOSTS))?;
            db!(txn.open_table(EVENTS))?;
            db!(txn.open_table(REQUESTS))?;
            db!(txn.open_table(STORAGE))?;
            db!(txn.open_table(IAM))?;
            db!(txn.open_table(AUDIT))?;
        }
        db!(txn.commit())?;
        Ok(store)
    }

    /// Reads every VM and host.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = db!(self.db.begin_read())?;
        let mut snap = Snapshot::default();
        let vms = db!(txn.open_table(VMS))?;
        for row in db!(vms.iter())? {
            let (_, v) = db!(row)?;
            snap.vms.push(
                pb::Vm::decode(v.value()).map_err(|source| StoreError::Decode {
                    table: "vms",
                    source,
                })?,
            );
        }
        let hosts = db!(txn.open_table(HOSTS))?;
        for row in db!(hosts.iter())? {
            let (_, v) = db!(row)?;
            snap.hosts.push(
                pb::Host::decode(v.value()).map_err(|source| StoreError::Decode {
                    table: "hosts",
                    source,
                })?,
            );
        }
        let events = db!(txn.open_table(EVENTS))?;
        if let Some(last) = db!(events.last())? {
            snap.last_event_seq = last.0.value();
        }
        Ok(snap)
    }

    /// Applies `ops` in one durable transaction.
    pub fn apply(&self, ops: &[Op<'_>]) -> Result<(), StoreError> {
        self.apply_with_event(ops, None, 0)
    }

    /// Applies `ops` and appends `event` (trimming the log to `keep`) in one durable
    /// transaction: a state change and the event describing it are stored together.
    pub fn apply_with_event(
        &self,
        ops: &[Op<'_>],
        event: Option<&pb::Event>,
        keep: u64,
    ) -> Result<(), StoreError> {
        let txn = db!(self.db.begin_write())?;
        {
            let mut vms = db!(txn.open_table(VMS))?;
            let mut hosts = db!(txn.open_table(HOSTS))?;
            let mut reqs = db!(txn.open_table(REQUESTS))?;
            let mut recs = db!(txn.open_table(STORAGE))?;
            let mut iam = db!(txn.open_table(IAM))?;
            for op in ops {
                match op {
                    Op::PutVm(vm) => {
                        db!(vms.insert(vm.id.as_str(), vm.encode_to_vec().as_slice()))?;
                    }
                    Op::DeleteVm(id) => {
                        db!(vms.remove(*id))?;
                    }
                    Op::PutHost(h) => {
                        db!(hosts.insert(h.name.as_str(), h.encode_to_vec().as_slice()))?;
                    }
                    Op::PutRequest(id, r) => {
                        db!(reqs.insert(*id, r.encode().as_slice()))?;
                    }
                    Op::PutRecord(key, b) => {
                        db!(recs.insert(*key, b.as_slice()))?;
                    }
                    Op::DeleteRecord(key) => {
                        db!(recs.remove(*key))?;
                    }
                    Op::PutIam(key, b) => {
                        db!(iam.insert(*key, b.as_slice()))?;
                    }
                    Op::DeleteIam(key) => {
                        db!(iam.remove(*key))?;
                    }
                }
            }
            if let Some(ev) = event {
                let mut t = db!(txn.open_table(EVENTS))?;
                db!(t.insert(ev.seq, ev.encode_to_vec().as_slice()))?;
                if ev.seq > keep && ev.seq.is_multiple_of(256) {
                    let cutoff = ev.seq - keep;
                    db!(t.retain_in(..cutoff, |_, _| false))?;
                }
            }
        }
        db!(txn.commit())?;
        Ok(())
    }

    /// The stored answer of a request id, if any.
    pub fn get_request(&self, id: &str) -> Result<Option<StoredRequest>, StoreError> {
        let txn = db!(self.db.begin_read())?;
        let t = db!(txn.open_table(REQUESTS))?;
        Ok(db!(t.get(id))?.and_then(|v| StoredRequest::decode(v.value())))
    }

    /// The records of a keyed table whose key starts with `prefix`, in key order.
    fn prefixed(
        &self,
        table: TableDefinition<&str, &[u8]>,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = db!(self.db.begin_read())?;
        let t = db!(txn.open_table(table))?;
        let mut out = Vec::new();
        for row in db!(t.range(prefix..))? {
            let (k, v) = db!(row)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// One record of a keyed table.
    fn keyed(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = db!(self.db.begin_read())?;
        let t = db!(txn.open_table(table))?;
        Ok(db!(t.get(key))?.map(|v| v.value().to_vec()))
    }

    /// The storage records whose key starts with `prefix`, in key order.
    pub fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.prefixed(STORAGE, prefix)
    }

    /// One storage record.
    pub fn record(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.keyed(STORAGE, key)
    }

    /// The identity records whose key starts with `prefix`, in key order.
    pub fn iam_records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.prefixed(IAM, prefix)
    }

    /// One identity record.
    pub fn iam_record(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.keyed(IAM, key)
    }

    /// Appends an audit record under the next sequence number (set in the record), trimming
    /// the log to the last `keep`; returns the sequence number. One durable transaction.
    pub fn append_audit(
        &self,
        rec: &mut novacron_proto::controller::AuditRecord,
        keep: u64,
    ) -> Result<u64, StoreError> {
        let txn = db!(self.db.begin_write())?;
        let seq;
        {
            let mut t = db!(txn.open_table(AUDIT))?;
            seq = db!(t.last())?.map(|(k, _)| k.value()).unwrap_or(0) + 1;
            rec.seq = seq;
            db!(t.insert(seq, rec.encode_to_vec().as_slice()))?;
            if seq > keep && seq.is_multiple_of(256) {
                let cutoff = seq - keep;
                db!(t.retain_in(..cutoff, |_, _| false))?;
            }
        }
        db!(txn.commit())?;
        Ok(seq)
    }

    /// The audit records, oldest first, that `keep` accepts.
    pub fn audit(
        &self,
        mut keep: impl FnMut(&novacron_proto::controller::AuditRecord) -> bool,
    ) -> Result<Vec<novacron_proto::controller::AuditRecord>, StoreError> {
        let txn = db!(self.db.begin_read())?;
        let t = db!(txn.open_table(AUDIT))?;
        let mut out = Vec::new();
        for row in db!(t.iter())? {
            let (_, v) = db!(row)?;
            let r =
                novacron_proto::controller::AuditRecord::decode(v.value()).map_err(|source| {
                    StoreError::Decode {
                        table: "audit",
                        source,
                    }
                })?;
            if keep(&r) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Every table but `audit`, row by row (table name, key bytes, value bytes): what a
    /// refused call must leave unchanged, for tests.
    pub fn dump_except_audit(&self) -> Result<Vec<DumpRow>, StoreError> {
        let txn = db!(self.db.begin_read())?;
        let mut out = Vec::new();
        for (name, def) in [
            ("vms", VMS),
            ("hosts", HOSTS),
            ("requests", REQUESTS),
            ("storage", STORAGE),
            ("iam", IAM),
        ] {
            let t = db!(txn.open_table(def))?;
            for row in db!(t.iter())? {
                let (k, v) = db!(row)?;
                out.push((name, k.value().as_bytes().to_vec(), v.value().to_vec()));
            }
        }
        let t = db!(txn.open_table(EVENTS))?;
        for row in db!(t.iter())? {
            let (k, v) = db!(row)?;
            out.push((
                "events",
                k.value().to_le_bytes().to_vec(),
                v.value().to_vec(),
            ));
        }
        Ok(out)
    }

    /// Forgets request ids recorded before `cutoff_ms`. Returns how many went.
    pub fn expire_requests(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let txn = db!(self.db.begin_write())?;
        let mut n = 0;
        {
            let mut t = db!(txn.open_table(REQUESTS))?;
            db!(t.retain(|_, v| {
                let keep = StoredRequest::decode(v)
                    .map(|r| r.at_ms >= cutoff_ms)
                    .unwrap_or(false);
                if !keep {
                    n += 1;
                }
                keep
            }))?;
        }
        db!(txn.commit())?;
        Ok(n)
    }

    /// Appends an event (its `seq` must be set and increasing) and trims the log to `keep`.
    pub fn append_event(&self, ev: &pb::Event, keep: u64) -> Result<(), StoreError> {
        self.apply_with_event(&[], Some(ev), keep)
    }

    /// Up to `limit` stored events with a sequence number above `after`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<pb::Event>, StoreError> {
        let txn = db!(self.db.begin_read())?;
        let t = db!(txn.open_table(EVENTS))?;
        let mut out = Vec::new();
        for row in db!(t.range(after.saturating_add(1)..))? {
            let (_, v) = db!(row)?;
            out.push(
                pb::Event::decode(v.value()).map_err(|source| StoreError::Decode {
                    table: "events",
                    source,
                })?,
            );
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Number of stored events.
    pub fn event_count(&self) -> Result<u64, StoreError> {
        let txn = db!(self.db.begin_read())?;
        let t = db!(txn.open_table(EVENTS))?;
        db!(t.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("novacron-store-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn roundtrip_and_reopen() {
        let dir = tmpdir("rt");
        {
            let s = Store::open(&dir).unwrap();
            let vm = pb::Vm {
                id: "id1".into(),
                name: "web".into(),
                ..Default::default()
            };
            let host = pb::Host {
                name: "h1".into(),
                cordoned: true,
                ..Default::default()
            };
            let req = StoredRequest {
                method: "CreateVm".into(),
                target: "id1".into(),
                response: vec![1, 2, 0, 3],
                at_ms: 5,
            };
            s.apply(&[
                Op::PutVm(&vm),
                Op::PutHost(&host),
                Op::PutRequest("r1", req.clone()),
            ])
            .unwrap();
            for seq in 1..=3 {
                s.append_event(
                    &pb::Event {
                        seq,
                        kind: "X".into(),
                        ..Default::default()
                    },
                    100,
                )
                .unwrap();
            }
            assert_eq!(s.get_request("r1").unwrap(), Some(req));
        }
        let s = Store::open(&dir).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.vms.len(), 1);
        assert_eq!(snap.vms[0].name, "web");
        assert!(snap.hosts[0].cordoned);
        assert_eq!(snap.last_event_seq, 3);
        assert_eq!(
            s.events_after(1, 10)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        s.apply(&[Op::DeleteVm("id1")]).unwrap();
        assert!(s.load().unwrap().vms.is_empty());
        assert_eq!(s.expire_requests(10).unwrap(), 1);
        assert_eq!(s.get_request("r1").unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn event_log_is_trimmed() {
        let dir = tmpdir("trim");
        let s = Store::open(&dir).unwrap();
        for seq in 1..=600 {
            s.append_event(
                &pb::Event {
                    seq,
                    ..Default::default()
                },
                100,
            )
            .unwrap();
        }
        // Trimmed at seq 512 to the last 100: 412..=600 remain, in order.
        assert_eq!(s.event_count().unwrap(), 600 - (512 - 100) + 1);
        let seqs: Vec<u64> = s
            .events_after(0, 1000)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (512 - 100..=600).collect::<Vec<u64>>());
        let _ = std::fs::remove_dir_all(dir);
    }
}
