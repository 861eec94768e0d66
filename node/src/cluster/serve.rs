//! API calls: served by the controller, forwarded to it from any other node (retried while
//! connections churn or an election runs), parked while no controller is known, and long
//! polls that wait on the controller for a DAG to change.

use bx3_protocol::api::{DagSummary, DagView, TaskQuery};
use bx3_protocol::ids::DagId;
use bx3_protocol::mesh::{Refusal, Response};

use super::calls::{backoff_ms, Call, Forwarded, Poll, MAX_POLL_WAIT_MS};
use super::out::{Answer, Asker, Pending};
use super::records::Reads;
use super::{view, Core};
use crate::store::StoreError;

/// The most DAGs one listing returns.
pub const MAX_LIST: usize = 10_000;

impl Core {
    /// An API call (or its next try): served here on the controller, forwarded to the
    /// controller elsewhere, or parked until one is known.
    pub(super) fn call(
        &mut self,
        asker: Asker,
        call: Call,
        tries: u32,
        give_up_ms: u64,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        if matches!(call, Call::Status) {
            let status = self.status();
            self.out.answer(asker, Ok(Answer::Status(Box::new(status))));
            return Ok(());
        }
        if self.is_leader() {
            return self.serve(asker, call, reads);
        }
        match (self.election.leader().cloned(), call.request()) {
            (Some(leader), Some(req)) => {
                let token = self.out.send(leader, req);
                self.pending.insert(
                    token,
                    Pending::Forward(Forwarded {
                        asker,
                        call,
                        tries: tries + 1,
                        give_up_ms,
                    }),
                );
            }
            _ => self.retry_later(asker, call, tries, give_up_ms, Refusal::NoLeader, reads)?,
        }
        Ok(())
    }

    /// Tries a call again after a pause, or gives up with `why` once its time is up. A read
    /// that cannot reach the controller is answered from this node's replica instead.
    fn retry_later(
        &mut self,
        asker: Asker,
        call: Call,
        tries: u32,
        give_up_ms: u64,
        why: Refusal,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        // A read is answered from this node's replica rather than waiting (a long poll waits:
        // answering it at once would only make its caller ask again).
        if let Call::Get {
            id,
            tasks,
            page,
            after: None,
            ..
        } = &call
        {
            if let Ok(v) = self.local_view(*id, *tasks, page.as_ref(), reads)? {
                self.out.answer(asker, Ok(Answer::Dag(Box::new(v))));
                return Ok(());
            }
        }
        let now = self.now.mono_ms;
        if now >= give_up_ms {
            self.out.answer(asker, Err(why));
            return Ok(());
        }
        let next = (now + backoff_ms(tries.max(1))).min(give_up_ms);
        if let Err((asker, e)) = self.calls.park(asker, call, tries, give_up_ms, next) {
            self.out.answer(asker, Err(e));
        }
        Ok(())
    }

    /// The controller's answer to a forwarded call, or why there is none.
    pub(super) fn forwarded(
        &mut self,
        f: Forwarded,
        answer: Result<Response, String>,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        let Forwarded {
            asker,
            call,
            tries,
            give_up_ms,
        } = f;
        let result = match answer {
            Ok(Response::Submitted { id }) => Ok(Answer::Submitted(id)),
            Ok(Response::Dag(v)) => Ok(Answer::Dag(v)),
            Ok(Response::Dags(v)) => Ok(Answer::Dags(v)),
            // Transient: another controller, an election, a restart. Try again.
            Ok(Response::Refused(
                why @ (Refusal::NotLeader { .. } | Refusal::NoLeader | Refusal::Unavailable(_)),
            )) => {
                return self.retry_later(asker, call, tries, give_up_ms, why, reads);
            }
            Ok(Response::Refused(e)) => Err(e),
            Ok(other) => Err(Refusal::Internal(format!(
                "unexpected answer from the controller: {other:?}"
            ))),
            // The request did not get through (a connection closing as two nodes settle on
            // one, a peer restarting): every call is safe to send again.
            Err(e) => {
                let why = Refusal::Unavailable(format!("the controller did not answer: {e}"));
                return self.retry_later(asker, call, tries, give_up_ms, why, reads);
            }
        };
        self.out.answer(asker, result);
        Ok(())
    }

