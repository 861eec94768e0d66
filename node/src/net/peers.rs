//! Peer exchange: the table of peers this node has learned an address for (from a peer's own
//! gossip announcement, from identify, from mDNS) and keeps a direct connection to.
//!
//! A plain data structure with time passed in, so the tests drive it; the event loop does
//! the dialing. Everything that enters is checked here: only `/ip4|/ip6/<host>/tcp/<port>`
//! addresses (optionally ending in the peer's own `/p2p/<id>`), never an unspecified,
//! multicast or broadcast host or port 0, at most [`MAX_ADDRS_PER_PEER`] per peer, at most
//! [`MAX_LEARNED_PEERS`] peers (the least recently heard of, disconnected one makes room),
//! never this node itself, and a peer not heard of for [`LEARNED_TTL`] while disconnected is
//! forgotten (mDNS entries go when their mDNS record expires instead).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use libp2p::{multiaddr::Protocol, swarm::ConnectionId, Multiaddr, PeerId};
use tokio::time::Instant;

use super::{MAX_ADDRS_PER_PEER, MAX_LEARNED_PEERS, REDIAL_MAX, REDIAL_MIN};

/// A learned peer that is disconnected and has not been heard of (announcement relayed by
/// another node, identify, mDNS) for this long is forgotten. Announcements go out every
/// second, so a live member is never near this.
pub(super) const LEARNED_TTL: Duration = Duration::from_secs(60);
/// When two nodes learn of each other at the same moment (each hears the other's
/// announcement), the one with the smaller id dials first and the other waits this long, so
/// that the usual outcome is one connection rather than two that must be deduplicated.
pub(super) const DEFER_LARGER: Duration = Duration::from_millis(750);
/// A dial with no outcome after this long is considered lost and retried.
const DIAL_STALE_AFTER: Duration = Duration::from_secs(20);
/// A connection that lived at least this long resets the backoff when it closes.
const STABLE_AFTER: Duration = Duration::from_secs(3);

/// Where an address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The peer's own signed gossip announcement, or identify on a connection to it.
    Peer,
    /// An mDNS response on the LAN.
    Mdns,
}

/// The checked form of an address a peer gave for itself: `/ip4|/ip6/<host>/tcp/<port>`,
/// without `/p2p`. `None` for anything else (other transports, relays, DNS names, extra
/// components), an unspecified/multicast/broadcast host, port 0, or a `/p2p/<id>` naming
/// another peer.
pub(super) fn dialable(addr: &Multiaddr, peer: &PeerId) -> Option<Multiaddr> {
    let mut it = addr.iter();
    let host = match it.next()? {
        Protocol::Ip4(ip) if !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast() => {
            Protocol::Ip4(ip)
        }
        Protocol::Ip6(ip) if !ip.is_unspecified() && !ip.is_multicast() => Protocol::Ip6(ip),
        _ => return None,
    };
    let port = match it.next()? {
        Protocol::Tcp(port) if port != 0 => port,
        _ => return None,
    };
    match it.next() {
        None => {}
        Some(Protocol::P2p(id)) if id == *peer => {}
        Some(_) => return None,
    }
    if it.next().is_some() {
        return None;
    }
    Some(Multiaddr::empty().with(host).with(Protocol::Tcp(port)))
}

/// Whether the address is on a loopback interface.
pub(super) fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

#[derive(Debug)]
struct Entry {
    /// Newest first, at most `MAX_ADDRS_PER_PEER`.
    addrs: VecDeque<Multiaddr>,
    /// Last time any source mentioned the peer (or we were connected to it).
    last_heard: Instant,
    /// Has an mDNS record: kept until mDNS says it expired, not by `LEARNED_TTL`.
    mdns: bool,
    /// Our dial in flight and when it started.
    dialing: Option<(ConnectionId, Instant)>,
    /// When the current connection came up (`None`: not connected).
    connected_at: Option<Instant>,
    /// No dial before this.
    next_attempt: Instant,
    /// Delay before the next attempt after this one fails.
    backoff: Duration,
}

impl Entry {
    fn schedule_retry(&mut self, now: Instant) {
        self.next_attempt = now + self.backoff;
        self.backoff = (self.backoff * 2).min(REDIAL_MAX);
    }
}

/// What `learn` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Learned {
    /// Addresses not known before (the caller tells the swarm about them).
    pub new_addrs: Vec<Multiaddr>,
    /// Addresses refused by the checks.
    pub refused: usize,
}

