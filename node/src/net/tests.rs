//! In-process mesh tests: real swarms on 127.0.0.1, mDNS always off, every wait bounded.
#![allow(clippy::unwrap_used)]

use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use libp2p::{identity::Keypair, multiaddr::Protocol, Multiaddr, PeerId};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    sync::mpsc,
    task::{JoinHandle, JoinSet},
    time::{timeout, Instant},
};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::*;

/// Upper bound for any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);
const MIB: usize = 1024 * 1024;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn accept_all() -> Validator {
    Arc::new(|_: &PeerId, _: &[u8]| true)
}

fn loopback(port: u16) -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4([127, 0, 0, 1].into()))
        .with(Protocol::Tcp(port))
}

fn test_config(keypair: Keypair, port: u16, peers: Vec<Multiaddr>) -> Config {
    Config {
        listen: vec![loopback(port)],
        peers,
        mdns: false, // never on the host
        request_timeout: Duration::from_secs(10),
        ..Config::new(keypair)
    }
}

struct TestNode {
    client: Client,
    events: mpsc::Receiver<Event>,
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
    peer_id: PeerId,
    /// `/ip4/127.0.0.1/tcp/PORT/p2p/ID`
    addr: Multiaddr,
    port: u16,
}

impl TestNode {
    async fn start(config: Config, validator: Validator) -> Self {
        let (tx, mut events) = mpsc::channel(1024);
        let shutdown = CancellationToken::new();
        let peer_id = config.keypair.public().to_peer_id();
        let (client, handle) = start(config, validator, tx, shutdown.clone()).unwrap();
        let listen = wait_for(&mut events, "Listening", |e| match e {
            Event::Listening(a) => Some(a),
            _ => None,
        })
        .await;
        let port = listen
            .iter()
            .find_map(|p| match p {
                Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .unwrap();
        let addr = listen.with(Protocol::P2p(peer_id));
        Self {
            client,
            events,
            shutdown,
            handle,
            peer_id,
            addr,
            port,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        timeout(WAIT, self.handle).await.unwrap().unwrap();
    }

    async fn wait_connected(&mut self, peer: PeerId) {
        wait_for(&mut self.events, "Connected", |e| match e {
            Event::Connected(p) if p == peer => Some(()),
            _ => None,
        })
        .await;
    }

    /// Waits until every peer in `peers` is connected (in any order).
    async fn wait_connected_all(&mut self, peers: &[PeerId]) {
        let mut missing: Vec<PeerId> = peers.to_vec();
        wait_for(&mut self.events, "Connected (all)", |e| {
            if let Event::Connected(p) = e {
                missing.retain(|m| *m != p);
            }
            missing.is_empty().then_some(())
        })
        .await;
    }

    async fn wait_disconnected(&mut self, peer: PeerId) {
        wait_for(&mut self.events, "Disconnected", |e| match e {
            Event::Disconnected(p) if p == peer => Some(()),
            _ => None,
        })
        .await;
    }

    /// Discards whatever is queued.
    fn drain(&mut self) -> Vec<Event> {
        let mut drained = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            drained.push(e);
        }
        drained
    }

    /// Every gossip received during `window`.
    async fn gossip_during(&mut self, window: Duration) -> Vec<(PeerId, Vec<u8>)> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if let Event::Gossip { from, data } = event {
                got.push((from, data));
            }
        }
        got
    }
}

