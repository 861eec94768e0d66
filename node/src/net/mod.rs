//! The network actor: the one task that owns the libp2p [`Swarm`](libp2p::Swarm).
//!
//! Payloads are opaque bytes at this layer; the node encodes and decodes its own typed,
//! versioned messages. This module knows nothing about DAGs.
//!
//! ```text
//!             Client (cloneable)                      node (event consumer)
//!                 │  Command + oneshot reply               ▲  Event (bounded mpsc)
//!                 ▼  (bounded mpsc)                        │  Request carries a oneshot reply
//!   ┌──────────────────────────── EventLoop ───────────────┴───────────────┐
//!   │ select! { biased; shutdown, commands, queued events, inbound replies,│
//!   │           tick (redial, duplicates, stalls), swarm }                 │
//!   │ owns: Swarm<Behaviour>, pending outbound requests, pending dials,    │
//!   │       in-flight inbound requests, static peers + backoff, block list │
//!   └──────────────────────────────────┬───────────────────────────────────┘
//!                                      ▼
//!     Behaviour = block list + identify + ping + mDNS (toggle) + gossipsub + request/response
//!     Transport = TCP (nodelay) + noise + yamux
//! ```
//!
//! - Gossip goes to [`GOSSIP_TOPIC`]; every received message runs through the [`Validator`]
//!   before it is delivered or forwarded (rejected messages are never forwarded).
//! - Requests use [`RPC_PROTOCOL`] with a length-prefixed byte codec ([`codec`]) that refuses
//!   bodies over [`Config::max_message`] before allocating them.
//! - Static peers ([`Config::peers`]) are dialed at start and redialed whenever they are
//!   disconnected, with a backoff from [`REDIAL_MIN`] doubling to [`REDIAL_MAX`].
//! - A connection with no successful ping for a few seconds is closed (libp2p would keep a
//!   connection that silently stopped carrying bytes), and a handshake is bounded in time.
//! - At most one connection per pair of peers is kept: when two exist (simultaneous dials),
//!   both ends close the one dialed by the larger `PeerId` after a short grace period, so they
//!   agree without talking and neither end is left without a connection in between.
//! - Peer exchange ([`peers`]): every node keeps a direct connection to every member it has
//!   an address for, up to [`MAX_MESH_PEERS`]. Addresses come from a peer's own signed gossip
//!   announcement (the node hands them over with [`Client::learn_addrs`]; in a star the
//!   leaves only hear of each other through the hub's relayed gossip), from identify on a
//!   connection, and from mDNS. They are checked where they enter (plain TCP addresses of
//!   that peer only, a few per peer, a bounded table with expiry) and redialed with the same
//!   backoff as `--peer` addresses. A mesh joined through one bootstrap address, or through a
//!   chain, becomes fully connected, so losing the bootstrap node splits nothing.
//! - Requests that fail with their connection (a duplicate connection closed under them, a
//!   peer restarting, a dial that raced another) are sent again on the next connection,
//!   boundedly ([`Retry`], [`RETRY_PAUSES`], within the request timeout); the caller says per
//!   request whether a second copy is safe.
//! - Bounds: connection limits (per peer, inbound, in all, handshakes under way), at most
//!   [`MAX_INBOUND_PER_PEER`] unanswered requests per peer, and every table a peer can grow
//!   (learned peers, mDNS peers) capped and expiring.
//! - Private mesh ([`psk`]): with a key, TCP runs behind libp2p `pnet` (XSalsa20 with the
//!   pre-shared key) under noise, so a node without the key cannot even start a handshake.
//!
//! # Above the bound (more than `MAX_MESH_PEERS` nodes)
//!
//! A full mesh costs every node one connection (and one ping per second) per member, so past
//! 64 members it stops growing: learned peers are no longer dialed, `--peer` addresses still
//! are, and inbound connections are accepted up to the connection limits. What keeps working:
//! gossip (gossipsub only needs a connected graph; it keeps ~6-12 mesh links per node and
//! relays). What breaks first: the controller sends `Assign`, `Replicate` and results
//! requests straight to each worker, so it must reach every one of them. The way to grow:
//!
//! 1. **Find any peer by id without a standing connection** — a Kademlia DHT
//!    (`libp2p-kad`, the same one IPFS uses) over the members, so the controller dials a
//!    worker on demand from its id and drops idle connections (LRU below the bound) instead
//!    of holding all of them.
//! 2. **Reach workers it cannot dial** (NAT, a one-way firewall) through a relayed stream:
//!    `libp2p-relay` circuits through a member both can reach, upgraded to a direct
//!    connection with DCUtR hole punching where possible.
//! 3. **Keep the controller's fan-out bounded**: beyond a few hundred workers, replication
//!    becomes a tree (followers forward batches to a few others) rather than a star from the
//!    controller.
//!
//! None of this is needed at the sizes bx3 runs today (the bench measures 10 nodes); the
//! bound exists so that a large or hostile mesh degrades to "gossip works, direct requests
//! dial on demand" instead of exhausting file descriptors.