/// The learned-peer table.
#[derive(Debug)]
pub(super) struct Table {
    local: PeerId,
    entries: HashMap<PeerId, Entry>,
}

impl Table {
    pub(super) fn new(local: PeerId) -> Table {
        Table {
            local,
            entries: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Addresses of `peer`, as the peer itself gave them. Unusable ones are dropped; this
    /// node's own id is ignored; a full table makes room by forgetting the disconnected peer
    /// heard of least recently (or refuses the new peer if every entry is connected).
    pub(super) fn learn(
        &mut self,
        peer: PeerId,
        addrs: &[Multiaddr],
        source: Source,
        now: Instant,
    ) -> Learned {
        let mut out = Learned::default();
        if peer == self.local {
            out.refused = addrs.len();
            return out;
        }
        // Checked and capped before anything is stored: a peer cannot make us hold more
        // than MAX_ADDRS_PER_PEER addresses whatever it sends.
        let mut good: Vec<Multiaddr> = Vec::new();
        for a in addrs {
            match dialable(a, &peer) {
                Some(a) if !good.contains(&a) => {
                    if good.len() < MAX_ADDRS_PER_PEER {
                        good.push(a);
                    }
                }
                Some(_) => {}
                None => out.refused += 1,
            }
        }
        if good.is_empty() {
            // Still a sign of life for a peer we know.
            if let Some(e) = self.entries.get_mut(&peer) {
                e.last_heard = now;
            }
            return out;
        }
        if !self.entries.contains_key(&peer) && !self.make_room() {
            out.refused += good.len();
            return out;
        }
        let local = self.local;
        let e = self.entries.entry(peer).or_insert_with(|| Entry {
            addrs: VecDeque::new(),
            last_heard: now,
            mdns: false,
            dialing: None,
            connected_at: None,
            // The smaller id dials first; see DEFER_LARGER.
            next_attempt: if local < peer {
                now
            } else {
                now + DEFER_LARGER
            },
            backoff: REDIAL_MIN,
        });
        e.last_heard = now;
        e.mdns |= source == Source::Mdns;
        // Newest first: the announced list goes in front in its own order.
        for a in good.into_iter().rev() {
            if let Some(i) = e.addrs.iter().position(|x| *x == a) {
                e.addrs.remove(i);
            } else {
                out.new_addrs.push(a.clone());
            }
            e.addrs.push_front(a);
        }
        e.addrs.truncate(MAX_ADDRS_PER_PEER);
        out
    }

    /// Forgets the least recently heard-of disconnected peer if the table is full. False if
    /// the table is full of connected peers.
    fn make_room(&mut self) -> bool {
        if self.entries.len() < MAX_LEARNED_PEERS {
            return true;
        }
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.connected_at.is_none())
            .min_by_key(|(_, e)| e.last_heard)
            .map(|(p, _)| *p);
        match victim {
            Some(p) => {
                self.entries.remove(&p);
                true
            }
            None => false,
        }
    }

    /// An mDNS record for `addr` expired: that address goes; the peer goes with its last
    /// address unless it is connected (then it stays, on the usual expiry).
    pub(super) fn mdns_expired(&mut self, peer: &PeerId, addr: &Multiaddr) {
        let Some(base) = dialable(addr, peer) else {
            return;
        };
        if let Some(e) = self.entries.get_mut(peer) {
            e.addrs.retain(|a| *a != base);
            if e.addrs.is_empty() && e.connected_at.is_none() {
                self.entries.remove(peer);
            } else {
                e.mdns = false;
            }
        }
    }

    /// Peers to dial now, with their addresses: disconnected (per `is_connected`), not being
    /// dialed, due, and not more than `room` of them.
    pub(super) fn due(
        &mut self,
        now: Instant,
        room: usize,
        is_connected: impl Fn(&PeerId) -> bool,
    ) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut out = Vec::new();
        for (peer, e) in self.entries.iter_mut() {
            if out.len() >= room {
                break;
            }
            if let Some((_, since)) = e.dialing {
                if now.duration_since(since) < DIAL_STALE_AFTER {
                    continue;
                }
                e.dialing = None;
            }
            if now < e.next_attempt || is_connected(peer) || e.addrs.is_empty() {
                continue;
            }
            out.push((*peer, e.addrs.iter().cloned().collect()));
        }
        out
    }

