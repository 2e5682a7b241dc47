//! Trust hardening (issue #7): each finding of the attack review, refused by a named test
//! against real node processes. The attack classes and their defences are tabled in
//! docs/THREAT-MODEL.md.

use lanpatch_protocol::control::RefusalKind;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use lanpatch_protocol::{
    Approval, FailReason, Limits, ReleaseManifest, ReleaseState, Signed, SkipReason, Timestamp, WaitReason,
};

use crate::fleet::{
    Node, admin, approve, blob_name, endpoint, make_fleet_keys, payload, release, secret, unix_now, wait_for_node,
    wait_until,
};
use crate::support::{Run, signer};

fn state(n: &Node) -> Option<ReleaseState> {
    n.status().releases.iter().find(|r| r.product == "tool").map(|r| r.state)
}

// 1. Expired metadata is acted on.

#[test]
fn expired_manifest_is_never_installed_even_when_its_approval_comes_due_after_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let bundle = release(dir, "v1", 1, &["--expires", "25s"]);
    // An approval (validly signed by two approve keys) whose not-before lies after the manifest's
    // expiry: the signer refuses to make one, so the test signs it itself.
    let m =
        Signed::<ReleaseManifest>::decode(&fs::read(bundle.join("manifest.lpm")).unwrap(), &Limits::default()).unwrap();
    let mut a = Signed::new(Approval {
        manifest: m.payload_hash(),
        product: m.value().product.clone(),
        version: m.value().version,
        ring: "canary".parse().unwrap(),
        issued: Timestamp(unix_now()),
        not_before: Timestamp(m.value().expires.0 + 3),
        deadline: None,
        expires: Timestamp(unix_now() + 3600),
        forced_reason: None,
        rules: None,
        retry: None,
    });
    a.sign(&secret(dir, "bob.key"));
    a.sign(&secret(dir, "carol.key"));
    fs::create_dir_all(bundle.join("approvals")).unwrap();
    fs::write(bundle.join("approvals/canary.lpa"), a.to_bytes()).unwrap();
    let refused = signer(dir, &["approve", "--key", "bob.key", "--ring", "pilot", "--not-before", "40s", "v1"]);
    assert_eq!(refused.code, Some(2), "{}", refused.all());
    assert!(refused.stderr.contains("lies at or after the expiry"), "{}", refused.stderr);

    let admin = admin(dir, "");
    let n = endpoint(dir, "n1", &admin, "");
    admin.publish(&bundle);
    wait_for_node(&n, Duration::from_secs(30), "waits for not-before", || {
        matches!(state(&n), Some(ReleaseState::Waiting(WaitReason::NotBefore(_))))
    });
    wait_for_node(&n, Duration::from_secs(90), "skipped as expired", || {
        state(&n) == Some(ReleaseState::Skipped(SkipReason::Expired))
    });
    assert!(!n.dir.join("data/installed").exists(), "an expired release was installed");
}

// 2. No freshness.

#[test]
fn node_without_a_fresh_timestamp_statement_starts_no_install_and_resumes_when_one_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for who in ["alice", "bob", "carol", "ts", "enroll"] {
        signer(dir, &["keygen", "--out", &format!("{who}.key")]).ok();
    }
    let mut args: Vec<String> = ["root", "init", "--out", "root.lpr"].map(String::from).to_vec();
    for role in ["root", "release", "approve"] {
        for who in ["alice", "bob", "carol"] {
            args.extend([format!("--{role}-key"), format!("{who}.key.pub")]);
        }
        args.extend([format!("--{role}-threshold"), "2".into()]);
    }
    args.extend(["--timestamp-key".into(), "ts.key.pub".into(), "--timestamp-threshold".into(), "1".into()]);
    args.extend(["--enroll-key".into(), "enroll.key.pub".into(), "--enroll-threshold".into(), "1".into()]);
    signer(dir, &args).ok();
    signer(dir, &["root", "sign", "--key", "alice.key", "root.lpr"]).ok();
    signer(dir, &["root", "sign", "--key", "bob.key", "root.lpr"]).ok();
    let bundle = release(dir, "v1", 1, &[]);
    // The approval comes due in 40 s; statements live 6 s. The admin node (the timestamp node)
    // stops before the approval comes due: the endpoint must not install under a stale statement.
    signer(dir, &["approve", "--key", "bob.key", "--ring", "canary", "--not-before", "40s", "v1"]).ok();
    signer(dir, &["approve", "--key", "carol.key", "--ring", "canary", "v1"]).ok();
    let ts = format!(
        "timestamp_key = \"{}\"\nstatement_interval_secs = 2\nstatement_lifetime_secs = 6",
        dir.join("ts.key").display()
    );
    let mut admin = admin(dir, &ts);
    let n = endpoint(dir, "n1", &admin, "max_staleness_secs = 60");
    admin.publish(&bundle);
    wait_for_node(&n, Duration::from_secs(30), "a statement and the not-before wait", || {
        let st = n.status();
        st.statement.is_some()
            && matches!(st.releases.first().map(|r| r.state), Some(ReleaseState::Waiting(WaitReason::NotBefore(_))))
    });
    assert_eq!(admin.stop(), Some(0));
    wait_for_node(&n, Duration::from_secs(60), "stale", || state(&n) == Some(ReleaseState::Waiting(WaitReason::Stale)));
    assert!(!n.dir.join("data/installed").exists(), "installed without a fresh statement");
    // The timestamp node comes back: a fresh statement, and the install goes ahead.
    admin.start();
    wait_for_node(&n, Duration::from_secs(60), "installed after a fresh statement", || {
        state(&n) == Some(ReleaseState::Installed)
    });
}

