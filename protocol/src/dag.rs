//! The DAG file format and its validation.
//!
//! A DAG file is YAML (compatible with the older Python system). Loading is
//! split in two steps, "parse, don't validate":
//!
//! 1. [`DagSpec::from_yaml`] checks syntax and shape only and keeps the file's
//!    vocabulary (ids as strings, optional fields as `Option`), so that it can
//!    also be built programmatically or re-serialized.
//! 2. [`DagSpec::validate`] performs every semantic check and produces a
//!    [`ValidDag`]: ids are resolved to indices, defaults are applied, inputs
//!    are parsed into [`Input`]s, and the graph is known to be acyclic. Code
//!    holding a `ValidDag` never has to re-check any of that.
//!
//! [`parse_dag`] does both.
//!
//! Everything here is total: no input, however malformed, makes it panic,
//! because the text comes straight from users (`bx3-node submit file.yaml`)
//! and from peers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Timeout of a task when neither the task nor `defaults` sets one.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// Retries of a task when neither the task nor `defaults` sets them.
pub const DEFAULT_RETRIES: u32 = 2;
/// Largest accepted number of tasks. Also guarantees that every task index
/// fits in a `u32`, which is what [`ValidTask::deps`] and [`Input`] store.
pub const MAX_TASKS: usize = 200_000;
/// Longest accepted task id, in characters (not bytes).
pub const MAX_ID_LEN: usize = 128;
/// Longest accepted timeout: 24 hours. Anything longer is almost certainly a
/// unit mistake (`timeout: 3600` meant as minutes, say).
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// Largest accepted `retries`.
pub const MAX_RETRIES: u32 = 100;
/// Largest accepted `memory`, in MB: a wasm32 module can address at most
/// 4 GiB (65536 pages of 64 KiB), so asking for more could never be honoured.
pub const MAX_MEMORY_MB: u64 = 4096;
/// Longest accepted DAG `name`, in bytes (it is shown in every listing and log line).
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest accepted `description`, in bytes (it is kept with the DAG's state, which is
/// rewritten and replicated whenever the DAG changes).
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Longest accepted module file name, in bytes (a file name on common file systems).
pub const MAX_MODULE_NAME_BYTES: usize = 255;
/// Most inputs (command-line arguments) of one task: enough for a task that takes the
/// output of every other task (a fan-in); their total size is bounded separately.
pub const MAX_INPUTS: usize = MAX_TASKS;
/// Most environment variables of one task (after `defaults.env` is merged in).
pub const MAX_ENV: usize = 4096;
/// Longest environment variable name, in bytes.
pub const MAX_ENV_KEY_BYTES: usize = 4096;
/// Largest text of one task, in bytes: its `stdin`, its environment (names and values
/// together), or its inputs once upstream outputs are substituted (see
/// [`ValidDag::resolve_inputs`]). It is the size of the largest task output (8 MiB), so
/// any single output can be passed on as an input.
pub const MAX_TASK_TEXT_BYTES: usize = 8 * 1024 * 1024;
/// Largest validated DAG, in bytes of its text plus a small overhead per task (see
/// [`ValidDag::size_bytes`]): a DAG is stored and replicated whole, in mesh requests of at
/// most 64 MiB. `defaults` count once per task, since every task carries its own copy.
pub const MAX_DAG_BYTES: usize = 32 * 1024 * 1024;
/// Per-task overhead counted by [`ValidDag::size_bytes`] (field names, numbers, vectors).
const TASK_OVERHEAD_BYTES: usize = 64;

// ---------------------------------------------------------------------------
// Timeout
// ---------------------------------------------------------------------------

/// A task timeout as written in the file.
///
/// Deserializes from a string in [`humantime`] syntax (`"30s"`, `"2m"`,
/// `"1h 5m"`, `"500ms"`) or from a number of seconds (`45`, `1.5`, or the
/// same as a string, `"45"`). The original text is kept so that error
/// messages can quote what the user wrote rather than a normalized form.
/// Serializes as that text, which parses back to the same duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeout {
    duration: Duration,
    text: String,
}

/// A string that is not a valid [`Timeout`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error(
    "invalid timeout {text:?}: {reason}; write a duration such as \"30s\", \"2m\", \"1h 5m\", \
     \"500ms\", or a number of seconds"
)]
pub struct TimeoutParseError {
    /// The text that failed to parse.
    pub text: String,
    /// Why it failed.
    pub reason: String,
}

impl Timeout {
    /// Parses `text` as a humantime duration or a plain number of seconds.
    pub fn parse(text: &str) -> Result<Timeout, TimeoutParseError> {
        let trimmed = text.trim();
        let err = |reason: String| TimeoutParseError {
            text: text.to_owned(),
            reason,
        };
        // The Python system accepted bare numbers as seconds, also when quoted;
        // humantime would reject them ("time unit needed").
        let numeric =
            !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit() || c == '.');
        let duration = if numeric {
            if let Ok(secs) = trimmed.parse::<u64>() {
                Duration::from_secs(secs)
            } else {
                let secs: f64 = trimmed
                    .parse()
                    .map_err(|_| err("not a number".to_owned()))?;
                Duration::try_from_secs_f64(secs).map_err(|e| err(e.to_string()))?
            }
        } else {
            humantime::parse_duration(trimmed).map_err(|e| err(e.to_string()))?
        };
        Ok(Timeout {
            duration,
            text: text.to_owned(),
        })
    }

    /// A timeout of `secs` seconds, as if written `timeout: <secs>`.
    pub fn from_secs(secs: u64) -> Timeout {
        Timeout {
            duration: Duration::from_secs(secs),
            text: secs.to_string(),
        }
    }

    /// The timeout as a duration.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The timeout as written in the file.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whole milliseconds, rounded up so that a tiny non-zero timeout such as
    /// `"500us"` does not become 0 (which means "invalid"); saturates at
    /// `u64::MAX` instead of overflowing.
    pub fn as_millis(&self) -> u64 {
        let nanos = self.duration.as_nanos();
        u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Timeout {
    type Err = TimeoutParseError;
    fn from_str(s: &str) -> Result<Timeout, TimeoutParseError> {
        Timeout::parse(s)
    }
}

impl Serialize for Timeout {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timeout, D::Error> {
        struct TimeoutVisitor;

        impl Visitor<'_> for TimeoutVisitor {
            type Value = Timeout;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration such as \"30s\", \"2m\", \"1h 5m\", \"500ms\", or a number of seconds",
                )
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timeout, E> {
                Ok(Timeout::from_secs(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timeout, E> {
                u64::try_from(v)
                    .map(Timeout::from_secs)
                    .map_err(|_| E::custom(format!("invalid timeout {v}: must not be negative")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timeout, E> {
                let duration = Duration::try_from_secs_f64(v)
                    .map_err(|e| E::custom(format!("invalid timeout {v}: {e}")))?;
                Ok(Timeout {
                    duration,
                    // `{v}` of an f64 is plain decimal (never exponent form),
                    // so `Timeout::parse` reads it back as seconds.
                    text: format!("{v}"),
                })
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timeout, E> {
                Timeout::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(TimeoutVisitor)
    }
}

// ---------------------------------------------------------------------------
// The file format
// ---------------------------------------------------------------------------

/// A DAG file as written: syntactically valid, not yet semantically checked.
/// Turn it into a [`ValidDag`] with [`DagSpec::validate`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DagSpec {
    /// Human-readable name; required and non-empty (checked by `validate`,
    /// so that a missing name gets the same clear message as an empty one).
    #[serde(deserialize_with = "counted")]
    pub name: String,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "counted_option"
    )]
    pub description: Option<String>,
    /// Values for task fields that a task leaves out.
    #[serde(
        deserialize_with = "null_as_default",
        skip_serializing_if = "TaskDefaults::is_empty"
    )]
    pub defaults: TaskDefaults,
    #[serde(deserialize_with = "null_as_default")]
    pub tasks: Vec<TaskSpec>,
}

/// The `defaults:` section. Each field applies to tasks that do not set it;
/// `env` is merged key by key instead (the task's value wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskDefaults {
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "counted_option"
    )]
    pub stdin: Option<String>,
    #[serde(
        deserialize_with = "counted",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "counted_option"
    )]
    pub timeout: Option<Timeout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
}

impl TaskDefaults {
    fn is_empty(&self) -> bool {
        *self == TaskDefaults::default()
    }
}

/// One entry of `tasks:` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSpec {
    /// Required and non-empty (checked by `validate`, which can then name
    /// the task by its position, `tasks[3]`).
    #[serde(deserialize_with = "counted")]
    pub id: String,
    /// The WebAssembly module's file name, e.g. `extract.wasm`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "counted_option"
    )]
    pub module: Option<String>,
    /// Command-line arguments; see [`Input`] for how they refer to outputs.
    #[serde(deserialize_with = "counted")]
    pub inputs: Vec<String>,
    #[serde(deserialize_with = "counted")]
    pub depends_on: Vec<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "counted_option"
    )]
    pub stdin: Option<String>,
    #[serde(
        deserialize_with = "counted",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "counted_option"
    )]
    pub timeout: Option<Timeout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Memory limit in MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
}

/// Hand-written YAML often leaves a key with no value (`depends_on:`), which
/// is `null`; the Python system treated that as "empty", so we do too.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

// ---------------------------------------------------------------------------
// The expansion budget
// ---------------------------------------------------------------------------

// YAML aliases (`*name`) are expanded by the deserializer: every use builds a new copy of
// the anchored value, so a small file can describe gigabytes of strings (one 2,000-string
// list used by 5,000 tasks took a node to 1.67 GB). [`DagSpec::from_yaml`] therefore gives
// the deserializer a budget of text it may build, and every string-holding field charges
// what it built as soon as it is built. An alias-free file never comes near the budget
// (each value costs at least its own bytes in the file); a refusal names the field and the
// line where the budget ran out.

thread_local! {
    /// Units of text the deserialization running on this thread may still build; `None`
    /// when no budget applies (specs decoded from JSON or CBOR are bounded by their size).
    static BUDGET: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The expansion budget for a YAML text of `len` bytes.
fn expansion_budget(len: usize) -> usize {
    len.saturating_mul(2).saturating_add(1024 * 1024)
}

/// Runs `f` with a budget of `units` for this thread's deserialization, restoring the
/// previous state afterwards (also if `f` panics).
fn with_budget<R>(units: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BUDGET.with(|b| b.replace(Some(units))));
    f()
}

fn charge<E: de::Error>(units: usize) -> Result<(), E> {
    BUDGET.with(|b| match b.get() {
        None => Ok(()),
        Some(left) => match left.checked_sub(units) {
            Some(rest) => {
                b.set(Some(rest));
                Ok(())
            }
            None => {
                b.set(Some(0));
                Err(E::custom(
                    "the file expands to far more text than it contains (YAML aliases, \
                     `*name`, copy the anchored value at every use); write the values out or \
                     put shared settings in `defaults:`",
                ))
            }
        },
    })
}

/// How much text a deserialized value holds, in budget units (bytes, plus one per value).
trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for String {
    fn weight(&self) -> usize {
        self.len() + 1
    }
}

impl Weigh for Timeout {
    fn weight(&self) -> usize {
        self.text.len() + 1
    }
}

impl<T: Weigh> Weigh for Option<T> {
    fn weight(&self) -> usize {
        self.as_ref().map_or(1, Weigh::weight)
    }
}

impl<T: Weigh> Weigh for Vec<T> {
    fn weight(&self) -> usize {
        self.iter()
            .fold(1usize, |sum, v| sum.saturating_add(v.weight()))
    }
}

impl<K: Weigh, V: Weigh> Weigh for BTreeMap<K, V> {
    fn weight(&self) -> usize {
        self.iter().fold(1usize, |sum, (k, v)| {
            sum.saturating_add(k.weight()).saturating_add(v.weight())
        })
    }
}

/// [`null_as_default`], charging the value to the expansion budget.
fn counted<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + Weigh,
{
    let value: T = null_as_default(deserializer)?;
    charge::<D::Error>(value.weight())?;
    Ok(value)
}

/// An optional field, charging the value to the expansion budget.
fn counted_option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Weigh,
{
    let value = Option::<T>::deserialize(deserializer)?;
    charge::<D::Error>(value.weight())?;
    Ok(value)
}

// ---------------------------------------------------------------------------
// The validated form
// ---------------------------------------------------------------------------

