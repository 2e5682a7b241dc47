//! A collector's webhook notifications (`webhook_url`, docs/OPERATIONS.md "Notifications").
//!
//! Two loops. [`watch_fleet`] wakes when a report, an approval or a yank was stored
//! (`Store::news`), computes from the collector's reports and trusted metadata the events that
//! are true now (a ring over its approval's failure-rate threshold, a node's failed attempt, a
//! ring gate that passes), and queues each one never queued before in the store's outbox, in
//! the same transaction that records its id: an event is sent once, whatever is re-reported and
//! across restarts. [`deliver`] POSTs the outbox oldest first; a delivered entry is removed, a
//! failed attempt (no connection, a timeout, an answer other than 2xx) is retried after a
//! backoff (1 s doubling to 5 min). It waits on a `Notify` when the outbox is empty, never on a
//! timer. The outbox is bounded ([`MAX_QUEUED`]): when full, the oldest entry is dropped,
//! logged and counted.
//!
//! The receiver is not trusted: its answer is read only for its status and at most
//! [`MAX_ANSWER_LOGGED`] bytes for the log, with a deadline for the whole request.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lanpatch_protocol::commands;
use lanpatch_protocol::control::ReportView;
use lanpatch_protocol::rollout::{self, FailureFigures, RingReport};
use lanpatch_protocol::{Hash32, ReleaseState, Report, RingName, RolloutRules, Signed, Timestamp};
use serde::Serialize;
use tokio::sync::Notify;

use crate::clock::now;
use crate::config::WebhookEvent;
use crate::shared::Shared;

/// Most notifications the outbox holds; beyond, the oldest are dropped.
pub const MAX_QUEUED: u64 = 1000;
/// The first retry's wait after a failed delivery; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The whole request (connect, send, status and headers) of one delivery.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a refusing receiver's answer kept for the log.
const MAX_ANSWER_LOGGED: usize = 256;
/// After a look, the next waits this long: a burst of stored reports (a collector pulling
/// everyone's digest, a ring installing at once) is looked at once, and a look (which decodes
/// and checks every stored report, as a console page does) runs at most this often.
const SETTLE: Duration = Duration::from_secs(2);
/// Lines and bytes of a failing node's output carried in a notification.
const OUTPUT_LINES: usize = 3;
const OUTPUT_BYTES: usize = 600;
/// The id recorded by the first look: events already true when notifications were switched on
/// are recorded as seen, not sent (a collector's history would otherwise arrive at once).
const BASELINE: &str = "lanpatch:baseline";

/// A notification's JSON body. `text` is a line a chat tool's incoming webhook (Mattermost,
/// Slack) shows as is; the other fields are for programs.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Body {
    /// The dedupe key: BLAKE3 of event kind, manifest, ring or node, and attempt (hex, 128 bits).
    pub id: String,
    pub event: WebhookEvent,
    pub product: String,
    pub version: u64,
    /// The manifest hash (hex).
    pub manifest: String,
    /// The ring (halt, failure), or the ring the gate would let be approved (gate_ready).
    pub ring: String,
    /// gate_ready: the ring whose results passed the gate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_ring: Option<String>,
    /// failure: the node's host name and key (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// failure: which attempt at the release failed (0 the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// failure: the reported state; halt: `Halted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<ReleaseState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// failure: the last lines of the node's output, as the node sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// halt: the failure figures against the approval's threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<Rate>,
    /// gate_ready: installs in the previous ring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed: Option<usize>,
    pub text: String,
    /// What the admin runs next, one command per line (none for a failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// When the collector noticed the event (seconds since the epoch).
    pub at: u64,
}

/// [`FailureFigures`] as a notification carries them.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Rate {
    pub failed: usize,
    pub counted: usize,
    /// The approval's threshold in basis points (500 = 5 %).
    pub max_failure_bp: u16,
    pub min_reports: u32,
}

