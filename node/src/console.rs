//! The collector's web console: fleet, one host, rollouts (filtered, paged), one release,
//! inventory search, exposure. Read-only: it shows and explains what the collector's signed
//! reports say, and prints the `lanpatch-signer` commands to run next (approve, yank); it never
//! signs and changes nothing.
//!
//! Everything a node sent (hostnames, install output, package names) is untrusted text: maud
//! escapes every interpolated value, no value from a node becomes a link target (links are built
//! from typed, validated values: manifest hashes, node keys that parse, checked filter values,
//! percent-encoded), query values are parsed into types and refused with a 400 page when they
//! do not parse, and the Content-Security-Policy allows no
//! script at all. Access needs the token in `<data_dir>/console.token` (0600, created at the
//! first start): `GET /login?token=...` exchanges it for a random session (an HttpOnly,
//! SameSite=Strict cookie that expires; `/logout` ends it); scripts may send `Authorization:
//! Bearer <token>` instead. A new token (`console-url --rotate`, or the file deleted) ends
//! every session.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::extract::{Path as UrlPath, Query, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use lanpatch_assess::feedstore::{FeedInfo, FeedStore};
use lanpatch_assess::vulns::{self, Finding};
use lanpatch_protocol::commands;
use lanpatch_protocol::control::{InventoryView, ReportView};
use lanpatch_protocol::rollout::{self, RingCounts};
use lanpatch_protocol::{CveId, Hash32, ProductName, PublicKey, ReleaseState, RingName, Severity, debver};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::clock::now;
use crate::shared::Shared;

/// The cookie that carries the session after `/login`.
const COOKIE: &str = "lanpatch_session";
/// How long a session lasts.
const SESSION_SECS: u64 = 12 * 3600;
/// Sessions kept at once (the oldest goes first).
const MAX_SESSIONS: usize = 256;
/// Lines of a failing node's output shown on the release page.
const TAIL_LINES: usize = 20;
/// Releases per page of the rollouts page.
const PAGE_SIZE: usize = 20;

/// Reads the console token, creating it (32 random bytes, hex, mode 0600) if there is none. A
/// token file that is not 64 hex digits is replaced.
pub fn load_or_create_token(path: &Path) -> Result<String> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("{} is a symbolic link; the node's data directory holds none", path.display())
        }
        Ok(_) => {
            if let Some(w) = crate::fsmode::ensure(path, crate::fsmode::FILE)? {
                tracing::warn!("{w}");
            }
            let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let t = text.trim();
            if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(t.to_ascii_lowercase());
            }
            tracing::warn!("{} does not hold a console token; writing a new one", path.display());
            fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    let token = hex::encode(bytes);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::fsmode::FILE)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // The umask may have narrowed the mode further; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(crate::fsmode::FILE))?;
    f.write_all(format!("{token}\n").as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()?;
    Ok(token)
}

/// `lanpatch-node console-url`: the running console's login link, after a new token when
/// `rotate` (the console notices the new file at its next request and ends every session).
pub async fn print_url(cfg: &crate::config::Config, rotate: bool) -> Result<()> {
    use lanpatch_protocol::control::{ControlRequest, ControlResponse};
    if cfg.console_listen.is_none() {
        bail!("the console is off: set console_listen in node.toml (e.g. \"127.0.0.1:9718\")");
    }
    let addr = match crate::control::request(&cfg.control_socket(), &ControlRequest::Status).await? {
        ControlResponse::Status(st) => st.console,
        other => bail!("unexpected response {other:?}"),
    };
    let Some(addr) = addr else {
        bail!("the running node does not serve the console (restart it after setting console_listen)")
    };
    let path = cfg.console_token();
    let token = if rotate {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
        let token = hex::encode(bytes);
        // Renamed over the old one: the node never sees the file missing.
        crate::fsmode::write_private(&path, format!("{token}\n").as_bytes())
            .with_context(|| "run as the node's user or root".to_string())?;
        token
    } else {
        fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e} (run as the node's user or root)", path.display()))?
    };
    println!("http://{addr}/login?token={}", token.trim());
    Ok(())
}

#[derive(Clone)]
struct Console {
    s: Arc<Shared>,
    /// The token file, its BLAKE3 (`blake3::Hash` compares in constant time) and what it was
    /// read from (length, modification time): a changed file is read again.
    token: Arc<std::sync::Mutex<Token>>,
    /// Sessions by the BLAKE3 of their id: their expiry (seconds since the epoch) and the
    /// token they were opened with (a session lives only as long as its token).
    sessions: Arc<std::sync::Mutex<HashMap<blake3::Hash, (u64, blake3::Hash)>>>,
    /// The last exposure assessment and what it was computed from.
    assessed: Arc<std::sync::Mutex<Option<Assessed>>>,
}

struct Token {
    path: std::path::PathBuf,
    hash: blake3::Hash,
    seen: Stamp,
}

/// What identifies a version of the token file: inode, length, modification time.
type Stamp = (u64, u64, Option<std::time::SystemTime>);

fn file_stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| (m.ino(), m.len(), m.modified().ok())).unwrap_or((0, 0, None))
}

/// An assessment and the hash of what it was computed from (feed database, inventories).
type Assessed = (blake3::Hash, Arc<Assessment>);

/// Exposures of the fleet's inventories to the feeds in the feed database.
struct Assessment {
    feeds: Vec<FeedInfo>,
    findings: Vec<Finding>,
}

impl Console {
    /// The token's hash now: a token file that changed (rotated, or deleted and so created
    /// again) is read again, and every session ends with the old token.
    fn current_token(&self) -> blake3::Hash {
        let mut t = self.token.lock().unwrap_or_else(|p| p.into_inner());
        // The stamp before the read: a change after it is seen at the next request.
        let stamp = file_stamp(&t.path);
        if stamp != t.seen {
            match load_or_create_token(&t.path) {
                Ok(token) => {
                    let hash = blake3::hash(token.as_bytes());
                    if hash != t.hash {
                        tracing::info!("console token changed: every session ends");
                        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, (_, of)| *of == hash);
                    }
                    t.hash = hash;
                    t.seen = if stamp.0 == 0 { file_stamp(&t.path) } else { stamp };
                }
                Err(e) => tracing::warn!("console token: {e:#}"),
            }
        }
        t.hash
    }

    fn accepts(&self, presented: &str) -> bool {
        blake3::hash(presented.trim().as_bytes()) == self.current_token()
    }

    /// A new session, for `token` (the hash of the token presented): its id, for the cookie.
    fn open_session(&self, token: blake3::Hash) -> Result<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
        let id = hex::encode(bytes);
        let t = now().0;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, (expires, _)| *expires > t);
        while sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = sessions.iter().min_by_key(|(_, (e, _))| *e).map(|(k, _)| *k) else { break };
            sessions.remove(&oldest);
        }
        sessions.insert(blake3::hash(id.as_bytes()), (t + SESSION_SECS, token));
        Ok(id)
    }

    /// A session is valid while it has not expired and its token is the current one.
    fn session_valid(&self, id: &str) -> bool {
        let token = self.current_token();
        let t = now().0;
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(&blake3::hash(id.trim().as_bytes())).is_some_and(|(expires, of)| *expires > t && *of == token)
    }

    fn close_session(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&blake3::hash(id.trim().as_bytes()));
    }
}

/// Serves the console on `listener` until the node stops.
pub async fn serve(s: Arc<Shared>, listener: tokio::net::TcpListener, token: String) {
    use axum::routing::get;
    let path = s.cfg.console_token();
    let token = Token { hash: blake3::hash(token.as_bytes()), seen: file_stamp(&path), path };
    let console = Console {
        s: s.clone(),
        token: Arc::new(std::sync::Mutex::new(token)),
        sessions: Arc::default(),
        assessed: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/", get(fleet_page))
        .route("/rollouts", get(rollouts_page))
        .route("/pending", get(pending_page))
        .route("/release/{manifest}", get(release_page))
        .route("/hosts/{node}", get(host_page))
        .route("/inventory", get(inventory_page))
        .route("/exposure", get(exposure_page))
        .route("/logout", get(logout))
        .route_layer(axum::middleware::from_fn_with_state(console.clone(), require_token))
        .route("/login", get(login))
        // The stylesheet is no secret: the refusal page is styled too.
        .route("/console.css", get(css))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(console);
    crate::listen::serve_http("console", listener, app, crate::listen::HTTP, s.shutdown.clone()).await;
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

/// What a request presents: the token (`Authorization: Bearer`) or a session (the cookie).
enum Presented {
    Token(String),
    Session(String),
}

fn presented(headers: &HeaderMap) -> Option<Presented> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Presented::Token(t.to_string()));
    bearer.or_else(|| session_cookie(headers).map(Presented::Session))
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE).then(|| value.to_string())
    })
}

