//! The composed libp2p behaviour and how it is configured.

use std::time::Duration;

use libp2p::{
    allow_block_list, connection_limits, gossipsub, identify, mdns, ping, request_response,
    swarm::{behaviour::toggle::Toggle, NetworkBehaviour},
    StreamProtocol,
};

use super::{
    codec::Codec, Config, NetError, GOSSIP_TOPIC, IDENTIFY_PROTOCOL, MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_PEER, MAX_INCOMING, MAX_PENDING_INCOMING, MAX_PENDING_OUTGOING,
    RPC_PROTOCOL,
};

/// Gossipsub heartbeat (mesh upkeep), libp2p's default. Delivery does not wait for it: with
/// flood publishing a message goes straight to every subscribed peer; the mesh the heartbeat
/// maintains only forwards messages to peers the author is not connected to. A shorter
/// heartbeat was a measurable part of an idle node's CPU.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Room for what gossipsub adds around a payload (signature, public key, topic, sequence
/// number, protobuf framing), so that a payload of exactly `max_gossip` bytes still fits in
/// gossipsub's `max_transmit_size`. The payload cap itself is enforced by the event loop.
pub(super) const GOSSIP_FRAME_OVERHEAD: usize = 4 * 1024;
/// Ping every second; a ping unanswered for 3 s marks the connection as stalled.
pub(super) const PING_INTERVAL: Duration = Duration::from_secs(1);
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Concurrent inbound + outbound request streams per connection (libp2p's default is 100).
const MAX_CONCURRENT_STREAMS: usize = 64;

/// The network behaviour. Field order matters: the block list and the connection limits are
/// consulted first, so a refused connection is denied before any other behaviour sees it.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// Partition test hook: refuses and closes connections to blocked peers.
    pub(super) block_list: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Bounds on connections: per peer, inbound, in all, and handshakes under way.
    pub(super) limits: connection_limits::Behaviour,
    /// Exchanges protocol version, agent and listen addresses.
    pub(super) identify: identify::Behaviour,
    /// Liveness: failures close the connection (libp2p does not do it by itself).
    pub(super) ping: ping::Behaviour,
    /// LAN discovery; disabled in tests on the host.
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    /// Broadcast on `GOSSIP_TOPIC`, validated by the node before forwarding.
    pub(super) gossipsub: gossipsub::Behaviour,
    /// Point-to-point requests on `RPC_PROTOCOL`.
    pub(super) rpc: request_response::Behaviour<Codec>,
}

impl Behaviour {
    pub(super) fn new(config: &Config) -> Result<Self, NetError> {
        let keypair = &config.keypair;
        let local_peer_id = keypair.public().to_peer_id();

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), keypair.public())
                .with_agent_version(format!("bx3-node/{}", env!("CARGO_PKG_VERSION"))),
        );

        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(PING_INTERVAL)
                .with_timeout(PING_TIMEOUT),
        );

        let mdns = if config.mdns {
            // Query every 10 s (the default is 5 min): a node that comes back, or a link that
            // heals, is found again within seconds.
            let mdns_config = mdns::Config {
                query_interval: std::time::Duration::from_secs(10),
                ..mdns::Config::default()
            };
            let mdns = mdns::tokio::Behaviour::new(mdns_config, local_peer_id)
                .map_err(|e| NetError::Config(format!("cannot start mDNS: {e}")))?;
            Some(mdns)
        } else {
            None
        };

        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(HEARTBEAT)
            .heartbeat_initial_delay(HEARTBEAT)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(config.max_gossip.saturating_add(GOSSIP_FRAME_OVERHEAD))
            .flood_publish(true)
            .build()
            .map_err(|e| NetError::Config(format!("gossipsub: {e}")))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(keypair.clone()),
            gossip_config,
        )
        .map_err(|e| NetError::Config(format!("gossipsub: {e}")))?;
        gossipsub
            .subscribe(&gossipsub::IdentTopic::new(GOSSIP_TOPIC))
            .map_err(|e| NetError::Config(format!("cannot subscribe to {GOSSIP_TOPIC}: {e}")))?;

        let rpc = request_response::Behaviour::with_codec(
            Codec::new(config.max_message),
            [(
                StreamProtocol::new(RPC_PROTOCOL),
                request_response::ProtocolSupport::Full,
            )],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS),
        );

        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                .with_max_established(Some(MAX_CONNECTIONS))
                .with_max_established_incoming(Some(MAX_INCOMING))
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING)),
        );

        Ok(Self {
            block_list: allow_block_list::Behaviour::default(),
            limits,
            identify,
            ping,
            mdns: Toggle::from(mdns),
            gossipsub,
            rpc,
        })
    }
}
