//! A small libp2p behaviour that denies connections by source IP: banned IPs (repeat offenders
//! that changed identities) and more than `max_per_ip` established connections from one IP.
//! Denied before the handshake completes for inbound connections, so a new identity from a
//! banned IP gets nowhere.
//!
//! [`PunchPolicy`] holds the dial policy of hole punching (DCUtR): the remote peer names the
//! addresses, so a member must not be able to point the fleet's nodes at this machine's or the
//! LAN's own services. Hole punching exists to cross NATs, whose outside addresses are public;
//! peers on one LAN or site connect directly (mDNS, site peers). A hole-punch dial with any
//! address that is not a public unicast IP is denied before it starts.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// IPs that may not connect; shared with the node, which adds and expires entries.
#[derive(Clone, Default)]
pub struct BannedIps(Arc<RwLock<HashSet<IpAddr>>>);

impl BannedIps {
    pub fn insert(&self, ip: IpAddr) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(ip);
    }
    pub fn remove(&self, ip: &IpAddr) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).remove(ip);
    }
    /// Keeps only the IPs for which `keep` holds (expired IP bans go).
    pub fn retain(&self, keep: impl Fn(&IpAddr) -> bool) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).retain(|ip| keep(ip));
    }
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(ip)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("{0} is banned")]
    Banned(IpAddr),
    #[error("{ip} already has {count} connections (max_connections_per_ip)")]
    TooMany { ip: IpAddr, count: usize },
    #[error("hole punching to {0} refused: only public unicast addresses are punched to")]
    NotPublic(Multiaddr),
}

/// Whether a hole-punch dial may go to `addr`: an IP address that is public unicast (not
/// loopback, private, shared (CGNAT), link-local, unique-local, multicast, broadcast,
/// unspecified or documentation).
pub fn punchable(addr: &Multiaddr) -> bool {
    match ip_of(addr) {
        Some(IpAddr::V4(a)) => v4_punchable(a),
        Some(IpAddr::V6(a)) => {
            let seg = a.segments();
            let reserved = a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] & 0xffc0) == 0xfec0 // site-local
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || (seg[0] & 0xfff0) == 0x3ff0 // documentation (3fff::/20)
                || seg[0] == 0x2002 // 6to4: an IPv4 address inside
                || (seg[0] == 0x0064 && seg[1] == 0xff9b) // NAT64
                || seg[..6] == [0; 6]; // IPv4-compatible and -mapped (::/96, ::ffff:0:0/96)
            !reserved && a.to_ipv4_mapped().is_none()
        }
        None => false,
    }
}

pub struct IpGuard {
    banned: BannedIps,
    max_per_ip: usize,
    established: HashMap<IpAddr, HashSet<ConnectionId>>,
}

/// The IP of a multiaddr, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some(IpAddr::V4(a)),
        Protocol::Ip6(a) => Some(IpAddr::V6(a)),
        _ => None,
    })
}

impl IpGuard {
    pub fn new(banned: BannedIps, max_per_ip: usize) -> Self {
        IpGuard { banned, max_per_ip, established: HashMap::new() }
    }

    fn check(&self, addr: &Multiaddr) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(addr) else { return Ok(()) };
        if self.banned.contains(&ip) {
            return Err(ConnectionDenied::new(Denied::Banned(ip)));
        }
        let count = self.established.get(&ip).map_or(0, HashSet::len);
        if count >= self.max_per_ip {
            return Err(ConnectionDenied::new(Denied::TooMany { ip, count }));
        }
        Ok(())
    }

    fn add(&mut self, id: ConnectionId, addr: &Multiaddr) {
        if let Some(ip) = ip_of(addr) {
            self.established.entry(ip).or_default().insert(id);
        }
    }
}

