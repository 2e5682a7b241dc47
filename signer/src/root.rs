//! `lanpatch-signer root`: create, sign, rotate and show trust roots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use lanpatch_protocol::{PublicKey, Role, RoleKeys, Root, Signed, Version, fleet_id};

use crate::bundle::{self, check_payload, refuse_existing};
use crate::ctx::Ctx;
use crate::report::print_json;
use crate::{keys, time};

#[derive(Args)]
pub struct RoleFlags {
    /// A root key (hex, or a .pub file). Repeat for each key.
    #[arg(long = "root-key")]
    pub root_keys: Vec<String>,
    /// How many root keys must sign a new root.
    #[arg(long)]
    pub root_threshold: Option<u32>,
    /// A release key. Repeat for each key.
    #[arg(long = "release-key")]
    pub release_keys: Vec<String>,
    /// How many release keys must sign a manifest.
    #[arg(long)]
    pub release_threshold: Option<u32>,
    /// An approve key. Repeat for each key.
    #[arg(long = "approve-key")]
    pub approve_keys: Vec<String>,
    /// How many approve keys must sign an approval or yank.
    #[arg(long)]
    pub approve_threshold: Option<u32>,
    /// A timestamp key (online, on the admin workstation's node: `timestamp_key` in its
    /// node.toml). Repeat for each key. With it, nodes install only under a fresh statement.
    #[arg(long = "timestamp-key")]
    pub timestamp_keys: Vec<String>,
    /// How many timestamp keys must sign a statement.
    #[arg(long)]
    pub timestamp_threshold: Option<u32>,
    /// An enroll key: signs node certificates and revocation lists (`enroll`, `revoke`). May be
    /// an online key on the admin workstation. Repeat for each key. Without an enroll role,
    /// nodes start only with `enrollment = "off"`.
    #[arg(long = "enroll-key")]
    pub enroll_keys: Vec<String>,
    /// How many enroll keys must sign a node certificate or revocation list.
    #[arg(long)]
    pub enroll_threshold: Option<u32>,
    /// When the root expires: a duration (365d) or a date.
    #[arg(long, default_value = "365d")]
    pub expires: String,
}

