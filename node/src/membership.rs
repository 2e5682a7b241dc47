//! Fleet membership on a node: its own certificate, the revocation list it holds, the peers it
//! admitted at the door (`door.rs`) and what their certificates say, and the per-member budget for
//! messages that make other nodes work (digests and pulls).
//!
//! One [`Members`] is shared by the door (which runs inside libp2p's connection upgrade), the
//! swarm task (which cuts off peers whose certificate expired or was revoked) and the node (which
//! checks the author of every report, inventory, digest and pull). Every check runs at the moment
//! of use against the current root and revocation list (steps C1 to C6, N4 of docs/PROTOCOL.md).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use anyhow::{Context, Result, anyhow};
use lanpatch_protocol::membership::{self, MemberRefusal, RefusalReason, RevocationError};
use lanpatch_protocol::report::{FromNode, MemberCheck};
use lanpatch_protocol::{Envelope, Hash32, Limits, NodeCertificate, PublicKey, Revocations, Root, Signed, Timestamp};
use libp2p::PeerId;
use libp2p::identity;
use tokio::sync::Notify;

/// Most door refusals kept for status and the console (oldest dropped first).
pub const RECENT_REFUSALS: usize = 64;
/// Which of a member's messages a newness mark is about: a report per release, its inventory,
/// its digest, its pulls per target (`None`: of everyone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Seen {
    Report(Hash32),
    Inventory,
    Digest,
    Pull(Option<PublicKey>),
}

/// Most newness marks kept (members x releases they report on); past it they start afresh.
const SEEN_ENTRIES: usize = 65_536;

/// What a member's message asks of others, for its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Budgeted {
    /// Digests and pulls: each can make listeners pull or send messages again.
    AntiEntropy,
    /// Reports and inventories: each is stored by collectors and ring peers, and forwarded.
    Reports,
}

impl Budgeted {
    /// Messages of this class one member may make this node act on (store, forward, answer) per
    /// minute; more are ignored, not forwarded, and counted. A member sends one digest per change
    /// burst and heartbeat and a pull per digest it lacks something from, a handful a minute
    /// even during a rollout; and about ten reports per release it installs, re-sent only when
    /// pulled.
    /// What the class is, for people.
    pub fn what(self) -> &'static str {
        match self {
            Budgeted::AntiEntropy => "digests and pulls",
            Budgeted::Reports => "reports and inventories",
        }
    }

    pub fn per_minute(self) -> u32 {
        match self {
            Budgeted::AntiEntropy => 30,
            Budgeted::Reports => 120,
        }
    }
}
/// Members whose budget is tracked at once; past it, windows that ended are forgotten.
const BUDGET_ENTRIES: usize = 8192;

/// A peer refused at the door is not dialed again for this long (it may still dial us).
pub const REFUSED_BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);
/// Most refused peers remembered for the back-off.
const REFUSED_PEERS: usize = 4096;

/// A node warns at start (and on reload) when its certificate has less than this left.
pub const RENEW_WARNING_SECS: u64 = 7 * 86_400;

/// The revocation list held, in the data directory.
pub const REVOCATIONS_FILE: &str = "revocations.lpv";

