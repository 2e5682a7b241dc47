//! Origins and the WAN: nodes split the origin work, verify what origins send, and do not stall
//! when one of them leaves.

use lanpatch_protocol::control::RefusalKind;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::fleet::{Node, blob_name, make_fleet_keys, make_release, payload, wait_until};
use crate::origin_server::OriginServer;
use crate::support::signer;

const CHUNK: usize = 64 * 1024;

fn announce(node: &Node, bundle: &std::path::Path) {
    signer(
        &node.dir,
        &[
            "publish".as_ref(),
            "--metadata-only".as_ref(),
            "--node".as_ref(),
            node.socket().as_os_str(),
            bundle.as_os_str(),
        ],
    )
    .ok();
}

fn downloaded(n: &Node) -> bool {
    n.has_downloaded("tool", 1)
}

fn origin_bytes(n: &Node) -> u64 {
    n.status().transfers.iter().filter(|t| t.peer.starts_with("origin ")).map(|t| t.bytes_down).sum()
}

/// `n` nodes on loopback that find each other through one static peer.
fn site(dir: &std::path::Path, n: usize) -> Vec<Node> {
    site_with(dir, n, "")
}

/// `n` nodes on loopback with `extra` in every node.toml.
fn site_with(dir: &std::path::Path, n: usize, extra: &str) -> Vec<Node> {
    let root = dir.join("root.lpr");
    let mut first = Node::new(dir, "n1", &root, &[], extra);
    first.start();
    let port = first.port;
    let mut nodes = vec![first];
    for i in 2..=n {
        let mut node = Node::new(dir, &format!("n{i}"), &root, &[port], extra);
        node.start();
        nodes.push(node);
    }
    wait_until(Duration::from_secs(30), "site mesh", || nodes.iter().all(|x| x.status().peers.len() == n - 1));
    nodes
}

#[test]
fn site_nodes_split_origin_work_so_each_chunk_crosses_the_wan_about_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let data = payload(4 * 1024 * 1024, 11);
    let origin = OriginServer::start(HashMap::from([("payload.bin".to_string(), data.clone())]), 2 * 1024 * 1024, None);
    let bundle = make_release(dir, "bundle", 1, &data, CHUNK as u32, &["--origin", &origin.url()]);
    let nodes = site(dir, 4);
    announce(&nodes[0], &bundle);
    wait_until(Duration::from_secs(60), "every node downloads", || nodes.iter().all(downloaded));
    let served = origin.served.load(Ordering::Relaxed);
    let ratio = served as f64 / data.len() as f64;
    eprintln!("origin served {ratio:.3} x the release");
    for n in &nodes {
        assert_eq!(n.blob(&blob_name(&data)).as_deref(), Some(&data[..]));
        assert!(origin_bytes(n) > 0, "{} took no share of the origin work", n.dir.display());
    }
    // At most a couple of chunks fetched twice while the site settled.
    assert!(served <= (data.len() + 2 * CHUNK) as u64, "origin served {ratio:.3} x the release");
}

#[test]
fn only_site_origin_fetchers_nodes_fetch_from_the_origin_and_the_rest_get_it_over_the_lan() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let data = payload(4 * 1024 * 1024, 13);
    let origin = OriginServer::start(HashMap::from([("payload.bin".to_string(), data.clone())]), 2 * 1024 * 1024, None);
    let bundle = make_release(dir, "bundle", 1, &data, CHUNK as u32, &["--origin", &origin.url()]);
    let nodes = site_with(dir, 6, "site_origin_fetchers = 2");
    announce(&nodes[0], &bundle);
    wait_until(Duration::from_secs(60), "every node downloads", || nodes.iter().all(downloaded));
    let fetched: Vec<u64> = nodes.iter().map(origin_bytes).collect();
    eprintln!("bytes each node fetched from the origin: {fetched:?}");
    for n in &nodes {
        assert_eq!(n.blob(&blob_name(&data)).as_deref(), Some(&data[..]));
    }
    // The budget is 2 fetchers. While the site settles (the first node may start before it hears
    // that the others want the release), or at the end when a finished fetcher leaves the
    // participants and a request that failed cleared a chunk from a peer's map, a third may take
    // a few chunks, never a share (one CI run on a loaded machine saw 3 of 64).
    let fetchers = fetched.iter().filter(|b| **b > SETTLING_CHUNKS * CHUNK as u64).count();
    if !(1..=2).contains(&fetchers) {
        let logs: Vec<String> = nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(n.dir.join("node.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().filter(|l| l.contains("fetcher") || l.contains("origin")).collect();
                format!("{}:\n{}", n.dir.display(), lines.join("\n"))
            })
            .collect();
        panic!(
            "{fetchers} of 6 nodes took a share of the origin work, the budget is 2: {fetched:?}\n{}",
            logs.join("\n")
        );
    }
    let served = origin.served.load(Ordering::Relaxed);
    assert!(
        served <= (data.len() + SETTLING_CHUNKS as usize * CHUNK) as u64,
        "origin served {served} bytes for a {}-byte release",
        data.len()
    );
}