impl From<FailureFigures> for Rate {
    fn from(f: FailureFigures) -> Rate {
        Rate { failed: f.failed, counted: f.counted, max_failure_bp: f.max_failure_bp, min_reports: f.min_reports }
    }
}

/// The dedupe key of an event: BLAKE3 over its parts, NUL-separated, first 16 bytes in hex.
pub fn event_id(kind: WebhookEvent, parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"lanpatch-notify-v1\0").update(kind.as_str().as_bytes());
    for p in parts {
        h.update(b"\0").update(p.as_bytes());
    }
    hex::encode(&h.finalize().as_bytes()[..16])
}

/// A release as the collector's trusted metadata knows it.
#[derive(Clone, Debug)]
pub struct Release {
    pub hash: Hash32,
    pub product: String,
    pub version: u64,
    pub approved: Vec<RingName>,
    pub yanked: bool,
    /// The approvals' rollout rules and issue times, by ring.
    pub rules: BTreeMap<String, (RolloutRules, Timestamp)>,
}

/// What the commands in a notification name, from the collector's config and root.
#[derive(Clone, Debug)]
pub struct Context {
    pub order: Vec<RingName>,
    pub min_success: usize,
    pub approve_threshold: u32,
    pub socket: String,
    pub now: u64,
}

/// A counted report: its view (as the console and the signer's gate read it) and its attempt.
#[derive(Clone, Debug)]
pub struct Counted {
    pub view: ReportView,
    pub attempt: u32,
}

impl Counted {
    pub fn of(r: &Signed<Report>) -> Counted {
        Counted { view: ReportView::of(r), attempt: r.value().attempt }
    }
}

/// The last lines of a node's output on one line, cut to [`OUTPUT_BYTES`] (its end kept).
fn output_tail(detail: &str) -> String {
    let tail = rollout::last_lines(detail, OUTPUT_LINES);
    if tail.len() <= OUTPUT_BYTES {
        return tail;
    }
    let start = (tail.len() - OUTPUT_BYTES..tail.len()).find(|i| tail.is_char_boundary(*i)).unwrap_or(tail.len());
    format!("…{}", &tail[start..])
}

/// Failure events per node and release: one per attempt, for this many attempts (the retry rule
/// allows at most `approval::MAX_RETRIES` + 1 per approval; replacements add more).
const MAX_FAILURE_ATTEMPTS: u32 = 32;

/// Every event true of `reports` and `releases` now (each carries its id), in a stable order:
/// failures, then halts, then passing gates.
pub fn events(ctx: &Context, releases: &[Release], reports: &[Counted], wanted: &[WebhookEvent]) -> Vec<Body> {
    let mut out = Vec::new();
    if wanted.contains(&WebhookEvent::Failure) {
        // Only releases this collector trusts, and only the first attempts of each: a member
        // cannot mint events (and fill the outbox) by reporting made-up manifests or attempts.
        let trusted: std::collections::HashSet<String> = releases.iter().map(|r| r.hash.to_hex()).collect();
        let mut failing: Vec<&Counted> = reports
            .iter()
            .filter(|r| r.view.state.is_failure() && r.attempt < MAX_FAILURE_ATTEMPTS)
            .filter(|r| trusted.contains(&r.view.manifest))
            .collect();
        failing.sort_by_key(|r| r.view.at);
        out.extend(failing.into_iter().map(|r| failure(ctx, r)));
    }
    for rel in releases {
        let manifest = rel.hash.to_hex();
        let of_release: Vec<&Counted> = reports.iter().filter(|r| r.view.manifest == manifest).collect();
        if wanted.contains(&WebhookEvent::Halt) {
            for (ring, (rules, issued)) in &rel.rules {
                let ring_reports: Vec<RingReport> = of_release
                    .iter()
                    .filter(|r| r.view.ring == *ring && !r.view.state.is_not_targeted())
                    .filter_map(|r| RingReport::from_view(&r.view))
                    .collect();
                let figures = rollout::failure_figures(rules, *issued, &ring_reports);
                if figures.halts() {
                    out.push(halt(ctx, rel, ring, *issued, figures));
                }
            }
        }
        if wanted.contains(&WebhookEvent::GateReady) && !rel.yanked {
            out.extend(gate_ready(ctx, rel, &of_release));
        }
    }
    out
}

