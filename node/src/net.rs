//! The libp2p side of a node. One task owns the swarm ([`run_swarm`]); everything else talks to
//! it through a cloneable [`NetHandle`] and bounded channels. Bulk data never passes through this
//! loop: chunk streams are opened and served by other tasks through libp2p-stream's `Control`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use lanpatch_protocol::{Hash32, Limits};
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, MessageId, ValidationMode};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, identify, identity, mdns, noise,
    tcp, yamux,
};

use crate::ipguard::{BannedIps, IpGuard, ip_of};
use tokio::sync::{mpsc, oneshot, watch};

/// Protocol names carry the fleet id, so nodes of different fleets cannot even negotiate them.
pub fn xfer_protocol(fleet: &Hash32) -> Result<StreamProtocol> {
    StreamProtocol::try_from_owned(format!("/lanpatch/{}/xfer/1", fleet.short()))
        .map_err(|e| anyhow!("protocol name: {e}"))
}
fn identify_version(fleet: &Hash32) -> String {
    format!("lanpatch/1/{}", fleet.to_hex())
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    ipguard: IpGuard,
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

/// Commands to the swarm task.
enum Command {
    Publish { data: Vec<u8>, reply: oneshot::Sender<Result<bool>> },
    Validation { id: MessageId, source: PeerId, acceptance: MessageAcceptance },
    Ban { peer: PeerId, ip: Option<std::net::IpAddr> },
    Unban { peer: PeerId, ip: Option<std::net::IpAddr> },
    Peers { reply: oneshot::Sender<Vec<PeerInfo>> },
    Listening { reply: oneshot::Sender<Vec<Multiaddr>> },
    Dial { peer: PeerId, addrs: Vec<Multiaddr> },
}

/// What the swarm task tells the rest of the node.
#[derive(Debug)]
pub enum NetEvent {
    /// Gossip awaiting validation; answer with [`NetHandle::validation`].
    Gossip {
        id: MessageId,
        source: PeerId,
        data: Vec<u8>,
    },
    /// A peer of this fleet finished identification (catalog sync starts here).
    PeerReady(PeerId),
    PeerGone(PeerId),
    /// A peer's gossip score fell below the graylist threshold (it sent refused messages): the
    /// node bans it (persisted).
    Graylisted {
        peer: PeerId,
        score: f64,
    },
}

#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub peer: PeerId,
    /// The address of our connection to it.
    pub addr: Multiaddr,
    /// The addresses it says it listens on (from identify).
    pub listen: Vec<Multiaddr>,
}

#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    pub control: libp2p_stream::Control,
    pub local: PeerId,
    pub protocol: StreamProtocol,
    ready: watch::Receiver<HashSet<PeerId>>,
    published: crate::metrics::Published,
    limits: Limits,
}

impl NetHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| anyhow!("network task stopped"))?;
        rx.await.map_err(|_| anyhow!("network task stopped"))
    }
    pub async fn publish(&self, data: Vec<u8>) -> Result<()> {
        self.publish_sent(data).await.map(|_| ())
    }
    /// [`NetHandle::publish`], telling whether gossipsub sent it (false: no subscribed peer yet,
    /// or a duplicate within its cache time).
    pub async fn publish_sent(&self, data: Vec<u8>) -> Result<bool> {
        let kind = lanpatch_protocol::Envelope::decode(&data, &self.limits).map(|e| e.kind);
        let sent = self.ask(|reply| Command::Publish { data, reply }).await??;
        if let (true, Ok(kind)) = (sent, kind) {
            self.published.count(kind);
        }
        Ok(sent)
    }
    pub async fn validation(&self, id: MessageId, source: PeerId, acceptance: MessageAcceptance) {
        let _ = self.tx.send(Command::Validation { id, source, acceptance }).await;
    }
    /// Blocks a peer (and, for a repeat offender, every connection from its IP).
    pub async fn ban(&self, peer: PeerId, ip: Option<std::net::IpAddr>) {
        let _ = self.tx.send(Command::Ban { peer, ip }).await;
    }
    /// Lifts a ban that expired.
    pub async fn unban(&self, peer: PeerId, ip: Option<std::net::IpAddr>) {
        let _ = self.tx.send(Command::Unban { peer, ip }).await;
    }
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.ask(|reply| Command::Peers { reply }).await
    }
    /// Dials a peer learned through peer exchange, unless already connected.
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let _ = self.tx.send(Command::Dial { peer, addrs }).await;
    }
    pub async fn listening(&self) -> Result<Vec<Multiaddr>> {
        self.ask(|reply| Command::Listening { reply }).await
    }
    /// Peers of this fleet that are connected and identified.
    pub fn ready_peers(&self) -> Vec<PeerId> {
        self.ready.borrow().iter().copied().collect()
    }
}

