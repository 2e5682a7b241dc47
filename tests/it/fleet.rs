//! A fleet of real `lanpatch-node` processes for tests: keys, a trust root and a release made
//! with the real signer, nodes started from TOML configs, status read over the control socket.
//! Every process is killed by PID when its `Node` is dropped.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lanpatch_protocol::ReleaseState;
use lanpatch_protocol::control::NodeStatus;

use crate::support::{bin, bin_dir, signer};

/// Keys for three admins and a 2-of-3 trust root, in `dir`, with a 1-of-1 enroll role
/// (`enroll.key`, the admin node's online key): nodes whose root lies beside `enroll.key` are
/// enrolled by [`Node::start`] as their node.toml describes them.
pub fn make_fleet_keys(dir: &Path) {
    make_keys(dir, &["alice", "bob", "carol"], 2);
}

/// Keys for `admins` (`NAME.key`, `NAME.key.pub`) and an enroll key; a trust root (`root.lpr`)
/// whose root, release and approve roles are those admins with `threshold`, the enroll role the
/// enroll key alone; signed by the first `threshold` admins.
pub fn make_keys(dir: &Path, admins: &[&str], threshold: u32) {
    for admin in admins {
        signer(dir, &["keygen", "--out", &format!("{admin}.key")]).ok();
    }
    signer(dir, &["keygen", "--out", "enroll.key"]).ok();
    let mut args: Vec<String> = ["root", "init", "--out", "root.lpr"].map(String::from).to_vec();
    for role in ["root", "release", "approve"] {
        for admin in admins {
            args.extend([format!("--{role}-key"), format!("{admin}.key.pub")]);
        }
        args.extend([format!("--{role}-threshold"), threshold.to_string()]);
    }
    args.extend(["--enroll-key".into(), "enroll.key.pub".into(), "--enroll-threshold".into(), "1".into()]);
    signer(dir, &args).ok();
    for admin in admins.iter().take(threshold as usize) {
        signer(dir, &["root", "sign", "--key", &format!("{admin}.key"), "root.lpr"]).ok();
    }
}

/// Deterministic pseudo-random bytes (xorshift), so content is incompressible but reproducible.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    // Odd and non-zero for every seed (`seed | 1` gave seeds 2 and 3 the same bytes).
    let mut x = (seed << 1) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Creates `bundle_name` holding `data` as `payload.bin`, signed by alice and bob.
