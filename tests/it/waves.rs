//! Rollouts that stop themselves: the approval's signed rollout rules (phased waves inside a
//! ring, a failure-rate halt), decided by every node from the reports of its ring.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanpatch_protocol::rollout::wave_of;
use lanpatch_protocol::{Hash32, PublicKey, ReleaseState, WaitReason, Wave};

use crate::fleet::{Node, make_fleet_keys, wait_until};
use crate::support::signer;

/// Writes `$LANPATCH_DATA/ran-<version>` first, then fails on the hosts named n01 to n04 (a
/// third of twelve), else marks the install.
const INSTALL: &str = r#"echo ran > "$LANPATCH_DATA/ran-$LANPATCH_VERSION"
case "$LANPATCH_HOSTNAME" in
n01|n02|n03|n04) [ "$LANPATCH_VERSION" = 1 ] && { echo "$LANPATCH_HOSTNAME: the service did not come back" >&2; exit 3; } ;;
esac
echo "tool $LANPATCH_VERSION" > "$LANPATCH_DATA/installed-tool"
"#;
const ROLLBACK: &str = "rm -f \"$LANPATCH_DATA/installed-tool\"\n";

/// An unsigned release bundle `name` (version `version`); returns its path and manifest hash.
fn create(dir: &Path, name: &str, version: u32) -> (PathBuf, Hash32) {
    let src = dir.join(format!("{name}-src"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("install.sh"), INSTALL).unwrap();
    fs::write(src.join("rollback.sh"), ROLLBACK).unwrap();
    fs::write(src.join("payload.bin"), crate::fleet::payload(100_000, u64::from(version))).unwrap();
    // Each try is other content, so another manifest hash and another wave split.
    fs::write(src.join("nonce"), name).unwrap();
    let v = version.to_string();
    let s = src.to_string_lossy().into_owned();
    signer(
        dir,
        &[
            "release",
            "create",
            "--product",
            "tool",
            "--version",
            &v,
            "--dir",
            &s,
            "--install",
            "sh install.sh",
            "--rollback",
            "sh rollback.sh",
            "--timeout",
            "60s",
            "--out",
            name,
        ],
    )
    .ok();
    let show = signer(dir, &["release", "show", "--json", name]);
    let m: serde_json::Value = serde_json::from_str(&show.ok().stdout).unwrap();
    (dir.join(name), m["manifest"].as_str().unwrap().parse().unwrap())
}

/// Creates releases until `accept` likes the manifest (wave membership is a hash of it), signs
/// the chosen one and returns it.
fn release_where(dir: &Path, prefix: &str, version: u32, accept: impl Fn(&Hash32) -> bool) -> (PathBuf, Hash32) {
    for i in 0..200 {
        let (bundle, hash) = create(dir, &format!("{prefix}-{i}"), version);
        if accept(&hash) {
            for k in ["alice.key", "bob.key"] {
                signer(dir, &["release".as_ref(), "sign".as_ref(), "--key".as_ref(), k.as_ref(), bundle.as_os_str()])
                    .ok();
            }
            return (bundle, hash);
        }
        fs::remove_dir_all(&bundle).unwrap();
    }
    panic!("no manifest with the wanted wave split in 200 tries");
}

/// Approves with bob and carol (the approve threshold), with `rules` as approve flags.
fn approve(dir: &Path, bundle: &Path, ring: &str, rules: &[&str]) {
    for key in ["bob.key", "carol.key"] {
        // The ring is the first of its rollout order here: no ring gate before it.
        let mut args: Vec<String> =
            ["approve", "--key", key, "--ring", ring, "--rings", ring].map(String::from).to_vec();
        if key == "bob.key" {
            args.extend(rules.iter().map(|s| s.to_string()));
        }
        args.push(bundle.to_string_lossy().into_owned());
        signer(dir, &args).ok();
    }
}

fn key(n: &Node) -> PublicKey {
    n.status().node_key.parse().unwrap()
}

fn waves(spec: &[(u8, u64, u32)]) -> Vec<Wave> {
    spec.iter().map(|&(percent, min_soak_secs, min_success)| Wave { percent, min_soak_secs, min_success }).collect()
}

#[test]
fn failures_in_the_first_wave_halt_the_rest_of_the_ring_before_it_installs_and_a_fixed_release_proceeds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let mut admin =
        Node::new(dir, "admin", &dir.join("root.lpr"), &[], "collector = true\nring = \"admin\"\nhostname = \"admin\"");
    admin.start();
    let nodes: Vec<Node> = (1..=12)
        .map(|i| {
            let name = format!("n{i:02}");
            let mut n = Node::new(dir, &name, &dir.join("root.lpr"), &[admin.port], &format!("hostname = \"{name}\""));
            n.start();
            n
        })
        .collect();
    wait_until(Duration::from_secs(60), "mesh", || admin.status().peers.len() == 12);
    let keys: Vec<PublicKey> = nodes.iter().map(key).collect();
    let failing = |i: usize| i < 4;

    // v1: the first wave (25 %) must hold at least two failing nodes and one that succeeds, and
    // its installs (min_success 10: more than the wave has) never open the second wave: only
    // the halt can move the others.
    let w1 = waves(&[(25, 0, 10), (100, 0, 0)]);
    let (v1, h1) = release_where(dir, "v1", 1, |h| {
        let first: Vec<usize> = (0..12).filter(|i| wave_of(&keys[*i], h, &w1) == 0).collect();
        first.iter().filter(|i| failing(**i)).count() >= 2 && first.iter().any(|i| !failing(*i))
    });
    let first: Vec<usize> = (0..12).filter(|i| wave_of(&keys[*i], &h1, &w1) == 0).collect();
    let rest: Vec<usize> = (0..12).filter(|i| !first.contains(i)).collect();
    approve(
        dir,
        &v1,
        "broad",
        &["--wave", "25:0:10", "--wave", "100", "--max-failure-rate", "20%", "--min-reports", "2"],
    );
    let verify = signer(dir, &["verify", "--root", "root.lpr", "--ring", "broad", v1.to_str().unwrap()]);
    assert!(
        verify.ok().stdout.contains("rollout rules: halt above 20 % failed (counted from 2 outcomes); waves 25 % (soak 0 s, 10 install(s)), 100 %"),
        "{}",
        verify.stdout
    );
    admin.publish(&v1);

    let state = |n: &Node| n.release_state("tool", 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        // A first-wave node that had not started its install when the failures came in halts
        // too: the halt holds every node of the ring that has not begun.
        let done = first.iter().all(|i| state(&nodes[*i]).is_some_and(|s| s.is_outcome() || s == ReleaseState::Halted))
            && rest.iter().all(|i| state(&nodes[*i]) == Some(ReleaseState::Halted));
        if done {
            break;
        }
        if std::time::Instant::now() > deadline {
            let states: Vec<String> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let r = n.status().releases.into_iter().find(|r| r.version == 1);
                    format!("n{:02} first={} {:?}", i + 1, first.contains(&i), r.map(|r| (r.state, r.detail)))
                })
                .collect();
            panic!("timed out waiting for the first wave's outcomes and the halt of the rest:\n{}", states.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in &first {
        let s = state(&nodes[*i]).unwrap();
        if s != ReleaseState::Halted {
            assert_eq!(s.is_failure(), failing(*i), "n{:02}: {s}", i + 1);
        }
    }
    assert!(first.iter().any(|i| state(&nodes[*i]).is_some_and(|s| s.is_failure())), "no first-wave failure");
    for i in &rest {
        assert!(!nodes[*i].dir.join("data/ran-1").exists(), "n{:02} ran the install of a halted rollout", i + 1);
        let detail = &nodes[*i].status().releases[0].detail;
        assert!(detail.contains("halted:") && detail.contains("outcomes failed"), "{detail}");
    }
    // The signer and every node put each node in the same wave; status shows the halt.
    let sock = admin.socket().to_string_lossy().into_owned();
    let halted = nodes.iter().filter(|n| state(n) == Some(ReleaseState::Halted)).count();
    wait_until(Duration::from_secs(60), "the halts reach the collector", || {
        let out = signer(dir, &["status", "--node", &sock, v1.to_str().unwrap()]).stdout;
        let want = format!("halted {halted}");
        out.lines().any(|l| l.split(", ").any(|part| part == want || part.ends_with(&format!(": {want}"))))
    });
    let json = signer(dir, &["status", "--json", "--node", &sock, v1.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_str(&json.ok().stdout).unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let st = n.status();
        let theirs = st.releases.iter().find(|r| r.version == 1).and_then(|r| r.wave);
        let signers = j["releases"][0]["waves"][&st.node_key].as_u64();
        assert_eq!(theirs.map(u64::from), signers, "n{:02}", i + 1);
        assert_eq!(signers, Some(wave_of(&keys[i], &h1, &w1) as u64 + 1));
    }
    let text = signer(dir, &["status", "--node", &sock, v1.to_str().unwrap()]).stdout;
    assert!(text.contains("failure rate:") && text.contains("(HALTED)"), "{text}");
    assert!(
        text.contains("resume (fix first; a new approval counts outcomes afresh):\n      lanpatch-signer approve --key <approve key 1 of 2> --ring broad --replace"),
        "{text}"
    );

    // v2 fixes it: its second wave opens after a first-wave install and a 2 s soak, and all install.
    let w2 = waves(&[(25, 2, 1), (100, 0, 0)]);
    let (v2, h2) = release_where(dir, "v2", 2, |h| (0..12).any(|i| wave_of(&keys[i], h, &w2) == 0));
    approve(
        dir,
        &v2,
        "broad",
        &["--wave", "25:2s:1", "--wave", "100", "--max-failure-rate", "20%", "--min-reports", "2"],
    );
    admin.publish(&v2);
    wait_until(Duration::from_secs(120), "every node installs v2", || {
        nodes.iter().all(|n| n.release_state("tool", 2) == Some(ReleaseState::Installed))
    });
    // The second wave started no install before the first wave had one and soaked.
    let ran_at = |i: usize| fs::metadata(nodes[i].dir.join("data/ran-2")).unwrap().modified().unwrap();
    let first2: Vec<usize> = (0..12).filter(|i| wave_of(&keys[*i], &h2, &w2) == 0).collect();
    let earliest_first = first2.iter().map(|i| ran_at(*i)).min().unwrap();
    for i in (0..12).filter(|i| !first2.contains(i)) {
        let gap = ran_at(i).duration_since(earliest_first).unwrap_or_default();
        assert!(gap >= Duration::from_secs(1), "n{:02} (second wave) installed {gap:?} after the first wave", i + 1);
    }
}

#[test]
fn a_node_cut_off_from_its_ring_does_not_install_past_the_first_wave() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    // Two nodes that never meet: each gets the release from its own control socket, and neither
    // holds any report but its own.
    let mut early = Node::new(dir, "early", &dir.join("root.lpr"), &[], "hostname = \"early\"");
    let mut late = Node::new(dir, "late", &dir.join("root.lpr"), &[], "hostname = \"late\"");
    early.start();
    late.start();
    let (ke, kl) = (key(&early), key(&late));
    let w = waves(&[(50, 0, 1), (100, 0, 0)]);
    let (bundle, _) = release_where(dir, "r", 1, |h| wave_of(&ke, h, &w) == 0 && wave_of(&kl, h, &w) == 1);
    approve(dir, &bundle, "broad", &["--wave", "50:0:1", "--wave", "100", "--min-reports", "2"]);
    early.publish(&bundle);
    late.publish(&bundle);
    wait_until(Duration::from_secs(60), "the first-wave node installs, the other waits for reports", || {
        early.release_state("tool", 1) == Some(ReleaseState::Installed)
            && late.release_state("tool", 1) == Some(ReleaseState::Waiting(WaitReason::TooFewReports))
    });
    assert!(!late.dir.join("data/ran-1").exists(), "the cut-off node installed past its wave");
    let detail = late.status().releases[0].detail.clone();
    assert!(detail.contains("holds reports from 1 node(s) of its ring"), "{detail}");
}