mod behaviour;
pub mod codec;
mod event_loop;
mod peers;
pub mod psk;
#[cfg(test)]
mod tests;

use std::{collections::HashSet, sync::Arc, time::Duration};

pub use libp2p::pnet::PreSharedKey;
use libp2p::{identity::Keypair, Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// The gossipsub topic every node subscribes to (the version lives in the name).
pub const GOSSIP_TOPIC: &str = "bx3/mesh/2";
/// The request/response protocol name (the version lives in the name).
pub const RPC_PROTOCOL: &str = "/bx3/rpc/2";
/// Protocol version announced through identify.
pub const IDENTIFY_PROTOCOL: &str = "/bx3/id/1";

/// Default cap on a request or response body.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Default cap on a gossip payload.
pub const DEFAULT_MAX_GOSSIP: usize = 64 * 1024;
/// Default time a request may take, from sending it to receiving the response.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// First redial delay for a disconnected static peer.
pub const REDIAL_MIN: Duration = Duration::from_millis(500);
/// Largest redial delay for a disconnected static peer.
pub const REDIAL_MAX: Duration = Duration::from_secs(5);

/// Peers this node keeps a direct connection to through peer exchange. Past it, learned
/// peers are not dialed (`--peer` addresses still are, and inbound connections are accepted
/// up to the connection limits); see "Above the bound" in the module docs.
pub const MAX_MESH_PEERS: usize = 64;
/// Peers the learned-address table holds (connected or not); a full table forgets the
/// disconnected peer heard of least recently.
pub const MAX_LEARNED_PEERS: usize = 4 * MAX_MESH_PEERS;
/// Addresses kept per learned peer (newest first); what a peer announces past it is ignored.
pub const MAX_ADDRS_PER_PEER: usize = 8;
/// Connection limits (libp2p `connection-limits`). Two per peer leaves room for the moment
/// two nodes that dialed each other hold two connections, before one is closed.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Established connections in all; inbound ones; handshakes under way in each direction.
pub const MAX_CONNECTIONS: u32 = 2 * MAX_MESH_PEERS as u32;
pub const MAX_INCOMING: u32 = MAX_MESH_PEERS as u32 + 32;
pub const MAX_PENDING_INCOMING: u32 = 32;
pub const MAX_PENDING_OUTGOING: u32 = MAX_MESH_PEERS as u32;
/// Inbound requests from one peer handed to the node and not answered yet; more from that
/// peer are refused (the global cap is 256), so one peer cannot take every slot. Below the
/// 64 streams a connection carries, so the cap is ours and not the muxer's.
pub const MAX_INBOUND_PER_PEER: usize = 48;
/// Retries of a request that failed on the way (see [`Retry`]), and their pauses.
pub const RETRY_PAUSES: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];

