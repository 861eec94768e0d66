//! The event loop: the one task that owns the [`Swarm`].
//!
//! One `select!`, biased: shutdown first, then local work (client commands, queued events to
//! the node, the node's answers to inbound requests, a 100 ms tick that redials static peers,
//! closes duplicate connections and closes stalled ones), then the swarm. Nothing
//! here ever awaits the node: events go out with `try_send` (gossip is dropped when the node
//! is behind; other events wait in a bounded queue), and the node's answers to inbound
//! requests come back through futures polled by the loop.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use either::Either;
use libp2p::{
    core::{upgrade, ConnectedPoint, Transport as _},
    futures::{future::BoxFuture, stream::FuturesUnordered, StreamExt},
    gossipsub, identify, mdns,
    multiaddr::Protocol,
    noise, ping,
    pnet::PnetConfig,
    request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel},
    swarm::{
        dial_opts::{DialOpts, PeerCondition},
        ConnectionId, DialError, SwarmEvent,
    },
    tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder,
};
use tokio::{
    sync::{mpsc, mpsc::error::TrySendError, oneshot},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::{
    behaviour::{Behaviour, BehaviourEvent, PING_INTERVAL, PING_TIMEOUT},
    peers::{self, Source},
    Command, Config, Event, NetError, Validator, GOSSIP_TOPIC, MAX_INBOUND_PER_PEER,
    MAX_MESH_PEERS, REDIAL_MAX, REDIAL_MIN,
};

/// Connections with no open stream are closed after this long.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on TCP connect + noise + yamux negotiation, in both directions. libp2p sets none, so
/// without it a peer that accepts TCP and then says nothing holds a pending connection forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the network loop does its housekeeping (not the cluster core's 100 ms tick):
/// static peers are checked for a due redial, duplicate connections for a due close.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(250);
/// A duplicate connection is closed this long after it is noticed, so that the other end has
/// established its side of the connection we keep before we close the other one (closing at
/// once can leave the other end with no connection for a moment: a Disconnected/Connected
/// flap).
const DUPLICATE_GRACE: Duration = Duration::from_millis(500);
/// A static peer's connection that lived at least this long resets its backoff when it
/// closes; shorter ones (e.g. the remote refusing us) keep doubling it, so a flapping peer is
/// redialed at most every `REDIAL_MAX`.
const STABLE_AFTER: Duration = Duration::from_secs(3);
/// A connection with no successful ping for this long is closed as stalled. libp2p's ping
/// reports a failure only from the second consecutive one, and a ping stream stuck in
/// negotiation takes the 10 s substream timeout to fail: on a connection that silently stopped
/// carrying bytes the first `ping::Failure` comes ~15 s late, so this watchdog does the job.
const STALL_AFTER: Duration = PING_INTERVAL
    .saturating_add(PING_TIMEOUT)
    .saturating_add(Duration::from_secs(2));
/// A static-peer dial with no outcome after this long is considered lost and retried.
const DIAL_STALE_AFTER: Duration = Duration::from_secs(20);
/// Events waiting for room in the node's channel (gossip never waits: it is dropped).
const OUTBOX_CAPACITY: usize = 1024;
/// Inbound requests handed to the node and not answered yet; more are refused.
const MAX_INBOUND_REQUESTS: usize = 256;
/// Outbound requests waiting for a response; more are refused.
const MAX_PENDING_REQUESTS: usize = 1024;
/// Client dials waiting for an outcome; more are refused.
const MAX_PENDING_DIALS: usize = 64;

/// The node's answer to one inbound request (`None`: dropped or too late), with the libp2p
/// channel to send it on.
type InboundReply = BoxFuture<'static, (PeerId, Option<Vec<u8>>, ResponseChannel<Vec<u8>>)>;

/// A request we sent and whose response we wait for.
struct PendingRequest {
    peer: PeerId,
    reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
}

/// A dial asked for by a client.
struct PendingDial {
    addr: Multiaddr,
    reply: oneshot::Sender<Result<(), NetError>>,
}

/// A `--peer` address we keep connected to.
#[derive(Debug)]
struct StaticPeer {
    /// Address to dial, without `/p2p`.
    addr: Multiaddr,
    /// From `/p2p/<id>`, or learned from the first connection our dial established.
    peer: Option<PeerId>,
    /// Our dial in flight, and when it started.
    dialing: Option<(ConnectionId, Instant)>,
    /// When the current connection came up (to tell stable connections from flaps).
    connected_at: Option<Instant>,
    /// No dial before this.
    next_attempt: Instant,
    /// Delay before the next attempt after this one fails.
    backoff: Duration,
}

impl StaticPeer {
    fn new(addr: &Multiaddr, now: Instant) -> Self {
        let (addr, peer) = split_peer(addr);
        Self {
            addr,
            peer,
            dialing: None,
            connected_at: None,
            next_attempt: now,
            backoff: REDIAL_MIN,
        }
    }

    /// Schedules the next attempt after the current delay, and doubles the delay.
    fn schedule_retry(&mut self, now: Instant) {
        self.next_attempt = now + self.backoff;
        self.backoff = (self.backoff * 2).min(REDIAL_MAX);
    }

    fn dial_failed(&mut self, now: Instant) {
        self.dialing = None;
        self.schedule_retry(now);
    }

    fn disconnected(&mut self, now: Instant) {
        if self
            .connected_at
            .take()
            .is_some_and(|since| now.duration_since(since) >= STABLE_AFTER)
        {
            self.backoff = REDIAL_MIN;
        }
        self.schedule_retry(now);
    }
}

/// Splits a trailing `/p2p/<id>` off an address.
fn split_peer(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => (base, Some(peer)),
        _ => (addr.clone(), None),
    }
}