    /// Serves a call on the controller.
    pub(super) fn serve(
        &mut self,
        asker: Asker,
        call: Call,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        match call {
            Call::Submit { id, spec, source } => self.accept(asker, id, spec, source, reads),
            Call::Get {
                id,
                tasks,
                page,
                after,
                wait_ms,
            } => {
                let Some(after) = after else {
                    // What a read shows is on disk: a task shown as done stays done.
                    self.flush(reads)?;
                    let view = self.view(id, tasks, page.as_ref(), reads)?;
                    self.out
                        .answer(asker, view.map(|v| Answer::Dag(Box::new(v))));
                    return Ok(());
                };
                let poll = Poll {
                    asker,
                    id,
                    tasks,
                    page,
                    after,
                    deadline_ms: self.now.mono_ms + wait_ms.min(MAX_POLL_WAIT_MS),
                    unseen: true,
                };
                if self.unflushed(&id) {
                    // A long poll does not force a flush: the DAG's latest changes are not
                    // on disk yet, so it is answered after the group commit that puts them
                    // there (the next tick at the latest, at once when the DAG finishes). A
                    // watcher asking again and again would otherwise turn every question
                    // into a disk flush.
                    self.park_poll(poll);
                    Ok(())
                } else {
                    self.look_at_poll(poll, reads)
                }
            }
            Call::List { limit } => {
                self.flush(reads)?;
                let list = self.list(limit.min(MAX_LIST), reads)?;
                self.out.answer(asker, Ok(Answer::Dags(list)));
                Ok(())
            }
            Call::Cancel { id } => {
                let result = self.cancel(id, reads)?;
                self.out.answer(asker, result);
                Ok(())
            }
            Call::Status => {
                let status = self.status();
                self.out.answer(asker, Ok(Answer::Status(Box::new(status))));
                Ok(())
            }
        }
    }

    /// Whether DAG `id` has changes not on disk yet (written and not flushed, or not
    /// written yet).
    pub(super) fn unflushed(&self, id: &DagId) -> bool {
        (self.out.unflushed && self.changed.contains(id))
            || self.lead.as_ref().is_some_and(|l| l.planner.is_dirty(id))
    }

    /// Answers a long poll if its DAG passed its version or finished (as the store and the
    /// planner have it now); parks it, seen, otherwise.
    pub(super) fn look_at_poll(&mut self, poll: Poll, reads: &dyn Reads) -> Result<(), StoreError> {
        match self.view(poll.id, poll.tasks, poll.page.as_ref(), reads)? {
            Ok(v) if v.version <= poll.after && !v.state.is_terminal() => self.park_poll(Poll {
                unseen: false,
                ..poll
            }),
            view => self
                .out
                .answer(poll.asker, view.map(|v| Answer::Dag(Box::new(v)))),
        }
        Ok(())
    }

    /// Parks a long poll, or answers why it cannot wait (too many waiting).
    fn park_poll(&mut self, poll: Poll) {
        let asker = poll.asker;
        if let Err(e) = self.calls.poll(poll) {
            self.out.answer(asker, Err(e));
        }
    }

    /// Answers a long poll with the DAG as it stands.
    pub(super) fn answer_poll(&mut self, poll: Poll, reads: &dyn Reads) -> Result<(), StoreError> {
        let view = self.view(poll.id, poll.tasks, poll.page.as_ref(), reads)?;
        self.out
            .answer(poll.asker, view.map(|v| Answer::Dag(Box::new(v))));
        Ok(())
    }