/// Capacity of the [`Client`] command channel.
const COMMAND_CAPACITY: usize = 256;
/// Extra time a [`Client`] waits beyond `request_timeout` before giving up on the actor
/// itself (covers a dial that hangs before libp2p's request timer even starts).
const CLIENT_GRACE: Duration = Duration::from_secs(10);

/// Network configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Identity of this node; its public key is the `PeerId`.
    pub keypair: Keypair,
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// Static peers, with or without `/p2p/<id>`: dialed at start and redialed whenever
    /// disconnected (backoff [`REDIAL_MIN`] doubling to [`REDIAL_MAX`], forever).
    pub peers: Vec<Multiaddr>,
    /// mDNS discovery. Tests on the host must keep this off.
    pub mdns: bool,
    /// Request/response body cap, checked on read and write (at most `u32::MAX`).
    pub max_message: usize,
    /// Gossip payload cap.
    pub max_gossip: usize,
    /// Request timeout (sending the request to receiving the response).
    pub request_timeout: Duration,
    /// Private mesh: the transport runs behind libp2p `pnet` with this key, so only nodes
    /// holding it complete a connection. `None`: an open mesh.
    pub psk: Option<PreSharedKey>,
    /// Where libp2p's bandwidth counters (bytes in/out on the mesh) are registered.
    pub metrics: crate::metrics::Metrics,
}

impl Config {
    /// Defaults: listen on `/ip4/0.0.0.0/tcp/0`, no static peers, mDNS on, 64 MiB requests,
    /// 64 KiB gossip, 30 s request timeout.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            listen: vec![Multiaddr::empty()
                .with(libp2p::multiaddr::Protocol::Ip4([0, 0, 0, 0].into()))
                .with(libp2p::multiaddr::Protocol::Tcp(0))],
            peers: Vec::new(),
            mdns: true,
            max_message: DEFAULT_MAX_MESSAGE,
            max_gossip: DEFAULT_MAX_GOSSIP,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            psk: None,
            metrics: crate::metrics::Metrics::new(),
        }
    }

    fn validate(&self) -> Result<(), NetError> {
        if self.max_message == 0 || u32::try_from(self.max_message).is_err() {
            return Err(NetError::Config(format!(
                "max_message must be between 1 and {} bytes, got {}",
                u32::MAX,
                self.max_message
            )));
        }
        if self.max_gossip == 0 {
            return Err(NetError::Config(
                "max_gossip must be at least 1 byte".into(),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(NetError::Config("request_timeout must not be zero".into()));
        }
        Ok(())
    }
}

/// What the network tells the node.
pub enum Event {
    /// First connection to a peer established.
    Connected(PeerId),
    /// Last connection to a peer closed.
    Disconnected(PeerId),
    /// A gossip message that passed the validator. `from` is the message's signed author
    /// (not necessarily the neighbour that forwarded it).
    Gossip { from: PeerId, data: Vec<u8> },
    /// A request from `from`. Answer through `reply`; dropping it makes the requester fail.
    Request {
        from: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Vec<u8>>,
    },
    /// Now listening on this address.
    Listening(Multiaddr),
}

// Hand-written so that logging an event never dumps a 64 MiB body.
impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Connected(p) => f.debug_tuple("Connected").field(p).finish(),
            Event::Disconnected(p) => f.debug_tuple("Disconnected").field(p).finish(),
            Event::Gossip { from, data } => f
                .debug_struct("Gossip")
                .field("from", from)
                .field("len", &data.len())
                .finish(),
            Event::Request { from, data, .. } => f
                .debug_struct("Request")
                .field("from", from)
                .field("len", &data.len())
                .finish_non_exhaustive(),
            Event::Listening(a) => f.debug_tuple("Listening").field(a).finish(),
        }
    }
}

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network actor stopped")]
    Stopped,
    #[error("net::start must be called from within a tokio runtime")]
    NoRuntime,
    #[error("invalid network configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("dialing {target} failed: {reason}")]
    Dial { target: String, reason: String },
    /// A request could not be sent: no connection, and dialing the peer failed (it may be
    /// down, or a dial raced with another connection being set up).
    #[error("dialing {peer} failed: no connection and no reachable known address")]
    Unreachable { peer: PeerId },
    #[error("dialing {addr} timed out")]
    DialTimeout { addr: Multiaddr },
    #[error("request to {peer} timed out")]
    Timeout { peer: PeerId },
    #[error("connection to {peer} closed before a response was received")]
    ConnectionClosed { peer: PeerId },
    #[error(
        "{peer} closed the request without answering (refused, overloaded or over its size limit)"
    )]
    NoResponse { peer: PeerId },
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("{peer} does not support {}", RPC_PROTOCOL)]
    Unsupported { peer: PeerId },
    #[error("request to {peer} failed on the stream (it may have refused it, e.g. over its size limit): {source}")]
    Io {
        peer: PeerId,
        #[source]
        source: std::io::Error,
    },
    #[error("{peer} is blocked")]
    Blocked { peer: PeerId },
    #[error("gossip publish failed: {0}")]
    Publish(String),
    #[error("network actor overloaded: {0}")]
    Overloaded(&'static str),
}