async fn require_token(State(c): State<Console>, req: Request, next: Next) -> Response {
    let why = match presented(req.headers()) {
        Some(Presented::Token(t)) if c.accepts(&t) => return next.run(req).await,
        Some(Presented::Session(id)) if c.session_valid(&id) => return next.run(req).await,
        Some(Presented::Token(_)) => "the token is wrong",
        Some(Presented::Session(_)) => "the session expired or ended (logged out, or a new console token)",
        None => "this page needs a session",
    };
    tracing::debug!(path = %req.uri().path(), "console request refused: {why}");
    (StatusCode::UNAUTHORIZED, refused_page(why)).into_response()
}

#[derive(Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

/// The session cookie; `Secure` when a TLS proxy in front says the browser came over HTTPS.
fn session_cookie_header(headers: &HeaderMap, value: &str, max_age: u64) -> Option<HeaderValue> {
    let https =
        headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"))
        .ok()
}

async fn login(State(c): State<Console>, headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    match q.token {
        Some(t) if c.accepts(&t) => {
            let token = blake3::hash(t.trim().as_bytes());
            let cookie = c.open_session(token).ok().and_then(|id| session_cookie_header(&headers, &id, SESSION_SECS));
            match cookie {
                Some(v) => {
                    let mut resp = Redirect::to("/").into_response();
                    resp.headers_mut().insert(header::SET_COOKIE, v);
                    resp
                }
                None => (StatusCode::INTERNAL_SERVER_ERROR, refused_page("no session could be made")).into_response(),
            }
        }
        Some(_) => (StatusCode::UNAUTHORIZED, refused_page("the token is wrong")).into_response(),
        None => (StatusCode::UNAUTHORIZED, refused_page("this page needs the console token")).into_response(),
    }
}

async fn logout(State(c): State<Console>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        c.close_session(&id);
    }
    let body = html! {
        p { "Logged out: this browser's session has ended." }
        p { "For a new one, run " code { "lanpatch-node console-url" } " on the collector." }
    };
    let mut resp = page("Logged out", None, body).into_response();
    if let Some(v) = session_cookie_header(&headers, "", 0) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, page("Not found", None, html! { p { "No such page." } })).into_response()
}

/// The 401 page: why, and how to get a new link (the stylesheet is served without a session).
fn refused_page(why: &str) -> Html<String> {
    page(
        "Access refused",
        None,
        html! {
            p.verdict.refused #why { "Refused: " (why) "." }
            section #new-link {
                h2 { "Get a new link" }
                p { "On the collector host, as root (or the node's user: the token file is 0600), run:" }
                pre.command { "sudo lanpatch-node console-url" }
                p.meta {
                    "It prints " code { "http://ADDRESS/login?token=..." } ": open that link in this browser. "
                    "Add " code { "--config PATH" } " when the node's config is not " code { "/etc/lanpatch/node.toml" } ". "
                    "A session lasts 12 hours and ends at " b { "Log out" } "."
                }
                p.meta {
                    "A link may have leaked? " code { "sudo lanpatch-node console-url --rotate" }
                    " makes a new token: every link printed before and every open session end at once."
                }
            }
        },
    )
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

/// Everything a page needs, read from the collector at one moment.
struct Fleet {
    now: u64,
    reports: Vec<ReportView>,
    inventories: Vec<InventoryView>,
    /// When each node (by hex key) last sent a digest: its heartbeat (sync.rs).
    heard: HashMap<String, u64>,
    /// Newest first (the manifest's creation time; releases only reports name go last).
    releases: Vec<ReleaseInfo>,
    /// Bytes this collector served of each file (its seed upload; store counters).
    served: HashMap<Hash32, u64>,
    order: Vec<RingName>,
    min_success: usize,
    /// Signatures an approval needs (the root's approve threshold).
    approve_threshold: u32,
    socket: String,
    stale_after: u64,
    /// This collector's node key (hex): its own reports say whether it downloaded a release
    /// (then it is no seed of it).
    own_key: String,
}

/// A release as the collector's trusted metadata knows it (or, once expired, as reports name it).
struct ReleaseInfo {
    hash: Hash32,
    product: String,
    version: u64,
    label: String,
    severity: Option<Severity>,
    total_bytes: u64,
    /// The manifest's files (by hash): what this collector served of them is its upload.
    files: Vec<Hash32>,
    /// When the release was created (the manifest's time; for one only reports name, the
    /// earliest report).
    created: u64,
    /// Whether the collector holds its manifest (not expired).
    trusted: bool,
    approved: Vec<RingName>,
    yanked: bool,
    /// The CVEs the release says it fixes.
    cves: Vec<CveId>,
    /// The approvals' rollout rules and issue times, by ring.
    rules: BTreeMap<String, (lanpatch_protocol::RolloutRules, lanpatch_protocol::Timestamp)>,
}

impl Fleet {
    async fn load(s: &Shared) -> Result<Fleet> {
        let reports = crate::control::fleet_reports(s).await?;
        let inventories = crate::control::fleet_inventories(s).await?;
        let heard = s.store.heard_all().await?.into_iter().map(|(node, at)| (hex::encode(node), at)).collect();
        let mut releases: Vec<ReleaseInfo> = {
            let t = s.trust();
            t.manifests
                .iter()
                .map(|(hash, m)| {
                    let v = m.value();
                    ReleaseInfo {
                        hash: *hash,
                        product: v.product.to_string(),
                        version: v.version.0,
                        label: v.label.clone(),
                        severity: Some(v.severity.clone()),
                        total_bytes: v.total_bytes(),
                        files: v.files.iter().map(|f| f.hash).collect(),
                        created: v.created.0,
                        trusted: true,
                        cves: v.severity.cves.clone(),
                        approved: t.approved_rings(hash),
                        rules: t.ring_rules(hash),
                        yanked: t.yanks.contains_key(hash),
                    }
                })
                .collect()
        };
        // Releases only the reports still name (expired, or from before this collector's time).
        let known: BTreeSet<String> = releases.iter().map(|r| r.hash.to_hex()).collect();
        let mut extra: BTreeMap<String, (String, u64, u64)> = BTreeMap::new();
        for r in reports.iter().filter(|r| !known.contains(&r.manifest)) {
            let e = extra.entry(r.manifest.clone()).or_insert((r.product.clone(), r.version, r.at));
            e.2 = e.2.min(r.at);
        }
        for (hex, (product, version, first)) in extra {
            if let Ok(hash) = hex.parse::<Hash32>() {
                releases.push(ReleaseInfo {
                    hash,
                    product,
                    version,
                    label: String::new(),
                    severity: None,
                    total_bytes: 0,
                    files: Vec::new(),
                    created: first,
                    trusted: false,
                    cves: Vec::new(),
                    approved: Vec::new(),
                    yanked: false,
                    rules: BTreeMap::new(),
                });
            }
        }
        releases.sort_by(|a, b| {
            (b.trusted, b.created)
                .cmp(&(a.trusted, a.created))
                .then(a.product.cmp(&b.product))
                .then(b.version.cmp(&a.version))
        });
        let served = s.store.served_files().await?;
        Ok(Fleet {
            now: now().0,
            reports,
            inventories,
            heard,
            releases,
            served,
            order: s.cfg.rollout_rings.clone(),
            min_success: s.cfg.gate_min_success,
            approve_threshold: s.trust().root.value().keys(lanpatch_protocol::Role::Approve).threshold,
            socket: s.cfg.control_socket().display().to_string(),
            stale_after: 2 * s.cfg.inventory_interval_secs + 300,
            own_key: s.node_public().to_hex(),
        })
    }

    fn reports_for(&self, hash: &Hash32) -> Vec<&ReportView> {
        let hex = hash.to_hex();
        let mut list: Vec<&ReportView> = self.reports.iter().filter(|r| r.manifest == hex).collect();
        list.sort_by(|a, b| (&a.ring, &a.hostname).cmp(&(&b.ring, &b.hostname)));
        list
    }

    /// Rings in rollout order, then any other ring that reported.
    fn rings_of(&self, reports: &[&ReportView]) -> Vec<String> {
        let mut rings: Vec<String> = self.order.iter().map(|r| r.to_string()).collect();
        let others: BTreeSet<&str> =
            reports.iter().map(|r| r.ring.as_str()).filter(|r| !rings.iter().any(|x| x == r)).collect();
        rings.extend(others.into_iter().map(str::to_string));
        rings
    }
}

/// What the gate says about the next ring, and what to run.
enum Verdict {
    /// No ring approved yet: the first ring needs no gate.
    FirstRing(RingName),
    /// Every ring in the order is approved.
    Done,
    /// `waiting`: nodes of the previous ring still on their way (the gate does not wait for
    /// them, but an admin may want to).
    Pass {
        prev: RingName,
        next: RingName,
        waiting: usize,
    },
    Refused {
        next: RingName,
        why: String,
    },
}