/// The network actor's state. Only `run` touches it.
pub(super) struct EventLoop {
    /// The one Swarm; nothing else in the process touches it.
    swarm: Swarm<Behaviour>,
    /// Our own id, for the duplicate-connection tie-break and to skip ourselves.
    local_peer_id: PeerId,
    /// Commands from the `Client`s.
    commands: mpsc::Receiver<Command>,
    /// False once every `Client` is dropped (the loop then only serves the swarm).
    commands_open: bool,
    /// Events to the node (bounded).
    events: mpsc::Sender<Event>,
    /// Non-gossip events waiting for room in `events`, oldest first (bounded).
    outbox: VecDeque<Event>,
    /// The node's gossip validator.
    validator: Validator,
    /// The gossip topic we publish on.
    topic: gossipsub::IdentTopic,
    /// Our outbound requests awaiting a response, by libp2p request id.
    pending_requests: HashMap<OutboundRequestId, PendingRequest>,
    /// Client dials awaiting an outcome, by connection id.
    pending_dials: HashMap<ConnectionId, PendingDial>,
    /// Inbound requests handed to the node, awaiting its answer.
    inbound: FuturesUnordered<InboundReply>,
    /// Established connections per peer, with whether we dialed them (for deduplication).
    connections: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    /// Connections we closed or will close, until they are gone.
    closing: HashSet<ConnectionId>,
    /// Duplicate connections to close once their grace period is over.
    duplicates: Vec<(Instant, PeerId, ConnectionId)>,
    /// Last sign of life (establishment or successful ping) per connection, to close stalled
    /// ones; connections whose peer does not speak ping are not watched.
    last_alive: HashMap<ConnectionId, (PeerId, Instant)>,
    /// `--peer` addresses we keep connected.
    static_peers: Vec<StaticPeer>,
    /// Peers learned from their announcements, identify and mDNS, kept connected up to
    /// `MAX_MESH_PEERS` (bounded, with expiry).
    learned: peers::Table,
    /// Unanswered inbound requests per peer (bounded by `MAX_INBOUND_PER_PEER`); entries
    /// go when they reach zero.
    inbound_per_peer: HashMap<PeerId, usize>,
    /// Connected peers, published to the `Client`s.
    connected_tx: tokio::sync::watch::Sender<HashSet<PeerId>>,
    /// Peers blocked through `Client::block` (mirrors the block-list behaviour).
    blocked: HashSet<PeerId>,
    /// Caps and timeouts from the config.
    max_message: usize,
    max_gossip: usize,
    request_timeout: Duration,
    /// Stops the loop.
    shutdown: CancellationToken,
}

