//! `node.toml`: every setting with its default and why it exists.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lanpatch_protocol::{RingName, SiteName, Tag};
use serde::Deserialize;

/// A node's configuration. Only `data_dir` and `trust_root` are required.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Holds state.db (SQLite), blobs/, partial/, node.key and control.sock.
    pub data_dir: PathBuf,
    /// The trust root file this node is provisioned with (version 1 of the fleet's root, or a
    /// later one already known to be good).
    pub trust_root: PathBuf,
    /// libp2p listen addresses. The default listens on every IPv4 interface on port 4717.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Peers to dial at start and whenever the connection drops, for networks mDNS cannot reach.
    #[serde(default)]
    pub static_peers: Vec<String>,
    /// Ask connected peers for their peers and dial them (peer exchange), so a node that knows
    /// one static peer finds the rest of the site.
    #[serde(default = "default_true")]
    pub peer_exchange: bool,
    /// Discover peers on the LAN with mDNS.
    #[serde(default = "default_true")]
    pub mdns: bool,
    /// Nodes to join the fleet through from another site or from behind NAT: any node with an
    /// address this node can reach, written with its peer id (`/ip4/198.51.100.7/tcp/4717/p2p/12D3...`).
    /// Dialed at start and whenever the connection drops, seeded into Kademlia, and, when this
    /// node cannot be reached from outside, asked for a relay reservation (if they run `relay`).
    #[serde(default)]
    pub bootstrap_peers: Vec<String>,
    /// The site this node is at (default `default`). Nodes of one site split the work across the
    /// site's WAN link among themselves; a peer of another site is used like an origin (only by
    /// the site's fetchers, each chunk once). A single-LAN fleet leaves it alone.
    #[serde(default = "default_site")]
    pub site: SiteName,
    /// Where a site's fetchers get a release from: `origin` (the manifest's origins first, other
    /// sites' peers when no origin is usable) or `peers` (other sites first, origins for what no
    /// other site holds). Default `origin`.
    #[serde(default)]
    pub site_upstream: crate::site::Upstream,
    /// Serve as a circuit relay (v2) for nodes of the fleet that cannot be reached directly (behind
    /// NAT). Set it on bootstrap peers with a reachable address.
    #[serde(default)]
    pub relay: bool,
    /// Whether other nodes can dial this one: `auto` (AutoNAT asks peers to dial back), `public`
    /// or `private` (always reserve a relay slot on bootstrap peers that relay).
    #[serde(default)]
    pub reachability: crate::site::Reachability,
    /// Fleet membership (docs/OPERATIONS.md "Enrolling nodes"): `required` (the default) makes
    /// the node start only with a valid certificate from the trust root's enroll role, talk only
    /// to peers that show one, and count only members' reports; `off` is for throwaway test
    /// fleets: anyone holding the fleet's root can join, read inventories and move ring gates.
    #[serde(default)]
    pub enrollment: Enrollment,
    /// The node certificate (`lanpatch-signer enroll node`); default `<data_dir>/node.cert`.
    /// With enrollment, ring, site, tags and hostname come from it, not from this file.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// The rollout ring this node belongs to (with enrollment: the certificate's ring).
    #[serde(default = "default_ring")]
    pub ring: RingName,
    /// Free-form tags used by release targeting.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Name used for hostname targeting and in reports (default: the machine's hostname).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Upload limit in bytes per second for chunks served to peers (0 = unlimited).
    #[serde(default)]
    pub upload_limit: u64,
    /// Download limit in bytes per second for chunks fetched from peers (0 = unlimited).
    #[serde(default)]
    pub download_limit: u64,
    /// Origin (WAN) limit for this node in bytes per second (0 = unlimited).
    #[serde(default)]
    pub origin_limit: u64,
    /// Origin (WAN) limit for the whole site in bytes per second, shared equally by the nodes
    /// fetching a release (0 = unlimited). Keeps patching from saturating the branch's uplink.
    #[serde(default)]
    pub site_origin_limit: u64,
    /// Origin range requests in flight from this node.
    #[serde(default = "default_origin_inflight")]
    pub max_origin_inflight: usize,
    /// How many of a site's nodes fetch a release from its origins (the rest get it over the LAN).
    /// Keeps the site's origin requests in flight at about this times `max_origin_inflight`,
    /// whatever the number of nodes. Every node of a site must use the same value.
    #[serde(default = "default_origin_fetchers")]
    pub site_origin_fetchers: usize,
    /// Most bytes the blob cache may hold; a release that does not fit is not downloaded.
    #[serde(default = "default_quota")]
    pub cache_quota: u64,
    /// Free bytes a download never takes from the disk that holds `data_dir`: a release that
    /// would leave less is not downloaded (`Failed(LowDisk)`, reported). Unset: 256 MiB, or 5 %
    /// of that filesystem's size when that is less (a 64 MiB disk keeps 3.2 MiB).
    #[serde(default)]
    pub min_free_disk: Option<u64>,
    /// Chunk requests in flight to one peer at a time.
    #[serde(default = "default_inflight")]
    pub max_inflight_per_peer: usize,
    /// Chunk uploads served at the same time (across all peers).
    #[serde(default = "default_uploads")]
    pub max_concurrent_uploads: usize,
    /// When releases may be installed, in the node's local time (TZ / /etc/localtime). None
    /// configured means any time. An approval's passed deadline or an urgent release overrides.
    #[serde(default)]
    pub maintenance_windows: Vec<crate::policy::WindowSpec>,
    #[serde(skip)]
    pub windows: Vec<crate::policy::Window>,
    /// Store the reports and inventories of the fleet (run this on the admin workstation).
    #[serde(default)]
    pub collector: bool,
    /// Send the inventory at least this often (it is also sent whenever it changes).
    #[serde(default = "default_inventory_interval")]
    pub inventory_interval_secs: u64,
    /// How long after its reports or inventory change the node publishes its digest (the
    /// sequence numbers listeners compare to find what they missed; see sync.rs).
    #[serde(default = "default_report_digest")]
    pub report_digest_secs: u64,
    /// Reports of releases no longer trusted (expired) are deleted this many days after they
    /// arrived, on every node but a collector (which keeps the fleet's history); a node's own
    /// latest report of such a release goes too. 0 keeps them.
    #[serde(default = "default_report_retention")]
    pub report_retention_days: u64,
    /// Versions per product whose files the node keeps (for serving late peers and for rollback);
    /// the installed version, and a release still ahead, are kept besides. Yanked and older
    /// releases are evicted when a download needs room in `cache_quota`, and after installs.
    #[serde(default = "default_keep_versions")]
    pub keep_versions: usize,
    /// Releases downloaded at the same time; the most severe go first.
    #[serde(default = "default_downloads")]
    pub max_concurrent_downloads: usize,
    /// Which redirects origin requests follow: "same-origin" (default) or "none". A redirect
    /// elsewhere marks the origin bad for the release (a refusal is recorded).
    #[serde(default)]
    pub origin_redirects: crate::origin::RedirectPolicy,
    /// Consecutive failed requests after which an origin is not used for the rest of a release
    /// (between failures the node backs off exponentially, 1.5 s doubling up to 60 s).
    #[serde(default = "default_origin_failures")]
    pub origin_max_failures: u32,
    /// The online timestamp key (a `lanpatch-signer keygen` secret key file, mode 0600) of the
    /// node that signs freshness statements: the admin workstation's node. Its public key must be
    /// in the root's `timestamp` role.
    #[serde(default)]
    pub timestamp_key: Option<PathBuf>,
    /// How often the timestamp node signs a statement (also at once when metadata changes).
    #[serde(default = "default_statement_interval")]
    pub statement_interval_secs: u64,
    /// How long a statement is valid.
    #[serde(default = "default_statement_lifetime")]
    pub statement_lifetime_secs: u64,
    /// With a timestamp role in the root: a node starts no install unless it holds a valid
    /// statement issued at most this long ago (it reports `waiting (no fresh timestamp
    /// statement)` instead).
    #[serde(default = "default_max_staleness")]
    pub max_staleness_secs: u64,
    /// How long a first ban lasts, in seconds; each further ban of the same peer lasts 4 times
    /// longer (at most a week). Bans survive restarts.
    #[serde(default = "default_ban_secs")]
    pub ban_secs: u64,
    /// A peer with more refused messages or requests than this in one minute is banned.
    #[serde(default = "default_ban_refusals")]
    pub ban_refusals_per_minute: u32,
    /// After this many different peer ids from one IP were banned within a day, the IP itself is
    /// banned (a new identity is free; an address is not). 0: never ban IPs.
    #[serde(default = "default_ban_ip_after")]
    pub ban_ip_after: u32,
    /// Connections established at once (all peers).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Connections being set up at once, each way.
    #[serde(default = "default_max_pending")]
    pub max_pending_connections: u32,
    /// Connections to one peer id.
    #[serde(default = "default_max_per_peer")]
    pub max_connections_per_peer: u32,
    /// Connections from one IP address.
    #[serde(default = "default_max_per_ip")]
    pub max_connections_per_ip: usize,
    /// Transfer-protocol requests one peer may make per second (bursts of twice that); more are
    /// dropped, and count as refusals.
    #[serde(default = "default_requests_per_peer")]
    pub max_requests_per_peer_per_sec: u32,
    /// Refusal details kept in state.db (the newest); per-source totals are kept besides.
    #[serde(default = "default_refusal_log")]
    pub refusal_log_max: u32,
    /// A group (name or number) whose members may use the control socket (publish, status):
    /// the socket becomes 0660 with this group and the data directory 0710 with this group.
    /// Unset: only the node's user (0600).
    #[serde(default)]
    pub control_socket_group: Option<String>,
    /// Where to serve Prometheus metrics (`GET /metrics`), as `ip:port`; an empty string turns the
    /// endpoint off. Port 0 picks a free port (its address is logged at start).
    #[serde(default = "default_metrics_listen", deserialize_with = "empty_is_none")]
    pub metrics_listen: Option<String>,
    /// Where a collector serves its web console, as `ip:port` (off unless set; `127.0.0.1:9718`
    /// is the suggestion). Port 0 picks a free port (shown by status). Only a collector has
    /// the fleet's reports to show: set on another node it is refused.
    #[serde(default, deserialize_with = "empty_is_none")]
    pub console_listen: Option<String>,
    /// Allow `console_listen` on an address other than loopback. The console speaks plain HTTP:
    /// put it behind a TLS reverse proxy instead where you can (docs/OPERATIONS.md).
    #[serde(default)]
    pub console_allow_remote: bool,
    /// The feed database `lanpatch-signer feeds import` writes (on the admin workstation that
    /// runs the collector): the console's exposure page reads it read-only. Unset: no exposure
    /// page.
    #[serde(default)]
    pub console_feeds_db: Option<PathBuf>,
    /// The rollout order of rings the console's gate verdicts follow (as `lanpatch-signer approve
    /// --rings`).
    #[serde(default = "default_rollout_rings")]
    pub rollout_rings: Vec<RingName>,
    /// Successful installs the previous ring needs before the console calls the next ring's gate
    /// passing (as `lanpatch-signer approve --min-success`).
    #[serde(default = "default_one")]
    pub gate_min_success: usize,
    /// Where a collector POSTs a JSON notification of each halt, failure and passing ring gate
    /// (docs/OPERATIONS.md "Notifications"): an `http://` or `https://` URL, such as a chat
    /// tool's incoming webhook. Off unless set; refused on a node that is not a collector.
    #[serde(default, deserialize_with = "empty_is_none")]
    pub webhook_url: Option<String>,
    /// Which events `webhook_url` receives (default all): `halt`, `failure`, `gate_ready`.
    #[serde(default = "default_webhook_events")]
    pub webhook_events: Vec<WebhookEvent>,
    /// On SIGTERM, how long a running install may go on before its whole process group is
    /// killed and the install is recorded as interrupted (resolved at the next start).
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// Log filter (tracing-subscriber syntax), overridden by RUST_LOG.
    #[serde(default = "default_log")]
    pub log: String,
    /// `text` (default) or `json` (one JSON object per line: journald and log shippers).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Deliberate misbehaviour, for tests of the fleet's defences only.
    #[serde(default)]
    pub fault_injection: FaultInjection,
}

