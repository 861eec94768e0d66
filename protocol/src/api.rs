//! JSON bodies of the node's HTTP API (`/v1/...`), shared by the node, the CLI and tests.
//!
//! The shapes here are a public contract (scripts parse `--json` output): fields are only ever
//! added, never renamed. Optional extras are skipped when empty so the documented core stays small.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/dags`: the DAG file as written plus the hashes of the modules it names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The YAML text; the node parses and validates it again (never trusts the client).
    pub yaml: String,
    /// Where the DAG came from (file path), for error messages and `dags` listings.
    #[serde(default)]
    pub source: Option<String>,
    /// Module file name (as written in `module:`) -> lowercase hex SHA-256 of its bytes.
    /// Every module must have been uploaded (`PUT /v1/modules`) before.
    pub modules: BTreeMap<String, String>,
    /// The DAG's id, chosen by the client (20 hex digits; see `ids::DagId`), so that a
    /// submission retried after a lost answer is recognised and runs once. Without it the
    /// node chooses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Answer to a successful submit: the DAG is durably accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubmitResponse {
    pub id: String,
}

/// Answer to `PUT /v1/modules`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleUploaded {
    pub hash: String,
    pub size: u64,
}

/// Every error the API returns has this body, with an HTTP status that fits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
    /// What kind of error, for scripts: `invalid`, `not_found`, `already_finished`,
    /// `not_replicated`, `unavailable`, `no_controller`, `unauthorized`, `internal`,
    /// `stopping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DagState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl DagState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DagState::Succeeded | DagState::Failed | DagState::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            DagState::Pending => "pending",
            DagState::Running => "running",
            DagState::Succeeded => "succeeded",
            DagState::Failed => "failed",
            DagState::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Skipped | TaskState::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Skipped => "skipped",
            TaskState::Cancelled => "cancelled",
        }
    }
}

/// How many tasks of a DAG are in each state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Counts {
    pub total: u64,
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub cancelled: u64,
}

impl Counts {
    pub fn add(&mut self, state: TaskState) {
        let slot = self.slot(state);
        *slot = slot.saturating_add(1);
    }
    pub fn remove(&mut self, state: TaskState) {
        let slot = self.slot(state);
        *slot = slot.saturating_sub(1);
    }
    fn slot(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Pending => &mut self.pending,
            TaskState::Running => &mut self.running,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Failed => &mut self.failed,
            TaskState::Skipped => &mut self.skipped,
            TaskState::Cancelled => &mut self.cancelled,
        }
    }
    /// Tasks that reached a final state.
    /// Saturating: counts from a peer or a damaged record may be anything.
    pub fn done(&self) -> u64 {
        self.succeeded
            .saturating_add(self.failed)
            .saturating_add(self.skipped)
            .saturating_add(self.cancelled)
    }
}

/// One task as users see it (`dag ID --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TaskView {
    pub state: TaskState,
    pub output: Option<String>,
    pub error: Option<String>,
    pub attempts: u32,
    /// Peer id of the node that ran (or runs) the latest attempt.
    pub node: Option<String>,
    /// The module file name, as written in the DAG.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub module: String,
    /// Ids of the tasks this one depends on, as written in the DAG.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The task's inputs as written in the DAG (before `${id}` expansion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Tail of the latest finished attempt's stderr (kept for successful attempts too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// When the latest attempt was queued, started and finished (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Every attempt, oldest first (an attempt interrupted by a lost node or a failover is
    /// listed too, although it does not count in `attempts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<AttemptView>,
}

/// How one attempt of a task went.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// Still running (or queued on its node).
    #[default]
    Running,
    Succeeded,
    Failed,
    /// Cut short by something other than the task: its node was lost, a controller changed.
    /// Not counted against the task's retries.
    Interrupted,
    Cancelled,
}

/// One attempt of a task: where and when it ran and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AttemptView {
    /// 1-based attempt number (interrupted attempts repeat the number of the next try).
    pub attempt: u32,
    pub node: Option<String>,
    pub outcome: AttemptOutcome,
    /// Milliseconds since the Unix epoch. `queued_at_ms <= started_at_ms <= finished_at_ms`
    /// whenever they are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tail of this attempt's stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

/// One DAG as users see it (`dag ID --json`, `submit --wait --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DagView {
    pub id: String,
    pub name: String,
    pub state: DagState,
    /// Task id -> task. Empty when the caller asked for a summary only (`?tasks=false`).
    pub tasks: BTreeMap<String, TaskView>,
    /// Task ids in the order of the DAG file, so people see them as they wrote them.
    #[serde(default)]
    pub order: Vec<String>,
    #[serde(default)]
    pub counts: Counts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Increases on every change; `GET /v1/dags/{id}?after=V` waits for a version above V.
    #[serde(default)]
    pub version: u64,
    /// The node coordinating this DAG (the controller), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// Set when the caller asked for a page of tasks (`task_offset`, `task_limit`, `state`,
    /// `q`, `task`): `tasks` and `order` then hold only that page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<TaskPage>,
}