/// The node's libp2p identity (`<data_dir>/node.key`, mode 0600), created on first use.
pub fn load_or_create_identity(cfg: &crate::config::Config) -> Result<identity::Keypair> {
    let path = cfg.data_dir.join("node.key");
    match std::fs::read(&path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| anyhow!("{} is not a node key: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = identity::Keypair::generate_ed25519();
            write_identity(&path, &kp)?;
            Ok(kp)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a new `node.key` (mode 0600); never replaces one.
fn write_identity(path: &Path, kp: &identity::Keypair) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = kp.to_protobuf_encoding().map_err(|e| anyhow!("encode node key: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::fsmode::FILE)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    Ok(())
}

/// The node key in `<data_dir>/node.key`, if there is one.
pub fn existing_identity(cfg: &crate::config::Config) -> Result<Option<PublicKey>> {
    let path = cfg.data_dir.join("node.key");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let kp = identity::Keypair::from_protobuf_encoding(&bytes)
                .map_err(|e| anyhow!("{} is not a node key: {e}", path.display()))?;
            let ed = kp.try_into_ed25519().map_err(|e| anyhow!("{} is not an ed25519 key: {e}", path.display()))?;
            Ok(Some(PublicKey(ed.public().to_bytes())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `secret` as the node's libp2p identity (`<data_dir>/node.key`, mode 0600) unless that
/// very key is there already; never replaces another key.
pub fn install_identity(cfg: &crate::config::Config, secret: &[u8; 32]) -> Result<()> {
    let mut bytes = *secret;
    let kp = identity::Keypair::ed25519_from_bytes(&mut bytes).map_err(|e| anyhow!("bad node key: {e}"))?;
    let public =
        PublicKey(kp.clone().try_into_ed25519().map_err(|e| anyhow!("bad node key: {e}"))?.public().to_bytes());
    let path = cfg.data_dir.join("node.key");
    match existing_identity(cfg)? {
        Some(held) if held == public => Ok(()),
        Some(held) => Err(anyhow!(
            "this host already has node key {held} ({}); the join bundle brings key {public}: it is for a host that has none yet",
            path.display()
        )),
        None => write_identity(&path, &kp),
    }
}

/// The libp2p peer id of a node key (ed25519).
pub fn peer_of(key: &PublicKey) -> Option<PeerId> {
    let ed = identity::ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(identity::PublicKey::from(ed).to_peer_id())
}

/// One refusal at the door, for status and the console.
#[derive(Clone, Debug)]
pub struct DoorRefusal {
    pub at: Timestamp,
    pub peer: String,
    pub reason: RefusalReason,
    pub detail: String,
}

/// This node's membership state. See the module docs.
pub struct Members {
    pub fleet: Hash32,
    limits: Limits,
    /// The envelope of this node's own certificate, as sent at the door.
    own: RwLock<Signed<NodeCertificate>>,
    root: RwLock<Root>,
    revoked: RwLock<Option<Signed<Revocations>>>,
    /// Peers admitted at the door: what their certificates say, and the envelope (checked again
    /// in full when the root changes).
    admitted: Mutex<HashMap<PeerId, (NodeCertificate, Envelope)>>,
    /// Set by a root rotation: the next sweep verifies every admitted certificate's signatures
    /// again, under the new root's enroll keys.
    reverify: std::sync::atomic::AtomicBool,
    refused: [AtomicU64; RefusalReason::ALL.len()],
    recent: Mutex<VecDeque<DoorRefusal>>,
    budget: Mutex<HashMap<(PublicKey, Budgeted), (u64, u32)>>,
    /// The highest sequence number (reports, inventories) or time (digests, pulls) seen from each
    /// member, per kind of message.
    seen: Mutex<HashMap<(PublicKey, Seen), u64>>,
    /// Peers refused at the door lately, for the dial back-off.
    refused_peers: Mutex<HashMap<PeerId, std::time::Instant>>,
    /// Fired when the revocation list or the root changed: the swarm task checks its peers again.
    pub changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// Why the node cannot start with its certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error(
        "no node certificate at {path}: enroll this node (`lanpatch-node id` prints its key; an admin runs `lanpatch-signer enroll node --node-key KEY ...` and copies the file here), or set enrollment = \"off\" in node.toml for a throwaway test fleet"
    )]
    Missing { path: String },
    #[error("node certificate {path} is refused: {refusal}")]
    Refused { path: String, refusal: MemberRefusal },
    #[error("cannot read node certificate {path}: {why}")]
    Unreadable { path: String, why: String },
}

impl Members {
    /// Loads and checks this node's certificate (C1 to C6 against its own key) and the
    /// revocation list kept in the data directory.
    pub fn load(
        cert_path: &Path,
        revocations_path: &Path,
        root: &Root,
        fleet: Hash32,
        me: &PublicKey,
        limits: Limits,
        now: Timestamp,
    ) -> Result<Members> {
        let revoked = match read_capped(revocations_path, limits.max_envelope_bytes) {
            // A list that no longer verifies (its enroll keys rotated away) does not stop the
            // node: it starts without one and takes the next list published under the new keys.
            Ok(b) => match Envelope::decode(&b, &limits).map_err(|e| e.to_string()).and_then(|env| {
                membership::verify_revocations(env, root, &fleet, None, &limits).map_err(|e| e.to_string())
            }) {
                Ok(list) => Some(list),
                Err(e) => {
                    tracing::warn!(
                        "the revocation list kept in {} is not used: {e}; publish the current list again (lanpatch-signer publish --metadata)",
                        revocations_path.display()
                    );
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(anyhow!("cannot read {}: {e}", revocations_path.display())),
        };
        let own = read_own_certificate(cert_path, root, &fleet, me, revoked.as_ref().map(|r| r.value()), &limits, now)?;
        Ok(Members::new(fleet, limits, own, root.clone(), revoked))
    }

    fn new(
        fleet: Hash32,
        limits: Limits,
        own: Signed<NodeCertificate>,
        root: Root,
        revoked: Option<Signed<Revocations>>,
    ) -> Members {
        Members {
            fleet,
            limits,
            own: RwLock::new(own),
            root: RwLock::new(root),
            revoked: RwLock::new(revoked),
            admitted: Mutex::default(),
            reverify: Default::default(),
            refused: Default::default(),
            recent: Mutex::default(),
            budget: Mutex::default(),
            refused_peers: Mutex::default(),
            seen: Mutex::default(),
            changed: Notify::new(),
        }
    }

    /// A `Members` for unit tests: `own` is this node's certificate envelope (not checked here).
    #[cfg(test)]
    pub(crate) fn for_test(root: Root, fleet: Hash32, own: Envelope) -> Members {
        let own = Signed::<NodeCertificate>::open(own, &Limits::default())
            .unwrap_or_else(|e| panic!("test certificate: {e}"));
        Members::new(fleet, Limits::default(), own, root, None)
    }

    /// This node's certificate.
    pub fn own(&self) -> NodeCertificate {
        read(&self.own).value().clone()
    }
    pub fn own_envelope_bytes(&self) -> Vec<u8> {
        read(&self.own).to_bytes()
    }
    /// This node's certificate as an envelope, for the messages it signs.
    pub fn own_envelope(&self) -> Envelope {
        read(&self.own).envelope().clone()
    }

    /// Steps C1 to C6 for a peer at the door: `bytes` must be a certificate for `peer`'s key.
    pub fn check_peer(
        &self,
        bytes: &[u8],
        peer: &PeerId,
        now: Timestamp,
    ) -> Result<(NodeCertificate, Envelope), MemberRefusal> {
        if bytes.is_empty() {
            return Err(MemberRefusal::NoCertificate);
        }
        let env = Envelope::decode(bytes, &self.limits).map_err(|e| MemberRefusal::Malformed(e.to_string()))?;
        // The key the certificate names must be the key the peer proved in the Noise handshake.
        let named = Signed::<NodeCertificate>::open(env.clone(), &self.limits)
            .map_err(|e| MemberRefusal::Malformed(e.to_string()))?
            .value()
            .node;
        if peer_of(&named).as_ref() != Some(peer) {
            return Err(MemberRefusal::WrongNode {
                certified: named,
                actual: key_of(peer).unwrap_or(PublicKey([0; 32])),
            });
        }
        let root = read(&self.root);
        let revoked = read(&self.revoked);
        membership::verify_certificate(
            &env,
            &root,
            &self.fleet,
            &named,
            revoked.as_ref().map(|r| r.value()),
            &self.limits,
            now,
        )
        .map(|c| (c.value().clone(), env))
    }

    /// Step N4 for a node message: its author is a member now, for the ring it speaks for.
    pub fn check_author<T: FromNode>(&self, msg: &T, now: Timestamp) -> Result<NodeCertificate, MemberRefusal> {
        let root = read(&self.root);
        let revoked = read(&self.revoked);
        let check = MemberCheck { root: &root, fleet: &self.fleet, revoked: revoked.as_ref().map(|r| r.value()), now };
        lanpatch_protocol::report::check_author(msg, &check, &self.limits)
    }

    /// Notes a refusal at the door, for [`Members::refused_lately`].
    pub fn refused(&self, peer: PeerId) {
        let mut r = lock(&self.refused_peers);
        if r.len() >= REFUSED_PEERS {
            r.retain(|_, at| at.elapsed() < REFUSED_BACKOFF);
        }
        if r.len() < REFUSED_PEERS {
            r.insert(peer, std::time::Instant::now());
        }
    }

    /// Whether `peer` was refused at the door within [`REFUSED_BACKOFF`].
    pub fn refused_lately(&self, peer: &PeerId) -> bool {
        lock(&self.refused_peers).get(peer).is_some_and(|at| at.elapsed() < REFUSED_BACKOFF)
    }

    pub fn admit(&self, peer: PeerId, cert: NodeCertificate, envelope: Envelope) {
        lock(&self.refused_peers).remove(&peer);
        lock(&self.admitted).insert(peer, (cert, envelope));
    }
    pub fn forget(&self, peer: &PeerId) {
        lock(&self.admitted).remove(peer);
    }
    /// What the certificate of an admitted peer says.
    pub fn certificate_of(&self, peer: &PeerId) -> Option<NodeCertificate> {
        lock(&self.admitted).get(peer).map(|(c, _)| c.clone())
    }

    /// Admitted peers that are no longer members at `now` (expired, revoked), with why; they are
    /// forgotten here, and the caller disconnects them.
    pub fn sweep(&self, now: Timestamp) -> Vec<(PeerId, MemberRefusal)> {
        let full = self.reverify.swap(false, Ordering::Relaxed);
        let root = read(&self.root);
        let revoked = read(&self.revoked);
        let revoked = revoked.as_ref().map(|r| r.value());
        let mut admitted = lock(&self.admitted);
        let mut out = Vec::new();
        admitted.retain(|peer, (cert, env)| {
            let checked = if full {
                membership::verify_certificate(env, &root, &self.fleet, &cert.node, revoked, &self.limits, now)
                    .map(|_| ())
            } else {
                membership::check_member(cert, &self.fleet, &cert.node, revoked, now)
            };
            match checked {
                Ok(()) => true,
                Err(e) => {
                    out.push((*peer, e));
                    false
                }
            }
        });
        out
    }

    /// Counts a refusal and keeps it in the bounded recent list.
    pub fn record(&self, peer: String, refusal: &MemberRefusal, now: Timestamp) {
        let reason = refusal.reason();
        if let Some(c) = RefusalReason::ALL.iter().position(|r| *r == reason).and_then(|i| self.refused.get(i)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let mut recent = lock(&self.recent);
        if recent.len() >= RECENT_REFUSALS {
            recent.pop_front();
        }
        recent.push_back(DoorRefusal { at: now, peer, reason, detail: refusal.to_string() });
    }

    /// Refusals so far, by reason (for metrics).
    pub fn refusals(&self) -> Vec<(RefusalReason, u64)> {
        RefusalReason::ALL.iter().zip(&self.refused).map(|(r, c)| (*r, c.load(Ordering::Relaxed))).collect()
    }
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
    pub fn recent(&self) -> Vec<DoorRefusal> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// The revocation list held, as envelope bytes (for the catalog and the data directory).
    pub fn revocations_bytes(&self) -> Option<Vec<u8>> {
        read(&self.revoked).as_ref().map(|r| r.to_bytes())
    }

    /// Steps V1 to V4, then keeps the list if it is newer than the one held. Returns whether it
    /// was new; the swarm task is told to check its peers again.
    pub fn offer_revocations(&self, env: Envelope) -> Result<bool, RevocationError> {
        let root = read(&self.root).clone();
        let mut held = write(&self.revoked);
        let list =
            membership::verify_revocations(env, &root, &self.fleet, held.as_ref().map(|r| r.value()), &self.limits)?;
        let new = held.as_ref().is_none_or(|h| h.value().issued < list.value().issued);
        if new {
            *held = Some(list);
            drop(held);
            self.changed.notify_one();
        }
        Ok(new)
    }

    /// A new trust root (rotation): later checks use its enroll keys.
    pub fn set_root(&self, root: Root) {
        *write(&self.root) = root;
        self.reverify.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Reads this node's certificate again (a renewal: `lanpatch-node join`, then SIGHUP) and
    /// uses it from now on if it verifies (steps C1 to C6); otherwise keeps the one in use.
    pub fn reload_own(&self, cert_path: &Path, me: &PublicKey, now: Timestamp) -> Result<NodeCertificate> {
        let cert = {
            let root = read(&self.root);
            let revoked = read(&self.revoked);
            read_own_certificate(
                cert_path,
                &root,
                &self.fleet,
                me,
                revoked.as_ref().map(|r| r.value()),
                &self.limits,
                now,
            )?
        };
        let (new, own) = (cert.value(), self.own());
        if (&new.ring, &new.site, &new.tags, &new.hostname) != (&own.ring, &own.site, &own.tags, &own.hostname) {
            anyhow::bail!(
                "the new certificate moves this node (ring, site, tags or hostname): restart the node to apply it"
            );
        }
        let taken = new.clone();
        *write(&self.own) = cert;
        Ok(taken)
    }

    /// Whether `value` (a sequence number or a time) is newer than anything seen from `node` for
    /// `what`; if so it is the new mark.
    pub fn is_new(&self, node: &PublicKey, what: Seen, value: u64) -> bool {
        let mut seen = lock(&self.seen);
        if seen.len() >= SEEN_ENTRIES {
            seen.clear();
        }
        match seen.get_mut(&(*node, what)) {
            Some(last) if *last >= value => false,
            Some(last) => {
                *last = value;
                true
            }
            None => {
                seen.insert((*node, what), value);
                true
            }
        }
    }

    /// Whether `node` may make this node act on one more message of `class` this minute.
    pub fn within_budget(&self, node: &PublicKey, class: Budgeted, now: Timestamp) -> bool {
        let minute = now.0 / 60;
        let mut budget = lock(&self.budget);
        if budget.len() >= BUDGET_ENTRIES {
            budget.retain(|_, (m, _)| *m == minute);
        }
        let e = budget.entry((*node, class)).or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        e.1 = e.1.saturating_add(1);
        e.1 <= class.per_minute()
    }
}

/// Reads this node's certificate file (at most `max_envelope_bytes`) and checks it for `me`
/// (steps C1 to C6), with the typed error `run` turns into exit 4.
fn read_own_certificate(
    cert_path: &Path,
    root: &Root,
    fleet: &Hash32,
    me: &PublicKey,
    revoked: Option<&Revocations>,
    limits: &Limits,
    now: Timestamp,
) -> Result<Signed<NodeCertificate>> {
    let path = cert_path.display().to_string();
    let bytes = match read_capped(cert_path, limits.max_envelope_bytes) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CertificateError::Missing { path }.into()),
        Err(e) => return Err(CertificateError::Unreadable { path, why: e.to_string() }.into()),
    };
    let env = Envelope::decode(&bytes, limits).map_err(|e| CertificateError::Refused {
        path: path.clone(),
        refusal: MemberRefusal::Malformed(e.to_string()),
    })?;
    membership::verify_certificate(&env, root, fleet, me, revoked, limits, now)
        .map_err(|refusal| CertificateError::Refused { path, refusal }.into())
}

/// The node key of an ed25519 peer id (its identity multihash holds the key).
pub fn key_of(peer: &PeerId) -> Option<PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(PublicKey(pk.try_into_ed25519().ok()?.to_bytes()))
}

/// Reads at most `max` bytes of a regular file (a larger file is an error, not a truncation).
fn read_capped(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"));
    }
    let mut out = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut out)?;
    if out.len() > max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_budget_is_per_class_and_per_minute() {
        let m = members_for_test();
        let k = PublicKey([1; 32]);
        let t = Timestamp(600);
        let n = Budgeted::AntiEntropy.per_minute();
        assert!((0..n).all(|_| m.within_budget(&k, Budgeted::AntiEntropy, t)));
        assert!(!m.within_budget(&k, Budgeted::AntiEntropy, t), "over the budget");
        assert!(m.within_budget(&k, Budgeted::Reports, t), "another class has its own budget");
        assert!(m.within_budget(&PublicKey([2; 32]), Budgeted::AntiEntropy, t), "another member too");
        assert!(m.within_budget(&k, Budgeted::AntiEntropy, Timestamp(660)), "the next minute starts afresh");
    }

    #[test]
    fn only_newer_messages_are_new_per_author_and_kind() {
        let m = members_for_test();
        let (a, b) = (PublicKey([1; 32]), PublicKey([2; 32]));
        assert!(m.is_new(&a, Seen::Inventory, 10));
        assert!(!m.is_new(&a, Seen::Inventory, 10), "the same again is a replay");
        assert!(!m.is_new(&a, Seen::Inventory, 9), "an older one too");
        assert!(m.is_new(&a, Seen::Inventory, 11));
        assert!(m.is_new(&b, Seen::Inventory, 5), "per author");
        assert!(m.is_new(&a, Seen::Report(Hash32([3; 32])), 5), "per kind and release");
        assert!(m.is_new(&a, Seen::Report(Hash32([4; 32])), 5));
    }

    fn members_for_test() -> Members {
        let root = Root {
            version: lanpatch_protocol::Version(1),
            fleet: None,
            expires: Timestamp(0),
            roles: Default::default(),
        };
        Members::for_test(root, Hash32([0; 32]), Signed::new(cert()).into_envelope())
    }

    fn cert() -> NodeCertificate {
        NodeCertificate {
            fleet: Hash32([0; 32]),
            node: PublicKey([1; 32]),
            hostname: "h".into(),
            ring: "broad".parse().unwrap(),
            site: "default".parse().unwrap(),
            tags: vec![],
            issued: Timestamp(0),
            expires: Timestamp(1),
        }
    }

    #[test]
    fn a_peer_id_and_its_node_key_map_to_each_other() {
        let kp = identity::Keypair::generate_ed25519();
        let peer = kp.public().to_peer_id();
        let key = key_of(&peer).unwrap();
        assert_eq!(peer_of(&key), Some(peer));
    }
}
