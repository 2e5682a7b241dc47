//! The door: fleet membership checked inside the connection upgrade, right after the Noise
//! handshake and before the connection is multiplexed. A peer that does not show a valid,
//! unexpired, unrevoked certificate for this fleet never gets a connection: no gossip, transfer,
//! sync, catalog, Kademlia, relay, identify or AutoNAT stream is ever opened with it
//! (docs/PROTOCOL.md "Membership", steps D1 to D4).
//!
//! The exchange, over the Noise channel (frames: `u32` big-endian length + envelope, at most
//! [`MAX_CERTIFICATE_BYTES`]; verdicts: one byte, 0 admitted, else the refusal's code
//! ([`lanpatch_protocol::RefusalReason::code`]), so a refused node can tell its operator why):
//! - D1: the dialer sends its certificate frame;
//! - D2: the listener checks it (steps C1 to C6; the key it names must be the key the peer
//!   proved in the Noise handshake) and sends its verdict, then, only if it admitted the dialer,
//!   its own certificate frame: a process that merely connects learns nothing about the node;
//! - D3: the dialer reads the verdict, checks the listener's certificate and sends its verdict;
//! - D4: either refusal fails the upgrade, and the TCP connection closes.
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
            admit(peer, io, self.members, info, Side::Listener).await
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
            admit(peer, io, self.members, info, Side::Dialer).await
        }
        .boxed()
    }
}

async fn admit<T>(
    peer: PeerId,
    mut io: noise::Output<T>,
    members: Option<Arc<Members>>,
    negotiated: &'static str,
    side: Side,
) -> Result<Upgraded<T>, DoorError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(members) = members else { return Ok((peer, io)) };
    let exchanged = if negotiated == DOOR_PROTOCOL {
        tokio::time::timeout(DOOR_TIMEOUT, exchange(&mut io, &peer, &members, side)).await
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

/// Which end of the connection this node is (libp2p's upgrade role: the listener of a hole punch
/// is the one libp2p names so, whoever dialed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Dialer,
    Listener,
}

fn frame(own: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + own.len());
    frame.extend_from_slice(&u32::try_from(own.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(own);
    frame
}

/// Reads the peer's certificate frame (at most [`MAX_CERTIFICATE_BYTES`]) and checks it.
async fn read_certificate<S>(
    io: &mut S,
    peer: &PeerId,
    members: &Members,
) -> Result<Result<(NodeCertificate, Envelope), MemberRefusal>, DoorError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CERTIFICATE_BYTES {
        return Ok(Err(MemberRefusal::Malformed(format!(
            "a certificate of {len} bytes; the limit is {MAX_CERTIFICATE_BYTES}"
        ))));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(members.check_peer(&buf, peer, now()))
}

/// Sends the verdict on the peer's certificate (0, or the refusal's code).
async fn send_verdict<S>(
    io: &mut S,
    verdict: &Result<(NodeCertificate, Envelope), MemberRefusal>,
) -> Result<(), DoorError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let code = match verdict {
        Ok(_) => 0,
        Err(e) => e.reason().code(),
    };
    io.write_all(&[code]).await?;
    io.flush().await?;
    Ok(())
}

/// Reads the peer's verdict on this node's certificate.
async fn read_verdict<S>(io: &mut S) -> Result<(), DoorError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut theirs = [0u8; 1];
    io.read_exact(&mut theirs).await?;
    if theirs[0] != 0 {
        return Err(DoorError::RefusedByPeer(RefusalReason::from_code(theirs[0])));
    }
    Ok(())
}