/// Chunks (of 64) that a node outside the fetcher budget may fetch while the site settles.
const SETTLING_CHUNKS: u64 = 4;

#[test]
fn node_leaving_mid_transfer_does_not_stall_the_site() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let data = payload(4 * 1024 * 1024, 12);
    let origin = OriginServer::start(HashMap::from([("payload.bin".to_string(), data.clone())]), 1024 * 1024, None);
    let bundle = make_release(dir, "bundle", 1, &data, CHUNK as u32, &["--origin", &origin.url()]);
    let mut nodes = site(dir, 4);
    announce(&nodes[0], &bundle);
    let total = data.len() / CHUNK;
    wait_until(Duration::from_secs(60), "a quarter of the release at node 4", || {
        nodes[3].status().releases.first().is_some_and(|r| r.have_chunks >= total / 4)
    });
    nodes[3].kill9();
    let left = nodes.pop().unwrap();
    drop(left);
    wait_until(Duration::from_secs(90), "the remaining nodes complete", || nodes.iter().all(downloaded));
    for n in &nodes {
        assert_eq!(n.blob(&blob_name(&data)).as_deref(), Some(&data[..]));
    }
    let served = origin.served.load(Ordering::Relaxed);
    eprintln!("origin served {:.3} x the release", served as f64 / data.len() as f64);
    // Chunks only the leaver held (its share, not yet swapped) and its in-flight requests cross
    // the WAN again; its share is a quarter of the release, so well under 1.3 x in all.
    assert!(served * 10 <= data.len() as u64 * 13, "origin served {served} bytes");
}

#[test]
fn origin_sending_wrong_bytes_is_detected_and_another_origin_completes_the_release() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let data = payload(1024 * 1024, 13);
    let files = HashMap::from([("payload.bin".to_string(), data.clone())]);
    let bad = OriginServer::start(files.clone(), 0, Some(5 * CHUNK as u64 + 17));
    let good = OriginServer::start(files, 0, None);
    let bundle =
        make_release(dir, "bundle", 1, &data, CHUNK as u32, &["--origin", &bad.url(), "--origin", &good.url()]);
    let mut node = Node::new(dir, "n1", &dir.join("root.lpr"), &[], "");
    node.start();
    announce(&node, &bundle);
    wait_until(Duration::from_secs(60), "download", || downloaded(&node));
    assert_eq!(node.blob(&blob_name(&data)).as_deref(), Some(&data[..]));
    let st = node.status();
    assert!(
        st.recent_refusals.iter().any(|r| r.kind == RefusalKind::OriginChunk
            && r.source.contains(&bad.url())
            && r.reason.contains("chunk 5 of payload.bin does not match its signed hash")),
        "{:?}",
        st.recent_refusals
    );
    assert!(good.served.load(Ordering::Relaxed) > 0);
}

#[test]
fn origin_redirecting_to_another_host_or_to_a_file_url_is_dropped_with_a_refusal_and_not_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let data = payload(1024 * 1024, 14);
    let files = HashMap::from([("payload.bin".to_string(), data.clone())]);
    let good = OriginServer::start(files, 0, None);
    // One origin sends every request to another host (a different port is another origin),
    // one to a local file.
    let elsewhere = OriginServer::redirecting(&good.url());
    let to_file = OriginServer::redirecting("file:///etc");
    let origins = ["--origin", &elsewhere.url(), "--origin", &to_file.url(), "--origin", &good.url()];
    let bundle = make_release(dir, "bundle", 1, &data, CHUNK as u32, &origins);
    let mut node = Node::new(dir, "n1", &dir.join("root.lpr"), &[], "");
    node.start();
    announce(&node, &bundle);
    wait_until(Duration::from_secs(60), "download", || downloaded(&node));
    assert_eq!(node.blob(&blob_name(&data)).as_deref(), Some(&data[..]));
    let st = node.status();
    for bad in [&elsewhere, &to_file] {
        assert!(
            st.recent_refusals.iter().any(|r| r.kind == RefusalKind::OriginChunk
                && r.source.contains(&bad.url())
                && r.reason.contains("redirect")),
            "{:?}",
            st.recent_refusals
        );
        // Dropped at once for the release: a handful of requests (those already in flight), not
        // a retry every 1.5 s.
        let asked = bad.requests.load(Ordering::Relaxed);
        assert!(asked <= 4, "{} was asked {asked} times", bad.url());
    }
}
