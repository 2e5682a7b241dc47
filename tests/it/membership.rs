//! Fleet membership is a credential (issue #28): only enrolled nodes get a connection, and only
//! members' messages count, for the ring their certificate names. Each test is one row of
//! docs/THREAT-MODEL.md "Membership".

use std::fs;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use lanpatch_protocol::control::RefusalKind;
use lanpatch_protocol::{
    Digest, Envelope, Hash32, Limits, Mark, PublicKey, ReleaseState, Report, RingName, Signed, Timestamp, Version,
};

use crate::fleet::{
    Node, admin, approve, endpoint, enrolled_attacker, make_fleet_keys, node_secret, release, sample, unix_now,
    wait_for_node, wait_until,
};
use crate::support::signer;

/// The payload hash of a bundle's manifest: what reports name.
fn manifest_hash(bundle: &Path) -> Hash32 {
    let bytes = fs::read(bundle.join("manifest.lpm")).unwrap();
    Envelope::decode(&bytes, &Limits::default()).unwrap().payload_hash()
}

/// Publishes `bytes` as raw gossip from `n` (its config allows it: `[fault_injection]`).
/// Publishes `bytes` as raw gossip from `n` (its config allows it: `[fault_injection]`), waiting
/// until gossip sent it (the first messages wait for a subscribed peer); whether it was sent.
fn raw_gossip(n: &Node, bytes: &[u8]) -> bool {
    let mut sent = false;
    crate::fleet::poll(Duration::from_secs(20), || {
        sent = raw_gossip_once(n, bytes);
        sent
    });
    sent
}

/// One attempt of [`raw_gossip`].
fn raw_gossip_once(n: &Node, bytes: &[u8]) -> bool {
    let mut s = std::os::unix::net::UnixStream::connect(n.socket()).unwrap();
    writeln!(s, "{}", serde_json::json!({ "RawGossip": { "hex": hex::encode(bytes) } })).unwrap();
    let mut resp = String::new();
    std::io::BufReader::new(s).read_line(&mut resp).unwrap();
    resp.contains("\"Done\"")
}

fn fake_report(
    key: &ed25519_dalek::SigningKey,
    manifest: Hash32,
    ring: &str,
    state: ReleaseState,
    seq: u64,
    certificate: Option<Envelope>,
) -> Vec<u8> {
    let mut r = Signed::new(Report {
        node: PublicKey(key.verifying_key().to_bytes()),
        hostname: format!("fake-{seq}"),
        ring: ring.parse::<RingName>().unwrap(),
        manifest,
        product: "tool".parse().unwrap(),
        version: Version(1),
        state,
        detail: "installed".into(),
        exit_code: Some(0),
        at: Timestamp(unix_now()),
        seq,
        progress: None,
        certificate,
        attempt: 0,
    });
    r.sign(key);
    r.to_bytes()
}

fn fresh_key(i: u64) -> ed25519_dalek::SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    seed[8] = 0xa5;
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

fn certificate_of(n: &Node) -> Envelope {
    Envelope::decode(&fs::read(n.dir.join("data/node.cert")).unwrap(), &Limits::default()).unwrap()
}

/// Reports `n` stored for `ring` from any node but `except` (a node key in hex).
fn reports_in(n: &Node, ring: &str, except: &str) -> i64 {
    let db = rusqlite::Connection::open(n.dir.join("data/state.db")).unwrap();
    let except = hex::decode(except).unwrap();
    db.query_row("SELECT count(*) FROM reports WHERE ring = ?1 AND node != ?2", rusqlite::params![ring, except], |r| {
        r.get(0)
    })
    .unwrap()
}

fn count(n: &Node, table: &str) -> i64 {
    let db = rusqlite::Connection::open(n.dir.join("data/state.db")).unwrap();
    db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
}

fn peer_ids(n: &Node) -> Vec<String> {
    n.status().peers.into_iter().map(|p| p.peer).collect()
}