// 3. Local root through the umask.

#[test]
fn under_umask_000_the_data_dir_stays_private_and_a_replaced_blob_is_refused_when_staged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let bundle = release(dir, "v1", 1, &[]);
    let admin = admin(dir, "");
    let mut n = Node::new(dir, "n1", &dir.join("root.lpr"), &[admin.port], "ring = \"canary\"");
    n.wrapper = Some(
        ["sh", "-c", "umask 000; exec \"$0\" run --config \"$1\"", "{node}", "{config}"].map(String::from).to_vec(),
    );
    n.start();
    wait_until(Duration::from_secs(30), "connected", || !n.status().peers.is_empty());
    admin.publish(&bundle);
    wait_for_node(&n, Duration::from_secs(60), "downloaded, not approved", || {
        state(&n) == Some(ReleaseState::Waiting(WaitReason::NotApproved))
    });
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    let data = n.dir.join("data");
    assert_eq!(mode(&data), 0o700);
    for d in ["blobs", "partial", "stage"] {
        assert_eq!(mode(&data.join(d)), 0o700, "{d}");
    }
    for f in ["state.db", "node.key", "lock", "control.sock"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    let install_sh = fs::read(dir.join("v1-src/install.sh")).unwrap();
    let blob = data.join("blobs").join(blob_name(&install_sh));
    assert_eq!(mode(&blob), 0o600);
    // Someone with write access (root here) swaps the verified install script for another of
    // the same length. The node must not run it.
    let mut evil = b"touch \"$LANPATCH_DATA/pwned\"".to_vec();
    evil.resize(install_sh.len(), b' ');
    fs::write(&blob, &evil).unwrap();
    approve(dir, "v1", "canary");
    admin.publish(&bundle);
    wait_for_node(&n, Duration::from_secs(60), "refused at staging", || {
        state(&n) == Some(ReleaseState::Failed(FailReason::Tampered))
    });
    assert!(!data.join("pwned").exists() && !data.join("installed").exists());
}

// 4. Gossip floods are free.

