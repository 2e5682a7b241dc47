//! What nodes tell the fleet about themselves: install reports and inventories. Both are signed by
//! the node's own ed25519 key (its libp2p identity) and name that key, so a report can only speak
//! for the node that signed it.

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::lifecycle::ReleaseState;
use crate::limits::Limits;
use crate::root::RoleKeys;
use crate::signed::{Envelope, Kind, Payload, Signed};
use crate::types::{Hash32, ProductName, PublicKey, RingName, Tag, Timestamp, Version};
use crate::verify::VerifyError;

/// One state change of one release on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub node: PublicKey,
    pub hostname: String,
    pub ring: RingName,
    pub manifest: Hash32,
    pub product: ProductName,
    pub version: Version,
    pub state: ReleaseState,
    /// Human text beside the typed state: why it waits, or the tail of the failing command's
    /// output. Never parsed.
    pub detail: String,
    pub exit_code: Option<i32>,
    pub at: Timestamp,
    /// Increases with every report or inventory a node sends, across restarts (persisted); a
    /// collector keeps the highest per (node, release).
    pub seq: u64,
    /// How far the download got and where its bytes came from, once it started (kept on the
    /// reports after it, so an installed node's report still tells the fan-out saving).
    pub progress: Option<DownloadProgress>,
    /// The author's node certificate: a listener counts the report only for the ring it enrolls
    /// (`None` only in fleets run with `enrollment = "off"`).
    pub certificate: Option<Envelope>,
    /// Which attempt at the release this is (0 the first; a retry starts the next). States only
    /// go forward within an attempt: a listener orders reports by (attempt, state rank).
    pub attempt: u32,
}

impl Report {
    /// The order a listener keeps reports in: a later attempt, else a later state.
    pub fn order(&self) -> u64 {
        u64::from(self.attempt) * 16 + u64::from(self.state.rank())
    }
}

/// A release's download on one node: chunks held, and verified bytes by kind of source, fetched
/// by the node process that reported (chunks found on disk at a restart count in `have_chunks`
/// only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadProgress {
    pub have_chunks: u32,
    pub total_chunks: u32,
    pub from_peers: u64,
    pub from_origin: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// The source package it was built from, when its name differs (dpkg's `Source:`):
    /// vulnerability feeds (OSV, Debian's tracker) name source packages.
    pub source: Option<String>,
    /// The source package's version, when it differs from the binary's (`Source: n (v)`).
    pub source_version: Option<String>,
}

impl Package {
    /// What vulnerability feeds call this package: (source name, source version).
    pub fn source_key(&self) -> (&str, &str) {
        (self.source.as_deref().unwrap_or(&self.name), self.source_version.as_deref().unwrap_or(&self.version))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledRelease {
    pub product: ProductName,
    pub version: Version,
    pub manifest: Hash32,
}

/// What a node is and has installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub node: PublicKey,
    pub hostname: String,
    pub os: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub ring: RingName,
    pub tags: Vec<Tag>,
    /// Installed OS packages (dpkg or rpm).
    pub packages: Vec<Package>,
    /// Releases lanpatch installed on this node.
    pub releases: Vec<InstalledRelease>,
    pub at: Timestamp,
    pub seq: u64,
    /// The lanpatch-node version that sent it.
    pub agent_version: String,
    /// The author's node certificate (see [`Report::certificate`]).
    pub certificate: Option<Envelope>,
    /// `/run/reboot-required` exists: an update waits for a reboot. The packages that asked for
    /// it (`/run/reboot-required.pkgs`; empty when that file is absent).
    pub reboot_required: Option<Vec<String>>,
}

/// Most packages in one inventory.
pub const MAX_PACKAGES: usize = 20_000;

fn short(field: &'static str, s: &str, limits: &Limits) -> Result<(), ValidationError> {
    if s.len() > limits.max_short_bytes {
        return Err(ValidationError::TooLong { field, len: s.len(), max: limits.max_short_bytes });
    }
    Ok(())
}

impl Payload for Report {
    const KIND: Kind = Kind::Report;
    const NAME: &'static str = "report";
    fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        short("hostname", &self.hostname, limits)?;
        if self.detail.len() > limits.max_text_bytes {
            return Err(ValidationError::TooLong {
                field: "detail",
                len: self.detail.len(),
                max: limits.max_text_bytes,
            });
        }
        if let Some(p) = &self.progress
            && p.have_chunks > p.total_chunks
        {
            return Err(ValidationError::TooMany {
                field: "progress chunks",
                count: p.have_chunks as usize,
                max: p.total_chunks as usize,
            });
        }
        Ok(())
    }
}

