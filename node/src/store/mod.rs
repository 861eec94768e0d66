//! Durable state: sled behind one typed `Store`, plus content-addressed module files.
//!
//! Trees carry a schema version in their name (`dags.v1`) so a later layout can live beside
//! the old one during a migration. Keys are big-endian (`DagId` is time-first), so iteration
//! order is submission order. Values are CBOR; every record field added later gets
//! `#[serde(default)]` so old records stay readable.
//!
//! ```text
//! dags.v1   DagId                  -> DagMeta     (small; rewritten on every change)
//! specs.v1  DagId                  -> SpecRecord  (written once at submit)
//! tasks.v1  DagId ++ u32 task idx  -> TaskRecord  (absent = pending, never attempted)
//! meta.v1   "election"             -> the election's term and vote
//! quarantine.v1  tree ++ 0 ++ key  -> Quarantined (a record that failed its check)
//! ```
//!
//! Only the controller actor writes; readers may read concurrently (sled is MVCC-safe).
//!
//! **Quarantine.** Every read decodes through the record's checks (a spec through
//! `ValidDag::verify`). A record that fails them — a damaged disk, a bug in an older
//! version, a spec a peer should never have been able to send — is moved to `quarantine.v1`
//! with its key, its bytes and the reason, one line is logged, and the read answers as if
//! the record were absent, so the node keeps running instead of failing (or panicking)
//! again on every restart. For a DAG, "absent" means the whole DAG (meta, spec and task
//! records move together): marking it failed instead would spread that failure to every
//! replica through the merge (a finished DAG wins), while an absent DAG is filled in again
//! from a healthy copy by replication or the follower sync. A lost task record reads as
//! pending (the task runs again, as after a crash); a lost election record as no vote yet.

pub mod merge;
pub mod modules;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use bx3_protocol::api::{AttemptOutcome, Counts, DagState, TaskState};
use bx3_protocol::dag::ValidDag;
use bx3_protocol::ids::{DagId, DagIdPrefix, ModuleHash, NodeId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use modules::ModuleStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in {tree} (key {key}): {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("could not encode a record: {0}")]
    Encode(String),
}

/// What the node knows about a DAG besides its spec and tasks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DagMeta {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    pub state: DagState,
    pub created_at_ms: u64,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub counts: Counts,
}

/// The validated DAG and the modules it runs, fixed at submit time.
///
/// Decodes only when it is whole: the DAG verifies (`ValidDag` decodes through `verify`),
/// every module the DAG names has an entry, and every entry is a SHA-256 in hex (no more
/// entries than the DAG has tasks).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "bx3_protocol::mesh::Spec")]
// (The checks are `mesh::Spec`'s: a record decodes through the wire type.)
pub struct SpecRecord {
    pub dag: ValidDag,
    /// Module file name -> SHA-256 of its bytes.
    pub modules: BTreeMap<String, ModuleHash>,
}

/// One attempt of a task: where and when it ran and how it ended. Times are the controller's
/// clock (ms since the Unix epoch), so `queued <= started <= finished` holds across nodes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AttemptRecord {
    pub attempt: u32,
    #[serde(default)]
    pub node: Option<NodeId>,
    pub outcome: AttemptOutcome,
    #[serde(default)]
    pub queued_ms: Option<u64>,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub stderr: Option<String>,
}

/// Most attempts a task record keeps (the oldest go first).
pub const MAX_ATTEMPT_LOG: usize = 16;

/// One task's durable state. A task with no record is pending and was never attempted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TaskRecord {
    pub state: TaskState,
    pub attempts: u32,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub node: Option<NodeId>,
    /// When the task last became ready to run (or went back to the queue).
    #[serde(default)]
    pub queued_ms: Option<u64>,
    /// Its attempts, oldest first (at most `MAX_ATTEMPT_LOG`).
    #[serde(default)]
    pub log: Vec<AttemptRecord>,
}

/// A store's full content: (tree index, key, value).
#[cfg(test)]
pub type Dump = Vec<(usize, sled::IVec, sled::IVec)>;

/// A record moved out of its tree because it failed its check (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Quarantined {
    /// The tree it was in (`specs.v1`, ...).
    pub tree: String,
    pub key: Vec<u8>,
    /// The bytes as they were stored.
    pub value: Vec<u8>,
    /// Why it was refused.
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    dags: sled::Tree,
    specs: sled::Tree,
    tasks: sled::Tree,
    quarantine: sled::Tree,
    /// Decoded specs, shared: decoding a 10,000-task spec and checking it costs
    /// milliseconds, and the API reads it for every task page. Bounded by the tasks it
    /// holds (a decoded 100,000-task spec is tens of MB); emptied when full.
    spec_cache: Arc<std::sync::Mutex<SpecCache>>,
    /// Tasks per DAG, known without its decoded spec: what a replicated batch's task
    /// indices are checked against. Bounded; emptied when full.
    task_counts: Arc<std::sync::Mutex<HashMap<DagId, usize>>>,
}

