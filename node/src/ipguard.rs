//! A small libp2p behaviour that denies connections by source IP: banned IPs (repeat offenders
//! that changed identities) and more than `max_per_ip` established connections from one IP.
//! Denied before the handshake completes for inbound connections, so a new identity from a
//! banned IP gets nowhere.

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