/// A DAG that passed [`DagSpec::validate`]: ids are unique and well-formed,
/// every dependency and output reference points at an existing task listed
/// in `deps`, defaults are applied, every size is within its limit, and the
/// graph is acyclic.
///
/// It travels between nodes and lives on disk, so it is `Deserialize` — but
/// only through [`ValidDag::verify`]: decoding a value that breaks any of
/// those invariants (from a peer, or a damaged record) fails with the
/// [`DagError`] that says which, so no code behind a decoder can hold an
/// unchecked one. The fields stay public for code that builds DAGs itself;
/// the methods never panic, even on a value built wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedDag")]
pub struct ValidDag {
    pub name: String,
    pub description: Option<String>,
    pub tasks: Vec<ValidTask>,
}

/// The wire and disk form of a [`ValidDag`] before [`ValidDag::verify`] ran.
#[derive(Deserialize)]
struct UncheckedDag {
    name: String,
    description: Option<String>,
    tasks: Vec<ValidTask>,
}

impl TryFrom<UncheckedDag> for ValidDag {
    type Error = DagError;

    fn try_from(raw: UncheckedDag) -> Result<ValidDag, DagError> {
        let dag = ValidDag {
            name: raw.name,
            description: raw.description,
            tasks: raw.tasks,
        };
        dag.verify()?;
        Ok(dag)
    }
}

/// A task of a [`ValidDag`], with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidTask {
    pub id: String,
    /// The module file name as written (e.g. `"init.wasm"`).
    pub module: String,
    pub inputs: Vec<Input>,
    /// Indices into [`ValidDag::tasks`], deduplicated, in `depends_on` order.
    pub deps: Vec<u32>,
    /// Text fed to the task's stdin; `""` when not set.
    pub stdin: String,
    /// `defaults.env` merged with the task's `env` (the task wins).
    pub env: BTreeMap<String, String>,
    pub timeout_ms: u64,
    pub retries: u32,
    /// Memory limit in MB; `None` means the executor's default size.
    pub memory_mb: Option<u64>,
}

/// One command-line argument of a task (the task ABI).
///
/// In the file, an input that is exactly the id of a task in `depends_on`
/// is that task's whole output; otherwise `${id}` inside the string is
/// replaced by the output of `id` (which must be in `depends_on`), and `$${`
/// stands for a literal `${`. Anything else is passed through unchanged —
/// including a string equal to the id of a task *not* in `depends_on`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// Passed as is.
    Literal(String),
    /// The whole output of task `i`.
    Output(u32),
    /// Text with embedded outputs, concatenated in order.
    Template(Vec<Part>),
}

/// A piece of an [`Input::Template`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    Text(String),
    /// The whole output of task `i`.
    Output(u32),
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What a task-level setting belongs to: the `defaults:` section or a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Defaults,
    /// A task, by id.
    Task(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Defaults => f.write_str("defaults"),
            Subject::Task(id) => write!(f, "task {:?}", clip(id)),
        }
    }
}

/// Why a DAG file was refused. Each message names where the problem is (task
/// id, or `tasks[N]` when the id itself is the problem, or `defaults`), the
/// field, and what is wrong, so that it can be shown to the person who ran
/// `bx3-node submit` as is.
///
/// Strings quoted in messages are clipped to a readable length and escaped
/// with `{:?}`, so a hostile file cannot produce a megabyte-long or
/// terminal-garbling message.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DagError {
    /// The text is not YAML, or does not have the shape of a DAG file
    /// (wrong type, unknown field, ...). `line` and `column` are 1-based;
    /// they are `None` for the few errors serde_yaml cannot place.
    #[error("YAML error{}: {message}", fmt_location(*line, *column))]
    Yaml {
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },

    /// The file is YAML but not a mapping at all (a text file, a list, a number...).
    #[error(
        "not a DAG file: a DAG file is a YAML mapping with `name` and `tasks`, and this is {found}"
    )]
    NotADag { found: String },

    #[error("the DAG has no `name` (or it is empty); add e.g. `name: \"My pipeline\"`")]
    EmptyName,

    #[error("the DAG has no tasks; `tasks:` must list at least one task")]
    NoTasks,

    #[error(
        "the DAG's name {:?} contains a control character (a line break, a tab, ...); \
         it is shown on one line in listings and logs",
        clip(name)
    )]
    NameHasControl { name: String },

    #[error("the DAG has {count} tasks; at most {max} are allowed")]
    TooManyTasks { count: usize, max: usize },

    #[error("tasks[{index}]: `id` is missing or empty")]
    EmptyId { index: usize },

    #[error(
        "tasks[{index}]: id {:?} is {len} characters long; at most {max} are allowed",
        clip(id)
    )]
    IdTooLong {
        index: usize,
        id: String,
        len: usize,
        max: usize,
    },

    #[error("tasks[{index}]: id {:?} {reason}", clip(id))]
    InvalidId {
        index: usize,
        id: String,
        reason: &'static str,
    },

    #[error(
        "tasks[{second}]: duplicate id {:?} (already used by tasks[{first}])",
        clip(id)
    )]
    DuplicateId {
        id: String,
        first: usize,
        second: usize,
    },

    #[error(
        "task {:?}: `module` is missing or empty; set it to a file name such as \"extract.wasm\"",
        clip(task)
    )]
    MissingModule { task: String },

    #[error("task {:?}: module {:?} {reason}", clip(task), clip(module))]
    InvalidModule {
        task: String,
        module: String,
        reason: &'static str,
    },

    #[error(
        "task {:?}: depends_on names unknown task {:?}{}",
        clip(task),
        clip(dep),
        fmt_suggestion(suggestion.as_deref())
    )]
    UnknownDependency {
        task: String,
        dep: String,
        suggestion: Option<String>,
    },

    #[error("task {:?}: depends_on lists the task itself", clip(task))]
    SelfDependency { task: String },

    /// `path` is the cycle in order, each task depending on the next and the
    /// last on the first; it starts at the task that comes first in the file.
    #[error(
        "dependency cycle: {} (each task depends on the next)",
        fmt_cycle(path)
    )]
    Cycle { path: Vec<String> },

    #[error("{at}: timeout {:?} is invalid: {reason}", clip(timeout))]
    InvalidTimeout {
        at: Subject,
        timeout: String,
        reason: &'static str,
    },

    #[error("{at}: retries is {retries}; at most {max} are allowed", max = MAX_RETRIES)]
    TooManyRetries { at: Subject, retries: u32 },

    #[error("{at}: memory {memory} MB is invalid: {reason}")]
    InvalidMemory {
        at: Subject,
        memory: u64,
        reason: &'static str,
    },

    #[error(
        "task {:?}: inputs[{input}] references ${{{}}}, but {:?} is not in depends_on{}",
        clip(task),
        clip(name),
        clip(name),
        if *is_task { " (add it to depends_on)" } else { " (and no task has that id)" }
    )]
    UnknownReference {
        task: String,
        input: usize,
        name: String,
        /// Whether `name` is the id of some task of the DAG (then the fix is
        /// most likely to add it to `depends_on`).
        is_task: bool,
    },

    #[error(
        "task {:?}: inputs[{input}] has an unterminated \"${{\" in {:?}; close it with \"}}\", \
         or write \"$${{\" for a literal \"${{\"",
        clip(task),
        clip(text)
    )]
    UnterminatedReference {
        task: String,
        input: usize,
        text: String,
    },

    #[error("the YAML text is {bytes} bytes; at most {max} are allowed")]
    YamlTooLarge { bytes: usize, max: usize },

    #[error(
        "YAML error at line {line}, column {column}: nested more than {max} levels deep; \
         a DAG file needs only a few"
    )]
    YamlTooDeep {
        line: usize,
        column: usize,
        max: usize,
    },

    #[error(
        "YAML error at line {line}, column {column}: more than {max} aliases (`*name`); \
         put settings shared by many tasks in `defaults:`"
    )]
    YamlTooManyAliases {
        line: usize,
        column: usize,
        max: usize,
    },

    #[error("YAML error at line {line}, column {column}: more than {max} values in one file")]
    YamlTooManyNodes {
        line: usize,
        column: usize,
        max: usize,
    },

    /// A string or list over its size limit. `what` names it (`task "a": stdin`).
    #[error("{what} is {size} {unit}; at most {max} are allowed")]
    TooLarge {
        what: String,
        size: usize,
        max: usize,
        unit: &'static str,
    },

    #[error(
        "the DAG is {size} bytes once every task has its own copy of `defaults`; at most \
         {max} are allowed (it is stored and sent between nodes whole)"
    )]
    DagTooLarge { size: usize, max: usize },

    #[error("{at}: env {:?} {reason}", clip(key))]
    InvalidEnv {
        at: Subject,
        key: String,
        reason: &'static str,
    },

    /// Only from [`ValidDag::verify`]: a dependency listed twice.
    #[error("task {:?}: deps lists task index {index} twice", clip(task))]
    DuplicateDependency { task: String, index: u32 },

    /// Only from [`ValidDag::verify`]: an index (in `deps` or an output
    /// reference) that does not point at a task.
    #[error(
        "task {:?}: {field} refers to task index {index}, but the DAG has only {count} tasks",
        clip(task)
    )]
    BadIndex {
        task: String,
        field: String,
        index: u32,
        count: usize,
    },
}

fn fmt_location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

fn fmt_suggestion(suggestion: Option<&str>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean {:?}?)", clip(s)),
        None => String::new(),
    }
}

fn fmt_cycle(path: &[String]) -> String {
    // A cycle through thousands of tasks is unreadable in full; its two ends
    // are enough to find it in the file.
    const SHOW: usize = 8;
    let Some(first) = path.first() else {
        return String::new();
    };
    let mut out = String::new();
    if path.len() <= SHOW * 2 {
        for id in path {
            out.push_str(&clip(id));
            out.push_str(" -> ");
        }
    } else {
        for id in &path[..SHOW] {
            out.push_str(&clip(id));
            out.push_str(" -> ");
        }
        out.push_str(&format!("... ({} more) -> ", path.len() - SHOW * 2));
        for id in &path[path.len() - SHOW..] {
            out.push_str(&clip(id));
            out.push_str(" -> ");
        }
    }
    out.push_str(&clip(first));
    out
}