/// Largest page of tasks one request returns.
pub const MAX_TASK_PAGE: u64 = 1_000;
/// Longest `q` (task id substring) a query may carry.
pub const MAX_TASK_QUERY: usize = 256;

/// Which tasks of a DAG to return (`GET /v1/dags/{id}?task_offset=&task_limit=&state=&q=`),
/// so a page can show a 100,000-task DAG without fetching it whole. Tasks are taken in the
/// order of the DAG file; the filters apply first, then `offset` and `limit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TaskQuery {
    #[serde(default)]
    pub offset: u64,
    /// At most [`MAX_TASK_PAGE`].
    #[serde(default)]
    pub limit: u64,
    /// Only tasks in one of these states (empty: any state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<TaskState>,
    /// Only tasks whose id contains this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Only the task with exactly this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Cut `output`, `error` and `stderr` (and attempt errors and stderr) to this many
    /// characters (a list shows previews; one task is fetched whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<u32>,
}

/// What a page of tasks holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TaskPage {
    pub offset: u64,
    pub limit: u64,
    /// Tasks that match the filters (the page is a window on them).
    pub matched: u64,
    /// Texts were cut to this many characters, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<u32>,
}

impl TaskQuery {
    /// Checks a query from a user or a peer: bounded limit and text.
    pub fn checked(mut self) -> Result<TaskQuery, String> {
        if self.limit > MAX_TASK_PAGE {
            return Err(format!(
                "task_limit {} is above the maximum page of {MAX_TASK_PAGE} tasks",
                self.limit
            ));
        }
        if self.limit == 0 {
            self.limit = 100;
        }
        for text in [&self.q, &self.task].into_iter().flatten() {
            if text.len() > MAX_TASK_QUERY {
                return Err(format!(
                    "a task query is at most {MAX_TASK_QUERY} bytes, got {}",
                    text.len()
                ));
            }
        }
        if self.states.len() > 6 {
            return Err("at most 6 states in a task query".into());
        }
        Ok(self)
    }

    /// Whether a task passes the filters (not the window).
    pub fn matches(&self, id: &str, state: TaskState) -> bool {
        (self.states.is_empty() || self.states.contains(&state))
            && self.task.as_deref().is_none_or(|t| t == id)
            && self.q.as_deref().is_none_or(|q| id.contains(q))
    }

    /// Selects the page from `(id, state)` of every task in DAG order: the positions of the
    /// tasks on the page, and how many matched in all.
    pub fn select<'a>(
        &self,
        tasks: impl Iterator<Item = (&'a str, TaskState)>,
    ) -> (Vec<usize>, TaskPage) {
        let mut picked = Vec::new();
        let mut matched = 0u64;
        for (i, (id, state)) in tasks.enumerate() {
            if !self.matches(id, state) {
                continue;
            }
            if matched >= self.offset && (picked.len() as u64) < self.limit {
                picked.push(i);
            }
            matched += 1;
        }
        let page = TaskPage {
            offset: self.offset,
            limit: self.limit,
            matched,
            preview: self.preview,
        };
        (picked, page)
    }

    /// Cuts a task's texts to `preview` characters, if set.
    pub fn cut(&self, view: &mut TaskView) {
        let Some(max) = self.preview else { return };
        let max = max as usize;
        let cut = |s: &mut Option<String>| {
            if let Some(text) = s {
                if let Some((at, _)) = text.char_indices().nth(max) {
                    text.truncate(at);
                    text.push('…');
                }
            }
        };
        cut(&mut view.output);
        cut(&mut view.error);
        cut(&mut view.stderr);
        for a in &mut view.attempt_log {
            cut(&mut a.error);
            cut(&mut a.stderr);
        }
    }
}

/// A line of `dags`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DagSummary {
    pub id: String,
    pub name: String,
    pub state: DagState,
    pub counts: Counts,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ExecutorsView {
    pub total: u64,
    pub busy: u64,
    /// Size of one executor (default per-task memory limit), MB.
    #[serde(default)]
    pub ram_per_executor_mb: u64,
    /// The RAM figures the executor count was computed from, MB.
    #[serde(default)]
    pub available_ram_mb: u64,
    #[serde(default)]
    pub min_free_ram_mb: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_executors: Option<u64>,
    /// Executors the RAM figures allow: `(available - min_free) / ram_per_executor`.
    #[serde(default)]
    pub ram_slots: u64,
    /// CPU cores of the machine (tasks are CPU-bound: more executors than cores only adds
    /// memory and context switches).
    #[serde(default)]
    pub cpu_cores: u64,
    /// Which limit decided `total`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<ExecutorLimit>,
}

/// What sized a node's executor pool.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutorLimit {
    Ram,
    Cpu,
    MaxExecutors,
}

impl ExecutorLimit {
    /// The JSON spelling: `ram`, `cpu`, `max-executors`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorLimit::Ram => "ram",
            ExecutorLimit::Cpu => "cpu",
            ExecutorLimit::MaxExecutors => "max-executors",
        }
    }

    /// The inverse of [`ExecutorLimit::as_str`]; `None` for anything else.
    pub fn parse(s: &str) -> Option<ExecutorLimit> {
        [
            ExecutorLimit::Ram,
            ExecutorLimit::Cpu,
            ExecutorLimit::MaxExecutors,
        ]
        .into_iter()
        .find(|l| l.as_str() == s)
    }
}

