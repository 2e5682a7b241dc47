//! What a node (and `lanpatch-signer verify`) does with signed metadata before trusting it.
//!
//! Each check cites its step in docs/PROTOCOL.md ("Verification steps"). The order matters:
//! sizes before decoding, signatures over the raw payload bytes before the payload is decoded,
//! and freshness (expiry, version) last.

use crate::encoding::DecodeError;
use crate::limits::Limits;
use crate::root::{Role, Root, fleet_id};
use crate::signed::{Envelope, OpenError, Payload, SignatureError, Signed};
use crate::types::{Hash32, ProductName, Timestamp, Version};
use crate::{Approval, ReleaseManifest, ValidationError, Yank};

/// Why metadata was refused. Every variant names the problem in its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("{what} expired at {expires} (now {now})")]
    Expired { what: &'static str, expires: Timestamp, now: Timestamp },
    #[error("rollback refused: {product} version {offered} is lower than trusted version {trusted}")]
    Rollback { product: ProductName, trusted: Version, offered: Version },
    #[error("{product} version {version} is already trusted with a different manifest ({trusted}); refusing {offered}")]
    VersionConflict { product: ProductName, version: Version, trusted: Hash32, offered: Hash32 },
    #[error("trust root version {offered} cannot follow version {current}: rotation must go up by exactly one")]
    RootVersion { current: Version, offered: Version },
    #[error("trust root belongs to fleet {offered}, this node is in fleet {current}")]
    FleetMismatch { current: Hash32, offered: Hash32 },
    #[error("node report is not signed by the node key it names")]
    NotSignedByNode,
    #[error("a first trust root must be version 1, this is version {0}")]
    NotFirstRoot(Version),
    #[error("the trust root has no timestamp role: freshness statements cannot be checked")]
    NoTimestampRole,
    #[error("timestamp statement for fleet {offered}, this node is in fleet {current}")]
    StatementFleet { current: Hash32, offered: Hash32 },
    #[error("timestamp statement issued at {offered} is older than the one held (issued at {held})")]
    StatementRollback { held: Timestamp, offered: Timestamp },
}

impl From<OpenError> for VerifyError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Decode(d) => VerifyError::Decode(d),
            OpenError::WrongKind { expected, actual } => {
                VerifyError::Signature(SignatureError::WrongKind { expected, actual })
            }
            OpenError::Invalid(v) => VerifyError::Invalid(v),
        }
    }
}

/// Payloads that expire.
pub trait Expiring {
    fn expires(&self) -> Timestamp;
}
impl Expiring for Root {
    fn expires(&self) -> Timestamp {
        self.expires
    }
}
impl Expiring for ReleaseManifest {
    fn expires(&self) -> Timestamp {
        self.expires
    }
}
impl Expiring for Approval {
    fn expires(&self) -> Timestamp {
        self.expires
    }
}
impl Expiring for Yank {
    fn expires(&self) -> Timestamp {
        self.expires
    }
}

/// Steps 1 to 4, shared by every kind: size and envelope (1), threshold of `role` over the raw
/// payload bytes (2), payload decoding and field limits (3), expiry (4).
fn verify_signed<T: Payload + Expiring>(
    envelope: Envelope,
    role: Role,
    root: &Root,
    limits: &Limits,
    now: Timestamp,
) -> Result<Signed<T>, VerifyError> {
    // Step 1 (the envelope is within the size limit and decodes) is done by the caller, once, at
    // the edge: `Envelope::decode`.
    // Step 2: enough distinct keys of the role signed these exact payload bytes.
    envelope.check_threshold(T::KIND, role, &root.keys(role), limits)?;
    // Step 3: the payload decodes and every field is within its limits.
    let signed = Signed::<T>::open(envelope, limits)?;
    // Step 4: not expired.
    check_expiry(T::NAME, signed.value().expires(), now)?;
    Ok(signed)
}

fn check_expiry(what: &'static str, expires: Timestamp, now: Timestamp) -> Result<(), VerifyError> {
    if expires <= now {
        return Err(VerifyError::Expired { what, expires, now });
    }
    Ok(())
}

/// Checks a trust root a node is provisioned with: version 1, signed by a threshold of its own
/// root keys, not expired (steps R1 to R3).
pub fn verify_first_root(bytes: &[u8], limits: &Limits, now: Timestamp) -> Result<Signed<Root>, VerifyError> {
    // Step R1: envelope and payload decode; every role present with a sane threshold.
    let envelope = Envelope::decode(bytes, limits)?;
    let signed = Signed::<Root>::open(envelope, limits)?;
    let root = signed.value();
    if root.version != Version(1) {
        return Err(VerifyError::NotFirstRoot(root.version));
    }
    // Step R2: a threshold of the root's own root keys signed it.
    signed.envelope().check_threshold(crate::Kind::Root, Role::Root, &root.keys(Role::Root), limits)?;
    // Step R3: not expired.
    check_expiry("trust root", root.expires, now)?;
    Ok(signed)
}

/// Checks a rotated trust root against the current one (steps U1 to U6).
pub fn verify_root_update(
    current: &Signed<Root>,
    bytes: &[u8],
    limits: &Limits,
    now: Timestamp,
) -> Result<Signed<Root>, VerifyError> {
    verify_root_update_envelope(current, Envelope::decode(bytes, limits)?, limits, now)
}