/// A name a node chose, for a chat message: in a code span (no mention, no link), with the
/// characters chat tools treat as markup (`<`, `>`, `&`, backticks) escaped or replaced.
fn chat_safe(name: &str) -> String {
    name.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('`', "'")
}

fn failure(ctx: &Context, r: &Counted) -> Body {
    let v = &r.view;
    let output = output_tail(&v.detail);
    let exit = v.exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
    let mut text = format!(
        "lanpatch: {} {} failed on `{}` (ring {}, attempt {}): {}{exit}",
        v.product,
        v.version,
        chat_safe(&v.hostname),
        v.ring,
        r.attempt + 1,
        v.state
    );
    if !output.is_empty() {
        // Kept out of the chat tool's markup as far as a code span goes.
        text.push_str(&format!("\n```\n{}\n```", output.replace("```", "'''")));
    }
    let attempt = r.attempt.to_string();
    Body {
        id: event_id(WebhookEvent::Failure, &[&v.manifest, &v.node, &attempt]),
        event: WebhookEvent::Failure,
        product: v.product.clone(),
        version: v.version,
        manifest: v.manifest.clone(),
        ring: v.ring.clone(),
        previous_ring: None,
        host: Some(v.hostname.clone()),
        node: Some(v.node.clone()),
        attempt: Some(r.attempt),
        state: Some(v.state),
        exit_code: v.exit_code,
        output: (!output.is_empty()).then_some(output),
        failure_rate: None,
        installed: None,
        text,
        command: None,
        at: ctx.now,
    }
}

fn halt(ctx: &Context, rel: &Release, ring: &str, issued: Timestamp, figures: FailureFigures) -> Body {
    let b = commands::bundle_placeholder(&rel.product, rel.version);
    let next = commands::Next { bundle: &b, node: &ctx.socket, approve_threshold: ctx.approve_threshold };
    let ring_name: Option<lanpatch_protocol::RingName> = ring.parse().ok();
    let resume = match &ring_name {
        Some(r) => {
            commands::approve(&next, r, commands::Approve::Replace { order: &ctx.order, min_success: ctx.min_success })
        }
        None => Vec::new(),
    };
    let yank = commands::yank(&next, false).join("\n");
    let command = format!(
        "# resume (fix first; a new approval counts outcomes afresh):\n{}\n# or yank (add --rollback to the first line to roll it back where installed):\n{yank}",
        resume.join("\n")
    );
    let text = format!(
        "lanpatch: {} {} HALTED in ring {ring}: {}\n```\n{command}\n```",
        rel.product,
        rel.version,
        figures.explain()
    );
    let issued_s = issued.0.to_string();
    Body {
        id: event_id(WebhookEvent::Halt, &[&rel.hash.to_hex(), ring, &issued_s]),
        event: WebhookEvent::Halt,
        product: rel.product.clone(),
        version: rel.version,
        manifest: rel.hash.to_hex(),
        ring: ring.to_string(),
        previous_ring: None,
        host: None,
        node: None,
        attempt: None,
        state: Some(ReleaseState::Halted),
        exit_code: None,
        output: None,
        failure_rate: Some(figures.into()),
        installed: None,
        text,
        command: Some(command),
        at: ctx.now,
    }
}

