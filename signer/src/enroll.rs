//! `lanpatch-signer enroll`: node certificates (docs/PROTOCOL.md "Membership"). A certificate binds
//! a node key to the hostname, ring, site and tags the admins gave it, until an expiry; a
//! threshold of the trust root's enroll role signs it. Also the enroll-role helpers `revoke` uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;
use lanpatch_protocol::membership::verify_certificate;
use lanpatch_protocol::{
    Envelope, Hash32, Kind, Limits, NodeCertificate, Payload, PublicKey, Revocations, RingName, Role, RoleKeys, Root,
    Signed, SiteName, Tag, Timestamp, fleet_id,
};

use crate::bundle;
use crate::exit::{Code, exit};
use crate::keys::{self, KeyMode};
use crate::time;

/// Mode of certificates and revocation lists: public documents.
pub const PUBLIC_MODE: u32 = 0o644;

#[derive(Subcommand)]
pub enum EnrollCmd {
    /// Issue a certificate for one node, signed by the given enroll keys.
    Node(NodeArgs),
    /// Issue certificates for every host listed in a file: DIR/<hostname>.cert each. Every line
    /// is checked before anything is written.
    Batch(BatchArgs),
    /// Add enroll keys' signatures to a node certificate (or a revocation list) and rewrite it.
    Sign(SignArgs),
    /// Print a node certificate; with --root, also whether it verifies (exit 1 if not).
    Show(ShowArgs),
}

#[derive(Args)]
pub struct SignerArgs {
    /// The trust root (its enroll role says who may sign).
    #[arg(long)]
    pub root: PathBuf,
    /// A secret enroll key to sign with. Repeat for each key.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
}

#[derive(Args)]
pub struct NodeArgs {
    #[command(flatten)]
    signer: SignerArgs,
    /// The node's ed25519 public key, 64 hex digits (`lanpatch-node status`: node_key).
    #[arg(long)]
    node_key: String,
    /// The node's hostname (reports and hostname targeting use it).
    #[arg(long)]
    hostname: String,
    /// The rollout ring the node is enrolled in.
    #[arg(long)]
    ring: RingName,
    /// The site the node is at.
    #[arg(long, default_value = "default")]
    site: SiteName,
    /// A tag for release targeting. Repeatable.
    #[arg(long = "tag")]
    tags: Vec<Tag>,
    /// When the certificate expires: a duration (365d) or a date.
    #[arg(long, default_value = "365d")]
    expires: String,
    /// Where to write the certificate (mode 0644; never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BatchArgs {
    #[command(flatten)]
    signer: SignerArgs,
    /// One host per line: `hostname node-key ring [site] [tag,tag...]`; `#` starts a comment.
    #[arg(long)]
    hosts: PathBuf,
    /// Where to write <hostname>.cert for each host (created with mode 0755 if missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// When the certificates expire: a duration (365d) or a date.
    #[arg(long, default_value = "365d")]
    expires: String,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SignArgs {
    #[command(flatten)]
    signer: SignerArgs,
    /// The certificate (or revocation list) file.
    file: PathBuf,
}

#[derive(Args)]
pub struct ShowArgs {
    /// Also check the certificate against this trust root (exit 1 if it does not verify).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// The certificate file.
    file: PathBuf,
}

pub fn run(cmd: EnrollCmd, limits: &Limits, now: Timestamp, key_mode: KeyMode) -> Result<()> {
    match cmd {
        EnrollCmd::Node(a) => node(a, limits, now, key_mode),
        EnrollCmd::Batch(a) => batch(a, limits, now, key_mode),
        EnrollCmd::Sign(a) => sign(a, limits, key_mode),
        EnrollCmd::Show(a) => show(a, limits, now),
    }
}

/// A trust root that has an enroll role, with its fleet id.
pub struct EnrollRoot {
    pub path: PathBuf,
    pub root: Root,
    pub fleet: Hash32,
    pub keys: RoleKeys,
}

impl EnrollRoot {
    /// Loads a root; one without an enroll role is a refusal that says how to add one.
    pub fn load(path: &Path, limits: &Limits) -> Result<EnrollRoot> {
        let signed = bundle::load::<Root>(path, limits)?;
        let fleet = fleet_id(signed.value(), &signed.envelope().payload);
        EnrollRoot::new(path, signed.value().clone(), fleet)
    }