#[derive(Default)]
struct SpecCache {
    specs: HashMap<DagId, Arc<SpecRecord>>,
    /// Tasks of the specs held.
    tasks: usize,
}

/// Most decoded specs a store keeps in memory.
const SPEC_CACHE: usize = 64;
/// Most tasks, summed over the decoded specs a store keeps; a bigger spec is not kept.
const SPEC_CACHE_TASKS: usize = 250_000;
/// Most DAGs whose task count a store keeps.
const TASK_COUNTS: usize = 65_536;

const DAGS: &str = "dags.v1";
const SPECS: &str = "specs.v1";
const TASKS: &str = "tasks.v1";
const META: &str = "meta.v1";
const QUARANTINE: &str = "quarantine.v1";
const ELECTION_KEY: &[u8] = b"election";
const REPL_KEY: &[u8] = b"repl";

fn task_key(dag: &DagId, idx: u32) -> [u8; DagId::LEN + 4] {
    let mut k = [0u8; DagId::LEN + 4];
    k[..DagId::LEN].copy_from_slice(dag.as_bytes());
    k[DagId::LEN..].copy_from_slice(&idx.to_be_bytes());
    k
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_cbor::to_vec(value).map_err(|e| StoreError::Encode(e.to_string()))
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_cbor::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        key: hex::encode(key),
        reason: e.to_string(),
    })
}