#[test]
fn an_unenrolled_node_holding_the_fleet_root_is_refused_at_the_door_and_gets_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "relay = true\nreachability = \"public\"");
    let b = endpoint(dir, "b", &admin, "");
    let bundle = release(dir, "v1", 1, &[]);
    approve(dir, "v1", "canary");
    admin.publish(&bundle);
    wait_for_node(&b, Duration::from_secs(60), "b installed", || {
        b.release_state("tool", 1) == Some(ReleaseState::Installed)
    });
    // A stock node with the fleet's root, asking for everything: a collector, behind NAT (it
    // wants a relay slot), dialing the admin node as its bootstrap peer.
    let bootstrap = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", admin.port, admin.status().peer_id);
    let mut outsider = Node::new(
        dir,
        "outsider",
        &dir.join("root.lpr"),
        &[admin.port, b.port],
        &format!(
            "enrollment = \"off\"\ncollector = true\nreachability = \"private\"\nbootstrap_peers = [\"{bootstrap}\"]"
        ),
    );
    outsider.start();
    let outsider_id = outsider.status().peer_id;
    wait_for_node(&admin, Duration::from_secs(30), "the outsider refused at the admin node's door", || {
        admin
            .status()
            .recent_refusals
            .iter()
            .any(|r| r.kind == RefusalKind::Membership && r.source.contains(&outsider_id))
    });
    wait_for_node(&b, Duration::from_secs(30), "the outsider refused at b's door", || {
        b.status().recent_refusals.iter().any(|r| r.kind == RefusalKind::Membership && r.source.contains(&outsider_id))
    });
    // It keeps redialing; give it a few rounds, then look at what it got.
    let redials = sample(&admin.scrape(), "lanpatch_door_refusals_total{reason=\"no_certificate\"}");
    wait_until(Duration::from_secs(30), "the outsider refused again", || {
        sample(&admin.scrape(), "lanpatch_door_refusals_total{reason=\"no_certificate\"}") > redials
    });
    let st = outsider.status();
    assert!(st.peers.is_empty(), "the outsider has peers: {:?}", st.peers);
    assert!(st.releases.is_empty(), "the outsider learned releases: {:?}", st.releases);
    assert_eq!(count(&outsider, "reports"), 0, "the outsider stored reports");
    assert_eq!(count(&outsider, "inventories"), 0, "the outsider stored inventories");
    assert_eq!(count(&outsider, "manifests"), 0, "the outsider got the catalog");
    assert!(outsider.blob(&crate::fleet::blob_name(&crate::fleet::payload(150_000, 1))).is_none(), "it got chunks");
    let log = fs::read_to_string(outsider.dir.join("node.log")).unwrap();
    assert!(!log.contains("relay reservation accepted"), "the outsider got a relay slot");
    assert!(!peer_ids(&admin).contains(&outsider_id) && !peer_ids(&b).contains(&outsider_id));
    // Kademlia: nothing reached the admin node from it (no connection means no record).
    let admin_log = fs::read_to_string(admin.dir.join("node.log")).unwrap();
    assert!(!admin_log.contains(&format!("peer ready peer_id={outsider_id}")), "the outsider was identified");
}

#[test]
fn fake_installed_reports_from_an_unenrolled_key_or_for_another_ring_move_neither_the_gate_nor_the_failure_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "ban_refusals_per_minute = 1000");
    // The real canary has the release but it is not approved for canary yet: nothing installed.
    let canary = endpoint(dir, "canary1", &admin, "");
    let mallory = enrolled_attacker(dir, &admin);
    let bundle = release(dir, "v1", 1, &[]);
    admin.publish(&bundle);
    let m = manifest_hash(&bundle);
    wait_for_node(&canary, Duration::from_secs(30), "the canary knows the release", || {
        canary.release_state("tool", 1).is_some()
    });
    let before = sample(&admin.scrape(), "lanpatch_refusals_total{kind=\"membership\"}");
    let installed = ReleaseState::Installed;
    // 1. A fresh key that names itself ring canary, no certificate.
    raw_gossip(&mallory, &fake_report(&fresh_key(1), m, "canary", installed, 1, None));
    // 2. An enrolled member (ring broad) that says canary, with its own certificate.
    let own = node_secret(&mallory);
    raw_gossip(&mallory, &fake_report(&own, m, "canary", installed, 2, Some(certificate_of(&mallory))));
    // 3. A fresh key carrying the real canary's certificate.
    raw_gossip(&mallory, &fake_report(&fresh_key(3), m, "canary", installed, 3, Some(certificate_of(&canary))));
    wait_for_node(&admin, Duration::from_secs(30), "three membership refusals", || {
        sample(&admin.scrape(), "lanpatch_refusals_total{kind=\"membership\"}") >= before + 3.0
    });
    let reasons: Vec<String> = admin
        .status()
        .recent_refusals
        .into_iter()
        .filter(|r| r.kind == RefusalKind::Membership)
        .map(|r| r.reason)
        .collect();
    let all = reasons.join("\n");
    assert!(all.contains("no node certificate"), "{all}");
    assert!(all.contains("the certificate enrolls ring broad"), "{all}");
    assert!(all.contains("the peer is") || all.contains("names key"), "{all}");
    assert_eq!(reports_in(&admin, "canary", &canary.node_key()), 0, "a fake canary report was stored");
    // The gate: canary has no successful install, so broad cannot be approved.
    let gate = signer(
        dir,
        &[
            "approve".as_ref(),
            "--key".as_ref(),
            "bob.key".as_ref(),
            "--ring".as_ref(),
            "broad".as_ref(),
            "--rings".as_ref(),
            "canary,broad".as_ref(),
            "--node".as_ref(),
            admin.socket().as_os_str(),
            "v1".as_ref(),
        ],
    );
    assert_eq!(gate.code, Some(1), "the gate opened on fake reports: {}", gate.all());
    assert!(gate.all().contains("canary"), "the gate refused for another reason: {}", gate.all());
    // And the real canary's own report (Available, not installed) is what the collector holds.
    assert!(canary.release_state("tool", 1).is_some_and(|s| s != ReleaseState::Installed));
}