impl EventLoop {
    pub(super) fn new(
        config: Config,
        validator: Validator,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        connected_tx: tokio::sync::watch::Sender<HashSet<PeerId>>,
        shutdown: CancellationToken,
    ) -> Result<Self, NetError> {
        let behaviour = Behaviour::new(&config)?;
        let psk = config.psk;
        // What `with_tcp(tcp, noise, yamux)` builds, plus a handshake timeout, and with a
        // mesh key the pnet handshake (XSalsa20 with the pre-shared key) under everything
        // else: without the key, a peer cannot even start the noise handshake.
        let builder = SwarmBuilder::with_existing_identity(config.keypair.clone())
            .with_tokio()
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)
                    .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
                let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
                let base = match psk {
                    Some(psk) => Either::Left(
                        tcp.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket)),
                    ),
                    None => Either::Right(tcp),
                };
                Ok(base
                    .upgrade(upgrade::Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(HANDSHAKE_TIMEOUT))
            })
            .map_err(|e| NetError::Config(format!("transport: {e}")))?;
        // Bytes in and out on the mesh: libp2p's bandwidth counters, in the node's registry.
        let mut registry = config.metrics.registry();
        let mut swarm = builder
            .with_bandwidth_metrics(&mut registry)
            .with_behaviour(|_| behaviour)
            .map_err(|e| match e {})?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build();
        drop(registry);

        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }

        let local_peer_id = *swarm.local_peer_id();
        let now = Instant::now();
        let mut static_peers = Vec::with_capacity(config.peers.len());
        for addr in &config.peers {
            let peer = StaticPeer::new(addr, now);
            match peer.peer {
                Some(id) if id == local_peer_id => {
                    warn!(%addr, "ignoring static peer: it is this node");
                    continue;
                }
                Some(id) => swarm.add_peer_address(id, peer.addr.clone()),
                None => {}
            }
            static_peers.push(peer);
        }

        Ok(Self {
            swarm,
            local_peer_id,
            commands,
            commands_open: true,
            events,
            outbox: VecDeque::new(),
            validator,
            topic: gossipsub::IdentTopic::new(GOSSIP_TOPIC),
            pending_requests: HashMap::new(),
            pending_dials: HashMap::new(),
            inbound: FuturesUnordered::new(),
            connections: HashMap::new(),
            closing: HashSet::new(),
            duplicates: Vec::new(),
            last_alive: HashMap::new(),
            static_peers,
            learned: peers::Table::new(local_peer_id),
            inbound_per_peer: HashMap::new(),
            connected_tx,
            blocked: HashSet::new(),
            max_message: config.max_message,
            max_gossip: config.max_gossip,
            request_timeout: config.request_timeout,
            shutdown,
        })
    }

    pub(super) async fn run(mut self) {
        info!(peer_id = %self.local_peer_id, "network started");
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                command = self.commands.recv(), if self.commands_open => match command {
                    Some(command) => self.handle_command(command),
                    None => {
                        debug!("every client dropped; serving the swarm only");
                        self.commands_open = false;
                    }
                },
                // Owned permit: a borrowed one would hold `self` across the handlers.
                permit = self.events.clone().reserve_owned(), if !self.outbox.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.outbox.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => {
                        debug!(dropped = self.outbox.len(), "event receiver gone; dropping queued events");
                        self.outbox.clear();
                    }
                },
                Some(done) = self.inbound.next(), if !self.inbound.is_empty() => {
                    self.handle_inbound_reply(done);
                }
                _ = tick.tick() => self.handle_tick(),
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
            }
        }
        info!(peer_id = %self.local_peer_id, "network stopped");
    }

    // ---------------------------------------------------------------- commands

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Publish { data, reply } => {
                let _ = reply.send(self.publish(data));
            }
            Command::Request { peer, data, reply } => {
                self.handle_request_command(peer, data, reply)
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { addr, reply } => self.handle_dial_command(addr, reply),
            Command::LearnAddrs { peer, addrs } => {
                if !self.blocked.contains(&peer) {
                    self.learn(peer, &addrs, Source::Peer);
                }
            }
            Command::Block {
                peer,
                blocked,
                reply,
            } => {
                self.set_blocked(peer, blocked);
                let _ = reply.send(());
            }
        }
    }

    fn publish(&mut self, data: Vec<u8>) -> Result<(), NetError> {
        let size = data.len();
        if size > self.max_gossip {
            return Err(NetError::TooLarge {
                size,
                max: self.max_gossip,
            });
        }
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), data)
        {
            Ok(id) => {
                debug!(message_id = %id, size, "gossip published");
                Ok(())
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                debug!(size, "no gossip peer yet; message not sent");
                Ok(())
            }
            Err(gossipsub::PublishError::Duplicate) => Ok(()),
            Err(gossipsub::PublishError::MessageTooLarge) => Err(NetError::TooLarge {
                size,
                max: self.max_gossip,
            }),
            Err(e) => Err(NetError::Publish(e.to_string())),
        }
    }

    fn handle_request_command(
        &mut self,
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    ) {
        let size = data.len();
        let refusal = if size > self.max_message {
            Some(NetError::TooLarge {
                size,
                max: self.max_message,
            })
        } else if peer == self.local_peer_id {
            Some(NetError::Dial {
                target: peer.to_string(),
                reason: "that is this node".into(),
            })
        } else if self.blocked.contains(&peer) {
            Some(NetError::Blocked { peer })
        } else if self.pending_requests.len() >= MAX_PENDING_REQUESTS {
            Some(NetError::Overloaded(
                "too many requests awaiting a response",
            ))
        } else {
            None
        };
        if let Some(error) = refusal {
            let _ = reply.send(Err(error));
            return;
        }
        let id = self.swarm.behaviour_mut().rpc.send_request(&peer, data);
        debug!(%peer, request = %id, size, "request sent");
        self.pending_requests
            .insert(id, PendingRequest { peer, reply });
    }

    fn handle_dial_command(
        &mut self,
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    ) {
        let (target, peer) = split_peer(&addr);
        if let Some(peer) = peer {
            if peer == self.local_peer_id {
                let _ = reply.send(Err(NetError::Dial {
                    target: addr.to_string(),
                    reason: "that is this node".into(),
                }));
                return;
            }
            if self.blocked.contains(&peer) {
                let _ = reply.send(Err(NetError::Blocked { peer }));
                return;
            }
        }
        if self.pending_dials.len() >= MAX_PENDING_DIALS {
            let _ = reply.send(Err(NetError::Overloaded("too many dials in flight")));
            return;
        }
        let opts = match peer {
            Some(peer) => {
                self.swarm.add_peer_address(peer, target.clone());
                DialOpts::peer_id(peer)
                    .addresses(vec![target])
                    .condition(PeerCondition::Disconnected)
                    .build()
            }
            None => DialOpts::unknown_peer_id().address(target).build(),
        };
        let connection_id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                debug!(%addr, connection = %connection_id, "dialing");
                self.pending_dials
                    .insert(connection_id, PendingDial { addr, reply });
            }
            Err(DialError::DialPeerConditionFalse(_)) => {
                let _ = reply.send(Ok(())); // already connected
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Dial {
                    target: addr.to_string(),
                    reason: e.to_string(),
                }));
            }
        }
    }

    fn set_blocked(&mut self, peer: PeerId, blocked: bool) {
        if blocked {
            if self.blocked.insert(peer) {
                info!(%peer, "peer blocked");
                self.swarm.behaviour_mut().block_list.block_peer(peer);
            }
        } else if self.blocked.remove(&peer) {
            info!(%peer, "peer unblocked");
            self.swarm.behaviour_mut().block_list.unblock_peer(peer);
            let now = Instant::now();
            for sp in self
                .static_peers
                .iter_mut()
                .filter(|sp| sp.peer == Some(peer))
            {
                sp.backoff = REDIAL_MIN;
                sp.next_attempt = now;
            }
            self.learned.redial_now(&peer, now);
        }
    }

    /// Records addresses a peer gave for itself (checked and capped by the table) and tells
    /// the swarm about the new ones, so a request to that peer can dial them too.
    fn learn(&mut self, peer: PeerId, addrs: &[Multiaddr], source: Source) {
        let learned = self.learned.learn(peer, addrs, source, Instant::now());
        if learned.refused > 0 {
            trace!(%peer, refused = learned.refused, "unusable peer addresses ignored");
        }
        let news = !learned.new_addrs.is_empty();
        for addr in learned.new_addrs {
            debug!(%peer, %addr, ?source, "learned peer address");
            self.swarm.add_peer_address(peer, addr);
        }
        if news && source == Source::Peer {
            // Dial now rather than on the next tick (if due: the smaller id first).
            self.dial_learned_peers(Instant::now());
        }
    }

    // ------------------------------------------------------- events to the node

    /// Queues a non-gossip event for the node; never waits.
    fn emit(&mut self, event: Event) {
        let event = if self.outbox.is_empty() {
            match self.events.try_send(event) {
                Ok(()) => return,
                Err(TrySendError::Closed(_)) => return,
                Err(TrySendError::Full(event)) => event,
            }
        } else {
            event
        };
        if self.outbox.len() >= OUTBOX_CAPACITY {
            // A dropped `Request` drops its reply sender: the requester gets an error.
            warn!(?event, "node is not consuming network events; dropping one");
            return;
        }
        self.outbox.push_back(event);
    }

    /// Gossip is periodic: when the node is behind, drop it rather than queue it.
    fn emit_gossip(&mut self, from: PeerId, data: Vec<u8>) {
        match self.events.try_send(Event::Gossip { from, data }) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(event)) => debug!(?event, "event channel full; gossip dropped"),
        }
    }

    // --------------------------------------------------------- inbound requests

    fn handle_inbound_request(
        &mut self,
        peer: PeerId,
        data: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        if self.inbound.len() >= MAX_INBOUND_REQUESTS {
            warn!(%peer, "too many requests awaiting the node's answer; refusing one");
            return; // dropping `channel` makes the requester fail
        }
        let per_peer = self.inbound_per_peer.entry(peer).or_default();
        if *per_peer >= MAX_INBOUND_PER_PEER {
            warn!(%peer, max = MAX_INBOUND_PER_PEER, "too many unanswered requests from this peer; refusing one");
            return;
        }
        *per_peer += 1;
        let (reply, answer) = oneshot::channel();
        let timeout = self.request_timeout;
        self.inbound.push(Box::pin(async move {
            let answer = tokio::time::timeout(timeout, answer)
                .await
                .ok()
                .and_then(Result::ok);
            (peer, answer, channel)
        }));
        self.emit(Event::Request {
            from: peer,
            data,
            reply,
        });
    }

    fn handle_inbound_reply(
        &mut self,
        (peer, answer, channel): (PeerId, Option<Vec<u8>>, ResponseChannel<Vec<u8>>),
    ) {
        if let Some(n) = self.inbound_per_peer.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.inbound_per_peer.remove(&peer);
            }
        }
        match answer {
            Some(body) if body.len() > self.max_message => warn!(
                %peer,
                size = body.len(),
                max = self.max_message,
                "response over max_message; not sent (the requester gets an error)"
            ),
            Some(body) => {
                if self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_response(channel, body)
                    .is_err()
                {
                    debug!(%peer, "requester gone before the response was ready");
                }
            }
            None => debug!(%peer, "request not answered by the node; the requester gets an error"),
        }
    }

    // ------------------------------------------------------------- timers

    fn handle_tick(&mut self) {
        let now = Instant::now();
        self.close_due_duplicates(now);
        self.close_stalled(now);
        self.redial_static_peers(now);
        self.dial_learned_peers(now);
    }

    /// Dials learned peers we are not connected to, while fewer than `MAX_MESH_PEERS` are,
    /// and forgets the ones gone for long.
    fn dial_learned_peers(&mut self, now: Instant) {
        for gone in self.learned.expire(now) {
            debug!(peer = %gone, "forgot a learned peer not heard of for long");
        }
        let room = MAX_MESH_PEERS.saturating_sub(self.connections.len());
        let blocked = &self.blocked;
        let swarm = &self.swarm;
        let due = self
            .learned
            .due(now, room, |p| blocked.contains(p) || swarm.is_connected(p));
        for (peer, addrs) in due {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let connection_id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    debug!(%peer, connection = %connection_id, "dialing learned peer");
                    self.learned.dial_started(&peer, connection_id, now);
                }
                Err(DialError::DialPeerConditionFalse(_)) => {
                    // Another dial to that peer is under way; it reports back as usual.
                }
                Err(e) => {
                    debug!(%peer, error = %e, "cannot dial learned peer");
                    self.learned.dial_failed(None, Some(&peer), now);
                }
            }
        }
    }

    fn close_stalled(&mut self, now: Instant) {
        let stalled: Vec<(ConnectionId, PeerId, Duration)> = self
            .last_alive
            .iter()
            .map(|(id, (peer, since))| (*id, *peer, now.duration_since(*since)))
            .filter(|(id, _, silent)| *silent > STALL_AFTER && !self.closing.contains(id))
            .collect();
        for (id, peer, silent) in stalled {
            debug!(%peer, connection = %id, ?silent, "no ping answer; closing the stalled connection");
            self.last_alive.remove(&id);
            self.closing.insert(id);
            self.swarm.close_connection(id);
        }
    }

    fn close_due_duplicates(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.duplicates.len() {
            let (due, peer, id) = self.duplicates[i];
            if due > now {
                i += 1;
                continue;
            }
            self.duplicates.swap_remove(i);
            if self.swarm.close_connection(id) {
                debug!(%peer, connection = %id, "closed duplicate connection");
            }
        }
    }

    fn redial_static_peers(&mut self, now: Instant) {
        for i in 0..self.static_peers.len() {
            let sp = &mut self.static_peers[i];
            if let Some((_, since)) = sp.dialing {
                if now.duration_since(since) < DIAL_STALE_AFTER {
                    continue;
                }
                debug!(address = %sp.addr, "static peer dial has no outcome; retrying");
                sp.dialing = None;
            }
            if now < sp.next_attempt {
                continue;
            }
            if let Some(peer) = sp.peer {
                if self.blocked.contains(&peer) || self.swarm.is_connected(&peer) {
                    continue;
                }
            }
            let opts = match sp.peer {
                Some(peer) => DialOpts::peer_id(peer)
                    .addresses(vec![sp.addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                None => DialOpts::unknown_peer_id().address(sp.addr.clone()).build(),
            };
            let connection_id = opts.connection_id();
            let address = sp.addr.clone();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    debug!(%address, connection = %connection_id, "dialing static peer");
                    self.static_peers[i].dialing = Some((connection_id, now));
                }
                Err(DialError::DialPeerConditionFalse(_)) => {
                    // Another dial to that peer is under way; look again shortly.
                    self.static_peers[i].next_attempt = now + REDIAL_MIN;
                }
                Err(e) => {
                    let sp = &mut self.static_peers[i];
                    sp.dial_failed(now);
                    debug!(%address, error = %e, retry_in = ?sp.next_attempt - now, "cannot dial static peer");
                }
            }
        }
    }

    // -------------------------------------------------------------- swarm events

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.handle_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.emit(Event::Listening(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => self.on_connection_established(
                peer_id,
                connection_id,
                &endpoint,
                num_established.get(),
            ),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                self.closing.remove(&connection_id);
                self.last_alive.remove(&connection_id);
                self.duplicates.retain(|(_, _, id)| *id != connection_id);
                if let Some(connections) = self.connections.get_mut(&peer_id) {
                    connections.retain(|(id, _)| *id != connection_id);
                    if connections.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                let cause = cause.map_or_else(|| "closed".to_string(), |c| c.to_string());
                if num_established == 0 {
                    info!(peer = %peer_id, %cause, "peer disconnected");
                    let now = Instant::now();
                    for sp in self
                        .static_peers
                        .iter_mut()
                        .filter(|sp| sp.peer == Some(peer_id))
                    {
                        sp.disconnected(now);
                    }
                    self.learned.disconnected(&peer_id, now);
                    self.connected_tx.send_modify(|c| {
                        c.remove(&peer_id);
                    });
                    self.emit(Event::Disconnected(peer_id));
                } else {
                    debug!(peer = %peer_id, connection = %connection_id, %cause, "connection closed; others remain");
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let now = Instant::now();
                if let Some(dial) = self.pending_dials.remove(&connection_id) {
                    let _ = dial.reply.send(Err(NetError::Dial {
                        target: dial.addr.to_string(),
                        reason: error.to_string(),
                    }));
                }
                if let Some(sp) = self
                    .static_peers
                    .iter_mut()
                    .find(|sp| sp.dialing.is_some_and(|(id, _)| id == connection_id))
                {
                    sp.dial_failed(now);
                    debug!(address = %sp.addr, %error, retry_in = ?sp.next_attempt - now, "static peer dial failed");
                } else if self.learned.is_our_dial(connection_id) {
                    self.learned.dial_failed(Some(connection_id), None, now);
                    debug!(peer = ?peer_id, %error, "learned peer dial failed");
                } else {
                    debug!(peer = ?peer_id, %error, "dial failed");
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                peer_id,
                ..
            } => {
                debug!(from = %send_back_addr, peer = ?peer_id, %error, "incoming connection failed")
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                info!(%address, "no longer listening");
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => warn!(?addresses, ?reason, "listener closed"),
            SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
            other => trace!(?other, "swarm event"),
        }
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        endpoint: &ConnectedPoint,
        num_established: u32,
    ) {
        let now = Instant::now();
        if let Some(dial) = self.pending_dials.remove(&connection_id) {
            let _ = dial.reply.send(Ok(()));
        }
        for sp in &mut self.static_peers {
            if sp.dialing.is_some_and(|(id, _)| id == connection_id) {
                sp.dialing = None;
                if sp.peer != Some(peer) {
                    debug!(address = %sp.addr, %peer, "static peer identified");
                    sp.peer = Some(peer);
                    self.swarm.add_peer_address(peer, sp.addr.clone());
                }
            }
            if sp.peer == Some(peer) && num_established == 1 {
                sp.connected_at = Some(now);
            }
        }
        self.last_alive.insert(connection_id, (peer, now));
        if num_established == 1 {
            self.learned.connected(&peer, now);
            self.connected_tx.send_modify(|c| {
                c.insert(peer);
            });
        }
        let dialer = endpoint.is_dialer();
        self.connections
            .entry(peer)
            .or_default()
            .push((connection_id, dialer));
        if num_established == 1 {
            info!(%peer, address = %endpoint.get_remote_address(), "peer connected");
            self.emit(Event::Connected(peer));
        } else {
            self.close_duplicates(peer, connection_id, dialer);
        }
    }

    /// Keeps one connection per pair. For two connections in opposite directions, both ends
    /// close the one dialed by the larger `PeerId`, so they agree without talking; for two
    /// in the same direction, the dialer closes the newer one.
    fn close_duplicates(&mut self, peer: PeerId, new: ConnectionId, new_dialed_by_us: bool) {
        let Some(connections) = self.connections.get(&peer) else {
            return;
        };
        let keep_ours = self.local_peer_id < peer;
        let mut close = Vec::new();
        for &(old, old_dialed_by_us) in connections {
            if old == new || self.closing.contains(&old) {
                continue;
            }
            if old_dialed_by_us != new_dialed_by_us {
                close.push(if new_dialed_by_us == keep_ours {
                    old
                } else {
                    new
                });
            } else if new_dialed_by_us {
                close.push(new);
            }
        }
        let due = Instant::now() + DUPLICATE_GRACE;
        for id in close {
            if self.closing.insert(id) {
                debug!(%peer, connection = %id, "duplicate connection; closing it shortly");
                self.duplicates.push((due, peer, id));
            }
        }
    }

    fn handle_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::BlockList(never) => match never {},
            BehaviourEvent::Gossipsub(event) => self.handle_gossip_event(event),
            BehaviourEvent::Rpc(event) => self.handle_rpc_event(event),
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => match result {
                Ok(rtt) => {
                    trace!(%peer, ?rtt, "ping");
                    if let Some((_, since)) = self.last_alive.get_mut(&connection) {
                        *since = Instant::now();
                    }
                }
                Err(ping::Failure::Unsupported) => {
                    debug!(%peer, "peer does not support ping; its connection is not watched");
                    self.last_alive.remove(&connection);
                }
                Err(error) => {
                    debug!(%peer, %connection, %error, "ping failed; closing the stalled connection");
                    self.last_alive.remove(&connection);
                    self.closing.insert(connection);
                    self.swarm.close_connection(connection);
                }
            },
            BehaviourEvent::Identify(event) => match event {
                identify::Event::Received { peer_id, info, .. } => {
                    debug!(
                        peer = %peer_id,
                        agent = %info.agent_version,
                        protocol = %info.protocol_version,
                        "identified peer"
                    );
                    // Signed by the peer's own key over the connection: its listen addresses,
                    // kept to redial it (e.g. when it dialed us and we only saw a source port).
                    if info.protocol_version == super::IDENTIFY_PROTOCOL {
                        self.learn(peer_id, &info.listen_addrs, Source::Peer);
                    }
                }
                other => trace!(?other, "identify"),
            },
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    // Loopback addresses in an mDNS answer are the remote host's own loopback.
                    if peer != self.local_peer_id
                        && !self.blocked.contains(&peer)
                        && !peers::is_loopback(&addr)
                    {
                        by_peer.entry(peer).or_default().push(addr);
                    }
                }
                for (peer, addrs) in by_peer {
                    // Kept in the learned-peer table (bounded; until the record expires), so
                    // a connection that drops (a healed partition, a restarted node) is
                    // redialled without waiting for the record to be discovered anew.
                    self.learn(peer, &addrs, Source::Mdns);
                    if self.swarm.is_connected(&peer) {
                        continue;
                    }
                    debug!(%peer, ?addrs, "mDNS discovered peer; dialing");
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    let connection_id = opts.connection_id();
                    match self.swarm.dial(opts) {
                        Ok(()) => self
                            .learned
                            .dial_started(&peer, connection_id, Instant::now()),
                        Err(error) => debug!(%peer, %error, "not dialing mDNS peer"),
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(expired)) => {
                debug!(?expired, "mDNS records expired");
                for (peer, addr) in expired {
                    self.learned.mdns_expired(&peer, &addr);
                }
            }
        }
    }

    fn handle_gossip_event(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                // Strict validation mode: the author is present and its signature checked.
                let author = message.source.unwrap_or(propagation_source);
                let accept = message.data.len() <= self.max_gossip
                    && (self.validator)(&author, &message.data);
                let acceptance = if accept {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    gossipsub::MessageAcceptance::Reject
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                if accept {
                    trace!(%author, via = %propagation_source, %message_id, "gossip accepted");
                    self.emit_gossip(author, message.data);
                } else {
                    debug!(%author, via = %propagation_source, %message_id, size = message.data.len(), "gossip rejected");
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic, .. } => {
                debug!(peer = %peer_id, %topic, "peer subscribed");
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                debug!(peer = %peer_id, %topic, "peer unsubscribed");
            }
            gossipsub::Event::GossipsubNotSupported { peer_id } => {
                debug!(peer = %peer_id, "peer does not support gossipsub");
            }
            other => debug!(?other, "gossipsub"),
        }
    }

    fn handle_rpc_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.handle_inbound_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(pending) = self.pending_requests.remove(&request_id) {
                        debug!(%peer, request = %request_id, size = response.len(), "response received");
                        let _ = pending.reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(%peer, request = %request_id, %error, "request failed");
                if let Some(pending) = self.pending_requests.remove(&request_id) {
                    let _ = pending.reply.send(Err(outbound_error(pending.peer, error)));
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => debug!(%peer, request = %request_id, %error, "inbound request failed"),
            request_response::Event::ResponseSent {
                peer, request_id, ..
            } => trace!(%peer, request = %request_id, "response sent"),
        }
    }
}

fn outbound_error(peer: PeerId, error: OutboundFailure) -> NetError {
    match error {
        OutboundFailure::DialFailure => NetError::Unreachable { peer },
        OutboundFailure::Timeout => NetError::Timeout { peer },
        OutboundFailure::ConnectionClosed => NetError::ConnectionClosed { peer },
        OutboundFailure::UnsupportedProtocols => NetError::Unsupported { peer },
        OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            NetError::NoResponse { peer }
        }
        OutboundFailure::Io(source) => NetError::Io { peer, source },
    }
}
