//! `lanpatch-signer revoke`: revocation lists (docs/PROTOCOL.md "Membership"). A list names the
//! node keys the admins cut off, whatever their certificates say; nodes keep the list with the
//! latest `issued`, so each new list is issued after the one it replaces. Also `publish
//! --metadata`, which hands such a signed file to a node.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};
use lanpatch_protocol::control::{ControlRequest, ControlResponse};
use lanpatch_protocol::membership::verify_revocations;
use lanpatch_protocol::{Envelope, Hash32, Kind, Limits, Payload, PublicKey, Revocations, Signed, Timestamp};

use crate::bundle;
use crate::enroll::{EnrollRoot, PUBLIC_MODE, SignerArgs, parse_node_key, utc};
use crate::exit::{Code, exit};
use crate::fleet;
use crate::keys::KeyMode;

#[derive(Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args(["node_keys", "remove_node_keys"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    signer: SignerArgs,
    /// A node key to revoke (64 hex digits). Repeatable.
    #[arg(long = "node-key")]
    node_keys: Vec<String>,
    /// A node key to take off the list again (un-revoke). Repeatable.
    #[arg(long = "remove-node-key")]
    remove_node_keys: Vec<String>,
    /// The current revocation list: the new one keeps its nodes and is issued after it.
    #[arg(long, conflicts_with = "first")]
    list: Option<PathBuf>,
    /// This is the fleet's first revocation list (there is no --list to extend). Without one of
    /// the two the command refuses: a new list replaces the old one on every node, so leaving out
    /// the current list would take every earlier revocation back.
    #[arg(long)]
    first: bool,
    /// Where to write the new list (mode 0644; never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

/// What a new list changes against the old one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<PublicKey>,
    /// Asked to revoke, but already on the list.
    pub already: Vec<PublicKey>,
    pub removed: Vec<PublicKey>,
}

/// The list after `old`: its nodes and `add`, without `remove`, sorted without duplicates, issued
/// at `now` or one second after `old` (a node keeps only a list at least as new as the one it
/// holds, so the new one must be strictly newer).
pub fn next_list(
    old: Option<&Revocations>,
    fleet: Hash32,
    add: &[PublicKey],
    remove: &[PublicKey],
    now: Timestamp,
) -> Result<(Revocations, Changes)> {
    let mut nodes: BTreeSet<PublicKey> = old.map(|o| o.nodes.iter().copied().collect()).unwrap_or_default();
    let mut changes = Changes::default();
    if let Some(k) = add.iter().find(|k| remove.contains(k)) {
        return Err(exit(Code::BadInput, format!("node key {k} is given both to revoke and to remove")));
    }
    for k in remove {
        if !nodes.remove(k) {
            if changes.removed.contains(k) {
                continue;
            }
            return Err(exit(Code::BadInput, format!("--remove-node-key {k} is not on the revocation list")));
        }
        changes.removed.push(*k);
    }
    for k in add {
        if nodes.insert(*k) {
            changes.added.push(*k);
        } else if !changes.added.contains(k) && !changes.already.contains(k) {
            changes.already.push(*k);
        }
    }
    let issued = match old {
        Some(o) => now.max(o.issued.plus_secs(1)),
        None => now,
    };
    Ok((Revocations { fleet, issued, nodes: nodes.into_iter().collect() }, changes))
}

