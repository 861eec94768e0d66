//! API calls on their way: waiting for a controller to be elected, forwarded to it (and
//! retried when a connection churns), and long polls parked on the controller until the DAG
//! changes.

use std::sync::Arc;

use bx3_protocol::api::TaskQuery;
use bx3_protocol::ids::DagId;
use bx3_protocol::mesh::{Refusal, Request};

use super::out::Asker;
use crate::store::SpecRecord;

/// Most calls parked or waiting to retry at once; more are refused as overloaded.
pub const MAX_PARKED: usize = 1024;
/// Most long polls parked on the controller at once.
pub const MAX_POLLS: usize = 4096;
/// How long a call waits for a controller to be elected.
pub const NO_LEADER_WAIT_MS: u64 = 5_000;
/// How long a submission keeps being retried while the controller is unreachable for a
/// transient reason (a connection closing, an election): it is idempotent (the DAG id is
/// chosen where it entered), so the only cost of waiting is latency.
pub const SUBMIT_RETRY_MS: u64 = 30_000;
/// Same for reads and cancels.
pub const CALL_RETRY_MS: u64 = 10_000;
/// Longest a long poll waits before answering with the unchanged DAG.
pub const MAX_POLL_WAIT_MS: u64 = 60_000;
/// A long poll forwarded to the controller waits at most this long there, below the request
/// timeout, so it ends with an answer.
pub const FORWARDED_POLL_WAIT_MS: u64 = 25_000;

/// An API call, as the core takes it.
#[derive(Debug, Clone)]
pub enum Call {
    Submit {
        id: DagId,
        spec: Arc<SpecRecord>,
        source: Option<String>,
    },
    Get {
        id: DagId,
        tasks: bool,
        /// Only this page of tasks (dashboard, `logs`); `tasks` is then ignored.
        page: Option<TaskQuery>,
        after: Option<u64>,
        wait_ms: u64,
    },
    List {
        limit: usize,
    },
    Cancel {
        id: DagId,
    },
    Status,
}

impl Call {
    /// The request that carries this call to the controller.
    pub fn request(&self) -> Option<Request> {
        Some(match self {
            Call::Submit { id, spec, source } => Request::Submit {
                id: *id,
                spec: (&**spec).into(),
                source: source.clone(),
            },
            Call::Get {
                id,
                tasks,
                page,
                after,
                wait_ms,
            } => Request::GetDag {
                id: *id,
                tasks: *tasks,
                after: *after,
                wait_ms: (*wait_ms).min(FORWARDED_POLL_WAIT_MS),
                page: page.clone(),
            },
            Call::List { limit } => Request::ListDags {
                limit: u32::try_from(*limit).unwrap_or(u32::MAX),
            },
            Call::Cancel { id } => Request::Cancel { id: *id },
            Call::Status => return None,
        })
    }

    /// How long the call keeps being retried after its first try.
    pub fn retry_window_ms(&self) -> u64 {
        match self {
            Call::Submit { .. } => SUBMIT_RETRY_MS,
            _ => CALL_RETRY_MS,
        }
    }
}

/// A call sent to the controller, waiting for its answer.
#[derive(Debug)]
pub struct Forwarded {
    pub asker: Asker,
    pub call: Call,
    /// Tries so far.
    pub tries: u32,
    /// No retry after this (core clock, ms).
    pub give_up_ms: u64,
}

/// A call waiting for a controller, or for its next try.
#[derive(Debug)]
struct Parked {
    asker: Asker,
    call: Call,
    tries: u32,
    give_up_ms: u64,
    not_before_ms: u64,
}

/// A long poll on the controller: answered once DAG `id` passes version `after`, finishes,
/// or `deadline_ms` passes.
#[derive(Debug, Clone)]
pub struct Poll {
    pub asker: Asker,
    pub id: DagId,
    pub tasks: bool,
    pub page: Option<TaskQuery>,
    pub after: u64,
    pub deadline_ms: u64,
    /// Parked without a look at the DAG (its last changes were not on disk yet): after the
    /// next flush it is answered if the DAG passed `after` by then, and waits on otherwise.
    pub unseen: bool,
}

#[derive(Debug, Default)]
pub struct Calls {
    parked: Vec<Parked>,
    polls: Vec<Poll>,
}

impl Calls {
    /// Parks a call until a controller is known (or its next try is due). Refused when too
    /// many are parked.
    pub fn park(
        &mut self,
        asker: Asker,
        call: Call,
        tries: u32,
        give_up_ms: u64,
        not_before_ms: u64,
    ) -> Result<(), (Asker, Refusal)> {
        if self.parked.len() >= MAX_PARKED {
            return Err((
                asker,
                Refusal::Unavailable("too many calls waiting for the controller".into()),
            ));
        }
        self.parked.push(Parked {
            asker,
            call,
            tries,
            give_up_ms,
            not_before_ms,
        });
        Ok(())
    }

    /// Calls whose time to try again has come: (asker, call, tries, give-up time).
    pub fn due(&mut self, now_ms: u64) -> Vec<(Asker, Call, u32, u64)> {
        let (due, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.not_before_ms <= now_ms);
        self.parked = kept;
        due.into_iter()
            .map(|p| (p.asker, p.call, p.tries, p.give_up_ms))
            .collect()
    }

    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    pub fn poll(&mut self, poll: Poll) -> Result<(), Refusal> {
        if self.polls.len() >= MAX_POLLS {
            return Err(Refusal::Unavailable("too many long polls waiting".into()));
        }
        self.polls.push(poll);
        Ok(())
    }

    /// Polls to answer (or look at) now: those `due` says, and those whose deadline passed.
    pub fn polls_due(&mut self, due: &dyn Fn(&Poll) -> bool, now_ms: u64) -> Vec<Poll> {
        if self.polls.is_empty() {
            return Vec::new();
        }
        let (due, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.polls)
            .into_iter()
            .partition(|p| p.deadline_ms <= now_ms || due(p));
        self.polls = kept;
        due
    }

    /// Every poll (this node stopped being the controller: they are answered as they
    /// stand).
    pub fn take_polls(&mut self) -> Vec<Poll> {
        std::mem::take(&mut self.polls)
    }

    pub fn polls(&self) -> usize {
        self.polls.len()
    }
}

/// The delay before retry number `tries` (1-based): 100 ms doubling to 1.6 s.
pub fn backoff_ms(tries: u32) -> u64 {
    100u64 << tries.saturating_sub(1).min(4)
}