fn verdict(f: &Fleet, rel: &ReleaseInfo, reports: &[&ReportView]) -> Verdict {
    match rollout::next_ring(&f.order, &rel.approved) {
        Some((prev, next)) => {
            let mine: Vec<&ReportView> = reports.iter().copied().filter(|r| r.ring == prev.as_str()).collect();
            match rollout::gate(&mine, f.min_success) {
                Ok(()) => {
                    let mut counts = RingCounts::default();
                    mine.iter().for_each(|r| counts.add(r.state));
                    Verdict::Pass {
                        prev: prev.clone(),
                        next: next.clone(),
                        waiting: counts.in_progress + counts.waiting,
                    }
                }
                Err(why) => Verdict::Refused { next: next.clone(), why: why.explain(prev) },
            }
        }
        None if rel.approved.iter().any(|r| f.order.contains(r)) => Verdict::Done,
        None => match f.order.first() {
            Some(first) => Verdict::FirstRing(first.clone()),
            None => Verdict::Done,
        },
    }
}

/// The commands that approve `ring` and publish the approval, one per line: as many approve
/// keys as the root's approve threshold asks for (the first checks the gate, the others co-sign),
/// then the publish.
fn next_commands<'a>(f: &'a Fleet, bundle: &'a str) -> commands::Next<'a> {
    commands::Next { bundle, node: &f.socket, approve_threshold: f.approve_threshold }
}

fn approve_command(f: &Fleet, rel: &ReleaseInfo, ring: &RingName, gated: bool) -> String {
    let bundle = commands::bundle_placeholder(&rel.product, rel.version);
    let how = if gated {
        commands::Approve::Gated { order: &f.order, min_success: f.min_success }
    } else {
        commands::Approve::First
    };
    commands::approve(&next_commands(f, &bundle), ring, how).join("\n")
}

/// The lines that yank a release, one per approve signature the threshold needs, then publish.
fn yank_command(f: &Fleet, rel: &ReleaseInfo) -> String {
    let bundle = commands::bundle_placeholder(&rel.product, rel.version);
    commands::yank(&next_commands(f, &bundle), false).join("\n")
}

/// The link to a node's page, for a key that parses (a key a report or inventory names).
fn host_link(node: &str) -> Option<String> {
    node.parse::<PublicKey>().ok().map(|k| format!("/hosts/{}", k.to_hex()))
}

/// A host name, linked to its page when its key parses.
fn host_cell(node: &str, hostname: &str) -> Markup {
    html! {
        @if let Some(href) = host_link(node) { a.host href=(href) { (hostname) } } @else { (hostname) }
    }
}

fn verdict_markup(f: &Fleet, rel: &ReleaseInfo, v: &Verdict) -> Markup {
    html! {
        @match v {
            Verdict::FirstRing(ring) => {
                p.verdict.pending { "Not approved for any ring yet. The first ring, " b { (ring) } ", needs no gate." }
                pre.command { (approve_command(f, rel, ring, false)) }
            }
            Verdict::Done => p.verdict.pass { "Approved for every ring in the rollout order." },
            Verdict::Pass { prev, next, waiting } => {
                p.verdict.pass {
                    "Gate for " b { (next) } ": would pass."
                    @if *waiting > 0 { " " (waiting) " node(s) of " (prev) " are still on their way." }
                }
                pre.command { (approve_command(f, rel, next, true)) }
            }
            Verdict::Refused { next, why } => {
                p.verdict.refused { "Gate for " b { (next) } ": refused: " (why) }
            }
        }
    }
}

/// Per ring with rollout rules: the rules, and the failure rate against the threshold (as every
/// node of the ring computes it from the reports).
fn rules_markup(rel: &ReleaseInfo, reports: &[&ReportView]) -> Markup {
    html! {
        @for (ring, (rules, issued)) in &rel.rules {
            @let ring_reports: Vec<rollout::RingReport> = reports
                .iter()
                .filter(|r| r.ring == *ring)
                .filter_map(|r| rollout::RingReport::from_view(r))
                .collect();
            @let figures = rollout::failure_figures(rules, *issued, &ring_reports);
            p.rules data-ring=(ring) {
                "Ring " b { (ring) } ": " (rules.describe()) ". Failure rate: " (figures.explain()) "."
                @if figures.halts() { " " span.flag { "HALTED" } }
            }
        }
    }
}

fn page(title: &str, nav: Option<&str>, body: Markup) -> Html<String> {
    Html(page_markup(title, nav, 0, body).into_string())
}

/// A whole page; `refresh` > 0 reloads it every that many seconds (no JavaScript needed).
fn page_markup(title: &str, nav: Option<&str>, refresh: u32, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh > 0 { meta http-equiv="refresh" content=(refresh); }
                title { (title) " · lanpatch console" }
                link rel="stylesheet" href="/console.css";
            }
            body {
                header {
                    span.brand { "lanpatch" }
                    @if let Some(current) = nav {
                        nav {
                            @for (href, name) in [("/", "Fleet"), ("/pending", "Waiting for you"), ("/rollouts", "Rollouts"), ("/inventory", "Inventory"), ("/exposure", "Exposure")] {
                                a href=(href) class=@if name == current { "current" } { (name) }
                            }
                            a.logout href="/logout" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// `?refresh=N` (seconds, at most 600; 0 stops): the live pages reload themselves without
/// JavaScript. `Err`: the problem, for a 400 page.
fn refresh_param(q: &HashMap<String, String>) -> Result<Option<u32>, String> {
    q.get("refresh")
        .map(|r| r.parse::<u32>().map(|n| n.min(600)).map_err(|_| format!("refresh {r:?} is not a number of seconds")))
        .transpose()
}

fn live_page(title: &str, nav: &str, refresh: u32, body: Markup) -> Html<String> {
    let body = html! {
        @if refresh > 0 { p.live { "Refreshes every " (refresh) " s (" code { "?refresh=0" } " stops it)." } }
        (body)
    };
    Html(page_markup(title, Some(nav), refresh, body).into_string())
}

fn internal_error(e: anyhow::Error) -> Response {
    tracing::error!("console: {e:#}");
    (StatusCode::INTERNAL_SERVER_ERROR, page("Error", None, html! { p { "The collector could not read its store." } }))
        .into_response()
}

fn age(now: u64, at: u64) -> String {
    if at > now + 300 {
        return "clock ahead".into();
    }
    let d = now.saturating_sub(at);
    match d {
        0..60 => format!("{d} s ago"),
        60..3600 => format!("{} min ago", d / 60),
        3600..86400 => format!("{} h ago", d / 3600),
        _ => format!("{} d ago", d / 86400),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A node's state, and beside a waiting or failed one what the admin does about it.
fn state_cell(state: ReleaseState) -> Markup {
    html! {
        span class={ "state " (state.kind_name()) } { (state) }
        @if let Some(step) = state.next_step() { br; span.next { "Next: " (step) } }
    }
}

/// One row of the fleet page: a node as its inventory and reports describe it.
struct NodeRow<'a> {
    hostname: &'a str,
    ring: &'a str,
    inv: Option<&'a InventoryView>,
    last_seen: u64,
}

async fn fleet_page(State(c): State<Console>) -> Response {
    let f = match Fleet::load(&c.s).await {
        Ok(f) => f,
        Err(e) => return internal_error(e),
    };
    let mut rows: BTreeMap<&str, NodeRow> = BTreeMap::new();
    for inv in &f.inventories {
        rows.insert(&inv.node, NodeRow { hostname: &inv.hostname, ring: &inv.ring, inv: Some(inv), last_seen: inv.at });
    }
    for r in &f.reports {
        let row =
            rows.entry(&r.node).or_insert(NodeRow { hostname: &r.hostname, ring: &r.ring, inv: None, last_seen: 0 });
        row.last_seen = row.last_seen.max(r.at);
    }
    for (node, row) in rows.iter_mut() {
        if let Some(at) = f.heard.get(*node) {
            row.last_seen = row.last_seen.max(*at);
        }
    }
    let mut rows: Vec<(&str, NodeRow)> = rows.into_iter().collect();
    rows.sort_by(|a, b| (a.1.ring, a.1.hostname).cmp(&(b.1.ring, b.1.hostname)));
    let stale = rows.iter().filter(|(_, r)| f.now.saturating_sub(r.last_seen) > f.stale_after).count();
    let body = html! {
        p { (rows.len()) " node(s); " (stale) " not heard from for more than " (f.stale_after / 60) " min." }
        table #fleet {
            thead { tr { th { "Host" } th { "Ring" } th { "Tags" } th { "OS" } th { "Kernel" } th { "lanpatch" } th { "Last seen" } th { "Installed by lanpatch" } th { "Node key" } } }
            tbody {
                @for (id, r) in &rows {
                    @let is_stale = f.now.saturating_sub(r.last_seen) > f.stale_after;
                    tr class=@if is_stale { "stale" } data-host=(r.hostname) {
                        td { (host_cell(id, r.hostname)) }
                        td { (r.ring) }
                        td { @if let Some(inv) = r.inv { (inv.tags.join(", ")) } }
                        td { @if let Some(inv) = r.inv { (inv.os) " " (inv.os_version) } }
                        td {
                            @if let Some(inv) = r.inv {
                                (inv.kernel) " " (inv.arch)
                                @if let Some(pkgs) = &inv.reboot_required {
                                    " " span.flag title=(pkgs.join(", ")) { "reboot required" }
                                    @if !pkgs.is_empty() { " (" (pkgs.join(", ")) ")" }
                                }
                            }
                        }
                        td { @if let Some(inv) = r.inv { (inv.agent_version) } }
                        td { (age(f.now, r.last_seen)) @if is_stale { " " span.flag { "stale" } } }
                        td { @if let Some(inv) = r.inv { (inv.releases.join(", ")) } }
                        td.mono { (id.get(..12).unwrap_or(id)) }
                    }
                }
            }
        }
    };
    page("Fleet", Some("Fleet"), body).into_response()
}

/// What a release's rollout is doing, derived from its nodes' typed states and its approvals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RolloutStatus {
    /// Nodes are still on their way, or rings of the rollout order wait for an approval.
    Active,
    /// A node halted: the ring's failure rate crossed the approval's threshold.
    Halted,
    /// A node failed (and none halted).
    Failed,
    /// Every node has an outcome and nothing is left to approve; or the release is yanked, or
    /// expired.
    Done,
}

impl RolloutStatus {
    const ALL: [RolloutStatus; 4] =
        [RolloutStatus::Active, RolloutStatus::Halted, RolloutStatus::Failed, RolloutStatus::Done];

    /// The query value and CSS class; never parsed back except through [`RolloutStatus::ALL`].
    fn name(self) -> &'static str {
        match self {
            RolloutStatus::Active => "active",
            RolloutStatus::Halted => "halted",
            RolloutStatus::Failed => "failed",
            RolloutStatus::Done => "done",
        }
    }

    /// A yanked release is done (the yank ends its rollout, failures and all); otherwise a
    /// halt outranks a failure, a failure outranks nodes still on their way.
    fn of(f: &Fleet, rel: &ReleaseInfo, reports: &[&ReportView]) -> RolloutStatus {
        if rel.yanked {
            RolloutStatus::Done
        } else if reports.iter().any(|r| r.state == ReleaseState::Halted) {
            RolloutStatus::Halted
        } else if reports.iter().any(|r| r.state.is_failure()) {
            RolloutStatus::Failed
        } else if reports.iter().any(|r| !r.state.is_outcome()) {
            RolloutStatus::Active
        } else if !rel.trusted {
            RolloutStatus::Done
        } else {
            match verdict(f, rel, reports) {
                Verdict::Done => RolloutStatus::Done,
                Verdict::FirstRing(_) | Verdict::Pass { .. } | Verdict::Refused { .. } => RolloutStatus::Active,
            }
        }
    }
}

/// The query's parameters, last value of each name (unknown names are ignored). `Err`: the
/// query is not `application/x-www-form-urlencoded`.
fn query_params(raw: Option<&str>) -> Result<HashMap<String, String>, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| format!("the query string cannot be read: {e}"))?;
    Ok(pairs.into_iter().map(|(k, v)| (k, v.trim().to_string())).filter(|(_, v)| !v.is_empty()).collect())
}