/// The console's verdict (`verdict` in console.rs) when it passes: the next ring in the rollout
/// order after the last approved one, and its gate on the previous ring's reports.
fn gate_ready(ctx: &Context, rel: &Release, reports: &[&Counted]) -> Option<Body> {
    let (prev, next) = rollout::next_ring(&ctx.order, &rel.approved)?;
    let mine: Vec<&ReportView> = reports.iter().map(|r| &r.view).filter(|r| r.ring == prev.as_str()).collect();
    rollout::gate(&mine, ctx.min_success).ok()?;
    let installed = mine.iter().filter(|r| r.state.is_installed()).count();
    let b = commands::bundle_placeholder(&rel.product, rel.version);
    let n = commands::Next { bundle: &b, node: &ctx.socket, approve_threshold: ctx.approve_threshold };
    let lines =
        commands::approve(&n, next, commands::Approve::Gated { order: &ctx.order, min_success: ctx.min_success });
    let command = lines.join("\n");
    let text = format!(
        "lanpatch: {} {}: ring {prev} passed the gate ({installed} installed, no failures); ring {next} can be approved:\n```\n{command}\n```",
        rel.product, rel.version
    );
    Some(Body {
        id: event_id(WebhookEvent::GateReady, &[&rel.hash.to_hex(), next.as_str()]),
        event: WebhookEvent::GateReady,
        product: rel.product.clone(),
        version: rel.version,
        manifest: rel.hash.to_hex(),
        ring: next.to_string(),
        previous_ring: Some(prev.to_string()),
        host: None,
        node: None,
        attempt: None,
        state: None,
        exit_code: None,
        output: None,
        failure_rate: None,
        installed: Some(installed),
        text,
        command: Some(command),
        at: ctx.now,
    })
}

/// Runs a collector's notifications until shutdown (started only with `webhook_url` set).
pub async fn run(s: Arc<Shared>) {
    // Config::parse checked the URL; a node built without that check says so rather than stop.
    let Some(url) = s.cfg.webhook_url.as_deref().and_then(|u| reqwest::Url::parse(u).ok()) else {
        tracing::error!("webhook_url does not parse: no notifications are sent");
        return;
    };
    let queued = Notify::new();
    match s.store.notification_depth().await {
        Ok(depth) => s.metrics.webhook_queue(depth),
        Err(e) => tracing::error!("cannot read the notification outbox: {e:#}"),
    }
    tracing::info!(receiver = %receiver(&url), "webhook notifications on");
    tokio::join!(watch_fleet(&s, &queued), deliver(&s, &url, &queued));
}

/// The receiver as logs name it: scheme, host and port (the path of a chat tool's webhook URL
/// is its secret).
fn receiver(url: &reqwest::Url) -> String {
    format!("{}://{}:{}", url.scheme(), url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(0))
}

/// What the events are computed from, read now.
async fn look(s: &Shared) -> anyhow::Result<(Context, Vec<Release>, Vec<Counted>)> {
    let limits = s.trust().limits.clone();
    let reports: Vec<Counted> = s
        .store
        .reports()
        .await?
        .iter()
        .filter_map(|b| Signed::<Report>::decode(b, &limits).ok())
        // Members' reports only, checked again now (as the console and `status` count them).
        .filter(|r| s.report_counts(r.value()))
        .map(|r| Counted::of(&r))
        .collect();
    let (releases, approve_threshold) = {
        let t = s.trust();
        let releases = t
            .manifests
            .iter()
            .map(|(hash, m)| Release {
                hash: *hash,
                product: m.value().product.to_string(),
                version: m.value().version.0,
                approved: t.approved_rings(hash),
                yanked: t.yanks.contains_key(hash),
                rules: t.ring_rules(hash),
            })
            .collect::<Vec<_>>();
        (releases, t.root.value().keys(lanpatch_protocol::Role::Approve).threshold)
    };
    let ctx = Context {
        order: s.cfg.rollout_rings.clone(),
        min_success: s.cfg.gate_min_success,
        approve_threshold,
        socket: s.cfg.control_socket().display().to_string(),
        now: now().0,
    };
    Ok((ctx, releases, reports))
}