/// Misbehaviours a test can switch on to play an attacker or a broken peer. All off by default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultInjection {
    /// Flip a byte in every chunk this node uploads.
    #[serde(default)]
    pub corrupt_uploads: CorruptUploads,
    /// Accept raw gossip from the control socket and publish it unchecked.
    #[serde(default)]
    pub raw_gossip: RawGossip,
    /// Drop every chunk download once the peer has answered that it sends the chunk (a
    /// requester trying to capture a seed's initial seeding).
    #[serde(default)]
    pub drop_downloads: DropDownloads,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropDownloads {
    #[default]
    Never,
    AfterHeader,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CorruptUploads {
    #[default]
    Never,
    Always,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawGossip {
    #[default]
    Refuse,
    Allow,
}

fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/tcp/4717".into()]
}
fn default_true() -> bool {
    true
}
impl Config {
    /// The ring a node is in when node.toml names none.
    pub fn default_ring() -> RingName {
        default_ring()
    }
}

fn default_ring() -> RingName {
    RingName::try_from("broad".to_string()).unwrap_or_else(|_| unreachable!("valid literal"))
}
/// How the node writes its log (to stderr, which systemd hands to journald).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What a collector notifies `webhook_url` of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A release's ring crossed its approval's failure-rate threshold.
    Halt,
    /// A node reported a failed install or download (once per node, release and attempt).
    Failure,
    /// The ring gate for the next ring in `rollout_rings` passes (once per release and ring).
    GateReady,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 3] = [WebhookEvent::Halt, WebhookEvent::Failure, WebhookEvent::GateReady];

    /// The name in node.toml and in a notification's `event` field.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Halt => "halt",
            WebhookEvent::Failure => "failure",
            WebhookEvent::GateReady => "gate_ready",
        }
    }
}

