//! Distribution across real node processes on loopback, with static peers.

use lanpatch_protocol::control::RefusalKind;
use std::time::Duration;

use crate::fleet::{Node, blob_name, make_fleet_keys, make_release, payload, wait_until};

const MIB: usize = 1024 * 1024;

fn downloaded(n: &Node, version: u64) -> bool {
    n.has_downloaded("tool", version)
}

#[test]
fn six_nodes_get_identical_verified_copies_and_the_seed_uploads_far_less_than_six() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let data = payload(6 * MIB, 1);
    let bundle = make_release(dir, "bundle", 1, &data, 64 * 1024, &[]);
    let root = dir.join("root.lpr");
    // The seed (an admin workstation) has a modest uplink; the LAN between endpoints is fast.
    let mut seed = Node::new(dir, "seed", &root, &[], "upload_limit = 4194304");
    seed.start();
    let mut nodes: Vec<Node> = (1..=5).map(|i| Node::new(dir, &format!("n{i}"), &root, &[seed.port], "")).collect();
    for n in &mut nodes {
        n.start();
    }
    // Everyone finds everyone through peer exchange before the release goes out.
    wait_until(Duration::from_secs(30), "full mesh", || nodes.iter().all(|n| n.status().peers.len() == 5));
    seed.publish(&bundle);
    wait_until(Duration::from_secs(90), "all five downloads", || nodes.iter().all(|n| downloaded(n, 1)));

    let name = blob_name(&data);
    for n in &nodes {
        assert!(n.blob(&name).as_deref() == Some(&data[..]), "{} holds different bytes", n.dir.display());
        assert_eq!(n.status().refusals, 0);
    }
    let seed_up: u64 = seed.status().transfers.iter().map(|t| t.bytes_up).sum();
    let copies = seed_up as f64 / data.len() as f64;
    let peer_bytes: u64 = nodes.iter().flat_map(|n| n.status().transfers).map(|t| t.bytes_down).sum::<u64>() - seed_up;
    eprintln!("seed uploaded {copies:.2} copies; {peer_bytes} bytes moved between endpoints");
    // Initial seeding: each chunk leaves the seed once, and a peer that asks for a chunk sent
    // already is told who got it (`ElsewhereAt`) and takes it from there (1.00 copies measured
    // on an idle machine; a re-send needs a 10 s hold to end first).
    assert!(copies < 1.5, "seed uploaded {copies:.2} copies of the release; peers should carry the rest");
    assert!(copies >= 1.0, "someone must have fetched every chunk from the seed at least once");
}