impl NetworkBehaviour for IpGuard {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check(remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(remote)?;
        self.add(id, remote);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        _peer: PeerId,
        addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let Some(ip) = ip_of(addr)
            && self.banned.contains(&ip)
        {
            return Err(ConnectionDenied::new(Denied::Banned(ip)));
        }
        self.add(id, addr);
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, endpoint, .. }) = event
            && let Some(ip) = ip_of(endpoint.get_remote_address())
            && let Some(set) = self.established.get_mut(&ip)
        {
            set.remove(&connection_id);
            if set.is_empty() {
                self.established.remove(&ip);
            }
        }
    }

    fn on_connection_handler_event(&mut self, _peer: PeerId, _id: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

fn v4_punchable(a: std::net::Ipv4Addr) -> bool {
    let [b0, b1, b2, _] = a.octets();
    !(a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_unspecified()
        || a.is_documentation()
        || b0 == 0
        || (b0 == 100 && (64..128).contains(&b1)) // shared (CGNAT)
        || (b0 == 198 && (18..20).contains(&b1)) // benchmarking
        || (b0 == 192 && b1 == 0 && b2 == 0) // IETF protocol assignments
        || b0 >= 240)
}

/// DCUtR with a dial policy: every dial it asks for is remembered by its connection id, and
/// denied at `handle_pending_outbound_connection` unless every address is [`punchable`].
pub struct PunchPolicy {
    inner: libp2p::dcutr::Behaviour,
    punches: HashSet<ConnectionId>,
}

impl PunchPolicy {
    pub fn new(inner: libp2p::dcutr::Behaviour) -> Self {
        PunchPolicy { inner, punches: HashSet::new() }
    }
}

impl NetworkBehaviour for PunchPolicy {
    type ConnectionHandler = <libp2p::dcutr::Behaviour as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = libp2p::dcutr::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if self.punches.remove(&id)
            && let Some(bad) = addresses.iter().find(|a| !punchable(a))
        {
            tracing::info!(peer = ?peer, "{}", Denied::NotPublic(bad.clone()));
            return Err(ConnectionDenied::new(Denied::NotPublic(bad.clone())));
        }
        self.inner.handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::DialFailure(f) = &event {
            self.punches.remove(&f.connection_id);
        }
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        let out = self.inner.poll(cx);
        if let Poll::Ready(ToSwarm::Dial { opts }) = &out {
            self.punches.insert(opts.connection_id());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_punched_to() {
        let ok = |a: &str| punchable(&a.parse().unwrap());
        for public in ["/ip4/203.0.114.7/tcp/4001", "/ip4/8.8.8.8/udp/4001/quic-v1", "/ip6/2a01:4f8::1/tcp/4001"] {
            assert!(ok(public), "{public}");
        }
        for inside in [
            "/ip4/127.0.0.1/tcp/22",
            "/ip4/10.1.2.3/tcp/4001",
            "/ip4/192.168.1.1/tcp/80",
            "/ip4/172.16.0.1/tcp/80",
            "/ip4/100.64.0.1/tcp/80",
            "/ip4/169.254.169.254/tcp/80",
            "/ip4/0.0.0.0/tcp/80",
            "/ip4/224.0.0.251/udp/5353",
            "/ip4/255.255.255.255/udp/9",
            "/ip4/192.0.2.1/tcp/80",
            "/ip6/::1/tcp/22",
            "/ip6/fe80::1/tcp/22",
            "/ip6/fd00::1/tcp/22",
            "/ip6/::ffff:127.0.0.1/tcp/22",
            "/ip6/::ffff:8.8.8.8/tcp/22",
            "/ip6/64:ff9b::a00:1/tcp/22",
            "/ip6/2002:a00:1::1/tcp/22",
            "/ip6/fec0::1/tcp/22",
            "/ip4/198.18.0.1/tcp/80",
            "/ip4/192.0.0.8/tcp/80",
            "/dns4/localhost/tcp/22",
        ] {
            assert!(!ok(inside), "{inside}");
        }
    }
}