    /// A DAG as the controller has it (this node's store when it is not the controller).
    pub(super) fn view(
        &self,
        id: DagId,
        tasks: bool,
        page: Option<&TaskQuery>,
        reads: &dyn Reads,
    ) -> Result<Result<DagView, Refusal>, StoreError> {
        if let Some(run) = self.lead.as_ref().and_then(|l| l.planner.run(&id)) {
            let mut v = view::dag_view(id, &run.meta, &run.spec, &run.tasks, tasks, page);
            v.coordinator = Some(self.cfg.me.to_string());
            return Ok(Ok(v));
        }
        self.local_view(id, tasks, page, reads)
    }

    /// A DAG as this node's own store has it (a follower's replica).
    fn local_view(
        &self,
        id: DagId,
        tasks: bool,
        page: Option<&TaskQuery>,
        reads: &dyn Reads,
    ) -> Result<Result<DagView, Refusal>, StoreError> {
        let view = self.out.view(reads);
        let not_found = || Ok(Err(Refusal::NotFound(format!("DAG {id}"))));
        let Some(meta) = view.meta(&id)? else {
            return not_found();
        };
        if !tasks && page.is_none() {
            // The head only (what a long poll asks for): no decoded spec needed, so a
            // follower watched on a 100,000-task DAG does not decode or keep its spec.
            if view.task_count(&id)?.is_none() {
                return not_found();
            }
            return Ok(Ok(view::head(id, &meta)));
        }
        let Some(spec) = view.spec(&id)? else {
            return not_found();
        };
        let records = view.tasks(&id, spec.dag.tasks.len())?;
        Ok(Ok(view::dag_view(id, &meta, &spec, &records, tasks, page)))
    }