/// Queues every event that became true, once; wakes `queued`.
async fn watch_fleet(s: &Shared, queued: &Notify) {
    let news = s.store.news();
    let mut shutdown = s.shutdown.clone();
    let mut seen: HashSet<String> = match s.store.notification_ids().await {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) => {
            // The store still queues an id once; this set only saves building bodies again.
            tracing::error!("cannot read the notifications already queued: {e:#}");
            HashSet::new()
        }
    };
    loop {
        match look(s).await {
            Ok((ctx, releases, reports)) => {
                let fresh: Vec<Body> = events(&ctx, &releases, &reports, &s.cfg.webhook_events)
                    .into_iter()
                    .filter(|b| !seen.contains(&b.id))
                    .collect();
                let baseline = !seen.contains(BASELINE);
                if baseline {
                    let mut ids: Vec<String> = fresh.iter().map(|b| b.id.clone()).collect();
                    ids.push(BASELINE.to_string());
                    match s.store.mark_notifications_seen(ids.clone(), ctx.now).await {
                        Ok(()) => {
                            if !fresh.is_empty() {
                                tracing::info!(
                                    events = fresh.len(),
                                    "webhook: events already true when notifications were switched on are not sent"
                                );
                            }
                            seen.extend(ids);
                        }
                        Err(e) => tracing::error!("cannot record the notifications' baseline: {e:#}"),
                    }
                } else if !fresh.is_empty() {
                    let batch: Vec<(String, String)> = fresh
                        .iter()
                        .filter_map(|b| match serde_json::to_string(b) {
                            Ok(json) => Some((b.id.clone(), json)),
                            Err(e) => {
                                tracing::error!(id = %b.id, "cannot encode a notification: {e}");
                                None
                            }
                        })
                        .collect();
                    match s.store.enqueue_notifications(batch, ctx.now, MAX_QUEUED).await {
                        Ok(q) => {
                            seen.extend(fresh.iter().map(|b| b.id.clone()));
                            for b in &fresh {
                                tracing::info!(id = %b.id, event = b.event.as_str(), "webhook: {}", b.text.lines().next().unwrap_or(""));
                            }
                            for id in &q.dropped {
                                tracing::warn!(%id, max = MAX_QUEUED, "webhook: outbox full, the oldest notification was dropped undelivered");
                            }
                            s.metrics.webhook_dropped(q.dropped.len() as u64);
                            s.metrics.webhook_queue(q.depth);
                            if q.queued > 0 {
                                queued.notify_one();
                            }
                        }
                        Err(e) => tracing::error!("cannot queue notifications: {e:#}"),
                    }
                }
            }
            Err(e) => tracing::error!("cannot read the fleet's reports for notifications: {e:#}"),
        }
        tokio::select! {
            _ = crate::listen::stopped(&mut shutdown) => return,
            _ = news.notified() => {}
        }
        tokio::select! {
            _ = crate::listen::stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(SETTLE) => {}
        }
    }
}

/// Why a delivery failed.
/// Failed attempts after which an entry is dropped (about four hours at the capped backoff).
const MAX_ATTEMPTS: u32 = 50;

#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0}")]
    Request(String),
    #[error("the receiver answered HTTP {status}: {answer:?}")]
    Status { status: u16, answer: String },
}

