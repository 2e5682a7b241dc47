//! `lanpatch-node demo`: a fleet on this machine. It creates admin keys and a trust root with the
//! real `lanpatch-signer`, packages and signs a release, starts real node processes on loopback,
//! publishes from the "admin workstation" node, shows progress, and ends with who has what and
//! where the bytes came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lanpatch_protocol::control::{ControlRequest, ControlResponse, NodeStatus};

use crate::control;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Number of nodes, the admin workstation (seed) included.
    #[arg(long, default_value_t = 6)]
    nodes: usize,
    /// Release size in MiB.
    #[arg(long, default_value_t = 32)]
    size_mib: usize,
    /// Upload limit of the seed in MiB/s (its uplink is the scarce resource the LAN spares).
    #[arg(long, default_value_t = 16)]
    seed_upload_mib: u64,
    /// Where to put the demo's files (default: a new directory under /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the directory (keys, configs, logs, node data) afterwards.
    #[arg(long)]
    keep: bool,
    /// Serve the web console on the admin node, print its link, and keep the fleet running
    /// until Ctrl-C.
    #[arg(long)]
    console: bool,
}

struct DemoNode {
    name: String,
    dir: PathBuf,
    child: Child,
}

impl DemoNode {
    fn socket(&self) -> PathBuf {
        self.dir.join("data/control.sock")
    }
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        // SIGTERM for a clean shutdown, then make sure.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signer_path() -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this executable")?;
    let p = me.with_file_name("lanpatch-signer");
    if !p.exists() {
        bail!("{} not found: build both binaries first (cargo build --release)", p.display());
    }
    Ok(p)
}