    pub fn new(path: &Path, root: Root, fleet: Hash32) -> Result<EnrollRoot> {
        let Some(keys) = root.roles.get(&Role::Enroll).cloned() else {
            return Err(exit(
                Code::Refused,
                format!(
                    "the trust root {p} has no enroll role, so nothing can enroll or revoke nodes under it. Add one: \
                     lanpatch-signer root rotate --current {p} --enroll-key <enroll key>.pub [--enroll-threshold N] \
                     --out <next root>, sign the new root with a threshold of the old and the new root keys, and \
                     publish it",
                    p = path.display()
                ),
            ));
        };
        Ok(EnrollRoot { path: path.to_path_buf(), root, fleet, keys })
    }

    /// Checks that every key is in the enroll role: one outside it is a refusal naming the role.
    pub fn check_signers(&self, signers: &[(PathBuf, SigningKey)]) -> Result<()> {
        for (path, sk) in signers {
            let public = PublicKey(sk.verifying_key().to_bytes());
            if !self.keys.keys.contains(&public) {
                let role: Vec<String> = self.keys.keys.iter().map(|k| k.short()).collect();
                return Err(exit(
                    Code::Refused,
                    format!(
                        "key {} ({}) is not in the enroll role of {} (enroll keys: {}; {} must sign): refusing to sign \
                         with it",
                        public.short(),
                        path.display(),
                        self.path.display(),
                        role.join(", "),
                        self.keys.threshold
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Loads the secret keys (mode-checked) and checks each is an enroll key.
    pub fn signers(&self, paths: &[PathBuf], key_mode: KeyMode) -> Result<Vec<(PathBuf, SigningKey)>> {
        let signers =
            paths.iter().map(|p| keys::load_secret(p, key_mode).map(|k| (p.clone(), k))).collect::<Result<Vec<_>>>()?;
        self.check_signers(&signers)?;
        Ok(signers)
    }

    /// Valid signatures on `envelope` by distinct enroll keys.
    pub fn valid_signatures(&self, envelope: &Envelope) -> u32 {
        envelope.count_signatures(&self.keys).valid
    }

    /// "2 of 2 enroll signature(s)", or how many more are needed and the command that adds one.
    pub fn progress(&self, envelope: &Envelope, file: &Path) -> String {
        let valid = self.valid_signatures(envelope);
        let t = self.keys.threshold;
        if valid >= t {
            format!("{valid} of {t} enroll signature(s): complete")
        } else {
            format!(
                "{valid} of {t} enroll signature(s): needs {} more; run: lanpatch-signer enroll sign --root {} --key \
                 <enroll key> {}",
                t - valid,
                self.path.display(),
                file.display()
            )
        }
    }
}

/// A node key on the command line or in a hosts file: 64 hex digits of a valid ed25519 point.
pub fn parse_node_key(s: &str) -> Result<PublicKey, String> {
    let key: PublicKey = s.parse().map_err(|e| format!("bad node key: {e}"))?;
    ed25519_dalek::VerifyingKey::from_bytes(&key.0)
        .map_err(|_| format!("bad node key {s:?}: not an ed25519 public key"))?;
    Ok(key)
}

/// The expiry from `--expires` (a duration from now, or a date), which must lie ahead.
fn parse_expires(s: &str, now: Timestamp) -> Result<Timestamp> {
    let t = time::parse_time(s, now).map_err(|e| exit(Code::BadInput, format!("bad --expires: {e:#}")))?;
    if t <= now {
        return Err(exit(Code::BadInput, format!("--expires {} is not in the future", time::show(t))));
    }
    Ok(t)
}

/// Whether `name` can be a file name in the output directory.
fn check_file_safe(hostname: &str) -> Result<(), String> {
    if hostname.contains('/') || hostname.contains('\0') {
        return Err(format!("hostname {hostname:?} contains '/' or NUL: it names the certificate file"));
    }
    if hostname.starts_with('.') {
        return Err(format!("hostname {hostname:?} starts with '.': it names the certificate file"));
    }
    Ok(())
}

/// One host line of a batch file, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub line: usize,
    pub hostname: String,
    pub node: PublicKey,
    /// The node's secret key, when the line said `-` and the signer made the key: the host then
    /// gets a join bundle (key and certificate) instead of a certificate.
    pub secret: Option<[u8; 32]>,
    pub ring: RingName,
    pub site: SiteName,
    pub tags: Vec<Tag>,
}

/// Parses a batch file: `hostname node-key ring [site] [tag,tag...]` per line, `#` comments and
/// blank lines ignored. Every problem is collected, each naming its line; hostnames and node keys
/// must be unique, hostnames safe as file names and valid in a certificate.
pub fn parse_hosts(text: &str, limits: &Limits) -> Result<Vec<Host>, Vec<String>> {
    let mut hosts: Vec<Host> = Vec::new();
    let mut errors = Vec::new();
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_key: BTreeMap<PublicKey, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let fields: Vec<&str> = raw.split_whitespace().take_while(|f| !f.starts_with('#')).collect();
        if fields.is_empty() {
            continue;
        }
        match parse_host(line, &fields, limits) {
            Ok(h) => {
                if let Some(first) = by_name.get(&h.hostname) {
                    errors.push(format!("line {line}: hostname {:?} is already on line {first}", h.hostname));
                    continue;
                }
                if let Some(first) = by_key.get(&h.node) {
                    errors.push(format!("line {line}: node key {} is already on line {first}", h.node));
                    continue;
                }
                by_name.insert(h.hostname.clone(), line);
                by_key.insert(h.node, line);
                hosts.push(h);
            }
            Err(e) => errors.push(format!("line {line}: {e}")),
        }
    }
    if hosts.is_empty() && errors.is_empty() {
        errors.push("no hosts listed (one per line: hostname node-key ring [site] [tag,tag...])".into());
    }
    if errors.is_empty() { Ok(hosts) } else { Err(errors) }
}

fn parse_host(line: usize, fields: &[&str], limits: &Limits) -> Result<Host, String> {
    let [hostname, node, ring, rest @ ..] = fields else {
        return Err(format!("expected `hostname node-key ring [site] [tag,tag...]`, got {} field(s)", fields.len()));
    };
    if rest.len() > 2 {
        return Err(format!(
            "expected at most 5 fields (hostname node-key ring [site] [tag,tag...]), got {}",
            fields.len()
        ));
    }
    check_file_safe(hostname)?;
    if hostname.len() > limits.max_short_bytes || hostname.chars().any(char::is_control) {
        return Err(format!(
            "hostname {hostname:?} must be at most {} bytes without control characters",
            limits.max_short_bytes
        ));
    }
    let (node, secret) = if *node == "-" {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no randomness from the OS: {e}"))?;
        (PublicKey(SigningKey::from_bytes(&seed).verifying_key().to_bytes()), Some(seed))
    } else {
        (parse_node_key(node)?, None)
    };
    let ring: RingName = ring.parse().map_err(|e| format!("bad ring: {e}"))?;
    let site: SiteName = match rest.first() {
        Some(s) => s.parse().map_err(|e| format!("bad site: {e}"))?,
        None => default_site(),
    };
    let tags = match rest.get(1) {
        Some(t) => t
            .split(',')
            .filter(|t| !t.is_empty())
            .map(|t| t.parse::<Tag>().map_err(|e| format!("bad tag: {e}")))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    if tags.len() > limits.max_list_items {
        return Err(format!("{} tags, the limit is {}", tags.len(), limits.max_list_items));
    }
    Ok(Host { line, hostname: hostname.to_string(), node, secret, ring, site, tags })
}

fn default_site() -> SiteName {
    SiteName::try_from("default".to_string()).unwrap_or_else(|_| unreachable!("\"default\" is a valid site name"))
}

/// A certificate for `host`, validated and signed by every signer.
fn certificate(
    er: &EnrollRoot,
    host: &Host,
    now: Timestamp,
    expires: Timestamp,
    signers: &[(PathBuf, SigningKey)],
    limits: &Limits,
) -> Result<Signed<NodeCertificate>> {
    let cert = NodeCertificate {
        fleet: er.fleet,
        node: host.node,
        hostname: host.hostname.clone(),
        ring: host.ring.clone(),
        site: host.site.clone(),
        tags: host.tags.clone(),
        issued: now,
        expires,
    };
    cert.validate(limits).map_err(|e| exit(Code::BadInput, format!("node certificate is not valid: {e}")))?;
    let mut signed = Signed::new(cert);
    for (_, sk) in signers {
        signed.sign(sk);
    }
    Ok(signed)
}

fn cert_json(er: &EnrollRoot, file: &Path, c: &NodeCertificate, envelope: &Envelope) -> serde_json::Value {
    serde_json::json!({
        "file": file.display().to_string(),
        "node_key": c.node.to_hex(),
        "hostname": c.hostname,
        "ring": c.ring.as_str(),
        "site": c.site.as_str(),
        "expires": c.expires.0,
        "signatures": er.valid_signatures(envelope),
        "threshold": er.keys.threshold,
    })
}

fn describe(c: &NodeCertificate) -> String {
    let tags: Vec<&str> = c.tags.iter().map(|t| t.as_str()).collect();
    format!(
        "{} (node {}), ring {}, site {}, tags [{}], expires {}",
        c.hostname,
        c.node.short(),
        c.ring,
        c.site,
        tags.join(","),
        utc(c.expires)
    )
}

/// A time as a UTC date, e.g. `2027-01-31 12:00:00 UTC`.
pub fn utc(t: Timestamp) -> String {
    i64::try_from(t.0)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{} (beyond the calendar)", t))
}

fn node(a: NodeArgs, limits: &Limits, now: Timestamp, key_mode: KeyMode) -> Result<()> {
    let node = parse_node_key(&a.node_key).map_err(|e| exit(Code::BadInput, format!("--node-key: {e}")))?;
    let expires = parse_expires(&a.expires, now)?;
    let er = EnrollRoot::load(&a.signer.root, limits)?;
    let signers = er.signers(&a.signer.keys, key_mode)?;
    let host = Host { line: 0, hostname: a.hostname, node, secret: None, ring: a.ring, site: a.site, tags: a.tags };
    let signed = certificate(&er, &host, now, expires, &signers, limits)?;
    bundle::write_new(&a.out, &signed.to_bytes(), PUBLIC_MODE)?;
    if a.json {
        return crate::report::print_json(&cert_json(&er, &a.out, signed.value(), signed.envelope()));
    }
    println!("wrote node certificate {}: {}", a.out.display(), describe(signed.value()));
    println!("{}", er.progress(signed.envelope(), &a.out));
    println!("install it on the node as <data_dir>/node.cert (node.toml `certificate`)");
    Ok(())
}

fn batch(a: BatchArgs, limits: &Limits, now: Timestamp, key_mode: KeyMode) -> Result<()> {
    let text = std::fs::read_to_string(&a.hosts).with_context(|| format!("cannot read {}", a.hosts.display()))?;
    let hosts = parse_hosts(&text, limits).map_err(|errors| {
        exit(Code::BadInput, format!("{}: nothing written:\n  {}", a.hosts.display(), errors.join("\n  ")))
    })?;
    let expires = parse_expires(&a.expires, now)?;
    let er = EnrollRoot::load(&a.signer.root, limits)?;
    let signers = er.signers(&a.signer.keys, key_mode)?;
    // A host whose key is made here gets a join bundle (its key and certificate, a secret).
    let out: Vec<(PathBuf, &Host)> = hosts
        .iter()
        .map(|h| {
            let ext = if h.secret.is_some() { "join" } else { "cert" };
            (a.out_dir.join(format!("{}.{ext}", h.hostname)), h)
        })
        .collect();
    let existing: Vec<String> = out.iter().filter(|(p, _)| p.exists()).map(|(p, _)| p.display().to_string()).collect();
    if !existing.is_empty() {
        bail!("refusing to overwrite existing certificates (nothing written): {}", existing.join(", "));
    }
    let certs = out
        .iter()
        .map(|(p, h)| {
            certificate(&er, h, now, expires, &signers, limits)
                .with_context(|| format!("{} line {} ({})", a.hosts.display(), h.line, p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    create_dir(&a.out_dir)?;
    let mut written: Vec<&Path> = Vec::new();
    for ((path, host), cert) in out.iter().zip(&certs) {
        let written_now = match host.secret {
            Some(secret) => bundle::write_new(
                path,
                &lanpatch_protocol::membership::JoinBundle { secret, certificate: cert.envelope().clone() }.encode(),
                0o600,
            ),
            None => bundle::write_new(path, &cert.to_bytes(), PUBLIC_MODE),
        };
        if let Err(e) = written_now {
            for p in written {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.context("no certificate of the batch was kept"));
        }
        written.push(path);
    }
    if a.json {
        let list: Vec<serde_json::Value> =
            out.iter().zip(&certs).map(|((p, _), c)| cert_json(&er, p, c.value(), c.envelope())).collect();
        return crate::report::print_json(&serde_json::Value::Array(list));
    }
    for ((path, host), cert) in out.iter().zip(&certs) {
        println!("wrote {}: {}", path.display(), describe(cert.value()));
        if host.secret.is_some() {
            println!(
                "  (a join bundle, mode 0600: the host's new key with its certificate; copy it to the host over a trusted channel, run `lanpatch-node join {}` there, then delete it)",
                path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            );
        }
    }
    let first = certs.first().map(|c| er.valid_signatures(c.envelope())).unwrap_or(0);
    println!(
        "{} certificate(s) in {}, {first} of {} enroll signature(s) each",
        certs.len(),
        a.out_dir.display(),
        er.keys.threshold
    );
    if first < er.keys.threshold {
        println!(
            "each needs {} more: lanpatch-signer enroll sign --root {} --key <enroll key> <file> for each file",
            er.keys.threshold - first,
            er.path.display()
        );
    }
    Ok(())
}

/// Creates the output directory with mode 0755 if it does not exist.
fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
}

fn sign(a: SignArgs, limits: &Limits, key_mode: KeyMode) -> Result<()> {
    let er = EnrollRoot::load(&a.signer.root, limits)?;
    let signers = er.signers(&a.signer.keys, key_mode)?;
    let bytes = bundle::read_limited(&a.file, limits)?;
    let envelope = Envelope::decode(&bytes, limits)
        .with_context(|| format!("{} is not a signed lanpatch file", a.file.display()))?;
    let (what, fleet) = match envelope.kind {
        Kind::Certificate => {
            let c = Signed::<NodeCertificate>::open(envelope.clone(), limits)
                .with_context(|| format!("{} is not a valid node certificate", a.file.display()))?;
            (format!("node certificate {}", describe(c.value())), c.value().fleet)
        }
        Kind::Revocation => {
            let r = Signed::<Revocations>::open(envelope.clone(), limits)
                .with_context(|| format!("{} is not a valid revocation list", a.file.display()))?;
            (format!("revocation list of {} node(s)", r.value().nodes.len()), r.value().fleet)
        }
        other => bail!("{} holds a {other:?}, not a node certificate or revocation list", a.file.display()),
    };
    if fleet != er.fleet {
        return Err(exit(
            Code::Refused,
            format!(
                "{} is for fleet {fleet}, {} is the root of fleet {}",
                a.file.display(),
                er.path.display(),
                er.fleet
            ),
        ));
    }
    let mut envelope = envelope;
    for (_, sk) in &signers {
        envelope.sign(sk);
    }
    bundle::write_atomic_mode(&a.file, &envelope.to_bytes(), PUBLIC_MODE)?;
    println!("signed {}: {what}", a.file.display());
    println!("{}", er.progress(&envelope, &a.file));
    Ok(())
}

fn show(a: ShowArgs, limits: &Limits, now: Timestamp) -> Result<()> {
    let signed = bundle::load::<NodeCertificate>(&a.file, limits)?;
    let c = signed.value();
    let verdict = match &a.root {
        None => None,
        Some(p) => {
            let root = bundle::load::<Root>(p, limits)?;
            let fleet = fleet_id(root.value(), &root.envelope().payload);
            let result = verify_certificate(signed.envelope(), root.value(), &fleet, &c.node, None, limits, now);
            let valid = root.value().roles.get(&Role::Enroll).map(|k| signed.envelope().count_signatures(k).valid);
            Some((p.clone(), result.map(|_| ()).map_err(|e| e.to_string()), valid))
        }
    };
    let sigs: Vec<&PublicKey> = signed.envelope().signatures.iter().map(|s| &s.key).collect();
    if a.json {
        crate::report::print_json(&serde_json::json!({
            "file": a.file.display().to_string(),
            "fleet": c.fleet.to_hex(),
            "node_key": c.node.to_hex(),
            "hostname": c.hostname,
            "ring": c.ring.as_str(),
            "site": c.site.as_str(),
            "tags": c.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "issued": c.issued.0,
            "expires": c.expires.0,
            "expires_utc": utc(c.expires),
            "expired": c.expires <= now,
            "signatures": sigs.iter().map(|k| k.to_hex()).collect::<Vec<_>>(),
            "valid_enroll_signatures": verdict.as_ref().and_then(|v| v.2),
            "verified": verdict.as_ref().map(|v| v.1.is_ok()),
            "problem": verdict.as_ref().and_then(|v| v.1.as_ref().err()),
        }))?;
    } else {
        println!("node certificate {}", a.file.display());
        println!("  node key: {}", c.node);
        println!("  hostname: {}", c.hostname);
        println!("  ring:     {}", c.ring);
        println!("  site:     {}", c.site);
        println!("  tags:     {}", c.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "));
        println!("  fleet:    {}", c.fleet);
        println!("  issued:   {} ({})", utc(c.issued), c.issued.0);
        let expired = if c.expires <= now { " EXPIRED" } else { "" };
        println!("  expires:  {} ({}){expired}", utc(c.expires), c.expires.0);
        let short: Vec<String> = sigs.iter().map(|k| k.short()).collect();
        println!("  signatures: {} ({})", sigs.len(), short.join(", "));
        if let Some((root, result, valid)) = &verdict {
            match result {
                Ok(()) => println!(
                    "verifies against {}: {} valid enroll signature(s)",
                    root.display(),
                    valid.unwrap_or_default()
                ),
                Err(e) => println!("does NOT verify against {}: {e}", root.display()),
            }
        }
    }
    match verdict {
        Some((root, Err(e), _)) => {
            Err(exit(Code::Refused, format!("{} does not verify against {}: {e}", a.file.display(), root.display())))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    pub(crate) fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }
    pub(crate) fn public(k: &SigningKey) -> PublicKey {
        PublicKey(k.verifying_key().to_bytes())
    }
    pub(crate) fn root(enroll: &[&SigningKey], threshold: u32) -> Root {
        let rk = |ks: &[&SigningKey], t| RoleKeys { keys: ks.iter().map(|k| public(k)).collect(), threshold: t };
        let admin = key(1);
        let mut roles = BTreeMap::new();
        for r in Role::ALL {
            roles.insert(r, rk(&[&admin], 1));
        }
        if !enroll.is_empty() {
            roles.insert(Role::Enroll, rk(enroll, threshold));
        }
        Root { version: lanpatch_protocol::Version(1), fleet: None, expires: Timestamp(u64::MAX), roles }
    }

    fn hex_key(b: u8) -> String {
        public(&key(b)).to_hex()
    }

    #[test]
    fn a_hosts_file_parses_with_comments_defaults_sites_and_tags() {
        let text = format!(
            "# the office\n\n web-1 {} canary   # first\nweb-2 {} broad hq kiosk,lobby\n",
            hex_key(20),
            hex_key(21)
        );
        let hosts = parse_hosts(&text, &Limits::default()).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!((hosts[0].line, hosts[0].hostname.as_str(), hosts[0].site.as_str()), (3, "web-1", "default"));
        assert!(hosts[0].tags.is_empty());
        assert_eq!((hosts[1].ring.as_str(), hosts[1].site.as_str()), ("broad", "hq"));
        assert_eq!(hosts[1].tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(), ["kiosk", "lobby"]);
    }

    #[test]
    fn a_dash_for_the_node_key_makes_a_fresh_key_for_that_host() {
        let hosts = parse_hosts("kiosk-1 - broad lyon\nkiosk-2 - broad lyon\n", &Limits::default()).unwrap();
        let secret = hosts[0].secret.expect("a key was made");
        assert_eq!(hosts[0].node, public(&SigningKey::from_bytes(&secret)), "the certificate names the made key");
        assert_ne!(hosts[0].node, hosts[1].node, "each host its own key");
    }

    #[test]
    fn every_bad_line_of_a_hosts_file_is_named_by_its_number() {
        let good = hex_key(20);
        let text = [
            format!("web-1 {good} canary"),
            "web-2 nothex canary".to_string(),
            format!("web-1 {} canary", hex_key(22)),
            format!("../etc {} canary", hex_key(23)),
            format!(".hidden {} canary", hex_key(24)),
            format!("web-5 {} Canary", hex_key(25)),
            "web-6".to_string(),
            format!("web-7 {good} canary"),
            format!("web-8 {} canary hq a,b extra", hex_key(26)),
            format!("web-9 {} canary hq BAD", hex_key(27)),
        ]
        .join("\n");
        let errors = parse_hosts(&text, &Limits::default()).unwrap_err();
        let expect = [
            ("line 2:", "node key"),
            ("line 3:", "already on line 1"),
            ("line 4:", "'/'"),
            ("line 5:", "starts with '.'"),
            ("line 6:", "ring"),
            ("line 7:", "1 field(s)"),
            ("line 8:", "node key"),
            ("line 9:", "at most 5 fields"),
            ("line 10:", "tag"),
        ];
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
        for (e, (line, what)) in errors.iter().zip(expect) {
            assert!(e.starts_with(line) && e.contains(what), "{e:?} should name {line} and {what}");
        }
        assert!(parse_hosts("# nothing\n\n", &Limits::default()).unwrap_err()[0].contains("no hosts"));
    }

    #[test]
    fn a_node_key_must_be_a_valid_ed25519_point() {
        assert!(parse_node_key(&hex_key(3)).is_ok());
        assert!(parse_node_key("zz").is_err());
        // y = 2 is not on the curve.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert!(parse_node_key(&hex::encode(bad)).unwrap_err().contains("not an ed25519"));
    }

    #[test]
    fn signing_with_a_key_outside_the_enroll_role_is_refused_naming_the_role() {
        let (e1, e2, outsider) = (key(2), key(3), key(9));
        let er = EnrollRoot::new(Path::new("root.lpr"), root(&[&e1, &e2], 2), Hash32([7; 32])).unwrap();
        er.check_signers(&[(PathBuf::from("e1.key"), e1.clone())]).unwrap();
        let err =
            er.check_signers(&[(PathBuf::from("e1.key"), e1), (PathBuf::from("admin.key"), outsider)]).unwrap_err();
        assert_eq!(crate::exit::code_of(&err), Code::Refused as u8);
        let msg = err.to_string();
        assert!(msg.contains("not in the enroll role") && msg.contains("admin.key"), "{msg}");
    }

    #[test]
    fn a_root_without_an_enroll_role_is_refused_pointing_at_root_rotate() {
        let err = EnrollRoot::new(Path::new("root.lpr"), root(&[], 1), Hash32([7; 32])).err().unwrap();
        assert_eq!(crate::exit::code_of(&err), Code::Refused as u8);
        assert!(err.to_string().contains("root rotate --current root.lpr --enroll-key"), "{err}");
    }

    #[test]
    fn a_certificate_made_here_verifies_and_says_how_many_signatures_are_missing() {
        let (e1, e2, n) = (key(2), key(3), key(9));
        let r = root(&[&e1, &e2], 2);
        let fleet = Hash32([7; 32]);
        let er = EnrollRoot::new(Path::new("root.lpr"), r.clone(), fleet).unwrap();
        let host = Host {
            line: 1,
            hostname: "web-1".into(),
            node: public(&n),
            secret: None,
            ring: "canary".parse().unwrap(),
            site: default_site(),
            tags: vec![],
        };
        let limits = Limits::default();
        let one =
            certificate(&er, &host, Timestamp(100), Timestamp(500), &[("e1".into(), e1.clone())], &limits).unwrap();
        assert!(er.progress(one.envelope(), Path::new("c.cert")).contains("needs 1 more"));
        let v = verify_certificate(one.envelope(), &r, &fleet, &public(&n), None, &limits, Timestamp(200));
        assert!(v.is_err());
        let mut both = one.into_envelope();
        both.sign(&e2);
        verify_certificate(&both, &r, &fleet, &public(&n), None, &limits, Timestamp(200)).unwrap();
        assert!(er.progress(&both, Path::new("c.cert")).contains("complete"));
    }

    #[test]
    fn new_files_are_never_overwritten_and_get_mode_0644() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.cert");
        bundle::write_new(&p, b"one", PUBLIC_MODE).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        assert!(bundle::write_new(&p, b"two", PUBLIC_MODE).unwrap_err().to_string().contains("refusing to overwrite"));
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
    }
}