pub struct NetConfig {
    pub keypair: identity::Keypair,
    pub fleet: Hash32,
    pub listen: Vec<Multiaddr>,
    pub static_peers: Vec<Multiaddr>,
    pub mdns: bool,
    pub limits: Limits,
    pub banned_ips: BannedIps,
    pub conn: ConnLimits,
    pub published: crate::metrics::Published,
}

/// Connection limits (node.toml), counted per node.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_established: u32,
    pub max_pending: u32,
    pub max_per_peer: u32,
    pub max_per_ip: usize,
}

/// Below this gossip score a peer is ignored by gossipsub and banned by the node.
const GRAYLIST: f64 = -400.0;

/// Gossipsub peer scoring: a peer whose messages are refused (`Reject`) loses score
/// quadratically (P4) and, past the thresholds, is no longer gossiped with, then ignored
/// (graylisted). Delivery-rate penalties (P3) and IP colocation are off: metadata is rare on
/// a fleet's topic, and a site behind NAT shares one IP; the node limits IPs itself.
fn peer_score(topic: &IdentTopic) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic_params = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 300.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 50.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -20.0,
        invalid_message_deliveries_decay: 0.99,
        ..Default::default()
    };
    let mut params = gossipsub::PeerScoreParams { ip_colocation_factor_weight: 0.0, ..Default::default() };
    params.topics.insert(topic.hash(), topic_params);
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -100.0,
        publish_threshold: -200.0,
        graylist_threshold: GRAYLIST,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 5.0,
    };
    (params, thresholds)
}