#[test]
fn two_thousand_reports_from_unenrolled_keys_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "");
    let mallory = enrolled_attacker(dir, &admin);
    let bundle = release(dir, "v1", 1, &[]);
    admin.publish(&bundle);
    let m = manifest_hash(&bundle);
    let stored_before = count(&admin, "reports");
    let refused_before = sample(&admin.scrape(), "lanpatch_refusals_total{kind=\"membership\"}");
    for i in 0..2000u64 {
        // Half about the real release, half about made-up ones.
        let manifest = if i % 2 == 0 { m } else { Hash32::of(&i.to_le_bytes()) };
        let report = fake_report(&fresh_key(1000 + i), manifest, "broad", ReleaseState::Installed, i, None);
        // Once the admin node has banned mallory, gossip has nobody to send to.
        if i == 0 {
            assert!(raw_gossip(&mallory, &report), "the first report was not sent");
        } else {
            raw_gossip_once(&mallory, &report);
        }
    }
    // Gossip scoring graylists mallory (an enrolled node forwarding what no member would) after
    // a handful: the property is that none of what arrived was stored, that it was refused as
    // membership, and that the forwarder was banned.
    let mallory_id = mallory.status().peer_id;
    wait_for_node(&admin, Duration::from_secs(30), "refusals counted and the forwarder banned", || {
        sample(&admin.scrape(), "lanpatch_refusals_total{kind=\"membership\"}") > refused_before
            && admin.status().banned.contains(&mallory_id)
    });
    let fresh: Vec<Vec<u8>> = (0..2000u64).map(|i| fresh_key(1000 + i).verifying_key().to_bytes().to_vec()).collect();
    let db = rusqlite::Connection::open(admin.dir.join("data/state.db")).unwrap();
    let mut stmt = db.prepare("SELECT node FROM reports").unwrap();
    let nodes: Vec<Vec<u8>> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert!(nodes.iter().all(|n| !fresh.contains(n)), "a report from an unenrolled key was stored");
    assert!(count(&admin, "reports") <= stored_before + 2, "reports grew from {stored_before}");
}

#[test]
fn a_member_flooding_digests_is_held_to_its_budget_and_the_pulls_it_causes_stay_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "");
    let mallory = enrolled_attacker(dir, &admin);
    let bundle = release(dir, "v1", 1, &[]);
    admin.publish(&bundle);
    let m = manifest_hash(&bundle);
    let key = node_secret(&mallory);
    let cert = certificate_of(&mallory);
    let flood_before = sample(&admin.scrape(), "lanpatch_refusals_total{kind=\"member_flood\"}");
    let start = Instant::now();
    let base = unix_now() - 300;
    for i in 0..300u64 {
        // Each newer than the last (a replay is not even charged), each naming a newer report of
        // the real release than the admin node holds: each would make it pull.
        let mut d = Signed::new(Digest {
            node: PublicKey(key.verifying_key().to_bytes()),
            hostname: "mallory".into(),
            ring: "broad".parse().unwrap(),
            at: Timestamp(base + i),
            inventory: 0,
            reports: vec![Mark { manifest: m, seq: u64::MAX - 1000 + i }],
            certificate: Some(cert.clone()),
        });
        d.sign(&key);
        assert!(raw_gossip(&mallory, &d.to_bytes()), "digest {i} was not sent");
    }
    // At most one budget per minute the flood spanned was acted on; every other digest that
    // arrived was refused as a member flood.
    let minutes = start.elapsed().as_secs() / 60 + 1;
    let acted_at_most = 30 * minutes;
    wait_for_node(&admin, Duration::from_secs(60), "the flood held to the budget", || {
        sample(&admin.scrape(), "lanpatch_refusals_total{kind=\"member_flood\"}") - flood_before
            >= (300 - acted_at_most) as f64
    });
}

