//! Prometheus metrics: what the node counts, and the HTTP endpoint (`metrics_listen`) that serves
//! them in the Prometheus text format.
//!
//! Counters are bumped where the event happens (a verified chunk, a refusal, an install); gauges
//! that describe current state (peers, releases by state) are read from the node's state at
//! scrape time, so they can never drift from what `lanpatch-node status` shows. Every label value
//! comes from a typed enum below: no label is built from peer-controlled text, so a peer cannot
//! grow the number of series.

use std::time::Duration;

use anyhow::{Context, Result};
use lanpatch_protocol::ReleaseState;
pub use lanpatch_protocol::control::RefusalKind;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The node's current state that the gauges show, read at scrape time by the caller.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// Connected peers that passed the door.
    pub peers: usize,
    /// Door refusals by reason, as `Members` counts them.
    pub door_refusals: Vec<(lanpatch_protocol::RefusalReason, u64)>,
    pub disk: lanpatch_protocol::control::DiskUse,
    /// The state of every release this node trusts.
    pub releases: Vec<ReleaseState>,
}

/// Where verified bytes came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ByteSource {
    Peer,
    Origin,
}

/// Why a received chunk was thrown away.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ChunkRefusal {
    /// Its BLAKE3 hash is not the one in the signed manifest.
    HashMismatch,
    /// It is longer or shorter than the manifest says.
    WrongLength,
}

/// How an install command ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum InstallOutcome {
    Succeeded,
    Failed,
    TimedOut,
    Interrupted,
}

/// What a gossip message's validation decided.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Refused,
}

/// Why an origin request failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum OriginFailure {
    /// Wrong bytes, wrong length or a refused redirect: the origin is dropped for the release.
    Bad,
    /// Anything else (connection, timeout, HTTP status).
    Error,
}

macro_rules! label_value {
    ($t:ty, $($v:ident => $s:literal),+ $(,)?) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
                std::fmt::Write::write_str(e, match self { $(<$t>::$v => $s),+ })
            }
        }
    };
}
label_value!(ByteSource, Peer => "peer", Origin => "origin");
label_value!(InstallOutcome, Succeeded => "succeeded", Failed => "failed", TimedOut => "timed_out", Interrupted => "interrupted");
label_value!(ChunkRefusal, HashMismatch => "hash_mismatch", WrongLength => "wrong_length");
label_value!(Verdict, Accepted => "accepted", Refused => "refused");
label_value!(OriginFailure, Bad => "bad", Error => "error");
label_value!(DiskKind, Blobs => "blobs", Partial => "partial", Stage => "stage", State => "state", Kept => "kept");

/// A gossip message kind as a label value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct GossipKind(lanpatch_protocol::Kind);

impl EncodeLabelValue for GossipKind {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        use lanpatch_protocol::Kind;
        let s = match self.0 {
            Kind::Root => "root",
            Kind::Manifest => "manifest",
            Kind::Approval => "approval",
            Kind::Yank => "yank",
            Kind::Report => "report",
            Kind::Inventory => "inventory",
            Kind::Statement => "statement",
            Kind::Digest => "digest",
            Kind::Pull => "pull",
            Kind::Certificate => "certificate",
            Kind::Revocation => "revocation",
        };
        std::fmt::Write::write_str(e, s)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GossipKindLabels {
    kind: GossipKind,
}

/// Gossip messages this node published, by kind: the network task counts them (it is started
/// before the rest of the node), the registry exports them.
#[derive(Clone, Default)]
pub struct Published(Family<GossipKindLabels, Counter>);

impl Published {
    pub fn count(&self, kind: lanpatch_protocol::Kind) {
        self.0.get_or_create(&GossipKindLabels { kind: GossipKind(kind) }).inc();
    }
}

/// What the bytes on disk are.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DiskKind {
    Blobs,
    Partial,
    Stage,
    State,
    Kept,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskLabels {
    kind: DiskKind,
}

/// [`RefusalKind`] as a label value (the protocol crate knows nothing of Prometheus).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct KindLabel(RefusalKind);

impl EncodeLabelValue for KindLabel {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(e, self.0.as_str())
    }
}

/// A membership refusal's reason as a label value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct ReasonLabel(lanpatch_protocol::RefusalReason);

