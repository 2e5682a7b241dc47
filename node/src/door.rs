//! The door: fleet membership checked inside the connection upgrade, right after the Noise
//! handshake and before the connection is multiplexed. A peer that does not show a valid,
//! unexpired, unrevoked certificate for this fleet never gets a connection: no gossip, transfer,
//! sync, catalog, Kademlia, relay, identify or AutoNAT stream is ever opened with it
//! (docs/PROTOCOL.md "Membership", steps D1 to D4).
//!
//! The exchange, over the Noise channel, each side at once:
//! - D1: send `u32` big-endian length + this node's certificate envelope;
//! - D2: read the peer's (at most [`MAX_CERTIFICATE_BYTES`]) and check it (steps C1 to C6, the
//!   key it names must be the key the peer proved in the Noise handshake);
//! - D3: send one verdict byte: 0 admitted, else the refusal's code
//!   ([`lanpatch_protocol::RefusalReason::code`]), so a refused node can tell its operator why;
//! - D4: read the peer's verdict; either refusal fails the upgrade, and the TCP connection closes.
//!
//! With `enrollment = "off"` the door is plain Noise under its usual protocol name, so such a
//! fleet speaks exactly as before; an enrolled node and an open one cannot connect at all.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use lanpatch_protocol::{Envelope, MemberRefusal, NodeCertificate, RefusalReason};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::{PeerId, identity, noise};

use crate::clock::now;
use crate::membership::Members;

/// The protocol name of Noise followed by the certificate exchange.
pub const DOOR_PROTOCOL: &str = "/lanpatch/door/1";
/// The largest certificate envelope a peer may send (a certificate with 32 signatures and 256
/// tags is well under this).
pub const MAX_CERTIFICATE_BYTES: usize = 32 * 1024;
/// The whole exchange must end within this: shorter than the swarm's 10 s limit on the whole
/// connection upgrade, so a peer that stalls here is counted and logged as such.
pub const DOOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection did not pass the door.
#[derive(Debug, thiserror::Error)]
pub enum DoorError {
    #[error(transparent)]
    Noise(#[from] noise::Error),
    #[error("certificate exchange: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer refused at the door: {0}")]
    Refused(MemberRefusal),
    #[error("the peer refused this node's certificate ({})", .0.map_or("unknown reason", |r| r.as_str()))]
    RefusedByPeer(Option<RefusalReason>),
    #[error("certificate exchange took longer than {DOOR_TIMEOUT:?}")]
    Timeout,
}

/// Noise, then (when `members` is set) the certificate exchange.
#[derive(Clone)]
pub struct Door {
    noise: noise::Config,
    members: Option<Arc<Members>>,
}

impl Door {
    pub fn new(key: &identity::Keypair, members: Option<Arc<Members>>) -> Result<Door, noise::Error> {
        Ok(Door { noise: noise::Config::new(key)?, members })
    }
}

/// Plain Noise: what a node with `enrollment = "off"` (or from before enrollment) speaks.
const PLAIN: &str = "/noise";

impl UpgradeInfo for Door {
    type Info = &'static str;
    type InfoIter = std::vec::IntoIter<&'static str>;
    /// An enrolled node offers the door first and plain Noise second: a peer that only speaks
    /// plain Noise is then taken through the handshake (so its peer id is known) and refused as
    /// `no_certificate`, counted like every other refusal, instead of failing unseen in protocol
    /// negotiation.
    fn protocol_info(&self) -> Self::InfoIter {
        if self.members.is_some() { vec![DOOR_PROTOCOL, PLAIN] } else { vec![PLAIN] }.into_iter()
    }
}

type Upgraded<T> = (PeerId, noise::Output<T>);

impl<T> InboundConnectionUpgrade<T> for Door
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = Upgraded<T>;
    type Error = DoorError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;
    fn upgrade_inbound(self, socket: T, info: Self::Info) -> Self::Future {
        async move {
            let (peer, io) = self.noise.upgrade_inbound(socket, PLAIN).await?;
            admit(peer, io, self.members, info).await
        }
        .boxed()
    }
}

impl<T> OutboundConnectionUpgrade<T> for Door
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = Upgraded<T>;
    type Error = DoorError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;
    fn upgrade_outbound(self, socket: T, info: Self::Info) -> Self::Future {
        async move {
            let (peer, io) = self.noise.upgrade_outbound(socket, PLAIN).await?;
            admit(peer, io, self.members, info).await
        }
        .boxed()
    }
}

async fn admit<T>(
    peer: PeerId,
    mut io: noise::Output<T>,
    members: Option<Arc<Members>>,
    negotiated: &'static str,
) -> Result<Upgraded<T>, DoorError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(members) = members else { return Ok((peer, io)) };
    let exchanged = if negotiated == DOOR_PROTOCOL {
        tokio::time::timeout(DOOR_TIMEOUT, exchange(&mut io, &peer, &members)).await
    } else {
        // The peer speaks only plain Noise: it has no certificate to show.
        Ok(Err(DoorError::Refused(MemberRefusal::NoCertificate)))
    };
    match exchanged {
        Ok(Ok((cert, envelope))) => {
            tracing::debug!(%peer, hostname = %cert.hostname, ring = %cert.ring, site = %cert.site, "admitted at the door");
            members.admit(peer, cert, envelope);
            Ok((peer, io))
        }
        Ok(Err(DoorError::Refused(refusal))) => {
            tracing::info!(%peer, reason = refusal.reason().as_str(), "refused at the door: {refusal}");
            members.record(format!("peer {peer}"), &refusal, now());
            members.refused(peer);
            Err(DoorError::Refused(refusal))
        }
        Ok(Err(DoorError::RefusedByPeer(reason))) => {
            tracing::warn!(
                %peer,
                reason = reason.map_or("unknown", |r| r.as_str()),
                "the peer refused this node's certificate (check its expiry and the revocation list; `lanpatch-signer enroll show`)"
            );
            Err(DoorError::RefusedByPeer(reason))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let refusal = MemberRefusal::NoCertificate;
            tracing::info!(%peer, "refused at the door: no certificate within {DOOR_TIMEOUT:?}");
            members.record(format!("peer {peer} (timed out)"), &refusal, now());
            members.refused(peer);
            Err(DoorError::Timeout)
        }
    }
}

/// Steps D1 to D4 over an authenticated stream.
async fn exchange<S>(io: &mut S, peer: &PeerId, members: &Members) -> Result<(NodeCertificate, Envelope), DoorError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // D1
    let own = members.own_envelope_bytes();
    let mut frame = Vec::with_capacity(4 + own.len());
    frame.extend_from_slice(&u32::try_from(own.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&own);
    io.write_all(&frame).await?;
    io.flush().await?;
    // D2
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    let verdict = if len > MAX_CERTIFICATE_BYTES {
        Err(MemberRefusal::Malformed(format!("a certificate of {len} bytes; the limit is {MAX_CERTIFICATE_BYTES}")))
    } else {
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        members.check_peer(&buf, peer, now())
    };
    // D3
    let code = match &verdict {
        Ok(_) => 0,
        Err(e) => e.reason().code(),
    };
    io.write_all(&[code]).await?;
    io.flush().await?;
    let cert = verdict.map_err(DoorError::Refused)?;
    // D4
    let mut theirs = [0u8; 1];
    io.read_exact(&mut theirs).await?;
    if theirs[0] != 0 {
        return Err(DoorError::RefusedByPeer(RefusalReason::from_code(theirs[0])));
    }
    Ok(cert)
}
