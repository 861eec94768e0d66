//! The worker side of a node, without I/O: jobs a controller assigned to this node (this
//! node's own planner included), waiting for their module or a free executor, running, and
//! their results on their way back.

use std::collections::{HashMap, HashSet, VecDeque};

use bx3_protocol::ids::{DagId, ModuleHash};
use bx3_protocol::mesh::{Job, JobResult};

/// An attempt, as the worker knows it.
pub type JobKey = (DagId, u32, u32);

/// Most finished results kept for a controller that cannot be reached right now.
pub const MAX_PENDING_RESULTS: usize = 100_000;

pub fn key(job: &Job) -> JobKey {
    (job.dag, job.task, job.attempt)
}

#[derive(Debug, Default)]
pub struct Worker {
    /// Executors this node runs (at least one).
    executors: usize,
    /// Waiting for a free executor, in arrival order.
    queue: VecDeque<Job>,
    /// Waiting for their module to arrive, by module.
    waiting: HashMap<ModuleHash, Vec<Job>>,
    /// Started on an executor, not finished yet.
    running: HashSet<JobKey>,
    /// Every attempt queued, waiting or running: an order repeated (a retried request) is
    /// taken once.
    known: HashSet<JobKey>,
    /// Finished attempts to report to the controller.
    results: Vec<JobResult>,
    /// A Results request is on its way (one at a time keeps them ordered).
    pub results_in_flight: bool,
}

/// What taking a job means for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Queued (or a repeat of one already here).
    Queued,
    /// Waiting for its module; the first job waiting for it asks for a fetch.
    NeedsModule { fetch: bool },
}

impl Worker {
    pub fn new(executors: usize) -> Worker {
        Worker {
            executors: executors.max(1),
            ..Worker::default()
        }
    }

    pub fn set_executors(&mut self, n: usize) {
        self.executors = n.max(1);
    }

    pub fn executors(&self) -> usize {
        self.executors
    }

    pub fn busy(&self) -> usize {
        self.running.len()
    }

    /// Jobs here that have not started.
    pub fn backlog(&self) -> usize {
        self.queue.len() + self.waiting.values().map(Vec::len).sum::<usize>()
    }

    /// Executors not running and not promised to a queued job.
    pub fn free(&self) -> usize {
        self.executors
            .saturating_sub(self.running.len() + self.backlog())
    }

    /// How many more jobs this node takes from a controller: two per executor (one running,
    /// one queued behind it, so no executor idles for a round trip), and some slack for
    /// requests crossing.
    pub fn room(&self) -> usize {
        (self.executors * 4 + 256).saturating_sub(self.running.len() + self.backlog())
    }

    pub fn take(&mut self, job: Job, has_module: bool) -> Taken {
        let k = key(&job);
        if !self.known.insert(k) {
            return Taken::Queued;
        }
        if has_module {
            self.queue.push_back(job);
            return Taken::Queued;
        }
        let list = self.waiting.entry(job.module_hash.clone()).or_default();
        list.push(job);
        Taken::NeedsModule {
            fetch: list.len() == 1,
        }
    }

    /// The module arrived: its jobs can run.
    pub fn module_ready(&mut self, hash: &ModuleHash) {
        if let Some(jobs) = self.waiting.remove(hash) {
            self.queue.extend(jobs);
        }
    }

    /// The module could not be fetched: its jobs end with that error.
    pub fn module_failed(&mut self, hash: &ModuleHash, error: &str) -> Vec<JobResult> {
        let jobs = self.waiting.remove(hash).unwrap_or_default();
        jobs.into_iter()
            .map(|j| {
                self.known.remove(&key(&j));
                JobResult {
                    dag: j.dag,
                    task: j.task,
                    attempt: j.attempt,
                    outcome: Err(format!(
                        "module {:?} ({hash}) could not be fetched: {error}",
                        j.module
                    )),
                    run_ms: 0,
                    stderr: None,
                    interrupted: true,
                }
            })
            .collect()
    }

    /// Jobs to start now, one per free executor.
    pub fn start(&mut self) -> Vec<Job> {
        let mut out = Vec::new();
        while self.running.len() < self.executors {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            self.running.insert(key(&job));
            out.push(job);
        }
        out
    }

    /// An executor finished a job. Returns false if it was not known (already aborted).
    pub fn finished(&mut self, k: &JobKey) -> bool {
        self.known.remove(k);
        self.running.remove(k)
    }

    /// The controller cancelled a DAG: forget its queued jobs; returns the running ones to
    /// stop.
    pub fn abort(&mut self, dag: DagId) -> Vec<JobKey> {
        self.queue.retain(|j| j.dag != dag);
        for jobs in self.waiting.values_mut() {
            jobs.retain(|j| j.dag != dag);
        }
        self.waiting.retain(|_, jobs| !jobs.is_empty());
        self.known
            .retain(|k| k.0 != dag || self.running.contains(k));
        self.running
            .iter()
            .filter(|k| k.0 == dag)
            .copied()
            .collect()
    }

    /// A result to report.
    pub fn report(&mut self, r: JobResult) {
        if self.results.len() >= MAX_PENDING_RESULTS {
            tracing::warn!("too many undelivered results; dropping the oldest");
            self.results.remove(0);
        }
        self.results.push(r);
    }

    pub fn has_results(&self) -> bool {
        !self.results.is_empty()
    }

    /// Every result waiting, to send (or to record, on the controller).
    pub fn take_results(&mut self) -> Vec<JobResult> {
        std::mem::take(&mut self.results)
    }

    /// A Results request failed: its results go back in front, still bounded.
    pub fn undelivered(&mut self, mut results: Vec<JobResult>) {
        self.results_in_flight = false;
        results.append(&mut self.results);
        let excess = results.len().saturating_sub(MAX_PENDING_RESULTS);
        if excess > 0 {
            tracing::warn!(
                dropped = excess,
                "too many undelivered results; dropping the oldest"
            );
            results.drain(..excess);
        }
        self.results = results;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(task: u32, attempt: u32, hash: &str) -> Job {
        Job {
            dag: DagId::new(1, 1),
            task,
            attempt,
            module: "m.wasm".into(),
            module_hash: hash.repeat(32).parse().expect("hash"),
            argv: vec![],
            env: vec![],
            stdin: String::new(),
            timeout_ms: 1000,
            memory_mb: None,
        }
    }

    #[test]
    fn a_repeated_order_runs_once_and_abort_stops_only_its_dag() {
        let mut w = Worker::new(1);
        assert_eq!(w.take(job(0, 1, "ab"), true), Taken::Queued);
        assert_eq!(w.take(job(0, 1, "ab"), true), Taken::Queued);
        assert_eq!(
            w.take(job(1, 1, "cd"), false),
            Taken::NeedsModule { fetch: true }
        );
        assert_eq!(
            w.take(job(2, 1, "cd"), false),
            Taken::NeedsModule { fetch: false }
        );
        let started = w.start();
        assert_eq!(started.len(), 1, "one executor");
        assert!(w.start().is_empty());
        assert_eq!(w.abort(DagId::new(1, 1)), vec![(DagId::new(1, 1), 0, 1)]);
        assert_eq!(w.backlog(), 0);
        w.module_ready(&"cd".repeat(32).parse().expect("hash"));
        assert!(w.start().is_empty(), "aborted jobs do not come back");
        assert!(w.finished(&(DagId::new(1, 1), 0, 1)));
        assert!(!w.finished(&(DagId::new(1, 1), 0, 1)));
    }
}
