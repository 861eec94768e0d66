//! How the core reads and writes durable state without doing I/O.
//!
//! Reads go through [`Reads`], a small trait the node implements with its sled [`Store`] and
//! module store, and the simulator with its own. Writes are outputs ([`Write`]) that the
//! runtime applies in order after the step; until then they sit in an [`Overlay`], so a step
//! that writes a record and reads it back (a replicated batch touching one task twice, a
//! merge followed by a snapshot) sees its own writes.

use std::collections::HashMap;
use std::sync::Arc;

use bx3_protocol::ids::{DagId, ModuleHash, NodeId};

use crate::election::{LogPos, Persistent};
use crate::store::{DagMeta, SpecRecord, Store, StoreError, TaskRecord};

/// What the core may read: stored DAG records and whether a module is on this node.
pub trait Reads {
    fn meta(&self, id: &DagId) -> Result<Option<DagMeta>, StoreError>;
    fn spec(&self, id: &DagId) -> Result<Option<Arc<SpecRecord>>, StoreError>;
    /// How many tasks the DAG's spec has, `None` without a spec: what a peer's task index
    /// is checked against. The store answers it without keeping the decoded spec.
    fn task_count(&self, id: &DagId) -> Result<Option<usize>, StoreError> {
        Ok(self.spec(id)?.map(|s| s.dag.tasks.len()))
    }
    /// All `count` task records of a DAG, defaults for tasks never written.
    fn tasks(&self, id: &DagId, count: usize) -> Result<Vec<TaskRecord>, StoreError>;
    /// One task record, `None` if never written (one lookup, not a scan of the DAG).
    fn task(&self, id: &DagId, idx: u32) -> Result<Option<TaskRecord>, StoreError>;
    /// DAGs newest first, at most `limit`.
    fn list(&self, limit: usize) -> Result<Vec<(DagId, DagMeta)>, StoreError>;
    /// Ids of DAGs that have not reached a final state, oldest first.
    fn unfinished(&self) -> Result<Vec<DagId>, StoreError>;
    fn has_module(&self, hash: &ModuleHash) -> bool;
}

/// A durable change, applied by the runtime in output order.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A DAG new to this node: spec first, then its meta.
    Dag {
        id: DagId,
        meta: DagMeta,
        spec: Arc<SpecRecord>,
    },
    Meta(DagId, DagMeta),
    Tasks(Vec<(DagId, u32, TaskRecord)>),
    Election(Persistent<NodeId>),
    ReplPos(LogPos<NodeId>),
}

impl Store {
    /// Applies one write (not yet durable: see `flush`).
    pub fn apply(&self, w: &Write) -> Result<(), StoreError> {
        match w {
            Write::Dag { id, meta, spec } => self.insert_dag(id, meta, spec),
            Write::Meta(id, meta) => self.put_meta(id, meta),
            Write::Tasks(records) => self.put_tasks(records.iter().map(|(d, i, r)| (*d, *i, r))),
            Write::Election(p) => self.put_election(p),
            Write::ReplPos(p) => self.put_repl_pos(p),
        }
    }
}

/// A store and a module store, read together (what the node passes to `Core::step`).
pub struct NodeReads<'a> {
    pub store: &'a Store,
    pub modules: &'a crate::store::ModuleStore,
}

impl Reads for NodeReads<'_> {
    fn meta(&self, id: &DagId) -> Result<Option<DagMeta>, StoreError> {
        self.store.meta(id)
    }
    fn spec(&self, id: &DagId) -> Result<Option<Arc<SpecRecord>>, StoreError> {
        self.store.spec_shared(id)
    }
    fn task_count(&self, id: &DagId) -> Result<Option<usize>, StoreError> {
        self.store.task_count(id)
    }
    fn tasks(&self, id: &DagId, count: usize) -> Result<Vec<TaskRecord>, StoreError> {
        self.store.tasks(id, count)
    }
    fn task(&self, id: &DagId, idx: u32) -> Result<Option<TaskRecord>, StoreError> {
        self.store.task(id, idx)
    }
    fn list(&self, limit: usize) -> Result<Vec<(DagId, DagMeta)>, StoreError> {
        self.store.list(limit)
    }
    fn unfinished(&self) -> Result<Vec<DagId>, StoreError> {
        self.store.unfinished()
    }
    fn has_module(&self, hash: &ModuleHash) -> bool {
        self.modules.contains(hash.as_str())
    }
}