impl EncodeLabelValue for ReasonLabel {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(e, self.0.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: ReasonLabel,
}

/// A release state as a label: the state's kind without its reason (a handful of values).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct StateLabel(&'static str);

impl EncodeLabelValue for StateLabel {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(e, self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: ByteSource,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: KindLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChunkRefusalLabels {
    source: ByteSource,
    reason: ChunkRefusal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: InstallOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: Verdict,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    reason: OriginFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: StateLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// The node's metrics. Cheap to bump from any task (atomics behind `Arc`s).
pub struct Metrics {
    registry: Registry,
    received_bytes: Family<SourceLabels, Counter>,
    duplicate_bytes: Family<SourceLabels, Counter>,
    served_bytes: Counter,
    evicted_bytes: Counter,
    disk: Family<DiskLabels, Gauge>,
    releases_downloaded: Counter,
    release_bytes_downloaded: Counter,
    chunks_verified: Family<SourceLabels, Counter>,
    chunks_refused: Family<ChunkRefusalLabels, Counter>,
    refusals: Family<KindLabels, Counter>,
    bans: Counter,
    installs: Family<OutcomeLabels, Counter>,
    install_duration: Histogram,
    gossip: Family<VerdictLabels, Counter>,
    published: Published,
    origin_requests: Counter,
    origin_failures: Family<FailureLabels, Counter>,
    peers: Gauge,
    releases: Family<StateLabels, Gauge>,
    door_refusals: Family<ReasonLabels, Counter>,
    webhook_delivered: Counter,
    webhook_failed: Counter,
    webhook_dropped: Counter,
    webhook_queue: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_published(Published::default())
    }

    /// The metrics, exporting the published-message counts the network task keeps.
    pub fn with_published(published: Published) -> Self {
        let mut registry = Registry::with_prefix("lanpatch");
        let m = Metrics {
            received_bytes: Family::default(),
            duplicate_bytes: Family::default(),
            served_bytes: Counter::default(),
            evicted_bytes: Counter::default(),
            disk: Family::default(),
            releases_downloaded: Counter::default(),
            release_bytes_downloaded: Counter::default(),
            chunks_verified: Family::default(),
            chunks_refused: Family::default(),
            refusals: Family::default(),
            bans: Counter::default(),
            installs: Family::default(),
            // 1 s to about 68 min.
            install_duration: Histogram::new([1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]),
            gossip: Family::default(),
            published,
            origin_requests: Counter::default(),
            origin_failures: Family::default(),
            peers: Gauge::default(),
            releases: Family::default(),
            door_refusals: Family::default(),
            webhook_delivered: Counter::default(),
            webhook_failed: Counter::default(),
            webhook_dropped: Counter::default(),
            webhook_queue: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register_with_unit(
            "received",
            "Bytes of verified chunks received that this node did not hold yet, by source",
            Unit::Bytes,
            m.received_bytes.clone(),
        );
        registry.register_with_unit(
            "received_duplicate",
            "Bytes of verified chunks received that this node already held (fetched twice), by source",
            Unit::Bytes,
            m.duplicate_bytes.clone(),
        );
        registry.register_with_unit("served", "Bytes of chunks served to peers", Unit::Bytes, m.served_bytes.clone());
        registry.register_with_unit(
            "disk",
            "Bytes in the data directory by kind (read at scrape time)",
            Unit::Bytes,
            m.disk.clone(),
        );
        registry.register_with_unit(
            "evicted",
            "Bytes of release files removed by retention (keep_versions, cache_quota)",
            Unit::Bytes,
            m.evicted_bytes.clone(),
        );
        registry.register("releases_downloaded", "Releases downloaded and verified", m.releases_downloaded.clone());
        registry.register_with_unit(
            "releases_downloaded",
            "Sum of the sizes of the releases downloaded (a site's origin bytes over this: WAN copies)",
            Unit::Bytes,
            m.release_bytes_downloaded.clone(),
        );
        registry.register(
            "chunks_verified",
            "Chunks that matched their signed BLAKE3 hash, by source",
            m.chunks_verified.clone(),
        );
        registry.register(
            "chunks_refused",
            "Chunks thrown away because they do not match the signed manifest, by source and reason",
            m.chunks_refused.clone(),
        );
        registry.register("refusals", "Refused messages, chunks and requests, by kind", m.refusals.clone());
        registry.register("peer_bans", "Peers banned", m.bans.clone());
        registry.register("installs", "Install commands run, by outcome", m.installs.clone());
        registry.register_with_unit(
            "install_duration",
            "How long install commands ran",
            Unit::Seconds,
            m.install_duration.clone(),
        );
        registry.register("gossip_messages", "Gossip messages validated, by verdict", m.gossip.clone());
        registry.register(
            "gossip_published",
            "Gossip messages this node published (its own and re-sent), by kind",
            m.published.0.clone(),
        );
        registry.register("origin_requests", "Range requests sent to origins", m.origin_requests.clone());
        registry.register(
            "origin_request_failures",
            "Origin requests that failed, by reason",
            m.origin_failures.clone(),
        );
        registry.register("peers_connected", "Peers connected and ready", m.peers.clone());
        registry.register(
            "door_refusals",
            "Peers refused at the door or cut off later (no valid certificate, expired, revoked), by reason",
            m.door_refusals.clone(),
        );
        registry.register("releases", "Releases known to this node, by state", m.releases.clone());
        registry.register(
            "webhook_delivered",
            "Notifications the webhook receiver accepted with a 2xx answer (a collector with webhook_url)",
            m.webhook_delivered.clone(),
        );
        registry.register(
            "webhook_failed_attempts",
            "Notification deliveries that failed (no connection, timeout, a non-2xx answer); each is retried",
            m.webhook_failed.clone(),
        );
        registry.register(
            "webhook_dropped",
            "Notifications dropped undelivered because the outbox was full (the oldest go first)",
            m.webhook_dropped.clone(),
        );
        registry.register(
            "webhook_queue_depth",
            "Notifications in the outbox waiting for delivery",
            m.webhook_queue.clone(),
        );
        let build: Family<VersionLabels, Gauge> = Family::default();
        build.get_or_create(&VersionLabels { version: crate::VERSION }).set(1);
        registry.register("build_info", "The running lanpatch-node version", build);
        Metrics { registry, ..m }
    }

    /// A verified chunk arrived; `new`: this node did not hold it yet (else it was fetched twice,
    /// which the duplicate counter shows).
    pub fn received(&self, source: ByteSource, bytes: u64, new: bool) {
        self.chunks_verified.get_or_create(&SourceLabels { source }).inc();
        if new {
            self.received_bytes.get_or_create(&SourceLabels { source }).inc_by(bytes);
        } else {
            self.duplicate_bytes.get_or_create(&SourceLabels { source }).inc_by(bytes);
        }
    }
    pub fn chunk_refused(&self, source: ByteSource, reason: ChunkRefusal) {
        self.chunks_refused.get_or_create(&ChunkRefusalLabels { source, reason }).inc();
    }
    /// A release of `bytes` finished downloading and every file verified.
    pub fn release_downloaded(&self, bytes: u64) {
        self.releases_downloaded.inc();
        self.release_bytes_downloaded.inc_by(bytes);
    }
    pub fn evicted(&self, bytes: u64) {
        self.evicted_bytes.inc_by(bytes);
    }
    pub fn served(&self, bytes: u64) {
        self.served_bytes.inc_by(bytes);
    }
    pub fn refused(&self, kind: RefusalKind) {
        self.refusals.get_or_create(&KindLabels { kind: KindLabel(kind) }).inc();
    }
    pub fn banned(&self) {
        self.bans.inc();
    }
    pub fn installed(&self, outcome: InstallOutcome, took: Duration) {
        self.installs.get_or_create(&OutcomeLabels { outcome }).inc();
        self.install_duration.observe(took.as_secs_f64());
    }
    pub fn gossip(&self, verdict: Verdict) {
        self.gossip.get_or_create(&VerdictLabels { verdict }).inc();
    }
    pub fn origin_request(&self) {
        self.origin_requests.inc();
    }
    pub fn origin_failed(&self, reason: OriginFailure) {
        self.origin_failures.get_or_create(&FailureLabels { reason }).inc();
    }
    pub fn webhook_delivered(&self) {
        self.webhook_delivered.inc();
    }
    pub fn webhook_failed(&self) {
        self.webhook_failed.inc();
    }
    pub fn webhook_dropped(&self, n: u64) {
        self.webhook_dropped.inc_by(n);
    }
    /// The outbox's depth, as the store counted it in the transaction that changed it.
    pub fn webhook_queue(&self, depth: u64) {
        self.webhook_queue.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// The text exposition, with the state gauges set from `g`, read by the caller now.
    pub fn render(&self, g: &Gauges) -> Result<String> {
        self.peers.set(i64::try_from(g.peers).unwrap_or(i64::MAX));
        // The door counts in `Members` (it runs inside libp2p's upgrade); brought up to date here.
        for (reason, n) in &g.door_refusals {
            let c = self.door_refusals.get_or_create(&ReasonLabels { reason: ReasonLabel(*reason) });
            c.inc_by(n.saturating_sub(c.get()));
        }
        let d = &g.disk;
        for (kind, bytes) in [
            (DiskKind::Blobs, d.blobs),
            (DiskKind::Partial, d.partial),
            (DiskKind::Stage, d.stage),
            (DiskKind::State, d.state),
            (DiskKind::Kept, d.kept),
        ] {
            self.disk.get_or_create(&DiskLabels { kind }).set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut counts: std::collections::HashMap<&'static str, i64> =
            ALL_STATES.iter().map(|name| (*name, 0)).collect();
        for state in &g.releases {
            *counts.entry(state.kind_name()).or_default() += 1;
        }
        for (name, n) in counts {
            self.releases.get_or_create(&StateLabels { state: StateLabel(name) }).set(n);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).context("encode metrics")?;
        Ok(out)
    }
}

/// Every value of [`ReleaseState::kind_name`], so each shows (as 0) before it first occurs.
const ALL_STATES: &[&str] = &[
    "available",
    "queued",
    "downloading",
    "downloaded",
    "waiting",
    "halted",
    "installing",
    "interrupted",
    "rolling_back",
    "installed",
    "failed",
    "rolled_back",
    "skipped",
];

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition, for clients that did
/// not ask for OpenMetrics (curl, `promtool check metrics`, older scrapers). The two differ, for
/// what this node exports, only in a counter's HELP and TYPE naming the `_total` sample, and in
/// OpenMetrics' `# UNIT` and `# EOF` lines.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true; `render` makes the
/// exposition of each scrape.
pub async fn serve(
    render: impl Fn() -> Result<String> + Clone + Send + Sync + 'static,
    listener: tokio::net::TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let render = render.clone();
            // Prometheus asks for OpenMetrics; everyone else gets the classic text format.
            let openmetrics = headers
                .get_all(header::ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
            async move {
                // The gauges read the data directory: off the async runtime.
                let rendered = tokio::task::spawn_blocking(render).await;
                let rendered = rendered.unwrap_or_else(|e| Err(anyhow::anyhow!("metrics render: {e}")));
                match rendered {
                    Ok(text) if openmetrics => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                        text,
                    )
                        .into_response(),
                    Ok(text) => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        classic_text(&text),
                    )
                        .into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
                }
            }
        }),
    );
    crate::listen::serve_http("metrics", listener, app, crate::listen::HTTP, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_kind_is_listed_for_the_releases_gauge() {
        use lanpatch_protocol::lifecycle::{FailReason, RollbackCause, SkipReason, WaitReason};
        let samples = [
            ReleaseState::Available,
            ReleaseState::Queued,
            ReleaseState::Downloading,
            ReleaseState::Downloaded,
            ReleaseState::Waiting(WaitReason::NotApproved),
            ReleaseState::Installing,
            ReleaseState::Halted,
            ReleaseState::Interrupted,
            ReleaseState::RollingBack(RollbackCause::Yanked),
            ReleaseState::Installed,
            ReleaseState::Failed(FailReason::DiskFull),
            ReleaseState::RolledBack(RollbackCause::InstallFailed),
            ReleaseState::Skipped(SkipReason::Expired),
        ];
        for s in samples {
            assert!(ALL_STATES.contains(&s.kind_name()), "{s:?}");
        }
        assert_eq!(samples.len(), ALL_STATES.len());
    }

    #[test]
    fn counters_render_with_prometheus_names_and_typed_labels() {
        let m = Metrics::new();
        m.received(ByteSource::Origin, 100, true);
        m.refused(RefusalKind::RequestFlood);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(out.contains("lanpatch_received_bytes_total{source=\"origin\"} 100"), "{out}");
        assert!(out.contains("lanpatch_refusals_total{kind=\"request_flood\"} 1"), "{out}");
        assert!(out.contains("lanpatch_build_info{version="), "{out}");
        let classic = classic_text(&out);
        assert!(classic.contains("# TYPE lanpatch_received_bytes_total counter\n"), "{classic}");
        assert!(classic.contains("# HELP lanpatch_received_bytes_total Bytes"), "{classic}");
        assert!(classic.contains("# TYPE lanpatch_peers_connected gauge\n"), "{classic}");
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"), "{classic}");
    }
}