fn default_webhook_events() -> Vec<WebhookEvent> {
    WebhookEvent::ALL.to_vec()
}

fn default_rollout_rings() -> Vec<RingName> {
    ["canary", "pilot", "broad"].iter().filter_map(|r| r.parse().ok()).collect()
}
fn default_site() -> SiteName {
    crate::site::default_site()
}
fn default_keep_versions() -> usize {
    2
}
fn default_one() -> usize {
    1
}
fn default_metrics_listen() -> Option<String> {
    Some("127.0.0.1:9717".to_string())
}
fn empty_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = serde::Deserialize::deserialize(d)?;
    Ok(v.filter(|s| !s.trim().is_empty()))
}
fn default_quota() -> u64 {
    20 * 1024 * 1024 * 1024
}
fn default_inflight() -> usize {
    4
}
fn default_inventory_interval() -> u64 {
    3600
}
fn default_report_digest() -> u64 {
    30
}
fn default_report_retention() -> u64 {
    90
}
fn default_downloads() -> usize {
    2
}
fn default_origin_inflight() -> usize {
    2
}
fn default_origin_fetchers() -> usize {
    4
}
fn default_uploads() -> usize {
    8
}
fn default_statement_interval() -> u64 {
    300
}
fn default_statement_lifetime() -> u64 {
    900
}
fn default_max_staleness() -> u64 {
    3600
}
fn default_ban_secs() -> u64 {
    3600
}
fn default_ban_refusals() -> u32 {
    20
}
fn default_ban_ip_after() -> u32 {
    3
}
fn default_max_connections() -> u32 {
    256
}
fn default_max_pending() -> u32 {
    64
}
fn default_max_per_peer() -> u32 {
    2
}
fn default_max_per_ip() -> usize {
    32
}
fn default_requests_per_peer() -> u32 {
    200
}
fn default_refusal_log() -> u32 {
    1000
}
fn default_origin_failures() -> u32 {
    8
}
fn default_grace() -> u64 {
    30
}
/// A TOML error naming an unknown field, with the known field closest to it when one is near
/// ("unknown field `rign`, expected one of ..." gains "did you mean `ring`?").
fn did_you_mean(message: &str) -> String {
    let Some(rest) = message.split("unknown field `").nth(1) else { return message.to_string() };
    let Some((unknown, expected)) = rest.split_once('`') else { return message.to_string() };
    match lanpatch_protocol::suggest::nearest(unknown, expected.split('`').skip(1).step_by(2)) {
        Some(known) => format!("{}\ndid you mean `{known}`?", message.trim_end()),
        None => message.to_string(),
    }
}