/// Receives events until `pick` returns `Some`, failing after [`WAIT`].
async fn wait_for<T>(
    events: &mut mpsc::Receiver<Event>,
    what: &str,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    let found = timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("event channel closed");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Publishes probes from `from` until `to` has received one of them (the mesh path between
/// them is up), then forgets pending events on both.
async fn wait_gossip_path(from: &mut TestNode, to: &mut TestNode) {
    let deadline = Instant::now() + WAIT;
    for i in 0.. {
        assert!(Instant::now() < deadline, "gossip path never formed");
        from.client
            .publish(format!("probe-{i}").into_bytes())
            .await
            .unwrap();
        let got = to.gossip_during(Duration::from_millis(150)).await;
        if got
            .iter()
            .any(|(author, data)| *author == from.peer_id && data.starts_with(b"probe-"))
        {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    from.drain();
    to.drain();
}

/// Answers requests by echoing them, except `drop` (reply dropped) and `big` (a response
/// larger than the requester's limit).
fn spawn_echo(mut events: mpsc::Receiver<Event>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Event::Request { data, reply, .. } = event {
                if data == b"drop" {
                    drop(reply);
                } else {
                    let _ = reply.send(data);
                }
            }
        }
    })
}

fn count(got: &[(PeerId, Vec<u8>)], data: &[u8]) -> usize {
    got.iter().filter(|(_, d)| d == data).count()
}

/// Three nodes, B and C dialing only A: all connect, gossip flows between B and C through A,
/// and each published message reaches every other node exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_connect_and_gossip_exactly_once() {
    init_tracing();
    let started = Instant::now();
    let mut a = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![]),
        accept_all(),
    )
    .await;
    info!("--- alone on the mesh: publishing is not an error");
    a.client.publish(b"lonely".to_vec()).await.unwrap();

    let mut b = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![a.addr.clone()]),
        accept_all(),
    )
    .await;
    let mut c = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![a.addr.clone()]),
        accept_all(),
    )
    .await;
    b.wait_connected(a.peer_id).await;
    c.wait_connected(a.peer_id).await;
    a.wait_connected_all(&[b.peer_id, c.peer_id]).await;
    let mut a_peers = a.client.peers().await.unwrap();
    a_peers.sort();
    let mut expected = vec![b.peer_id, c.peer_id];
    expected.sort();
    assert_eq!(a_peers, expected);
    assert_eq!(
        b.client.peers().await.unwrap(),
        vec![a.peer_id],
        "B and C are not directly connected"
    );

    info!("--- wait for the gossip paths B->C and C->B (through A)");
    wait_gossip_path(&mut b, &mut c).await;
    wait_gossip_path(&mut c, &mut b).await;
    a.drain();

    info!("--- one message from B, one from A, one of exactly max_gossip bytes from C");
    b.client.publish(b"from-b".to_vec()).await.unwrap();
    a.client.publish(b"from-a".to_vec()).await.unwrap();
    let full = vec![7u8; DEFAULT_MAX_GOSSIP];
    c.client.publish(full.clone()).await.unwrap();
    let window = Duration::from_millis(1500);
    let (got_a, got_b, got_c) = tokio::join!(
        a.gossip_during(window),
        b.gossip_during(window),
        c.gossip_during(window)
    );
    assert_eq!(count(&got_a, b"from-b"), 1);
    assert_eq!(count(&got_c, b"from-b"), 1);
    assert_eq!(count(&got_b, b"from-b"), 0, "no echo to the author");
    assert_eq!(count(&got_b, b"from-a"), 1);
    assert_eq!(count(&got_c, b"from-a"), 1);
    assert_eq!(count(&got_a, &full), 1);
    assert_eq!(count(&got_b, &full), 1);
    assert!(got_c
        .iter()
        .filter(|(_, d)| d == b"from-b")
        .all(|(author, _)| *author == b.peer_id));

    let too_big = vec![0u8; DEFAULT_MAX_GOSSIP + 1];
    assert!(matches!(
        a.client.publish(too_big).await,
        Err(NetError::TooLarge { size, max }) if size == DEFAULT_MAX_GOSSIP + 1 && max == DEFAULT_MAX_GOSSIP
    ));

    for node in [a, b, c] {
        node.stop().await;
    }
    info!(elapsed = ?started.elapsed(), "three_nodes_connect_and_gossip_exactly_once");
}

