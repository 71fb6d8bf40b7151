//! The event log: every state change the controller makes becomes an [`pb::Event`] with a
//! sequence number, persisted in the store (the last [`KEEP_EVENTS`]) and broadcast to live
//! watchers. A watch replays stored events after a sequence number and then follows the live
//! feed without gaps or duplicates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use novacron_proto::controller as pb;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::store::{Op, Store, StoreError};
use crate::util::now_ms;

/// Events kept in the store.
pub const KEEP_EVENTS: u64 = 10_000;

/// Errors of the event log.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Reading the stored backlog failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The watcher fell too far behind the live feed.
    #[error("event watcher lagged by {0} events; watch again with since_seq")]
    Lagged(u64),
}

/// Publishes events to the store and to subscribers.
#[derive(Debug)]
pub struct EventBus {
    store: Arc<Store>,
    seq: AtomicU64,
    // Serialises append + broadcast so subscribers see sequence order.
    order: Mutex<()>,
    tx: broadcast::Sender<pb::Event>,
    // The project of each VM, learnt from the VMs stored with events, so that every event
    // about a VM carries its project (a watch shows callers only their projects' events).
    projects: Mutex<HashMap<String, String>>,
}

/// Filters of a watch.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// VM name or id (empty: all).
    pub vm: String,
    /// Host name (empty: all).
    pub host: String,
}

impl EventFilter {
    /// Whether `ev` passes.
    pub fn matches(&self, ev: &pb::Event) -> bool {
        (self.vm.is_empty() || self.vm == ev.vm || self.vm == ev.vm_id)
            && (self.host.is_empty() || self.host == ev.host)
    }
}

impl EventBus {
    /// A bus continuing after `last_seq`.
    pub fn new(store: Arc<Store>, last_seq: u64) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            store,
            seq: AtomicU64::new(last_seq),
            order: Mutex::new(()),
            tx,
            projects: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers the project of a VM (its events carry it).
    pub fn learn_project(&self, vm_id: &str, project: &str) {
        self.projects
            .lock()
            .insert(vm_id.to_string(), project.to_string());
    }

    /// Records and broadcasts an event. A store failure is logged, not returned: events
    /// describe changes already made.
    pub fn emit(
        &self,
        kind: &str,
        vm: Option<(&str, &str)>,
        host: &str,
        message: impl Into<String>,
    ) -> pb::Event {
        let message = message.into();
        match self.emit_with(&[], kind, vm, host, message.clone()) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("{kind} event not persisted: {e}");
                pb::Event {
                    seq: self.last_seq(),
                    kind: kind.to_string(),
                    host: host.to_string(),
                    message,
                    ..Default::default()
                }
            }
        }
    }

    /// Applies `ops` and records the event in one store transaction, then broadcasts it.
    /// On a store failure nothing is applied and the error is returned (an event without
    /// state changes is still broadcast).
    pub fn emit_with(
        &self,
        ops: &[Op<'_>],
        kind: &str,
        vm: Option<(&str, &str)>,
        host: &str,
        message: impl Into<String>,
    ) -> Result<pb::Event, StoreError> {
        let guard = self.order.lock();
        let seq = self.seq.load(Ordering::SeqCst) + 1;
        let (name, id) = vm.unwrap_or(("", ""));
        for op in ops {
            if let Op::PutVm(v) = op {
                self.learn_project(&v.id, crate::iam::project_of(v));
            }
        }
        let project = if id.is_empty() {
            String::new()
        } else {
            let mut m = self.projects.lock();
            let p = m.get(id).cloned().unwrap_or_default();
            if kind == "VmDeleted" {
                m.remove(id);
            }
            p
        };
        let ev = pb::Event {
            project,
            seq,
            time_ms: now_ms(),
            kind: kind.to_string(),
            vm: name.to_string(),
            vm_id: id.to_string(),
            host: host.to_string(),
            message: message.into(),
        };
        if let Err(e) = self.store.apply_with_event(ops, Some(&ev), KEEP_EVENTS) {
            if ops.is_empty() {
                // Keep the sequence moving: the event is still broadcast.
                self.seq.store(seq, Ordering::SeqCst);
                let _ = self.tx.send(ev.clone());
            }
            return Err(e);
        }
        self.seq.store(seq, Ordering::SeqCst);
        tracing::info!(kind, vm = name, host, "{}", ev.message);
        let _ = self.tx.send(ev.clone());
        drop(guard);
        Ok(ev)
    }

    /// The last sequence number used.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Subscribes: returns stored events after `since` (when `replay`) and a receiver for the
    /// live events that follow them.
    pub fn watch(
        &self,
        since: u64,
        replay: bool,
    ) -> Result<(Vec<pb::Event>, broadcast::Receiver<pb::Event>), EventError> {
        // Subscribe under the order lock so nothing falls between backlog and live feed.
        let guard = self.order.lock();
        let rx = self.tx.subscribe();
        let backlog = if replay || since > 0 {
            self.store.events_after(since, KEEP_EVENTS as usize)?
        } else {
            Vec::new()
        };
        drop(guard);
        Ok((backlog, rx))
    }
}