#[test]
fn a_flood_of_junk_gossip_gets_the_sender_banned_and_the_refusal_log_stays_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let root = dir.join("root.lpr");
    let mut victim = Node::new(dir, "victim", &root, &[], "refusal_log_max = 4\nban_refusals_per_minute = 20");
    victim.start();
    let mut attacker = Node::new(dir, "attacker", &root, &[victim.port], "[fault_injection]\nraw_gossip = \"allow\"");
    attacker.start();
    wait_until(Duration::from_secs(30), "connected", || !victim.status().peers.is_empty());
    let attacker_id = attacker.status().peer_id;
    let send = |i: u32| {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(attacker.socket()).unwrap();
        let junk = hex::encode(format!("junk envelope number {i}").as_bytes());
        writeln!(s, "{}", serde_json::json!({ "RawGossip": { "hex": junk } })).unwrap();
        let mut resp = String::new();
        std::io::BufReader::new(s).read_line(&mut resp).unwrap();
    };
    let mut i = 0;
    wait_for_node(&victim, Duration::from_secs(60), "the flooder banned", || {
        for _ in 0..20 {
            i += 1;
            send(i);
        }
        victim.status().banned.contains(&attacker_id)
    });
    for _ in 0..200 {
        i += 1;
        send(i);
    }
    let st = victim.status();
    let db = rusqlite::Connection::open(victim.dir.join("data/state.db")).unwrap();
    let rows: i64 = db.query_row("SELECT count(*) FROM refusals", [], |r| r.get(0)).unwrap();
    // Every refusal is counted; only the newest few keep their details.
    assert!(rows <= 4, "the refusal log grew to {rows} rows");
    // (Gossip scoring may ban the flooder after a handful of messages: more refusals than rows
    // is the property, not how many more.)
    assert!(st.refusals > rows as u64, "refusals {} vs {rows} rows", st.refusals);
    // Banned by the refusal rate or by gossip scoring (whichever came first), and persisted.
    assert!(
        st.recent_refusals.iter().any(|r| r.kind == RefusalKind::PeerBanned && r.source.contains(&attacker_id)),
        "{:?}",
        st.recent_refusals
    );
    let bans: i64 = db.query_row("SELECT count(*) FROM bans", [], |r| r.get(0)).unwrap();
    assert_eq!(bans, 1);
}

// 5. Bans are cheap to evade.

#[test]
fn a_ban_survives_a_restart_of_the_node_that_made_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let root = dir.join("root.lpr");
    let bundle = crate::fleet::make_release(dir, "bundle", 1, &payload(2 * 1024 * 1024, 3), 64 * 1024, &[]);
    let mut liar = Node::new(dir, "liar", &root, &[], "[fault_injection]\ncorrupt_uploads = \"always\"");
    liar.start();
    liar.publish(&bundle);
    let mut victim = Node::new(dir, "victim", &root, &[liar.port], "");
    victim.start();
    let liar_id = liar.status().peer_id;
    wait_for_node(&victim, Duration::from_secs(60), "the liar banned", || victim.status().banned.contains(&liar_id));
    assert_eq!(victim.stop(), Some(0));
    victim.start();
    let st = victim.status();
    assert!(st.banned.contains(&liar_id), "the ban was forgotten on restart: {:?}", st.banned);
    assert!(st.peers.iter().all(|p| p.peer != liar_id), "reconnected to a banned peer");
}

// 7. Keys.

#[test]
fn signer_refuses_a_secret_key_others_can_read_unless_told_and_then_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    release(dir, "v1", 1, &[]);
    fs::set_permissions(dir.join("carol.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let r: Run = signer(dir, &["release", "sign", "--key", "carol.key", "v1"]);
    assert_eq!(r.code, Some(2), "{}", r.all());
    assert!(r.stderr.contains("mode 644") && r.stderr.contains("chmod 600"), "{}", r.stderr);
    let r = signer(dir, &["release", "sign", "--allow-insecure-key-mode", "--key", "carol.key", "v1"]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert!(r.stderr.contains("warning: secret key"), "{}", r.stderr);
}

#[test]
fn control_socket_group_opens_the_socket_to_that_group_only() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let gid = fs::metadata("/proc/self").unwrap().gid();
    let mut n = Node::new(dir, "n1", &dir.join("root.lpr"), &[], &format!("control_socket_group = \"{gid}\""));
    n.start();
    let data = n.dir.join("data");
    let meta = |p: &Path| fs::symlink_metadata(p).unwrap();
    assert_eq!(meta(&data).permissions().mode() & 0o777, 0o710);
    assert_eq!(meta(&data).gid(), gid);
    assert_eq!(meta(&data.join("control.sock")).permissions().mode() & 0o777, 0o660);
    assert_eq!(meta(&data.join("control.sock")).gid(), gid);
    assert_eq!(meta(&data.join("state.db")).permissions().mode() & 0o777, 0o600);
    // No leftover of the private directory the socket was made in.
    let left: Vec<_> = fs::read_dir(&data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".control-"))
        .collect();
    assert!(left.is_empty());
    let bad = Node::with_config(
        dir,
        "n2",
        &format!(
            "data_dir = \"data\"\ntrust_root = \"{}\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\ncontrol_socket_group = \"no-such-group-here\"\n",
            dir.join("root.lpr").display()
        ),
        0,
        None,
    );
    let (code, log) = bad.run_expecting_exit(Duration::from_secs(30));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("no-such-group-here"), "{log}");
}