impl Payload for Inventory {
    const KIND: Kind = Kind::Inventory;
    const NAME: &'static str = "inventory";
    fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        for (f, v) in [
            ("hostname", &self.hostname),
            ("os", &self.os),
            ("os version", &self.os_version),
            ("kernel", &self.kernel),
            ("arch", &self.arch),
            ("agent version", &self.agent_version),
        ] {
            short(f, v, limits)?;
        }
        if self.packages.len() > MAX_PACKAGES {
            return Err(ValidationError::TooMany { field: "packages", count: self.packages.len(), max: MAX_PACKAGES });
        }
        for p in &self.packages {
            short("package name", &p.name, limits)?;
            short("package version", &p.version, limits)?;
        }
        if let Some(pkgs) = &self.reboot_required {
            if pkgs.len() > limits.max_list_items {
                return Err(ValidationError::TooMany {
                    field: "reboot-required packages",
                    count: pkgs.len(),
                    max: limits.max_list_items,
                });
            }
            for p in pkgs {
                short("reboot-required package", p, limits)?;
            }
        }
        if self.tags.len() > limits.max_list_items || self.releases.len() > limits.max_list_items {
            return Err(ValidationError::TooMany {
                field: "tags or releases",
                count: self.tags.len().max(self.releases.len()),
                max: limits.max_list_items,
            });
        }
        Ok(())
    }
}

/// The node key a node report speaks for, the certificate it carries, and the ring it claims.
pub trait FromNode {
    fn node(&self) -> PublicKey;
    fn certificate(&self) -> Option<&Envelope>;
    /// The ring the message speaks for (`None`: it names none).
    fn ring(&self) -> Option<&RingName>;
    /// The host name the message shows (`None`: it shows none).
    fn hostname(&self) -> Option<&str>;
}
impl FromNode for Report {
    fn node(&self) -> PublicKey {
        self.node
    }
    fn certificate(&self) -> Option<&Envelope> {
        self.certificate.as_ref()
    }
    fn ring(&self) -> Option<&RingName> {
        Some(&self.ring)
    }
    fn hostname(&self) -> Option<&str> {
        Some(&self.hostname)
    }
}
impl FromNode for Inventory {
    fn node(&self) -> PublicKey {
        self.node
    }
    fn certificate(&self) -> Option<&Envelope> {
        self.certificate.as_ref()
    }
    fn ring(&self) -> Option<&RingName> {
        Some(&self.ring)
    }
    fn hostname(&self) -> Option<&str> {
        Some(&self.hostname)
    }
}

/// Who may author node messages: the trust state a listener checks certificates against.
/// `None` where the fleet runs with `enrollment = "off"`.
pub struct MemberCheck<'a> {
    pub root: &'a crate::Root,
    pub fleet: &'a Hash32,
    pub revoked: Option<&'a crate::Revocations>,
    pub now: Timestamp,
}

/// Step N4: the message carries a certificate that makes its author a member now (C1 to C6),
/// and the ring it speaks for is the ring its certificate enrolls.
pub fn check_author<T: FromNode>(
    msg: &T,
    check: &MemberCheck<'_>,
    limits: &Limits,
) -> Result<crate::NodeCertificate, crate::MemberRefusal> {
    let cert = msg.certificate().ok_or(crate::MemberRefusal::NoCertificate)?;
    let c = crate::membership::verify_certificate(
        cert,
        check.root,
        check.fleet,
        &msg.node(),
        check.revoked,
        limits,
        check.now,
    )?;
    let c = c.value().clone();
    if let Some(ring) = msg.ring()
        && *ring != c.ring
    {
        return Err(crate::MemberRefusal::WrongRing { claimed: ring.clone(), certified: c.ring });
    }
    if let Some(h) = msg.hostname()
        && h != c.hostname
    {
        return Err(crate::MemberRefusal::WrongHostname {
            claimed: h.chars().take(64).collect(),
            certified: c.hostname,
        });
    }
    Ok(c)
}

/// Steps N1 to N3: the envelope decodes within limits (N1), the payload decodes and validates
/// (N2), and the node key it names signed it (N3).
pub fn verify_node_signed<T: Payload + FromNode>(bytes: &[u8], limits: &Limits) -> Result<Signed<T>, VerifyError> {
    verify_node_envelope(Envelope::decode(bytes, limits)?, limits)
}

/// [`verify_node_signed`] of an envelope decoded (step N1) at the edge.
pub fn verify_node_envelope<T: Payload + FromNode>(
    envelope: Envelope,
    limits: &Limits,
) -> Result<Signed<T>, VerifyError> {
    let signed = Signed::<T>::open(envelope, limits)?;
    let keys = RoleKeys { keys: vec![signed.value().node()], threshold: 1 };
    signed.envelope().check_threshold(T::KIND, crate::Role::Release, &keys, limits).map_err(|e| match e {
        crate::SignatureError::BelowThreshold { .. } => VerifyError::NotSignedByNode,
        other => VerifyError::Signature(other),
    })?;
    Ok(signed)
}
