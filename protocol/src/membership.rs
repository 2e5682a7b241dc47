//! Fleet membership: node certificates and revocations (docs/PROTOCOL.md "Membership").
//!
//! A [`NodeCertificate`] binds a node key (the node's libp2p identity) to the hostname, ring,
//! tags and site the admins gave it, until an expiry; a threshold of the trust root's `enroll`
//! role signs it. Peers exchange certificates right after the Noise handshake, before anything
//! else is spoken on the connection (steps C1 to C6), and every message a node asks others to
//! store or act on (report, inventory, digest, pull) carries its author's certificate, so a
//! listener counts it only for the ring the admins enrolled that node in.
//!
//! [`Revocations`] lists node keys the admins cut off; the newest list a node holds (by `issued`)
//! wins, and an older one is refused (replay).

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::limits::Limits;
use crate::root::{Role, Root};
use crate::signed::{Envelope, Kind, Payload, SignatureError, Signed};
use crate::types::{Hash32, PublicKey, RingName, SiteName, Tag, Timestamp};

/// What the enroll role says about one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertificate {
    /// The fleet it admits the node to.
    pub fleet: Hash32,
    /// The node's ed25519 key: its libp2p identity and the key its reports are signed with.
    pub node: PublicKey,
    pub hostname: String,
    pub ring: RingName,
    pub site: SiteName,
    pub tags: Vec<Tag>,
    pub issued: Timestamp,
    pub expires: Timestamp,
}

impl Payload for NodeCertificate {
    const KIND: Kind = Kind::Certificate;
    const NAME: &'static str = "node certificate";
    fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        if self.hostname.is_empty() || self.hostname.len() > limits.max_short_bytes {
            return Err(ValidationError::field("hostname", "must be 1 to max_short_bytes bytes"));
        }
        if self.hostname.chars().any(char::is_control) {
            return Err(ValidationError::field("hostname", "must not contain control characters"));
        }
        if self.tags.len() > limits.max_list_items {
            return Err(ValidationError::TooMany { field: "tags", count: self.tags.len(), max: limits.max_list_items });
        }
        if self.expires <= self.issued {
            return Err(ValidationError::field("expires", "must be after issued"));
        }
        Ok(())
    }
}

/// What `lanpatch-signer enroll batch` writes for a host whose key it made (`-` as its node key):
/// the host's node secret key and its certificate, so joining is one command on the host
/// (`lanpatch-node join HOST.join`). A bearer secret: whoever holds the file can be that node
/// until it is revoked; it is written mode 0600 and belongs deleted once the host joined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinBundle {
    #[serde(with = "crate::types::byte_array")]
    pub secret: [u8; 32],
    pub certificate: Envelope,
}

impl JoinBundle {
    /// The first bytes of a join bundle file (never the start of an envelope).
    pub const MAGIC: &'static [u8] = b"lanpatch-join-v1\n";

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Self::MAGIC.to_vec();
        out.extend_from_slice(&crate::encoding::encode(self));
        out
    }

    /// `None` when `bytes` is not a join bundle at all (no magic); an error when it is a broken one.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Option<Result<JoinBundle, crate::DecodeError>> {
        let body = bytes.strip_prefix(Self::MAGIC)?;
        Some(crate::encoding::decode("join bundle", body, limits.max_envelope_bytes))
    }
}

/// Most node keys one revocation list may name (32 bytes each: well inside an envelope).
pub const MAX_REVOKED: usize = 16_384;

/// Node keys that are no longer members, whatever their certificates say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    pub fleet: Hash32,
    /// Nodes keep the list with the latest `issued`; an older one is refused.
    pub issued: Timestamp,
    /// Sorted, no duplicates.
    pub nodes: Vec<PublicKey>,
}

impl Revocations {
    pub fn contains(&self, node: &PublicKey) -> bool {
        self.nodes.binary_search(node).is_ok()
    }
}

impl Payload for Revocations {
    const KIND: Kind = Kind::Revocation;
    const NAME: &'static str = "revocation list";
    fn validate(&self, _limits: &Limits) -> Result<(), ValidationError> {
        if self.nodes.len() > MAX_REVOKED {
            return Err(ValidationError::TooMany { field: "revoked nodes", count: self.nodes.len(), max: MAX_REVOKED });
        }
        if self.nodes.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ValidationError::field("nodes", "must be sorted without duplicates"));
        }
        Ok(())
    }
}