/// Clips every `"..."` run of a message (serde_yaml quotes values it refuses, whole).
fn clip_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('"');
        // Odd pieces are inside quotes.
        if i % 2 == 0 {
            out.push_str(&clip(part));
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Shortens user text quoted in an error message.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

impl DagError {
    fn from_yaml(err: serde_yaml::Error) -> DagError {
        let location = err.location();
        let mut message = err.to_string();
        // A document that is not a mapping: serde_yaml quotes the whole value ("invalid type:
        // string \"<the entire file>\", expected struct DagSpec"); say what it is instead.
        if let Some(rest) = message.strip_prefix("invalid type: ") {
            if message.contains("expected struct DagSpec") {
                let kind = rest.split([' ', ',']).next().unwrap_or("something else");
                let found = match kind {
                    "string" => "text",
                    "sequence" => "a list",
                    "integer" | "floating" => "a number",
                    "boolean" => "a boolean",
                    "unit" => "empty",
                    _ => "something else",
                };
                return DagError::NotADag {
                    found: found.to_string(),
                };
            }
        }
        message = clip_quoted(&message);
        // serde_yaml appends " at line L column C"; we report the location in
        // our own fields (and our own wording), so drop the duplicate.
        if let Some(loc) = &location {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(pos) = message.find(&suffix) {
                message.replace_range(pos..pos + suffix.len(), "");
            }
        }
        DagError::Yaml {
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message,
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing and validation
// ---------------------------------------------------------------------------

/// Parses and validates a DAG file: [`DagSpec::from_yaml`] then
/// [`DagSpec::validate`].
pub fn parse_dag(text: &str) -> Result<ValidDag, DagError> {
    DagSpec::from_yaml(text)?.validate()
}

impl DagSpec {
    /// Parses YAML text. Only syntax and shape are checked here (types,
    /// unknown fields); errors carry the line and column.
    ///
    /// The text is first checked by [`crate::yaml_guard`] (size, nesting, aliases, number
    /// of values) in one linear pass, and the deserializer then runs with a budget of
    /// text it may build, so no input costs more than a bounded multiple of its own size
    /// in CPU or memory.
    pub fn from_yaml(text: &str) -> Result<DagSpec, DagError> {
        crate::yaml_guard::check(text)?;
        with_budget(expansion_budget(text.len()), || serde_yaml::from_str(text))
            .map_err(DagError::from_yaml)
    }

    /// Checks everything [`from_yaml`](DagSpec::from_yaml) cannot and builds
    /// the [`ValidDag`]. Reports the first problem found, checking in this
    /// order: DAG-level fields and `defaults`, then all ids, then each task
    /// in file order (module, limits, depends_on, inputs), then cycles.
    ///
    /// Runs in O(n log n) in the size of the file (hash lookups; Kahn's
    /// algorithm instead of recursion, so deep chains cannot overflow the
    /// stack).
    pub fn validate(self) -> Result<ValidDag, DagError> {
        let DagSpec {
            name,
            description,
            defaults,
            mut tasks,
        } = self;

        check_header(&name, description.as_deref(), tasks.len())?;
        // Checked once here rather than per task, so that a bad default is
        // reported against `defaults` and not against whichever task used it.
        check_limits(
            None,
            defaults.timeout.as_ref(),
            defaults.retries,
            defaults.memory,
        )?;
        if let Some(stdin) = &defaults.stdin {
            check_text(None, "stdin", stdin.len())?;
        }
        check_env(None, &defaults.env)?;
        let mut size = name.len() + description.as_ref().map_or(0, String::len);

        // All ids first: dependency and reference checks below need the
        // complete id table. The ids are moved out of the tasks so that the
        // table can borrow them while the tasks are consumed, instead of
        // cloning 200k strings; they are moved back in at the end.
        let ids: Vec<String> = tasks
            .iter_mut()
            .map(|t| std::mem::take(&mut t.id))
            .collect();
        let mut index: HashMap<&str, u32> = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            check_id(i, id)?;
            if let Some(&first) = index.get(id.as_str()) {
                return Err(DagError::DuplicateId {
                    id: id.clone(),
                    first: first as usize,
                    second: i,
                });
            }
            index.insert(id, to_u32(i));
        }

        // `mark[j] == i + 1` iff task j is already in task i's deps: O(1)
        // dedup and membership without allocating a set per task (one task
        // may depend on 100k others).
        let mut mark = vec![0u32; tasks.len()];
        let mut valid = Vec::with_capacity(tasks.len());
        for (i, (task, id)) in tasks.into_iter().zip(&ids).enumerate() {
            let stamp = to_u32(i) + 1;

            let module = match task.module {
                Some(m) if !m.trim().is_empty() => m,
                _ => return Err(DagError::MissingModule { task: id.clone() }),
            };
            if let Some(reason) = module_problem(&module) {
                return Err(DagError::InvalidModule {
                    task: id.clone(),
                    module,
                    reason,
                });
            }
            check_limits(Some(id), task.timeout.as_ref(), task.retries, task.memory)?;
            if task.inputs.len() > MAX_INPUTS {
                return Err(DagError::TooLarge {
                    what: format!("task {:?}: inputs", clip(id)),
                    size: task.inputs.len(),
                    max: MAX_INPUTS,
                    unit: "entries",
                });
            }
            if let Some(stdin) = &task.stdin {
                check_text(Some(id), "stdin", stdin.len())?;
            }
            check_env(Some(id), &task.env)?;

            let mut deps = Vec::with_capacity(task.depends_on.len());
            for dep in &task.depends_on {
                match index.get(dep.as_str()) {
                    None => {
                        return Err(DagError::UnknownDependency {
                            suggestion: closest_id(dep, id, &index),
                            task: id.clone(),
                            dep: dep.clone(),
                        })
                    }
                    Some(&j) if j as usize == i => {
                        return Err(DagError::SelfDependency { task: id.clone() })
                    }
                    Some(&j) => {
                        if mark[j as usize] != stamp {
                            mark[j as usize] = stamp;
                            deps.push(j);
                        }
                    }
                }
            }

            let mut inputs = Vec::with_capacity(task.inputs.len());
            for (k, text) in task.inputs.into_iter().enumerate() {
                let is_dep = |j: u32| mark[j as usize] == stamp;
                inputs.push(parse_input(id, k, text, &index, is_dep)?);
            }

            check_text(Some(id), "inputs", literal_bytes(&inputs))?;

            let timeout = task.timeout.as_ref().or(defaults.timeout.as_ref());
            let mut env = defaults.env.clone();
            env.extend(task.env);
            check_merged_env(Some(id), &env)?;
            let task = ValidTask {
                id: String::new(), // moved back in below
                module,
                inputs,
                deps,
                stdin: task
                    .stdin
                    .or_else(|| defaults.stdin.clone())
                    .unwrap_or_default(),
                env,
                timeout_ms: timeout.map_or(DEFAULT_TIMEOUT_MS, Timeout::as_millis),
                retries: task.retries.or(defaults.retries).unwrap_or(DEFAULT_RETRIES),
                memory_mb: task.memory.or(defaults.memory),
            };
            // Checked as the tasks are built, so that `defaults` copied into 200,000
            // tasks is refused after the first few megabytes, not after building all.
            size = size.saturating_add(task_size(&task, id.len()));
            if size > MAX_DAG_BYTES {
                return Err(DagError::DagTooLarge {
                    size,
                    max: MAX_DAG_BYTES,
                });
            }
            valid.push(task);
        }

        for (task, id) in valid.iter_mut().zip(ids) {
            task.id = id;
        }
        let dag = ValidDag {
            name,
            description,
            tasks: valid,
        };
        dag.check_acyclic()?;
        Ok(dag)
    }
}

/// Converts a task index to the `u32` stored in [`ValidTask::deps`].
/// Callers only pass indices below [`MAX_TASKS`] (checked first), which fit.
fn to_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// The DAG-level fields: a name, a description and the task count within their limits.
fn check_header(name: &str, description: Option<&str>, tasks: usize) -> Result<(), DagError> {
    if name.trim().is_empty() {
        return Err(DagError::EmptyName);
    }
    if name.chars().any(char::is_control) {
        return Err(DagError::NameHasControl {
            name: name.to_owned(),
        });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(DagError::TooLarge {
            what: "the DAG's name".into(),
            size: name.len(),
            max: MAX_NAME_BYTES,
            unit: "bytes",
        });
    }
    if let Some(d) = description {
        if d.len() > MAX_DESCRIPTION_BYTES {
            return Err(DagError::TooLarge {
                what: "the DAG's description".into(),
                size: d.len(),
                max: MAX_DESCRIPTION_BYTES,
                unit: "bytes",
            });
        }
    }
    if tasks == 0 {
        return Err(DagError::NoTasks);
    }
    if tasks > MAX_TASKS {
        return Err(DagError::TooManyTasks {
            count: tasks,
            max: MAX_TASKS,
        });
    }
    Ok(())
}

/// `field` of `task` (`None`: of `defaults`) is `len` bytes of text.
fn check_text(task: Option<&str>, field: &str, len: usize) -> Result<(), DagError> {
    if len > MAX_TASK_TEXT_BYTES {
        return Err(DagError::TooLarge {
            what: format!("{}: {field}", subject(task)),
            size: len,
            max: MAX_TASK_TEXT_BYTES,
            unit: "bytes",
        });
    }
    Ok(())
}

/// Names and values of one `env` as written: a name is what `environ` can carry (not
/// empty, no `=`, no NUL), a value has no NUL.
fn check_env(task: Option<&str>, env: &BTreeMap<String, String>) -> Result<(), DagError> {
    for (key, value) in env {
        let reason = if key.is_empty() {
            Some("is empty")
        } else if key.len() > MAX_ENV_KEY_BYTES {
            Some("is too long (at most 4096 bytes)")
        } else if key.contains('=') {
            Some("contains \"=\", which separates a name from its value")
        } else if key.contains('\0') {
            Some("contains a NUL character")
        } else if value.contains('\0') {
            Some("has a value with a NUL character")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(DagError::InvalidEnv {
                at: subject(task),
                key: key.clone(),
                reason,
            });
        }
    }
    check_merged_env(task, env)
}

/// The environment a task runs with: at most [`MAX_ENV`] entries and
/// [`MAX_TASK_TEXT_BYTES`] of text.
fn check_merged_env(task: Option<&str>, env: &BTreeMap<String, String>) -> Result<(), DagError> {
    if env.len() > MAX_ENV {
        return Err(DagError::TooLarge {
            what: format!("{}: env", subject(task)),
            size: env.len(),
            max: MAX_ENV,
            unit: "entries",
        });
    }
    check_text(task, "env", env_bytes(env))
}

fn env_bytes(env: &BTreeMap<String, String>) -> usize {
    env.iter()
        .fold(0usize, |n, (k, v)| n.saturating_add(k.len() + v.len() + 2))
}

/// Bytes of the inputs' own text (literals and template text, not the outputs they name).
fn literal_bytes(inputs: &[Input]) -> usize {
    inputs.iter().fold(0usize, |n, input| {
        n.saturating_add(match input {
            Input::Literal(s) => s.len(),
            Input::Output(_) => 0,
            Input::Template(parts) => parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => t.len(),
                    Part::Output(_) => 0,
                })
                .sum(),
        })
    })
}

/// What one task adds to [`ValidDag::size_bytes`]; `id_len` is passed separately because
/// `validate` moves the ids back in only at the end.
fn task_size(task: &ValidTask, id_len: usize) -> usize {
    let refs: usize = task
        .inputs
        .iter()
        .map(|input| match input {
            Input::Literal(_) => 1,
            Input::Output(_) => 5,
            Input::Template(parts) => parts.len() * 5,
        })
        .sum();
    TASK_OVERHEAD_BYTES
        .saturating_add(id_len)
        .saturating_add(task.module.len())
        .saturating_add(literal_bytes(&task.inputs))
        .saturating_add(refs)
        .saturating_add(task.deps.len().saturating_mul(5))
        .saturating_add(task.stdin.len())
        .saturating_add(env_bytes(&task.env))
}

fn check_id(index: usize, id: &str) -> Result<(), DagError> {
    if id.is_empty() {
        return Err(DagError::EmptyId { index });
    }
    let len = id.chars().count();
    if len > MAX_ID_LEN {
        return Err(DagError::IdTooLong {
            index,
            id: id.to_owned(),
            len,
            max: MAX_ID_LEN,
        });
    }
    // `${` and `}` would make `${id}` references ambiguous; whitespace and
    // control characters are invisible in logs and error messages.
    let reason = if id.chars().any(char::is_whitespace) {
        Some("contains whitespace")
    } else if id.chars().any(char::is_control) {
        Some("contains a control character")
    } else if id.contains("${") {
        Some("contains \"${\", which is reserved for output references")
    } else if id.contains('}') {
        Some("contains \"}\", which would end an output reference")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DagError::InvalidId {
            index,
            id: id.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Modules are looked up by plain file name in the node's module store; a
/// path could escape that directory.
fn module_problem(module: &str) -> Option<&'static str> {
    if module.len() > MAX_MODULE_NAME_BYTES {
        Some("is longer than 255 bytes; modules are plain file names such as \"extract.wasm\"")
    } else if module.contains('/') || module.contains('\\') || module == ".." || module == "." {
        Some("is a path; modules are plain file names such as \"extract.wasm\"")
    } else if module.chars().any(char::is_control) {
        Some("contains a control character; modules are plain file names such as \"extract.wasm\"")
    } else {
        None
    }
}

/// Range checks of the numeric settings that are set (`None` = not set).
/// `task` is the id of the task they belong to, `None` for `defaults`; the
/// [`Subject`] is only built on error, to keep the happy path allocation-free.
fn check_limits(
    task: Option<&str>,
    timeout: Option<&Timeout>,
    retries: Option<u32>,
    memory: Option<u64>,
) -> Result<(), DagError> {
    if let Some(t) = timeout {
        check_timeout_ms(
            task,
            || t.as_str().to_owned(),
            t.duration().is_zero(),
            t.as_millis(),
        )?;
    }
    if let Some(r) = retries {
        check_retries(task, r)?;
    }
    if let Some(m) = memory {
        check_memory(task, m)?;
    }
    Ok(())
}

fn subject(task: Option<&str>) -> Subject {
    match task {
        Some(id) => Subject::Task(id.to_owned()),
        None => Subject::Defaults,
    }
}

/// `text` renders the timeout as the user wrote it; only called on error.
fn check_timeout_ms(
    task: Option<&str>,
    text: impl FnOnce() -> String,
    is_zero: bool,
    ms: u64,
) -> Result<(), DagError> {
    let reason = if is_zero {
        "it must be greater than zero"
    } else if ms > MAX_TIMEOUT_MS {
        "it must be at most 24h"
    } else {
        return Ok(());
    };
    Err(DagError::InvalidTimeout {
        at: subject(task),
        timeout: text(),
        reason,
    })
}

fn check_retries(task: Option<&str>, retries: u32) -> Result<(), DagError> {
    if retries > MAX_RETRIES {
        return Err(DagError::TooManyRetries {
            at: subject(task),
            retries,
        });
    }
    Ok(())
}

fn check_memory(task: Option<&str>, memory: u64) -> Result<(), DagError> {
    let reason = if memory == 0 {
        "it must be at least 1 MB"
    } else if memory > MAX_MEMORY_MB {
        "a wasm32 module can address at most 4 GiB, so memory must be at most 4096 (MB)"
    } else {
        return Ok(());
    };
    Err(DagError::InvalidMemory {
        at: subject(task),
        memory,
        reason,
    })
}

/// Parses one input string per the task ABI (see [`Input`]). `is_dep(j)`
/// tells whether task `j` is in this task's `depends_on`.
fn parse_input(
    task: &str,
    input: usize,
    text: String,
    index: &HashMap<&str, u32>,
    is_dep: impl Fn(u32) -> bool,
) -> Result<Input, DagError> {
    if let Some(&j) = index.get(text.as_str()) {
        if is_dep(j) {
            return Ok(Input::Output(j));
        }
    }
    if !text.contains("${") {
        return Ok(Input::Literal(text));
    }

    let mut parts = Vec::new();
    let mut pending = String::new();
    let mut rest = text.as_str();
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            // `$${`: an escaped, literal `${`.
            pending.push_str(&rest[..pos - 1]);
            pending.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        pending.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let Some(end) = after.find('}') else {
            return Err(DagError::UnterminatedReference {
                task: task.to_owned(),
                input,
                text: text.clone(),
            });
        };
        let name = &after[..end];
        match index.get(name) {
            Some(&j) if is_dep(j) => {
                if !pending.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut pending)));
                }
                parts.push(Part::Output(j));
            }
            found => {
                return Err(DagError::UnknownReference {
                    task: task.to_owned(),
                    input,
                    name: name.to_owned(),
                    is_task: found.is_some(),
                })
            }
        }
        rest = &after[end + 1..];
    }
    pending.push_str(rest);

    if parts.is_empty() {
        // Only escapes: the result is plain text.
        return Ok(Input::Literal(pending));
    }
    if !pending.is_empty() {
        parts.push(Part::Text(pending));
    }
    Ok(Input::Template(parts))
}

