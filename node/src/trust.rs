//! What this node trusts right now: the current root, the latest manifest per product, approvals
//! and yanks. Checking is done by `lanpatch_protocol::verify`; this module keeps the state those
//! checks need (the current root, the highest trusted version per product) and decides what is new.

use std::collections::HashMap;

use lanpatch_protocol::verify::{self, Trusted};
use lanpatch_protocol::{
    Approval, Envelope, Hash32, Kind, Limits, ProductName, ReleaseManifest, RingName, Root, Signed, Statement,
    Timestamp, VerifyError, Version, Yank, fleet_id,
};

pub struct Trust {
    pub root: Signed<Root>,
    /// Every root accepted so far, oldest first, as envelope bytes (served to late joiners).
    pub root_chain: Vec<Vec<u8>>,
    pub fleet: Hash32,
    pub limits: Limits,
    pub manifests: HashMap<Hash32, Signed<ReleaseManifest>>,
    pub latest: HashMap<ProductName, Trusted>,
    pub approvals: HashMap<(Hash32, RingName), Signed<Approval>>,
    pub yanks: HashMap<Hash32, Signed<Yank>>,
    /// The newest freshness statement (when the root has a timestamp role).
    pub statement: Option<Signed<Statement>>,
}

/// What an accepted message was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    Root { version: u64, new: bool },
    Manifest { hash: Hash32, new: bool },
    Approval { manifest: Hash32, ring: RingName, new: bool },
    Yank { manifest: Hash32, new: bool },
    Statement { issued: Timestamp, new: bool },
}

impl Accepted {
    pub fn is_new(&self) -> bool {
        match self {
            Accepted::Root { new, .. }
            | Accepted::Manifest { new, .. }
            | Accepted::Approval { new, .. }
            | Accepted::Yank { new, .. }
            | Accepted::Statement { new, .. } => *new,
        }
    }
}

/// A checked message not yet applied to the state (so a caller can do work, such as importing
/// files, between checking and committing).
pub enum Checked {
    KnownRoot,
    Root(Signed<Root>, Vec<u8>),
    Manifest(Box<Signed<ReleaseManifest>>),
    Approval(Signed<Approval>),
    Yank(Signed<Yank>),
    Statement(Box<Signed<Statement>>),
}

impl Trust {
    /// Starts from the root file a node is provisioned with (node.toml `trust_root`).
    pub fn from_file(path: &std::path::Path, limits: Limits, now: Timestamp) -> anyhow::Result<Trust> {
        use anyhow::Context;
        let first = std::fs::read(path).with_context(|| format!("cannot read trust root {}", path.display()))?;
        Trust::new(&first, limits, now).with_context(|| format!("trust root {} refused", path.display()))
    }

    /// Starts from the provisioned root (steps R1 to R3 of docs/PROTOCOL.md).
    pub fn new(first_root: &[u8], limits: Limits, now: Timestamp) -> Result<Trust, VerifyError> {
        let root = verify::verify_first_root(first_root, &limits, now)?;
        let fleet = fleet_id(root.value(), &root.envelope().payload);
        Ok(Trust {
            root,
            root_chain: vec![first_root.to_vec()],
            fleet,
            limits,
            manifests: HashMap::new(),
            latest: HashMap::new(),
            approvals: HashMap::new(),
            yanks: HashMap::new(),
            statement: None,
        })
    }

    /// Checks a message without changing anything (step 1, the envelope, decoded here).
    pub fn check(&self, bytes: &[u8], now: Timestamp) -> Result<Checked, VerifyError> {
        self.check_envelope(Envelope::decode(bytes, &self.limits)?, bytes, now)
    }