#[derive(Subcommand)]
pub enum RootCmd {
    /// Create version 1 of a trust root (unsigned: then `root sign` with a threshold of root keys).
    Init {
        #[command(flatten)]
        roles: RoleFlags,
        /// Where to write the root.
        #[arg(long)]
        out: PathBuf,
    },
    /// Add one key's signature to a root file.
    Sign {
        /// The secret key to sign with.
        #[arg(long)]
        key: PathBuf,
        /// The root file.
        file: PathBuf,
    },
    /// Create the next root version from the current one. Roles given replace the current ones;
    /// roles not given are kept. It must then be signed by a threshold of the old AND new root keys.
    Rotate {
        /// The current root file.
        #[arg(long)]
        current: PathBuf,
        #[command(flatten)]
        roles: RoleFlags,
        /// Where to write the new root.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a root's contents and signatures.
    Show {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        file: PathBuf,
    },
}

/// Builds the role map from flags; roles without keys on the command line are taken from `base`.
pub fn role_map(flags: &RoleFlags, base: Option<&Root>) -> Result<BTreeMap<Role, RoleKeys>> {
    let specs = [
        (Role::Root, &flags.root_keys, flags.root_threshold),
        (Role::Release, &flags.release_keys, flags.release_threshold),
        (Role::Approve, &flags.approve_keys, flags.approve_threshold),
        (Role::Timestamp, &flags.timestamp_keys, flags.timestamp_threshold),
        (Role::Enroll, &flags.enroll_keys, flags.enroll_threshold),
    ];
    let mut map = BTreeMap::new();
    for (role, keys, threshold) in specs {
        // The timestamp and enroll roles are optional: kept from the base root, or absent.
        let optional = matches!(role, Role::Timestamp | Role::Enroll);
        if optional && keys.is_empty() && base.is_none_or(|b| !b.roles.contains_key(&role)) {
            if threshold.is_some() {
                bail!("--{role}-threshold needs --{role}-key (repeatable)");
            }
            match role {
                Role::Timestamp => eprintln!(
                    "note: no --timestamp-key: nodes cannot detect a freeze (withheld updates); see docs/THREAT-MODEL.md"
                ),
                _ => eprintln!(
                    "note: no --enroll-key: nodes refuse to start unless node.toml sets enrollment = \"off\"; see docs/OPERATIONS.md"
                ),
            }
            continue;
        }
        let rk = if keys.is_empty() {
            let Some(base) = base else {
                bail!("no {role} keys given: use --{role}-key (repeatable) and --{role}-threshold");
            };
            let mut rk = base.keys(role);
            if let Some(t) = threshold {
                rk.threshold = t;
            }
            rk
        } else {
            let keys = keys.iter().map(|k| keys::parse_public(k)).collect::<Result<Vec<_>>>()?;
            let threshold = threshold.unwrap_or(1);
            RoleKeys { keys, threshold }
        };
        map.insert(role, rk);
    }
    Ok(map)
}

pub fn print_root(root: &Signed<Root>) {
    let r = root.value();
    println!("trust root version {}, expires {}", r.version, time::show(r.expires));
    println!("fleet id: {}", fleet_id(r, &root.envelope().payload));
    for (role, rk) in &r.roles {
        println!("  {role}: {} of {} keys", rk.threshold, rk.keys.len());
        for k in &rk.keys {
            println!("    {k}");
        }
    }
    println!("signatures: {}", root.envelope().signatures.iter().map(|s| s.key.short()).collect::<Vec<_>>().join(", "));
}

pub fn root_json(root: &Signed<Root>) -> serde_json::Value {
    let r = root.value();
    serde_json::json!({
        "version": r.version,
        "expires": r.expires.0,
        "fleet_id": fleet_id(r, &root.envelope().payload).to_hex(),
        "roles": r.roles.iter().map(|(role, rk)| (role.to_string(), serde_json::json!({
            "threshold": rk.threshold,
            "keys": rk.keys.iter().map(|k| k.to_hex()).collect::<Vec<_>>(),
        }))).collect::<serde_json::Map<_, _>>(),
        "signatures": root.envelope().signatures.iter().map(|s| s.key.to_hex()).collect::<Vec<_>>(),
    })
}

pub fn run(cmd: RootCmd, ctx: &Ctx) -> Result<()> {
    match cmd {
        RootCmd::Init { roles, out } => init(&roles, &out, ctx),
        RootCmd::Sign { key, file } => sign(&key, &file, ctx),
        RootCmd::Rotate { current, roles, out } => rotate(&current, &roles, &out, ctx),
        RootCmd::Show { file, json } => {
            let root = bundle::load::<Root>(&file, &ctx.limits)?;
            if json {
                print_json(&root_json(&root))
            } else {
                print_root(&root);
                Ok(())
            }
        }
    }
}

fn init(roles: &RoleFlags, out: &Path, ctx: &Ctx) -> Result<()> {
    refuse_existing(out)?;
    let root = Root {
        version: Version(1),
        fleet: None,
        expires: time::parse_time(&roles.expires, ctx.now)?,
        roles: role_map(roles, None)?,
    };
    let signed = Signed::new(root);
    check_payload(signed.value(), &ctx.limits)?;
    bundle::save(out, &signed)?;
    println!("wrote trust root version 1 to {} (unsigned)", out.display());
    println!("fleet id: {}", fleet_id(signed.value(), &signed.envelope().payload));
    println!("next: lanpatch-signer root sign --key <root key> {}", out.display());
    Ok(())
}

fn sign(key: &Path, file: &Path, ctx: &Ctx) -> Result<()> {
    let sk = keys::load_secret(key, ctx.key_mode)?;
    let mut root = bundle::load::<Root>(file, &ctx.limits)?;
    let public = PublicKey(sk.verifying_key().to_bytes());
    root.sign(&sk);
    bundle::save(file, &root)?;
    let rk = root.value().keys(Role::Root);
    let count = root.envelope().count_signatures(&rk);
    println!(
        "signed {} with {}; {} of {} required root signatures by this root's own keys",
        file.display(),
        public.short(),
        count.valid,
        rk.threshold
    );
    if !rk.keys.contains(&public) {
        println!("note: {} is not a root key of this version (fine for the old keys of a rotation)", public.short());
    }
    if count.valid < rk.threshold {
        println!("next, by another root key holder: lanpatch-signer root sign --key <root key> {}", file.display());
    } else if root.value().version.0 == 1 {
        println!(
            "next: install {} on every node as /etc/lanpatch/root.lpr (node.toml `trust_root`), mode 0644",
            file.display()
        );
    } else {
        println!(
            "next: once a threshold of the previous version's root keys signed it too, publish it: lanpatch-signer publish --node <admin node's control.sock> --metadata {}",
            file.display()
        );
    }
    Ok(())
}

fn rotate(current: &Path, roles: &RoleFlags, out: &Path, ctx: &Ctx) -> Result<()> {
    refuse_existing(out)?;
    let cur = bundle::load::<Root>(current, &ctx.limits)?;
    let c = cur.value();
    let next = Root {
        version: Version(c.version.0 + 1),
        fleet: Some(fleet_id(c, &cur.envelope().payload)),
        expires: time::parse_time(&roles.expires, ctx.now)?,
        roles: role_map(roles, Some(c))?,
    };
    let signed = Signed::new(next);
    check_payload(signed.value(), &ctx.limits)?;
    bundle::save(out, &signed)?;
    println!("wrote trust root version {} to {} (unsigned)", signed.value().version, out.display());
    println!(
        "it must be signed by {} of the current root keys and {} of its own",
        c.keys(Role::Root).threshold,
        signed.value().keys(Role::Root).threshold
    );
    Ok(())
}