/// The rollouts page's filters and page, each value checked.
#[derive(Default)]
struct RolloutsFilter {
    product: Option<ProductName>,
    status: Option<RolloutStatus>,
    ring: Option<RingName>,
    /// 1 the first.
    page: usize,
    refresh: Option<u32>,
}

impl RolloutsFilter {
    /// Every problem of the query, or the filter.
    fn parse(raw: Option<&str>) -> Result<RolloutsFilter, Vec<String>> {
        let q = query_params(raw).map_err(|e| vec![e])?;
        let mut bad = Vec::new();
        let mut f = RolloutsFilter { page: 1, ..RolloutsFilter::default() };
        if let Some(p) = q.get("product") {
            match p.parse::<ProductName>() {
                Ok(p) => f.product = Some(p),
                Err(e) => bad.push(format!("product: {e}")),
            }
        }
        if let Some(st) = q.get("status") {
            match RolloutStatus::ALL.into_iter().find(|x| x.name() == st) {
                Some(x) => f.status = Some(x),
                None => bad.push(format!(
                    "status {st:?} is none of {}",
                    RolloutStatus::ALL.map(RolloutStatus::name).join(", ")
                )),
            }
        }
        if let Some(r) = q.get("ring") {
            match r.parse::<RingName>() {
                Ok(r) => f.ring = Some(r),
                Err(e) => bad.push(format!("ring: {e}")),
            }
        }
        if let Some(p) = q.get("page") {
            match p.parse::<usize>() {
                Ok(n) if n >= 1 => f.page = n,
                _ => bad.push(format!("page {p:?} is not a page number (1, 2, ...)")),
            }
        }
        match refresh_param(&q) {
            Ok(r) => f.refresh = r,
            Err(e) => bad.push(e),
        }
        if bad.is_empty() { Ok(f) } else { Err(bad) }
    }

    fn any(&self) -> bool {
        self.product.is_some() || self.status.is_some() || self.ring.is_some()
    }

    /// This filter's page `page` (percent-encoded: a product or ring is checked, but the
    /// link is built the same way as every other query link).
    fn link(&self, page: usize) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(p) = &self.product {
            pairs.push(("product", p.to_string()));
        }
        if let Some(st) = self.status {
            pairs.push(("status", st.name().to_string()));
        }
        if let Some(r) = &self.ring {
            pairs.push(("ring", r.to_string()));
        }
        if page > 1 {
            pairs.push(("page", page.to_string()));
        }
        if let Some(r) = self.refresh {
            pairs.push(("refresh", r.to_string()));
        }
        if pairs.is_empty() {
            return "/rollouts".into();
        }
        format!("/rollouts?{}", serde_urlencoded::to_string(&pairs).unwrap_or_default())
    }

    fn keeps(&self, f: &Fleet, rel: &ReleaseInfo, reports: &[&ReportView]) -> bool {
        self.product.as_ref().is_none_or(|p| rel.product == p.as_str())
            && self
                .ring
                .as_ref()
                .is_none_or(|r| rel.approved.contains(r) || reports.iter().any(|x| x.ring == r.as_str()))
            && self.status.is_none_or(|st| RolloutStatus::of(f, rel, reports) == st)
    }
}

/// A 400 page that lists what is wrong with the request, and a way back.
fn bad_request(nav: &str, problems: &[String], back: (&str, &str)) -> Response {
    let body = html! {
        p.verdict.refused { "The request cannot be answered:" }
        ul #problems { @for p in problems { li { (p) } } }
        p { a href=(back.0) { (back.1) } }
    };
    (StatusCode::BAD_REQUEST, page("Bad request", Some(nav), body)).into_response()
}

/// What waits for an admin, newest release first: a first ring to approve, a gate that passes
/// (and its approve lines), a halted ring (resume or yank), failed nodes (each with its next
/// step). The console's side of `lanpatch-signer pending`, which also sees signatures that
/// have not reached this node yet.
async fn pending_page(State(c): State<Console>, RawQuery(raw): RawQuery) -> Response {
    let refresh = match query_params(raw.as_deref()).and_then(|q| refresh_param(&q)) {
        Ok(r) => r.unwrap_or(10),
        Err(e) => return bad_request("Waiting for you", &[e], ("/pending", "Waiting for you")),
    };
    let f = match Fleet::load(&c.s).await {
        Ok(f) => f,
        Err(e) => return internal_error(e),
    };
    let mut items: Vec<Markup> = Vec::new();
    for rel in f.releases.iter().filter(|r| r.trusted && !r.yanked) {
        let reports = f.reports_for(&rel.hash);
        let verdict = verdict(&f, rel, &reports);
        let halted: Vec<&String> = rel
            .rules
            .iter()
            .filter(|(ring, (rules, issued))| {
                let rr: Vec<rollout::RingReport> = reports
                    .iter()
                    .filter(|r| r.ring == **ring)
                    .filter_map(|r| rollout::RingReport::from_view(r))
                    .collect();
                rollout::failure_figures(rules, *issued, &rr).halts()
            })
            .map(|(ring, _)| ring)
            .collect();
        let failed: Vec<&&ReportView> = reports.iter().filter(|r| r.state.is_failure()).collect();
        let gate_waits = matches!(verdict, Verdict::FirstRing(_) | Verdict::Pass { .. });
        if !gate_waits && halted.is_empty() && failed.is_empty() {
            continue;
        }
        let bundle = commands::bundle_placeholder(&rel.product, rel.version);
        let next = next_commands(&f, &bundle);
        items.push(html! {
            section.release.pending data-release=(format!("{} {}", rel.product, rel.version)) {
                h2 { a href={ "/release/" (rel.hash.to_hex()) } { (rel.product) " " (rel.version) } }
                @if gate_waits { (verdict_markup(&f, rel, &verdict)) }
                @for ring in &halted {
                    @let how = ring.parse::<RingName>().ok().map(|r| commands::approve(&next, &r, commands::Approve::Replace { order: &f.order, min_success: f.min_success }));
                    p.verdict.refused data-halted=(ring) { "Ring " b { (ring) } " is halted: its failure rate crossed the approval's threshold. Fix the cause, then approve again (counts afresh), or yank." }
                    @if let Some(lines) = how { pre.command.resume { (lines.join("\n")) } }
                    pre.command.yank { (commands::yank(&next, false).join("\n")) }
                }
                @if !failed.is_empty() {
                    p { (failed.len()) " failed node(s):" }
                    ul.failed {
                        @for r in &failed {
                            li { (host_cell(&r.node, &r.hostname)) " [" (r.ring) "]: " (state_cell(r.state)) }
                        }
                    }
                }
            }
        });
    }
    let body = html! {
        p.meta { "Signatures that have not reached this node yet (a co-signer's) show in " code { "lanpatch-signer pending" } " on the signing workstation." }
        @if items.is_empty() { p id="nothing" { "Nothing waits for you: no gate to open, no halted ring, no failed node." } }
        @for item in items { (item) }
    };
    live_page("Waiting for you", "Waiting for you", refresh, body).into_response()
}