/// The id closest to the unknown `name` by edit distance, if close enough to
/// be a plausible typo. Ties go to the task earliest in the file.
fn closest_id(name: &str, this_task: &str, index: &HashMap<&str, u32>) -> Option<String> {
    let wanted: Vec<char> = name.chars().collect();
    // Allow about one typo per four characters, at most three: beyond that
    // the "suggestion" is usually unrelated and only confuses.
    let max = (wanted.len() / 4).clamp(1, 3);
    if wanted.len() > MAX_ID_LEN + max {
        return None;
    }
    let mut scratch = Scratch::default();
    let mut best: Option<(usize, u32, &str)> = None;
    for (&id, &i) in index {
        if id == this_task {
            continue;
        }
        scratch.id.clear();
        scratch.id.extend(id.chars());
        let Some(d) = bounded_levenshtein(&wanted, &scratch.id, max, &mut scratch.rows) else {
            continue;
        };
        if best.is_none_or(|(bd, bi, _)| (d, i) < (bd, bi)) {
            best = Some((d, i, id));
        }
    }
    best.map(|(_, _, id)| id.to_owned())
}

#[derive(Default)]
struct Scratch {
    id: Vec<char>,
    rows: (Vec<usize>, Vec<usize>),
}

/// Levenshtein distance between `a` and `b` if it is at most `max`, else
/// `None`. Only the diagonal band of width `2 * max + 1` is computed, so one
/// comparison costs O(len * max): with 200k ids a typo must not cost seconds.
fn bounded_levenshtein(
    a: &[char],
    b: &[char],
    max: usize,
    rows: &mut (Vec<usize>, Vec<usize>),
) -> Option<usize> {
    let (n, m) = (a.len(), b.len());
    if n.abs_diff(m) > max {
        return None;
    }
    let inf = max + 1;
    let (prev, cur) = rows;
    prev.clear();
    prev.resize(m + 1, inf);
    cur.clear();
    cur.resize(m + 1, inf);
    for (j, cell) in prev.iter_mut().enumerate().take(max.min(m) + 1) {
        *cell = j;
    }
    for i in 1..=n {
        let lo = i.saturating_sub(max).max(1);
        let hi = m.min(i + max);
        cur[0] = if i <= max { i } else { inf };
        // Cells just outside the band may hold values from two rows ago;
        // the next row reads them, so reset them to "too far".
        if lo > 1 {
            cur[lo - 1] = inf;
        }
        let mut row_min = cur[0];
        for j in lo..=hi {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let v = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            cur[j] = v.min(inf);
            row_min = row_min.min(cur[j]);
        }
        if hi < m {
            cur[hi + 1] = inf;
        }
        if row_min > max {
            return None;
        }
        std::mem::swap(prev, cur);
    }
    let d = prev[m];
    (d <= max).then_some(d)
}

// ---------------------------------------------------------------------------
// ValidDag
// ---------------------------------------------------------------------------

/// A task's inputs would resolve to more text than a task may receive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the inputs of task {:?} resolve to {size} bytes with the outputs they name substituted; \
     at most {max} bytes (8 MiB) can be passed to a task",
    clip(task)
)]
pub struct InputsTooLarge {
    pub task: String,
    pub size: usize,
    pub max: usize,
}