/// Requests: a 1 MiB round trip; a body over the sender's limit fails locally; a body over
/// the receiver's limit fails on the sender and the receiver keeps serving; a dropped reply
/// and a node that dropped its event receiver both give the requester an error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_limits_and_failures() {
    init_tracing();
    let started = Instant::now();
    let a = TestNode::start(
        Config {
            max_message: 2 * MIB,
            ..test_config(Keypair::generate_ed25519(), 0, vec![])
        },
        accept_all(),
    )
    .await;
    let mut b = TestNode::start(
        Config {
            max_message: 8 * MIB,
            ..test_config(Keypair::generate_ed25519(), 0, vec![a.addr.clone()])
        },
        accept_all(),
    )
    .await;
    b.wait_connected(a.peer_id).await;
    let TestNode {
        events: a_events,
        client: a_client,
        shutdown: a_shutdown,
        handle: a_handle,
        peer_id: a_id,
        ..
    } = a;
    let echo = spawn_echo(a_events);

    info!("--- 1 MiB round trip");
    let body: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let t = Instant::now();
    let answer = b.client.request(a_id, body.clone()).await.unwrap();
    assert_eq!(answer, body);
    info!(elapsed = ?t.elapsed(), "1 MiB echoed");

    info!("--- over the sender's own limit: refused locally");
    let err = b.client.request(a_id, vec![0; 9 * MIB]).await.unwrap_err();
    assert!(
        matches!(err, NetError::TooLarge { size, max } if size == 9 * MIB && max == 8 * MIB),
        "{err}"
    );
    assert!(err.to_string().contains("exceeds the limit"), "{err}");

    info!("--- over the receiver's limit: fails on the sender, receiver survives");
    let t = Instant::now();
    let err = b.client.request(a_id, vec![0; 3 * MIB]).await.unwrap_err();
    info!(%err, elapsed = ?t.elapsed(), "oversized request refused by the receiver");
    assert!(!matches!(err, NetError::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        b.client
            .request(a_id, b"still there?".to_vec())
            .await
            .unwrap(),
        b"still there?"
    );

    info!("--- reply dropped by the node: error, not a hang");
    let t = Instant::now();
    let err = b.client.request(a_id, b"drop".to_vec()).await.unwrap_err();
    info!(%err, "dropped reply");
    assert!(
        matches!(err, NetError::NoResponse { peer } if peer == a_id),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    info!("--- node D dropped its event receiver: error, not a hang");
    let d = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![]),
        accept_all(),
    )
    .await;
    let TestNode {
        events: d_events,
        peer_id: d_id,
        addr: d_addr,
        shutdown: d_shutdown,
        handle: d_handle,
        ..
    } = d;
    drop(d_events);
    b.client.dial(d_addr).await.unwrap();
    let t = Instant::now();
    let err = b
        .client
        .request(d_id, b"anyone?".to_vec())
        .await
        .unwrap_err();
    info!(%err, "request to a node without event receiver");
    assert!(t.elapsed() < Duration::from_secs(5));

    info!("--- request to a peer that does not exist: dial error");
    let err = b
        .client
        .request(
            Keypair::generate_ed25519().public().to_peer_id(),
            b"x".to_vec(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Unreachable { .. }), "{err}");

    a_shutdown.cancel();
    d_shutdown.cancel();
    timeout(WAIT, a_handle).await.unwrap().unwrap();
    timeout(WAIT, d_handle).await.unwrap().unwrap();
    timeout(WAIT, echo).await.unwrap().unwrap();
    drop(a_client);
    b.stop().await;
    info!(elapsed = ?started.elapsed(), "request_response_limits_and_failures");
}

/// A message rejected by A's validator is neither delivered at A nor forwarded to C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_gossip_is_not_delivered_or_forwarded() {
    init_tracing();
    let started = Instant::now();
    let reject_garbage: Validator =
        Arc::new(|_: &PeerId, data: &[u8]| !data.starts_with(b"garbage"));
    let mut a = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![]),
        reject_garbage,
    )
    .await;
    let mut b = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![a.addr.clone()]),
        accept_all(),
    )
    .await;
    let mut c = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![a.addr.clone()]),
        accept_all(),
    )
    .await;
    b.wait_connected(a.peer_id).await;
    c.wait_connected(a.peer_id).await;
    wait_gossip_path(&mut b, &mut c).await;
    a.drain();

    info!("--- B publishes garbage, then a good message");
    b.client.publish(b"garbage-1".to_vec()).await.unwrap();
    b.client.publish(b"good-after".to_vec()).await.unwrap();
    // A handles B's messages in order: once C has the good one, A has judged the garbage.
    let mut seen_at_c = Vec::new();
    wait_for(&mut c.events, "good-after at C", |e| match e {
        Event::Gossip { data, .. } => {
            let done = data == b"good-after";
            seen_at_c.push(data);
            done.then_some(())
        }
        _ => None,
    })
    .await;
    let window = Duration::from_millis(700);
    let (got_a, got_c) = tokio::join!(a.gossip_during(window), c.gossip_during(window));
    seen_at_c.extend(got_c.into_iter().map(|(_, d)| d));
    assert!(
        !seen_at_c.iter().any(|d| d.starts_with(b"garbage")),
        "C got garbage"
    );
    assert!(
        !got_a.iter().any(|(_, d)| d.starts_with(b"garbage")),
        "A delivered garbage"
    );
    assert_eq!(count(&got_a, b"good-after"), 1);

    for node in [a, b, c] {
        node.stop().await;
    }
    info!(elapsed = ?started.elapsed(), "rejected_gossip_is_not_delivered_or_forwarded");
}