/// A `webhook_url` the collector can POST to: `http` or `https` (reqwest, already in the node
/// for origins, speaks TLS through rustls), with a host.
fn check_webhook_url(url: &str) -> Result<()> {
    // The URL is a secret (a chat tool's token is in its path): errors show its scheme only.
    let u = reqwest::Url::parse(url)
        .map_err(|e| anyhow::anyhow!("bad webhook_url (not shown: it may hold a secret): {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        anyhow::bail!("webhook_url: the scheme must be http or https, not {:?}", u.scheme());
    }
    if u.host_str().is_none_or(str::is_empty) {
        anyhow::bail!("webhook_url names no host");
    }
    Ok(())
}

fn default_log() -> String {
    // libp2p_kad warns at every start of a node without peers yet ("Failed to trigger
    // bootstrap: No known peers") and when DHT replication finds nobody: nothing to act on.
    "info,libp2p_gossipsub=warn,libp2p_mdns=warn,libp2p_kad=error".into()
}

/// Whether the fleet checks membership (see [`Config::enrollment`]). An enum, not a bool: turning
/// it off is a decision that reads as one in node.toml.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enrollment {
    #[default]
    Required,
    Off,
}

impl Config {
    /// The node certificate's path (always set by [`Config::parse`]).
    pub fn certificate_path(&self) -> PathBuf {
        self.certificate.clone().unwrap_or_else(|| self.data_dir.join("node.cert"))
    }