impl ValidDag {
    /// Resolves task `task`'s inputs to argv strings given upstream outputs.
    ///
    /// `output(i)` returns the output of task `i`; for a verified DAG it is
    /// only called for `i` in `tasks[task].deps`. Returns an empty vector if
    /// `task` is out of range.
    ///
    /// The size is worked out first and the strings are built only if it is
    /// at most [`MAX_TASK_TEXT_BYTES`]: `"${a}${a}…"` two hundred times over a
    /// 1 MiB output would otherwise build 200 MiB per attempt. Over the limit,
    /// the error names the task and the size, and nothing was allocated.
    pub fn resolve_inputs<'a>(
        &self,
        task: usize,
        output: impl Fn(u32) -> &'a str,
    ) -> Result<Vec<String>, InputsTooLarge> {
        let Some(t) = self.tasks.get(task) else {
            return Ok(Vec::new());
        };
        let mut size = 0usize;
        for input in &t.inputs {
            size = size.saturating_add(match input {
                Input::Literal(s) => s.len(),
                Input::Output(i) => output(*i).len(),
                Input::Template(parts) => parts.iter().fold(0usize, |n, part| {
                    n.saturating_add(match part {
                        Part::Text(text) => text.len(),
                        Part::Output(i) => output(*i).len(),
                    })
                }),
            });
        }
        if size > MAX_TASK_TEXT_BYTES {
            return Err(InputsTooLarge {
                task: t.id.clone(),
                size,
                max: MAX_TASK_TEXT_BYTES,
            });
        }
        Ok(t.inputs
            .iter()
            .map(|input| match input {
                Input::Literal(s) => s.clone(),
                Input::Output(i) => output(*i).to_owned(),
                Input::Template(parts) => {
                    let mut s = String::new();
                    for part in parts {
                        match part {
                            Part::Text(text) => s.push_str(text),
                            Part::Output(i) => s.push_str(output(*i)),
                        }
                    }
                    s
                }
            })
            .collect())
    }

    /// Task `task`'s inputs as they were written in the file: `id` for a whole output,
    /// `${id}` inside a template, `$${` for a literal `${`. Empty if `task` is out of range.
    pub fn inputs_as_written(&self, task: usize) -> Vec<String> {
        let Some(t) = self.tasks.get(task) else {
            return Vec::new();
        };
        let id = |i: u32| self.tasks.get(i as usize).map_or("?", |t| t.id.as_str());
        let escape = |s: &str| s.replace("${", "$${");
        t.inputs
            .iter()
            .map(|input| match input {
                Input::Literal(s) => escape(s),
                Input::Output(i) => id(*i).to_owned(),
                Input::Template(parts) => parts
                    .iter()
                    .map(|p| match p {
                        Part::Text(text) => escape(text),
                        Part::Output(i) => format!("${{{}}}", id(*i)),
                    })
                    .collect(),
            })
            .collect()
    }

    /// For each task, the indices of the tasks that depend on it, ascending.
    pub fn dependents(&self) -> Vec<Vec<u32>> {
        let n = self.tasks.len();
        let mut out = vec![Vec::new(); n];
        for (i, task) in self.tasks.iter().enumerate() {
            for &d in &task.deps {
                if let Some(list) = out.get_mut(d as usize) {
                    list.push(to_u32(i));
                }
            }
        }
        out
    }

    /// Task index by id. A linear scan; for many lookups build a map once
    /// with [`ValidDag::id_index`].
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.id == id)
    }

    /// Map from task id to index.
    pub fn id_index(&self) -> HashMap<&str, u32> {
        self.tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.as_str(), to_u32(i)))
            .collect()
    }

    /// Task indices in a topological order (every task after all its deps).
    ///
    /// Deterministic and stable with respect to file order: among the tasks
    /// that are ready, the one earliest in the file comes first, so a file
    /// already written in dependency order comes back unchanged. On an
    /// unverified DAG with a cycle, the tasks on or behind the cycle are
    /// left out.
    pub fn topo_order(&self) -> Vec<u32> {
        let n = self.tasks.len();
        // Dependents in compressed (CSR) form: two flat vectors instead of
        // one allocation per task.
        let mut indegree = vec![0u32; n];
        let mut start = vec![0usize; n + 1];
        for (i, task) in self.tasks.iter().enumerate() {
            for &d in &task.deps {
                if (d as usize) < n {
                    indegree[i] += 1;
                    start[d as usize + 1] += 1;
                }
            }
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut edges = vec![0u32; start[n]];
        for (i, task) in self.tasks.iter().enumerate() {
            for &d in &task.deps {
                if let Some(slot) = fill.get_mut(d as usize) {
                    edges[*slot] = to_u32(i);
                    *slot += 1;
                }
            }
        }

        let mut ready: BinaryHeap<Reverse<u32>> = (0..n)
            .filter(|&i| indegree[i] == 0)
            .map(|i| Reverse(to_u32(i)))
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            let i = i as usize;
            for &j in &edges[start[i]..start[i + 1]] {
                let j = j as usize;
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    ready.push(Reverse(to_u32(j)));
                }
            }
        }
        order
    }

    /// Distinct module file names referenced, sorted.
    pub fn module_names(&self) -> Vec<String> {
        let names: BTreeSet<&str> = self.tasks.iter().map(|t| t.module.as_str()).collect();
        names.into_iter().map(str::to_owned).collect()
    }

    /// Re-checks every invariant that [`DagSpec::validate`] establishes, and that code
    /// holding a `ValidDag` relies on: a name; 1 to [`MAX_TASKS`] tasks with unique,
    /// well-formed ids; plain module file names; timeouts, retries and memory in range;
    /// every size within its limit; `deps` in range, without the task itself and without
    /// repeats; every output an input names listed in `deps`; no cycle. Deserializing a
    /// `ValidDag` runs it, so a value from a peer or from disk is always checked.
    ///
    /// O(n log n) in the size of the DAG, like `validate`.
    pub fn verify(&self) -> Result<(), DagError> {
        let n = self.tasks.len();
        check_header(&self.name, self.description.as_deref(), n)?;
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(n);
        for (i, task) in self.tasks.iter().enumerate() {
            check_id(i, &task.id)?;
            if let Some(&first) = seen.get(task.id.as_str()) {
                return Err(DagError::DuplicateId {
                    id: task.id.clone(),
                    first,
                    second: i,
                });
            }
            seen.insert(&task.id, i);
        }

        let mut size = self.name.len() + self.description.as_ref().map_or(0, String::len);
        let mut mark = vec![0u32; n];
        for (i, task) in self.tasks.iter().enumerate() {
            let stamp = to_u32(i) + 1;
            let at = Some(task.id.as_str());
            if task.module.trim().is_empty() {
                return Err(DagError::MissingModule {
                    task: task.id.clone(),
                });
            }
            if let Some(reason) = module_problem(&task.module) {
                return Err(DagError::InvalidModule {
                    task: task.id.clone(),
                    module: task.module.clone(),
                    reason,
                });
            }
            check_timeout_ms(
                at,
                || format!("{}ms", task.timeout_ms),
                task.timeout_ms == 0,
                task.timeout_ms,
            )?;
            check_retries(at, task.retries)?;
            if let Some(m) = task.memory_mb {
                check_memory(at, m)?;
            }
            if task.inputs.len() > MAX_INPUTS {
                return Err(DagError::TooLarge {
                    what: format!("task {:?}: inputs", clip(&task.id)),
                    size: task.inputs.len(),
                    max: MAX_INPUTS,
                    unit: "entries",
                });
            }
            check_text(at, "inputs", literal_bytes(&task.inputs))?;
            check_text(at, "stdin", task.stdin.len())?;
            check_env(at, &task.env)?;

            let bad_index = |field: String, index: u32| DagError::BadIndex {
                task: task.id.clone(),
                field,
                index,
                count: n,
            };
            for (k, &d) in task.deps.iter().enumerate() {
                let Some(slot) = mark.get_mut(d as usize) else {
                    return Err(bad_index(format!("deps[{k}]"), d));
                };
                if d as usize == i {
                    return Err(DagError::SelfDependency {
                        task: task.id.clone(),
                    });
                }
                if *slot == stamp {
                    return Err(DagError::DuplicateDependency {
                        task: task.id.clone(),
                        index: d,
                    });
                }
                *slot = stamp;
            }
            for (k, input) in task.inputs.iter().enumerate() {
                let refs: Vec<u32> = match input {
                    Input::Literal(_) => Vec::new(),
                    Input::Output(j) => vec![*j],
                    Input::Template(parts) => parts
                        .iter()
                        .filter_map(|p| match p {
                            Part::Output(j) => Some(*j),
                            Part::Text(_) => None,
                        })
                        .collect(),
                };
                for j in refs {
                    match mark.get(j as usize) {
                        None => return Err(bad_index(format!("inputs[{k}]"), j)),
                        Some(&s) if s != stamp => {
                            return Err(DagError::UnknownReference {
                                task: task.id.clone(),
                                input: k,
                                name: self
                                    .tasks
                                    .get(j as usize)
                                    .map(|t| t.id.clone())
                                    .unwrap_or_default(),
                                is_task: true,
                            })
                        }
                        Some(_) => {}
                    }
                }
            }
            size = size.saturating_add(task_size(task, task.id.len()));
            if size > MAX_DAG_BYTES {
                return Err(DagError::DagTooLarge {
                    size,
                    max: MAX_DAG_BYTES,
                });
            }
        }
        self.check_acyclic()
    }

    /// The DAG's size as [`MAX_DAG_BYTES`] counts it: its text (name, description, ids,
    /// module names, input text, stdin, env) plus a small overhead per task and reference.
    pub fn size_bytes(&self) -> usize {
        self.tasks.iter().fold(
            self.name.len() + self.description.as_ref().map_or(0, String::len),
            |n, t| n.saturating_add(task_size(t, t.id.len())),
        )
    }

    /// Errors with the first cycle (by file order) if the graph has one.
    fn check_acyclic(&self) -> Result<(), DagError> {
        let order = self.topo_order();
        let n = self.tasks.len();
        if order.len() == n {
            return Ok(());
        }
        let mut done = vec![false; n];
        for &i in &order {
            done[i as usize] = true;
        }
        // Every task Kahn's algorithm could not schedule has an unscheduled
        // dependency, so walking from one such task to the next must revisit
        // a task within n steps: that revisit closes the cycle.
        let Some(startpos) = done.iter().position(|d| !d) else {
            return Ok(());
        };
        let mut on_path = vec![usize::MAX; n];
        let mut path: Vec<usize> = Vec::new();
        let mut cur = startpos;
        let cycle = loop {
            if on_path[cur] != usize::MAX {
                break &path[on_path[cur]..];
            }
            on_path[cur] = path.len();
            path.push(cur);
            let next = self.tasks[cur]
                .deps
                .iter()
                .map(|&d| d as usize)
                .find(|&d| d < n && !done[d]);
            match next {
                Some(d) => cur = d,
                // Unreachable for a consistent graph; report what we have
                // rather than loop or panic.
                None => break &path[..],
            }
        };
        // Start the report at the cycle's earliest task in the file, so the
        // same cycle is always named the same way.
        let first = cycle
            .iter()
            .enumerate()
            .min_by_key(|&(_, &t)| t)
            .map_or(0, |(k, _)| k);
        let path = cycle[first..]
            .iter()
            .chain(&cycle[..first])
            .map(|&t| self.tasks[t].id.clone())
            .collect();
        Err(DagError::Cycle { path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(yaml: &str) -> ValidDag {
        match parse_dag(yaml) {
            Ok(dag) => dag,
            Err(e) => panic!("refused: {e}\n---\n{yaml}"),
        }
    }

    #[test]
    fn inputs_as_written_round_trip_through_the_parser() {
        let dag = ok(r#"
name: t
tasks:
  - id: a
    module: m.wasm
    inputs: ["plain", "cost $${x}"]
  - id: b
    module: m.wasm
    inputs: ["a", "pre-${a}-post", "x$${y}${a}"]
    depends_on: [a]
"#);
        assert_eq!(dag.inputs_as_written(0), vec!["plain", "cost $${x}"]);
        assert_eq!(
            dag.inputs_as_written(1),
            vec!["a", "pre-${a}-post", "x$${y}${a}"]
        );
        assert!(dag.inputs_as_written(7).is_empty());
    }

    fn err(yaml: &str) -> DagError {
        match parse_dag(yaml) {
            Ok(dag) => panic!("accepted: {dag:?}\n---\n{yaml}"),
            Err(e) => e,
        }
    }

    /// A one-task DAG whose task has the extra YAML lines `task` (indented by
    /// the caller to 4 spaces).
    fn one_task(task: &str) -> String {
        format!("name: x\ntasks:\n  - id: a\n    module: a.wasm\n{task}")
    }

    /// Two tasks `a` and `b`; `b` gets the extra lines.
    fn two_tasks(b: &str) -> String {
        format!(
            "name: x\ntasks:\n  - id: a\n    module: a.wasm\n  - id: b\n    module: b.wasm\n{b}"
        )
    }

    type Check = fn(&DagError) -> bool;

    #[test]
    fn bad_dags_are_refused_with_useful_messages() {
        let long_id = "x".repeat(MAX_ID_LEN + 1);
        let table: Vec<(String, Check, Vec<&str>)> = vec![
            // --- syntax and shape (from_yaml), with locations ---
            (
                "name: x\n  bad: indent\n".into(),
                |e| matches!(e, DagError::Yaml { line: Some(2), column: Some(6), .. }),
                vec!["line 2, column 6", "mapping values are not allowed"],
            ),
            (
                "name: x\ntasks:\n  - id: a\n    module: \"unclosed\n".into(),
                |e| matches!(e, DagError::Yaml { line: Some(_), column: Some(_), .. }),
                vec!["YAML error at line"],
            ),
            (
                "# A README\n\nSome prose, not a DAG at all.\n".into(),
                |e| matches!(e, DagError::NotADag { .. }),
                vec!["not a DAG file", "this is text"],
            ),
            (
                "- a\n- b\n".into(),
                |e| matches!(e, DagError::NotADag { .. }),
                vec!["not a DAG file", "a list"],
            ),
            (
                format!("name: x\ntasks:\n  - id: a\n    module: [\"{}\"]\n", "y".repeat(5000)),
                |e| matches!(e, DagError::Yaml { .. }) && e.to_string().len() < 400,
                vec!["module"],
            ),
            (
                "name: x\nnmae: y\ntasks: []\n".into(),
                |e| matches!(e, DagError::Yaml { line: Some(2), column: Some(1), .. }),
                vec!["line 2, column 1", "unknown field `nmae`", "`name`"],
            ),
            (
                one_task("    depend_on: []\n"),
                |e| matches!(e, DagError::Yaml { line: Some(5), column: Some(5), .. }),
                vec!["line 5, column 5", "tasks[0]", "unknown field `depend_on`", "`depends_on`"],
            ),
            (
                "name: x\ndefaults:\n  timout: 3\ntasks: []\n".into(),
                |e| matches!(e, DagError::Yaml { line: Some(3), column: Some(3), .. }),
                vec!["line 3, column 3", "defaults", "unknown field `timout`"],
            ),
            (
                one_task("    inputs: 5\n"),
                |e| matches!(e, DagError::Yaml { line: Some(5), column: Some(13), .. }),
                vec!["tasks[0].inputs", "expected a sequence"],
            ),
            (
                one_task("    env: [A, B]\n"),
                |e| matches!(e, DagError::Yaml { line: Some(5), .. }),
                vec!["tasks[0].env", "expected a map"],
            ),
            (
                one_task("    timeout: soon\n"),
                |e| matches!(e, DagError::Yaml { line: Some(5), column: Some(14), .. }),
                vec!["tasks[0].timeout", "\"soon\"", "30s"],
            ),
            (
                one_task("    timeout: -5\n"),
                |e| matches!(e, DagError::Yaml { line: Some(5), .. }),
                vec!["tasks[0].timeout", "negative"],
            ),
            (
                one_task("    retries: -1\n"),
                |e| matches!(e, DagError::Yaml { line: Some(5), .. }),
                vec!["tasks[0].retries", "-1"],
            ),
            (
                one_task("    id: again\n"),
                |e| matches!(e, DagError::Yaml { line: Some(3), .. }),
                vec!["tasks[0]", "duplicate field `id`"],
            ),
            (
                "just a string".into(),
                |e| matches!(e, DagError::NotADag { .. }),
                vec!["not a DAG file", "`name` and `tasks`", "this is text"],
            ),
            // --- DAG-level checks ---
            (
                "name: \"\"\ntasks:\n  - id: a\n    module: a.wasm\n".into(),
                |e| matches!(e, DagError::EmptyName),
                vec!["`name`"],
            ),
            (
                "tasks:\n  - id: a\n    module: a.wasm\n".into(),
                |e| matches!(e, DagError::EmptyName),
                vec!["`name`"],
            ),
            ("name: x\ntasks: []\n".into(), |e| matches!(e, DagError::NoTasks), vec!["no tasks"]),
            ("name: x\n".into(), |e| matches!(e, DagError::NoTasks), vec!["no tasks"]),
            ("".into(), |e| matches!(e, DagError::EmptyName), vec!["name"]),
            // --- ids ---
            (
                two_tasks("  - id: \"\"\n    module: c.wasm\n"),
                |e| matches!(e, DagError::EmptyId { index: 2 }),
                vec!["tasks[2]", "`id`"],
            ),
            (
                "name: x\ntasks:\n  - module: a.wasm\n".into(),
                |e| matches!(e, DagError::EmptyId { index: 0 }),
                vec!["tasks[0]", "`id`"],
            ),
            (
                format!("name: x\ntasks:\n  - id: {long_id}\n    module: a.wasm\n"),
                |e| matches!(e, DagError::IdTooLong { index: 0, len: 129, .. }),
                vec!["tasks[0]", "129 characters", "128"],
            ),
            (
                "name: x\ntasks:\n  - id: \"a b\"\n    module: a.wasm\n".into(),
                |e| matches!(e, DagError::InvalidId { index: 0, .. }),
                vec!["tasks[0]", "\"a b\"", "whitespace"],
            ),
            (
                "name: x\ntasks:\n  - id: \"a\\tb\"\n    module: a.wasm\n".into(),
                |e| matches!(e, DagError::InvalidId { index: 0, .. }),
                vec!["tasks[0]", "\"a\\tb\"", "whitespace"],
            ),
            (
                "name: x\ntasks:\n  - id: \"a${b\"\n    module: a.wasm\n".into(),
                |e| matches!(e, DagError::InvalidId { index: 0, .. }),
                vec!["tasks[0]", "\"${\""],
            ),
            (
                "name: x\ntasks:\n  - id: \"a}\"\n    module: a.wasm\n".into(),
                |e| matches!(e, DagError::InvalidId { index: 0, .. }),
                vec!["tasks[0]", "\"}\""],
            ),
            (
                "name: x\ntasks:\n  - id: \"a\\u0007\"\n    module: a.wasm\n".into(),
                |e| matches!(e, DagError::InvalidId { index: 0, .. }),
                vec!["tasks[0]", "control character"],
            ),
            (
                two_tasks("  - id: a\n    module: c.wasm\n"),
                |e| matches!(e, DagError::DuplicateId { first: 0, second: 2, .. }),
                vec!["tasks[2]", "tasks[0]", "duplicate id \"a\""],
            ),
            // --- module ---
            (
                "name: x\ntasks:\n  - id: a\n".into(),
                |e| matches!(e, DagError::MissingModule { .. }),
                vec!["task \"a\"", "`module`", "missing"],
            ),
            (
                "name: x\ntasks:\n  - id: a\n    module: \" \"\n".into(),
                |e| matches!(e, DagError::MissingModule { .. }),
                vec!["task \"a\"", "`module`"],
            ),
            (
                "name: x\ntasks:\n  - id: a\n    module: ../evil.wasm\n".into(),
                |e| matches!(e, DagError::InvalidModule { .. }),
                vec!["task \"a\"", "\"../evil.wasm\"", "path"],
            ),
            (
                "name: x\ntasks:\n  - id: a\n    module: dir/a.wasm\n".into(),
                |e| matches!(e, DagError::InvalidModule { .. }),
                vec!["task \"a\"", "module", "path"],
            ),
            (
                "name: x\ntasks:\n  - id: a\n    module: 'dir\\a.wasm'\n".into(),
                |e| matches!(e, DagError::InvalidModule { .. }),
                vec!["task \"a\"", "module", "path"],
            ),
            (
                "name: x\ntasks:\n  - id: a\n    module: ..\n".into(),
                |e| matches!(e, DagError::InvalidModule { .. }),
                vec!["task \"a\"", "\"..\"", "path"],
            ),
            // --- depends_on ---
            (
                "name: x\ntasks:\n  - id: init\n    module: a.wasm\n  - id: greet_1\n    module: g.wasm\n    depends_on: [int]\n".into(),
                |e| matches!(e, DagError::UnknownDependency { suggestion: Some(s), .. } if s == "init"),
                vec![r#"task "greet_1": depends_on names unknown task "int" (did you mean "init"?)"#],
            ),
            (
                two_tasks("    depends_on: [zzzzzz]\n"),
                |e| matches!(e, DagError::UnknownDependency { suggestion: None, .. }),
                vec!["task \"b\"", "depends_on", "\"zzzzzz\""],
            ),
            (
                two_tasks("    depends_on: [a, b]\n"),
                |e| matches!(e, DagError::SelfDependency { .. }),
                vec!["task \"b\"", "depends_on", "itself"],
            ),
            (
                "name: x\ntasks:\n  - {id: a, module: m.wasm, depends_on: [b]}\n  - {id: b, module: m.wasm, depends_on: [c]}\n  - {id: c, module: m.wasm, depends_on: [a]}\n".into(),
                |e| matches!(e, DagError::Cycle { path } if path.len() == 3),
                vec!["cycle: a -> b -> c -> a"],
            ),
            (
                // The cycle is reported from its earliest task in the file,
                // without the tail (z) that leads into it.
                "name: x\ntasks:\n  - {id: root, module: m.wasm}\n  - {id: z, module: m.wasm, depends_on: [root, a]}\n  - {id: c, module: m.wasm, depends_on: [a]}\n  - {id: a, module: m.wasm, depends_on: [b]}\n  - {id: b, module: m.wasm, depends_on: [root, c]}\n".into(),
                |e| matches!(e, DagError::Cycle { path } if path.len() == 3),
                vec!["cycle: c -> a -> b -> c"],
            ),
            // --- limits ---
            (
                one_task("    timeout: 0\n"),
                |e| matches!(e, DagError::InvalidTimeout { at: Subject::Task(t), .. } if t == "a"),
                vec!["task \"a\"", "timeout \"0\"", "greater than zero"],
            ),
            (
                one_task("    timeout: 0s\n"),
                |e| matches!(e, DagError::InvalidTimeout { .. }),
                vec!["task \"a\"", "timeout \"0s\""],
            ),
            (
                one_task("    timeout: 25h\n"),
                |e| matches!(e, DagError::InvalidTimeout { .. }),
                vec!["task \"a\"", "timeout \"25h\"", "24h"],
            ),
            (
                one_task("    timeout: 86401\n"),
                |e| matches!(e, DagError::InvalidTimeout { .. }),
                vec!["task \"a\"", "\"86401\"", "24h"],
            ),
            (
                "name: x\ndefaults:\n  timeout: 0s\ntasks:\n  - id: a\n    module: a.wasm\n    timeout: 5s\n".into(),
                |e| matches!(e, DagError::InvalidTimeout { at: Subject::Defaults, .. }),
                vec!["defaults: timeout \"0s\""],
            ),
            (
                one_task("    retries: 101\n"),
                |e| matches!(e, DagError::TooManyRetries { retries: 101, .. }),
                vec!["task \"a\"", "retries is 101", "100"],
            ),
            (
                "name: x\ndefaults: {retries: 1000}\ntasks:\n  - {id: a, module: a.wasm}\n".into(),
                |e| matches!(e, DagError::TooManyRetries { at: Subject::Defaults, .. }),
                vec!["defaults", "retries is 1000"],
            ),
            (
                one_task("    memory: 0\n"),
                |e| matches!(e, DagError::InvalidMemory { memory: 0, .. }),
                vec!["task \"a\"", "memory 0 MB", "at least 1"],
            ),
            (
                one_task("    memory: 8192\n"),
                |e| matches!(e, DagError::InvalidMemory { memory: 8192, .. }),
                vec!["task \"a\"", "memory 8192 MB", "4 GiB", "4096"],
            ),
            (
                one_task("    memory: 70000\n"),
                |e| matches!(e, DagError::InvalidMemory { .. }),
                vec!["task \"a\"", "memory 70000 MB"],
            ),
            (
                "name: x\ndefaults: {memory: 5000}\ntasks:\n  - {id: a, module: a.wasm}\n".into(),
                |e| matches!(e, DagError::InvalidMemory { at: Subject::Defaults, .. }),
                vec!["defaults: memory 5000 MB"],
            ),
            // --- input references ---
            (
                "name: x\ntasks:\n  - {id: a, module: m.wasm}\n  - {id: c, module: m.wasm}\n  - id: b\n    module: m.wasm\n    depends_on: [a]\n    inputs: [\"${a}\", \"x-${c}\"]\n".into(),
                |e| matches!(e, DagError::UnknownReference { input: 1, is_task: true, .. }),
                vec![r#"task "b": inputs[1] references ${c}, but "c" is not in depends_on (add it to depends_on)"#],
            ),
            (
                two_tasks("    depends_on: [a]\n    inputs: [\"${nope}\"]\n"),
                |e| matches!(e, DagError::UnknownReference { input: 0, is_task: false, .. }),
                vec!["task \"b\"", "inputs[0]", "${nope}", "no task has that id"],
            ),
            (
                two_tasks("    depends_on: [a]\n    inputs: [\"ok\", \"${}\"]\n"),
                |e| matches!(e, DagError::UnknownReference { input: 1, .. }),
                vec!["task \"b\"", "inputs[1]", "${}"],
            ),
            (
                two_tasks("    depends_on: [a]\n    inputs: [\"pre-${a\"]\n"),
                |e| matches!(e, DagError::UnterminatedReference { input: 0, .. }),
                vec!["task \"b\"", "inputs[0]", "unterminated", "$${"],
            ),
        ];

        for (yaml, is, says) in &table {
            let e = err(yaml);
            let msg = e.to_string();
            assert!(is(&e), "wrong variant {e:?}\n---\n{yaml}");
            for word in says {
                assert!(msg.contains(word), "{msg:?} lacks {word:?}\n---\n{yaml}");
            }
        }
    }

    #[test]
    fn too_many_tasks() {
        let task = TaskSpec {
            id: "t".into(),
            module: Some("m.wasm".into()),
            ..TaskSpec::default()
        };
        let spec = DagSpec {
            name: "big".into(),
            tasks: vec![task; MAX_TASKS + 1],
            ..DagSpec::default()
        };
        let e = spec.validate().err();
        assert_eq!(
            e,
            Some(DagError::TooManyTasks {
                count: MAX_TASKS + 1,
                max: MAX_TASKS
            })
        );
    }

    #[test]
    fn suggestion_never_names_the_task_itself() {
        let e = err(&two_tasks("    depends_on: [bb]\n"));
        // "b" is at distance 1 but is the task itself; "a" is at distance 2.
        assert!(
            matches!(
                e,
                DagError::UnknownDependency {
                    suggestion: None,
                    ..
                }
            ),
            "{e}"
        );
    }

    const HELLO_FANOUT: &str = r#"
name: "hello_fanout"
description: "one init, two greeters, one aggregate"
tasks:
  - id: init
    module: init.wasm
    inputs: ["world"]
  - id: greet_1
    module: greet.wasm
    inputs: ["init", "1"]
    depends_on: [init]
  - id: greet_2
    module: greet.wasm
    inputs: ["init", "2"]
    depends_on: [init]
  - id: aggregate
    module: aggregate.wasm
    inputs: ["greet_1", "greet_2"]
    depends_on: ["greet_1", "greet_2"]
"#;

    #[test]
    fn hello_fanout() {
        let dag = ok(HELLO_FANOUT);
        assert_eq!(dag.name, "hello_fanout");
        assert_eq!(
            dag.description.as_deref(),
            Some("one init, two greeters, one aggregate")
        );
        assert_eq!(dag.tasks.len(), 4);

        let agg = &dag.tasks[3];
        assert_eq!(agg.id, "aggregate");
        assert_eq!(agg.module, "aggregate.wasm");
        assert_eq!(agg.deps, vec![1, 2]);
        assert_eq!(agg.inputs, vec![Input::Output(1), Input::Output(2)]);
        assert_eq!(
            dag.tasks[1].inputs,
            vec![Input::Output(0), Input::Literal("1".into())]
        );
        assert_eq!(dag.tasks[0].inputs, vec![Input::Literal("world".into())]);
        assert!(dag.tasks[0].deps.is_empty());

        // Built-in defaults.
        for t in &dag.tasks {
            assert_eq!(t.stdin, "");
            assert!(t.env.is_empty());
            assert_eq!(t.timeout_ms, DEFAULT_TIMEOUT_MS);
            assert_eq!(t.retries, DEFAULT_RETRIES);
            assert_eq!(t.memory_mb, None);
        }

        assert_eq!(dag.topo_order(), vec![0, 1, 2, 3]);
        assert_eq!(dag.dependents(), vec![vec![1, 2], vec![3], vec![3], vec![]]);
        assert_eq!(dag.index_of("greet_2"), Some(2));
        assert_eq!(dag.index_of("nope"), None);
        assert_eq!(dag.id_index().get("aggregate"), Some(&3));
        assert_eq!(
            dag.module_names(),
            vec!["aggregate.wasm", "greet.wasm", "init.wasm"]
        );
        assert_eq!(dag.verify(), Ok(()));

        let outputs = ["hello", "hello world 1", "hello world 2", ""];
        assert_eq!(
            dag.resolve_inputs(3, |i| outputs[i as usize]),
            Ok(vec![
                "hello world 1".to_string(),
                "hello world 2".to_string()
            ])
        );
        assert_eq!(
            dag.resolve_inputs(1, |i| outputs[i as usize]),
            Ok(vec!["hello".to_string(), "1".to_string()])
        );
        assert_eq!(dag.resolve_inputs(99, |i| outputs[i as usize]), Ok(vec![]));
    }

    #[test]
    fn topo_order_is_stable_and_respects_deps() {
        // File order is not a topological order here; among ready tasks the
        // earliest in the file goes first.
        let dag = ok("name: x\ntasks:\n  - {id: late, module: m.wasm, depends_on: [mid]}\n  - {id: free, module: m.wasm}\n  - {id: mid, module: m.wasm, depends_on: [root]}\n  - {id: root, module: m.wasm}\n");
        assert_eq!(dag.topo_order(), vec![1, 3, 2, 0]);
    }

    #[test]
    fn defaults_apply_and_tasks_override_them() {
        let dag = ok(r#"
name: d
defaults:
  timeout: 30s
  retries: 1
  memory: 64
  stdin: "default in"
  env: {K: default, SHARED: default}
tasks:
  - id: plain
    module: m.wasm
  - id: custom
    module: m.wasm
    timeout: 2m
    retries: 0
    memory: 128
    stdin: ""
    env: {SHARED: task, OWN: "1"}
"#);
        let plain = &dag.tasks[0];
        assert_eq!(plain.timeout_ms, 30_000);
        assert_eq!(plain.retries, 1);
        assert_eq!(plain.memory_mb, Some(64));
        assert_eq!(plain.stdin, "default in");
        assert_eq!(plain.env.get("K").map(String::as_str), Some("default"));
        assert_eq!(plain.env.get("SHARED").map(String::as_str), Some("default"));

        let custom = &dag.tasks[1];
        assert_eq!(custom.timeout_ms, 120_000);
        assert_eq!(custom.retries, 0);
        assert_eq!(custom.memory_mb, Some(128));
        // An explicitly empty stdin overrides the default.
        assert_eq!(custom.stdin, "");
        let env: Vec<(&str, &str)> = custom
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            vec![("K", "default"), ("OWN", "1"), ("SHARED", "task")]
        );
    }

    #[test]
    fn empty_values_mean_empty() {
        // `depends_on:` with nothing after it is null in YAML; the Python
        // system treated it as empty, and so do we.
        let dag = ok("name: x\ndefaults:\ndescription:\ntasks:\n  - id: a\n    module: a.wasm\n    depends_on:\n    inputs:\n    env:\n    stdin:\n");
        assert_eq!(dag.description, None);
        assert!(dag.tasks[0].deps.is_empty());
        assert!(dag.tasks[0].inputs.is_empty());
    }

    #[test]
    fn timeout_forms() {
        let cases: [(&str, u64); 10] = [
            ("30s", 30_000),
            ("2m", 120_000),
            ("45", 45_000),
            ("\"45\"", 45_000),
            ("500ms", 500),
            ("\"1h 5m\"", 3_900_000),
            ("1.5", 1_500),
            ("4.2s", 4_200),
            ("500us", 1),
            ("24h", MAX_TIMEOUT_MS),
        ];
        for (text, ms) in cases {
            let dag = ok(&one_task(&format!("    timeout: {text}\n")));
            assert_eq!(dag.tasks[0].timeout_ms, ms, "timeout: {text}");
        }
    }

    #[test]
    fn timeout_keeps_text_and_round_trips() {
        for text in ["30s", "1h 5m", "45", "1.5", "500ms"] {
            let t = Timeout::parse(text).expect("valid");
            assert_eq!(t.as_str(), text);
            assert_eq!(t.to_string(), text);
            let yaml = serde_yaml::to_string(&t).expect("serialize");
            let back: Timeout = serde_yaml::from_str(&yaml).expect("deserialize");
            assert_eq!(back, t);
        }
        let t: Timeout = serde_yaml::from_str("2.5").expect("float");
        assert_eq!(t.as_millis(), 2_500);
        let back: Timeout =
            serde_yaml::from_str(&serde_yaml::to_string(&t).expect("ser")).expect("de");
        assert_eq!(back.duration(), t.duration());
        assert_eq!(Timeout::from_secs(7).as_millis(), 7_000);
        assert_eq!(Timeout::from_secs(u64::MAX).as_millis(), u64::MAX);

        let e = Timeout::parse("soon").expect_err("invalid");
        assert!(e.to_string().contains("\"soon\""), "{e}");
        assert!("".parse::<Timeout>().is_err());
        assert!("1.2.3".parse::<Timeout>().is_err());
        assert!(serde_yaml::from_str::<Timeout>(".inf").is_err());
        assert!(serde_yaml::from_str::<Timeout>("-1.5").is_err());
        assert!(serde_yaml::from_str::<Timeout>("true").is_err());
    }

    #[test]
    fn input_rules() {
        let dag = ok(r#"
name: inputs
tasks:
  - id: extract
    module: extract.wasm
    inputs: ["data.txt"]
  - id: other
    module: other.wasm
  - id: "ünï$code"
    module: u.wasm
  - id: transform
    module: transform.wasm
    depends_on: ["extract", "ünï$code", "extract"]
    inputs:
      - "extract"
      - "prefix-${extract}-suffix"
      - "other"
      - "$${extract}"
      - "${extract}${ünï$code}"
      - "cost: $$5, ${ünï$code} → ok"
      - "$$${extract}"
      - "${extract}"
"#);
        let t = &dag.tasks[3];
        // Duplicate depends_on entries are merged, order kept.
        assert_eq!(t.deps, vec![0, 2]);
        assert_eq!(
            t.inputs,
            vec![
                Input::Output(0),
                Input::Template(vec![
                    Part::Text("prefix-".into()),
                    Part::Output(0),
                    Part::Text("-suffix".into()),
                ]),
                // An id not in depends_on is just text (the documented ABI).
                Input::Literal("other".into()),
                // Only escapes: plain text.
                Input::Literal("${extract}".into()),
                Input::Template(vec![Part::Output(0), Part::Output(2)]),
                Input::Template(vec![
                    Part::Text("cost: $$5, ".into()),
                    Part::Output(2),
                    Part::Text(" → ok".into()),
                ]),
                Input::Literal("$${extract}".into()),
                Input::Template(vec![Part::Output(0)]),
            ]
        );
        let out = |i: u32| match i {
            0 => "EX",
            2 => "ÜNÏ",
            _ => "unexpected",
        };
        assert_eq!(
            dag.resolve_inputs(3, out).expect("small inputs"),
            vec![
                "EX",
                "prefix-EX-suffix",
                "other",
                "${extract}",
                "EXÜNÏ",
                "cost: $$5, ÜNÏ → ok",
                "$${extract}",
                "EX",
            ]
        );
        assert_eq!(
            dag.resolve_inputs(0, out).expect("small inputs"),
            vec!["data.txt"]
        );
        assert_eq!(dag.resolve_inputs(1, out), Ok(vec![]));
    }

    #[test]
    fn valid_dag_round_trips_through_cbor_and_json() {
        let dag = ok(HELLO_FANOUT);
        let bytes = serde_cbor::to_vec(&dag).expect("cbor encode");
        let back: ValidDag = serde_cbor::from_slice(&bytes).expect("cbor decode");
        assert_eq!(back, dag);
        assert_eq!(back.verify(), Ok(()));

        let json = serde_json::to_string(&dag).expect("json encode");
        let back: ValidDag = serde_json::from_str(&json).expect("json decode");
        assert_eq!(back, dag);
    }

    /// A `ValidDag` cannot be decoded without passing `verify`: every tampering that
    /// `verify` catches is refused by the decoder itself (CBOR, as on the wire and on disk,
    /// and JSON), with the reason.
    #[test]
    fn decoding_a_tampered_dag_fails_with_the_reason() {
        let good = ok(HELLO_FANOUT);
        let mut tampered: Vec<(&str, ValidDag)> = Vec::new();
        let mut bad = good.clone();
        bad.tasks[3].deps.push(40);
        tampered.push(("task index 40", bad));
        let mut bad = good.clone();
        bad.tasks[3].inputs.push(Input::Output(7));
        tampered.push(("task index 7", bad));
        let mut bad = good.clone();
        bad.tasks[3]
            .inputs
            .push(Input::Template(vec![Part::Output(u32::MAX)]));
        tampered.push(("task index 4294967295", bad));
        let mut bad = good.clone();
        bad.tasks[0].deps.push(3);
        tampered.push(("cycle", bad));
        let mut bad = good.clone();
        bad.tasks[1].id = "init".into();
        tampered.push(("duplicate id", bad));
        let mut bad = good.clone();
        bad.tasks[3].deps.push(1);
        tampered.push(("twice", bad));
        let mut bad = good.clone();
        bad.tasks.clear();
        tampered.push(("no tasks", bad));
        let mut bad = good.clone();
        bad.tasks[2].env.insert("A=B".into(), "x".into());
        tampered.push(("separates a name", bad));
        let mut bad = good.clone();
        bad.tasks[2].stdin = "x".repeat(MAX_TASK_TEXT_BYTES + 1);
        tampered.push(("stdin is", bad));
        let mut bad = good.clone();
        bad.tasks[2].memory_mb = Some(1 << 40);
        tampered.push(("memory", bad));
        let mut bad = good;
        bad.tasks[2].module = "../x.wasm".into();
        tampered.push(("is a path", bad));
        for (why, dag) in tampered {
            let bytes = serde_cbor::to_vec(&dag).expect("cbor encode");
            let err = serde_cbor::from_slice::<ValidDag>(&bytes).expect_err(why);
            assert!(err.to_string().contains(why), "{why}: {err}");
            let json = serde_json::to_string(&dag).expect("json encode");
            let err = serde_json::from_str::<ValidDag>(&json).expect_err(why);
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn sizes_are_capped_with_the_field_named() {
        let big = "x".repeat(MAX_TASK_TEXT_BYTES + 1);
        let e = err(&one_task(&format!("    stdin: {big}\n")));
        assert!(
            e.to_string().contains("task \"a\": stdin is 8388609 bytes"),
            "{e}"
        );
        let e = err(&one_task(&format!("    inputs: [{big}]\n")));
        assert!(e.to_string().contains("task \"a\": inputs is"), "{e}");
        let e = err(&one_task(&format!("    env: {{K: {big}}}\n")));
        assert!(e.to_string().contains("task \"a\": env is"), "{e}");
        let e = err(&one_task("    env: {\"A=B\": x}\n"));
        assert!(e.to_string().contains("env \"A=B\" contains \"=\""), "{e}");
        let e = err(&format!(
            "name: x\ndefaults:\n  stdin: {big}\ntasks: [{{id: a, module: m.wasm}}]\n"
        ));
        assert!(e.to_string().contains("defaults: stdin is"), "{e}");
        let e = err(&format!(
            "name: {}\ntasks: [{{id: a, module: m.wasm}}]\n",
            "n".repeat(2000)
        ));
        assert!(
            e.to_string().contains("the DAG's name is 2000 bytes"),
            "{e}"
        );
        let e = err("name: \"evil\\n2099 ERROR forged\"\ntasks: [{id: a, module: m.wasm}]\n");
        assert!(e.to_string().contains("control character"), "{e}");
        let e = err(&one_task("").replace("a.wasm", &format!("{}.wasm", "m".repeat(300))));
        assert!(e.to_string().contains("longer than 255 bytes"), "{e}");

        // `defaults` are copied into every task: 1 MiB of defaults in 40 tasks is 40 MiB.
        let mut yaml = format!(
            "name: x\ndefaults:\n  stdin: {}\ntasks:\n",
            "s".repeat(1 << 20)
        );
        for i in 0..40 {
            yaml.push_str(&format!("  - {{id: t{i}, module: m.wasm}}\n"));
        }
        let e = err(&yaml);
        assert!(matches!(e, DagError::DagTooLarge { .. }), "{e}");
        assert!(e.to_string().contains("own copy of `defaults`"), "{e}");
    }

    /// One list used through an alias by many tasks is refused while deserializing, once
    /// the copies pass twice the file's size, naming the line; the same file written out
    /// in full (no aliases) is accepted.
    #[test]
    fn alias_expansion_is_bounded() {
        let list: Vec<String> = (0..2000).map(|i| format!("s{i}")).collect();
        let mut yaml = format!(
            "name: x\ntasks:\n  - id: t0\n    module: m.wasm\n    inputs: &l [{}]\n",
            list.join(", ")
        );
        for i in 1..900 {
            yaml.push_str(&format!("  - {{id: t{i}, module: m.wasm, inputs: *l}}\n"));
        }
        let e = err(&yaml);
        assert!(matches!(e, DagError::Yaml { line: Some(_), .. }), "{e:?}");
        assert!(e.to_string().contains("expands to far more text"), "{e}");
        assert!(e.to_string().contains("tasks["), "names the task: {e}");

        let few = yaml.lines().take(10).collect::<Vec<_>>().join("\n");
        assert_eq!(ok(&few).tasks.len(), 6, "a few aliases are fine");
        // The budget is per call: it does not leak into the next parse on this thread.
        assert_eq!(ok(HELLO_FANOUT).tasks.len(), 4);
    }

    #[test]
    fn resolved_inputs_are_sized_before_they_are_built() {
        let mut template = String::new();
        for _ in 0..200 {
            template.push_str("${a}");
        }
        let dag = ok(&format!(
            "name: x\ntasks:\n  - {{id: a, module: m.wasm}}\n  - {{id: b, module: m.wasm, depends_on: [a], inputs: [\"{template}\"]}}\n"
        ));
        let mib = "o".repeat(1 << 20);
        let err = dag.resolve_inputs(1, |_| &mib).expect_err("200 MiB");
        assert_eq!(err.size, 200 << 20);
        assert_eq!(err.task, "b");
        assert!(
            err.to_string()
                .contains("task \"b\" resolve to 209715200 bytes"),
            "{err}"
        );
        // Exactly one 8 MiB output (the largest a task can produce) still fits.
        let dag = ok("name: x\ntasks:\n  - {id: a, module: m.wasm}\n  - {id: b, module: m.wasm, depends_on: [a], inputs: [a]}\n");
        let max = "o".repeat(MAX_TASK_TEXT_BYTES);
        assert_eq!(
            dag.resolve_inputs(1, |_| &max).map(|v| v[0].len()),
            Ok(MAX_TASK_TEXT_BYTES)
        );
    }

    #[test]
    fn spec_round_trips_through_yaml() {
        let spec = DagSpec::from_yaml(HELLO_FANOUT).expect("parse");
        let yaml = serde_yaml::to_string(&spec).expect("serialize");
        assert_eq!(DagSpec::from_yaml(&yaml).expect("reparse"), spec);
    }

    #[test]
    fn verify_catches_tampering_without_panicking() {
        let good = ok(HELLO_FANOUT);

        let mut bad = good.clone();
        bad.tasks[3].deps.push(40);
        assert!(matches!(
            bad.verify(),
            Err(DagError::BadIndex { index: 40, .. })
        ));
        // The methods stay total on the bad value.
        let _ = bad.topo_order();
        let _ = bad.dependents();

        let mut bad = good.clone();
        bad.tasks[3].inputs.push(Input::Output(0));
        assert!(matches!(
            bad.verify(),
            Err(DagError::UnknownReference { input: 2, .. })
        ));

        let mut bad = good.clone();
        bad.tasks[0].deps.push(3);
        assert!(matches!(bad.verify(), Err(DagError::Cycle { .. })));
        assert_eq!(bad.topo_order(), Vec::<u32>::new());

        let mut bad = good.clone();
        bad.tasks[2].deps.push(2);
        assert!(matches!(bad.verify(), Err(DagError::SelfDependency { .. })));

        let mut bad = good.clone();
        bad.tasks[1].id = "init".into();
        assert!(matches!(bad.verify(), Err(DagError::DuplicateId { .. })));

        let mut bad = good.clone();
        bad.tasks[1].timeout_ms = 0;
        assert!(matches!(bad.verify(), Err(DagError::InvalidTimeout { .. })));

        let mut bad = good;
        bad.tasks[1].module = "/etc/passwd".into();
        assert!(matches!(bad.verify(), Err(DagError::InvalidModule { .. })));
    }

    #[test]
    fn long_cycles_are_named_compactly() {
        let n = 1000;
        let tasks = (0..n)
            .map(|i| TaskSpec {
                id: format!("t{i}"),
                module: Some("m.wasm".into()),
                depends_on: vec![format!("t{}", (i + 1) % n)],
                ..TaskSpec::default()
            })
            .collect();
        let spec = DagSpec {
            name: "ring".into(),
            tasks,
            ..DagSpec::default()
        };
        let e = spec.validate().expect_err("cycle");
        let DagError::Cycle { path } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(path.len(), n);
        assert_eq!(path[0], "t0");
        assert_eq!(path[1], "t1");
        let msg = e.to_string();
        assert!(msg.starts_with("dependency cycle: t0 -> t1 -> "), "{msg}");
        assert!(msg.contains("(984 more)"), "{msg}");
        assert!(msg.contains("t999 -> t0 "), "{msg}");
        assert!(msg.len() < 300, "{msg}");
    }

    #[test]
    fn hundred_thousand_task_fan_out_fan_in() {
        // Deep recursion or quadratic work would show up here as a stack
        // overflow or a test that takes minutes.
        let n = 100_000;
        let mut tasks = Vec::with_capacity(n + 2);
        tasks.push(TaskSpec {
            id: "root".into(),
            module: Some("root.wasm".into()),
            ..TaskSpec::default()
        });
        for i in 0..n {
            tasks.push(TaskSpec {
                id: format!("w{i}"),
                module: Some("work.wasm".into()),
                inputs: vec!["root".into(), format!("part-{i}")],
                depends_on: vec!["root".into()],
                ..TaskSpec::default()
            });
        }
        let ids: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
        tasks.push(TaskSpec {
            id: "sink".into(),
            module: Some("sink.wasm".into()),
            inputs: ids.clone(),
            depends_on: ids,
            ..TaskSpec::default()
        });
        let spec = DagSpec {
            name: "fan".into(),
            tasks,
            ..DagSpec::default()
        };

        let dag = spec.validate().expect("valid");
        assert_eq!(dag.tasks.len(), n + 2);
        let sink = &dag.tasks[n + 1];
        assert_eq!(sink.deps.len(), n);
        assert_eq!(sink.deps[0], 1);
        assert_eq!(sink.deps[n - 1], to_u32(n));
        assert_eq!(sink.inputs[7], Input::Output(8));
        assert_eq!(
            dag.tasks[5].inputs,
            vec![Input::Output(0), Input::Literal("part-4".into())]
        );

        let order = dag.topo_order();
        assert_eq!(order.len(), n + 2);
        assert_eq!(order[0], 0);
        assert_eq!(order[n + 1], to_u32(n + 1));
        let dependents = dag.dependents();
        assert_eq!(dependents[0].len(), n);
        assert_eq!(dependents[1], vec![to_u32(n + 1)]);
        assert_eq!(dag.verify(), Ok(()));

        // A typo among 100k ids still gets a suggestion.
        let mut spec = DagSpec {
            name: "fan".into(),
            tasks: (0..n)
                .map(|i| TaskSpec {
                    id: format!("worker_{i}"),
                    module: Some("m.wasm".into()),
                    ..TaskSpec::default()
                })
                .collect(),
            ..DagSpec::default()
        };
        spec.tasks[0].depends_on = vec!["wrker_99999".into()];
        let e = spec.validate().expect_err("unknown dep");
        assert!(
            e.to_string().contains("did you mean \"worker_99999\"?"),
            "{e}"
        );
    }

    fn naive_levenshtein(a: &[char], b: &[char]) -> usize {
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for i in 1..=a.len() {
            let mut cur = vec![i; b.len() + 1];
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                cur[j] = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    }

    /// Builds a DAG of `n` tasks where the task of rank `r` depends on the
    /// ranks `j < r` with `adj[r][j]` (so it is acyclic by construction), and
    /// the last rank always depends on rank 0. Rank `r` sits at file position
    /// `perm[r]`, so file order need not be a topological order.
    fn ranked_spec(n: usize, adj: &[Vec<bool>], perm: &[usize]) -> DagSpec {
        let mut tasks = vec![TaskSpec::default(); n];
        for (r, (row, &at)) in adj.iter().zip(perm).enumerate() {
            let t = &mut tasks[at];
            t.id = format!("t{r}");
            t.module = Some(format!("m{}.wasm", r % 3));
            for (j, &edge) in row.iter().enumerate().take(r) {
                if edge || (r == n - 1 && j == 0) {
                    t.depends_on.push(format!("t{j}"));
                    t.inputs.push(if j % 2 == 0 {
                        format!("t{j}")
                    } else {
                        format!("<${{t{j}}}>")
                    });
                }
            }
        }
        DagSpec {
            name: "random".into(),
            tasks,
            ..DagSpec::default()
        }
    }

    fn arb_ranked() -> impl Strategy<Value = (usize, Vec<Vec<bool>>, Vec<usize>)> {
        (2usize..30).prop_flat_map(|n| {
            (
                Just(n),
                prop::collection::vec(prop::collection::vec(any::<bool>(), n), n),
                Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
            )
        })
    }

    /// Whatever parse_dag accepts must uphold the ValidDag invariants, and
    /// the methods must not panic on it.
    fn check_accepted(text: &str) -> Result<(), TestCaseError> {
        if let Ok(dag) = parse_dag(text) {
            prop_assert_eq!(dag.verify(), Ok(()));
            prop_assert_eq!(dag.topo_order().len(), dag.tasks.len());
            for i in 0..dag.tasks.len() {
                let _ = dag.resolve_inputs(i, |_| "out");
            }
            let bytes = serde_cbor::to_vec(&dag).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: ValidDag =
                serde_cbor::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, dag);
        }
        Ok(())
    }

    /// One line of YAML-ish text built from the format's own vocabulary, so
    /// that random input gets past the YAML parser often enough to exercise
    /// validation too.
    fn yamlish_line() -> impl Strategy<Value = String> {
        let indent = prop::sample::select(vec!["", "  ", "    ", "  - ", "- ", "\t"]);
        let key = prop::sample::select(vec![
            "name",
            "tasks",
            "id",
            "module",
            "inputs",
            "depends_on",
            "defaults",
            "env",
            "timeout",
            "retries",
            "memory",
            "stdin",
            "description",
            "depend_on",
            "K",
            "",
        ]);
        let value = prop::sample::select(vec![
            "",
            "a",
            "b",
            "\"a\"",
            "a.wasm",
            "../a.wasm",
            "[a, b]",
            "[a]",
            "[\"${a}\"]",
            "[\"$${a}\", \"${b\"]",
            "{A: b}",
            "30s",
            "0",
            "-1",
            "101",
            "4097",
            "1.5",
            "~",
            "&x a",
            "*x",
            "|",
            "[",
            "}",
            "\"",
            "'",
            "!!int x",
            "? a",
            "${a}",
            "99999999999999999999",
            "1e400",
            "- a",
        ]);
        (indent, key, value).prop_map(|(i, k, v)| format!("{i}{k}: {v}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_string_never_panics(text in any::<String>()) {
            check_accepted(&text)?;
        }

        #[test]
        fn yamlish_text_never_panics(text in "[a-z_: \\-\\[\\]{}\"'\n$#&*!|>%@,.0-9\t]{0,300}") {
            check_accepted(&text)?;
        }

        #[test]
        fn yamlish_lines_never_panic(lines in prop::collection::vec(yamlish_line(), 0..25)) {
            check_accepted(&lines.join("\n"))?;
        }

        #[test]
        fn mutated_good_dag_never_panics(
            edits in prop::collection::vec(
                (any::<prop::sample::Index>(), 0usize..4, "(\\PC|\n){0,6}"),
                1..6,
            )
        ) {
            let mut text: Vec<char> = HELLO_FANOUT.chars().collect();
            for (at, delete, insert) in edits {
                let at = at.index(text.len() + 1);
                let end = (at + delete).min(text.len());
                text.splice(at..end, insert.chars());
            }
            check_accepted(&text.into_iter().collect::<String>())?;
        }

        #[test]
        fn random_dags_validate_in_dependency_order((n, adj, perm) in arb_ranked()) {
            let spec = ranked_spec(n, &adj, &perm);
            let dag = spec.clone().validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(dag.verify(), Ok(()));

            // deps are exactly depends_on, resolved.
            for (t, s) in dag.tasks.iter().zip(&spec.tasks) {
                let named: Vec<&str> = t.deps.iter().map(|&d| dag.tasks[d as usize].id.as_str()).collect();
                prop_assert_eq!(named, s.depends_on.iter().map(String::as_str).collect::<Vec<_>>());
                prop_assert!(t.inputs.iter().all(|i| !matches!(i, Input::Literal(_))));
            }

            // topo_order is a permutation that puts every dep first.
            let order = dag.topo_order();
            let mut pos = vec![usize::MAX; n];
            for (k, &i) in order.iter().enumerate() {
                prop_assert_eq!(pos[i as usize], usize::MAX);
                pos[i as usize] = k;
            }
            prop_assert!(pos.iter().all(|&p| p < n));
            for (i, t) in dag.tasks.iter().enumerate() {
                for &d in &t.deps {
                    prop_assert!(pos[d as usize] < pos[i]);
                }
            }

            // Stable: a file already in dependency order comes back as is.
            let sorted = ranked_spec(n, &adj, &(0..n).collect::<Vec<_>>()).validate()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(sorted.topo_order(), (0..n as u32).collect::<Vec<_>>());

            // The same spec through YAML text gives the same result.
            let yaml = serde_yaml::to_string(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parse_dag(&yaml), Ok(dag));
        }

        #[test]
        fn back_edge_creates_a_cycle((n, adj, perm) in arb_ranked()) {
            let mut spec = ranked_spec(n, &adj, &perm);
            // The earliest task (rank 0) now also depends on the latest,
            // which depends on it: every cycle must use this new edge.
            spec.tasks[perm[0]].depends_on.push(format!("t{}", n - 1));
            let by_id: HashMap<String, Vec<String>> = spec
                .tasks
                .iter()
                .map(|t| (t.id.clone(), t.depends_on.clone()))
                .collect();
            let e = spec.validate().err();
            let Some(DagError::Cycle { path }) = e else {
                return Err(TestCaseError::fail(format!("expected a cycle, got {e:?}")));
            };
            prop_assert!(path.len() >= 2);
            let first = format!("t{}", n - 1);
            prop_assert!(path.contains(&"t0".to_owned()) && path.contains(&first));
            for k in 0..path.len() {
                let (a, b) = (&path[k], &path[(k + 1) % path.len()]);
                prop_assert!(by_id[a].contains(b), "{} does not depend on {}", a, b);
            }
        }

        #[test]
        fn escaped_text_stays_literal(text in "(\\PC|\\$|\\{|\\}){0,40}") {
            let escaped = text.replace("${", "$${");
            let index = HashMap::new();
            let input = parse_input("t", 0, escaped, &index, |_| false);
            prop_assert_eq!(input, Ok(Input::Literal(text)));
        }

        #[test]
        fn bounded_levenshtein_agrees_with_naive(a in "[abc]{0,10}", b in "[abc]{0,10}", max in 1usize..4) {
            let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
            let d = naive_levenshtein(&a, &b);
            let got = bounded_levenshtein(&a, &b, max, &mut Default::default());
            prop_assert_eq!(got, (d <= max).then_some(d));
        }
    }
}
