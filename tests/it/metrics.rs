//! The Prometheus endpoint against a real fan-out, checked by the real `promtool`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::fleet::{Node, make_fleet_keys, make_release, payload, sample, wait_until};
use crate::support::cannot_run;

/// `promtool check metrics` on an exposition: its complaints, or None when it accepts it.
pub fn promtool_complaints(exposition: &str) -> Option<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (!out.status.success() || !said.trim().is_empty()).then_some(said)
}

#[test]
fn after_a_fan_out_each_nodes_verified_byte_counters_add_up_to_the_release_and_promtool_accepts_them() {
    if Command::new("promtool").arg("--version").output().is_err() {
        return cannot_run("promtool is not installed (Debian package prometheus; scripts/test installs it)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let data = payload(3 * 1024 * 1024 + 12_345, 21);
    let bundle = make_release(dir, "bundle", 1, &data, 64 * 1024, &[]);
    let root = dir.join("root.lpr");
    let mut seed = Node::new(dir, "seed", &root, &[], "");
    seed.start();
    let mut nodes: Vec<Node> = (1..=3).map(|i| Node::new(dir, &format!("n{i}"), &root, &[seed.port], "")).collect();
    for n in &mut nodes {
        n.start();
    }
    wait_until(Duration::from_secs(30), "full mesh", || nodes.iter().all(|n| n.status().peers.len() == 3));
    let before = seed.scrape();
    assert_eq!(sample(&before, "lanpatch_peers_connected"), 3.0, "{before}");
    assert_eq!(sample(&before, "lanpatch_served_bytes_total"), 0.0);
    seed.publish(&bundle);
    wait_until(Duration::from_secs(90), "three downloads", || nodes.iter().all(|n| n.has_downloaded("tool", 1)));

    let mut from_peers = 0.0;
    let mut served = sample(&seed.scrape(), "lanpatch_served_bytes_total");
    for n in &nodes {
        let m = n.scrape();
        let peer = sample(&m, "lanpatch_received_bytes_total{source=\"peer\"}");
        let origin = sample(&m, "lanpatch_received_bytes_total{source=\"origin\"}");
        assert_eq!(peer + origin, data.len() as f64, "{}: peer {peer} + origin {origin}", n.dir.display());
        assert_eq!(origin, 0.0, "the release has no origin");
        assert_eq!(sample(&m, "lanpatch_releases_downloaded_total"), 1.0, "{m}");
        assert_eq!(sample(&m, "lanpatch_releases_downloaded_bytes_total"), data.len() as f64, "{m}");
        assert_eq!(sample(&m, "lanpatch_chunks_refused_total{source=\"peer\",reason=\"hash_mismatch\"}"), 0.0);
        assert_eq!(
            sample(&m, "lanpatch_releases{state=\"downloaded\"}")
                + sample(&m, "lanpatch_releases{state=\"waiting\"}")
                + sample(&m, "lanpatch_releases{state=\"installed\"}"),
            1.0,
            "{m}"
        );
        assert!(sample(&m, "lanpatch_gossip_messages_total{verdict=\"accepted\"}") >= 1.0, "{m}");
        from_peers += peer;
        served += sample(&m, "lanpatch_served_bytes_total");
        if let Some(complaints) = promtool_complaints(&m) {
            panic!("promtool check metrics refused {}'s exposition:\n{complaints}\n{m}", n.dir.display());
        }
    }
    // Every byte a node took from a peer, some peer served.
    assert!(served >= from_peers, "served {served} < received from peers {from_peers}");
    assert!(sample(&seed.scrape(), "lanpatch_served_bytes_total") > 0.0);
}

#[test]
fn a_metrics_port_in_use_stops_the_node_with_exit_3_naming_the_address() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let node = Node::new(dir, "n1", &dir.join("root.lpr"), &[], &format!("metrics_listen = \"{addr}\""));
    let (code, log) = node.run_expecting_exit(Duration::from_secs(30));
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains(&addr.to_string()) && log.contains("metrics_listen"), "{log}");
}

#[test]
fn the_shipped_prometheus_config_and_alert_rules_pass_promtool_and_their_unit_tests() {
    if Command::new("promtool").arg("--version").output().is_err() {
        return cannot_run("promtool is not installed (Debian package prometheus; scripts/test installs it)");
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus");
    for args in [&["check", "config", "prometheus.yml"][..], &["test", "rules", "lanpatch.rules.test.yml"][..]] {
        let out = Command::new("promtool").args(args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