async fn rollouts_page(State(c): State<Console>, RawQuery(raw): RawQuery) -> Response {
    let filter = match RolloutsFilter::parse(raw.as_deref()) {
        Ok(filter) => filter,
        Err(problems) => return bad_request("Rollouts", &problems, ("/rollouts", "All rollouts")),
    };
    let f = match Fleet::load(&c.s).await {
        Ok(f) => f,
        Err(e) => return internal_error(e),
    };
    let shown: Vec<(&ReleaseInfo, Vec<&ReportView>)> = f
        .releases
        .iter()
        .map(|rel| (rel, f.reports_for(&rel.hash)))
        .filter(|(rel, reports)| filter.keeps(&f, rel, reports))
        .collect();
    let pages = shown.len().div_ceil(PAGE_SIZE).max(1);
    if filter.page > pages {
        let why = format!("page {} is past the last page ({pages}) of these releases", filter.page);
        return bad_request("Rollouts", &[why], (&filter.link(pages), "The last page"));
    }
    let first = (filter.page - 1) * PAGE_SIZE;
    let on_page = &shown[first..shown.len().min(first + PAGE_SIZE)];
    let products: BTreeSet<&str> = f.releases.iter().map(|r| r.product.as_str()).collect();
    let all_reports: Vec<&ReportView> = f.reports.iter().collect();
    let mut rings = f.rings_of(&all_reports);
    for r in f.releases.iter().flat_map(|r| r.approved.iter()) {
        if !rings.iter().any(|x| x == r.as_str()) {
            rings.push(r.to_string());
        }
    }
    let pager = html! {
        nav.pager {
            @if filter.page > 1 { a.prev rel="prev" href=(filter.link(filter.page - 1)) { "← Newer" } }
            " Page " (filter.page) " of " (pages) " "
            @if filter.page < pages { a.next rel="next" href=(filter.link(filter.page + 1)) { "Older →" } }
        }
    };
    let body = html! {
        form #filters method="get" action="/rollouts" {
            label { "Product "
                select name="product" {
                    option value="" { "any" }
                    @for p in &products { option value=(p) selected[filter.product.as_ref().is_some_and(|x| x.as_str() == *p)] { (p) } }
                }
            }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for st in RolloutStatus::ALL { option value=(st.name()) selected[filter.status == Some(st)] { (st.name()) } }
                }
            }
            label { "Ring "
                select name="ring" {
                    option value="" { "any" }
                    @for r in &rings { option value=(r) selected[filter.ring.as_ref().is_some_and(|x| x.as_str() == r)] { (r) } }
                }
            }
            @if let Some(r) = filter.refresh { input type="hidden" name="refresh" value=(r); }
            button type="submit" { "Filter" }
            @if filter.any() { " " a href="/rollouts" { "clear" } }
        }
        p #rollouts-summary {
            @if shown.is_empty() {
                @if f.releases.is_empty() { "No release is known yet." } @else { "No release matches these filters." }
            } @else {
                "Releases " (first + 1) "–" (first + on_page.len()) " of " (shown.len())
                @if filter.any() { " matching (" (f.releases.len()) " known)" }
                ", newest first."
            }
        }
        @if pages > 1 { (pager) }
        @for (rel, on) in on_page {
            // (The same names as the release page's: `reports`, a Vec of this release's.)
            @let reports = on.clone();
            @let counts = RingCounts::by_ring(reports.iter().copied());
            @let status = RolloutStatus::of(&f, rel, &reports);
            section.release id={ "release-" (rel.hash.to_hex()) } data-status=(status.name()) {
                h2 {
                    a href={ "/release/" (rel.hash.to_hex()) } { (rel.product) " " (rel.version) }
                    @if !rel.label.is_empty() { " " span.label { (rel.label) } }
                    " " span class={ "status " (status.name()) } { (status.name()) }
                    @if rel.yanked { " " span.flag { "yanked" } }
                }
                p.meta {
                    "Approved for: "
                    @if rel.approved.is_empty() { "no ring" } @else { (rel.approved.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) }
                    " · manifest " span.mono { (rel.hash.short()) }
                }
                table.rings {
                    thead { tr { th { "Ring" } th { "Installed" } th { "Failed" } th { "Halted" } th { "In progress" } th { "Waiting" } th { "Waiting for approval" } th { "Rolled back (yank)" } th { "Skipped" } th { "Not targeted" } } }
                    tbody {
                        @for ring in f.rings_of(&reports) {
                            @let n = counts.get(&ring).cloned().unwrap_or_default();
                            tr data-ring=(ring) {
                                td { (ring) }
                                td.installed { (n.installed) }
                                td.failed { (n.failed) }
                                td { (n.halted) }
                                td { (n.in_progress) }
                                td { (n.waiting) }
                                td { (n.waiting_for_approval) }
                                td { (n.rolled_back_by_yank) }
                                td { (n.skipped) }
                                td { (n.not_targeted) }
                            }
                        }
                    }
                }
                (rules_markup(rel, &reports))
                @if !rel.yanked {
                    (verdict_markup(&f, rel, &verdict(&f, rel, &reports)))
                }
            }
        }
        @if pages > 1 { (pager) }
    };
    live_page("Rollouts", "Rollouts", filter.refresh.unwrap_or(5), body).into_response()
}