impl NetError {
    /// The request certainly never reached the peer's node: sending it again cannot make it
    /// run twice.
    pub fn not_sent(&self) -> bool {
        matches!(self, NetError::Unreachable { .. })
    }

    /// The request failed with its connection (closed while the request was out: a duplicate
    /// connection closed, the peer restarting) or before one existed; it may or may not have
    /// reached the peer's node.
    pub fn connection_lost(&self) -> bool {
        match self {
            NetError::Unreachable { .. } | NetError::ConnectionClosed { .. } => true,
            NetError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// What to do with a request that failed on the way (not one the peer answered, refused or
/// let time out). Retries are bounded by [`RETRY_PAUSES`] and by the request timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never send again.
    Never,
    /// Send again only when it certainly did not reach the peer (no connection could be
    /// made). For requests that must not run twice and are not deduplicated by the receiver.
    IfNotSent,
    /// Also send again on the next connection when the connection closed while the request
    /// was out. For requests that are safe to receive twice (reads, fetches by hash,
    /// election messages, replication, results).
    OnChurn,
}

impl Retry {
    fn allows(self, e: &NetError) -> bool {
        match self {
            Retry::Never => false,
            Retry::IfNotSent => e.not_sent(),
            Retry::OnChurn => e.connection_lost(),
        }
    }
}

/// Decides whether a gossip message is accepted (delivered and forwarded) or rejected (never
/// forwarded, reported to gossipsub as `Reject`). Called with the message's signed author.
/// Runs on the network task: keep it cheap and non-blocking.
pub type Validator = Arc<dyn Fn(&PeerId, &[u8]) -> bool + Send + Sync>;

/// Requests to the event loop; each carries its reply channel.
#[derive(Debug)]
enum Command {
    Publish {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Request {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Block {
        peer: PeerId,
        blocked: bool,
        reply: oneshot::Sender<()>,
    },
    /// Addresses a peer gave for itself (its gossip announcement); no reply.
    LearnAddrs {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
}

/// Cloneable handle to the network actor.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    request_timeout: Duration,
    /// Peers with an established connection, kept up to date by the event loop (read
    /// without a round trip, e.g. for `status`).
    connected: watch::Receiver<HashSet<PeerId>>,
    /// Whether the transport runs behind a mesh key.
    private: bool,
}

impl Client {
    /// This node's `PeerId`.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Publishes on [`GOSSIP_TOPIC`]. Having no subscribed peer is not an error (being alone
    /// on the mesh is normal): the message is simply not sent.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), NetError> {
        self.call(|reply| Command::Publish { data, reply }).await?
    }

    /// Whether a connection to `peer` is established now.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connected.borrow().contains(peer)
    }

    /// Whether this node runs a private mesh (`--mesh-key`).
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Hands the network addresses that `peer` gave for itself (its signed gossip
    /// announcement), so it can be dialed directly. The network layer checks them (see
    /// `peers`). Never waits: when the actor is busy the call is dropped (announcements
    /// repeat every second).
    pub fn learn_addrs(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if addrs.is_empty() || peer == self.local_peer_id {
            return;
        }
        let mut addrs = addrs;
        addrs.truncate(MAX_ADDRS_PER_PEER * 2);
        let _ = self.commands.try_send(Command::LearnAddrs { peer, addrs });
    }

    /// Sends a request to `peer` (dialing it if needed) and waits for the response. A request
    /// that fails with its connection is sent again on the next one ([`Retry::OnChurn`]):
    /// use [`Client::request_with`] for a request that must not arrive twice.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        self.request_with(peer, data, Retry::OnChurn).await
    }

    /// [`Client::request`] with an explicit retry policy. At most `RETRY_PAUSES.len()`
    /// retries, each after its pause, and none once the request timeout has passed since the
    /// first try.
    pub async fn request_with(
        &self,
        peer: PeerId,
        data: Vec<u8>,
        retry: Retry,
    ) -> Result<Vec<u8>, NetError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut data = data;
        let mut tries = 0usize;
        loop {
            let last = retry == Retry::Never || tries >= RETRY_PAUSES.len();
            // Keep a copy only while another try may follow.
            let send = if last {
                std::mem::take(&mut data)
            } else {
                data.clone()
            };
            match self.request_once(peer, send).await {
                Err(e) if !last && retry.allows(&e) => {
                    let pause = RETRY_PAUSES[tries];
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(%peer, try_ = tries + 1, ?pause, error = ?e.to_string(), "request failed on the way; sending it again");
                    tokio::time::sleep(pause).await;
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    async fn request_once(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request { peer, data, reply }).await?;
        match tokio::time::timeout(self.request_timeout + CLIENT_GRACE, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NetError::Stopped),
            Err(_) => Err(NetError::Timeout { peer }),
        }
    }

    /// Currently connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerId>, NetError> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// Addresses we are listening on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// Dials `addr` (with or without `/p2p/<id>`) once; resolves when connected (or already
    /// connected) or when the dial failed. Not redialed: use [`Config::peers`] for that.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Dial {
            addr: addr.clone(),
            reply,
        })
        .await?;
        match tokio::time::timeout(self.request_timeout + CLIENT_GRACE, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NetError::Stopped),
            Err(_) => Err(NetError::DialTimeout { addr }),
        }
    }

    /// Test hook for partitions: drop and refuse all connections to/from `peer` until
    /// unblocked. Unblocking a static peer redials it at once.
    pub async fn block(&self, peer: PeerId, blocked: bool) -> Result<(), NetError> {
        self.call(|reply| Command::Block {
            peer,
            blocked,
            reply,
        })
        .await
    }

    async fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetError::Stopped)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }
}

/// Starts the network actor on the current tokio runtime: builds the swarm, starts listening,
/// subscribes to [`GOSSIP_TOPIC`] and dials the static peers. The task runs until `shutdown`
/// is cancelled. Events go to `events` without ever waiting on it: when it is full, gossip is
/// dropped and other events wait in a bounded queue (past which they are dropped too; a dropped
/// request makes the requester fail).
pub fn start(
    config: Config,
    validator: Validator,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) -> Result<(Client, tokio::task::JoinHandle<()>), NetError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
    config.validate()?;
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (connected_tx, connected_rx) = watch::channel(HashSet::new());
    let client = Client {
        commands: commands_tx,
        local_peer_id: config.keypair.public().to_peer_id(),
        request_timeout: config.request_timeout,
        connected: connected_rx,
        private: config.psk.is_some(),
    };
    let event_loop = event_loop::EventLoop::new(
        config,
        validator,
        commands_rx,
        events,
        connected_tx,
        shutdown,
    )?;
    let handle = runtime.spawn(event_loop.run());
    Ok((client, handle))
}