/// The capture the seed must not fall for: a requester that asks the seed for chunks and drops
/// each stream once the seed answered that it sends the chunk, again and again (fault injection
/// `drop_downloads`). Were it named as the holder of every chunk it asked for, honest nodes would
/// be sent to it for chunks it never got until it stopped (46-49 s measured against the code
/// before; with this test's attacker, the code before missed the 40 s limit in two runs of two).
/// The seed names only peers a whole chunk was written to and that kept their word, so the
/// honest nodes finish while the attacker is still at it.
#[test]
fn a_requester_that_drops_streams_cannot_capture_the_seed_and_honest_nodes_finish_without_waiting_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let data = payload(5 * MIB, 9);
    let bundle = make_release(dir, "bundle", 1, &data, 256 * 1024, &[]);
    let root = dir.join("root.lpr");
    let mut seed = Node::new(dir, "seed", &root, &[], "upload_limit = 1048576");
    seed.start();
    let mut mallory = Node::new(
        dir,
        "mallory",
        &root,
        &[seed.port],
        "max_inflight_per_peer = 8\n[fault_injection]\ndrop_downloads = \"after-header\"",
    );
    mallory.start();
    let mut nodes: Vec<Node> = (1..=3).map(|i| Node::new(dir, &format!("n{i}"), &root, &[seed.port], "")).collect();
    for n in &mut nodes {
        n.start();
    }
    wait_until(Duration::from_secs(30), "full mesh", || {
        nodes.iter().chain([&mallory]).all(|n| n.status().peers.len() == 4)
    });
    let mallory_id = mallory.status().peer_id;
    let seed_id = seed.status().peer_id;
    // Chunk streams from the seed that mallory dropped after the seed committed to sending.
    let dropped = || {
        let log = std::fs::read_to_string(mallory.dir.join("node.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains("dropped after the header") && l.contains(&seed_id)).count()
    };
    seed.publish(&bundle);
    wait_until(Duration::from_secs(30), "mallory dropping the seed's chunks", || dropped() >= 10);
    let started = std::time::Instant::now();
    wait_until(Duration::from_secs(40), "the honest nodes' downloads", || nodes.iter().all(|n| downloaded(n, 1)));
    let took = started.elapsed();
    let name = blob_name(&data);
    for n in &nodes {
        assert!(n.blob(&name).as_deref() == Some(&data[..]), "{} holds different bytes", n.dir.display());
    }
    // Still attacking, still connected, never finished: the honest nodes did not wait for it.
    let st = mallory.status();
    assert!(!downloaded(&mallory, 1), "mallory dropped every chunk, it cannot have the release");
    assert!(!st.peers.is_empty(), "mallory was cut off: the test no longer shows the seed resisting it");
    assert!(!seed.status().banned.contains(&mallory_id), "mallory was banned: the test shows nothing");
    eprintln!(
        "honest nodes finished {:.1} s after mallory had dropped 10 of the seed's chunk streams ({} by now)",
        took.as_secs_f64(),
        dropped()
    );
}

#[test]
fn node_killed_mid_download_resumes_without_refetching_verified_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let data = payload(4 * MIB, 2);
    let chunk = 64 * 1024;
    let bundle = make_release(dir, "bundle", 1, &data, chunk as u32, &[]);
    let root = dir.join("root.lpr");
    let mut seed = Node::new(dir, "seed", &root, &[], "upload_limit = 524288");
    seed.start();
    let inflight = 4;
    let mut leech = Node::new(dir, "leech", &root, &[seed.port], &format!("max_inflight_per_peer = {inflight}"));
    leech.start();
    wait_until(Duration::from_secs(20), "connection", || leech.status().peers.len() == 1);
    seed.publish(&bundle);
    let total = data.len() / chunk;
    let mut seen = 0;
    wait_until(Duration::from_secs(60), "a third of the chunks", || {
        seen = leech.status().releases.first().map(|r| r.have_chunks).unwrap_or(0);
        seen >= total / 3
    });
    leech.kill9();
    assert!(seen < total, "download finished before the kill; slow the seed down");

    leech.start();
    wait_until(Duration::from_secs(60), "resumed download", || downloaded(&leech, 1));
    let st = leech.status();
    let r = &st.releases[0];
    eprintln!("seen before kill {seen}, resumed {}, fetched after restart {}", r.resumed_chunks, r.fetched_chunks);
    assert!(r.resumed_chunks >= seen, "verified chunks were lost: saw {seen}, resumed {}", r.resumed_chunks);
    assert_eq!(r.resumed_chunks + r.fetched_chunks, total);
    // Over both runs, at most the chunks in flight at the kill were fetched twice.
    let down: u64 = st.transfers.iter().map(|t| t.bytes_down).sum();
    assert!(down <= (data.len() + inflight * chunk) as u64, "fetched {down} bytes for a {} byte release", data.len());
    assert_eq!(leech.blob(&blob_name(&data)).as_deref(), Some(&data[..]));
}

#[test]
fn peer_serving_corrupt_chunks_is_banned_and_the_others_still_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let data = payload(2 * MIB, 3);
    let bundle = make_release(dir, "bundle", 1, &data, 64 * 1024, &[]);
    let root = dir.join("root.lpr");
    let mut seed = Node::new(dir, "seed", &root, &[], "upload_limit = 1048576");
    seed.start();
    seed.publish(&bundle);
    let mut liar = Node::new(dir, "liar", &root, &[seed.port], "[fault_injection]\ncorrupt_uploads = \"always\"");
    liar.start();
    // The liar holds the real release (so it advertises every chunk) but corrupts what it sends.
    liar.publish(&bundle);
    let mut honest: Vec<Node> =
        (1..=2).map(|i| Node::new(dir, &format!("h{i}"), &root, &[seed.port, liar.port], "")).collect();
    for n in &mut honest {
        n.start();
    }
    wait_until(Duration::from_secs(60), "honest downloads", || honest.iter().all(|n| downloaded(n, 1)));
    let liar_id = liar.status().peer_id;
    for n in &honest {
        let st = n.status();
        assert!(st.banned.contains(&liar_id), "{} did not ban the liar: {:?}", n.dir.display(), st.banned);
        assert!(
            st.recent_refusals.iter().any(|r| r.kind == RefusalKind::PeerBanned
                && r.source.contains(&liar_id)
                && r.reason.contains("does not match its signed hash")),
            "{:?}",
            st.recent_refusals
        );
        assert_eq!(n.blob(&blob_name(&data)).as_deref(), Some(&data[..]));
    }
}

