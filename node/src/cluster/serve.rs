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
                // What a read shows is on disk: a task shown as done stays done.
                self.flush(reads)?;
                let view = self.view(id, tasks, page.as_ref(), reads)?;
                match (after, view) {
                    (Some(after), Ok(v)) if v.version <= after && !v.state.is_terminal() => {
                        let poll = Poll {
                            asker,
                            id,
                            tasks,
                            page,
                            after,
                            deadline_ms: self.now.mono_ms + wait_ms.min(MAX_POLL_WAIT_MS),
                        };
                        if let Err(e) = self.calls.poll(poll) {
                            self.out.answer(asker, Err(e));
                        }
                    }
                    (_, view) => self
                        .out
                        .answer(asker, view.map(|v| Answer::Dag(Box::new(v)))),
                }
                Ok(())
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
        let (Some(meta), Some(spec)) = (view.meta(&id)?, view.spec(&id)?) else {
            return Ok(Err(Refusal::NotFound(format!("DAG {id}"))));
        };
        let records = if tasks || page.is_some() {
            view.tasks(&id, spec.dag.tasks.len())?
        } else {
            Vec::new()
        };
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