pub fn run(a: RevokeArgs, limits: &Limits, now: Timestamp, key_mode: KeyMode) -> Result<()> {
    let add = a
        .node_keys
        .iter()
        .map(|k| parse_node_key(k).map_err(|e| exit(Code::BadInput, format!("--node-key: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let remove = a
        .remove_node_keys
        .iter()
        .map(|k| k.parse::<PublicKey>().map_err(|e| exit(Code::BadInput, format!("--remove-node-key: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    if a.list.is_none() && !a.first {
        return Err(exit(
            Code::BadInput,
            "give --list CURRENT.lpv (the fleet's current revocation list, which the new one extends) or --first              (the fleet has none yet): a new list replaces the old one on every node",
        ));
    }
    let er = EnrollRoot::load(&a.signer.root, limits)?;
    let signers = er.signers(&a.signer.keys, key_mode)?;
    let old = match &a.list {
        Some(p) => Some(load_list(&er, p, limits)?),
        None => None,
    };
    let (list, changes) = next_list(old.as_ref(), er.fleet, &add, &remove, now)?;
    list.validate(limits).map_err(|e| exit(Code::BadInput, format!("revocation list is not valid: {e}")))?;
    let mut signed = Signed::new(list);
    for (_, sk) in &signers {
        signed.sign(sk);
    }
    bundle::write_new(&a.out, &signed.to_bytes(), PUBLIC_MODE)?;
    let l = signed.value();
    let hexes = |keys: &[PublicKey]| keys.iter().map(|k| k.to_hex()).collect::<Vec<_>>();
    if a.json {
        return crate::report::print_json(&serde_json::json!({
            "file": a.out.display().to_string(),
            "issued": l.issued.0,
            "nodes": hexes(&l.nodes),
            "added": hexes(&changes.added),
            "removed": hexes(&changes.removed),
            "signatures": er.valid_signatures(signed.envelope()),
            "threshold": er.keys.threshold,
        }));
    }
    println!(
        "wrote revocation list {}: {} node(s) revoked, issued {} ({})",
        a.out.display(),
        l.nodes.len(),
        utc(l.issued),
        l.issued.0
    );
    for k in &changes.added {
        println!("  revoked {k}");
    }
    for k in &changes.already {
        println!("  already revoked {k}");
    }
    for k in &changes.removed {
        println!("  taken off the list {k}");
    }
    println!("{}", er.progress(signed.envelope(), &a.out));
    println!("then: lanpatch-signer publish --node <control socket> --metadata {}", a.out.display());
    Ok(())
}

/// The current list: it must verify against the root's enroll role (a list that lost entries on
/// the way would un-revoke nodes).
fn load_list(er: &EnrollRoot, path: &Path, limits: &Limits) -> Result<Revocations> {
    let bytes = bundle::read_limited(path, limits)?;
    let envelope = Envelope::decode(&bytes, limits)
        .with_context(|| format!("{} is not a signed lanpatch file", path.display()))?;
    let list = verify_revocations(envelope, &er.root, &er.fleet, None, limits).map_err(|e| {
        exit(
            Code::Refused,
            format!(
                "--list {p} does not verify against {r}: {e} (a list still below the threshold needs `lanpatch-signer \
                 enroll sign --root {r} --key <enroll key> {p}` first)",
                p = path.display(),
                r = er.path.display()
            ),
        )
    })?;
    Ok(list.value().clone())
}

/// `publish --metadata FILE`: hands one signed file (a revocation list) to the node, which
/// verifies it as if it came from gossip, keeps it and gossips it.
pub fn publish_metadata(socket: &Path, file: &Path, limits: &Limits) -> Result<()> {
    let bytes = bundle::read_limited(file, limits)?;
    let envelope = Envelope::decode(&bytes, limits)
        .with_context(|| format!("{} is not a signed lanpatch file", file.display()))?;
    let what = match envelope.kind {
        Kind::Revocation => "revocation list".to_string(),
        Kind::Certificate => "node certificate".to_string(),
        other => format!("{other:?}").to_lowercase(),
    };
    let req = ControlRequest::PublishMetadata { hex: hex::encode(&bytes) };
    match fleet::request_any(socket, &req)? {
        ControlResponse::Done => {
            println!("published {what}");
            Ok(())
        }
        ControlResponse::Error { message, .. } => {
            Err(exit(Code::Refused, format!("the node refused the {what}: {message}")))
        }
        other => bail!("unexpected response {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enroll::tests::{key, public, root};

    const FLEET: Hash32 = Hash32([7; 32]);

    fn keys(bytes: &[u8]) -> Vec<PublicKey> {
        bytes.iter().map(|b| public(&key(*b))).collect()
    }

    #[test]
    fn a_new_list_is_the_union_sorted_without_duplicates() {
        let (first, c) = next_list(None, FLEET, &keys(&[5, 3, 5]), &[], Timestamp(100)).unwrap();
        assert_eq!(first.issued, Timestamp(100));
        assert_eq!(c.added.len(), 2);
        let mut expect = keys(&[3, 5]);
        expect.sort();
        assert_eq!(first.nodes, expect);
        first.validate(&Limits::default()).unwrap();
        let (second, c) = next_list(Some(&first), FLEET, &keys(&[4, 3]), &[], Timestamp(200)).unwrap();
        let mut expect = keys(&[3, 4, 5]);
        expect.sort();
        assert_eq!(second.nodes, expect);
        assert_eq!((c.added, c.already), (keys(&[4]), keys(&[3])));
        second.validate(&Limits::default()).unwrap();
    }

    #[test]
    fn removing_takes_a_key_off_and_a_key_not_on_the_list_is_bad_input() {
        let (first, _) = next_list(None, FLEET, &keys(&[3, 5]), &[], Timestamp(100)).unwrap();
        let (second, c) = next_list(Some(&first), FLEET, &[], &keys(&[3]), Timestamp(200)).unwrap();
        assert_eq!(second.nodes, keys(&[5]));
        assert_eq!(c.removed, keys(&[3]));
        let err = next_list(Some(&second), FLEET, &[], &keys(&[3]), Timestamp(300)).unwrap_err();
        assert_eq!(crate::exit::code_of(&err), Code::BadInput as u8);
        assert!(err.to_string().contains("not on the revocation list"), "{err}");
        let both = next_list(Some(&second), FLEET, &keys(&[6]), &keys(&[6]), Timestamp(300)).unwrap_err();
        assert!(both.to_string().contains("both"), "{both}");
    }

    #[test]
    fn each_list_is_issued_strictly_after_the_one_it_replaces_even_with_a_clock_behind() {
        let (first, _) = next_list(None, FLEET, &keys(&[3]), &[], Timestamp(1_000)).unwrap();
        let (same_second, _) = next_list(Some(&first), FLEET, &keys(&[4]), &[], Timestamp(1_000)).unwrap();
        assert_eq!(same_second.issued, Timestamp(1_001));
        let (clock_behind, _) = next_list(Some(&same_second), FLEET, &keys(&[5]), &[], Timestamp(10)).unwrap();
        assert_eq!(clock_behind.issued, Timestamp(1_002));
        let (later, _) = next_list(Some(&clock_behind), FLEET, &keys(&[6]), &[], Timestamp(5_000)).unwrap();
        assert_eq!(later.issued, Timestamp(5_000));
    }

    #[test]
    fn a_list_signed_here_verifies_and_replaces_the_older_one() {
        let e = key(2);
        let r = root(&[&e], 1);
        let limits = Limits::default();
        let (first, _) = next_list(None, FLEET, &keys(&[3]), &[], Timestamp(100)).unwrap();
        let (second, _) = next_list(Some(&first), FLEET, &[], &keys(&[3]), Timestamp(100)).unwrap();
        let mut s = Signed::new(second);
        s.sign(&e);
        verify_revocations(s.into_envelope(), &r, &FLEET, Some(&first), &limits).unwrap();
    }

    fn args(
        dir: &Path,
        key: &str,
        add: &[PublicKey],
        remove: &[PublicKey],
        list: Option<&str>,
        out: &str,
    ) -> RevokeArgs {
        RevokeArgs {
            signer: SignerArgs { root: dir.join("root.lpr"), keys: vec![dir.join(key)] },
            node_keys: add.iter().map(|k| k.to_hex()).collect(),
            remove_node_keys: remove.iter().map(|k| k.to_hex()).collect(),
            first: list.is_none(),
            list: list.map(|l| dir.join(l)),
            out: dir.join(out),
            json: false,
        }
    }

    #[test]
    fn revoke_without_the_current_list_or_first_is_refused_before_anything_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = args(tmp.path(), "enroll.key", &keys(&[3]), &[], None, "r.lpv");
        a.first = false;
        let err = run(a, &Limits::default(), Timestamp(100), KeyMode::Strict).unwrap_err();
        assert_eq!(crate::exit::code_of(&err), Code::BadInput as u8);
        assert!(err.to_string().contains("--first"), "{err}");
    }

    #[test]
    fn revoke_refuses_a_key_outside_the_enroll_role_and_writes_signed_lists_that_replace_each_other() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let enroll = crate::keys::generate(&dir.join("enroll.key")).unwrap();
        crate::keys::generate(&dir.join("other.key")).unwrap();
        let mut r = root(&[], 1);
        r.roles
            .insert(lanpatch_protocol::Role::Enroll, lanpatch_protocol::RoleKeys { keys: vec![enroll], threshold: 1 });
        let signed_root = Signed::new(r.clone());
        bundle::save(&dir.join("root.lpr"), &signed_root).unwrap();
        let fleet = lanpatch_protocol::fleet_id(&r, &signed_root.envelope().payload);
        let limits = Limits::default();
        let nodes = keys(&[3, 4]);

        let err = run(args(dir, "other.key", &nodes, &[], None, "r1.lpv"), &limits, Timestamp(100), KeyMode::Strict)
            .unwrap_err();
        assert_eq!(crate::exit::code_of(&err), Code::Refused as u8);
        assert!(err.to_string().contains("not in the enroll role"), "{err}");
        assert!(!dir.join("r1.lpv").exists(), "nothing is written on a refusal");

        run(args(dir, "enroll.key", &nodes, &[], None, "r1.lpv"), &limits, Timestamp(100), KeyMode::Strict).unwrap();
        assert_eq!(std::fs::metadata(dir.join("r1.lpv")).unwrap().permissions().mode() & 0o777, 0o644);
        let again = run(args(dir, "enroll.key", &nodes, &[], None, "r1.lpv"), &limits, Timestamp(100), KeyMode::Strict);
        assert!(again.unwrap_err().to_string().contains("refusing to overwrite"));
        let remove = [nodes[0]];
        run(args(dir, "enroll.key", &[], &remove, Some("r1.lpv"), "r2.lpv"), &limits, Timestamp(50), KeyMode::Strict)
            .unwrap();
        let load = |f: &str| {
            let env = Envelope::decode(&std::fs::read(dir.join(f)).unwrap(), &limits).unwrap();
            verify_revocations(env, &r, &fleet, None, &limits).unwrap().value().clone()
        };
        let (r1, r2) = (load("r1.lpv"), load("r2.lpv"));
        assert_eq!(r2.nodes, vec![nodes[1]]);
        assert_eq!(r2.issued, Timestamp(101), "issued after the list it replaces, though the clock went back");
        assert!(
            verify_revocations(
                Envelope::decode(&std::fs::read(dir.join("r1.lpv")).unwrap(), &limits).unwrap(),
                &r,
                &fleet,
                Some(&r2),
                &limits
            )
            .is_err(),
            "the older list is a replay once the newer is held: {r1:?}"
        );
    }
}