/// A static peer that goes away and comes back (same identity, same port) is redialed
/// without help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_peer_is_redialed_after_restart() {
    init_tracing();
    let started = Instant::now();
    let a_key = Keypair::generate_ed25519();
    let a = TestNode::start(test_config(a_key.clone(), 0, vec![]), accept_all()).await;
    let (a_id, a_port) = (a.peer_id, a.port);
    let mut b = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![a.addr.clone()]),
        accept_all(),
    )
    .await;
    b.wait_connected(a_id).await;

    info!("--- stop A");
    a.stop().await;
    b.wait_disconnected(a_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // let B's first redial fail

    info!("--- restart A on the same port");
    let t = Instant::now();
    let mut a = TestNode::start(test_config(a_key, a_port, vec![]), accept_all()).await;
    b.wait_connected(a_id).await;
    a.wait_connected(b.peer_id).await;
    info!(elapsed = ?t.elapsed(), "B reconnected to the restarted A");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(b.client.peers().await.unwrap(), vec![a_id]);

    a.stop().await;
    b.stop().await;
    info!(elapsed = ?started.elapsed(), "static_peer_is_redialed_after_restart");
}

/// `block` closes the connection and refuses new ones (even while the other side keeps
/// redialing); unblocking lets the static-peer redial reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_partitions_and_unblock_heals() {
    init_tracing();
    let started = Instant::now();
    let mut a = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![]),
        accept_all(),
    )
    .await;
    let mut b = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![a.addr.clone()]),
        accept_all(),
    )
    .await;
    b.wait_connected(a.peer_id).await;
    a.wait_connected(b.peer_id).await;

    info!("--- partition: both sides block");
    a.client.block(b.peer_id, true).await.unwrap();
    b.client.block(a.peer_id, true).await.unwrap();
    a.wait_disconnected(b.peer_id).await;
    b.wait_disconnected(a.peer_id).await;
    assert!(matches!(
        b.client.request(a.peer_id, b"x".to_vec()).await,
        Err(NetError::Blocked { .. })
    ));
    assert!(matches!(
        b.client.dial(a.addr.clone()).await,
        Err(NetError::Blocked { .. })
    ));

    info!("--- B unblocks and redials; A still refuses");
    b.client.block(a.peer_id, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(a.client.peers().await.unwrap().is_empty());
    assert!(!a
        .drain()
        .iter()
        .any(|e| matches!(e, Event::Connected(p) if *p == b.peer_id)));

    info!("--- A unblocks: B's redial reconnects");
    let t = Instant::now();
    a.client.block(b.peer_id, false).await.unwrap();
    a.wait_connected(b.peer_id).await;
    info!(elapsed = ?t.elapsed(), "healed");
    assert_eq!(a.client.peers().await.unwrap(), vec![b.peer_id]);

    a.stop().await;
    b.stop().await;
    info!(elapsed = ?started.elapsed(), "block_partitions_and_unblock_heals");
}