/// Builds the swarm and starts listening; returns the handle, the event stream and the task.
pub fn start(cfg: NetConfig) -> Result<(NetHandle, mpsc::Receiver<NetEvent>, SwarmTask)> {
    let topic = IdentTopic::new(format!("lanpatch/{}/meta/1", cfg.fleet.to_hex()));
    let max_transmit = cfg.limits.max_envelope_bytes + 64 * 1024;
    let use_mdns = cfg.mdns;
    let fleet = cfg.fleet;
    let conn = cfg.conn;
    let banned_ips = cfg.banned_ips.clone();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .context("TCP transport")?
        .with_behaviour(|key| {
            let gs_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(700))
                .validation_mode(ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(max_transmit)
                .message_id_fn(|m: &gossipsub::Message| MessageId::from(blake3::hash(&m.data).as_bytes().to_vec()))
                .build()
                .map_err(|e| anyhow!("gossipsub config: {e}"))?;
            let mut gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gs_config)
                .map_err(|e| anyhow!("gossipsub: {e}"))?;
            let (params, thresholds) = peer_score(&topic);
            gossipsub.with_peer_score(params, thresholds).map_err(|e| anyhow!("gossipsub scoring: {e}"))?;
            let mdns = if use_mdns {
                let c = mdns::Config {
                    query_interval: Duration::from_secs(5),
                    ttl: Duration::from_secs(60),
                    ..Default::default()
                };
                Some(mdns::tokio::Behaviour::new(c, key.public().to_peer_id())?)
            } else {
                None
            };
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(conn.max_pending))
                .with_max_pending_outgoing(Some(conn.max_pending))
                .with_max_established(Some(conn.max_established))
                .with_max_established_per_peer(Some(conn.max_per_peer));
            Ok(Behaviour {
                blocked: Default::default(),
                limits: connection_limits::Behaviour::new(limits),
                ipguard: IpGuard::new(banned_ips.clone(), conn.max_per_ip),
                gossipsub,
                identify: identify::Behaviour::new(identify::Config::new(identify_version(&fleet), key.public())),
                mdns: Toggle::from(mdns),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| anyhow!("network behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    swarm.behaviour_mut().gossipsub.subscribe(&topic).map_err(|e| anyhow!("subscribe: {e}"))?;
    for addr in &cfg.listen {
        swarm.listen_on(addr.clone()).with_context(|| format!("cannot listen on {addr}"))?;
    }
    let (tx, rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let (ready_tx, ready_rx) = watch::channel(HashSet::new());
    let handle = NetHandle {
        tx,
        control: swarm.behaviour().stream.new_control(),
        local: *swarm.local_peer_id(),
        protocol: xfer_protocol(&fleet)?,
        ready: ready_rx,
        published: cfg.published,
        limits: cfg.limits.clone(),
    };
    let task = SwarmTask {
        banned_ips: cfg.banned_ips,
        swarm,
        topic,
        commands: rx,
        events: ev_tx,
        ready: ready_tx,
        fleet_version: identify_version(&fleet),
        static_peers: cfg.static_peers.into_iter().map(|a| (a, false)).collect(),
        mdns_peers: HashMap::new(),
        addrs: HashMap::new(),
        listen_addrs: HashMap::new(),
    };
    Ok((handle, ev_rx, task))
}

pub struct SwarmTask {
    banned_ips: BannedIps,
    swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    ready: watch::Sender<HashSet<PeerId>>,
    fleet_version: String,
    /// Static peer addresses and whether a connection to them is up.
    static_peers: Vec<(Multiaddr, bool)>,
    /// Peers seen by mDNS, with an address to dial.
    mdns_peers: HashMap<PeerId, Multiaddr>,
    /// Remote address of each connected peer, for status.
    addrs: HashMap<PeerId, Multiaddr>,
    /// Listen addresses each ready peer announced through identify.
    listen_addrs: HashMap<PeerId, Vec<Multiaddr>>,
}

impl SwarmTask {
    /// Runs until `shutdown` fires or every handle is dropped.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut redial = tokio::time::interval(Duration::from_secs(3));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = redial.tick() => self.redial(),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.event(ev),
            }
        }
        tracing::debug!("swarm task stopped");
    }

    fn redial(&mut self) {
        for (addr, up) in &self.static_peers {
            if !*up {
                let _ = self.swarm.dial(addr.clone());
            }
        }
        // mDNS peers that the smaller id did not dial (or could not): dial them now.
        let missing: Vec<(PeerId, Multiaddr)> =
            self.mdns_peers.iter().filter(|(p, _)| !self.swarm.is_connected(p)).map(|(p, a)| (*p, a.clone())).collect();
        for (peer, addr) in missing {
            let _ = self.swarm.dial(libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(vec![addr]).build());
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish { data, reply } => {
                let r = match self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), data) {
                    Ok(_) => Ok(true),
                    // Nobody to send to yet: peers catch up through catalog sync when they connect.
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(false),
                    // Sent within the duplicate cache time: those who got it then have it.
                    Err(gossipsub::PublishError::Duplicate) => Ok(false),
                    Err(e) => Err(anyhow!("gossip publish: {e}")),
                };
                let _ = reply.send(r);
            }
            Command::Validation { id, source, acceptance } => {
                let reject = matches!(acceptance, MessageAcceptance::Reject);
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                gs.report_message_validation_result(&id, &source, acceptance);
                if reject
                    && let Some(score) = gs.peer_score(&source)
                    && score < GRAYLIST
                {
                    let _ = self.events.try_send(NetEvent::Graylisted { peer: source, score });
                }
            }
            Command::Ban { peer, ip } => {
                tracing::warn!(%peer, ?ip, "banning peer");
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                self.mdns_peers.remove(&peer);
                if let Some(ip) = ip {
                    self.banned_ips.insert(ip);
                    let same_ip: Vec<PeerId> =
                        self.addrs.iter().filter(|(_, a)| ip_of(a) == Some(ip)).map(|(p, _)| *p).collect();
                    for p in same_ip {
                        let _ = self.swarm.disconnect_peer_id(p);
                    }
                }
            }
            Command::Unban { peer, ip } => {
                tracing::info!(%peer, ?ip, "ban expired");
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                if let Some(ip) = ip {
                    self.banned_ips.remove(&ip);
                }
            }
            Command::Peers { reply } => {
                let peers = self
                    .ready
                    .borrow()
                    .iter()
                    .filter_map(|p| {
                        Some(PeerInfo {
                            peer: *p,
                            addr: self.addrs.get(p)?.clone(),
                            listen: self.listen_addrs.get(p).cloned().unwrap_or_default(),
                        })
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Listening { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { peer, addrs } => {
                if peer != *self.swarm.local_peer_id() && !self.swarm.is_connected(&peer) && !addrs.is_empty() {
                    tracing::debug!(%peer, "dialing peer learned from peer exchange");
                    let _ = self.swarm.dial(libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(addrs).build());
                }
            }
        }
    }

    fn set_static(&mut self, addr: &Multiaddr, up: bool) {
        for (a, u) in &mut self.static_peers {
            if a == addr {
                *u = up;
            }
        }
    }

    fn event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                let addr = endpoint.get_remote_address().clone();
                if endpoint.is_dialer() {
                    self.set_static(&addr, true);
                }
                self.addrs.insert(peer_id, addr);
            }
            SwarmEvent::ConnectionClosed { peer_id, endpoint, num_established, .. } => {
                if endpoint.is_dialer() {
                    self.set_static(endpoint.get_remote_address(), false);
                }
                if num_established == 0 {
                    self.addrs.remove(&peer_id);
                    self.listen_addrs.remove(&peer_id);
                    let was = self.ready.send_if_modified(|s| s.remove(&peer_id));
                    if was {
                        let _ = self.events.try_send(NetEvent::PeerGone(peer_id));
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { error, peer_id, .. } => {
                tracing::debug!(?peer_id, %error, "dial failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                if info.protocol_version != self.fleet_version {
                    tracing::info!(%peer_id, theirs = %info.protocol_version, "peer is not in this fleet; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    self.mdns_peers.remove(&peer_id);
                    return;
                }
                self.listen_addrs
                    .insert(peer_id, info.listen_addrs.into_iter().take(crate::wire::MAX_ADDRS_PER_PEER).collect());
                let new = self.ready.send_if_modified(|s| s.insert(peer_id));
                if new {
                    tracing::info!(%peer_id, "peer ready");
                    let _ = self.events.try_send(NetEvent::PeerReady(peer_id));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                let me = *self.swarm.local_peer_id();
                for (peer, addr) in list {
                    if addr.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip6(_))) {
                        continue;
                    }
                    let new = !self.mdns_peers.contains_key(&peer);
                    self.mdns_peers.insert(peer, addr.clone());
                    // Only one side dials, to avoid duplicate connections; the redial timer
                    // covers the case where the other side never saw us.
                    if new && me < peer && !self.swarm.is_connected(&peer) {
                        tracing::info!(%peer, %addr, "discovered by mDNS; dialing");
                        let _ = self
                            .swarm
                            .dial(libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(vec![addr]).build());
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(list))) => {
                for (peer, _) in list {
                    self.mdns_peers.remove(&peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let ev = NetEvent::Gossip { id: message_id.clone(), source: propagation_source, data: message.data };
                if self.events.try_send(ev).is_err() {
                    // The node is overloaded: drop without penalty rather than block the swarm.
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        MessageAcceptance::Ignore,
                    );
                }
            }
            _ => {}
        }
    }
}