/// This node's part in the election.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Controller,
    #[default]
    Follower,
    Candidate,
}

/// A change of controller as this node saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControllerChange {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub term: u64,
    /// The new controller (`None`: none known, an election is under way).
    pub controller: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerView {
    pub peer_id: String,
    pub executors: ExecutorsView,
    #[serde(default)]
    pub addrs: Vec<String>,
    /// Sequence number of the last replicated batch this peer applied.
    #[serde(default)]
    pub replica_seq: u64,
    /// How many batches it is behind the controller (as far as this node knows).
    #[serde(default)]
    pub replica_behind: u64,
    /// Whether the peer is a member now; a peer that went down stays listed a while.
    #[serde(default = "yes")]
    pub alive: bool,
    /// When this node last heard from the peer (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// The peer's bx3 version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Whether this node holds a direct connection to the peer (peers can also be heard of
    /// through gossip relayed by others).
    #[serde(default)]
    pub connected: bool,
}

fn yes() -> bool {
    true
}

/// `status --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusView {
    pub peer_id: String,
    pub leader: Option<String>,
    pub term: u64,
    pub listen_addrs: Vec<String>,
    pub executors: ExecutorsView,
    pub peers: Vec<PeerView>,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub dags_active: u64,
    /// Sequence number of the last replicated batch this node applied (or, on the
    /// controller, produced).
    #[serde(default)]
    pub replica_seq: u64,
    /// This node's part in the election.
    #[serde(default)]
    pub role: NodeRole,
    /// Whether the mesh is private (`--mesh-key`: only key holders can connect).
    #[serde(default)]
    pub private_mesh: bool,
    /// Controller changes this node saw in the last hour, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controller_changes: Vec<ControllerChange>,
}

/// `POST /v1/debug/block` (nodes started with `--debug-api` only): cut this node off from a
/// peer (`blocked: true`) or connect them again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BlockRequest {
    pub peer: String,
    pub blocked: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_serialize_lowercase() {
        let v = TaskView {
            state: TaskState::Skipped,
            ..TaskView::default()
        };
        let json = serde_json::to_string(&v).expect("serializable");
        assert!(json.contains(r#""state":"skipped""#), "{json}");
        assert_eq!(
            serde_json::to_string(&DagState::Cancelled).expect("serializable"),
            r#""cancelled""#
        );
    }

    #[test]
    fn task_query_selects_a_window_of_the_matches() {
        let tasks = [
            ("a1", TaskState::Succeeded),
            ("b1", TaskState::Failed),
            ("a2", TaskState::Running),
            ("a3", TaskState::Succeeded),
            ("b2", TaskState::Succeeded),
        ];
        let q = TaskQuery {
            offset: 1,
            limit: 2,
            ..TaskQuery::default()
        };
        let (picked, page) = q.select(tasks.iter().map(|(i, s)| (*i, *s)));
        assert_eq!((picked, page.matched), (vec![1, 2], 5));
        let q = TaskQuery {
            states: vec![TaskState::Succeeded],
            q: Some("a".into()),
            limit: 10,
            ..TaskQuery::default()
        };
        let (picked, page) = q.select(tasks.iter().map(|(i, s)| (*i, *s)));
        assert_eq!((picked, page.matched), (vec![0, 3], 2));
        let q = TaskQuery {
            task: Some("b2".into()),
            limit: 1,
            ..TaskQuery::default()
        };
        assert_eq!(q.select(tasks.iter().map(|(i, s)| (*i, *s))).0, vec![4]);
    }

    #[test]
    fn task_query_is_bounded_and_cuts_texts_on_char_boundaries() {
        assert!(TaskQuery {
            limit: MAX_TASK_PAGE + 1,
            ..TaskQuery::default()
        }
        .checked()
        .is_err());
        assert!(TaskQuery {
            q: Some("x".repeat(MAX_TASK_QUERY + 1)),
            ..TaskQuery::default()
        }
        .checked()
        .is_err());
        let q = TaskQuery::default().checked().expect("defaults are fine");
        assert_eq!(q.limit, 100, "no limit means a page of 100");
        let q = TaskQuery {
            preview: Some(3),
            ..TaskQuery::default()
        };
        let mut t = TaskView {
            output: Some("héllo".into()),
            stderr: Some("ab".into()),
            ..TaskView::default()
        };
        q.cut(&mut t);
        assert_eq!(t.output.as_deref(), Some("hél…"));
        assert_eq!(t.stderr.as_deref(), Some("ab"), "short texts stay whole");
    }

    #[test]
    fn counts_track_transitions() {
        let mut c = Counts::default();
        c.add(TaskState::Pending);
        c.add(TaskState::Pending);
        c.remove(TaskState::Pending);
        c.add(TaskState::Succeeded);
        c.remove(TaskState::Failed); // never below zero
        assert_eq!((c.pending, c.succeeded, c.failed, c.done()), (1, 1, 0, 1));
    }
}
