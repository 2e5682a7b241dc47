//! Tests in the emulated office of `shared/lab/netns.sh`: hosts in network namespaces on one
//! bridge. They need root (to make namespaces); without it they skip with a loud message. CI runs
//! as root, so there they run for real.

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
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/lab/netns.sh");
        if !script.exists() {
            eprintln!("\n*** SKIPPING lab test: {} not found ***\n", script.display());
            return None;
        }
        let prefix = format!("lt{}", std::process::id() % 100_000);
        let net = format!("10.231.{net_octet}");
        let lab = Lab { script, prefix, hosts, net };
        let out = Command::new("sh")
            .arg(&lab.script)
            .args(["up", &hosts.to_string(), &lab.prefix, wan])
            .env("LAB_NET", &lab.net)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "\n*** SKIPPING lab test: cannot create network namespaces (need root): {} ***\n",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            drop(lab);
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
        nodes[1..].iter().all(|n| n.release_state("tool", 1).as_deref() == Some("downloaded"))
    });
    for n in &nodes {
        assert_eq!(n.blob(&blob_name(&data)).as_deref(), Some(&data[..]), "{}", n.dir.display());
    }
}