fn signer(dir: &Path, args: &[&str]) -> Result<String> {
    let out =
        Command::new(signer_path()?).args(args).current_dir(dir).output().context("cannot run lanpatch-signer")?;
    if !out.status.success() {
        bail!("lanpatch-signer {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The ring of the demo's node `i` (1 is the admin workstation).
fn ring_of(i: usize) -> &'static str {
    match i {
        1 => "admin",
        2 => "canary",
        _ => "broad",
    }
}

/// Enrolls one demo node the way an admin enrolls a host: the host prints its key, the admin
/// signs a certificate with the enroll key, the host checks and installs it.
fn enroll_node(self_exe: &Path, dir: &Path, ndir: &Path, name: &str, ring: &str) -> Result<()> {
    let config = ndir.join("node.toml");
    let out = Command::new(self_exe).args(["id", "--json", "--config"]).arg(&config).output()?;
    if !out.status.success() {
        bail!("lanpatch-node id failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let id: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let key = id["node_key"].as_str().context("lanpatch-node id printed no node_key")?;
    let cert = format!("{name}.cert");
    signer(
        dir,
        &[
            "enroll",
            "node",
            "--root",
            "root.lpr",
            "--key",
            "enroll.key",
            "--node-key",
            key,
            "--hostname",
            name,
            "--ring",
            ring,
            "--expires",
            "1d",
            "--out",
            &cert,
        ],
    )?;
    let out = Command::new(self_exe).arg("join").arg(dir.join(&cert)).arg("--config").arg(&config).output()?;
    if !out.status.success() {
        bail!("lanpatch-node join failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn status(socket: &Path) -> Option<NodeStatus> {
    match control::request(socket, &ControlRequest::Status).await {
        Ok(ControlResponse::Status(s)) => Some(*s),
        _ => None,
    }
}

pub async fn run(args: DemoArgs) -> Result<()> {
    if args.nodes < 2 {
        bail!("a fleet needs at least 2 nodes");
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("lanpatch-demo-{}", std::process::id())),
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty; pick another --dir", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    let result = demo(&args, &dir).await;
    if args.keep {
        println!("\nkept {} (keys, configs, node logs and data)", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn demo(args: &DemoArgs, dir: &Path) -> Result<()> {
    let self_exe = std::env::current_exe()?;
    println!(
        "lanpatch demo: {} nodes on loopback, a {} MiB release, working in {}",
        args.nodes,
        args.size_mib,
        dir.display()
    );

    println!(
        "\n1. Three admins make keys and a 2-of-3 trust root, with an enroll key for the admin node \
         (lanpatch-signer keygen, root init, root sign)"
    );
    for a in ["alice", "bob", "carol", "enroll"] {
        signer(dir, &["keygen", "--out", &format!("{a}.key")])?;
    }
    let mut root_args: Vec<String> = ["root", "init", "--out", "root.lpr"].map(String::from).to_vec();
    for role in ["root", "release", "approve"] {
        for a in ["alice", "bob", "carol"] {
            root_args.extend([format!("--{role}-key"), format!("{a}.key.pub")]);
        }
        root_args.extend([format!("--{role}-threshold"), "2".into()]);
    }
    root_args.extend(["--enroll-key".into(), "enroll.key.pub".into(), "--enroll-threshold".into(), "1".into()]);
    signer(dir, &root_args.iter().map(String::as_str).collect::<Vec<_>>())?;
    signer(dir, &["root", "sign", "--key", "alice.key", "root.lpr"])?;
    signer(dir, &["root", "sign", "--key", "bob.key", "root.lpr"])?;

    println!(
        "2. Alice packages a release, Alice and Carol sign it, Bob and Carol approve it for the test ring 'canary'"
    );
    let src = dir.join("release");
    std::fs::create_dir_all(&src)?;
    std::fs::write(
        src.join("install.sh"),
        "#!/bin/sh\necho \"demo-agent $LANPATCH_VERSION\" > \"$LANPATCH_DATA/demo-agent.installed\"\necho installed\n",
    )?;
    let mut data = vec![0u8; args.size_mib * 1024 * 1024];
    getrandom::fill(&mut data).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    std::fs::write(src.join("payload.bin"), &data)?;
    let file_hash = lanpatch_protocol::Hash32::of(&data).to_hex();
    drop(data);
    signer(
        dir,
        &[
            "release",
            "create",
            "--product",
            "demo-agent",
            "--version",
            "1",
            "--label",
            "1.0.0",
            "--dir",
            "release",
            "--install",
            "sh install.sh",
            "--severity",
            "high",
            "--cve",
            "CVE-2026-0001",
            "--cvss",
            "8.8",
            "--epss",
            "0.31",
            "--out",
            "bundle",
        ],
    )?;
    signer(dir, &["release", "sign", "--key", "alice.key", "bundle"])?;
    signer(dir, &["release", "sign", "--key", "carol.key", "bundle"])?;
    signer(dir, &["approve", "--key", "bob.key", "--ring", "canary", "bundle"])?;
    signer(dir, &["approve", "--key", "carol.key", "--ring", "canary", "bundle"])?;
    let verify = signer(dir, &["verify", "--root", "root.lpr", "--ring", "canary", "bundle"])?;
    println!("   lanpatch-signer verify: {}", verify.lines().last().unwrap_or(""));

    println!(
        "3. Enrolling and starting {} nodes (lanpatch-node id, lanpatch-signer enroll node, lanpatch-node join): \
         the admin workstation (seed and report collector, uplink limited to {} MiB/s), node2 in ring canary, \
         the rest in ring broad",
        args.nodes, args.seed_upload_mib
    );
    let seed_port = free_port()?;
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let name = if i == 1 { "admin".to_string() } else { format!("node{i}") };
        let ndir = dir.join(&name);
        std::fs::create_dir_all(&ndir)?;
        let port = if i == 1 { seed_port } else { free_port()? };
        let (peers, extra) = match i {
            1 => (
                String::new(),
                format!(
                    "upload_limit = {}\ncollector = true\nring = \"admin\"\nrollout_rings = [\"canary\", \"broad\"]\n{}",
                    args.seed_upload_mib * 1024 * 1024,
                    if args.console { "console_listen = \"127.0.0.1:0\"" } else { "" }
                ),
            ),
            2 => (format!("\"/ip4/127.0.0.1/tcp/{seed_port}\""), "ring = \"canary\"".to_string()),
            _ => (format!("\"/ip4/127.0.0.1/tcp/{seed_port}\""), "ring = \"broad\"".to_string()),
        };
        let toml = format!(
            "data_dir = \"data\"\ntrust_root = \"../root.lpr\"\nhostname = \"{name}\"\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\nstatic_peers = [{peers}]\nmdns = false\nmetrics_listen = \"127.0.0.1:0\"\n{extra}\n"
        );
        std::fs::write(ndir.join("node.toml"), toml)?;
        enroll_node(&self_exe, dir, &ndir, &name, ring_of(i))?;
        let log = std::fs::File::create(ndir.join("node.log"))?;
        let child = Command::new(&self_exe)
            .args(["run", "--config"])
            .arg(ndir.join("node.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start a node")?;
        nodes.push(DemoNode { name, dir: ndir, child });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut connected = 0;
        for n in &nodes {
            if status(&n.socket()).await.is_some_and(|s| s.peers.len() == args.nodes - 1) {
                connected += 1;
            }
        }
        if connected == nodes.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!("nodes did not find each other within 30 s; see the node.log files (run with --keep)");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "   every node sees the other {} (static peer to the admin node, the rest by peer exchange)",
        args.nodes - 1
    );

    println!("4. The admin publishes the bundle to its own node (lanpatch-signer publish); it spreads by gossip\n");
    let seed_socket = nodes[0].socket();
    let bundle = dir.join("bundle");
    match control::request(
        &seed_socket,
        &ControlRequest::Publish {
            bundle: bundle.to_string_lossy().into_owned(),
            mode: lanpatch_protocol::control::PublishMode::Seed,
        },
    )
    .await?
    {
        ControlResponse::Published { .. } => {}
        ControlResponse::Error { message, .. } => bail!("publish refused: {message}"),
        other => bail!("unexpected response {other:?}"),
    }
    let started = Instant::now();
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos:>4}/{len} chunks {msg}")
        .map_err(|e| anyhow::anyhow!("progress style: {e}"))?
        .progress_chars("=> ");
    let bars: Vec<ProgressBar> = nodes[1..]
        .iter()
        .map(|n| {
            let b = multi.add(ProgressBar::new(1));
            b.set_style(style.clone());
            b.set_prefix(n.name.clone());
            b
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut statuses: Vec<Option<NodeStatus>> = vec![None; nodes.len()];
    loop {
        for (i, n) in nodes.iter().enumerate() {
            statuses[i] = status(&n.socket()).await;
        }
        let mut done = 0;
        for (i, b) in bars.iter().enumerate() {
            let r = statuses[i + 1].as_ref().and_then(|s| s.releases.first());
            if let Some(r) = r {
                b.set_length(r.total_chunks as u64);
                b.set_position(r.have_chunks as u64);
                b.set_message(r.state.label());
                if r.state.rank() >= lanpatch_protocol::ReleaseState::Downloaded.rank() && !r.state.is_failure() {
                    done += 1;
                    b.finish();
                }
            }
        }
        if done == bars.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the release did not reach every node within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secs = started.elapsed().as_secs_f64();

    println!(
        "\n5. node2 (canary) installs; Bob approves ring broad, which the signer allows only after canary reported success"
    );
    let admin_sock = nodes[0].socket();
    let admin_sock_s = admin_sock.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match signer(
            dir,
            &[
                "approve",
                "--key",
                "bob.key",
                "--ring",
                "broad",
                "--rings",
                "canary,broad",
                "--node",
                &admin_sock_s,
                "bundle",
            ],
        ) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("gate: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
    signer(dir, &["approve", "--key", "carol.key", "--ring", "broad", "bundle"])?;
    signer(dir, &["publish", "--node", &admin_sock_s, "bundle"])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut installed = 0;
        for n in &nodes[1..] {
            if status(&n.socket())
                .await
                .and_then(|s| s.releases.first().map(|r| r.state.is_installed()))
                .unwrap_or(false)
            {
                installed += 1;
            }
        }
        if installed == nodes.len() - 1 {
            break;
        }
        if Instant::now() > deadline {
            bail!("not every endpoint installed within a minute; see the node.log files (run with --keep)");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (i, n) in nodes.iter().enumerate() {
        statuses[i] = status(&n.socket()).await;
    }
    let fleet = signer(dir, &["status", "--node", &admin_sock_s, "bundle"])?;
    println!("   lanpatch-signer status:");
    for l in fleet.lines() {
        println!("   {l}");
    }

    let seed_id = statuses[0].as_ref().map(|s| s.peer_id.clone()).unwrap_or_default();
    println!("\n6. Summary (distribution took {secs:.1} s)\n");
    println!(
        "{:>8}  {:<7} {:<10} {:>12} {:>12} {:>12}  content",
        "node", "ring", "install", "from admin", "from peers", "uploaded"
    );
    let mut from_seed_total = 0u64;
    let mut from_peers_total = 0u64;
    for (i, n) in nodes.iter().enumerate() {
        let Some(st) = &statuses[i] else { continue };
        let uploaded: u64 = st.transfers.iter().map(|t| t.bytes_up).sum();
        let (state, from): (String, BTreeMap<String, u64>) =
            st.releases.first().map(|r| (r.state.label(), r.bytes_from.clone())).unwrap_or_default();
        let from_seed = from.get(&seed_id).copied().unwrap_or(0);
        let from_peers: u64 = from.iter().filter(|(p, _)| **p != seed_id).map(|(_, b)| *b).sum();
        from_seed_total += from_seed;
        from_peers_total += from_peers;
        let verified = match std::fs::read(n.dir.join("data/blobs").join(&file_hash)) {
            Ok(bytes) if lanpatch_protocol::Hash32::of(&bytes).to_hex() == file_hash => "BLAKE3 verified",
            Ok(_) => "MISMATCH",
            Err(_) => "missing",
        };
        let state = if i == 0 { "(seed)".to_string() } else { state };
        println!(
            "{:>8}  {:<7} {:<10} {:>12} {:>12} {:>12}  {}",
            n.name,
            st.ring,
            state,
            mib(from_seed),
            mib(from_peers),
            mib(uploaded),
            verified
        );
    }
    let size = (args.size_mib * 1024 * 1024) as f64;
    println!(
        "\nThe admin node uploaded {:.2} copies of the release for {} endpoints; {:.2} copies moved between endpoints.",
        from_seed_total as f64 / size,
        args.nodes - 1,
        from_peers_total as f64 / size
    );
    if args.console {
        let addr = status(&nodes[0].socket()).await.and_then(|s| s.console);
        let token = std::fs::read_to_string(nodes[0].dir.join("data/console.token"));
        match (addr, token) {
            (Some(addr), Ok(token)) => {
                println!("\nConsole: http://{addr}/login?token={}", token.trim());
                println!("The fleet keeps running; press Ctrl-C to stop it.");
                tokio::signal::ctrl_c().await?;
            }
            _ => bail!("the admin node does not serve the console; see admin/node.log (run with --keep)"),
        }
    }
    Ok(())
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

pub fn print_status(st: &NodeStatus) {
    println!("node {} (ring {}, host {}, site {})", st.peer_id, st.ring, st.hostname, st.site);
    println!("fleet {}", st.fleet);
    match &st.membership {
        lanpatch_protocol::control::Membership::Enrolled { expires, peers_refused } => println!(
            "enrolled until {} ({peers_refused} peer connection(s) refused at the door)",
            crate::clock::format_time(*expires)
        ),
        lanpatch_protocol::control::Membership::Off => {
            println!("enrollment off: any holder of the fleet's root can join (node.toml enrollment = \"off\")")
        }
        lanpatch_protocol::control::Membership::NoEnrollRole => {
            println!(
                "membership NOT checked: the fleet's trust root has no enroll role yet (rotate it: docs/OPERATIONS.md)"
            )
        }
    }
    for l in &st.listen {
        println!("listening on {l}");
    }
    println!("peers: {}", st.peers.len());
    for p in &st.peers {
        println!("  {} {} (site {})", p.peer, p.addr, p.site);
    }
    println!("releases:");
    for r in &st.releases {
        println!(
            "  {} {} ({}) [{}]{} {}/{} chunks, {} bytes, approved for {}",
            r.product,
            r.version,
            r.severity,
            r.state,
            if r.yanked { " yanked" } else { "" },
            r.have_chunks,
            r.total_chunks,
            r.total_bytes,
            if r.approved_rings.is_empty() { "no ring".to_string() } else { r.approved_rings.join(", ") },
        );
        if let Some(last) = r.detail.lines().rev().find(|l| !l.trim().is_empty()) {
            println!("      {last}");
        }
        if let Some(step) = r.state.next_step() {
            println!("      next: {step}");
        }
    }
    println!(
        "disk: {} bytes (blobs {}, partial {}, stage {}, state {}, kept {})",
        st.disk.total(),
        st.disk.blobs,
        st.disk.partial,
        st.disk.stage,
        st.disk.state,
        st.disk.kept
    );
    println!("refusals: {}", st.refusals);
    for r in st.recent_refusals.iter().take(5) {
        println!("  [{}] {} from {}: {}", crate::clock::format_time(r.at), r.kind.as_str(), r.source, r.reason);
    }
}