/// Simultaneous dials in both directions end with exactly one connection, kept on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_static_peers_keep_one_connection() {
    init_tracing();
    // B has A as static peer and A dials B at the same time.
    let mut a = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![]),
        accept_all(),
    )
    .await;
    let mut b = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![a.addr.clone()]),
        accept_all(),
    )
    .await;
    let _ = a.client.dial(b.addr.clone()).await;
    a.wait_connected(b.peer_id).await;
    b.wait_connected(a.peer_id).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.client.peers().await.unwrap(), vec![b.peer_id]);
    assert_eq!(b.client.peers().await.unwrap(), vec![a.peer_id]);
    // No flapping: neither side lost the peer after the duplicate was closed.
    assert!(!a
        .drain()
        .iter()
        .any(|e| matches!(e, Event::Disconnected(_))));
    assert!(!b
        .drain()
        .iter()
        .any(|e| matches!(e, Event::Disconnected(_))));
    let responder = spawn_echo(std::mem::replace(&mut a.events, mpsc::channel(1).1));
    assert_eq!(
        b.client.request(a.peer_id, b"ping".to_vec()).await.unwrap(),
        b"ping"
    );
    a.stop().await;
    b.stop().await;
    timeout(WAIT, responder).await.unwrap().unwrap();
}

/// A TCP relay to `127.0.0.1:target` whose forwarding can be frozen: while frozen the sockets
/// stay open but no byte moves, like a peer that hung or a cable pulled without a reset.
struct Relay {
    port: u16,
    frozen: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: u16) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let frozen = frozen.clone();
            async move {
                let mut pipes = JoinSet::new(); // aborted with this task
                while let Ok((inbound, _)) = listener.accept().await {
                    let Ok(outbound) = TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await
                    else {
                        continue;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    pipes.spawn(Self::pipe(in_read, out_write, frozen.clone()));
                    pipes.spawn(Self::pipe(out_read, in_write, frozen.clone()));
                }
            }
        });
        Self { port, frozen, task }
    }

    async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            while frozen.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

/// A connection that stops carrying bytes is closed by the ping failure (libp2p alone would
/// keep it), and the static peer is redialed once the path works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connection_is_closed_and_redialed() {
    init_tracing();
    let started = Instant::now();
    let mut a = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![]),
        accept_all(),
    )
    .await;
    let relay = Relay::start(a.port).await;
    let via_relay = loopback(relay.port).with(Protocol::P2p(a.peer_id));
    let mut b = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![via_relay]),
        accept_all(),
    )
    .await;
    b.wait_connected(a.peer_id).await;
    a.wait_connected(b.peer_id).await;

    info!("--- freeze the path");
    relay.freeze(true);
    let t = Instant::now();
    b.wait_disconnected(a.peer_id).await;
    a.wait_disconnected(b.peer_id).await;
    info!(elapsed = ?t.elapsed(), "stalled connection closed on both sides");
    assert!(t.elapsed() < Duration::from_secs(9));

    info!("--- thaw: B's redial gets through");
    relay.freeze(false);
    b.wait_connected(a.peer_id).await;
    assert_eq!(b.client.peers().await.unwrap(), vec![a.peer_id]);

    relay.task.abort();
    a.stop().await;
    b.stop().await;
    info!(elapsed = ?started.elapsed(), "stalled_connection_is_closed_and_redialed");
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let (tx, _rx) = mpsc::channel(1);
    let err = start(
        test_config(Keypair::generate_ed25519(), 0, vec![]),
        accept_all(),
        tx,
        CancellationToken::new(),
    )
    .unwrap_err();
    assert!(matches!(err, NetError::NoRuntime), "{err}");
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let (tx, _rx) = mpsc::channel(1);
    let config = Config {
        max_message: 0,
        ..test_config(Keypair::generate_ed25519(), 0, vec![])
    };
    let err = start(config, accept_all(), tx, CancellationToken::new()).unwrap_err();
    assert!(matches!(err, NetError::Config(_)), "{err}");
}