/// Why a node is not (or no longer) a member. Typed, for metrics and the refusal log; the message
/// names the problem for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberRefusal {
    #[error("the trust root has no enroll role: membership cannot be checked")]
    NoEnrollRole,
    #[error("no node certificate")]
    NoCertificate,
    #[error("node certificate does not decode or validate: {0}")]
    Malformed(String),
    #[error("node certificate is not signed by the enroll role: {0}")]
    Signature(SignatureError),
    #[error("node certificate is for fleet {offered}, this node is in fleet {current}")]
    WrongFleet { current: Hash32, offered: Hash32 },
    #[error("node certificate names key {certified}, the peer is {actual}")]
    WrongNode { certified: PublicKey, actual: PublicKey },
    #[error("node certificate expired at {expires} (now {now})")]
    Expired { expires: Timestamp, now: Timestamp },
    #[error("node {0} is revoked")]
    Revoked(PublicKey),
    #[error("message says ring {claimed}, the certificate enrolls ring {certified}")]
    WrongRing { claimed: RingName, certified: RingName },
    #[error("message shows host {claimed:?}, the certificate enrolls host {certified:?}")]
    WrongHostname { claimed: String, certified: String },
}

/// [`MemberRefusal`] without its data: the label of a refusal counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    NoEnrollRole,
    NoCertificate,
    Malformed,
    Signature,
    WrongFleet,
    WrongNode,
    Expired,
    Revoked,
    WrongRing,
    WrongHostname,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 10] = [
        RefusalReason::NoEnrollRole,
        RefusalReason::NoCertificate,
        RefusalReason::Malformed,
        RefusalReason::Signature,
        RefusalReason::WrongFleet,
        RefusalReason::WrongNode,
        RefusalReason::Expired,
        RefusalReason::Revoked,
        RefusalReason::WrongRing,
        RefusalReason::WrongHostname,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NoEnrollRole => "no_enroll_role",
            RefusalReason::NoCertificate => "no_certificate",
            RefusalReason::Malformed => "malformed",
            RefusalReason::Signature => "signature",
            RefusalReason::WrongFleet => "wrong_fleet",
            RefusalReason::WrongNode => "wrong_node",
            RefusalReason::Expired => "expired",
            RefusalReason::Revoked => "revoked",
            RefusalReason::WrongRing => "wrong_ring",
            RefusalReason::WrongHostname => "wrong_hostname",
        }
    }
    /// The code sent on the wire when a door refuses (never 0, which means "admitted").
    pub fn code(self) -> u8 {
        RefusalReason::ALL.iter().position(|r| *r == self).map_or(u8::MAX, |i| i as u8 + 1)
    }
    pub fn from_code(code: u8) -> Option<RefusalReason> {
        RefusalReason::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

impl MemberRefusal {
    pub fn reason(&self) -> RefusalReason {
        match self {
            MemberRefusal::NoEnrollRole => RefusalReason::NoEnrollRole,
            MemberRefusal::NoCertificate => RefusalReason::NoCertificate,
            MemberRefusal::Malformed(_) => RefusalReason::Malformed,
            MemberRefusal::Signature(_) => RefusalReason::Signature,
            MemberRefusal::WrongFleet { .. } => RefusalReason::WrongFleet,
            MemberRefusal::WrongNode { .. } => RefusalReason::WrongNode,
            MemberRefusal::Expired { .. } => RefusalReason::Expired,
            MemberRefusal::Revoked(_) => RefusalReason::Revoked,
            MemberRefusal::WrongRing { .. } => RefusalReason::WrongRing,
            MemberRefusal::WrongHostname { .. } => RefusalReason::WrongHostname,
        }
    }
}

/// Steps C1 to C6: is `envelope` a certificate that makes `node` a member of `fleet` at `now`?
/// C1 the envelope is a certificate within the limits; C2 a threshold of the root's enroll keys
/// signed its payload bytes; C3 it decodes and validates; C4 it is for this fleet; C5 for this
/// node key; C6 unexpired and not revoked. Run again at every use, not only on arrival.
pub fn verify_certificate(
    envelope: &Envelope,
    root: &Root,
    fleet: &Hash32,
    node: &PublicKey,
    revoked: Option<&Revocations>,
    limits: &Limits,
    now: Timestamp,
) -> Result<Signed<NodeCertificate>, MemberRefusal> {
    // C1 and C2 (the envelope decoded at the edge, within `max_envelope_bytes`).
    let Some(keys) = root.roles.get(&Role::Enroll) else { return Err(MemberRefusal::NoEnrollRole) };
    envelope.check_threshold(Kind::Certificate, Role::Enroll, keys, limits).map_err(MemberRefusal::Signature)?;
    // C3
    let cert = Signed::<NodeCertificate>::open(envelope.clone(), limits)
        .map_err(|e| MemberRefusal::Malformed(e.to_string()))?;
    check_member(cert.value(), fleet, node, revoked, now)?;
    Ok(cert)
}

/// Steps C4 to C6 on a certificate already verified (C1 to C3): still this fleet's, this node's,
/// unexpired and unrevoked at `now`.
pub fn check_member(
    cert: &NodeCertificate,
    fleet: &Hash32,
    node: &PublicKey,
    revoked: Option<&Revocations>,
    now: Timestamp,
) -> Result<(), MemberRefusal> {
    if cert.fleet != *fleet {
        return Err(MemberRefusal::WrongFleet { current: *fleet, offered: cert.fleet });
    }
    if cert.node != *node {
        return Err(MemberRefusal::WrongNode { certified: cert.node, actual: *node });
    }
    if cert.expires <= now {
        return Err(MemberRefusal::Expired { expires: cert.expires, now });
    }
    if revoked.is_some_and(|r| r.contains(node)) {
        return Err(MemberRefusal::Revoked(*node));
    }
    Ok(())
}

/// Why a revocation list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    #[error("the trust root has no enroll role: revocations cannot be checked")]
    NoEnrollRole,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("revocation list does not decode or validate: {0}")]
    Malformed(String),
    #[error("revocation list is for fleet {offered}, this node is in fleet {current}")]
    WrongFleet { current: Hash32, offered: Hash32 },
    #[error("revocation list issued at {offered} is older than the one held (issued at {held})")]
    Older { held: Timestamp, offered: Timestamp },
}

