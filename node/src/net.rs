//! The libp2p side of a node. One task owns the swarm ([`run_swarm`]); everything else talks to
//! it through a cloneable [`NetHandle`] and bounded channels. Bulk data never passes through this
//! loop: chunk streams are opened and served by other tasks through libp2p-stream's `Control`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::site::Reachability;
use lanpatch_protocol::SiteName;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;

use anyhow::{Context, Result, anyhow};
use lanpatch_protocol::{Hash32, Limits};
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, MessageId, ValidationMode};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, autonat, connection_limits, dcutr, identify, identity,
    kad, mdns, relay, tcp, yamux,
};

use crate::door::Door;
use crate::ipguard::{BannedIps, IpGuard, ip_of};
use crate::membership::Members;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Protocol names carry the fleet id, so nodes of different fleets cannot even negotiate them.
pub fn xfer_protocol(fleet: &Hash32) -> Result<StreamProtocol> {
    StreamProtocol::try_from_owned(format!("/lanpatch/{}/xfer/1", fleet.short()))
        .map_err(|e| anyhow!("protocol name: {e}"))
}
/// The fleet's own Kademlia: nodes of other fleets (or of the public IPFS DHT) never join it.
fn kad_protocol(fleet: &Hash32) -> Result<StreamProtocol> {
    StreamProtocol::try_from_owned(format!("/lanpatch/{}/kad/1", fleet.short()))
        .map_err(|e| anyhow!("protocol name: {e}"))
}
/// The Kademlia key under which the nodes holding a whole release announce themselves.
fn provider_key(manifest: &Hash32) -> kad::RecordKey {
    kad::RecordKey::new(&manifest.0)
}
/// Relay reservations this node keeps when it cannot be reached directly.
const RELAYS_WANTED: usize = 2;
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
    kad: kad::Behaviour<kad::store::MemoryStore>,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    dcutr: crate::ipguard::PunchPolicy,
    autonat: autonat::Behaviour,
}

/// Commands to the swarm task.
enum Command {
    Publish { data: Vec<u8>, reply: oneshot::Sender<Result<bool>> },
    Validation { id: MessageId, source: PeerId, acceptance: MessageAcceptance },
    Ban { peer: PeerId, ip: Option<std::net::IpAddr> },
    Unban { peer: PeerId, ip: Option<std::net::IpAddr> },
    Peers { reply: oneshot::Sender<Vec<PeerInfo>> },
    Listening { reply: oneshot::Sender<Vec<Multiaddr>> },
    Dial { peer: PeerId, addrs: Vec<Multiaddr>, via: PeerId },
    Provide(Hash32),
    FindProviders(Hash32),
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
    /// The site it says it is at.
    pub site: SiteName,
}

#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    pub control: libp2p_stream::Control,
    pub local: PeerId,
    pub protocol: StreamProtocol,
    ready: watch::Receiver<HashMap<PeerId, SiteName>>,
    pub site: SiteName,
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
    /// Dials a peer learned through peer exchange with `via`, unless already connected.
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>, via: PeerId) {
        let _ = self.tx.send(Command::Dial { peer, addrs, via }).await;
    }
    /// Announces in Kademlia that this node holds every chunk of a release.
    pub async fn provide(&self, manifest: Hash32) {
        let _ = self.tx.send(Command::Provide(manifest)).await;
    }
    /// Looks up the nodes holding a release (in any site) and dials those not connected.
    pub async fn find_providers(&self, manifest: Hash32) {
        let _ = self.tx.send(Command::FindProviders(manifest)).await;
    }
    pub async fn listening(&self) -> Result<Vec<Multiaddr>> {
        self.ask(|reply| Command::Listening { reply }).await
    }
    /// Peers of this fleet that are connected and identified.
    pub fn ready_peers(&self) -> Vec<PeerId> {
        self.ready.borrow().keys().copied().collect()
    }
    /// Whether a ready peer says it is at this node's site (false for a peer not ready).
    pub fn same_site(&self, peer: &PeerId) -> bool {
        self.ready.borrow().get(peer).is_some_and(|s| *s == self.site)
    }
}

