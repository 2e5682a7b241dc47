//! The co-signing flow: for one bundle, what has enough signatures and what waits for whose,
//! and the exact command the next admin runs. `pending` prints it for every bundle; `release
//! sign`, `approve` and `yank` print the next step of the one they signed.
//!
//! Thresholds and key names come from the trust root; who signed comes from verifying each
//! signature (a signature that does not verify, or by a key outside the role, is nobody's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lanpatch_protocol::{Approval, Envelope, Limits, PublicKey, ReleaseManifest, RingName, Role, Root, Signed, Yank};

use crate::bundle::{self, Bundle};

/// What carries signatures in a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Manifest,
    Approval(RingName),
    Yank,
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Manifest => f.write_str("release manifest"),
            Item::Approval(r) => write!(f, "approval for ring {r}"),
            Item::Yank => f.write_str("yank"),
        }
    }
}

/// One signed file of a bundle against its role.
#[derive(Clone, Debug)]
pub struct Standing {
    pub item: Item,
    pub role: Role,
    /// Keys of the role whose signature verifies, in signing order.
    pub signed_by: Vec<PublicKey>,
    pub threshold: u32,
    /// Keys of the role that have not signed.
    pub unsigned: Vec<PublicKey>,
}

impl Standing {
    fn of(item: Item, role: Role, env: &Envelope, root: &Root) -> Standing {
        let keys = root.keys(role);
        let signed_by = env.valid_signers(&keys);
        let unsigned = keys.keys.iter().filter(|k| !signed_by.contains(k)).copied().collect();
        Standing { item, role, signed_by, threshold: keys.threshold, unsigned }
    }

    pub fn missing(&self) -> u32 {
        self.threshold.saturating_sub(self.signed_by.len() as u32)
    }

    pub fn complete(&self) -> bool {
        self.missing() == 0 && self.threshold > 0
    }
}

/// A bundle's signed files and their standing.
pub struct BundleState {
    pub dir: PathBuf,
    pub manifest: Signed<ReleaseManifest>,
    pub items: Vec<Standing>,
}

/// Reads a bundle's manifest, approvals and yank and measures each against `root`.
pub fn bundle_state(dir: &Path, root: &Root, limits: &Limits) -> Result<BundleState> {
    let b = Bundle::new(dir);
    let manifest = bundle::load::<ReleaseManifest>(&b.manifest_path(), limits)?;
    let mut items = vec![Standing::of(Item::Manifest, Role::Release, manifest.envelope(), root)];
    let mut rings: Vec<(RingName, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(b.approvals_dir()) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some(lanpatch_protocol::bundle::BundleLayout::APPROVAL_EXT)
            {
                continue;
            }
            let ring = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<RingName>().ok());
            if let Some(ring) = ring {
                rings.push((ring, path));
            }
        }
    }
    rings.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (ring, path) in rings {
        let a = bundle::load::<Approval>(&path, limits)?;
        // The ring is the signed one; a file named after another ring is not that ring's approval.
        if a.value().manifest == manifest.payload_hash() && a.value().ring == ring {
            items.push(Standing::of(Item::Approval(ring), Role::Approve, a.envelope(), root));
        }
    }
    if b.yank_path().exists() {
        let y = bundle::load::<Yank>(&b.yank_path(), limits)?;
        if y.value().manifest == manifest.payload_hash() {
            items.push(Standing::of(Item::Yank, Role::Approve, y.envelope(), root));
        }
    }
    Ok(BundleState { dir: dir.to_path_buf(), manifest, items })
}

/// Names for keys: `NAME.pub` files beside the root and in the current directory. A key is
/// shown by the secret key file its public file belongs to (`bob.key` for `bob.key.pub`), else
/// by its short id.
#[derive(Default)]
pub struct KeyNames(BTreeMap<PublicKey, String>);

