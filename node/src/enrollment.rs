//! `lanpatch-node id` and `lanpatch-node join`: the host's half of enrolling it
//! (docs/OPERATIONS.md "Enrolling nodes").
//!
//! `id` prints the node key an admin enrolls (creating it on first use, as `run` would); `join`
//! checks a certificate the admin made against this host's trust root and node key, then puts it
//! where `run` reads it. Both are one command per host, with `--json` for scripts.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use lanpatch_protocol::{Envelope, Limits, PublicKey};
use serde::Serialize;

use crate::clock::now;
use crate::config::Config;

/// What `id --json` prints.
#[derive(Serialize)]
pub struct NodeId {
    pub node_key: String,
    pub peer_id: String,
    pub hostname: String,
    pub certificate: String,
    pub enrolled: bool,
}

/// The node's key (created in the data directory if missing) and where its certificate goes.
pub fn id(cfg: &Config) -> Result<NodeId> {
    crate::fsmode::create_dir(&cfg.data_dir, crate::fsmode::DIR)?;
    let kp = crate::membership::load_or_create_identity(cfg)?;
    let ed = kp.clone().try_into_ed25519().map_err(|e| anyhow!("node key is not ed25519: {e}"))?;
    let key = PublicKey(ed.public().to_bytes());
    let cert = cfg.certificate_path();
    Ok(NodeId {
        node_key: key.to_hex(),
        peer_id: kp.public().to_peer_id().to_string(),
        hostname: cfg.hostname(),
        enrolled: cert.exists(),
        certificate: cert.display().to_string(),
    })
}

pub fn print_id(cfg: &Config, json: bool) -> Result<()> {
    let id = id(cfg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&id)?);
        return Ok(());
    }
    println!("node key:    {}", id.node_key);
    println!("peer id:     {}", id.peer_id);
    println!("certificate: {} ({})", id.certificate, if id.enrolled { "present" } else { "missing" });
    if !id.enrolled {
        println!();
        println!("next: on the signing workstation,");
        println!(
            "  lanpatch-signer enroll node --root root.lpr --key enroll.key --node-key {} --hostname {} --ring <ring> --out {}.cert",
            id.node_key, id.hostname, id.hostname
        );
        println!("then here: lanpatch-node join {}.cert", id.hostname);
    }
    Ok(())
}

/// Checks `cert_file` (steps C1 to C6 for this host's key) against the newest trust root this
/// node holds (its `trust_root` file, the rotations it stored, and `rotated`: rotations not
/// published yet, each checked as an update of the one before) and installs it at the
/// configured path (mode 0600, atomically). The rotated roots it was checked against are kept in
/// the node's database, as if they had come from the fleet, so the node starts under them.
/// Returns what it says.
pub async fn join(
    cfg: &Config,
    cert_file: &Path,
    rotated: &[std::path::PathBuf],
) -> Result<lanpatch_protocol::NodeCertificate> {
    let limits = Limits::default();
    let mut trust = crate::trust::Trust::from_file(&cfg.trust_root, limits.clone(), now())?;
    crate::fsmode::create_dir(&cfg.data_dir, crate::fsmode::DIR)?;
    // The node's database, for the rotations it holds; created only to keep a rotated root given
    // here (a host that never ran), with the node's file mode.
    let db = cfg.data_dir.join("state.db");
    let store = if db.exists() || !rotated.is_empty() { Some(crate::store::Store::open(&db)?) } else { None };
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        crate::fsmode::ensure(&cfg.data_dir.join(name), crate::fsmode::FILE)?;
    }
    if let Some(store) = &store {
        for r in store.roots()? {
            let _ = trust.ingest(&r, now());
        }
    }
    let mut new_roots = Vec::new();
    for path in rotated {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if let crate::trust::Accepted::Root { version, new: true } =
            trust.ingest(&bytes, now()).with_context(|| format!("rotated root {} refused", path.display()))?
        {
            new_roots.push((version, bytes));
        }
    }
    if !trust.root.value().roles.contains_key(&lanpatch_protocol::Role::Enroll) {
        anyhow::bail!(
            "the newest trust root this node holds (version {}) has no enroll role: give the rotated root that has one with --root ROOT.lpr",
            trust.root.value().version
        );
    }
    let file = std::fs::read(cert_file).with_context(|| format!("cannot read {}", cert_file.display()))?;
    // A join bundle (`enroll batch` with `-` for the key) brings the node's key with it.
    let bundle = match lanpatch_protocol::membership::JoinBundle::decode(&file, &limits) {
        Some(b) => Some(b.with_context(|| format!("{} is a damaged join bundle", cert_file.display()))?),
        None => None,
    };
    let (bytes, key) = match &bundle {
        Some(b) => (
            b.certificate.to_bytes(),
            PublicKey(ed25519_dalek::SigningKey::from_bytes(&b.secret).verifying_key().to_bytes()),
        ),
        None => {
            let me = id(cfg)?;
            (file, me.node_key.parse().map_err(|e| anyhow!("{e}"))?)
        }
    };
    let env =
        Envelope::decode(&bytes, &limits).with_context(|| format!("{} is not a certificate", cert_file.display()))?;
    let cert = lanpatch_protocol::membership::verify_certificate(
        &env,
        trust.root.value(),
        &trust.fleet,
        &key,
        None,
        &limits,
        now(),
    )
    .map_err(|e| {
        anyhow::Error::new(crate::membership::CertificateError::Refused {
            path: cert_file.display().to_string(),
            refusal: e,
        })
    })?;
    // The bundle's key first: a host with a key of its own refuses it before anything is kept.
    if let Some(b) = &bundle {
        crate::membership::install_identity(cfg, &b.secret)?;
    }
    if let Some(store) = &store {
        for (version, root) in new_roots {
            store.put_root(version, root, now().0).await?;
        }
    }
    let dest = cfg.certificate_path();
    crate::fsmode::write_private(&dest, &bytes)?;
    Ok(cert.value().clone())
}

pub async fn print_join(cfg: &Config, cert_file: &Path, rotated: &[std::path::PathBuf], json: bool) -> Result<()> {
    let c = join(cfg, cert_file, rotated).await?;
    if json {
        let v = serde_json::json!({
            "certificate": cfg.certificate_path().display().to_string(),
            "hostname": c.hostname,
            "ring": c.ring.to_string(),
            "site": c.site.to_string(),
            "expires": c.expires.0,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "enrolled as {} in ring {} at site {} until {} (certificate at {})",
            c.hostname,
            c.ring,
            c.site,
            crate::clock::format_time(c.expires.0),
            cfg.certificate_path().display()
        );
        println!(
            "next: start the node, or apply it to the running one: systemctl reload lanpatch-node (a renewal), systemctl restart lanpatch-node (a first certificate)"
        );
    }
    Ok(())
}