#[test]
fn a_revoked_node_is_cut_off_within_ten_seconds_and_refused_when_it_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "");
    let b = endpoint(dir, "b", &admin, "");
    let c = endpoint(dir, "c", &admin, "");
    let c_id = c.status().peer_id;
    wait_until(Duration::from_secs(30), "b and c connected", || peer_ids(&b).contains(&c_id));
    signer(
        dir,
        &[
            "revoke",
            "--root",
            "root.lpr",
            "--key",
            "enroll.key",
            "--first",
            "--node-key",
            &c.node_key(),
            "--out",
            "revoked.lpv",
        ],
    )
    .ok();
    let started = Instant::now();
    signer(
        dir,
        &[
            "publish".as_ref(),
            "--node".as_ref(),
            admin.socket().as_os_str(),
            "--metadata".as_ref(),
            "revoked.lpv".as_ref(),
        ],
    )
    .ok();
    wait_until(Duration::from_secs(10), "c cut off by the admin node and by b", || {
        !peer_ids(&admin).contains(&c_id) && !peer_ids(&b).contains(&c_id)
    });
    eprintln!("cut off after {:?}", started.elapsed());
    assert!(b.dir.join("data/revocations.lpv").exists(), "b did not keep the revocation list");
    // c redials its static peer every few seconds: refused at the door as revoked.
    wait_for_node(&admin, Duration::from_secs(30), "c refused as revoked", || {
        sample(&admin.scrape(), "lanpatch_door_refusals_total{reason=\"revoked\"}") >= 2.0
    });
    assert!(!peer_ids(&admin).contains(&c_id));
}

#[test]
fn an_expired_certificate_is_cut_off_when_it_expires_and_refused_at_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "");
    let mut c = Node::new(dir, "c", &dir.join("root.lpr"), &[admin.port], "ring = \"canary\"");
    let cert = c.enroll(&["--expires", "45s"]);
    let expires = Signed::<lanpatch_protocol::NodeCertificate>::decode(&fs::read(cert).unwrap(), &Limits::default())
        .unwrap()
        .value()
        .expires;
    c.start();
    let c_id = c.status().peer_id;
    wait_until(Duration::from_secs(40), "c connected while its certificate is valid", || {
        peer_ids(&admin).contains(&c_id)
    });
    wait_for_node(&admin, Duration::from_secs(90), "c cut off after expiry", || {
        !peer_ids(&admin).contains(&c_id)
            && sample(&admin.scrape(), "lanpatch_door_refusals_total{reason=\"expired\"}") >= 1.0
    });
    assert!(unix_now() >= expires.0, "cut off before the certificate expired at {}", expires.0);
    c.stop();
    let (code, log) = c.run_expecting_exit(Duration::from_secs(30));
    assert_eq!(code, Some(4), "{log}");
    assert!(log.contains("expired"), "{log}");
}

#[test]
fn ring_site_and_tags_come_from_the_certificate_not_from_node_toml() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "");
    let mut n = Node::new(dir, "n", &dir.join("root.lpr"), &[admin.port], "ring = \"broad\"\nsite = \"hq\"");
    n.enroll(&[]);
    // The host edits its node.toml to move itself into canary, at another site.
    let text = fs::read_to_string(&n.config).unwrap().replace("ring = \"broad\"", "ring = \"canary\"");
    fs::write(&n.config, text.replace("site = \"hq\"", "site = \"elsewhere\"")).unwrap();
    n.start();
    let st = n.status();
    assert_eq!((st.ring.as_str(), st.site.as_str()), ("broad", "hq"));
    assert!(fs::read_to_string(n.dir.join("node.log")).unwrap().contains("node.toml's ring is ignored"));
}