impl KeyNames {
    pub fn scan(dirs: &[&Path]) -> KeyNames {
        let mut names = BTreeMap::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            // In name order, the root's directory first: the same key always gets the same name.
            let mut entries: Vec<std::fs::DirEntry> = entries.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let path = e.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".pub")) else {
                    continue;
                };
                // Public key files are 64 hex digits and a newline; anything larger is not one.
                if e.metadata().map(|m| !m.is_file() || m.len() > 256).unwrap_or(true) {
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(&path) else { continue };
                if let Ok(k) = text.trim().parse::<PublicKey>() {
                    names.entry(k).or_insert_with(|| name.to_string());
                }
            }
        }
        KeyNames(names)
    }

    /// A key's name, quoted for a shell when it needs it (it is a file name someone chose).
    pub fn name(&self, k: &PublicKey) -> String {
        match self.0.get(k) {
            Some(n) => shlex::try_quote(n).map(|q| q.into_owned()).unwrap_or_else(|_| k.short()),
            None => k.short(),
        }
    }

    /// What goes after `--key` for one of `candidates`: the key file when there is one choice
    /// with a known name, else a placeholder naming the choices.
    pub fn key_arg(&self, role: Role, candidates: &[PublicKey]) -> String {
        match candidates {
            [one] if self.0.contains_key(one) => self.name(one),
            _ => {
                let names: Vec<String> = candidates.iter().map(|k| self.name(k)).collect();
                format!("<{role} key: {}>", names.join(" or "))
            }
        }
    }
}

/// The root `--root` names, else `root.lpr` in the current directory.
pub fn load_root(root: Option<&Path>, limits: &Limits) -> Result<(PathBuf, Signed<Root>)> {
    let path = root.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("root.lpr"));
    let r = bundle::load::<Root>(&path, limits)
        .with_context(|| format!("the trust root {} tells who signs what (give --root)", path.display()))?;
    Ok((path, r))
}

/// `arg` quoted for a shell when it needs it.
pub fn sh(arg: &Path) -> String {
    let s = arg.display().to_string();
    shlex::try_quote(&s).map(|q| q.into_owned()).unwrap_or(s)
}

/// The command that adds the next signature to `s` in bundle `dir`.
pub fn sign_command(s: &Standing, names: &KeyNames, dir: &Path) -> String {
    let key = names.key_arg(s.role, &s.unsigned);
    let d = sh(dir);
    match &s.item {
        Item::Manifest => format!("lanpatch-signer release sign --key {key} {d}"),
        Item::Approval(ring) => format!("lanpatch-signer approve --key {key} --ring {ring} {d}"),
        Item::Yank => format!("lanpatch-signer yank --key {key} {d}"),
    }
}

/// One line on where `s` stands: who signed, and how many more it needs.
pub fn describe(s: &Standing, names: &KeyNames) -> String {
    let who: Vec<String> = s.signed_by.iter().map(|k| names.name(k)).collect();
    let by = if who.is_empty() { "nobody".to_string() } else { who.join(", ") };
    if s.threshold == 0 {
        format!("{}: the trust root has no {} role: nodes will not accept it", s.item, s.role)
    } else if s.complete() {
        format!("{}: signed by {by} ({} of {}): complete", s.item, s.signed_by.len(), s.threshold)
    } else {
        format!(
            "{}: signed by {by} ({} of {}): waiting for {} more {} signature(s)",
            s.item,
            s.signed_by.len(),
            s.threshold,
            s.missing(),
            s.role
        )
    }
}

/// After a signature: where the item stands and the next command, printed as `next:` lines.
pub fn print_next(dir: &Path, item: &Item, root: Option<&Path>, node: Option<&Path>, limits: &Limits) {
    let Ok((root_path, root)) = load_root(root, limits) else {
        println!(
            "next: another signer adds theirs if the role's threshold needs more, then `lanpatch-signer pending` shows what is missing (give --root)"
        );
        return;
    };
    let base = root_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let names = KeyNames::scan(&[base, Path::new(".")]);
    let Ok(state) = bundle_state(dir, root.value(), limits) else { return };
    let Some(s) = state.items.iter().find(|s| s.item == *item) else { return };
    println!("{}", describe(s, &names));
    let manifest_ok = state.items.first().is_some_and(Standing::complete);
    if !s.complete() {
        println!("next, by another {} key holder: {}", s.role, sign_command(s, &names, dir));
    } else if *item == Item::Manifest && state.items.len() == 1 {
        let approvers = root.value().keys(Role::Approve).keys;
        println!(
            "next, by an approve key holder: lanpatch-signer approve --key {} --ring canary {} (canary: the first ring of the default rollout order)",
            names.key_arg(Role::Approve, &approvers),
            sh(dir)
        );
        println!(
            "(or publish it now, before any approval, to seed its files: lanpatch-signer publish --node <admin node's control.sock> {})",
            sh(dir)
        );
    } else if *item != Item::Manifest && !manifest_ok {
        println!("next: the release manifest needs its release signatures first: lanpatch-signer pending {}", sh(dir));
    } else {
        let node = node.map(sh).unwrap_or_else(|| "<admin node's control.sock>".to_string());
        println!("next: lanpatch-signer publish --node {node} {}", sh(dir));
    }
}