pub struct NetConfig {
    pub keypair: identity::Keypair,
    pub fleet: Hash32,
    pub listen: Vec<Multiaddr>,
    pub static_peers: Vec<Multiaddr>,
    pub bootstrap_peers: Vec<Multiaddr>,
    pub mdns: bool,
    pub site: SiteName,
    pub relay: bool,
    pub reachability: Reachability,
    pub limits: Limits,
    pub banned_ips: BannedIps,
    pub conn: ConnLimits,
    pub published: crate::metrics::Published,
    /// Membership checked at the door (`None`: `enrollment = "off"`).
    pub members: Option<Arc<Members>>,
}

/// Connection limits (node.toml), counted per node.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_established: u32,
    pub max_pending: u32,
    pub max_per_peer: u32,
    pub max_per_ip: usize,
}

/// Gossipsub's heartbeat: mesh maintenance and lazy gossip (IHAVE), which is how metadata
/// crosses sites (one heartbeat per hop at most).
const GOSSIP_HEARTBEAT: Duration = Duration::from_secs(1);

/// How often a node asks the LAN who is there once it has found someone. Every node hears every
/// query and every answer, so a site of N nodes handles N x N answers per interval: at 5 s and
/// 16 nodes that was 50 packets a second on each idle node. A node that starts asks at once
/// (after 0.5 s, doubling until it hears an answer) and dials what it finds within one redial
/// tick, so a newcomer is connected in seconds whatever this interval is; the interval only
/// bounds how soon a node notices a peer that came back on another address.
const MDNS_QUERY_INTERVAL: Duration = Duration::from_secs(30);
/// How long others keep this node's mDNS answer: three query intervals, so one lost answer
/// does not expire it.
const MDNS_TTL: Duration = Duration::from_secs(90);