/// Steps D1 to D4 over an authenticated stream. The dialer shows its certificate first; the
/// listener shows its own only to a dialer it admitted, so a process that merely connects to a
/// node learns nothing about it.
async fn exchange<S>(
    io: &mut S,
    peer: &PeerId,
    members: &Members,
    side: Side,
) -> Result<(NodeCertificate, Envelope), DoorError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let own = frame(&members.own_envelope_bytes());
    match side {
        Side::Dialer => {
            // D1: the dialer's certificate.
            io.write_all(&own).await?;
            io.flush().await?;
            // D2 (the listener's answer): its verdict, and its certificate if it admitted us.
            read_verdict(io).await?;
            let verdict = read_certificate(io, peer, members).await?;
            // D3: the dialer's verdict on it.
            send_verdict(io, &verdict).await?;
            verdict.map_err(DoorError::Refused)
        }
        Side::Listener => {
            // D1
            let verdict = read_certificate(io, peer, members).await?;
            // D2: the verdict, then (admitted only) this node's certificate.
            send_verdict(io, &verdict).await?;
            let cert = verdict.map_err(DoorError::Refused)?;
            io.write_all(&own).await?;
            io.flush().await?;
            // D3 (the dialer's verdict on ours).
            read_verdict(io).await?;
            Ok(cert)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use lanpatch_protocol::{Hash32, PublicKey, Role, RoleKeys, Root, Signed, Timestamp};
    use std::collections::BTreeMap;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// tokio's in-memory duplex pipe under the futures traits the door is written against.
    struct Pipe(tokio::io::DuplexStream);
    impl AsyncRead for Pipe {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
            let mut rb = tokio::io::ReadBuf::new(buf);
            match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, &mut rb) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }
    }
    impl AsyncWrite for Pipe {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
        }
    }

    const FLEET: Hash32 = Hash32([7; 32]);

    fn public(k: &SigningKey) -> PublicKey {
        PublicKey(k.verifying_key().to_bytes())
    }

    fn root(enroll: &SigningKey) -> Root {
        let mut roles = BTreeMap::new();
        for r in Role::ALL {
            roles.insert(r, RoleKeys { keys: vec![public(enroll)], threshold: 1 });
        }
        roles.insert(Role::Enroll, RoleKeys { keys: vec![public(enroll)], threshold: 1 });
        Root { version: lanpatch_protocol::Version(1), fleet: None, expires: Timestamp(u64::MAX), roles }
    }

    /// A node: its libp2p identity, and a certificate for it signed by `by`.
    fn node(seed: u8, by: &SigningKey, enroll: &SigningKey) -> (PeerId, Members) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let mut cert = Signed::new(NodeCertificate {
            fleet: FLEET,
            node: public(&key),
            hostname: format!("host-{seed}"),
            ring: "broad".parse().unwrap(),
            site: "hq".parse().unwrap(),
            tags: vec![],
            issued: Timestamp(0),
            expires: Timestamp(u64::MAX),
        });
        cert.sign(by);
        let peer = crate::membership::peer_of(&public(&key)).unwrap();
        (peer, Members::for_test(root(enroll), FLEET, cert.into_envelope()))
    }

    async fn run(
        dialer: (PeerId, Members),
        listener: (PeerId, Members),
    ) -> (Result<NodeCertificate, DoorError>, Result<NodeCertificate, DoorError>, Vec<u8>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (mut a, mut b) = (Pipe(a), Pipe(b));
        let (dp, dm) = dialer;
        let (lp, lm) = listener;
        let d = async {
            let r = exchange(&mut a, &lp, &dm, Side::Dialer).await.map(|(c, _)| c);
            // Whatever else the listener sent, once the dialer stopped reading.
            let mut rest = Vec::new();
            let _ = a.read_to_end(&mut rest).await;
            (r, rest)
        };
        let l = async {
            let r = exchange(&mut b, &dp, &lm, Side::Listener).await.map(|(c, _)| c);
            drop(b);
            r
        };
        let ((dr, rest), lr) = tokio::join!(d, l);
        (dr, lr, rest)
    }

    #[tokio::test]
    async fn two_members_admit_each_other_and_learn_each_others_certificate() {
        let enroll = SigningKey::from_bytes(&[1; 32]);
        let (dr, lr, _) = run(node(10, &enroll, &enroll), node(11, &enroll, &enroll)).await;
        assert_eq!(dr.map(|c| c.hostname).ok().as_deref(), Some("host-11"));
        assert_eq!(lr.map(|c| c.hostname).ok().as_deref(), Some("host-10"));
    }

    #[tokio::test]
    async fn a_dialer_without_a_valid_certificate_is_refused_and_learns_nothing_of_the_listener() {
        let enroll = SigningKey::from_bytes(&[1; 32]);
        let stranger = SigningKey::from_bytes(&[2; 32]);
        // The dialer's certificate is signed by a key outside the enroll role.
        let (dr, lr, rest) = run(node(10, &stranger, &enroll), node(11, &enroll, &enroll)).await;
        assert!(matches!(dr, Err(DoorError::RefusedByPeer(Some(RefusalReason::Signature)))), "{dr:?}");
        assert!(matches!(lr, Err(DoorError::Refused(ref r)) if r.reason() == RefusalReason::Signature), "{lr:?}");
        assert!(rest.is_empty(), "the listener sent {} more bytes (its certificate?)", rest.len());
    }

    #[tokio::test]
    async fn a_listener_without_a_valid_certificate_is_refused_by_the_dialer() {
        let enroll = SigningKey::from_bytes(&[1; 32]);
        let stranger = SigningKey::from_bytes(&[2; 32]);
        let (dr, lr, _) = run(node(10, &enroll, &enroll), node(11, &stranger, &enroll)).await;
        assert!(matches!(dr, Err(DoorError::Refused(ref r)) if r.reason() == RefusalReason::Signature), "{dr:?}");
        assert!(matches!(lr, Err(DoorError::RefusedByPeer(Some(RefusalReason::Signature)))), "{lr:?}");
    }

    #[tokio::test]
    async fn a_certificate_presented_by_another_key_is_refused() {
        let enroll = SigningKey::from_bytes(&[1; 32]);
        let (_, dm) = node(10, &enroll, &enroll);
        // The listener believes it talks to node 12 (the key Noise proved), shown node 10's certificate.
        let (impostor, _) = node(12, &enroll, &enroll);
        let (dr, lr, _) = run((impostor, dm), node(11, &enroll, &enroll)).await;
        assert!(matches!(lr, Err(DoorError::Refused(ref r)) if r.reason() == RefusalReason::WrongNode), "{lr:?}");
        assert!(matches!(dr, Err(DoorError::RefusedByPeer(Some(RefusalReason::WrongNode)))), "{dr:?}");
    }

    #[tokio::test]
    async fn an_oversized_certificate_frame_is_refused_before_it_is_read() {
        let enroll = SigningKey::from_bytes(&[1; 32]);
        let (lp, lm) = node(11, &enroll, &enroll);
        let _ = lp;
        let (a, b) = tokio::io::duplex(1024);
        let (mut a, mut b) = (Pipe(a), Pipe(b));
        let dialer = PeerId::random();
        let d = async {
            a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
            a.flush().await.unwrap();
            let mut v = [0u8; 1];
            a.read_exact(&mut v).await.unwrap();
            v[0]
        };
        let l = exchange(&mut b, &dialer, &lm, Side::Listener);
        let (code, lr) = tokio::join!(d, l);
        assert_eq!(RefusalReason::from_code(code), Some(RefusalReason::Malformed));
        assert!(matches!(lr, Err(DoorError::Refused(ref r)) if r.reason() == RefusalReason::Malformed), "{lr:?}");
    }
}