async fn release_page(
    State(c): State<Console>,
    UrlPath(manifest): UrlPath<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let Ok(hash) = manifest.parse::<Hash32>() else {
        let why = "not a manifest hash: 64 hex digits (the rollouts page links each release)".to_string();
        return bad_request("Rollouts", &[why], ("/rollouts", "All rollouts"));
    };
    let refresh = match query_params(raw.as_deref()).and_then(|q| refresh_param(&q)) {
        Ok(r) => r.unwrap_or(3),
        Err(e) => return bad_request("Rollouts", &[e], ("/rollouts", "All rollouts")),
    };
    let f = match Fleet::load(&c.s).await {
        Ok(f) => f,
        Err(e) => return internal_error(e),
    };
    let Some(rel) = f.releases.iter().find(|r| r.hash == hash) else {
        let body = html! {
            p.verdict.refused { "This collector knows no release with the manifest " span.mono { (hash.to_hex()) } "." }
            p { a href="/rollouts" { "The rollouts" } " list every release it knows." }
        };
        return (StatusCode::NOT_FOUND, page("Unknown release", Some("Rollouts"), body)).into_response();
    };
    let reports = f.reports_for(&hash);
    let from_peers: u64 = reports.iter().filter_map(|r| r.progress).map(|p| p.from_peers).sum();
    let from_origin: u64 = reports.iter().filter_map(|r| r.progress).map(|p| p.from_origin).sum();
    let total = from_peers + from_origin;
    let failing: Vec<&&ReportView> = reports.iter().filter(|r| r.state.is_failure()).collect();
    let title = format!("{} {}", rel.product, rel.version);
    // The seed's upload: what this collector served of the release's files (where the admin
    // runs `lanpatch-signer publish`, it seeds), against the hosts that downloaded it.
    // A collector that downloaded the release itself passed it on as one more peer: no seed.
    let downloaded_here = reports.iter().any(|r| r.node == f.own_key && r.progress.is_some());
    let uploaded: u64 = if downloaded_here { 0 } else { rel.files.iter().filter_map(|h| f.served.get(h)).sum() };
    let hosts = reports.iter().filter(|r| r.progress.is_some()).count();
    let by_peers = from_peers.saturating_sub(uploaded);
    let body = html! {
        p #headline {
            @if total == 0 && uploaded == 0 {
                "No host has downloaded this release yet."
            } @else if downloaded_here {
                "This collector downloaded the release like a host (it was published elsewhere): the hosts fetched "
                (mib(from_peers)) " from peers and " (mib(from_origin)) " from origins."
            } @else if uploaded == 0 {
                "This collector uploaded none of it: the hosts fetched " (mib(from_peers)) " from peers and "
                (mib(from_origin)) " from origins."
            } @else {
                "The admin uploaded "
                b { @if rel.total_bytes > 0 { (format!("{:.2}", uploaded as f64 / rel.total_bytes as f64)) } @else { "?" } " copies" }
                " (" (mib(uploaded)) ") for " b { (hosts) " host(s)" } "; peers carried "
                b { (format!("{:.0}", by_peers as f64 * 100.0 / total.max(1) as f64)) " %" } "."
            }
        }
        @if uploaded > 0 {
            p.meta {
                "Uploaded: what this collector, the seed, sent of the release's " (mib(rel.total_bytes))
                " (a copy is one release's bytes). Peers carried: the part of the " (mib(total))
                " the hosts fetched that came from other hosts, not from the seed or an origin."
            }
        }
        p.meta {
            @if !rel.label.is_empty() { (rel.label) " · " }
            "manifest " span.mono { (hash.to_hex()) }
            @if rel.total_bytes > 0 { " · " (mib(rel.total_bytes)) }
            @if rel.yanked { " · " span.flag { "yanked" } }
        }
        @if let Some(sev) = &rel.severity {
            p.meta {
                "Severity " (format!("{:?}", sev.level).to_lowercase())
                @if let Some(c) = sev.cvss_tenths { " · CVSS " (c / 10) "." (c % 10) }
                @if let Some(e) = sev.epss_bp { " · EPSS " (format!("{:.3}", f64::from(e) / 10000.0)) }
                @if sev.known_exploited { " · " span.flag { "known exploited" } }
                @if !sev.cves.is_empty() { " · " (sev.cves.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")) }
            }
        }
        p.meta {
            "Approved for: "
            @if rel.approved.is_empty() { "no ring" } @else { (rel.approved.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) }
        }
        (rules_markup(rel, &reports))
        @if !rel.yanked { (verdict_markup(&f, rel, &verdict(&f, rel, &reports))) }
        @if rel.trusted && !rel.yanked {
            section #withdraw {
                h2 { "Withdraw it (yank)" }
                p.meta {
                    "A yank stops installs of this release. Add " code { "--rollback" } " to the first line to also run its rollback "
                    "command where it is installed. The first approve key writes the yank with the reason; "
                    @if f.approve_threshold > 1 {
                        "the root's approve threshold is " (f.approve_threshold) ", so the next line(s) co-sign the same yank file; "
                    }
                    "then publish it."
                }
                pre.command #yank { (yank_command(&f, rel)) }
            }
        }
        h2 { "Fan-out" }
        p #fanout {
            @if total == 0 {
                "No node has reported downloaded bytes yet."
            } @else {
                @let seed = uploaded.min(from_peers);
                "The nodes fetched " (mib(total)) ": " (mib(seed)) " from this collector (the seed), "
                (mib(from_peers - seed)) " from other hosts, " (mib(from_origin)) " from origins. The LAN (seed and hosts) carried "
                (format!("{:.0}", from_peers as f64 * 100.0 / total as f64)) " % of what the nodes fetched."
            }
        }
        h2 { "Nodes" }
        table #nodes {
            thead { tr { th { "Host" } th { "Ring" } th { "Wave" } th { "State" } th { "Download" } th { "From peers" } th { "From origins" } th { "Exit" } th { "Updated" } } }
            tbody {
                @for r in &reports {
                    tr data-host=(r.hostname) {
                        td { (host_cell(&r.node, &r.hostname)) }
                        td { (r.ring) }
                        td {
                            @if let (Some((rules, _)), Ok(node)) = (rel.rules.get(&r.ring), r.node.parse::<lanpatch_protocol::PublicKey>()) {
                                (rollout::wave_of(&node, &hash, &rules.waves) + 1)
                            }
                        }
                        td { (state_cell(r.state)) }
                        td {
                            @if let Some(p) = r.progress {
                                progress value=(p.have_chunks) max=(p.total_chunks.max(1)) {}
                                " " (p.have_chunks) "/" (p.total_chunks)
                            }
                        }
                        td { @if let Some(p) = r.progress { (mib(p.from_peers)) } }
                        td { @if let Some(p) = r.progress { (mib(p.from_origin)) } }
                        td { @if let Some(code) = r.exit_code { (code) } }
                        td { (age(f.now, r.at)) }
                    }
                }
            }
        }
        @if !failing.is_empty() {
            h2 { "Failing nodes" }
            @for r in &failing {
                section.failure data-host=(r.hostname) {
                    h3 { (host_cell(&r.node, &r.hostname)) " (" (r.ring) "): " (r.state) @if let Some(code) = r.exit_code { ", exit " (code) } }
                    pre.output { (tail(&r.detail, TAIL_LINES)) }
                }
            }
        }
    };
    live_page(&title, "Rollouts", refresh, body).into_response()
}

/// One node: its inventory (OS, tags, reboot flag, packages) and every release's state there.
async fn host_page(State(c): State<Console>, UrlPath(node): UrlPath<String>, RawQuery(raw): RawQuery) -> Response {
    let Ok(key) = node.parse::<PublicKey>() else {
        let why = "not a node key: 64 hex digits (the fleet page links each host)".to_string();
        return bad_request("Fleet", &[why], ("/", "The fleet"));
    };
    let q = match query_params(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return bad_request("Fleet", &[e], ("/", "The fleet")),
    };
    let package = q.get("package").map(|p| p.to_lowercase());
    let f = match Fleet::load(&c.s).await {
        Ok(f) => f,
        Err(e) => return internal_error(e),
    };
    let hex = key.to_hex();
    let inv = f.inventories.iter().find(|i| i.node == hex);
    let mut reports: Vec<&ReportView> = f.reports.iter().filter(|r| r.node == hex).collect();
    let heard = f.heard.get(&hex).copied();
    if inv.is_none() && reports.is_empty() && heard.is_none() {
        let body = html! {
            p.verdict.refused { "No node with the key " span.mono { (hex) } " has reported to this collector." }
            p { a href="/" { "The fleet" } " lists every node it heard from." }
        };
        return (StatusCode::NOT_FOUND, page("Unknown host", Some("Fleet"), body)).into_response();
    }
    reports.sort_by(|a, b| b.at.cmp(&a.at).then(b.version.cmp(&a.version)));
    let names: HashMap<String, &ReleaseInfo> = f.releases.iter().map(|r| (r.hash.to_hex(), r)).collect();
    let hostname = inv.map(|i| i.hostname.as_str()).or(reports.first().map(|r| r.hostname.as_str())).unwrap_or("?");
    let ring = inv.map(|i| i.ring.as_str()).or(reports.first().map(|r| r.ring.as_str())).unwrap_or("?");
    let last_seen = inv.map(|i| i.at).into_iter().chain(reports.iter().map(|r| r.at)).chain(heard).max().unwrap_or(0);
    let stale = f.now.saturating_sub(last_seen) > f.stale_after;
    let packages: Vec<&lanpatch_protocol::report::Package> = inv
        .map(|i| {
            let mut list: Vec<_> = i
                .packages
                .iter()
                .filter(|p| package.as_ref().is_none_or(|q| p.name.to_lowercase().contains(q)))
                .collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            list
        })
        .unwrap_or_default();
    let failing: Vec<&&ReportView> = reports.iter().filter(|r| r.state.is_failure()).collect();
    let body = html! {
        table #host.facts {
            tbody {
                tr { th { "Ring" } td { (ring) } }
                @if let Some(i) = inv {
                    tr { th { "Tags" } td { (i.tags.join(", ")) } }
                    tr { th { "OS" } td { (i.os) " " (i.os_version) } }
                    tr { th { "Kernel" } td { (i.kernel) " " (i.arch) } }
                    tr { th { "lanpatch" } td { (i.agent_version) } }
                }
                tr { th { "Last seen" } td { (age(f.now, last_seen)) @if stale { " " span.flag { "stale" } } } }
                tr #reboot {
                    th { "Reboot" }
                    td {
                        @match inv.map(|i| &i.reboot_required) {
                            None => "no inventory yet",
                            Some(None) => "not required",
                            Some(Some(pkgs)) => {
                                span.flag { "reboot required" }
                                @if !pkgs.is_empty() { " for " (pkgs.join(", ")) }
                                " (lanpatch does not reboot hosts)"
                            }
                        }
                    }
                }
                tr { th { "Node key" } td.mono { (hex) } }
            }
        }
        h2 { "Release history" }
        @if reports.is_empty() {
            p { "No release report from this host." }
        } @else {
            table #history {
                thead { tr { th { "Release" } th { "State" } th { "Exit" } th { "Updated" } } }
                tbody {
                    @for r in &reports {
                        tr data-release={ (r.product) " " (r.version) } {
                            td {
                                @if let Ok(h) = r.manifest.parse::<Hash32>() {
                                    a href={ "/release/" (h.to_hex()) } { (r.product) " " (r.version) }
                                } @else { (r.product) " " (r.version) }
                                @if names.get(&r.manifest).is_some_and(|rel| rel.yanked) { " " span.flag { "yanked" } }
                            }
                            td { (state_cell(r.state)) }
                            td { @if let Some(code) = r.exit_code { (code) } }
                            td { (age(f.now, r.at)) }
                        }
                    }
                }
            }
        }
        @for r in &failing {
            section.failure data-release={ (r.product) " " (r.version) } {
                h3 { (r.product) " " (r.version) ": " (r.state) @if let Some(code) = r.exit_code { ", exit " (code) } ", " (age(f.now, r.at)) }
                pre.output { (tail(&r.detail, TAIL_LINES)) }
            }
        }
        h2 { "Installed packages" }
        @if let Some(i) = inv {
            form #package-filter method="get" action={ "/hosts/" (hex) } {
                label { "Name contains " input name="package" value=(q.get("package").map(String::as_str).unwrap_or("")); }
                button type="submit" { "Filter" }
                @if package.is_some() { " " a href={ "/hosts/" (hex) } { "all" } }
            }
            p #package-count { (packages.len()) " of " (i.packages.len()) " package(s), by name." }
            table #packages {
                thead { tr { th { "Package" } th { "Version" } th { "Source" } } }
                tbody {
                    @for p in &packages {
                        tr {
                            td { (p.name) }
                            td.mono { (p.version) }
                            td { @if let Some(src) = &p.source { (src) @if let Some(v) = &p.source_version { " " (v) } } }
                        }
                    }
                }
            }
        } @else {
            p { "No inventory from this host yet." }
        }
    };
    page(hostname, Some("Fleet"), body).into_response()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[derive(Deserialize, Default)]