/// Delivers the outbox oldest first until shutdown.
async fn deliver(s: &Shared, url: &reqwest::Url, queued: &Notify) {
    let mut shutdown = s.shutdown.clone();
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(format!("lanpatch-node/{}", crate::VERSION))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("webhook: cannot build the HTTP client, notifications stay queued: {e}");
            return;
        }
    };
    let to = receiver(url);
    let mut backoff = FIRST_BACKOFF;
    // An entry delivered whose removal from the store failed: removed again, never re-sent.
    let mut delivered: Option<i64> = None;
    // Failed attempts at the oldest entry (in memory: a restart gives it a fresh count).
    let mut attempts: (i64, u32) = (0, 0);
    loop {
        let next = match s.store.next_notification().await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("cannot read the notification outbox: {e:#}");
                tokio::select! {
                    _ = crate::listen::stopped(&mut shutdown) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let Some(entry) = next else {
            tokio::select! {
                _ = crate::listen::stopped(&mut shutdown) => return,
                _ = queued.notified() => continue,
            }
        };
        if delivered == Some(entry.seq) {
            match s.store.delivered_notification(entry.seq).await {
                Ok(depth) => {
                    s.metrics.webhook_queue(depth);
                    delivered = None;
                }
                Err(e) => {
                    tracing::error!(id = %entry.id, "cannot remove a delivered notification: {e:#}");
                    tokio::select! {
                        _ = crate::listen::stopped(&mut shutdown) => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        }
        let sent = tokio::select! {
            _ = crate::listen::stopped(&mut shutdown) => return,
            r = post(&client, url, &entry.body) => r,
        };
        match sent {
            Ok(()) => {
                s.metrics.webhook_delivered();
                backoff = FIRST_BACKOFF;
                tracing::debug!(id = %entry.id, receiver = %to, "webhook: delivered");
                match s.store.delivered_notification(entry.seq).await {
                    Ok(depth) => s.metrics.webhook_queue(depth),
                    Err(e) => {
                        tracing::error!(id = %entry.id, "cannot remove a delivered notification: {e:#}");
                        delivered = Some(entry.seq);
                    }
                }
            }
            Err(e) => {
                s.metrics.webhook_failed();
                attempts = if attempts.0 == entry.seq { (entry.seq, attempts.1 + 1) } else { (entry.seq, 1) };
                // A refusal that will not change (a 4xx but timeout and rate limit), or an entry
                // that failed MAX_ATTEMPTS times, must not hold up everything queued behind it.
                let permanent = matches!(e, Refused::Status { status, .. } if (400..500).contains(&status) && status != 408 && status != 429);
                if permanent || attempts.1 >= MAX_ATTEMPTS {
                    tracing::error!(id = %entry.id, receiver = %to, attempts = attempts.1, "webhook: dropped after: {e}");
                    s.metrics.webhook_dropped(1);
                    match s.store.delivered_notification(entry.seq).await {
                        Ok(depth) => s.metrics.webhook_queue(depth),
                        Err(e) => {
                            tracing::error!(id = %entry.id, "cannot remove a dropped notification: {e:#}");
                            delivered = Some(entry.seq);
                        }
                    }
                    continue;
                }
                tracing::warn!(id = %entry.id, receiver = %to, retry_in = ?backoff, "webhook: delivery failed: {e}");
                tokio::select! {
                    _ = crate::listen::stopped(&mut shutdown) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One POST; a 2xx answer is a delivery. Of any other answer at most [`MAX_ANSWER_LOGGED`]
/// bytes are read, shown escaped.
async fn post(client: &reqwest::Client, url: &reqwest::Url, body: &str) -> Result<(), Refused> {
    let mut resp = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        // Without the URL: a chat tool's webhook URL is its secret, and reqwest's errors end
        // with it.
        .map_err(|e| Refused::Request(chain(&e.without_url())))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let mut answer = Vec::new();
    while answer.len() < MAX_ANSWER_LOGGED {
        match resp.chunk().await {
            Ok(Some(c)) => answer.extend_from_slice(&c[..c.len().min(MAX_ANSWER_LOGGED - answer.len())]),
            _ => break,
        }
    }
    Err(Refused::Status { status: status.as_u16(), answer: String::from_utf8_lossy(&answer).into_owned() })
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanpatch_protocol::lifecycle::FailReason;

    #[test]
    fn a_host_name_cannot_mention_or_link_in_a_chat_message() {
        assert_eq!(chat_safe("<!channel> & <http://x|y> `z`"), "&lt;!channel&gt; &amp; &lt;http://x|y&gt; 'z'");
    }

    #[test]
    fn a_refused_connection_is_logged_without_the_webhook_url() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // A port nothing listens on: the error reqwest gives names the URL unless stripped.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url: reqwest::Url = format!("http://127.0.0.1:{port}/hooks/SECRET-TOKEN").parse().unwrap();
        let client = reqwest::Client::new();
        let err = rt.block_on(post(&client, &url, "{}")).unwrap_err().to_string();
        assert!(!err.contains("SECRET-TOKEN") && !err.contains("/hooks"), "{err}");
    }

    #[test]
    fn failures_of_releases_the_collector_does_not_trust_or_past_the_attempt_cap_give_no_event() {
        let m = Hash32::of(b"trusted");
        let rel = release(&m, &["canary"], 2000, 100);
        let made_up =
            report("n1", "canary", &Hash32::of(b"made up"), ReleaseState::Failed(FailReason::CommandFailed), 0);
        let past_cap =
            report("n2", "canary", &m, ReleaseState::Failed(FailReason::CommandFailed), MAX_FAILURE_ATTEMPTS);
        let real = report("n3", "canary", &m, ReleaseState::Failed(FailReason::CommandFailed), 1);
        let ev = events(&ctx(), &[rel], &[made_up, past_cap, real], &[WebhookEvent::Failure]);
        let hosts: Vec<_> = ev.iter().filter_map(|b| b.host.clone()).collect();
        assert_eq!(hosts, ["n3"]);
    }

    fn report(host: &str, ring: &str, manifest: &Hash32, state: ReleaseState, attempt: u32) -> Counted {
        Counted {
            view: ReportView {
                node: hex::encode(blake3::hash(host.as_bytes()).as_bytes()),
                hostname: host.into(),
                ring: ring.into(),
                manifest: manifest.to_hex(),
                product: "tool".into(),
                version: 3,
                state,
                detail: "line 1\nline 2\n```@channel\nthe service did not come back\n".into(),
                exit_code: state.is_failure().then_some(3),
                at: 200,
                seq: 1,
                progress: None,
                envelope: None,
            },
            attempt,
        }
    }

    fn ctx() -> Context {
        Context {
            order: ["canary", "pilot", "broad"].iter().filter_map(|r| r.parse().ok()).collect(),
            min_success: 1,
            approve_threshold: 2,
            socket: "/var/lib/lanpatch/control.sock".into(),
            now: 1000,
        }
    }

    fn release(m: &Hash32, approved: &[&str], max_failure_bp: u16, min_reports: u32) -> Release {
        let approved: Vec<RingName> = approved.iter().filter_map(|r| r.parse().ok()).collect();
        let rules = approved
            .iter()
            .map(|r| (r.to_string(), (RolloutRules { max_failure_bp, min_reports, waves: Vec::new() }, Timestamp(100))))
            .collect();
        Release { hash: *m, product: "tool".into(), version: 3, approved, yanked: false, rules }
    }

    #[test]
    fn a_failing_ring_gives_one_failure_per_node_and_attempt_and_one_halt_with_the_resume_commands() {
        let m = Hash32([4; 32]);
        let failed = ReleaseState::Failed(FailReason::CommandFailed);
        let reports = [report("n1", "canary", &m, failed, 0), report("n2", "canary", &m, ReleaseState::Installed, 0)];
        let rel = release(&m, &["canary"], 2000, 2);
        let all = events(&ctx(), std::slice::from_ref(&rel), &reports, &WebhookEvent::ALL);
        let kinds: Vec<WebhookEvent> = all.iter().map(|b| b.event).collect();
        assert_eq!(kinds, [WebhookEvent::Failure, WebhookEvent::Halt], "{all:#?}");
        let f = &all[0];
        assert_eq!((f.host.as_deref(), f.attempt, f.state), (Some("n1"), Some(0), Some(failed)));
        assert!(f.text.contains("tool 3 failed on `n1` (ring canary, attempt 1)"), "{}", f.text);
        assert!(!f.text.contains("```@"), "the output cannot close the code span: {}", f.text);
        let h = &all[1];
        assert_eq!(h.failure_rate, Some(Rate { failed: 1, counted: 2, max_failure_bp: 2000, min_reports: 2 }));
        let cmd = h.command.as_deref().unwrap();
        assert!(
            cmd.contains(
                "lanpatch-signer approve --key <approve key 1 of 2> --ring canary --replace <bundle of tool 3>"
            )
        );
        assert!(cmd.contains("lanpatch-signer approve --key <approve key 2 of 2> --ring canary <bundle of tool 3>"));
        assert!(cmd.contains("lanpatch-signer yank --key <approve key 1 of 2> --reason \"<why>\" <bundle of tool 3>\nlanpatch-signer yank --key <approve key 2 of 2> <bundle of tool 3>"), "{cmd}");
        // The same state again is the same ids; the next attempt's failure is a new event.
        let again = events(&ctx(), std::slice::from_ref(&rel), &reports, &WebhookEvent::ALL);
        assert_eq!(again.iter().map(|b| &b.id).collect::<Vec<_>>(), all.iter().map(|b| &b.id).collect::<Vec<_>>());
        let retried =
            [report("n1", "canary", &m, ReleaseState::RolledBack(lanpatch_protocol::RollbackCause::InstallFailed), 1)];
        let next = events(&ctx(), std::slice::from_ref(&rel), &retried, &[WebhookEvent::Failure]);
        assert_ne!(next[0].id, f.id);
        // Only the events asked for.
        assert!(events(&ctx(), &[rel], &reports, &[WebhookEvent::GateReady]).is_empty(), "a failure shuts the gate");
    }

    #[test]
    fn a_passing_gate_names_the_next_ring_and_the_approve_and_publish_commands() {
        let m = Hash32([5; 32]);
        let reports = [report("n1", "canary", &m, ReleaseState::Installed, 0)];
        let rel = release(&m, &["canary"], 500, 3);
        let all = events(&ctx(), &[rel], &reports, &WebhookEvent::ALL);
        assert_eq!(all.len(), 1, "{all:#?}");
        let g = &all[0];
        assert_eq!(
            (g.event, g.ring.as_str(), g.previous_ring.as_deref()),
            (WebhookEvent::GateReady, "pilot", Some("canary"))
        );
        assert_eq!(
            g.command.as_deref().unwrap(),
            "lanpatch-signer approve --key <approve key 1 of 2> --ring pilot --rings canary,pilot,broad --min-success 1 --node /var/lib/lanpatch/control.sock <bundle of tool 3>\n\
             lanpatch-signer approve --key <approve key 2 of 2> --ring pilot <bundle of tool 3>\n\
             lanpatch-signer publish --node /var/lib/lanpatch/control.sock <bundle of tool 3>"
        );
        let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(g).unwrap()).unwrap();
        assert_eq!(json["event"], "gate_ready");
        assert!(json.get("host").is_none(), "{json}");
        // Not before a ring is approved, nor for a yanked release, nor once the last ring is.
        let none = release(&m, &[], 500, 3);
        assert!(events(&ctx(), &[none], &reports, &WebhookEvent::ALL).is_empty());
        let mut yanked = release(&m, &["canary"], 500, 3);
        yanked.yanked = true;
        assert!(events(&ctx(), &[yanked], &reports, &WebhookEvent::ALL).is_empty());
        let done = release(&m, &["canary", "pilot", "broad"], 500, 3);
        assert!(events(&ctx(), &[done], &reports, &WebhookEvent::ALL).is_empty());
    }
}