/// Below this gossip score a peer is ignored by gossipsub and banned by the node.
const GRAYLIST: f64 = -400.0;
/// The application score of a peer at another site: below zero, so gossipsub never grafts it into
/// this node's mesh (however many first deliveries it makes: they add at most 50), and well above
/// the gossip threshold (-100), so messages still cross sites through IHAVE / IWANT, once per
/// message and node, instead of over every mesh link between two sites. A node alone at its site
/// has an empty mesh and publishes to a few peers at random, as gossipsub does for a small mesh.
const OTHER_SITE_SCORE: f64 = -60.0;

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
    let mut params =
        gossipsub::PeerScoreParams { ip_colocation_factor_weight: 0.0, app_specific_weight: 1.0, ..Default::default() };
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
    let kad_proto = kad_protocol(&fleet)?;
    let kad_proto2 = kad_proto.clone();
    let agent = crate::site::agent(&cfg.site);
    let serve_relay = cfg.relay;
    let no_bootstrap = cfg.bootstrap_peers.is_empty();
    // Every connection, direct or through a relay, passes the door (door.rs) before it is
    // multiplexed: a peer without a valid certificate never reaches any behaviour below.
    let (door_tcp, door_relay) = (cfg.members.clone(), cfg.members.clone());
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            move |k: &identity::Keypair| Door::new(k, door_tcp),
            yamux::Config::default,
        )
        .context("TCP transport")?
        .with_relay_client(move |k: &identity::Keypair| Door::new(k, door_relay), yamux::Config::default)
        .context("relay transport")?
        .with_behaviour(|key, relay_client| {
            let gs_config = gossipsub::ConfigBuilder::default()
                // gossipsub's default. Each heartbeat maintains the mesh and offers recent ids
                // (IHAVE) across sites; on an idle fleet it is most of what the node does, so it
                // is not faster than it needs to be (it was 700 ms: 1.4 wake-ups a second).
                .heartbeat_interval(GOSSIP_HEARTBEAT)
                // Messages go out signed by this node's libp2p key (so nodes that still check
                // them, `ValidationMode::Strict`, take this node's messages), but gossipsub does
                // not check the signatures it receives: it did so in its decoder, for every copy
                // of a message from every mesh peer before dropping duplicates, and at 64 nodes
                // that was 6-9 % of the machine. Nothing here uses a message's author: every
                // payload is an envelope the node verifies itself, once per message id, before it
                // is accepted or forwarded (`validate_messages` below).
                .validation_mode(ValidationMode::None)
                .validate_messages()
                .max_transmit_size(max_transmit)
                // A node's own messages go to its mesh, like everyone else's, not to every
                // connected peer: flooding sent each report to all peers, most of them at other
                // sites, so every report crossed every site link several times.
                .flood_publish(false)
                // Lazy gossip (IHAVE) is how messages cross sites (see OTHER_SITE_SCORE): each
                // id is offered to 3 peers per heartbeat for 2 heartbeats, not 6 for 3, which
                // was half of what crossed a site link besides the release.
                .gossip_lazy(3)
                .history_gossip(2)
                .message_id_fn(|m: &gossipsub::Message| MessageId::from(blake3::hash(&m.data).as_bytes().to_vec()))
                .build()
                .map_err(|e| anyhow!("gossipsub config: {e}"))?;
            let mut gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gs_config)
                .map_err(|e| anyhow!("gossipsub: {e}"))?;
            let (params, thresholds) = peer_score(&topic);
            gossipsub.with_peer_score(params, thresholds).map_err(|e| anyhow!("gossipsub scoring: {e}"))?;
            let mdns = if use_mdns {
                let c = mdns::Config { query_interval: MDNS_QUERY_INTERVAL, ttl: MDNS_TTL, ..Default::default() };
                Some(mdns::tokio::Behaviour::new(c, key.public().to_peer_id())?)
            } else {
                None
            };
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(conn.max_pending))
                .with_max_pending_outgoing(Some(conn.max_pending))
                .with_max_established(Some(conn.max_established))
                .with_max_established_per_peer(Some(conn.max_per_peer));
            let me = key.public().to_peer_id();
            let mut kad_cfg = kad::Config::new(kad_proto2);
            // Inbound records are not stored blindly: only provider records for a release key
            // (see `SwarmTask::kad_event`); plain records are never used, so never kept.
            kad_cfg.set_record_filtering(kad::StoreInserts::FilterBoth);
            kad_cfg.set_query_timeout(Duration::from_secs(30));
            // Kademlia's periodic bootstrap (every 5 minutes) looks for peers beyond the site.
            // Without bootstrap peers there is nothing beyond it to find that identify and mDNS
            // do not already bring, and on an idle site it was a walk of the table every 5
            // minutes on every node.
            if no_bootstrap {
                kad_cfg.set_periodic_bootstrap_interval(None);
            }
            let store = kad::store::MemoryStore::with_config(
                me,
                kad::store::MemoryStoreConfig {
                    max_records: 16,
                    max_value_bytes: 1024,
                    max_providers_per_key: 20,
                    max_provided_keys: 1024,
                },
            );
            let relay = serve_relay.then(|| {
                relay::Behaviour::new(
                    me,
                    relay::Config {
                        max_reservations: 256,
                        max_reservations_per_peer: 2,
                        reservation_duration: Duration::from_secs(3600),
                        max_circuits: 128,
                        max_circuits_per_peer: 8,
                        // Releases may flow through a circuit: the defaults (2 min, 128 KiB) are
                        // meant for hole-punching only.
                        max_circuit_duration: Duration::from_secs(3600),
                        max_circuit_bytes: 4 << 30,
                        ..Default::default()
                    },
                )
            });
            let autonat = autonat::Behaviour::new(
                me,
                autonat::Config {
                    // Fleets live on private addresses: a LAN or a VPN is what they have.
                    only_global_ips: false,
                    boot_delay: Duration::from_secs(3),
                    retry_interval: Duration::from_secs(30),
                    refresh_interval: Duration::from_secs(600),
                    throttle_server_period: Duration::from_secs(10),
                    ..Default::default()
                },
            );
            Ok(Behaviour {
                blocked: Default::default(),
                limits: connection_limits::Behaviour::new(limits),
                ipguard: IpGuard::new(banned_ips.clone(), conn.max_per_ip),
                gossipsub,
                identify: identify::Behaviour::new(
                    identify::Config::new(identify_version(&fleet), key.public())
                        .with_agent_version(agent)
                        // A relay reservation adds an address after the connection is identified.
                        .with_push_listen_addr_updates(true),
                ),
                mdns: Toggle::from(mdns),
                stream: libp2p_stream::Behaviour::new(),
                kad: kad::Behaviour::with_config(me, store, kad_cfg),
                relay_client,
                relay: Toggle::from(relay),
                dcutr: crate::ipguard::PunchPolicy::new(dcutr::Behaviour::new(me)),
                autonat,
            })
        })
        .map_err(|e| anyhow!("network behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    swarm.behaviour_mut().gossipsub.subscribe(&topic).map_err(|e| anyhow!("subscribe: {e}"))?;
    swarm.behaviour_mut().kad.set_mode(match cfg.reachability {
        Reachability::Public => Some(kad::Mode::Server),
        Reachability::Private => Some(kad::Mode::Client),
        // Server once AutoNAT confirmed an external address.
        Reachability::Auto => None,
    });
    let mut bootstrap = Vec::new();
    for addr in &cfg.bootstrap_peers {
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            anyhow::bail!("bootstrap peer {addr} has no /p2p/<peer id> at its end");
        };
        swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        bootstrap.push(addr.clone());
    }
    for addr in &cfg.listen {
        swarm.listen_on(addr.clone()).with_context(|| format!("cannot listen on {addr}"))?;
    }
    let (tx, rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let (ready_tx, ready_rx) = watch::channel(HashMap::new());
    let handle = NetHandle {
        tx,
        control: swarm.behaviour().stream.new_control(),
        local: *swarm.local_peer_id(),
        protocol: xfer_protocol(&fleet)?,
        ready: ready_rx,
        site: cfg.site.clone(),
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
        static_peers: cfg.static_peers.into_iter().chain(bootstrap).map(|a| (a, false)).collect(),
        kad_protocol: kad_proto,
        site: cfg.site.clone(),
        reachability: cfg.reachability,
        private: cfg.reachability == Reachability::Private,
        dialed: HashMap::new(),
        relay_capable: HashSet::new(),
        relays: HashMap::new(),
        mdns_peers: HashMap::new(),
        addrs: HashMap::new(),
        listen_addrs: HashMap::new(),
        members: cfg.members,
        provided_by: ProviderBudget::default(),
    };
    Ok((handle, ev_rx, task))
}

pub struct SwarmTask {
    banned_ips: BannedIps,
    swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    ready: watch::Sender<HashMap<PeerId, SiteName>>,
    fleet_version: String,
    /// Static and bootstrap peer addresses and whether a connection to them is up.
    static_peers: Vec<(Multiaddr, bool)>,
    kad_protocol: StreamProtocol,
    site: SiteName,
    reachability: Reachability,
    /// Whether this node is (configured or found by AutoNAT to be) unreachable from outside.
    private: bool,
    /// The address this node dialed to reach a peer (a relay is listened on through it).
    dialed: HashMap<PeerId, Multiaddr>,
    /// Fleet peers that offer circuit relay.
    relay_capable: HashSet<PeerId>,
    /// Relay reservations this node listens through, by relay.
    relays: HashMap<PeerId, ListenerId>,
    /// Peers seen by mDNS, with an address to dial.
    mdns_peers: HashMap<PeerId, Multiaddr>,
    /// Remote address of each connected peer, for status.
    addrs: HashMap<PeerId, Multiaddr>,
    /// Listen addresses each ready peer announced through identify.
    listen_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// Membership (`None`: `enrollment = "off"`).
    members: Option<Arc<Members>>,
    /// Provider records each peer stored here (Kademlia), against [`PROVIDER_RECORDS_PER_PEER`].
    provided_by: ProviderBudget,
}

/// The provider records other peers stored on this node, against [`PROVIDER_RECORDS_PER_PEER`]
/// and [`PROVIDER_KEYS_FOR_OTHERS`].
#[derive(Default)]
pub struct ProviderBudget {
    by_peer: HashMap<PeerId, HashMap<kad::RecordKey, std::time::Instant>>,
}

/// How long Kademlia keeps a provider record that is not renewed.
const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(48 * 3600);

impl ProviderBudget {
    /// Whether `provider` may store a record under `key` now (and, if so, it is counted).
    pub fn admit(&mut self, provider: PeerId, key: kad::RecordKey, now: std::time::Instant) -> bool {
        for keys in self.by_peer.values_mut() {
            keys.retain(|_, at| now.saturating_duration_since(*at) < PROVIDER_RECORD_TTL);
        }
        self.by_peer.retain(|_, keys| !keys.is_empty());
        let renewal = self.by_peer.get(&provider).is_some_and(|k| k.contains_key(&key));
        if !renewal {
            if self.by_peer.get(&provider).is_some_and(|k| k.len() >= PROVIDER_RECORDS_PER_PEER) {
                return false;
            }
            let all: HashSet<&kad::RecordKey> = self.by_peer.values().flat_map(|k| k.keys()).collect();
            if !all.contains(&key) && all.len() >= PROVIDER_KEYS_FOR_OTHERS {
                return false;
            }
        }
        self.by_peer.entry(provider).or_default().insert(key, now);
        true
    }
}

/// Provider records one peer may store on this node: a member announces the releases it holds,
/// a few dozen at most. Together, others may hold [`PROVIDER_KEYS_FOR_OTHERS`] keys here, so the
/// node's own announcements always have room.
pub const PROVIDER_RECORDS_PER_PEER: usize = 64;
/// Release keys this node stores provider records under for other peers, of the store's 1,024
/// (`max_provided_keys`, which counts every key): the rest stays free for this node's own
/// announcements, whatever others send.
pub const PROVIDER_KEYS_FOR_OTHERS: usize = 768;

impl SwarmTask {
    /// Runs until `shutdown` fires or every handle is dropped.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut redial = tokio::time::interval(Duration::from_secs(3));
        let members = self.members.clone();
        loop {
            let changed = async {
                match &members {
                    Some(m) => m.changed.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = redial.tick() => {
                    self.sweep_members();
                    self.redial();
                }
                // `notify_one` keeps a permit when nobody waits: a change made while this loop
                // was busy is not lost.
                _ = changed => self.sweep_members(),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.event(ev),
            }
        }
        tracing::debug!("swarm task stopped");
    }

    /// Disconnects and blocks peers whose certificate expired or was revoked since the door
    /// admitted them (checked every redial tick and at once when the revocation list changes).
    fn sweep_members(&mut self) {
        let Some(members) = &self.members else { return };
        let now = crate::clock::now();
        for (peer, refusal) in members.sweep(now) {
            if !self.swarm.is_connected(&peer) {
                continue;
            }
            tracing::warn!(%peer, reason = refusal.reason().as_str(), "cutting off a peer that is no longer a member: {refusal}");
            members.record(format!("peer {peer}"), &refusal, now);
            self.mdns_peers.remove(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        // No connected peer without a certificate on record, whatever the order of events.
        let unrecorded: Vec<PeerId> =
            self.swarm.connected_peers().filter(|p| members.certificate_of(p).is_none()).copied().collect();
        for peer in unrecorded {
            tracing::debug!(%peer, "connected without a certificate on record; closing");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Whether `peer` was refused at the door lately: it is not dialed again until
    /// [`crate::membership::REFUSED_BACKOFF`] has passed (an outsider announcing itself by mDNS
    /// would otherwise cost every node a handshake every few seconds).
    fn refused_lately(&self, peer: &PeerId) -> bool {
        self.members.as_ref().is_some_and(|m| m.refused_lately(peer))
    }

    fn redial(&mut self) {
        for (addr, up) in &self.static_peers {
            // An address naming its peer is up while that peer is connected, whoever dialed
            // (mDNS or peer exchange may have connected it first): no duplicate connections.
            let up = match addr.iter().last() {
                Some(Protocol::P2p(peer)) => self.swarm.is_connected(&peer),
                _ => *up,
            };
            let refused = match addr.iter().last() {
                Some(Protocol::P2p(peer)) => self.refused_lately(&peer),
                _ => false,
            };
            if !up && !refused {
                let _ = self.swarm.dial(addr.clone());
            }
        }
        // mDNS peers that the smaller id did not dial (or could not): dial them now.
        let missing: Vec<(PeerId, Multiaddr)> = self
            .mdns_peers
            .iter()
            .filter(|(p, _)| !self.swarm.is_connected(p) && !self.refused_lately(p))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (peer, addr) in missing {
            let _ = self.swarm.dial(libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(vec![addr]).build());
        }
        self.keep_relays();
    }

    /// A private node listens through up to [`RELAYS_WANTED`] relays it dialed itself (a relay
    /// is reached on the address this node used, which works through NAT).
    fn keep_relays(&mut self) {
        if !self.private || self.relays.len() >= RELAYS_WANTED {
            return;
        }
        let mut candidates: Vec<(PeerId, Multiaddr)> = self
            .relay_capable
            .iter()
            .filter(|p| !self.relays.contains_key(p) && self.swarm.is_connected(p))
            .filter_map(|p| Some((*p, self.dialed.get(p)?.clone())))
            .collect();
        candidates.sort_by_key(|(p, _)| p.to_bytes());
        for (peer, addr) in candidates.into_iter().take(RELAYS_WANTED - self.relays.len()) {
            let mut circuit: Multiaddr = addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
            circuit.push(Protocol::P2p(peer));
            circuit.push(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::info!(relay = %peer, %circuit, "reserving a relay slot (this node is not reachable directly)");
                    self.relays.insert(peer, id);
                }
                Err(e) => tracing::warn!(relay = %peer, "cannot listen through the relay: {e}"),
            }
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
                    .filter_map(|(p, site)| {
                        Some(PeerInfo {
                            peer: *p,
                            addr: self.addrs.get(p)?.clone(),
                            listen: self.listen_addrs.get(p).cloned().unwrap_or_default(),
                            site: site.clone(),
                        })
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Listening { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { peer, mut addrs, via } => {
                // A loopback address a peer announced is its own machine's, not ours, unless
                // that peer is itself reached over loopback (nodes sharing one host).
                let via_loopback = self.addrs.get(&via).and_then(ip_of).is_some_and(|ip| ip.is_loopback());
                if !via_loopback {
                    addrs.retain(|a| !ip_of(a).is_some_and(|ip| ip.is_loopback()));
                }
                if peer != *self.swarm.local_peer_id() && !self.swarm.is_connected(&peer) && !addrs.is_empty() {
                    tracing::debug!(%peer, "dialing peer learned from peer exchange");
                    let _ = self.swarm.dial(libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(addrs).build());
                }
            }
            Command::Provide(manifest) => {
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(provider_key(&manifest)) {
                    tracing::debug!(manifest = %manifest.short(), "cannot announce the release in Kademlia: {e}");
                }
            }
            Command::FindProviders(manifest) => {
                self.swarm.behaviour_mut().kad.get_providers(provider_key(&manifest));
            }
        }
    }

    fn kad_event(&mut self, ev: kad::Event) {
        match ev {
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { key, providers })),
                ..
            } => {
                let me = *self.swarm.local_peer_id();
                for p in providers {
                    if p != me && !self.swarm.is_connected(&p) {
                        tracing::info!(provider = %p, key = %hex::encode(key.as_ref()), "dialing a holder of the release found in Kademlia");
                        // Kademlia supplies the addresses the query learned.
                        let _ = self.swarm.dial(libp2p::swarm::dial_opts::DialOpts::peer_id(p).build());
                    }
                }
            }
            // Kademlia checked that the provider is the peer that sent it; the key must be a
            // release's (32 bytes). The store bounds keys and providers per key.
            // Each peer stores at most PROVIDER_RECORDS_PER_PEER keys here (with enrollment, only
            // members reach Kademlia at all).
            kad::Event::InboundRequest { request: kad::InboundRequest::AddProvider { record: Some(record) } }
                if record.key.as_ref().len() == 32 =>
            {
                if !self.provided_by.admit(record.provider, record.key.clone(), std::time::Instant::now()) {
                    tracing::debug!(peer = %record.provider, "provider record over its budget ignored");
                    return;
                }
                let _ = kad::store::RecordStore::add_provider(self.swarm.behaviour_mut().kad.store_mut(), record);
            }
            _ => {}
        }
    }

    /// A peer of this fleet identified itself (at connection, and again when its addresses
    /// change): note its addresses, its site and what it offers.
    fn identified(&mut self, peer_id: PeerId, info: identify::Info) {
        let listen: Vec<Multiaddr> = info.listen_addrs.into_iter().take(crate::wire::MAX_ADDRS_PER_PEER).collect();
        if info.protocols.contains(&self.kad_protocol) {
            for addr in &listen {
                self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
            }
        }
        if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            self.relay_capable.insert(peer_id);
        }
        self.listen_addrs.insert(peer_id, listen);
        // With enrollment the site is the one the admins enrolled the peer at, not what it says.
        let certified = self.members.as_ref().and_then(|m| m.certificate_of(&peer_id)).map(|c| c.site);
        let site =
            certified.or_else(|| crate::site::site_of(&info.agent_version)).unwrap_or_else(crate::site::default_site);
        let app_score = if site == self.site { 0.0 } else { OTHER_SITE_SCORE };
        self.swarm.behaviour_mut().gossipsub.set_application_score(&peer_id, app_score);
        let mut new = false;
        self.ready.send_if_modified(|s| {
            new = !s.contains_key(&peer_id);
            s.insert(peer_id, site.clone()).as_ref() != Some(&site)
        });
        if new {
            tracing::info!(%peer_id, %site, "peer ready");
            let _ = self.events.try_send(NetEvent::PeerReady(peer_id));
        }
        self.keep_relays();
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
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                // Configured reachable: what it listens on is what others dial (and what its
                // Kademlia provider records carry). `auto` leaves this to AutoNAT.
                if self.reachability == Reachability::Public
                    && !address.iter().any(|p| matches!(p, Protocol::P2pCircuit))
                {
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                // Every connection passed the door, which recorded the peer's certificate; one
                // whose record is gone (its other connection closed while this one was still
                // being set up) is not let through unchecked.
                if let Some(m) = &self.members
                    && m.certificate_of(&peer_id).is_none()
                {
                    tracing::debug!(%peer_id, "connection without a certificate on record; closing it (the peer may dial again)");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let addr = endpoint.get_remote_address().clone();
                if endpoint.is_dialer() {
                    self.set_static(&addr, true);
                    if !addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
                        self.dialed.insert(peer_id, addr.clone());
                    }
                }
                self.addrs.insert(peer_id, addr);
            }
            SwarmEvent::ConnectionClosed { peer_id, endpoint, num_established, .. } => {
                if endpoint.is_dialer() {
                    self.set_static(endpoint.get_remote_address(), false);
                }
                if num_established == 0 {
                    if let Some(m) = &self.members {
                        m.forget(&peer_id);
                    }
                    self.addrs.remove(&peer_id);
                    self.listen_addrs.remove(&peer_id);
                    self.dialed.remove(&peer_id);
                    self.relay_capable.remove(&peer_id);
                    let was = self.ready.send_if_modified(|s| s.remove(&peer_id).is_some());
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
                self.identified(peer_id, info);
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                if let Some(relay) = self.relays.iter().find(|(_, l)| **l == listener_id).map(|(p, _)| *p) {
                    tracing::info!(%relay, ?reason, "relay reservation closed");
                    self.relays.remove(&relay);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.kad_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new })) => {
                tracing::info!(?old, ?new, "reachability (AutoNAT)");
                if self.reachability == Reachability::Auto {
                    self.private = matches!(new, autonat::NatStatus::Private);
                    self.keep_relays();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal: false,
                ..
            })) => {
                tracing::info!(relay = %relay_peer_id, "relay reservation accepted: reachable through the relay");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(ev)) => {
                tracing::info!(peer = %ev.remote_peer_id, result = ?ev.result.map(|_| ()), "direct connection upgrade (hole punching)");
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
                    if new && me < peer && !self.swarm.is_connected(&peer) && !self.refused_lately(&peer) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> kad::RecordKey {
        kad::RecordKey::new(&i.to_le_bytes())
    }

    #[test]
    fn a_peer_stores_at_most_its_budget_of_provider_keys_and_others_leave_room_for_the_nodes_own() {
        let mut b = ProviderBudget::default();
        let now = std::time::Instant::now();
        let p = PeerId::random();
        assert!((0..PROVIDER_RECORDS_PER_PEER).all(|i| b.admit(p, key(i), now)));
        assert!(!b.admit(p, key(10_000), now), "over the per-peer budget");
        assert!(b.admit(p, key(0), now), "a renewal is not a new key");
        // Many peers together fill the room for others, never the whole store.
        let mut admitted = PROVIDER_RECORDS_PER_PEER;
        for n in 0..100 {
            let q = PeerId::random();
            admitted += (0..PROVIDER_RECORDS_PER_PEER).filter(|i| b.admit(q, key(100_000 + n * 1000 + i), now)).count();
        }
        assert_eq!(admitted, PROVIDER_KEYS_FOR_OTHERS);
        assert!(b.admit(PeerId::random(), key(0), now), "a key already stored for others may get another provider");
        // Records age out with Kademlia's: the budget comes back.
        let later = now + PROVIDER_RECORD_TTL + Duration::from_secs(1);
        assert!(b.admit(p, key(10_000), later));
    }
}
