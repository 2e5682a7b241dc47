//! Tests in the emulated office of the repository's `lab/netns.sh`: hosts in network namespaces
//! on one bridge. They need root (to make namespaces) and iproute2; without them they skip with a
//! loud message, and fail when `CI` is set (CI runs as root, so there they run for real).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::fleet::{Node, blob_name, make_fleet_keys, make_release, payload, wait_until};

/// A set of namespaces, torn down on drop.
pub struct Lab {
    script: PathBuf,
    pub prefix: String,
    pub hosts: usize,
    pub net: String,
}

impl Lab {
    /// Builds `hosts` hosts plus an origin, or returns `None` (after saying why) where namespaces
    /// cannot be made.
    pub fn up(hosts: usize, net_octet: u8, wan: &str) -> Option<Lab> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lab/netns.sh");
        if !script.exists() {
            crate::support::cannot_run(&format!("lab test: {} not found", script.display()));
            return None;
        }
        // Unique per lab, so tests running in parallel never touch each other's namespaces.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("lt{}{n}", std::process::id() % 10_000);
        let net = format!("10.231.{net_octet}");
        let lab = Lab { script, prefix, hosts, net };
        let out = match Command::new("sh")
            .arg(&lab.script)
            .args(["up", &hosts.to_string(), &lab.prefix, wan])
            .env("LAB_NET", &lab.net)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                crate::support::cannot_run(&format!("lab test: cannot run sh: {e}"));
                return None;
            }
        };
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            drop(lab);
            crate::support::cannot_run(&format!(
                "lab test: cannot create network namespaces (need root and iproute2): {why}"
            ));
            return None;
        }
        Some(lab)
    }

    pub fn host(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("sh").arg(&self.script).args(["down", &self.hosts.to_string(), &self.prefix]).status();
    }
}

#[test]
#[ignore = "lab: needs root for network namespaces; run with --include-ignored"]
fn nodes_in_namespaces_find_each_other_by_mdns_alone_and_complete_a_distribution() {
    let Some(lab) = Lab::up(4, 91, "20mbit") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let data = payload(3 * 1024 * 1024, 9);
    let bundle = make_release(dir, "bundle", 1, &data, 64 * 1024, &[]);
    let mut nodes: Vec<Node> = (1..=lab.hosts)
        .map(|i| {
            let toml = format!(
                "data_dir = \"data\"\ntrust_root = \"{}\"\nlisten = [\"/ip4/0.0.0.0/tcp/4717\"]\nstatic_peers = []\nmdns = true\npeer_exchange = false\nlog = \"info,lanpatch_node=debug\"\n",
                dir.join("root.lpr").display()
            );
            Node::with_config(dir, &format!("h{i}"), &toml, 4717, Some(lab.host(i)))
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let want = lab.hosts - 1;
    wait_until(Duration::from_secs(60), "mDNS discovery of every host", || {
        nodes.iter().all(|n| n.status().peers.len() == want)
    });
    for n in &nodes {
        for p in n.status().peers {
            assert!(p.addr.contains(&lab.net), "peer address {} is not on the lab LAN", p.addr);
        }
    }
    nodes[0].publish(&bundle);
    wait_until(Duration::from_secs(90), "distribution over mDNS-found peers", || {
        nodes[1..].iter().all(|n| n.has_downloaded("tool", 1))
    });
    for n in &nodes {
        assert_eq!(n.blob(&blob_name(&data)).as_deref(), Some(&data[..]), "{}", n.dir.display());
    }
}

#[test]
#[ignore = "lab: needs root for network namespaces; run with --include-ignored"]
fn site_found_by_mdns_alone_pulls_a_release_across_the_shaped_wan_about_once() {
    let Some(lab) = Lab::up(4, 92, "20mbit") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let data = payload(4 * 1024 * 1024, 21);
    std::fs::write(www.join("payload.bin"), &data).unwrap();
    let origin_ip = format!("{}.250", lab.net);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/origin.py");
    let mut origin = Command::new("ip")
        .args(["netns", "exec", &format!("{}-origin", lab.prefix), "python3"])
        .arg(&script)
        .arg(&www)
        .args([&origin_ip, "8000"])
        .spawn()
        .unwrap();
    let bundle = make_release(dir, "bundle", 1, &data, 256 * 1024, &["--origin", &format!("http://{origin_ip}:8000")]);
    let mut nodes: Vec<Node> = (1..=lab.hosts)
        .map(|i| {
            let toml = format!(
                "data_dir = \"data\"\ntrust_root = \"{}\"\nlisten = [\"/ip4/0.0.0.0/tcp/4717\"]\nmdns = true\nlog = \"info,lanpatch_node=debug\"\n",
                dir.join("root.lpr").display()
            );
            Node::with_config(dir, &format!("h{i}"), &toml, 4717, Some(lab.host(i)))
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let want = lab.hosts - 1;
    wait_until(Duration::from_secs(60), "mDNS discovery", || nodes.iter().all(|n| n.status().peers.len() == want));
    let tx = || -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{}-origin", lab.prefix),
                "cat",
                "/sys/class/net/eth0/statistics/tx_bytes",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let before = tx();
    crate::support::signer(
        dir,
        &[
            "publish".as_ref(),
            "--metadata-only".as_ref(),
            "--node".as_ref(),
            nodes[0].socket().as_os_str(),
            bundle.as_os_str(),
        ],
    )
    .ok();
    wait_until(Duration::from_secs(120), "every host has the release", || {
        nodes.iter().all(|n| n.has_downloaded("tool", 1))
    });
    let egress = (tx() - before) as f64 / data.len() as f64;
    let _ = origin.kill();
    let _ = origin.wait();
    eprintln!("origin egress {egress:.3} x the release");
    for n in &nodes {
        assert_eq!(n.blob(&blob_name(&data)).as_deref(), Some(&data[..]), "{}", n.dir.display());
    }
    // One WAN copy plus TCP/IP headers and at most a few chunks fetched twice while settling.
    assert!(egress < 1.15, "origin sent {egress:.3} x the release for {} hosts", lab.hosts);
}