pub fn make_release(
    dir: &Path,
    bundle_name: &str,
    version: u32,
    data: &[u8],
    chunk_size: u32,
    extra: &[&str],
) -> PathBuf {
    let src = dir.join(format!("{bundle_name}-src"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("payload.bin"), data).unwrap();
    let mut args: Vec<String> = vec![
        "release".into(),
        "create".into(),
        "--product".into(),
        "tool".into(),
        "--version".into(),
        version.to_string(),
        "--dir".into(),
        src.to_string_lossy().into_owned(),
        "--install".into(),
        "sh -c true".into(),
        "--chunk-size".into(),
        chunk_size.to_string(),
        "--out".into(),
        bundle_name.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    signer(dir, &args).ok();
    signer(dir, &["release", "sign", "--key", "alice.key", bundle_name]).ok();
    signer(dir, &["release", "sign", "--key", "bob.key", bundle_name]).ok();
    dir.join(bundle_name)
}

/// A loopback port for a node to listen on, below the kernel's ephemeral range: a port the
/// kernel hands out for `bind(0)` can be taken again by any outgoing connection (the hostile
/// tests open hundreds) before the node binds it. Each is handed out once per test process
/// (starting at an offset by pid) and checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (first, span) = (10_000u32, low.saturating_sub(10_000));
    if span < 1000 {
        return TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    }
    let offset = std::process::id() * 97 % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + (offset + n) % span;
        if let Ok(port) = u16::try_from(port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port between {first} and {low}");
}

pub struct Node {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    child: Option<Child>,
    /// Run the node inside this network namespace (mDNS lab tests).
    netns: Option<String>,
    /// Extra environment for the node process (e.g. TZ).
    pub env: Vec<(String, String)>,
    /// Run the node through this command (e.g. `unshare --mount sh -c ...`); `{node}` in it is
    /// replaced by the node binary's path and `{config}` by the config path.
    pub wrapper: Option<Vec<String>>,
    /// Start the node from its own directory with a relative `--config node.toml`.
    pub relative_config: bool,
}

impl Node {
    /// Writes a config for a loopback node. `extra` is appended to the TOML.
    pub fn new(base: &Path, name: &str, root: &Path, static_ports: &[u16], extra: &str) -> Node {
        let port = free_port();
        // Many nodes share this machine's loopback: each takes a free metrics port.
        let metrics = if extra.contains("metrics_listen") { "" } else { "metrics_listen = \"127.0.0.1:0\"\n" };
        let peers: Vec<String> = static_ports.iter().map(|p| format!("\"/ip4/127.0.0.1/tcp/{p}\"")).collect();
        let toml = format!(
            "data_dir = \"data\"\ntrust_root = \"{}\"\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\nstatic_peers = [{}]\nmdns = false\n{metrics}log = \"info,lanpatch_node=debug,libp2p_gossipsub=warn\"\n{extra}\n",
            root.display(),
            peers.join(", ")
        );
        Self::with_config(base, name, &toml, port, None)
    }

    pub fn with_config(base: &Path, name: &str, toml: &str, port: u16, netns: Option<String>) -> Node {
        let dir = base.join(name);
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("node.toml");
        fs::write(&config, toml).unwrap();
        Node { dir, config, port, child: None, netns, env: Vec::new(), wrapper: None, relative_config: false }
    }

    /// The command that runs this node.
    fn command(&self) -> Command {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("node.log")).unwrap();
        let node = bin("lanpatch-node");
        let config = if self.relative_config { PathBuf::from("node.toml") } else { self.config.clone() };
        let mut cmd = match (&self.netns, &self.wrapper) {
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&node).arg("run").arg("--config").arg(&config);
                c
            }
            (None, Some(w)) => {
                let fill = |a: &String| {
                    a.replace("{node}", &node.to_string_lossy()).replace("{config}", &config.to_string_lossy())
                };
                let mut c = Command::new(fill(&w[0]));
                c.args(w[1..].iter().map(fill));
                c
            }
            (None, None) => {
                let mut c = Command::new(&node);
                c.arg("run").arg("--config").arg(&config);
                c
            }
        };
        if self.relative_config {
            cmd.current_dir(&self.dir);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd
    }

    /// Runs the node expecting it to refuse to start: its exit code and its log.
    pub fn run_expecting_exit(&self, limit: Duration) -> (Option<i32>, String) {
        if self.needs_enrollment() {
            self.enroll(&[]);
        }
        let mut child = self.command().spawn().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return (st.code(), fs::read_to_string(self.dir.join("node.log")).unwrap_or_default());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} kept running; log:\n{}", self.dir.display(), self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// This node's key (`lanpatch-node id`; created on first use).
    pub fn node_key(&self) -> String {
        self.try_node_key().unwrap_or_else(|| panic!("lanpatch-node id failed for {}", self.dir.display()))
    }

    fn try_node_key(&self) -> Option<String> {
        let out =
            Command::new(bin("lanpatch-node")).args(["id", "--json", "--config"]).arg(&self.config).output().ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v["node_key"].as_str()?.to_string())
    }

    /// Enrolls this node as its node.toml describes it (hostname, ring, site, tags): the admin's
    /// `lanpatch-signer enroll node` with the enroll key beside the trust root, then the host's
    /// `lanpatch-node join`. `extra` goes to the signer (`--expires 5s`, say). Returns the
    /// certificate file the signer wrote.
    pub fn enroll(&self, extra: &[&str]) -> PathBuf {
        self.enroll_under(None, extra)
    }

    /// [`Node::enroll`] under `rotated`, a rotated root the node may not hold yet (moving a fleet
    /// to enrollment): the signer enrolls against it, and `join --root` hands it to the node.
    /// The enroll key lies beside `rotated`.
    pub fn enroll_under(&self, rotated: Option<&Path>, extra: &[&str]) -> PathBuf {
        let cfg: toml::Table = toml::from_str(&fs::read_to_string(&self.config).unwrap()).unwrap();
        let s = |k: &str| cfg.get(k).and_then(|v| v.as_str()).map(String::from);
        let root = rotated.map(Path::to_path_buf).unwrap_or_else(|| self.dir.join(s("trust_root").unwrap()));
        let keys = root.parent().unwrap();
        let name = self.dir.file_name().unwrap().to_string_lossy().into_owned();
        let hostname = s("hostname").unwrap_or_else(|| name.clone());
        let cert = self.dir.join(format!("{name}.cert"));
        let _ = fs::remove_file(&cert);
        let mut args: Vec<String> = vec![
            "enroll".into(),
            "node".into(),
            "--root".into(),
            root.display().to_string(),
            "--key".into(),
            "enroll.key".into(),
            "--node-key".into(),
            self.node_key(),
            "--hostname".into(),
            hostname,
            "--ring".into(),
            s("ring").unwrap_or_else(|| "broad".into()),
            "--site".into(),
            s("site").unwrap_or_else(|| "default".into()),
            "--out".into(),
            cert.display().to_string(),
        ];
        for t in cfg.get("tags").and_then(|v| v.as_array()).into_iter().flatten() {
            args.extend(["--tag".into(), t.as_str().unwrap().to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        signer(keys, &args).ok();
        let mut join = Command::new(bin("lanpatch-node"));
        join.arg("join").arg(&cert).arg("--config").arg(&self.config);
        if let Some(r) = rotated {
            join.arg("--root").arg(r);
        }
        let out = join.output().unwrap();
        assert!(out.status.success(), "lanpatch-node join: {}", String::from_utf8_lossy(&out.stderr));
        cert
    }

    /// Whether [`Node::start`] enrolls this node first: its config leaves enrollment on, it has
    /// no certificate yet, and its trust root lies beside an enroll key.
    fn needs_enrollment(&self) -> bool {
        let text = fs::read_to_string(&self.config).unwrap_or_default();
        let Ok(cfg) = toml::from_str::<toml::Table>(&text) else { return false };
        if cfg.get("enrollment").and_then(|v| v.as_str()) == Some("off") || cfg.contains_key("certificate") {
            return false;
        }
        let data = self.dir.join(cfg.get("data_dir").and_then(|v| v.as_str()).unwrap_or("data"));
        let root = cfg.get("trust_root").and_then(|v| v.as_str()).map(|r| self.dir.join(r));
        !data.join("node.cert").exists()
            && root.is_some_and(|r| r.parent().is_some_and(|p| p.join("enroll.key").exists()))
            && self.try_node_key().is_some()
    }

    pub fn start(&mut self) {
        if self.needs_enrollment() {
            self.enroll(&[]);
        }
        let child = self.command().spawn().unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_status().is_none() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(code) = exited {
                panic!("{} exited with {code} at start; log:\n{}", self.dir.display(), self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not open its control socket; log:\n{}",
                self.dir.display(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Under systemd-nspawn the node is the wrapper's child (a container's PID 1: killing
            // it ends the container's every process). Otherwise the node's own children (a
            // running install) outlive it, as they would in a crash.
            if self.wrapper.as_ref().is_some_and(|w| w[0] == "systemd-nspawn") {
                kill_children(c.id());
            }
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("data/control.sock")
    }

    pub fn try_status(&self) -> Option<NodeStatus> {
        let out = Command::new(bin("lanpatch-node"))
            .arg("status")
            .arg("--json")
            .arg("--socket")
            .arg(self.socket())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The node's Prometheus exposition (`GET /metrics` on the address its status gives).
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let addr = self.status().metrics.unwrap_or_else(|| panic!("{} serves no metrics", self.dir.display()));
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(conn, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {resp:?}"));
        assert!(head.starts_with("HTTP/1.1 200"), "metrics answered {head}");
        body.to_string()
    }

    pub fn status(&self) -> NodeStatus {
        self.try_status()
            .unwrap_or_else(|| panic!("status of {} failed; log:\n{}", self.dir.display(), self.log_tail()))
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn publish(&self, bundle: &Path) {
        signer(&self.dir, &["publish".as_ref(), "--node".as_ref(), self.socket().as_os_str(), bundle.as_os_str()]).ok();
    }

    /// The bytes of a complete blob, if this node holds it.
    pub fn blob(&self, file_hash: &str) -> Option<Vec<u8>> {
        fs::read(self.dir.join("data/blobs").join(file_hash)).ok()
    }

    pub fn release_state(&self, product: &str, version: u64) -> Option<ReleaseState> {
        self.try_status()?.releases.into_iter().find(|r| r.product == product && r.version == version).map(|r| r.state)
    }

    /// Whether the node holds a verified copy of the release (downloaded, and anything after
    /// it except a failure).
    pub fn has_downloaded(&self, product: &str, version: u64) -> bool {
        self.release_state(product, version)
            .is_some_and(|s| s.rank() >= ReleaseState::Downloaded.rank() && !s.is_failure())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The value of the sample `series` (a name with its labels, as printed) in an exposition; 0 when
/// it is absent (a counter not bumped yet).
pub fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.split(' ').next().unwrap_or(v).parse().unwrap_or_else(|_| panic!("bad sample {series}: {v}")))
        .unwrap_or(0.0)
}

/// [`wait_until`], and on timeout the panic shows the node's log tail.
pub fn wait_for_node(n: &Node, limit: Duration, what: &str, cond: impl FnMut() -> bool) {
    if !poll(limit, cond) {
        panic!("timed out after {limit:?} waiting for {what}; log of {}:\n{}", n.dir.display(), n.log_tail());
    }
}

/// Polls `cond` every 200 ms for at most `limit`; whether it held.
pub fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Polls `cond` every 200 ms; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, cond: impl FnMut() -> bool) {
    if !poll(limit, cond) {
        panic!("timed out after {limit:?} waiting for {what}");
    }
}

/// The BLAKE3 of `data` in hex: the blob name a node stores it under.
pub fn blob_name(data: &[u8]) -> String {
    lanpatch_protocol::Hash32::of(data).to_hex()
}

/// Processes whose working directory or `LANPATCH_STAGE` lies under `dir` (an install's
/// leftovers), by pid.
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let marker = format!("LANPATCH_STAGE={}", dir.display());
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let cwd_inside = fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(&dir));
        let env_inside = fs::read(e.path().join("environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv.starts_with(marker.as_bytes())));
        if cwd_inside || env_inside {
            out.push(pid);
        }
    }
    out
}

// The admin node and endpoints most tests start (moved here from hardening.rs: one harness).

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn secret(dir: &Path, name: &str) -> ed25519_dalek::SigningKey {
    let text = fs::read_to_string(dir.join(name)).unwrap();
    ed25519_dalek::SigningKey::from_bytes(&lanpatch_protocol::keyfile::parse_secret(&text).unwrap())
}

/// A release of `tool` whose install writes `$LANPATCH_DATA/installed`, signed by alice and bob.
pub fn release(dir: &Path, name: &str, version: u32, extra: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("install.sh"), "touch \"$LANPATCH_DATA/installed\"\n").unwrap();
    fs::write(src.join("payload.bin"), payload(150_000, u64::from(version))).unwrap();
    let mut args: Vec<String> = [
        "release",
        "create",
        "--product",
        "tool",
        "--version",
        &version.to_string(),
        "--dir",
        &src.to_string_lossy(),
        "--install",
        "sh install.sh",
        "--out",
        name,
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    signer(dir, &args).ok();
    for k in ["alice.key", "bob.key"] {
        signer(dir, &["release", "sign", "--key", k, name]).ok();
    }
    dir.join(name)
}

pub fn approve(dir: &Path, name: &str, ring: &str) {
    for k in ["bob.key", "carol.key"] {
        signer(dir, &["approve", "--key", k, "--ring", ring, name]).ok();
    }
}

/// The admin workstation's node: the collector, in ring admin (no test release targets it).
pub fn admin(dir: &Path, extra: &str) -> Node {
    let mut a =
        Node::new(dir, "admin", &dir.join("root.lpr"), &[], &format!("collector = true\nring = \"admin\"\n{extra}"));
    a.start();
    a
}

/// An endpoint connected to `admin`, started and connected; in ring canary unless `extra`
/// names its ring.
pub fn endpoint(dir: &Path, name: &str, admin: &Node, extra: &str) -> Node {
    let names_ring = extra.lines().any(|l| l.split('=').next().is_some_and(|k| k.trim() == "ring"));
    let config = if names_ring { extra.to_string() } else { format!("ring = \"canary\"\n{extra}") };
    let mut n = Node::new(dir, name, &dir.join("root.lpr"), &[admin.port], &config);
    n.start();
    wait_until(Duration::from_secs(30), "connected", || !n.status().peers.is_empty());
    n
}

/// A node's own ed25519 secret key, from its libp2p key file (protobuf: type Ed25519, then the
/// 64 bytes of secret and public key): tests sign messages as that node would.
pub fn node_secret(n: &Node) -> ed25519_dalek::SigningKey {
    let bytes = fs::read(n.dir.join("data/node.key")).unwrap();
    assert_eq!(&bytes[..4], &[0x08, 0x01, 0x12, 0x40], "not an ed25519 libp2p key file");
    ed25519_dalek::SigningKey::from_bytes(bytes[4..36].try_into().unwrap())
}

/// "mallory": an enrolled node of ring broad, connected to `admin`, whose control socket
/// publishes raw gossip (`[fault_injection]`): a member turned attacker.
pub fn enrolled_attacker(dir: &Path, admin: &Node) -> Node {
    let mut mallory = Node::new(
        dir,
        "mallory",
        &dir.join("root.lpr"),
        &[admin.port],
        "ring = \"broad\"\n[fault_injection]\nraw_gossip = \"allow\"",
    );
    mallory.start();
    wait_until(Duration::from_secs(30), "mallory connected", || !mallory.status().peers.is_empty());
    mallory
}

// Debian hosts: systemd-nspawn containers with their own dpkg database (lab/debian-root.sh).

/// The lab's Debian bookworm root, built once by lab/debian-root.sh into target/lab and kept;
/// `None` (after saying why, failing under CI) where it cannot be built or used.
pub fn debian_root() -> Option<PathBuf> {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !crate::support::is_root() || Command::new("systemd-nspawn").arg("--version").output().is_err() {
        crate::support::cannot_run(
            "Debian host tests need root and systemd-nspawn (apt-get install systemd-container)",
        );
        return None;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = repo.join("target/lab/bookworm");
    if !root.join(".lanpatch-root-complete").exists() {
        let out = Command::new("sh").arg(repo.join("lab/debian-root.sh")).arg(&root).output().unwrap();
        if !out.status.success() {
            crate::support::cannot_run(&format!(
                "lab/debian-root.sh could not build the Debian root: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
    }
    Some(root)
}

/// A Debian host: an overlay of the lab's root with its own dpkg database, where commands and a
/// node run in systemd-nspawn containers sharing this machine's loopback. The test's directory
/// and the binaries are bound at the same paths inside.
pub struct DebianHost {
    pub name: String,
    merged: PathBuf,
    share: PathBuf,
    /// systemd-nspawn running the host booted (`boot`), systemd its PID 1.
    booted: Option<Child>,
}

impl DebianHost {
    pub fn new(root: &Path, share: &Path, name: &str) -> DebianHost {
        let base = share.join(format!("{name}-host"));
        let (up, work, merged) = (base.join("up"), base.join("work"), base.join("root"));
        for d in [&up, &work, &merged] {
            fs::create_dir_all(d).unwrap();
        }
        let opts = format!("lowerdir={},upperdir={},workdir={}", root.display(), up.display(), work.display());
        let st = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&merged).status().unwrap();
        assert!(st.success(), "cannot mount the overlay for {name}");
        DebianHost {
            name: format!("lp{}-{name}", std::process::id()),
            merged,
            share: share.to_path_buf(),
            booted: None,
        }
    }

    /// Boots the host with systemd as PID 1 and waits until systemd says the system is running
    /// with no failed unit. The test's directory is bound at the same path.
    pub fn boot(&mut self) {
        let console = fs::File::create(self.share.join(format!("{}-console.log", self.name))).unwrap();
        let child = Command::new("systemd-nspawn")
            .args(["--register=no", "--keep-unit", "-q", "-b", &format!("--machine={}", self.name), "-D"])
            .arg(&self.merged)
            .arg(format!("--bind={}", self.share.display()))
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .unwrap();
        self.booted = Some(child);
        // nspawn's child becomes systemd once it execs; until then systemctl has nobody to ask.
        wait_until(Duration::from_secs(30), "the container's systemd", || {
            self.init_pid()
                .is_some_and(|p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "systemd"))
        });
        let mut state = String::new();
        wait_until(Duration::from_secs(90), "systemd's answer about the boot", || {
            state = self.exec(&["systemctl", "is-system-running", "--wait"]).stdout.trim().to_string();
            !state.is_empty()
        });
        assert_eq!(
            state,
            "running",
            "{} did not boot cleanly; failed units:\n{}",
            self.name,
            self.exec(&["systemctl", "--failed", "--no-legend"]).stdout
        );
    }

    /// The booted host's PID 1 as this machine sees it.
    fn init_pid(&self) -> Option<u32> {
        children_of(self.booted.as_ref()?.id()).first().copied()
    }

    /// Runs a command inside the booted host, in all of its namespaces.
    pub fn exec(&self, argv: &[&str]) -> crate::support::Run {
        let pid = self.init_pid().expect("exec needs a booted host").to_string();
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "-u", "-i", "-n", "-p", "--"])
            .args(argv)
            .output()
            .unwrap()
            .into()
    }

    /// Properties of a unit in the booted host, as `systemctl show -p` prints them.
    pub fn unit(&self, unit: &str, props: &str) -> String {
        self.exec(&["systemctl", "show", "-p", props, unit]).stdout
    }

    /// The systemd-nspawn command line up to `--`; SIGTERM to it reaches the command as PID 1.
    fn nspawn(&self) -> Vec<String> {
        [
            "systemd-nspawn".to_string(),
            "--register=no".into(),
            "--keep-unit".into(),
            "-q".into(),
            "--kill-signal=SIGTERM".into(),
            format!("--machine={}", self.name),
            "-D".into(),
            self.merged.display().to_string(),
            format!("--bind={}", self.share.display()),
            format!("--bind-ro={}", bin_dir().display()),
            "--".into(),
        ]
        .to_vec()
    }

    /// Runs a command on the host and waits for it.
    pub fn run(&self, argv: &[&str]) -> crate::support::Run {
        let cmd = self.nspawn();
        Command::new(&cmd[0]).args(&cmd[1..]).args(argv).output().unwrap().into()
    }

    /// Runs this machine's dpkg tool on the host's database (`--admindir`): works while the
    /// host's container runs, when a second container on the same tree cannot start.
    fn dpkg_here(&self, tool: &str, args: &[&str]) -> crate::support::Run {
        let admindir = format!("--admindir={}", self.merged.join("var/lib/dpkg").display());
        Command::new(tool).arg(admindir).args(args).output().unwrap().into()
    }

    /// The installed version of `package` (`ii` only), as dpkg says.
    pub fn version(&self, package: &str) -> Option<String> {
        let r = self.dpkg_here("dpkg-query", &["-W", "-f", "${db:Status-Abbrev}|${Version}", package]);
        r.stdout.strip_prefix("ii |").map(str::to_string)
    }

    /// What `dpkg --audit` prints (empty: every package is in a sane state).
    pub fn audit(&self) -> String {
        let r = self.dpkg_here("dpkg", &["--audit"]);
        assert_eq!(r.code, Some(0), "dpkg --audit on {}: {}", self.name, r.all());
        r.stdout.trim().to_string()
    }

    /// dpkg's frontend lock file of this host, as this machine sees it.
    pub fn lock_frontend(&self) -> PathBuf {
        self.merged.join("var/lib/dpkg/lock-frontend")
    }

    /// A file of the host, as this machine sees it (while a node runs in it, too).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.merged.join(rel)
    }

    /// A node on this host, started, connected to `admin`.
    pub fn node(&self, dir: &Path, admin: &Node, extra: &str) -> Node {
        let short = self.name.rsplit('-').next().unwrap_or(&self.name).to_string();
        let n = self.start(Node::new(dir, &short, &dir.join("root.lpr"), &[admin.port], extra));
        wait_until(Duration::from_secs(30), "connected", || !n.status().peers.is_empty());
        n
    }

    /// The admin workstation's node on this host: the collector, in ring admin, as `admin`.
    pub fn admin(&self, dir: &Path, extra: &str) -> Node {
        let config = format!("collector = true\nring = \"admin\"\n{extra}");
        self.start(Node::new(dir, "admin", &dir.join("root.lpr"), &[], &config))
    }

    fn start(&self, mut n: Node) -> Node {
        let mut w = self.nspawn();
        w.extend(["{node}", "run", "--config", "{config}"].map(String::from));
        n.wrapper = Some(w);
        n.start();
        n
    }
}

impl Drop for DebianHost {
    fn drop(&mut self) {
        if let Some(mut nspawn) = self.booted.take() {
            // SIGTERM asks systemd-nspawn for an orderly shutdown of the container; after 30 s
            // its PID 1 (the container with it) and nspawn are killed.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(nspawn.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let stopped = poll(Duration::from_secs(30), || nspawn.try_wait().ok().flatten().is_some());
            if !stopped {
                kill_children(nspawn.id());
                let _ = nspawn.kill();
                let _ = nspawn.wait();
            }
        }
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
    }
}

/// SIGKILL to each child of `pid` (by its own positive pid, never 1): a container's PID 1, whose
/// death ends every process of the container.
fn kill_children(pid: u32) {
    for child in children_of(pid) {
        if let Ok(raw) = i32::try_from(child)
            && raw > 1
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Children of process `pid` (from /proc): a container's PID 1 under its systemd-nspawn.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}