struct InventoryQuery {
    package: Option<String>,
    below: Option<String>,
    tag: Option<String>,
    os: Option<String>,
    ring: Option<String>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

async fn inventory_page(State(c): State<Console>, Query(q): Query<InventoryQuery>) -> Response {
    let f = match Fleet::load(&c.s).await {
        Ok(f) => f,
        Err(e) => return internal_error(e),
    };
    let (package, below, tag, os, ring) =
        (given(&q.package), given(&q.below), given(&q.tag), given(&q.os), given(&q.ring));
    let mut shown: Vec<(&InventoryView, Option<&str>)> = Vec::new();
    for inv in &f.inventories {
        if tag.is_some_and(|t| !inv.tags.iter().any(|x| x == t))
            || os.is_some_and(|o| inv.os != o)
            || ring.is_some_and(|r| inv.ring != r)
        {
            continue;
        }
        let version = package.and_then(|p| inv.packages.iter().find(|k| k.name == p).map(|k| k.version.as_str()));
        if package.is_some() {
            let Some(v) = version else { continue };
            if below.is_some_and(|b| debver::compare(v, b) != Some(std::cmp::Ordering::Less)) {
                continue;
            }
        }
        shown.push((inv, version));
    }
    shown.sort_by(|a, b| (&a.0.ring, &a.0.hostname).cmp(&(&b.0.ring, &b.0.hostname)));
    let body = html! {
        form method="get" action="/inventory" {
            label { "Package " input name="package" value=(package.unwrap_or("")); }
            label { "below version " input name="below" value=(below.unwrap_or("")); }
            label { "Tag " input name="tag" value=(tag.unwrap_or("")); }
            label { "OS " input name="os" value=(os.unwrap_or("")); }
            label { "Ring " input name="ring" value=(ring.unwrap_or("")); }
            button type="submit" { "Search" }
        }
        p #matches { (shown.len()) " of " (f.inventories.len()) " node(s)." }
        table #inventory {
            thead { tr { th { "Host" } th { "Ring" } th { "Tags" } th { "OS" } @if let Some(p) = package { th { (p) } } th { "Packages" } } }
            tbody {
                @for (inv, version) in &shown {
                    tr {
                        td { (inv.hostname) }
                        td { (inv.ring) }
                        td { (inv.tags.join(", ")) }
                        td { (inv.os) " " (inv.os_version) }
                        @if package.is_some() { td { (version.unwrap_or("")) } }
                        td { (inv.packages.len()) }
                    }
                }
            }
        }
        p.note { "Versions compare as dpkg does. Exposure to CVEs: " a href="/exposure" { "Exposure" } "." }
    };
    page("Inventory", Some("Inventory"), body).into_response()
}

/// The exposure assessment for `invs`, recomputed only when the feed database or an inventory
/// changed. `Ok(None)`: no feed database is configured.
async fn assess(c: &Console, invs: Vec<InventoryView>) -> Result<Option<Arc<Assessment>>> {
    let Some(db) = c.s.cfg.console_feeds_db.clone() else { return Ok(None) };
    let meta = fs::metadata(&db).with_context(|| {
        format!("cannot read the feed database {} (lanpatch-signer feeds import writes it)", db.display())
    })?;
    let mut key = blake3::Hasher::new();
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    key.update(&mtime.as_nanos().to_le_bytes()).update(&meta.len().to_le_bytes());
    for i in &invs {
        key.update(i.node.as_bytes()).update(&i.seq.to_le_bytes());
    }
    let key = key.finalize();
    if let Some((k, a)) = c.assessed.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
        && *k == key
    {
        return Ok(Some(a.clone()));
    }
    let a = tokio::task::spawn_blocking(move || -> Result<Assessment> {
        let store = FeedStore::open_read_only(&db)?;
        let feeds = store.feeds()?;
        let by_package = store.affected_by_package()?;
        let findings = vulns::prioritise(&store, vulns::exposures(&invs, &by_package))?;
        Ok(Assessment { feeds, findings })
    })
    .await??;
    let a = Arc::new(a);
    *c.assessed.lock().unwrap_or_else(|p| p.into_inner()) = Some((key, a.clone()));
    Ok(Some(a))
}

#[derive(Deserialize, Default)]
struct ExposureQuery {
    cve: Option<String>,
    node: Option<String>,
}

/// A link to the exposure page filtered by one parameter (percent-encoded: the value may come
/// from a node or the feed database).
fn exposure_link(name: &str, value: &str) -> String {
    format!("/exposure?{}", serde_urlencoded::to_string([(name, value)]).unwrap_or_default())
}

async fn exposure_page(State(c): State<Console>, Query(q): Query<ExposureQuery>) -> Response {
    let f = match Fleet::load(&c.s).await {
        Ok(f) => f,
        Err(e) => return internal_error(e),
    };
    let (cve, node) = (given(&q.cve), given(&q.node));
    let hosts = f.inventories.len();
    let assessment = match assess(&c, f.inventories.clone()).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            let body = html! {
                p { "No feed database is configured. On the admin workstation, import feeds with "
                    code { "lanpatch-signer feeds import --osv ... --epss ... --kev ..." }
                    " and point the collector at the database with " code { "console_feeds_db" } " in node.toml." }
            };
            return page("Exposure", Some("Exposure"), body).into_response();
        }
        Err(e) => {
            tracing::warn!("console: exposure: {e:#}");
            let body = html! { p.refused { "Cannot assess exposure: " (format!("{e:#}")) } };
            return (StatusCode::SERVICE_UNAVAILABLE, page("Exposure", Some("Exposure"), body)).into_response();
        }
    };
    let shown: Vec<&Finding> = assessment
        .findings
        .iter()
        .filter(|x| cve.is_none_or(|c| x.cve == c))
        .filter(|x| node.is_none_or(|n| x.hosts.iter().any(|h| h.node == n)))
        .collect();
    // Per CVE of each release that lists one: hosts it fixed, still exposed, failed (a CVE
    // fixed everywhere is no finding any more, but stays here).
    let rollouts: Vec<(&ReleaseInfo, vulns::CveRollout)> = f
        .releases
        .iter()
        .filter(|rel| !rel.cves.is_empty())
        .flat_map(|rel| {
            let cves: Vec<CveId> = rel.cves.iter().filter(|c| cve.is_none_or(|x| c.as_str() == x)).cloned().collect();
            vulns::cve_rollout(&cves, &assessment.findings, &f.reports_for(&rel.hash))
                .into_iter()
                .map(move |r| (rel, r))
        })
        .collect();
    let host_name = node.and_then(|n| f.inventories.iter().find(|i| i.node == n)).map(|i| i.hostname.as_str());
    let exposed: BTreeSet<&str> = shown.iter().flat_map(|x| x.hosts.iter().map(|h| h.node.as_str())).collect();
    let body = html! {
        p.meta {
            "Feeds: "
            @if assessment.feeds.is_empty() { "none imported" }
            @for (i, feed) in assessment.feeds.iter().enumerate() {
                @if i > 0 { ", " }
                (feed.feed.as_str()) " " (feed.date) " (" (feed.rows) " rows)"
            }
            ". Priority: known exploited (KEV) first, then EPSS, then CVSS, then hosts exposed."
        }
        @if let Some(c) = cve { p { "CVE " b { (c) } ". " a href="/exposure" { "All CVEs" } } }
        @if let Some(n) = node { p { "Host " b { (host_name.unwrap_or(n)) } ". " a href="/exposure" { "All hosts" } } }
        p #exposure-summary { (shown.len()) " finding(s) on " (exposed.len()) " of " (hosts) " host(s)." }
        table #exposure {
            thead { tr { th { "#" } th { "CVE" } th { "Package" } th { "Hosts" } th { "CVSS" } th { "EPSS" } th { "Known exploited" } th { "Fixed in" } } }
            tbody {
                @for (i, x) in shown.iter().enumerate() {
                    @let fixed: BTreeSet<&str> = x.hosts.iter().filter_map(|h| h.fixed.as_deref()).collect();
                    tr data-cve=(x.cve) {
                        td { (i + 1) }
                        td { a href=(exposure_link("cve", &x.cve)) { (x.cve) } }
                        td { (x.package) }
                        td { (x.host_count()) }
                        td { @if let Some(s) = x.cvss { (format!("{s:.1}")) } }
                        td { @if let Some(e) = x.epss { (format!("{:.3}", e.score)) } }
                        td { @if let Some(k) = &x.kev { span.flag { "KEV" } " due " (k.due_date) @if k.ransomware { ", ransomware" } } }
                        td { @if fixed.is_empty() { "no fix yet" } @else { (fixed.into_iter().collect::<Vec<_>>().join(", ")) } }
                    }
                }
            }
        }
        @if !rollouts.is_empty() {
            h2 { "Releases that fix them" }
            table #cve-rollout {
                thead { tr { th { "CVE" } th { "Release" } th { "Fixed" } th { "Pending" } th { "Failed" } } }
                tbody {
                    @for (rel, r) in &rollouts {
                        tr data-cve=(r.cve) {
                            td { a href=(exposure_link("cve", &r.cve)) { (r.cve) } }
                            td { (rel.product) " " (rel.version) @if rel.yanked { " (yanked)" } }
                            td.fixed { (r.fixed.len()) @if !r.fixed.is_empty() { ": " (r.fixed.join(", ")) } }
                            td.pending { (r.pending.len()) @if !r.pending.is_empty() { ": " (r.pending.join(", ")) } }
                            td.failed {
                                (r.failed.len())
                                @for (i, (host, why)) in r.failed.iter().enumerate() {
                                    (if i == 0 { ": " } else { "; " }) (host) " (" (why) ")"
                                }
                            }
                        }
                    }
                }
            }
        }
        @if cve.is_some() || node.is_some() {
            h2 { "Exposed hosts" }
            table #exposed-hosts {
                thead { tr { th { "Host" } th { "CVE" } th { "Package" } th { "Version" } th { "Fixed in" } } }
                tbody {
                    @for x in &shown {
                        @for h in x.hosts.iter().filter(|h| node.is_none_or(|n| h.node == n)) {
                            tr {
                                td { a href=(exposure_link("node", &h.node)) { (h.hostname) } }
                                td { (x.cve) }
                                td { (h.installed) }
                                td { (h.version) }
                                td { (h.fixed.as_deref().unwrap_or("no fix yet")) }
                            }
                        }
                    }
                }
            }
        }
        p.note {
            "The same list: " code { "lanpatch-signer vulns --node " (f.socket)
                @if let Some(db) = &c.s.cfg.console_feeds_db { " --db " (db.display()) } }
            "."
        }
    };
    page("Exposure", Some("Exposure"), body).into_response()
}