#[test]
fn a_fleet_from_before_enrollment_runs_unchecked_then_moves_to_enrollment_by_a_rotated_root() {
    use lanpatch_protocol::control::Membership;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The previous release's root: no enroll role. The enroll key is made later, elsewhere.
    for admin in ["alice", "bob", "carol"] {
        signer(dir, &["keygen", "--out", &format!("{admin}.key")]).ok();
    }
    let mut args: Vec<String> = ["root", "init", "--out", "root.lpr"].map(String::from).to_vec();
    for role in ["root", "release", "approve"] {
        for admin in ["alice", "bob", "carol"] {
            args.extend([format!("--{role}-key"), format!("{admin}.key.pub")]);
        }
        args.extend([format!("--{role}-threshold"), "2".into()]);
    }
    let made = signer(dir, &args);
    assert!(made.all().contains("no --enroll-key"), "{}", made.all());
    signer(dir, &["root", "sign", "--key", "alice.key", "root.lpr"]).ok();
    signer(dir, &["root", "sign", "--key", "bob.key", "root.lpr"]).ok();
    let mut a = Node::new(dir, "admin", &dir.join("root.lpr"), &[], "collector = true\nring = \"admin\"");
    a.start();
    let mut b = Node::new(dir, "b", &dir.join("root.lpr"), &[a.port], "");
    b.start();
    wait_until(Duration::from_secs(30), "connected, unchecked", || !b.status().peers.is_empty());
    assert_eq!(b.status().membership, Membership::NoEnrollRole);
    assert!(fs::read_to_string(b.dir.join("node.log")).unwrap().contains("membership is NOT checked"));

    // Rotate the root to add the enroll role; enroll both nodes against it before publishing it.
    let keys = dir.join("enroll-keys");
    fs::create_dir_all(&keys).unwrap();
    signer(&keys, &["keygen", "--out", "enroll.key"]).ok();
    let root2 = keys.join("root-2.lpr");
    let current = dir.join("root.lpr");
    signer(
        dir,
        &[
            "root".as_ref(),
            "rotate".as_ref(),
            "--current".as_ref(),
            current.as_os_str(),
            "--enroll-key".as_ref(),
            keys.join("enroll.key.pub").as_os_str(),
            "--enroll-threshold".as_ref(),
            "1".as_ref(),
            "--out".as_ref(),
            root2.as_os_str(),
        ],
    )
    .ok();
    for k in ["alice.key", "bob.key"] {
        signer(dir, &["root".as_ref(), "sign".as_ref(), "--key".as_ref(), k.as_ref(), root2.as_os_str()]).ok();
    }
    a.enroll_under(Some(&root2), &[]);
    b.enroll_under(Some(&root2), &[]);
    signer(
        dir,
        &["publish".as_ref(), "--node".as_ref(), a.socket().as_os_str(), "--metadata".as_ref(), root2.as_os_str()],
    )
    .ok();
    wait_for_node(&b, Duration::from_secs(30), "b told to restart under the rotated root", || {
        fs::read_to_string(b.dir.join("node.log")).unwrap().contains("the rotated trust root has an enroll role")
    });
    // Restart the site: both enrolled, connected through the door.
    a.stop();
    b.stop();
    a.start();
    b.start();
    wait_until(Duration::from_secs(30), "connected, enrolled", || !b.status().peers.is_empty());
    for n in [&a, &b] {
        assert!(matches!(n.status().membership, Membership::Enrolled { .. }), "{:?}", n.status().membership);
    }
}

#[test]
fn a_host_joins_with_one_command_from_a_batch_that_made_its_key_and_a_keyed_host_refuses_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "");
    // `-` for the node key: the signer makes the key and writes a join bundle.
    fs::write(dir.join("hosts.tsv"), "kiosk-1 - canary lyon kiosk\n").unwrap();
    signer(
        dir,
        &["enroll", "batch", "--root", "root.lpr", "--key", "enroll.key", "--hosts", "hosts.tsv", "--out-dir", "certs"],
    )
    .ok();
    let bundle = dir.join("certs/kiosk-1.join");
    assert_eq!(fs::metadata(&bundle).unwrap().permissions().mode() & 0o777, 0o600, "a join bundle is a secret");
    let mut n = Node::new(dir, "kiosk-1", &dir.join("root.lpr"), &[admin.port], "");
    let join = |n: &Node| {
        std::process::Command::new(crate::support::bin("lanpatch-node"))
            .arg("join")
            .arg(&bundle)
            .arg("--config")
            .arg(&n.config)
            .output()
            .unwrap()
    };
    // The one command on the host.
    let out = join(&n);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::metadata(n.dir.join("data/node.key")).unwrap().permissions().mode() & 0o777, 0o600);
    n.start();
    let id = n.status().peer_id;
    wait_until(Duration::from_secs(30), "kiosk-1 admitted by the admin node", || peer_ids(&admin).contains(&id));
    let st = n.status();
    assert_eq!((st.hostname.as_str(), st.ring.as_str(), st.site.as_str()), ("kiosk-1", "canary", "lyon"));
    // A host that already has its own key does not take another's.
    let other = Node::new(dir, "other", &dir.join("root.lpr"), &[admin.port], "");
    other.node_key();
    let out = join(&other);
    assert!(!out.status.success(), "a keyed host took the bundle");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already has node key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!other.dir.join("data/node.cert").exists());
}