/// [`verify_root_update`] of an envelope already decoded (step U1's first half) at the edge.
pub fn verify_root_update_envelope(
    current: &Signed<Root>,
    envelope: Envelope,
    limits: &Limits,
    now: Timestamp,
) -> Result<Signed<Root>, VerifyError> {
    // Step U1: envelope (decoded by the caller) and payload decode.
    let next = Signed::<Root>::open(envelope, limits)?;
    let cur = current.value();
    let new = next.value();
    // Step U2: the version goes up by exactly one.
    if new.version.0 != cur.version.0.saturating_add(1) {
        return Err(VerifyError::RootVersion { current: cur.version, offered: new.version });
    }
    // Step U3: same fleet.
    let current_fleet = fleet_id(cur, &current.envelope().payload);
    let offered_fleet = fleet_id(new, &next.envelope().payload);
    if current_fleet != offered_fleet {
        return Err(VerifyError::FleetMismatch { current: current_fleet, offered: offered_fleet });
    }
    // Step U4: a threshold of the current root keys signed it.
    next.envelope().check_threshold(crate::Kind::Root, Role::Root, &cur.keys(Role::Root), limits)?;
    // Step U5: a threshold of its own root keys signed it.
    next.envelope().check_threshold(crate::Kind::Root, Role::Root, &new.keys(Role::Root), limits)?;
    // Step U6: not expired.
    check_expiry("trust root", new.expires, now)?;
    Ok(next)
}

/// The highest version of a product a node already trusts, and that manifest's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trusted {
    pub version: Version,
    pub manifest: Hash32,
}

/// Checks a release manifest (steps 1 to 4 with the `release` role, then M5).
pub fn verify_manifest(
    bytes: &[u8],
    root: &Root,
    limits: &Limits,
    now: Timestamp,
    trusted: Option<Trusted>,
) -> Result<Signed<ReleaseManifest>, VerifyError> {
    verify_manifest_envelope(Envelope::decode(bytes, limits)?, root, limits, now, |_| trusted)
}

/// [`verify_manifest`] of an envelope decoded at the edge; `trusted` looks up what the node
/// already trusts of the manifest's product (once the payload is decoded, for step M5).
pub fn verify_manifest_envelope(
    envelope: Envelope,
    root: &Root,
    limits: &Limits,
    now: Timestamp,
    trusted: impl FnOnce(&crate::ProductName) -> Option<Trusted>,
) -> Result<Signed<ReleaseManifest>, VerifyError> {
    let signed: Signed<ReleaseManifest> = verify_signed(envelope, Role::Release, root, limits, now)?;
    // Step M5: never go back to a lower version; one version has one manifest.
    if let Some(t) = trusted(&signed.value().product) {
        let m = signed.value();
        if m.version < t.version {
            return Err(VerifyError::Rollback { product: m.product.clone(), trusted: t.version, offered: m.version });
        }
        if m.version == t.version && signed.payload_hash() != t.manifest {
            return Err(VerifyError::VersionConflict {
                product: m.product.clone(),
                version: m.version,
                trusted: t.manifest,
                offered: signed.payload_hash(),
            });
        }
    }
    Ok(signed)
}

/// Checks an approval (steps 1 to 4 with the `approve` role). Matching it to a manifest and a
/// ring is the node's step A5, done where both are known ([`approval_matches`]).
pub fn verify_approval(
    bytes: &[u8],
    root: &Root,
    limits: &Limits,
    now: Timestamp,
) -> Result<Signed<Approval>, VerifyError> {
    verify_signed(Envelope::decode(bytes, limits)?, Role::Approve, root, limits, now)
}

/// [`verify_approval`] of an envelope decoded at the edge.
pub fn verify_approval_envelope(
    envelope: Envelope,
    root: &Root,
    limits: &Limits,
    now: Timestamp,
) -> Result<Signed<Approval>, VerifyError> {
    verify_signed(envelope, Role::Approve, root, limits, now)
}

/// Checks a yank (steps 1 to 4 with the `approve` role).
pub fn verify_yank(bytes: &[u8], root: &Root, limits: &Limits, now: Timestamp) -> Result<Signed<Yank>, VerifyError> {
    verify_signed(Envelope::decode(bytes, limits)?, Role::Approve, root, limits, now)
}

/// [`verify_yank`] of an envelope decoded at the edge.
pub fn verify_yank_envelope(
    envelope: Envelope,
    root: &Root,
    limits: &Limits,
    now: Timestamp,
) -> Result<Signed<Yank>, VerifyError> {
    verify_signed(envelope, Role::Approve, root, limits, now)
}

/// Step A5: the approval names this manifest by hash, and its product and version agree.
pub fn approval_matches(approval: &Approval, manifest: &Signed<ReleaseManifest>) -> Result<(), ValidationError> {
    let m = manifest.value();
    if approval.manifest != manifest.payload_hash() {
        return Err(ValidationError::field("approval", "names a different manifest hash"));
    }
    if approval.product != m.product || approval.version != m.version {
        return Err(ValidationError::field("approval", "product or version differs from the manifest it names"));
    }
    Ok(())
}

/// Checks a freshness statement (steps S1 to S5): envelope (S1, by the caller), a threshold of the
/// root's `timestamp` keys (S2), payload limits (S3), not expired (S4), this fleet (S5). A node
/// then keeps it only if it was issued after the one it holds (see `Trust`).
pub fn verify_statement_envelope(
    envelope: Envelope,
    root: &Root,
    fleet: &Hash32,
    limits: &Limits,
    now: Timestamp,
) -> Result<Signed<crate::Statement>, VerifyError> {
    if !root.roles.contains_key(&Role::Timestamp) {
        return Err(VerifyError::NoTimestampRole);
    }
    let signed: Signed<crate::Statement> = verify_signed(envelope, Role::Timestamp, root, limits, now)?;
    if signed.value().fleet != *fleet {
        return Err(VerifyError::StatementFleet { current: *fleet, offered: signed.value().fleet });
    }
    Ok(signed)
}
