//! Who is in the mesh: peers heard from recently, with what they last announced.
//!
//! Time is passed in (milliseconds), so the table is a plain data structure the tests drive.
//! A peer not heard from for `down_after_ms` is down: the caller removes its executors from
//! the pool and re-queues its tasks. A peer that speaks again simply rejoins.

use std::collections::HashMap;

use bx3_protocol::ids::NodeId as Id;
use bx3_protocol::mesh::{Announce, MAX_ANNOUNCED_ADDRS};

/// The most executors one node is believed to have: an announcement above it is clamped (a
/// node that claims four billion would otherwise pull every job to itself).
pub const MAX_EXECUTORS: u32 = 4096;
/// The most members kept; a peer beyond it is not admitted until one leaves.
pub const MAX_MEMBERS: usize = 1024;
/// Longest version string kept from an announcement.
const MAX_VERSION_LEN: usize = 64;

/// An announcement as far as it can be believed: counts clamped to what a node can have,
/// strings and lists cut to their caps.
pub fn sanitize(mut a: Announce) -> Announce {
    a.executors_total = a.executors_total.min(MAX_EXECUTORS);
    a.executors_busy = a.executors_busy.min(a.executors_total);
    // 16 TiB of RAM per executor or free is more than any device this runs on.
    let ram_cap = 16 * 1024 * 1024;
    a.ram_per_executor_mb = a.ram_per_executor_mb.min(ram_cap);
    a.available_ram_mb = a.available_ram_mb.min(ram_cap);
    a.min_free_ram_mb = a.min_free_ram_mb.min(ram_cap);
    a.ram_slots = a.ram_slots.min(u64::from(MAX_EXECUTORS));
    a.cpu_cores = a.cpu_cores.min(u64::from(MAX_EXECUTORS));
    if a.limited_by.len() > 32 {
        a.limited_by.clear();
    }
    if a.version.len() > MAX_VERSION_LEN {
        a.version = a.version.chars().take(MAX_VERSION_LEN).collect();
    }
    a.addrs.truncate(MAX_ANNOUNCED_ADDRS);
    a.addrs.retain(|s| s.len() <= 256);
    a
}

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
        let full = self.map.len() >= MAX_MEMBERS;
        match self.map.get_mut(id) {
            Some(m) => {
                m.last_heard_ms = now_ms;
                false
            }
            None if full => false,
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
        let a = sanitize(a);
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
    fn announcements_are_clamped_to_what_a_node_can_have() {
        let mut m = Members::new();
        let a: Id = "a".parse().expect("id");
        let huge = Announce {
            executors_total: u32::MAX,
            executors_busy: u32::MAX,
            ram_per_executor_mb: u64::MAX,
            addrs: vec!["/ip4/1.2.3.4/tcp/1".into(); 1000],
            version: "v".repeat(10_000),
            ..Announce::default()
        };
        m.announce(&a, huge, 0);
        let got = &m.get(&a).expect("member").announce;
        assert_eq!(got.executors_total, MAX_EXECUTORS);
        assert!(got.executors_busy <= got.executors_total);
        assert!(got.ram_per_executor_mb < u64::MAX);
        assert_eq!(got.addrs.len(), MAX_ANNOUNCED_ADDRS);
        assert!(got.version.len() <= MAX_VERSION_LEN);
    }

    #[test]
    fn join_change_expire_rejoin() {
        let mut m = Members::new();
        let a: Id = "a".parse().expect("id");
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