/// sled's page cache. Its default (1 GiB) would let a long-lived node's memory grow with its
/// history on a phone or a Raspberry Pi; the working set (active DAGs) is far smaller.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::with_db(
            sled::Config::new()
                .path(path)
                .cache_capacity(CACHE_BYTES)
                .open()?,
        )
    }

    /// A store that lives as long as the handle (simulations and tests).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn temporary() -> Result<Store, StoreError> {
        Store::with_db(
            sled::Config::new()
                .temporary(true)
                .flush_every_ms(None)
                .open()?,
        )
    }

    /// Every record of every tree (simulations: what a node's disk holds after a flush).
    #[cfg(test)]
    pub fn dump(&self) -> Result<Dump, StoreError> {
        let mut out = Vec::new();
        for (i, tree) in self.trees().into_iter().enumerate() {
            for kv in tree.iter() {
                let (k, v) = kv?;
                out.push((i, k, v));
            }
        }
        Ok(out)
    }

    /// Replaces every tree's content with `dump` (simulations: a crash loses what was not
    /// flushed).
    #[cfg(test)]
    pub fn restore(&self, dump: &Dump) -> Result<(), StoreError> {
        let trees = self.trees();
        for tree in &trees {
            tree.clear()?;
        }
        for (i, k, v) in dump {
            trees[*i].insert(k, v.clone())?;
        }
        Ok(())
    }

    /// Whether `dump` holds DAG `id`'s record.
    #[cfg(test)]
    pub fn dump_holds(dump: &Dump, id: &DagId) -> bool {
        dump.iter()
            .any(|(i, k, _)| *i == 1 && k.as_ref() == id.as_bytes())
    }

    #[cfg(test)]
    fn trees(&self) -> [&sled::Tree; 4] {
        [&self.meta, &self.dags, &self.specs, &self.tasks]
    }

    fn with_db(db: sled::Db) -> Result<Store, StoreError> {
        Ok(Store {
            dags: db.open_tree(DAGS)?,
            specs: db.open_tree(SPECS)?,
            tasks: db.open_tree(TASKS)?,
            meta: db.open_tree(META)?,
            quarantine: db.open_tree(QUARANTINE)?,
            spec_cache: Arc::default(),
            task_counts: Arc::default(),
            db,
        })
    }

    fn tree(&self, name: &str) -> Option<&sled::Tree> {
        match name {
            DAGS => Some(&self.dags),
            SPECS => Some(&self.specs),
            TASKS => Some(&self.tasks),
            META => Some(&self.meta),
            _ => None,
        }
    }

    /// Moves one record that failed its check to `quarantine.v1` and logs it. The move is
    /// a compare-and-swap: if the record was rewritten since it was read (the actor writes
    /// while a reader elsewhere found the old bytes bad), the new record stays.
    fn quarantine_record(
        &self,
        tree: &'static str,
        key: &[u8],
        value: &[u8],
        reason: &str,
    ) -> Result<(), StoreError> {
        let Some(source) = self.tree(tree) else {
            return Ok(());
        };
        let record = Quarantined {
            tree: tree.to_string(),
            key: key.to_vec(),
            value: value.to_vec(),
            reason: reason.to_string(),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        let mut qkey = tree.as_bytes().to_vec();
        qkey.push(0);
        qkey.extend_from_slice(key);
        self.quarantine.insert(qkey, encode(&record)?)?;
        let moved = source
            .compare_and_swap(key, Some(value), None::<&[u8]>)?
            .is_ok();
        if moved {
            tracing::error!(
                tree,
                key = %hex::encode(key),
                reason = ?reason,
                "a stored record failed its check; moved to quarantine.v1, the node goes on as if it were absent"
            );
        }
        Ok(())
    }

    /// Moves every record of DAG `id` (meta, spec, task records) to quarantine: one of them
    /// failed its check, and a DAG is only usable whole.
    fn quarantine_dag(&self, id: &DagId, reason: &str) -> Result<(), StoreError> {
        {
            let mut cache = self.specs_cached();
            if let Some(spec) = cache.specs.remove(id) {
                cache.tasks -= spec.dag.tasks.len();
            }
        }
        self.counts().remove(id);
        let why = format!("DAG {id}: {reason}");
        if let Some(v) = self.dags.get(id.as_bytes())? {
            self.quarantine_record(DAGS, id.as_bytes(), &v, &why)?;
        }
        if let Some(v) = self.specs.get(id.as_bytes())? {
            self.quarantine_record(SPECS, id.as_bytes(), &v, &why)?;
        }
        for item in self.tasks.scan_prefix(id.as_bytes()) {
            let (k, v) = item?;
            self.quarantine_record(TASKS, &k, &v, &why)?;
        }
        Ok(())
    }

    /// Decodes a DAG-level record (meta or spec) of DAG `id`; a record that does not decode
    /// takes the whole DAG to quarantine and reads as absent.
    fn dag_record<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        id: &DagId,
        bytes: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match decode(tree, id.as_bytes(), bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.quarantine_dag(id, &format!("{tree}: {e}"))?;
                Ok(None)
            }
        }
    }

    /// Decodes a record that stands alone (a task record, the election's); one that does
    /// not decode goes to quarantine and reads as absent.
    fn lone_record<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match decode(tree, key, bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.quarantine_record(tree, key, bytes, &e.to_string())?;
                Ok(None)
            }
        }
    }

    /// Records moved to quarantine, oldest key first (for people and tests).
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let mut out = Vec::new();
        for item in self.quarantine.iter() {
            let (k, v) = item?;
            out.push(decode(QUARANTINE, &k, &v)?);
        }
        Ok(out)
    }

    /// Records a new DAG. The spec goes first: a crash in between leaves a spec without meta,
    /// which `unfinished()` never sees, rather than a meta without its spec.
    pub fn insert_dag(
        &self,
        id: &DagId,
        meta: &DagMeta,
        spec: &SpecRecord,
    ) -> Result<(), StoreError> {
        self.specs.insert(id.as_bytes(), encode(spec)?)?;
        self.dags.insert(id.as_bytes(), encode(meta)?)?;
        self.count_tasks(id, spec.dag.tasks.len());
        Ok(())
    }

    pub fn put_meta(&self, id: &DagId, meta: &DagMeta) -> Result<(), StoreError> {
        self.dags.insert(id.as_bytes(), encode(meta)?)?;
        Ok(())
    }

    /// Writes task records, one insert each.
    ///
    /// Not a `sled::Batch`: sled 0.34 writes its log buffer out twice for every batch (it
    /// rolls the buffer around the batch manifest), which turned each round of results into
    /// two disk writes and undid the group commit. Atomicity across records is not needed:
    /// each task record stands alone, and what is written after them in the same round (the
    /// DAG's meta, the replica position) comes later in sled's log, which recovers in order.
    /// A crash can at worst lose a suffix of a round's records; those tasks run again.
    pub fn put_tasks<'a>(
        &self,
        records: impl IntoIterator<Item = (DagId, u32, &'a TaskRecord)>,
    ) -> Result<(), StoreError> {
        for (dag, idx, rec) in records {
            self.tasks.insert(&task_key(&dag, idx)[..], encode(rec)?)?;
        }
        Ok(())
    }

    /// The election's durable term and vote (written before acting on them).
    pub fn election(&self) -> Result<Option<crate::election::Persistent<NodeId>>, StoreError> {
        match self.meta.get(ELECTION_KEY)? {
            Some(v) => self.lone_record(META, ELECTION_KEY, &v),
            None => Ok(None),
        }
    }

    pub fn put_election(&self, p: &crate::election::Persistent<NodeId>) -> Result<(), StoreError> {
        self.meta.insert(ELECTION_KEY, encode(p)?)?;
        Ok(())
    }

    /// How far this node's copy of the controller's state goes: the term and sequence number
    /// of the last batch it applied (or, on the controller, produced).
    pub fn repl_pos(&self) -> Result<crate::election::LogPos<NodeId>, StoreError> {
        match self.meta.get(REPL_KEY)? {
            Some(v) => Ok(self.lone_record(META, REPL_KEY, &v)?.unwrap_or_default()),
            None => Ok(crate::election::LogPos::default()),
        }
    }

    pub fn put_repl_pos(&self, pos: &crate::election::LogPos<NodeId>) -> Result<(), StoreError> {
        self.meta.insert(REPL_KEY, encode(pos)?)?;
        Ok(())
    }

    pub fn task(&self, id: &DagId, idx: u32) -> Result<Option<TaskRecord>, StoreError> {
        let key = task_key(id, idx);
        match self.tasks.get(key)? {
            Some(v) => self.lone_record(TASKS, &key, &v),
            None => Ok(None),
        }
    }

    pub fn has_spec(&self, id: &DagId) -> Result<bool, StoreError> {
        Ok(self.specs.contains_key(id.as_bytes())?)
    }

    pub fn put_spec(&self, id: &DagId, spec: &SpecRecord) -> Result<(), StoreError> {
        self.specs.insert(id.as_bytes(), encode(spec)?)?;
        Ok(())
    }

    /// Waits until everything written so far is on disk.
    ///
    /// The write and fsync run on tokio's blocking pool, not through sled's `flush_async`:
    /// sled 0.34 hands that to its own thread pool, whose queue wakes all seven of its idle
    /// threads for every job; at thousands of flushes a second that herd was a third of the
    /// controller's CPU.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            self.db.flush()?;
            return Ok(());
        }
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(done) => {
                done?;
                Ok(())
            }
            Err(e) => Err(StoreError::Sled(sled::Error::ReportableBug(format!(
                "flush task failed: {e}"
            )))),
        }
    }

    pub fn meta(&self, id: &DagId) -> Result<Option<DagMeta>, StoreError> {
        match self.dags.get(id.as_bytes())? {
            Some(v) => self.dag_record(DAGS, id, &v),
            None => Ok(None),
        }
    }

    /// The DAG's spec, decoded once and shared (see `spec_cache`).
    pub fn spec_shared(&self, id: &DagId) -> Result<Option<Arc<SpecRecord>>, StoreError> {
        if let Some(spec) = self.specs_cached().specs.get(id) {
            return Ok(Some(Arc::clone(spec)));
        }
        let Some(spec) = self.spec(id)?.map(Arc::new) else {
            return Ok(None);
        };
        let n = spec.dag.tasks.len();
        if n <= SPEC_CACHE_TASKS {
            let mut cache = self.specs_cached();
            if cache.specs.len() >= SPEC_CACHE || cache.tasks + n > SPEC_CACHE_TASKS {
                *cache = SpecCache::default();
            }
            if cache.specs.insert(*id, Arc::clone(&spec)).is_none() {
                cache.tasks += n;
            }
        }
        Ok(Some(spec))
    }

    fn specs_cached(&self) -> std::sync::MutexGuard<'_, SpecCache> {
        self.spec_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<DagId, usize>> {
        self.task_counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count_tasks(&self, id: &DagId, n: usize) {
        let mut counts = self.counts();
        if counts.len() >= TASK_COUNTS {
            counts.clear();
        }
        counts.insert(*id, n);
    }

    /// The DAG's spec, checked (`ValidDag` decodes only through `verify`).
    pub fn spec(&self, id: &DagId) -> Result<Option<SpecRecord>, StoreError> {
        let spec: Option<SpecRecord> = match self.specs.get(id.as_bytes())? {
            Some(v) => self.dag_record(SPECS, id, &v)?,
            None => None,
        };
        if let Some(spec) = &spec {
            self.count_tasks(id, spec.dag.tasks.len());
        }
        Ok(spec)
    }

    /// How many tasks the DAG's spec has, `None` without a spec. Decodes the spec only the
    /// first time (and does not keep it): a follower checks every replicated task index
    /// against it without holding a 100,000-task spec in memory.
    pub fn task_count(&self, id: &DagId) -> Result<Option<usize>, StoreError> {
        if let Some(n) = self.counts().get(id) {
            return Ok(Some(*n));
        }
        Ok(self.spec(id)?.map(|s| s.dag.tasks.len()))
    }

    /// All `count` task records of a DAG, defaults for tasks never written.
    pub fn tasks(&self, id: &DagId, count: usize) -> Result<Vec<TaskRecord>, StoreError> {
        let mut out = vec![TaskRecord::default(); count];
        for item in self.tasks.scan_prefix(id.as_bytes()) {
            let (k, v) = item?;
            let Some(idx_bytes) = k
                .get(DagId::LEN..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
            else {
                self.quarantine_record(TASKS, &k, &v, "key is not a DAG id plus a task index")?;
                continue;
            };
            let idx = u32::from_be_bytes(idx_bytes) as usize;
            if let Some(slot) = out.get_mut(idx) {
                if let Some(record) = self.lone_record(TASKS, &k, &v)? {
                    *slot = record;
                }
            }
        }
        Ok(out)
    }

    /// DAGs newest first, at most `limit`.
    pub fn list(&self, limit: usize) -> Result<Vec<(DagId, DagMeta)>, StoreError> {
        let mut out = Vec::new();
        for item in self.dags.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let Some(id) = DagId::from_bytes(&k) else {
                self.quarantine_record(DAGS, &k, &v, "key is not a DAG id")?;
                continue;
            };
            if let Some(meta) = self.dag_record(DAGS, &id, &v)? {
                out.push((id, meta));
            }
        }
        Ok(out)
    }

    /// Ids of the DAGs in this store that start with `prefix`, oldest first, at most `limit`
    /// (read-only; every node holds a replica of every DAG, so any node can resolve one).
    pub fn ids_with_prefix(
        &self,
        prefix: &DagIdPrefix,
        limit: usize,
    ) -> Result<Vec<DagId>, StoreError> {
        let mut out = Vec::new();
        for key in self.dags.scan_prefix(prefix.key_prefix()).keys() {
            if out.len() >= limit {
                break;
            }
            if let Some(id) = DagId::from_bytes(&key?) {
                if prefix.matches(&id) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Ids of DAGs that have not reached a final state, oldest first.
    pub fn unfinished(&self) -> Result<Vec<DagId>, StoreError> {
        let mut out = Vec::new();
        for item in self.dags.iter() {
            let (k, v) = item?;
            let Some(id) = DagId::from_bytes(&k) else {
                self.quarantine_record(DAGS, &k, &v, "key is not a DAG id")?;
                continue;
            };
            let Some(meta) = self.dag_record::<DagMeta>(DAGS, &id, &v)? else {
                continue;
            };
            if !meta.state.is_terminal() {
                out.push(id);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bx3_protocol::dag::parse_dag;

    fn spec() -> SpecRecord {
        let dag = parse_dag(
            "name: t\ntasks:\n  - id: a\n    module: m.wasm\n  - id: b\n    module: m.wasm\n    inputs: [a]\n    depends_on: [a]\n",
        )
        .expect("valid dag");
        SpecRecord {
            dag,
            modules: BTreeMap::from([(
                "m.wasm".to_string(),
                "00".repeat(32).parse().expect("hash"),
            )]),
        }
    }

    fn meta(state: DagState) -> DagMeta {
        DagMeta {
            name: "t".into(),
            description: None,
            source: None,
            state,
            created_at_ms: 1,
            finished_at_ms: None,
            version: 1,
            counts: Counts::default(),
        }
    }

    #[test]
    fn ids_resolve_by_prefix() {
        let store = Store::temporary().expect("store");
        let ids = [
            DagId::new(0x01a2_31d7_ac28, 1),
            DagId::new(0x01a2_31d7_ac28, 2),
            DagId::new(0x01a2_31d7_ac29, 3),
            DagId::new(0x01b0_0000_0000, 4),
        ];
        for id in &ids {
            store
                .insert_dag(id, &meta(DagState::Running), &spec())
                .expect("insert");
        }
        let find = |p: &str, limit| {
            store
                .ids_with_prefix(&p.parse().expect("prefix"), limit)
                .expect("scan")
        };
        assert_eq!(find("01a231d7ac28", 10), ids[..2].to_vec());
        assert_eq!(find("01a231d7ac2", 10), ids[..3].to_vec());
        assert_eq!(find("01a231d7ac2", 2), ids[..2].to_vec(), "bounded");
        assert_eq!(find("01b0", 10), vec![ids[3]]);
        assert_eq!(find(&ids[2].to_string(), 10), vec![ids[2]]);
        assert!(find("01c0", 10).is_empty());
    }

    #[test]
    fn task_counts_need_no_decoded_spec_and_the_spec_cache_is_bounded_by_tasks() {
        let store = Store::temporary().expect("store");
        let big = |n: usize| {
            let mut yaml = String::from("name: big\ntasks:\n");
            for i in 0..n {
                yaml.push_str(&format!("  - {{id: t{i}, module: m.wasm}}\n"));
            }
            SpecRecord {
                dag: parse_dag(&yaml).expect("valid dag"),
                ..spec()
            }
        };
        let (a, b, c) = (DagId::new(1, 1), DagId::new(2, 2), DagId::new(3, 3));
        store
            .insert_dag(&a, &meta(DagState::Running), &spec())
            .expect("insert");
        // Written: counted, nothing decoded or kept.
        assert_eq!(store.task_count(&a).expect("count"), Some(2));
        assert_eq!(store.task_count(&b).expect("count"), None);
        assert_eq!(store.specs_cached().specs.len(), 0);
        // A count lost (as after a restart) comes back from the spec, which is not kept.
        store.counts().clear();
        assert_eq!(store.task_count(&a).expect("count"), Some(2));
        assert_eq!(store.specs_cached().specs.len(), 0);
        // Decoded specs are shared while they fit the task budget ...
        let half = SPEC_CACHE_TASKS / 2;
        store
            .insert_dag(&b, &meta(DagState::Running), &big(half))
            .expect("insert");
        store
            .insert_dag(&c, &meta(DagState::Running), &big(half + 1))
            .expect("insert");
        let one = store.spec_shared(&b).expect("read").expect("spec");
        let again = store.spec_shared(&b).expect("read").expect("spec");
        assert!(Arc::ptr_eq(&one, &again), "decoded once");
        assert_eq!(store.specs_cached().tasks, half);
        // ... and the next one that would pass it empties the cache first.
        store.spec_shared(&c).expect("read").expect("spec");
        let cache = store.specs_cached();
        assert_eq!(cache.tasks, half + 1);
        assert!(cache.specs.contains_key(&c) && !cache.specs.contains_key(&b));
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = DagId::new(10, 1);
        let b = DagId::new(20, 2);
        {
            let store = Store::open(dir.path()).expect("open");
            store
                .insert_dag(&a, &meta(DagState::Running), &spec())
                .expect("insert");
            store
                .insert_dag(&b, &meta(DagState::Succeeded), &spec())
                .expect("insert");
            let rec = TaskRecord {
                state: TaskState::Succeeded,
                attempts: 1,
                output: Some("héllo".into()),
                error: None,
                node: Some("me".parse().expect("id")),
                ..TaskRecord::default()
            };
            store.put_tasks([(a, 1, &rec)]).expect("put");
            futures_lite_block_on(store.flush()).expect("flush");
        }
        // sled releases its file lock when its background flusher lets go of the database,
        // a moment after the last handle is dropped.
        let store = (0..200)
            .find_map(|_| {
                Store::open(dir.path()).ok().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                    None
                })
            })
            .expect("reopen within 5 s");
        assert_eq!(store.unfinished().expect("scan"), vec![a]);
        let tasks = store.tasks(&a, 2).expect("tasks");
        assert_eq!(
            tasks[0],
            TaskRecord::default(),
            "unwritten task reads as pending"
        );
        assert_eq!(tasks[1].output.as_deref(), Some("héllo"));
        assert_eq!(store.spec(&a).expect("spec"), Some(spec()));
        let listed: Vec<DagId> = store
            .list(10)
            .expect("list")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(listed, vec![b, a], "newest first");
        // Tasks of one DAG never leak into another's prefix scan.
        assert_eq!(
            store.tasks(&b, 2).expect("tasks"),
            vec![TaskRecord::default(); 2]
        );
    }

    /// A spec that fails its check on disk (here: a dependency index out of range, which
    /// used to panic the planner on every start) takes its whole DAG to quarantine: the
    /// reads answer "absent", the bytes and the reason are kept, other DAGs are untouched.
    #[test]
    fn a_spec_that_fails_its_check_quarantines_its_dag() {
        let store = Store::temporary().expect("store");
        let (good, bad) = (DagId::new(10, 1), DagId::new(20, 2));
        store
            .insert_dag(&good, &meta(DagState::Running), &spec())
            .expect("insert");
        let mut tampered = spec();
        tampered.dag.tasks[1].deps.push(40);
        store
            .insert_dag(&bad, &meta(DagState::Running), &tampered)
            .expect("insert");
        let rec = TaskRecord {
            state: TaskState::Succeeded,
            attempts: 1,
            ..TaskRecord::default()
        };
        store
            .put_tasks([(bad, 0, &rec), (good, 0, &rec)])
            .expect("put");

        assert_eq!(
            store.unfinished().expect("scan"),
            vec![good, bad],
            "metas are fine"
        );
        assert_eq!(store.spec(&bad).expect("no error, just absent"), None);
        assert_eq!(store.meta(&bad).expect("meta"), None, "the whole DAG moved");
        assert_eq!(
            store.tasks(&bad, 2).expect("tasks"),
            vec![TaskRecord::default(); 2]
        );
        assert!(
            !store.has_spec(&bad).expect("has"),
            "replication can bring a good copy"
        );
        assert_eq!(store.unfinished().expect("scan"), vec![good]);
        assert_eq!(store.spec(&good).expect("spec"), Some(spec()));
        assert_eq!(store.tasks(&good, 2).expect("tasks")[0], rec);

        let q = store.quarantined().expect("quarantine");
        let trees: Vec<&str> = q.iter().map(|r| r.tree.as_str()).collect();
        assert_eq!(trees, vec![DAGS, SPECS, TASKS]);
        assert!(q[1].reason.contains("task index 40"), "{}", q[1].reason);
        assert_eq!(q[1].key, bad.as_bytes().to_vec());
        assert_eq!(
            Some(q[1].value.clone()),
            Some(encode(&tampered).expect("enc"))
        );
        // Reading again finds nothing more to move.
        assert_eq!(store.spec(&bad).expect("spec"), None);
        assert_eq!(store.quarantined().expect("quarantine").len(), 3);
    }

    #[test]
    fn lone_records_that_do_not_decode_read_as_absent() {
        let store = Store::temporary().expect("store");
        let id = DagId::new(10, 1);
        store
            .insert_dag(&id, &meta(DagState::Running), &spec())
            .expect("insert");
        let rec = TaskRecord {
            state: TaskState::Failed,
            attempts: 3,
            ..TaskRecord::default()
        };
        store.put_tasks([(id, 0, &rec)]).expect("put");
        store
            .tasks
            .insert(&task_key(&id, 1)[..], &b"\xff\xfe garbage"[..])
            .expect("raw");
        let mut short_key = id.as_bytes().to_vec();
        short_key.push(7);
        store.tasks.insert(short_key, &b"x"[..]).expect("raw");
        assert_eq!(
            store.tasks(&id, 2).expect("tasks"),
            vec![rec, TaskRecord::default()],
            "the damaged task reads as pending; the good one is kept"
        );
        assert_eq!(store.task(&id, 1).expect("task"), None);
        store.meta.insert(ELECTION_KEY, &b"\x00"[..]).expect("raw");
        assert!(store.election().expect("election").is_none());
        store.meta.insert(REPL_KEY, &b"\x00"[..]).expect("raw");
        assert_eq!(
            store.repl_pos().expect("pos"),
            crate::election::LogPos::default()
        );
        store
            .dags
            .insert(&b"not a dag id"[..], &b"x"[..])
            .expect("raw");
        assert_eq!(store.list(10).expect("list").len(), 1);
        assert_eq!(store.quarantined().expect("q").len(), 5);
    }

    #[test]
    fn a_spec_decodes_only_with_a_hash_for_every_module() {
        let good = spec();
        let bytes = encode(&good).expect("enc");
        assert_eq!(
            serde_cbor::from_slice::<SpecRecord>(&bytes).expect("good"),
            good
        );
        // What a peer or a damaged disk can hold: any strings as hashes.
        #[derive(Serialize)]
        struct Raw {
            dag: ValidDag,
            modules: BTreeMap<String, String>,
        }
        let raw = |s: &SpecRecord| Raw {
            dag: s.dag.clone(),
            modules: s
                .modules
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
        };
        let mut missing = raw(&spec());
        missing.modules.clear();
        let mut bad_hash = raw(&spec());
        bad_hash
            .modules
            .insert("m.wasm".into(), "../../etc/passwd".into());
        let mut too_many = raw(&spec());
        for i in 0..5 {
            too_many
                .modules
                .insert(format!("x{i}.wasm"), "00".repeat(32));
        }
        for (why, s) in [
            ("no hash for", missing),
            ("not a module hash", bad_hash),
            ("modules for 2 tasks", too_many),
        ] {
            let err =
                serde_cbor::from_slice::<SpecRecord>(&encode(&s).expect("enc")).expect_err(why);
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }

    /// A reader that found bad bytes never deletes a record rewritten since (the actor
    /// writes while replicas and long polls read).
    #[test]
    fn quarantine_keeps_a_record_rewritten_since_it_was_read() {
        let store = Store::temporary().expect("store");
        let id = DagId::new(10, 1);
        let good = encode(&meta(DagState::Running)).expect("enc");
        store.dags.insert(id.as_bytes(), good.clone()).expect("raw");
        store
            .quarantine_record(DAGS, id.as_bytes(), b"old bad bytes", "test")
            .expect("quarantine");
        assert_eq!(
            store.dags.get(id.as_bytes()).expect("get").as_deref(),
            Some(&good[..])
        );
    }

    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap as Map;

        #[derive(Debug, Clone)]
        enum Op {
            Task {
                dag: u8,
                idx: u8,
                state: u8,
                attempts: u8,
            },
            Finish {
                dag: u8,
            },
            Reopen,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0u8..3, 0u8..2, 0u8..6, 0u8..4).prop_map(|(dag, idx, state, attempts)| Op::Task { dag, idx, state, attempts }),
                1 => (0u8..3).prop_map(|dag| Op::Finish { dag }),
                1 => Just(Op::Reopen),
            ]
        }

        fn state(n: u8) -> TaskState {
            [
                TaskState::Pending,
                TaskState::Running,
                TaskState::Succeeded,
                TaskState::Failed,
                TaskState::Skipped,
                TaskState::Cancelled,
            ][n as usize % 6]
        }

        fn open_retrying(path: &std::path::Path) -> Store {
            (0..200)
                .find_map(|_| {
                    Store::open(path).ok().or_else(|| {
                        std::thread::sleep(std::time::Duration::from_millis(25));
                        None
                    })
                })
                .expect("reopen within 5 s")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            /// The store agrees with an in-memory model through any sequence of writes and
            /// reopens (a flush before each reopen, as a node flushes when it stops).
            #[test]
            fn store_matches_a_model_across_reopens(ops in proptest::collection::vec(op(), 1..40)) {
                let dir = tempfile::tempdir().expect("tempdir");
                let ids: Vec<DagId> = (0..3).map(|i| DagId::new(100 + i, i as u32)).collect();
                let mut store = Some(Store::open(dir.path()).expect("open"));
                for id in &ids {
                    store.as_ref().expect("open").insert_dag(id, &meta(DagState::Running), &spec()).expect("insert");
                }
                let mut tasks: Map<(u8, u8), TaskRecord> = Map::new();
                let mut finished: Map<u8, bool> = Map::new();
                for op in ops {
                    match op {
                        Op::Task { dag, idx, state: s, attempts } => {
                            let rec = TaskRecord { state: state(s), attempts: u32::from(attempts), ..TaskRecord::default() };
                            store.as_ref().expect("open").put_tasks([(ids[dag as usize], u32::from(idx), &rec)]).expect("put");
                            tasks.insert((dag, idx), rec);
                        }
                        Op::Finish { dag } => {
                            store.as_ref().expect("open").put_meta(&ids[dag as usize], &meta(DagState::Succeeded)).expect("meta");
                            finished.insert(dag, true);
                        }
                        Op::Reopen => {
                            let s = store.take().expect("open");
                            futures_lite_block_on(s.flush()).expect("flush");
                            drop(s);
                            store = Some(open_retrying(dir.path()));
                        }
                    }
                    let s = store.as_ref().expect("open");
                    for (d, id) in ids.iter().enumerate() {
                        let got = s.tasks(id, 2).expect("tasks");
                        for i in 0..2u8 {
                            let want = tasks.get(&(d as u8, i)).cloned().unwrap_or_default();
                            prop_assert_eq!(&got[i as usize], &want);
                        }
                    }
                    let unfinished: Vec<DagId> = s.unfinished().expect("scan");
                    let want: Vec<DagId> = ids.iter().enumerate().filter(|(d, _)| !finished.contains_key(&(*d as u8))).map(|(_, id)| *id).collect();
                    prop_assert_eq!(unfinished, want);
                }
            }
        }
    }
}