/// Writes of the current step, readable before the runtime applies them.
#[derive(Debug, Default)]
pub struct Overlay {
    metas: HashMap<DagId, DagMeta>,
    specs: HashMap<DagId, Arc<SpecRecord>>,
    tasks: HashMap<DagId, HashMap<u32, TaskRecord>>,
}

impl Overlay {
    pub fn clear(&mut self) {
        self.metas.clear();
        self.specs.clear();
        self.tasks.clear();
    }

    pub fn record(&mut self, w: &Write) {
        match w {
            Write::Dag { id, meta, spec } => {
                self.specs.insert(*id, Arc::clone(spec));
                self.metas.insert(*id, meta.clone());
            }
            Write::Meta(id, meta) => {
                self.metas.insert(*id, meta.clone());
            }
            Write::Tasks(records) => {
                for (d, i, r) in records {
                    self.tasks.entry(*d).or_default().insert(*i, r.clone());
                }
            }
            Write::Election(_) | Write::ReplPos(_) => {}
        }
    }

    /// `base` as it will be once this step's writes are applied.
    pub fn over<'a>(&'a self, base: &'a dyn Reads) -> View<'a> {
        View {
            overlay: self,
            base,
        }
    }
}

/// Reads through the overlay.
pub struct View<'a> {
    overlay: &'a Overlay,
    base: &'a dyn Reads,
}

impl Reads for View<'_> {
    fn meta(&self, id: &DagId) -> Result<Option<DagMeta>, StoreError> {
        match self.overlay.metas.get(id) {
            Some(m) => Ok(Some(m.clone())),
            None => self.base.meta(id),
        }
    }

    fn spec(&self, id: &DagId) -> Result<Option<Arc<SpecRecord>>, StoreError> {
        match self.overlay.specs.get(id) {
            Some(s) => Ok(Some(Arc::clone(s))),
            None => self.base.spec(id),
        }
    }

    fn task_count(&self, id: &DagId) -> Result<Option<usize>, StoreError> {
        match self.overlay.specs.get(id) {
            Some(s) => Ok(Some(s.dag.tasks.len())),
            None => self.base.task_count(id),
        }
    }

    fn tasks(&self, id: &DagId, count: usize) -> Result<Vec<TaskRecord>, StoreError> {
        let mut out = self.base.tasks(id, count)?;
        if let Some(written) = self.overlay.tasks.get(id) {
            for (i, r) in written {
                if let Some(slot) = out.get_mut(*i as usize) {
                    *slot = r.clone();
                }
            }
        }
        Ok(out)
    }

    fn task(&self, id: &DagId, idx: u32) -> Result<Option<TaskRecord>, StoreError> {
        match self.overlay.tasks.get(id).and_then(|t| t.get(&idx)) {
            Some(r) => Ok(Some(r.clone())),
            None => self.base.task(id, idx),
        }
    }

    fn list(&self, limit: usize) -> Result<Vec<(DagId, DagMeta)>, StoreError> {
        let mut out = self.base.list(limit)?;
        if self.overlay.metas.is_empty() {
            return Ok(out);
        }
        for (id, meta) in out.iter_mut() {
            if let Some(m) = self.overlay.metas.get(id) {
                *meta = m.clone();
            }
        }
        for (id, m) in &self.overlay.metas {
            if !out.iter().any(|(i, _)| i == id) {
                out.push((*id, m.clone()));
            }
        }
        out.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        out.truncate(limit);
        Ok(out)
    }

    fn unfinished(&self) -> Result<Vec<DagId>, StoreError> {
        let mut out = self.base.unfinished()?;
        if self.overlay.metas.is_empty() {
            return Ok(out);
        }
        out.retain(|id| {
            self.overlay
                .metas
                .get(id)
                .is_none_or(|m| !m.state.is_terminal())
        });
        for (id, m) in &self.overlay.metas {
            if !m.state.is_terminal() && !out.contains(id) {
                out.push(*id);
            }
        }
        out.sort();
        Ok(out)
    }

    fn has_module(&self, hash: &ModuleHash) -> bool {
        self.base.has_module(hash)
    }
}