/// Peer exchange: B, C and D name only A (a star). Each announces its own address by gossip
/// (as the node's `Announce` does) and whoever receives one hands it to `learn_addrs`: the
/// leaves connect to each other directly, and stopping the hub leaves them connected.
/// Addresses that are not the announcer's own usable ones are never dialed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_leaves_learn_each_other_and_outlive_the_hub() {
    init_tracing();
    let started = Instant::now();
    let hub = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![]),
        accept_all(),
    )
    .await;
    let mut leaves = Vec::new();
    for _ in 0..3 {
        leaves.push(
            TestNode::start(
                test_config(Keypair::generate_ed25519(), 0, vec![hub.addr.clone()]),
                accept_all(),
            )
            .await,
        );
    }
    let ids: Vec<PeerId> = leaves.iter().map(|l| l.peer_id).collect();
    // What the node's Announce handler does: the signed author's own addresses.
    let mut relays = Vec::new();
    for leaf in leaves.iter_mut() {
        let (tx, rx) = mpsc::channel(1024);
        let mut events = std::mem::replace(&mut leaf.events, rx);
        let client = leaf.client.clone();
        relays.push(tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                if let Event::Gossip { from, data } = &e {
                    if let Some(addr) = std::str::from_utf8(data)
                        .ok()
                        .and_then(|s| s.parse::<Multiaddr>().ok())
                    {
                        // Junk beside the real address: unspecified, another transport, and
                        // our own id.
                        client
                            .learn_addrs(*from, vec!["/ip4/0.0.0.0/tcp/9".parse().unwrap(), addr]);
                        client.learn_addrs(
                            client.local_peer_id(),
                            vec!["/ip4/127.0.0.1/tcp/9".parse().unwrap()],
                        );
                    }
                }
                if tx.send(e).await.is_err() {
                    break;
                }
            }
        }));
    }

    info!("--- leaves announce themselves until each is connected to the other two");
    let deadline = Instant::now() + WAIT;
    loop {
        for leaf in &leaves {
            let own = leaf.addr.iter().take(2).collect::<Multiaddr>();
            leaf.client
                .publish(own.to_string().into_bytes())
                .await
                .unwrap();
        }
        let mut full = true;
        for leaf in &leaves {
            for other in &ids {
                full &= *other == leaf.peer_id || leaf.client.is_connected(other);
            }
        }
        if full {
            break;
        }
        assert!(Instant::now() < deadline, "leaves never connected directly");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    info!(elapsed = ?started.elapsed(), "star fully connected");

    info!("--- stop the hub: the leaves stay connected to each other");
    let hub_id = hub.peer_id;
    hub.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for leaf in &leaves {
        assert!(!leaf.client.is_connected(&hub_id));
        let mut peers = leaf.client.peers().await.unwrap();
        peers.sort();
        let mut want: Vec<PeerId> = ids.iter().copied().filter(|p| *p != leaf.peer_id).collect();
        want.sort();
        assert_eq!(peers, want, "a leaf keeps both other leaves");
    }
    for leaf in leaves {
        leaf.stop().await;
    }
    for r in relays {
        r.abort();
    }
}

/// A private mesh: nodes holding the same key connect and talk; a node without a key, or
/// with another key, never completes a connection to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_the_mesh_key_connect() {
    init_tracing();
    let key = PreSharedKey::new([7; 32]);
    let keyed = |peers| Config {
        psk: Some(key),
        ..test_config(Keypair::generate_ed25519(), 0, peers)
    };
    let a = TestNode::start(keyed(vec![]), accept_all()).await;
    let mut b = TestNode::start(keyed(vec![a.addr.clone()]), accept_all()).await;
    b.wait_connected(a.peer_id).await;
    assert!(a.client.is_private() && b.client.is_private());
    let TestNode {
        events: a_events,
        client: a_client,
        shutdown: a_shutdown,
        handle: a_handle,
        peer_id: a_id,
        addr: a_addr,
        ..
    } = a;
    let echo = spawn_echo(a_events);
    assert_eq!(
        b.client.request(a_id, b"hello".to_vec()).await.unwrap(),
        b"hello"
    );

    for (what, psk) in [
        ("no key", None),
        ("another key", Some(PreSharedKey::new([8; 32]))),
    ] {
        info!("--- a node with {what}");
        let c = TestNode::start(
            Config {
                psk,
                ..test_config(Keypair::generate_ed25519(), 0, vec![a_addr.clone()])
            },
            accept_all(),
        )
        .await;
        assert!(c.client.dial(a_addr.clone()).await.is_err(), "{what}: dial");
        assert!(
            c.client.request(a_id, b"let me in".to_vec()).await.is_err(),
            "{what}: request"
        );
        // And the other way round: the keyed node cannot reach it either.
        assert!(
            b.client.dial(c.addr.clone()).await.is_err(),
            "{what}: dial back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(c.client.peers().await.unwrap().is_empty(), "{what}");
        assert!(!a_client.is_connected(&c.peer_id), "{what}");
        c.stop().await;
    }
    a_shutdown.cancel();
    timeout(WAIT, a_handle).await.unwrap().unwrap();
    timeout(WAIT, echo).await.unwrap().unwrap();
    b.stop().await;
}