    /// The free bytes downloads leave on the filesystem holding `data_dir` (see
    /// `min_free_disk`); `size` is that filesystem's size, when known.
    pub fn disk_reserve(&self, size: Option<u64>) -> u64 {
        const DEFAULT: u64 = 256 * 1024 * 1024;
        self.min_free_disk.unwrap_or_else(|| size.map_or(DEFAULT, |s| DEFAULT.min(s / 20)))
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        // Made absolute here, so install commands (which run in their staging directory) and
        // the status client see the same paths as the node.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = std::path::absolute(parent)
            .with_context(|| format!("cannot resolve the directory of {}", path.display()))?;
        Config::parse(&text, &base).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses and checks a node.toml; relative paths are taken relative to `base`. Pure (the
    /// fuzz target `node_config` drives it with arbitrary text).
    pub fn parse(text: &str, base: &Path) -> Result<Config> {
        let mut c: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", did_you_mean(&e.to_string())))?;
        c.data_dir = base.join(&c.data_dir);
        c.trust_root = base.join(&c.trust_root);
        c.timestamp_key = c.timestamp_key.map(|k| base.join(k));
        c.certificate = Some(match c.certificate.take() {
            Some(p) => base.join(p),
            None => c.data_dir.join("node.cert"),
        });
        c.console_feeds_db = c.console_feeds_db.map(|k| base.join(k));
        if c.statement_interval_secs == 0 || c.statement_lifetime_secs <= c.statement_interval_secs {
            anyhow::bail!("statement_lifetime_secs must be longer than statement_interval_secs (> 0)");
        }
        c.windows = c
            .maintenance_windows
            .iter()
            .map(crate::policy::Window::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("invalid maintenance window: {e}"))?;
        if c.max_inflight_per_peer == 0
            || c.max_concurrent_uploads == 0
            || c.max_origin_inflight == 0
            || c.site_origin_fetchers == 0
            || c.max_concurrent_downloads == 0
            || c.keep_versions == 0
        {
            anyhow::bail!(
                "max_inflight_per_peer, max_concurrent_uploads, max_origin_inflight, site_origin_fetchers, max_concurrent_downloads and keep_versions must be at least 1"
            );
        }
        if let Some(addr) = &c.console_listen {
            let sa: std::net::SocketAddr =
                addr.parse().map_err(|e| anyhow::anyhow!("bad console_listen address {addr:?}: {e}"))?;
            if !c.collector {
                anyhow::bail!("console_listen is set but this node is not a collector (collector = true)");
            }
            if !sa.ip().is_loopback() && !c.console_allow_remote {
                anyhow::bail!(
                    "console_listen {sa} is not a loopback address: the console speaks plain HTTP; put it behind a TLS reverse proxy, or set console_allow_remote = true"
                );
            }
        }
        if let Some(url) = &c.webhook_url {
            check_webhook_url(url)?;
            if !c.collector {
                anyhow::bail!("webhook_url is set but this node is not a collector (collector = true)");
            }
        }
        Ok(c)
    }

    pub fn console_token(&self) -> PathBuf {
        self.data_dir.join("console.token")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }

    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_disk_reserve_is_256_mib_or_5_percent_of_a_smaller_disk_and_a_set_one_wins() {
        let mut c =
            Config::parse("data_dir = \"d\"\ntrust_root = \"r\"\nenrollment = \"off\"", Path::new("/x")).unwrap();
        assert_eq!(c.disk_reserve(Some(64 << 20)), (64 << 20) / 20, "a 64 MiB disk keeps 3.2 MiB");
        assert_eq!(c.disk_reserve(Some(100 << 30)), 256 << 20);
        assert_eq!(c.disk_reserve(None), 256 << 20);
        c.min_free_disk = Some(12 << 20);
        assert_eq!(c.disk_reserve(Some(64 << 20)), 12 << 20);
    }

    fn parse(extra: &str) -> Result<Config> {
        Config::parse(&format!("data_dir = \"d\"\ntrust_root = \"r\"\n{extra}"), Path::new("/base"))
    }

    #[test]
    fn the_console_is_off_by_default_and_refused_beyond_loopback_unless_allowed() {
        assert_eq!(parse("").unwrap().console_listen, None);
        assert!(parse("collector = true\nconsole_listen = \"127.0.0.1:9718\"").is_ok());
        assert!(parse("collector = true\nconsole_listen = \"[::1]:9718\"").is_ok());
        let remote = parse("collector = true\nconsole_listen = \"0.0.0.0:9718\"").unwrap_err();
        assert!(format!("{remote:#}").contains("not a loopback address"), "{remote:#}");
        assert!(parse("collector = true\nconsole_listen = \"0.0.0.0:9718\"\nconsole_allow_remote = true").is_ok());
        let not_collector = parse("console_listen = \"127.0.0.1:9718\"").unwrap_err();
        assert!(format!("{not_collector:#}").contains("not a collector"), "{not_collector:#}");
        assert!(parse("collector = true\nconsole_listen = \"localhost\"").is_err());
    }

    #[test]
    fn the_packaged_config_parses_as_shipped_and_with_every_commented_example_switched_on() {
        let shipped = include_str!("../../packaging/node.toml");
        Config::parse(shipped, Path::new("/")).unwrap();
        let examples: String = shipped
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with("[[") => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::parse(&examples, Path::new("/")).unwrap_or_else(|e| panic!("{e:#}\n{examples}"));
        assert!(c.collector && c.console_listen.is_some() && c.windows.len() == 1);
    }

    #[test]
    fn webhooks_are_http_or_https_on_a_collector_only_with_typed_events() {
        let c = parse("").unwrap();
        assert_eq!(c.webhook_url, None);
        assert_eq!(c.webhook_events, WebhookEvent::ALL);
        let ok = parse("collector = true\nwebhook_url = \"http://127.0.0.1:8065/hooks/x\"\nwebhook_events = [\"halt\", \"gate_ready\"]")
            .unwrap();
        assert_eq!(ok.webhook_events, [WebhookEvent::Halt, WebhookEvent::GateReady]);
        assert!(parse("collector = true\nwebhook_url = \"https://chat.example/hooks/x\"").is_ok());
        assert_eq!(parse("webhook_url = \"\"").unwrap().webhook_url, None, "empty is off");
        for (toml, says) in [
            ("collector = true\nwebhook_url = \"ftp://host/x\"", "scheme must be http or https"),
            ("collector = true\nwebhook_url = \"file:///etc/passwd\"", "scheme must be http or https"),
            ("collector = true\nwebhook_url = \"host:8065/x\"", "scheme must be http or https"),
            ("collector = true\nwebhook_url = \"not a url\"", "bad webhook_url"),
            ("webhook_url = \"http://127.0.0.1:1/x\"", "not a collector"),
            ("collector = true\nwebhook_events = [\"halted\"]", "unknown variant"),
            ("collector = true\nwebhok_url = \"http://h/\"", "did you mean `webhook_url`?"),
        ] {
            let e = format!("{:#}", parse(toml).unwrap_err());
            assert!(e.contains(says), "{toml}: {e}");
        }
    }

    #[test]
    fn the_rollout_order_defaults_to_the_signers() {
        let c = parse("").unwrap();
        let rings: Vec<&str> = c.rollout_rings.iter().map(|r| r.as_str()).collect();
        assert_eq!(rings, ["canary", "pilot", "broad"]);
        assert_eq!(c.gate_min_success, 1);
    }
}
