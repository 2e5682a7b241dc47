//! Messages on a node's local control socket (`<data_dir>/control.sock`), one JSON object per
//! line each way. Used by `lanpatch-node status`, `lanpatch-signer publish` and the demo. Local
//! only: the socket is a Unix socket readable by the node's user.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lifecycle::ReleaseState;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControlRequest {
    Status,
    /// Verify a bundle directory on this machine and gossip its metadata; with
    /// `PublishMode::Seed` also import and seed its files.
    Publish {
        bundle: String,
        #[serde(default)]
        mode: PublishMode,
    },
    /// Publish these envelope bytes (hex) unchecked. Refused unless the node's config enables
    /// `fault_injection.raw_gossip`; exists so tests can play an attacker.
    RawGossip {
        hex: String,
    },
    /// The fleet's install reports, as stored by a collector node.
    Reports,
    /// The fleet's inventories, as stored by a collector node.
    Inventories,
    /// Verify one signed envelope (hex; a revocation list, or any other fleet metadata) exactly
    /// as if it came from gossip, keep it and gossip it.
    PublishMetadata {
        hex: String,
    },
}

/// Whether the publishing node seeds the files or only announces the release (whose files then
/// come from the manifest's origins).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishMode {
    #[default]
    Seed,
    MetadataOnly,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControlResponse {
    Status(Box<NodeStatus>),
    Published {
        manifest: String,
        product: String,
        version: u64,
        approvals: Vec<String>,
        yanked: bool,
    },
    Done,
    Reports(Vec<ReportView>),
    Inventories(Vec<InventoryView>),
    Error {
        #[serde(default)]
        kind: ErrorKind,
        message: String,
    },
}

/// Why a control request failed, beside the human message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request could not be parsed, or names something malformed.
    BadRequest,
    /// The request needs a collector node (reports, inventories); this node is not one.
    NotCollector,
    /// The node checked what it was given and refused it (verification failed).
    Refused,
    /// Anything else (I/O on the node, the database).
    #[default]
    Internal,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    pub peer_id: String,
    /// The node's ed25519 key (hex): what its reports name, and what its rollout wave hashes.
    #[serde(default)]
    pub node_key: String,
    pub fleet: String,
    pub ring: String,
    pub hostname: String,
    /// The node's membership: its certificate's expiry, or why it has none.
    #[serde(default)]
    pub membership: Membership,
    /// The site this node is at (node.toml `site`).
    #[serde(default)]
    pub site: String,
    pub listen: Vec<String>,
    pub peers: Vec<PeerStatus>,
    pub releases: Vec<ReleaseStatus>,
    /// Refused messages and chunks since the database was created.
    pub refusals: u64,
    pub recent_refusals: Vec<Refusal>,
    /// Bytes of verified chunks fetched from and served to each peer, over the node's lifetime.
    pub transfers: Vec<Transfer>,
    pub banned: Vec<String>,
    /// The newest freshness statement held: when it was issued and when it expires (seconds).
    #[serde(default)]
    pub statement: Option<(u64, u64)>,
    /// Where the node serves Prometheus metrics (`ip:port`), if it does.
    #[serde(default)]
    pub metrics: Option<String>,
    /// The running lanpatch-node version.
    #[serde(default)]
    pub version: String,
    /// Where the web console listens (`ip:port`), if it does.
    #[serde(default)]
    pub console: Option<String>,
    /// Bytes the node holds on disk, by kind.
    #[serde(default)]
    pub disk: DiskUse,
}

/// A node's own membership, as its status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Membership {
    /// `enrollment = "off"`: the node talks to anyone holding the fleet's root.
    #[default]
    Off,
    /// Enrolled by a certificate that expires at `expires` (seconds since the epoch).
    Enrolled { expires: u64, peers_refused: u64 },
    /// `enrollment = "required"`, but the trust root the node holds has no enroll role yet (a
    /// fleet from before enrollment, migrating): the node talks to anyone holding the root until
    /// the root is rotated to one with an enroll role and the node restarts with a certificate.
    NoEnrollRole,
}

/// Bytes in the node's data directory, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUse {
    /// Complete, verified release files (`blobs/`).
    pub blobs: u64,
    /// Downloads in progress (`partial/`).
    pub partial: u64,
    /// Staging copies of releases whose commands run (`stage/`).
    pub stage: u64,
    /// The node's database (`state.db` and its WAL).
    pub state: u64,
    /// Packages a Debian release replaced, kept for its rollback (`kept/`).
    #[serde(default)]
    pub kept: u64,
}