/// A request sent while its peer restarts (no connection, the dial fails) is sent again once
/// the peer is back, within the retry bound; with `Retry::Never` it fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_survives_the_peer_restarting() {
    init_tracing();
    let a_key = Keypair::generate_ed25519();
    let a = TestNode::start(test_config(a_key.clone(), 0, vec![]), accept_all()).await;
    let (a_id, a_port) = (a.peer_id, a.port);
    let mut b = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![a.addr.clone()]),
        accept_all(),
    )
    .await;
    b.wait_connected(a_id).await;
    a.stop().await;
    b.wait_disconnected(a_id).await;

    let err = b
        .client
        .request_with(a_id, b"now".to_vec(), Retry::Never)
        .await
        .unwrap_err();
    assert!(err.not_sent() && err.connection_lost(), "{err}");

    info!("--- request while A is down; A comes back 400 ms later");
    let client = b.client.clone();
    let pending = tokio::spawn(async move { client.request(a_id, b"later".to_vec()).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let a = TestNode::start(test_config(a_key, a_port, vec![]), accept_all()).await;
    let TestNode {
        events: a_events,
        shutdown: a_shutdown,
        handle: a_handle,
        ..
    } = a;
    let echo = spawn_echo(a_events);
    let answer = timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(answer.unwrap(), b"later", "sent again once A was back");
    a_shutdown.cancel();
    timeout(WAIT, a_handle).await.unwrap().unwrap();
    timeout(WAIT, echo).await.unwrap().unwrap();
    b.stop().await;
}

/// One peer cannot hold every inbound slot: past `MAX_INBOUND_PER_PEER` unanswered requests
/// its next ones are refused at once, while another peer is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_requests_are_capped_per_peer() {
    init_tracing();
    let a = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![]),
        accept_all(),
    )
    .await;
    let mut b = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![a.addr.clone()]),
        accept_all(),
    )
    .await;
    let mut c = TestNode::start(
        test_config(Keypair::generate_ed25519(), 0, vec![a.addr.clone()]),
        accept_all(),
    )
    .await;
    b.wait_connected(a.peer_id).await;
    c.wait_connected(a.peer_id).await;
    let TestNode {
        events: mut a_events,
        shutdown: a_shutdown,
        handle: a_handle,
        peer_id: a_id,
        ..
    } = a;
    // A holds B's requests unanswered and answers C's.
    let b_id = b.peer_id;
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(e) = a_events.recv().await {
            if let Event::Request { from, data, reply } = e {
                if from == b_id {
                    held.push(reply);
                } else {
                    let _ = reply.send(data);
                }
            }
        }
        held.len()
    });
    let over = 8;
    let mut calls = JoinSet::new();
    for i in 0..MAX_INBOUND_PER_PEER + over {
        let client = b.client.clone();
        calls.spawn(async move {
            client
                .request_with(a_id, format!("{i}").into_bytes(), Retry::Never)
                .await
        });
    }
    info!("--- the requests over the cap fail at once");
    let mut refused = 0;
    while refused < over {
        let r = timeout(WAIT, calls.join_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let err = r.unwrap_err();
        assert!(matches!(err, NetError::NoResponse { .. }), "{err}");
        refused += 1;
    }
    info!("--- C is still served");
    assert_eq!(c.client.request(a_id, b"c".to_vec()).await.unwrap(), b"c");
    calls.abort_all();
    a_shutdown.cancel();
    timeout(WAIT, a_handle).await.unwrap().unwrap();
    assert_eq!(
        timeout(WAIT, held).await.unwrap().unwrap(),
        MAX_INBOUND_PER_PEER
    );
    b.stop().await;
    c.stop().await;
}