    /// DAGs newest first, with the controller's live state for active ones.
    fn list(&self, limit: usize, reads: &dyn Reads) -> Result<Vec<DagSummary>, StoreError> {
        Ok(self
            .out
            .view(reads)
            .list(limit)?
            .into_iter()
            .map(|(id, stored)| {
                let meta = self
                    .lead
                    .as_ref()
                    .and_then(|l| l.planner.run(&id))
                    .map(|r| &r.meta)
                    .unwrap_or(&stored);
                view::summary(id, meta)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    //! Long polls against a real core over a real (temporary) store: they never force a
    //! flush, and what they answer is on disk.

    use std::sync::Arc;

    use bx3_protocol::dag::parse_dag;
    use bx3_protocol::ids::{DagId, ModuleHash, NodeId};

    use crate::cluster::records::NodeReads;
    use crate::cluster::{Call, Input, JobDone, Now, Output};
    use crate::store::{ModuleStore, SpecRecord, Store};

    use super::super::out::Answer;

    struct Node {
        core: crate::cluster::Core,
        store: Store,
        /// Holds the one module the tests' DAGs run (`module()`).
        modules: ModuleStore,
        _dir: tempfile::TempDir,
        now: u64,
        /// Writes flushed so far (how many `Output::Write`s had a `Flush` after them).
        durable_writes: usize,
        writes: usize,
    }

    impl Node {
        /// A node alone, the controller of its mesh of one.
        fn leader() -> Node {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let modules = ModuleStore::open(dir.path().join("modules")).expect("a module store");
            modules.put(MODULE).expect("the module is stored");
            let mut node = Node {
                core: crate::fuzzing::lone_core("12D3KooWPollSelf", 3),
                store: Store::temporary().expect("a temporary store"),
                modules,
                _dir: dir,
                now: 1_700_000_000_000,
                durable_writes: 0,
                writes: 0,
            };
            for _ in 0..120 {
                node.step(vec![Input::Tick]);
            }
            assert!(node.core.is_leader(), "alone, it leads");
            node
        }

        fn step(&mut self, inputs: Vec<Input>) -> Vec<Output> {
            self.step_after(crate::cluster::TICK_MS, inputs)
        }

        /// A step `ms` after the previous one.
        fn step_after(&mut self, ms: u64, inputs: Vec<Input>) -> Vec<Output> {
            self.now += ms;
            let out = self
                .core
                .step(
                    Now {
                        mono_ms: self.now,
                        wall_ms: self.now,
                    },
                    inputs,
                    &NodeReads {
                        store: &self.store,
                        modules: &self.modules,
                    },
                )
                .expect("a temporary store does not fail");
            for o in &out {
                match o {
                    Output::Write(w) => {
                        self.store.apply(w).expect("writes apply");
                        self.writes += 1;
                    }
                    Output::Flush => self.durable_writes = self.writes,
                    _ => {}
                }
            }
            out
        }

        fn get(&mut self, call: u64, id: DagId, after: Option<u64>) -> Vec<Output> {
            self.step(vec![Input::Call {
                call,
                what: Call::Get {
                    id,
                    tasks: false,
                    page: None,
                    after,
                    wait_ms: 20_000,
                },
            }])
        }
    }

    /// The bytes of the module every test DAG runs (never executed: only its hash matters).
    const MODULE: &[u8] = b"a module";

    fn module() -> std::collections::BTreeMap<String, ModuleHash> {
        let hash = crate::store::modules::sha256_hex(MODULE);
        [("m.wasm".to_string(), hash.parse().expect("a hash"))]
            .into_iter()
            .collect()
    }

    /// The version call `call` was answered with, and whether every write before the
    /// answer was flushed before it.
    fn answered(out: &[Output], call: u64) -> Option<(u64, bool)> {
        let mut unflushed = false;
        for o in out {
            match o {
                Output::Write(_) => unflushed = true,
                Output::Flush => unflushed = false,
                Output::Reply { call: c, reply } if *c == call => {
                    let Ok(Answer::Dag(v)) = reply else {
                        panic!("call {call} answered {reply:?}");
                    };
                    return Some((v.version, !unflushed));
                }
                _ => {}
            }
        }
        None
    }

    fn flushes(out: &[Output]) -> usize {
        out.iter().filter(|o| matches!(o, Output::Flush)).count()
    }

    fn started(out: &[Output]) -> Vec<crate::cluster::worker::JobKey> {
        out.iter()
            .filter_map(|o| match o {
                Output::Run(job) => Some((job.dag, job.task, job.attempt)),
                _ => None,
            })
            .collect()
    }

    /// A leader with one follower (`peer`), which announced 2 executors.
    fn leader_and_peer() -> (Node, NodeId) {
        use bx3_protocol::mesh::{Announce, Gossip};
        let mut node = Node::leader();
        let peer: NodeId = "12D3KooWPollPeer".parse().expect("a node id");
        let me = node.core.cfg.me.clone();
        node.step(vec![
            Input::Connected(peer.clone()),
            Input::Gossip {
                from: peer.clone(),
                msg: Gossip::Announce(Announce {
                    version: "test".into(),
                    executors_total: 2,
                    executors_busy: 0,
                    ram_per_executor_mb: 128,
                    available_ram_mb: 1024,
                    min_free_ram_mb: 0,
                    leader: Some(me),
                    addrs: Vec::new(),
                    replica_seq: 0,
                    ram_slots: 8,
                    cpu_cores: 2,
                    limited_by: String::new(),
                }),
            },
        ]);
        (node, peer)
    }

    fn spec_of(yaml: &str) -> Arc<SpecRecord> {
        Arc::new(SpecRecord {
            dag: parse_dag(yaml).expect("a DAG"),
            modules: module(),
        })
    }

    fn one_task_dag(name: &str) -> Arc<SpecRecord> {
        spec_of(&format!(
            "name: {name}\ntasks:\n  - {{id: a, module: m.wasm}}\n"
        ))
    }

    /// A user's submission, as the API hands it to the core.
    fn submit(call: u64, id: DagId, spec: Arc<SpecRecord>) -> Input {
        Input::Call {
            call,
            what: Call::Submit {
                id,
                spec,
                source: None,
            },
        }
    }

    /// Answers every Replicate to `peer` in `out` as the follower would (it holds them).
    fn replicated(out: &[Output], peer: &NodeId) -> Vec<Input> {
        use bx3_protocol::mesh::{Request, Response};
        out.iter()
            .filter_map(|o| match o {
                Output::Send {
                    to,
                    token,
                    req: Request::Replicate { batches, .. },
                } if to == peer => Some(Input::Answer {
                    token: *token,
                    answer: Ok(Response::Replicated {
                        seq: batches.iter().map(|b| b.seq).max().unwrap_or(0),
                    }),
                }),
                _ => None,
            })
            .collect()
    }

    fn submitted(out: &[Output], call: u64) -> bool {
        out.iter().any(|o| {
            matches!(o, Output::Reply { call: c, reply: Ok(Answer::Submitted(_)) } if *c == call)
        })
    }

    /// Replication is paced under load, but never for a submission: a DAG submitted a
    /// millisecond after the last Replicate to a follower goes to it in the same step (the
    /// one-task latency at a follower went from 2.9 to 4.6 ms when it waited for the pace).
    #[test]
    fn a_submission_is_replicated_at_once_even_right_after_a_batch() {
        let (mut node, peer) = leader_and_peer();
        let out = node.step(vec![submit(1, DagId::new(1, 50), one_task_dag("first"))]);
        let answers = replicated(&out, &peer);
        assert_eq!(
            answers.len(),
            1,
            "the first DAG goes to the follower: {out:?}"
        );
        let out = node.step_after(1, answers);
        assert!(
            submitted(&out, 1),
            "acknowledged once the follower holds it"
        );
        let out = node.step_after(
            1,
            vec![submit(2, DagId::new(1, 51), one_task_dag("second"))],
        );
        let answers = replicated(&out, &peer);
        assert_eq!(answers.len(), 1, "not paced: a submitter waits ({out:?})");
        let out = node.step_after(1, answers);
        assert!(submitted(&out, 2));
    }

    /// The most jobs the controller had on `peer` at once (assigned, no result yet) while
    /// that worker ran `rounds` rounds of results, each task taking `run_ms`.
    fn most_in_flight_on_a_worker(run_ms: u64, rounds: usize) -> usize {
        use bx3_protocol::mesh::{JobResult, Request, Response};
        let (mut node, peer) = leader_and_peer();
        let mut yaml = String::from("name: many\ntasks:\n");
        for i in 0..400 {
            yaml.push_str(&format!("  - {{id: t{i}, module: m.wasm}}\n"));
        }
        let id = DagId::new(1, 43);
        let mut out = node.step(vec![submit(1, id, spec_of(&yaml))]);
        let (mut in_flight, mut most, mut rid) = (Vec::new(), 0, 0);
        for _ in 0..rounds {
            let mut answers = Vec::new();
            for o in &out {
                if let Output::Send { to, token, req } = o {
                    let resp = match req {
                        Request::Assign { jobs, .. } if *to == peer => {
                            in_flight.extend(jobs.iter().map(|j| (j.dag, j.task, j.attempt)));
                            Response::Ok
                        }
                        Request::Replicate { batches, .. } => Response::Replicated {
                            seq: batches.iter().map(|b| b.seq).max().unwrap_or(0),
                        },
                        _ => Response::Ok,
                    };
                    answers.push(Input::Answer {
                        token: *token,
                        answer: Ok(resp),
                    });
                }
            }
            most = most.max(in_flight.len());
            out = node.step(answers);
            rid += 1;
            let results = std::mem::take(&mut in_flight)
                .into_iter()
                .map(|(dag, task, attempt)| JobResult {
                    dag,
                    task,
                    attempt,
                    outcome: Ok(String::new()),
                    run_ms,
                    stderr: None,
                    interrupted: false,
                })
                .collect();
            out.extend(node.step(vec![Input::Request {
                from: peer.clone(),
                rid,
                req: Request::Results { results },
            }]));
        }
        most
    }

    /// A worker keeps one job queued behind each executor while its tasks are long (a new
    /// DAG does not wait behind a queue of them), three once they prove short (one queued
    /// job covers less than the round trip of its result).
    #[test]
    fn a_worker_with_short_tasks_gets_a_deeper_queue() {
        assert_eq!(most_in_flight_on_a_worker(1_000, 30), 4, "2 executors x 2");
        assert_eq!(most_in_flight_on_a_worker(0, 30), 8, "2 executors x 4");
        // Reports beyond the cap do not overflow the average.
        assert_eq!(most_in_flight_on_a_worker(u64::MAX, 30), 4);
    }

    #[test]
    fn a_long_poll_waits_for_the_group_commit_instead_of_forcing_a_flush() {
        let mut node = Node::leader();
        let id = DagId::new(1, 42);
        let mut out = node.step(vec![submit(
            1,
            id,
            spec_of("name: polled\ntasks:\n  - {id: a, module: m.wasm}\n  - {id: b, module: m.wasm}\n  - {id: c, module: m.wasm}\n"),
        )]);
        for _ in 0..20 {
            out.extend(node.step(vec![Input::Tick]));
        }
        let jobs = started(&out);
        assert_eq!(jobs.len(), 2, "two executors, two jobs: {out:?}");

        // A plain read flushes first (what it shows is on disk).
        let out = node.get(2, id, None);
        let (v0, durable) = answered(&out, 2).expect("a plain read is answered at once");
        assert!(durable);

        // Nothing new: a long poll waits.
        let out = node.get(3, id, Some(v0));
        assert_eq!(answered(&out, 3), None);

        // A task finishes; its change is written, not flushed (the DAG goes on).
        let out = node.step(vec![Input::JobDone(JobDone {
            key: jobs[0],
            outcome: Ok("out".into()),
            run_ms: 1,
            stderr: None,
        })]);
        assert_eq!(
            flushes(&out),
            0,
            "a result alone waits for the group commit"
        );
        assert_eq!(
            answered(&out, 3),
            None,
            "the waiting poll sees nothing unflushed"
        );
        assert!(node.writes > node.durable_writes);

        // A new long poll on the old version: not answered from unflushed state, and no
        // flush forced for it.
        let out = node.get(4, id, Some(v0));
        assert_eq!(flushes(&out), 0, "a long poll forces no flush");
        assert_eq!(answered(&out, 4), None);

        // The tick's group commit: flushed, then both polls answered with the new version.
        let out = node.step(vec![Input::Tick]);
        assert_eq!(flushes(&out), 1);
        for call in [3, 4] {
            let (v, durable) = answered(&out, call).expect("answered after the flush");
            assert!(v > v0, "call {call}: version {v} after {v0}");
            assert!(
                durable,
                "call {call} answered before its writes were flushed"
            );
        }
        assert_eq!(node.writes, node.durable_writes);

        // A poll on a version already passed and on disk is answered at once.
        let out = node.get(5, id, Some(v0));
        let (v, durable) = answered(&out, 5).expect("answered at once");
        assert!(v > v0 && durable);
        assert_eq!(flushes(&out), 0);

        // A poll parked unseen on a DAG that did not move past it waits on after the flush.
        let out = node.get(6, id, Some(v));
        assert_eq!(answered(&out, 6), None);
        let out = node.step(vec![Input::JobDone(JobDone {
            key: jobs[1],
            outcome: Ok("out".into()),
            run_ms: 1,
            stderr: None,
        })]);
        assert_eq!(answered(&out, 6), None);
        let out = node.step(vec![Input::Tick]);
        let (v2, durable) = answered(&out, 6).expect("answered after the flush");
        assert!(v2 > v && durable);
    }
}