const CSS: &str = r#"
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: .6em 1.5em; display: flex; gap: 2em; align-items: center; }
header .brand { font-weight: 700; letter-spacing: .03em; }
header nav a { color: #cfd6e4; margin-right: 1.2em; text-decoration: none; }
header nav a.current { color: #fff; border-bottom: 2px solid #6aa3ff; }
main { padding: 1em 1.5em 3em; max-width: 80em; }
h1 { font-size: 1.5em; margin: .3em 0 .6em; }
h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
h2 a { color: inherit; }
table { border-collapse: collapse; background: #fff; margin: .4em 0 .8em; }
th, td { text-align: left; padding: .3em .8em; border-bottom: 1px solid #e3e6eb; vertical-align: top; }
th { background: #eef0f4; font-weight: 600; }
tr.stale td { color: #8a6100; background: #fff8e6; }
.mono, pre { font-family: ui-monospace, monospace; font-size: .9em; }
pre { background: #fff; border: 1px solid #e3e6eb; padding: .6em .8em; overflow-x: auto; white-space: pre-wrap; }
pre.command { background: #1d2330; color: #e8ecf3; }
.flag { background: #ffe2a8; color: #5e4200; padding: 0 .4em; border-radius: 3px; font-size: .85em; }
.label { color: #5c6577; font-weight: 400; }
.meta { color: #5c6577; margin: .2em 0; }
.verdict { padding: .4em .8em; border-left: 4px solid; background: #fff; }
.verdict.pass { border-color: #1f9d55; }
.verdict.refused { border-color: #d64545; }
.verdict.pending { border-color: #6aa3ff; }
td.failed, .state.failed, .state.rolled_back { color: #b42323; font-weight: 600; }
td.installed, .state.installed { color: #1f7a45; font-weight: 600; }
.next { color: #4a5366; font-size: .86em; }
.refused { color: #b42323; }
.live { color: #8a93a5; font-size: .85em; }
section.failure h3 { font-size: 1em; margin: 1em 0 .2em; }
form label { margin-right: 1em; }
form input { width: 9em; }
form select { min-width: 7em; }
#headline { font-size: 1.2em; background: #fff; border-left: 4px solid #6aa3ff; padding: .5em .8em; margin: .2em 0 .4em; }
.status { padding: 0 .45em; border-radius: 3px; font-size: .75em; font-weight: 600; vertical-align: middle; text-transform: uppercase; letter-spacing: .04em; }
.status.active { background: #dbe8ff; color: #1e4a9a; }
.status.halted { background: #ffe2a8; color: #5e4200; }
.status.failed { background: #ffd9d9; color: #8f1c1c; }
.status.done { background: #d8f1e2; color: #1f5f3a; }
nav.pager { margin: .6em 0; color: #5c6577; }
nav.pager a { margin: 0 .6em; }
table.facts th { width: 9em; }
a.host { color: inherit; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.token");
        let t = load_or_create_token(&path).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), t);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_token(&path).unwrap(), t);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        fs::write(&path, "not a token").unwrap();
        let new = load_or_create_token(&path).unwrap();
        assert!(new != t && new.len() == 64);
    }

    #[test]
    fn a_token_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.token");
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(load_or_create_token(&path).is_err());
    }

    #[test]
    fn untrusted_text_is_escaped_in_pages() {
        let html =
            page_markup("x", None, 0, html! { pre { (tail("ok\n<script>alert(1)</script>", 5)) } }).into_string();
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }

    #[test]
    fn rollouts_filters_are_checked_and_every_bad_value_is_named() {
        let f = RolloutsFilter::parse(Some("product=tool&status=failed&ring=canary&page=2&refresh=0&other=x")).unwrap();
        assert_eq!(f.product.as_ref().map(ProductName::as_str), Some("tool"));
        assert_eq!(
            (f.status, f.ring.as_ref().map(RingName::as_str), f.page, f.refresh),
            (Some(RolloutStatus::Failed), Some("canary"), 2, Some(0))
        );
        // Empty values are no filter (the form sends them); the default page is the first.
        let f = RolloutsFilter::parse(Some("product=&status=&ring=")).unwrap();
        assert!(!f.any() && f.page == 1);
        assert_eq!(RolloutsFilter::parse(None).map(|f| f.page).ok(), Some(1));
        let bad =
            RolloutsFilter::parse(Some("status=Failed&page=0&product=a%20b&ring=%3Cb%3E&refresh=-1")).err().unwrap();
        assert_eq!(bad.len(), 5, "{bad:?}");
        assert!(bad[0].starts_with("product: "), "{bad:?}");
        assert!(bad[1].contains("none of active, halted, failed, done"), "{bad:?}");
        assert!(RolloutsFilter::parse(Some("page=99999999999999999999999")).is_err());
    }

    #[test]
    fn page_links_keep_the_filters_and_percent_encode_them() {
        let f = RolloutsFilter::parse(Some("product=tool&status=active&ring=canary&refresh=5")).unwrap();
        assert_eq!(f.link(1), "/rollouts?product=tool&status=active&ring=canary&refresh=5");
        assert_eq!(f.link(3), "/rollouts?product=tool&status=active&ring=canary&page=3&refresh=5");
        assert_eq!(RolloutsFilter::default().link(1), "/rollouts");
        assert_eq!(RolloutsFilter::default().link(2), "/rollouts?page=2");
    }

    #[test]
    fn host_links_are_built_only_from_keys_that_parse() {
        let key = "AB".repeat(32);
        assert_eq!(host_link(&key), Some(format!("/hosts/{}", "ab".repeat(32))));
        assert_eq!(host_link("../../etc/passwd"), None);
        assert_eq!(host_link(&format!("{}\"><script>", "ab".repeat(32))), None);
    }

    #[test]
    fn the_cookie_carries_a_session_and_the_bearer_header_the_token() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=b; lanpatch_session=abc; c=d"));
        assert!(matches!(presented(&h), Some(Presented::Session(s)) if s == "abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer xyz"));
        assert!(matches!(presented(&h), Some(Presented::Token(t)) if t == "xyz"));
        assert!(presented(&HeaderMap::new()).is_none());
    }
}
