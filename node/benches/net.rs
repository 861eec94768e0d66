//! The floor for task latency: a raw request-response round trip between two libp2p nodes on
//! 127.0.0.1, through bx3's own network actor (TCP + noise + yamux, `/bx3/rpc/1`), with the
//! answering side echoing at once. Run by scripts/bench.sh (`cargo bench -p bx3-node --bench
//! net`). Prints `name<TAB>median<TAB>min<TAB>max<TAB>unit<TAB>note` like the executor bench.
//!
//! `BX3_BENCH_SCALE` (default 1.0) scales the number of round trips.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bx3_node::net::{self, Config, Event};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn rounds() -> usize {
    let scale: f64 = std::env::var("BX3_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((2000.0 * scale) as usize).max(20)
}

fn loopback() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4([127, 0, 0, 1].into()))
        .with(Protocol::Tcp(0))
}

fn config(keypair: Keypair, peers: Vec<Multiaddr>) -> Config {
    Config {
        listen: vec![loopback()],
        peers,
        mdns: false, // never on the host
        request_timeout: Duration::from_secs(10),
        ..Config::new(keypair)
    }
}

async fn listening(events: &mut mpsc::Receiver<Event>) -> Multiaddr {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Listening(a))) => return a,
            Ok(Some(_)) => {}
            _ => panic!("the node did not start listening within 30 s"),
        }
    }
}

fn report(name: &str, mut v: Vec<f64>, note: &str) {
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    println!(
        "{name}\t{median:.1}\t{:.1}\t{:.1}\tµs\t{note}",
        v[0],
        v[v.len() - 1]
    );
}

#[tokio::main]
async fn main() {
    let shutdown = CancellationToken::new();
    let accept_all: net::Validator = Arc::new(|_: &PeerId, _: &[u8]| true);

    // B answers every request with its own bytes.
    let kb = Keypair::generate_ed25519();
    let b_id = kb.public().to_peer_id();
    let (btx, mut brx) = mpsc::channel(1024);
    let (_b, b_task) = net::start(
        config(kb, Vec::new()),
        accept_all.clone(),
        btx,
        shutdown.clone(),
    )
    .expect("start node B");
    let b_addr = listening(&mut brx).await.with(Protocol::P2p(b_id));
    let echo = tokio::spawn(async move {
        while let Some(e) = brx.recv().await {
            if let Event::Request { data, reply, .. } = e {
                let _ = reply.send(data);
            }
        }
    });

    // A dials B and asks.
    let (atx, mut arx) = mpsc::channel(1024);
    let (a, a_task) = net::start(
        config(Keypair::generate_ed25519(), vec![b_addr]),
        accept_all,
        atx,
        shutdown.clone(),
    )
    .expect("start node A");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, arx.recv()).await {
            Ok(Some(Event::Connected(p))) if p == b_id => break,
            Ok(Some(_)) => {}
            _ => panic!("A did not connect to B within 30 s"),
        }
    }
    tokio::spawn(async move { while arx.recv().await.is_some() {} });

    for (size, label) in [(128usize, "128 B"), (16 * 1024, "16 KiB")] {
        let body = vec![7u8; size];
        // Warm up (connection settles, buffers grow).
        for _ in 0..20 {
            a.request(b_id, body.clone())
                .await
                .expect("warm-up request");
        }
        let mut times = Vec::new();
        for _ in 0..rounds() {
            let t = Instant::now();
            let back = a.request(b_id, body.clone()).await.expect("request");
            times.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(back.len(), size, "echo came back with another size");
        }
        report(
            &format!("libp2p request-response round trip, {label}"),
            times,
            "two local nodes, bx3 network actor both sides: the floor for task latency",
        );
    }
    shutdown.cancel();
    let _ = a_task.await;
    let _ = b_task.await;
    echo.abort();
}