    /// Checks a message whose envelope the caller decoded from `bytes` at the edge; nothing is
    /// decoded twice.
    pub fn check_envelope(&self, envelope: Envelope, bytes: &[u8], now: Timestamp) -> Result<Checked, VerifyError> {
        let root = self.root.value();
        Ok(match envelope.kind {
            // A root of the chain seen again (catalog sync): not new, not an attack.
            Kind::Root if self.root_chain.iter().any(|b| b == bytes) => Checked::KnownRoot,
            Kind::Root => Checked::Root(
                verify::verify_root_update_envelope(&self.root, envelope, &self.limits, now)?,
                bytes.to_vec(),
            ),
            Kind::Manifest => Checked::Manifest(Box::new(verify::verify_manifest_envelope(
                envelope,
                root,
                &self.limits,
                now,
                |product| self.latest.get(product).copied(),
            )?)),
            Kind::Approval => {
                let a = verify::verify_approval_envelope(envelope, root, &self.limits, now)?;
                // Step A5 where the manifest is known; otherwise it is checked when it arrives.
                if let Some(m) = self.manifests.get(&a.value().manifest) {
                    verify::approval_matches(a.value(), m)?;
                }
                Checked::Approval(a)
            }
            Kind::Yank => Checked::Yank(verify::verify_yank_envelope(envelope, root, &self.limits, now)?),
            Kind::Statement => {
                let st = verify::verify_statement_envelope(envelope, root, &self.fleet, &self.limits, now)?;
                // Step S5: never go back to an older statement (the same one again is fine).
                if let Some(held) = &self.statement
                    && st.value().issued < held.value().issued
                {
                    return Err(VerifyError::StatementRollback {
                        held: held.value().issued,
                        offered: st.value().issued,
                    });
                }
                Checked::Statement(Box::new(st))
            }
            // Node reports are not fleet metadata, and membership is checked by `Members`:
            // node.rs routes them before they get here.
            Kind::Report | Kind::Inventory | Kind::Digest | Kind::Pull | Kind::Certificate | Kind::Revocation => {
                return Err(VerifyError::Signature(lanpatch_protocol::SignatureError::WrongKind {
                    expected: Kind::Manifest,
                    actual: envelope.kind,
                }));
            }
        })
    }

    /// Applies a checked message.
    pub fn commit(&mut self, checked: Checked) -> Accepted {
        match checked {
            Checked::KnownRoot => Accepted::Root { version: self.root.value().version.0, new: false },
            Checked::Root(r, bytes) => {
                let version = r.value().version.0;
                self.root = r;
                self.root_chain.push(bytes);
                Accepted::Root { version, new: true }
            }
            Checked::Manifest(m) => {
                let m = *m;
                let hash = m.payload_hash();
                let v = m.value();
                let newer = self.latest.get(&v.product).is_none_or(|t| v.version > t.version);
                if newer {
                    self.latest.insert(v.product.clone(), Trusted { version: v.version, manifest: hash });
                }
                let new = !self.manifests.contains_key(&hash);
                self.manifests.insert(hash, m);
                Accepted::Manifest { hash, new }
            }
            Checked::Approval(a) => {
                let key = (a.value().manifest, a.value().ring.clone());
                let new = self.approvals.get(&key).is_none_or(|old| {
                    a.value().issued > old.value().issued
                        || (a.value().issued == old.value().issued
                            && a.envelope().signatures.len() > old.envelope().signatures.len())
                });
                if new {
                    self.approvals.insert(key.clone(), a);
                }
                Accepted::Approval { manifest: key.0, ring: key.1, new }
            }
            Checked::Statement(st) => {
                let issued = st.value().issued;
                let new = self.statement.as_ref().is_none_or(|held| issued > held.value().issued);
                if new {
                    self.statement = Some(*st);
                }
                Accepted::Statement { issued, new }
            }
            Checked::Yank(y) => {
                let manifest = y.value().manifest;
                let new = !self.yanks.contains_key(&manifest);
                self.yanks.entry(manifest).or_insert(y);
                Accepted::Yank { manifest, new }
            }
        }
    }

    /// Checks and applies in one step.
    pub fn ingest(&mut self, bytes: &[u8], now: Timestamp) -> Result<Accepted, VerifyError> {
        let checked = self.check(bytes, now)?;
        Ok(self.commit(checked))
    }

    /// What a late joiner needs: the root chain, the latest manifest of every product with its
    /// approvals, and every yank; nothing that has expired by `now`.
    pub fn catalog(&self, now: Timestamp) -> Vec<Vec<u8>> {
        let mut out = self.root_chain.clone();
        for t in self.latest.values() {
            if let Some(m) = self.manifests.get(&t.manifest).filter(|m| m.value().expires > now) {
                out.push(m.to_bytes());
                for ((mh, _), a) in &self.approvals {
                    if *mh == t.manifest && a.value().expires > now {
                        out.push(a.to_bytes());
                    }
                }
            }
        }
        out.extend(self.yanks.values().filter(|y| y.value().expires > now).map(|y| y.to_bytes()));
        out.extend(self.statement.iter().filter(|st| st.value().expires > now).map(|st| st.to_bytes()));
        out
    }

