//! What a step of the core asks of the world, and the bookkeeping that goes with it.

use std::collections::HashMap;

use bx3_protocol::api::{DagSummary, DagView, StatusView};
use bx3_protocol::ids::{DagId, ModuleHash, NodeId};
use bx3_protocol::mesh::{Gossip, Job, Refusal, Request, Response};

use super::records::{Overlay, Reads, View, Write};
use super::worker::JobKey;

/// Who asked, and so who gets the answer: an API call on this node, or a peer's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Asker {
    Api(u64),
    Peer(u64),
}

/// What an API call (or a peer's forwarded call) is answered with.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Submitted(DagId),
    Dag(Box<DagView>),
    Dags(Vec<DagSummary>),
    Status(Box<StatusView>),
}

/// One thing for the runtime to do, in order: a `Flush` makes every write before it durable
/// before anything after it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Write(Write),
    Flush,
    /// Something users can see changed and is on disk (wakes watchers).
    Changed,
    Broadcast(Gossip),
    /// A request to a peer; its answer (or failure) comes back as `Input::Answer { token }`.
    Send {
        to: NodeId,
        token: u64,
        req: Request,
    },
    /// The answer to a peer's request `rid`.
    Respond {
        rid: u64,
        resp: Response,
    },
    /// Run a job on one of this node's executors; its end comes back as `Input::JobDone`.
    Run(Job),
    /// Stop a running job (its DAG was cancelled).
    Stop(JobKey),
    /// Fetch modules from the first of `from` that has them (checked against their hash);
    /// the outcome comes back as `Input::Fetched { token }`.
    Fetch {
        token: u64,
        hashes: Vec<ModuleHash>,
        from: Vec<NodeId>,
    },
    /// The answer to API call `call`.
    Reply {
        call: u64,
        reply: Result<Answer, Refusal>,
    },
    /// Addresses a peer says it can be reached at (peer exchange).
    LearnAddrs {
        node: NodeId,
        addrs: Vec<String>,
    },
}

/// The outputs of the current step, with the overlay that lets the step read its own
/// writes, and token numbering for requests and fetches.
#[derive(Debug, Default)]
pub struct Out {
    pub(super) items: Vec<Output>,
    overlay: Overlay,
    next_token: u64,
    /// Writes since the last flush (made durable on the next tick at the latest).
    pub(super) unflushed: bool,
}

impl Out {
    pub fn push(&mut self, o: Output) {
        self.items.push(o);
    }

    pub fn write(&mut self, w: Write) {
        self.overlay.record(&w);
        self.unflushed = true;
        self.items.push(Output::Write(w));
    }

    /// Reads as they will be once this step's writes are applied.
    pub fn view<'a>(&'a self, base: &'a dyn Reads) -> View<'a> {
        self.overlay.over(base)
    }

    /// Makes every write so far durable before what follows (if anything is unflushed).
    pub fn flush(&mut self) -> bool {
        if !std::mem::take(&mut self.unflushed) {
            return false;
        }
        self.items.push(Output::Flush);
        self.items.push(Output::Changed);
        true
    }

    pub fn token(&mut self) -> u64 {
        self.next_token = self.next_token.wrapping_add(1);
        self.next_token
    }

    pub fn send(&mut self, to: NodeId, req: Request) -> u64 {
        let token = self.token();
        self.items.push(Output::Send { to, token, req });
        token
    }

    pub fn answer(&mut self, asker: Asker, result: Result<Answer, Refusal>) {
        match asker {
            Asker::Api(call) => self.items.push(Output::Reply {
                call,
                reply: result,
            }),
            Asker::Peer(rid) => {
                let resp = match result {
                    Ok(Answer::Submitted(id)) => Response::Submitted { id },
                    Ok(Answer::Dag(v)) => Response::Dag(v),
                    Ok(Answer::Dags(v)) => Response::Dags(v),
                    Ok(Answer::Status(_)) => {
                        Response::Refused(Refusal::Invalid("status is not served to peers".into()))
                    }
                    Err(e) => Response::Refused(e),
                };
                self.items.push(Output::Respond { rid, resp });
            }
        }
    }

    pub fn respond(&mut self, rid: u64, resp: Response) {
        self.items.push(Output::Respond { rid, resp });
    }

    /// Ends the step: its outputs, in order. The overlay is dropped: the runtime applies the
    /// writes before the next step reads anything.
    pub(super) fn take(&mut self) -> Vec<Output> {
        self.overlay.clear();
        std::mem::take(&mut self.items)
    }
}

/// What the answer to a request of ours means.
#[derive(Debug)]
pub enum Pending {
    /// Nothing to do with the answer (election messages, aborts).
    Ignore,
    /// Jobs we assigned; on a refusal or failure they go back to the queue.
    Assign {
        node: NodeId,
        jobs: Vec<(DagId, u32, u32)>,
    },
    /// Our results; on failure they are kept for the next try.
    Results(Vec<bx3_protocol::mesh::JobResult>),
    Replicate {
        node: NodeId,
    },
    /// An API call forwarded to the controller.
    Forward(super::calls::Forwarded),
    /// Our digest, sent when we started following `leader`; `held` are the DAGs it named.
    Sync {
        leader: NodeId,
        held: std::collections::HashSet<DagId>,
    },
    /// The DAGs the controller asked for after our digest.
    Push {
        held: std::collections::HashSet<DagId>,
    },
}

/// Requests on their way, by token.
pub type PendingMap = HashMap<u64, Pending>;