#[test]
fn gossip_signed_outside_the_root_or_replaying_an_older_release_is_refused_and_not_forwarded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let root = dir.join("root.lpr");
    let v1 = make_release(dir, "v1", 1, &payload(100_000, 4), 16 * 1024, &[]);
    let v2 = make_release(dir, "v2", 2, &payload(100_000, 5), 16 * 1024, &[]);
    let v3 = make_release(dir, "v3", 3, &payload(100_000, 6), 16 * 1024, &[]);
    // A manifest signed by two keys the root does not know (the signer checks a signing key
    // against a root when it has one; an attacker's tooling does not).
    for k in ["mallory", "trudy"] {
        crate::support::signer(dir, &["keygen", "--out", &format!("{k}.key")]).ok();
    }
    let src = dir.join("evil-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("x"), b"evil").unwrap();
    crate::support::signer(
        dir,
        &[
            "release",
            "create",
            "--product",
            "evil",
            "--version",
            "9",
            "--dir",
            "evil-src",
            "--install",
            "sh x",
            "--out",
            "evil",
        ],
    )
    .ok();
    crate::support::signer(
        dir,
        &["release", "sign", "--key", "mallory.key", "--root", "attackers-have-none.lpr", "evil"],
    )
    .ok();
    crate::support::signer(
        dir,
        &["release", "sign", "--key", "trudy.key", "--root", "attackers-have-none.lpr", "evil"],
    )
    .ok();

    // A line: attacker - b - c. No peer exchange, so c only ever hears what b forwards.
    let line = "peer_exchange = false";
    let mut b = Node::new(dir, "b", &root, &[], line);
    b.start();
    let attacker_cfg = format!("{line}\n[fault_injection]\nraw_gossip = \"allow\"");
    let mut attacker = Node::new(dir, "attacker", &root, &[b.port], &attacker_cfg);
    attacker.start();
    // c keeps to one connection: Kademlia's bootstrap learns the attacker's address from b and
    // would otherwise connect c to it directly (seen on a loaded machine), and the junk would
    // then reach c from the attacker, not through b.
    let mut c = Node::new(dir, "c", &root, &[b.port], &format!("{line}\nmax_connections = 1"));
    c.start();
    wait_until(Duration::from_secs(20), "line topology", || b.status().peers.len() == 2 && c.status().peers.len() == 1);

    b.publish(&v2);
    wait_until(Duration::from_secs(30), "v2 reaches c", || downloaded(&c, 2));

    let raw = |bundle: &std::path::Path| hex::encode(std::fs::read(bundle.join("manifest.lpm")).unwrap());
    let send = |hex: String| {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(attacker.socket()).unwrap();
        writeln!(s, "{}", serde_json::json!({ "RawGossip": { "hex": hex } })).unwrap();
        let mut resp = String::new();
        std::io::BufReader::new(s).read_line(&mut resp).unwrap();
        // "not sent" until b is subscribed, or for a duplicate within gossip's cache time.
        assert!(resp.contains("Done") || resp.contains("not sent"), "{resp}");
    };
    // Until the attacker is in b's gossip mesh its messages go nowhere: send again until b has
    // seen (and refused) both.
    wait_until(Duration::from_secs(30), "b refuses both", || {
        send(raw(&dir.join("evil")));
        send(raw(&v1));
        b.status().refusals >= 2
    });
    let bs = b.status();
    let reasons: Vec<&str> = bs.recent_refusals.iter().map(|r| r.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("release threshold not met: 0 valid") && r.contains("2 from keys outside")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("rollback refused: tool version 1 is lower than trusted version 2")),
        "{reasons:?}"
    );
    assert!(bs.releases.iter().all(|r| r.product != "evil" && r.version != 1), "{:?}", bs.releases);

    // A valid message sent the same way after the junk is forwarded to c; b validates gossip in
    // order, so once c has it, b has long decided on the junk. Nothing of the junk reached c: no
    // refusals there (it never saw those messages) and no other releases.
    wait_until(Duration::from_secs(30), "valid v3 forwarded to c", || {
        send(raw(&v3));
        c.release_state("tool", 3).is_some()
    });
    let cs = c.status();
    assert_eq!(cs.peers.len(), 1, "c is connected to b only: {:?}", cs.peers);
    assert_eq!(cs.refusals, 0, "c saw forwarded junk: {:?}", cs.recent_refusals);
    assert!(cs.releases.iter().all(|r| r.product != "evil" && r.version != 1), "{:?}", cs.releases);
}

#[test]
fn sigterm_stops_a_node_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let mut n = Node::new(dir, "n", &dir.join("root.lpr"), &[], "");
    n.start();
    assert_eq!(n.stop(), Some(0), "{}", n.log_tail());
    assert!(!n.socket().exists(), "control socket left behind");
}