    /// Whether the root asks for freshness statements.
    pub fn has_timestamp_role(&self) -> bool {
        self.root.value().roles.contains_key(&lanpatch_protocol::Role::Timestamp)
    }

    /// What is current, as this node sees it (signed into a statement by the node holding the
    /// timestamp key): per product the latest unexpired manifest, its unexpired approvals' rings,
    /// and whether it is yanked.
    pub fn current_set(&self, now: Timestamp) -> Vec<lanpatch_protocol::Current> {
        let mut out: Vec<lanpatch_protocol::Current> = self
            .latest
            .iter()
            .filter_map(|(product, t)| {
                let m = self.manifests.get(&t.manifest).filter(|m| m.value().expires > now)?;
                let mut rings: Vec<RingName> = self
                    .approvals
                    .iter()
                    .filter(|((mh, _), a)| *mh == t.manifest && a.value().expires > now)
                    .map(|((_, r), _)| r.clone())
                    .collect();
                rings.sort();
                Some(lanpatch_protocol::Current {
                    product: product.clone(),
                    version: m.value().version,
                    manifest: t.manifest,
                    rings,
                    yanked: self.yanks.contains_key(&t.manifest),
                })
            })
            .collect();
        out.sort_by(|a, b| a.product.cmp(&b.product));
        out
    }

    /// Drops what has expired by `now` from memory: manifests, approvals, yanks. The highest
    /// version seen per product stays (`latest`), so an expired release still blocks rollback to
    /// an older one. Returns the manifests dropped.
    pub fn expire(&mut self, now: Timestamp) -> Vec<Signed<ReleaseManifest>> {
        let gone_hashes: Vec<Hash32> =
            self.manifests.iter().filter(|(_, m)| m.value().expires <= now).map(|(h, _)| *h).collect();
        let gone: Vec<Signed<ReleaseManifest>> = gone_hashes.iter().filter_map(|h| self.manifests.remove(h)).collect();
        self.approvals.retain(|_, a| a.value().expires > now && !gone_hashes.contains(&a.value().manifest));
        // A yank outlives its release by design; it goes when it expires itself.
        self.yanks.retain(|_, y| y.value().expires > now);
        gone
    }

    /// Whether a manifest is trusted and unexpired at `now` (checked at every use).
    pub fn is_current(&self, manifest: &Hash32, now: Timestamp) -> bool {
        self.manifests.get(manifest).is_some_and(|m| m.value().expires > now)
    }

    /// Remembers the highest version of a product seen before (stored metadata that expired since),
    /// so a restart does not forget what an older version must not replace.
    pub fn remember_version(&mut self, product: ProductName, version: Version, manifest: Hash32) {
        let newer = self.latest.get(&product).is_none_or(|t| version > t.version);
        if newer {
            self.latest.insert(product, Trusted { version, manifest });
        }
    }

    pub fn approved_rings(&self, manifest: &Hash32) -> Vec<RingName> {
        let mut rings: Vec<RingName> =
            self.approvals.keys().filter(|(m, _)| m == manifest).map(|(_, r)| r.clone()).collect();
        rings.sort();
        rings
    }

    /// The rollout rules each ring's approval of `manifest` signed, with that approval's issue
    /// time (the failure rate counts outcomes from then): read by the console and the webhook.
    pub fn ring_rules(
        &self,
        manifest: &Hash32,
    ) -> std::collections::BTreeMap<String, (lanpatch_protocol::RolloutRules, lanpatch_protocol::Timestamp)> {
        self.approvals
            .iter()
            .filter(|((m, _), _)| m == manifest)
            .filter_map(|((_, ring), a)| a.value().rules.clone().map(|r| (ring.to_string(), (r, a.value().issued))))
            .collect()
    }

    /// The highest trusted manifest of every product.
    pub fn current_manifests(&self) -> Vec<Signed<ReleaseManifest>> {
        self.latest.values().filter_map(|t| self.manifests.get(&t.manifest).cloned()).collect()
    }
}