/// Steps V1 to V4: a threshold of enroll keys signed it (V1, V2), it decodes within limits (V3),
/// it is this fleet's and not older than the list held (V4; the same list again is fine).
pub fn verify_revocations(
    envelope: Envelope,
    root: &Root,
    fleet: &Hash32,
    held: Option<&Revocations>,
    limits: &Limits,
) -> Result<Signed<Revocations>, RevocationError> {
    let Some(keys) = root.roles.get(&Role::Enroll) else { return Err(RevocationError::NoEnrollRole) };
    envelope.check_threshold(Kind::Revocation, Role::Enroll, keys, limits)?;
    let list = Signed::<Revocations>::open(envelope, limits).map_err(|e| RevocationError::Malformed(e.to_string()))?;
    let v = list.value();
    if v.fleet != *fleet {
        return Err(RevocationError::WrongFleet { current: *fleet, offered: v.fleet });
    }
    if let Some(h) = held
        && v.issued < h.issued
    {
        return Err(RevocationError::Older { held: h.issued, offered: v.issued });
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root::RoleKeys;
    use ed25519_dalek::SigningKey;
    use std::collections::BTreeMap;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }
    fn public(k: &SigningKey) -> PublicKey {
        PublicKey(k.verifying_key().to_bytes())
    }
    fn root(enroll: &[&SigningKey], threshold: u32) -> Root {
        let rk = |ks: &[&SigningKey], t| RoleKeys { keys: ks.iter().map(|k| public(k)).collect(), threshold: t };
        let admin = key(1);
        let mut roles = BTreeMap::new();
        for r in Role::ALL {
            roles.insert(r, rk(&[&admin], 1));
        }
        if !enroll.is_empty() {
            roles.insert(Role::Enroll, rk(enroll, threshold));
        }
        Root { version: crate::Version(1), fleet: None, expires: Timestamp(10_000), roles }
    }
    const FLEET: Hash32 = Hash32([7; 32]);
    fn cert(node: &SigningKey, expires: u64) -> NodeCertificate {
        NodeCertificate {
            fleet: FLEET,
            node: public(node),
            hostname: "web-1".into(),
            ring: "canary".parse().unwrap(),
            site: "hq".parse().unwrap(),
            tags: vec![],
            issued: Timestamp(100),
            expires: Timestamp(expires),
        }
    }
    fn signed(c: NodeCertificate, by: &[&SigningKey]) -> Envelope {
        let mut s = Signed::new(c);
        for k in by {
            s.sign(k);
        }
        s.into_envelope()
    }
    fn check(
        env: &Envelope,
        root: &Root,
        node: &SigningKey,
        revoked: Option<&Revocations>,
        now: u64,
    ) -> Result<(), RefusalReason> {
        verify_certificate(env, root, &FLEET, &public(node), revoked, &Limits::default(), Timestamp(now))
            .map(|_| ())
            .map_err(|e| e.reason())
    }

    #[test]
    fn a_certificate_signed_by_a_threshold_of_enroll_keys_admits_its_node_until_it_expires() {
        let (e1, e2, n) = (key(2), key(3), key(9));
        let r = root(&[&e1, &e2], 2);
        let env = signed(cert(&n, 500), &[&e1, &e2]);
        assert_eq!(check(&env, &r, &n, None, 200), Ok(()));
        assert_eq!(check(&env, &r, &n, None, 500), Err(RefusalReason::Expired), "checked at the moment of use");
    }

    #[test]
    fn below_threshold_another_nodes_certificate_another_fleet_and_no_enroll_role_are_refused() {
        let (e1, e2, n, other) = (key(2), key(3), key(9), key(10));
        let r = root(&[&e1, &e2], 2);
        assert_eq!(check(&signed(cert(&n, 500), &[&e1]), &r, &n, None, 200), Err(RefusalReason::Signature));
        assert_eq!(
            check(&signed(cert(&n, 500), &[&n]), &r, &n, None, 200),
            Err(RefusalReason::Signature),
            "self-signed"
        );
        let both = signed(cert(&n, 500), &[&e1, &e2]);
        assert_eq!(check(&both, &r, &other, None, 200), Err(RefusalReason::WrongNode), "presented by another key");
        let mut c = cert(&n, 500);
        c.fleet = Hash32([8; 32]);
        assert_eq!(check(&signed(c, &[&e1, &e2]), &r, &n, None, 200), Err(RefusalReason::WrongFleet));
        assert_eq!(check(&both, &root(&[], 1), &n, None, 200), Err(RefusalReason::NoEnrollRole));
    }

    #[test]
    fn a_revoked_node_is_refused_and_an_older_revocation_list_is_a_replay() {
        let (e, n) = (key(2), key(9));
        let r = root(&[&e], 1);
        let list = |issued: u64, nodes: Vec<PublicKey>| {
            let mut s = Signed::new(Revocations { fleet: FLEET, issued: Timestamp(issued), nodes });
            s.sign(&e);
            s.into_envelope()
        };
        let newer = verify_revocations(list(300, vec![public(&n)]), &r, &FLEET, None, &Limits::default()).unwrap();
        assert_eq!(check(&signed(cert(&n, 500), &[&e]), &r, &n, Some(newer.value()), 200), Err(RefusalReason::Revoked));
        let older = verify_revocations(list(200, vec![]), &r, &FLEET, Some(newer.value()), &Limits::default());
        assert!(matches!(older, Err(RevocationError::Older { .. })), "{older:?}");
        let unsorted =
            verify_revocations(list(400, vec![public(&n), public(&e)]), &r, &FLEET, None, &Limits::default());
        let sorted_ok = public(&n) < public(&e);
        assert_eq!(unsorted.is_ok(), sorted_ok);
    }

    #[test]
    fn a_message_counts_only_for_the_ring_and_host_its_certificate_enrolls() {
        use crate::report::{MemberCheck, Report, check_author};
        let (e, n) = (key(2), key(9));
        let r = root(&[&e], 1);
        let report = |ring: &str, host: &str| Report {
            node: public(&n),
            hostname: host.into(),
            ring: ring.parse().unwrap(),
            manifest: Hash32([1; 32]),
            product: "tool".parse().unwrap(),
            version: crate::Version(1),
            state: crate::ReleaseState::Installed,
            detail: String::new(),
            exit_code: Some(0),
            at: Timestamp(200),
            seq: 1,
            progress: None,
            certificate: Some(signed(cert(&n, 500), &[&e])),
            attempt: 0,
        };
        let check = MemberCheck { root: &r, fleet: &FLEET, revoked: None, now: Timestamp(200) };
        let reason = |m: &Report| check_author(m, &check, &Limits::default()).map(|_| ()).map_err(|e| e.reason());
        assert_eq!(reason(&report("canary", "web-1")), Ok(()));
        assert_eq!(reason(&report("broad", "web-1")), Err(RefusalReason::WrongRing));
        assert_eq!(reason(&report("canary", "db-1")), Err(RefusalReason::WrongHostname));
        let mut none = report("canary", "web-1");
        none.certificate = None;
        assert_eq!(reason(&none), Err(RefusalReason::NoCertificate));
    }

    #[test]
    fn a_join_bundle_round_trips_and_anything_else_is_not_one() {
        let e = key(2);
        let b = JoinBundle { secret: [5; 32], certificate: signed(cert(&key(5), 500), &[&e]) };
        let bytes = b.encode();
        assert_eq!(JoinBundle::decode(&bytes, &Limits::default()), Some(Ok(b.clone())));
        assert_eq!(JoinBundle::decode(&b.certificate.to_bytes(), &Limits::default()), None, "a certificate");
        assert!(matches!(JoinBundle::decode(&bytes[..bytes.len() - 3], &Limits::default()), Some(Err(_))));
    }

    #[test]
    fn refusal_codes_round_trip_and_zero_is_never_a_refusal() {
        for r in RefusalReason::ALL {
            assert_ne!(r.code(), 0);
            assert_eq!(RefusalReason::from_code(r.code()), Some(r));
        }
        assert_eq!(RefusalReason::from_code(0), None);
    }
}
