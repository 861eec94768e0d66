//! Who is in the mesh: peers heard from recently, with what they last announced.
//!
//! Time is passed in (milliseconds), so the table is a plain data structure the tests drive.
//! A peer not heard from for `down_after_ms` is down: the caller removes its executors from
//! the pool and re-queues its tasks. A peer that speaks again simply rejoins.

use std::collections::HashMap;

use super::{Announce, Id};

/// How long a silent peer stays a member. Announcements go out every second, so three missed
/// in a row (far less than the original system's 60 s).
pub const DOWN_AFTER_MS: u64 = 3_000;

#[derive(Debug, Clone)]
pub struct Member {
    pub announce: Announce,
    pub last_heard_ms: u64,
    /// Whether we have seen an announcement yet (until then its executors are unknown).
    pub announced: bool,
}

#[derive(Debug, Default)]
pub struct Members {
    map: HashMap<Id, Member>,
}

impl Members {
    pub fn new() -> Members {
        Members::default()
    }

    /// Any traffic from `id`. Returns true if it was not a member before (it joined).
    pub fn heard(&mut self, id: &Id, now_ms: u64) -> bool {
        match self.map.get_mut(id) {
            Some(m) => {
                m.last_heard_ms = now_ms;
                false
            }
            None => {
                self.map.insert(
                    id.clone(),
                    Member {
                        announce: Announce::default(),
                        last_heard_ms: now_ms,
                        announced: false,
                    },
                );
                true
            }
        }
    }

    /// An announcement from `id`. Returns true if it joined or its executor count changed.
    pub fn announce(&mut self, id: &Id, a: Announce, now_ms: u64) -> bool {
        let joined = self.heard(id, now_ms);
        let Some(m) = self.map.get_mut(id) else {
            return joined;
        };
        let changed = !m.announced || m.announce.executors_total != a.executors_total;
        m.announce = a;
        m.announced = true;
        joined || changed
    }

    /// Removes and returns the peers silent for longer than `DOWN_AFTER_MS`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Id> {
        let down: Vec<Id> = self
            .map
            .iter()
            .filter(|(_, m)| now_ms.saturating_sub(m.last_heard_ms) > DOWN_AFTER_MS)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &down {
            self.map.remove(id);
        }
        down
    }

    pub fn remove(&mut self, id: &Id) -> Option<Member> {
        self.map.remove(id)
    }

    pub fn get(&self, id: &Id) -> Option<&Member> {
        self.map.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Id, &Member)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(total: u32) -> Announce {
        Announce {
            executors_total: total,
            ..Announce::default()
        }
    }

    #[test]
    fn join_change_expire_rejoin() {
        let mut m = Members::new();
        let a: Id = "a".into();
        assert!(m.announce(&a, ann(4), 0), "joins");
        assert!(!m.announce(&a, ann(4), 1000), "same capacity is no news");
        assert!(m.announce(&a, ann(2), 2000), "capacity change is news");
        assert!(m.expire(2000 + DOWN_AFTER_MS).is_empty(), "not yet");
        assert_eq!(
            m.expire(2001 + DOWN_AFTER_MS),
            vec![a.clone()],
            "silent too long"
        );
        assert!(m.is_empty());
        assert!(m.heard(&a, 9000), "rejoins");
        assert!(
            !m.get(&a).expect("member").announced,
            "executors unknown until it announces"
        );
    }
}