    pub(super) fn dial_started(&mut self, peer: &PeerId, id: ConnectionId, now: Instant) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.dialing = Some((id, now));
        }
    }

    /// A dial of ours failed (by connection id), or could not start (`peer` given).
    pub(super) fn dial_failed(
        &mut self,
        id: Option<ConnectionId>,
        peer: Option<&PeerId>,
        now: Instant,
    ) {
        for (p, e) in self.entries.iter_mut() {
            let ours = match (id, e.dialing) {
                (Some(id), Some((d, _))) => id == d,
                _ => false,
            };
            if ours || peer == Some(p) {
                e.dialing = None;
                e.schedule_retry(now);
            }
        }
    }

    /// Whether a dial in flight is ours (learned-peer dial).
    pub(super) fn is_our_dial(&self, id: ConnectionId) -> bool {
        self.entries
            .values()
            .any(|e| e.dialing.is_some_and(|(d, _)| d == id))
    }

    /// The first connection to `peer` is up (whoever dialed).
    pub(super) fn connected(&mut self, peer: &PeerId, now: Instant) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.dialing = None;
            e.connected_at = Some(now);
            e.last_heard = now;
        }
    }

    /// The last connection to `peer` closed: redial with backoff (reset if it was stable).
    pub(super) fn disconnected(&mut self, peer: &PeerId, now: Instant) {
        if let Some(e) = self.entries.get_mut(peer) {
            if e.connected_at
                .take()
                .is_some_and(|since| now.duration_since(since) >= STABLE_AFTER)
            {
                e.backoff = REDIAL_MIN;
            }
            e.last_heard = now;
            e.schedule_retry(now);
        }
    }

    /// Unblocking a peer redials it at once.
    pub(super) fn redial_now(&mut self, peer: &PeerId, now: Instant) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.backoff = REDIAL_MIN;
            e.next_attempt = now;
        }
    }

    /// Forgets disconnected, non-mDNS peers not heard of for `LEARNED_TTL`. Returns them.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let gone: Vec<PeerId> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.connected_at.is_none()
                    && !e.mdns
                    && e.dialing.is_none()
                    && now.duration_since(e.last_heard) > LEARNED_TTL
            })
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.entries.remove(p);
        }
        gone
    }

    #[cfg(test)]
    fn addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.entries
            .get(peer)
            .map(|e| e.addrs.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().expect("test multiaddr")
    }

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn only_plain_tcp_addresses_of_the_peer_itself_are_dialable() {
        let p = peer();
        let other = peer();
        let ok = [
            ("/ip4/192.168.1.20/tcp/4001", "/ip4/192.168.1.20/tcp/4001"),
            ("/ip4/127.0.0.1/tcp/7", "/ip4/127.0.0.1/tcp/7"),
            ("/ip6/::1/tcp/4001", "/ip6/::1/tcp/4001"),
        ];
        for (a, want) in ok {
            assert_eq!(dialable(&ma(a), &p), Some(ma(want)), "{a}");
        }
        assert_eq!(
            dialable(&ma(&format!("/ip4/10.0.0.1/tcp/1/p2p/{p}")), &p),
            Some(ma("/ip4/10.0.0.1/tcp/1")),
            "its own /p2p suffix is stripped"
        );
        let bad = [
            "/ip4/0.0.0.0/tcp/4001".to_string(),
            "/ip6/::/tcp/4001".into(),
            "/ip4/224.0.0.251/tcp/4001".into(),
            "/ip4/255.255.255.255/tcp/4001".into(),
            "/ip4/10.0.0.1/tcp/0".into(),
            "/ip4/10.0.0.1/udp/4001/quic-v1".into(),
            "/dns4/example.com/tcp/4001".into(),
            "/ip4/10.0.0.1".into(),
            "/tcp/4001".into(),
            format!("/ip4/10.0.0.1/tcp/1/p2p/{other}"),
            format!("/ip4/10.0.0.1/tcp/1/p2p/{p}/p2p-circuit"),
            "/ip4/10.0.0.1/tcp/1/ws".into(),
        ];
        for a in bad {
            assert_eq!(dialable(&ma(&a), &p), None, "{a}");
        }
    }

    #[test]
    fn learn_checks_caps_and_orders_newest_first() {
        let me = peer();
        let p = peer();
        let mut t = Table::new(me);
        let now = Instant::now();
        let r = t.learn(me, &[ma("/ip4/10.0.0.1/tcp/1")], Source::Peer, now);
        assert_eq!((t.len(), r.refused), (0, 1), "never ourselves");

        let many: Vec<Multiaddr> = (1..=20)
            .map(|i| ma(&format!("/ip4/10.0.0.{i}/tcp/4001")))
            .chain([ma("/ip4/0.0.0.0/tcp/1")])
            .collect();
        let r = t.learn(p, &many, Source::Peer, now);
        assert_eq!(r.new_addrs.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(t.addrs(&p).len(), MAX_ADDRS_PER_PEER, "capped per peer");
        assert_eq!(t.addrs(&p)[0], ma("/ip4/10.0.0.1/tcp/4001"));
        let r = t.learn(p, &[ma("/ip4/10.9.9.9/tcp/5")], Source::Peer, now);
        assert_eq!(r.new_addrs, vec![ma("/ip4/10.9.9.9/tcp/5")]);
        let a = t.addrs(&p);
        assert_eq!(a.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(
            a[0],
            ma("/ip4/10.9.9.9/tcp/5"),
            "newest first, oldest dropped"
        );
        let r = t.learn(p, &[ma("/ip4/10.9.9.9/tcp/5")], Source::Peer, now);
        assert!(r.new_addrs.is_empty(), "known address is no news");
    }

    #[test]
    fn table_is_bounded_and_evicts_the_stalest_disconnected_peer() {
        let mut t = Table::new(peer());
        let start = Instant::now();
        let mut first = None;
        for i in 0..MAX_LEARNED_PEERS {
            let p = peer();
            first.get_or_insert(p);
            let at = start + Duration::from_millis(i as u64);
            t.learn(p, &[ma("/ip4/10.0.0.1/tcp/1")], Source::Peer, at);
        }
        assert_eq!(t.len(), MAX_LEARNED_PEERS);
        let first = first.expect("one peer");
        let late = start + Duration::from_secs(5);
        let newcomer = peer();
        t.learn(newcomer, &[ma("/ip4/10.0.0.2/tcp/1")], Source::Peer, late);
        assert_eq!(t.len(), MAX_LEARNED_PEERS, "still bounded");
        assert!(t.addrs(&first).is_empty(), "the stalest one made room");
        assert!(!t.addrs(&newcomer).is_empty());
    }

    #[test]
    fn dialing_backoff_connection_and_expiry() {
        let me = PeerId::random();
        let p = PeerId::random();
        let mut t = Table::new(me);
        let now = Instant::now();
        t.learn(p, &[ma("/ip4/10.0.0.1/tcp/1")], Source::Peer, now);
        let first_due = if me < p { now } else { now + DEFER_LARGER };
        assert!(t.due(first_due, 64, |_| false).len() == 1);
        assert!(t.due(first_due, 0, |_| false).is_empty(), "room respected");
        assert!(
            t.due(first_due, 64, |_| true).is_empty(),
            "connected: no dial"
        );

        let id = ConnectionId::new_unchecked(1);
        t.dial_started(&p, id, first_due);
        assert!(t.is_our_dial(id));
        assert!(t.due(first_due, 64, |_| false).is_empty(), "dial in flight");
        t.dial_failed(Some(id), None, first_due);
        assert!(t.due(first_due, 64, |_| false).is_empty(), "backing off");
        assert_eq!(t.due(first_due + REDIAL_MIN, 64, |_| false).len(), 1);

        t.connected(&p, first_due);
        let later = first_due + LEARNED_TTL * 2;
        assert!(t.expire(later).is_empty(), "connected peers stay");
        t.disconnected(&p, later);
        assert!(t.expire(later + LEARNED_TTL).is_empty(), "not yet");
        assert_eq!(
            t.expire(later + LEARNED_TTL + Duration::from_millis(1)),
            vec![p],
            "silent and disconnected too long"
        );
    }

    #[test]
    fn mdns_entries_live_until_their_record_expires() {
        let mut t = Table::new(peer());
        let p = peer();
        let a = ma("/ip4/10.0.0.1/tcp/1");
        let now = Instant::now();
        t.learn(p, std::slice::from_ref(&a), Source::Mdns, now);
        assert!(t.expire(now + LEARNED_TTL * 10).is_empty());
        t.mdns_expired(&p, &a);
        assert_eq!(t.len(), 0);
    }
}