impl DiskUse {
    pub fn total(&self) -> u64 {
        self.blobs + self.partial + self.stage + self.state + self.kept
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    pub peer: String,
    pub addr: String,
    /// The site the peer says it is at.
    #[serde(default)]
    pub site: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseStatus {
    pub manifest: String,
    pub product: String,
    pub version: u64,
    pub label: String,
    pub severity: String,
    /// Where the release stands on this node (download and install), typed.
    pub state: ReleaseState,
    /// Human text beside the state (why it waits, the failing command's output tail).
    pub detail: String,
    /// Whether a yank for the release is known.
    pub yanked: bool,
    pub total_bytes: u64,
    pub total_chunks: usize,
    pub have_chunks: usize,
    /// Chunks found on disk (and re-verified) when the download started in this process.
    pub resumed_chunks: usize,
    /// Chunks fetched from peers in this process.
    pub fetched_chunks: usize,
    /// Verified bytes fetched in this process, by peer id.
    pub bytes_from: BTreeMap<String, u64>,
    /// Of those, the bytes fetched from origins (HTTP) and from peers (this site's or others').
    #[serde(default)]
    pub from_origin: u64,
    #[serde(default)]
    pub from_peers: u64,
    pub approved_rings: Vec<String>,
    /// When the download finished, in milliseconds since the epoch.
    pub finished_ms: Option<u64>,
    /// This node's rollout wave (1-based) under the approval for its ring, when it has rules.
    #[serde(default)]
    pub wave: Option<u32>,
}

/// One node's latest report about one release.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportView {
    pub node: String,
    pub hostname: String,
    pub ring: String,
    pub manifest: String,
    pub product: String,
    pub version: u64,
    pub state: ReleaseState,
    pub detail: String,
    pub exit_code: Option<i32>,
    pub at: u64,
    pub seq: u64,
    #[serde(default)]
    pub progress: Option<crate::report::DownloadProgress>,
    /// The signed report as stored (hex of its envelope), so a reader such as the signer's ring
    /// gate can check the author's certificate itself instead of trusting the collector.
    #[serde(default)]
    pub envelope: Option<String>,
}

impl ReportView {
    /// The view of a signed report, carrying the signed envelope (hex) beside the summary.
    pub fn of(r: &crate::Signed<crate::Report>) -> ReportView {
        let v = r.value();
        ReportView {
            node: v.node.to_hex(),
            hostname: v.hostname.clone(),
            ring: v.ring.to_string(),
            manifest: v.manifest.to_hex(),
            product: v.product.to_string(),
            version: v.version.0,
            state: v.state,
            detail: v.detail.clone(),
            exit_code: v.exit_code,
            at: v.at.0,
            seq: v.seq,
            progress: v.progress,
            envelope: Some(hex::encode(r.to_bytes())),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InventoryView {
    pub node: String,
    pub hostname: String,
    pub os: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub ring: String,
    pub tags: Vec<String>,
    pub packages: Vec<crate::report::Package>,
    /// "product version" of each release lanpatch installed.
    pub releases: Vec<String>,
    pub at: u64,
    /// The node's sequence number for this inventory (shared with its reports).
    pub seq: u64,
    /// The lanpatch-node version the node runs.
    #[serde(default)]
    pub agent_version: String,
    /// An update waits for a reboot; the packages that asked for it.
    #[serde(default)]
    pub reboot_required: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Refusal {
    pub at: u64,
    pub source: String,
    pub kind: RefusalKind,
    pub reason: String,
}

/// What was refused. The aliases read rows written by versions before 0.1 used hyphens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// Signed metadata that failed decoding, a signature, expiry or replay check.
    Metadata,
    /// A node's report or inventory that failed its checks.
    #[serde(alias = "node-report")]
    NodeReport,
    /// An origin sent bytes that do not match the manifest, or redirected where it may not.
    #[serde(alias = "origin-chunk")]
    OriginChunk,
    /// An origin failed too often in a row.
    #[serde(alias = "origin-failing")]
    OriginFailing,
    /// A peer was banned.
    #[serde(alias = "peer-banned")]
    PeerBanned,
    /// A peer sent requests faster than allowed.
    #[serde(alias = "request-flood")]
    RequestFlood,
    /// A peer or a message's author is not a member: no valid certificate, expired, revoked, or
    /// speaking for a ring its certificate does not enroll.
    Membership,
    /// A member sent more digests or pulls than its budget allows.
    MemberFlood,
}

impl RefusalKind {
    /// The snake_case name (the serde name, the metric label and the stored value).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Metadata => "metadata",
            RefusalKind::NodeReport => "node_report",
            RefusalKind::OriginChunk => "origin_chunk",
            RefusalKind::OriginFailing => "origin_failing",
            RefusalKind::PeerBanned => "peer_banned",
            RefusalKind::RequestFlood => "request_flood",
            RefusalKind::Membership => "membership",
            RefusalKind::MemberFlood => "member_flood",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Transfer {
    pub peer: String,
    pub bytes_down: u64,
    pub bytes_up: u64,
}
