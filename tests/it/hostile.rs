//! Hostile local input: clients on this machine that connect and never finish a request, and
//! members of the control socket's group that point the root node at files that never end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lanpatch_protocol::control::{ControlRequest, ControlResponse, PublishMode};

use crate::fleet::{Node, wait_until};
use crate::support::bin;

/// `lanpatch-node status` of `n`, if it answers within `limit` (the command is killed, by its
/// own PID, otherwise).
fn status_within(n: &Node, limit: Duration) -> bool {
    let mut child = Command::new(bin("lanpatch-node"))
        .args(["status", "--json", "--socket"])
        .arg(n.socket())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `count` connections to `addr`, each sending a request's first header line and no more.
fn half_sent(addr: &str, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            write!(c, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n").unwrap();
            c
        })
        .collect()
}

/// Whether the server closed `c` (end of stream, or a reset) before `limit`.
fn closed_by_server(c: &mut TcpStream, limit: Duration) -> bool {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            // An answer (408 or 400) before the close is fine: keep reading to the end.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn clients_that_never_finish_their_headers_are_cut_and_the_control_socket_answers_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::fleet::make_fleet_keys(dir);
    let mut n = Node::new(dir, "n1", &dir.join("root.lpr"), &[], "collector = true\nconsole_listen = \"127.0.0.1:0\"");
    n.start();
    let st = n.status();
    let (metrics, console) = (st.metrics.unwrap(), st.console.unwrap());
    // 100 to each listener: more than either serves at once.
    let opened = Instant::now();
    let mut slow = half_sent(&metrics, 100);
    slow.extend(half_sent(&console, 100));
    for _ in 0..5 {
        assert!(status_within(&n, Duration::from_secs(10)), "the control socket stopped answering");
    }
    // Every one of them is cut: served ones at the 10 s header deadline, the rest (waiting in
    // the backlog behind them) at theirs once served; 100 per listener is two rounds. One
    // deadline for all, well under the 60 s a connection may last at most.
    let deadline = opened + Duration::from_secs(45);
    for (i, c) in slow.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        assert!(closed_by_server(c, left), "slow client {i} still open 45 s after it connected");
    }
    // And the listeners serve again.
    assert!(n.scrape().contains("lanpatch_peers"));
    assert!(status_within(&n, Duration::from_secs(10)));
}

/// Sends one request to the control socket and waits up to `limit` for the answer.
fn control(n: &Node, req: &ControlRequest, limit: Duration) -> Option<ControlResponse> {
    let mut s = UnixStream::connect(n.socket()).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    serde_json::from_str(&out).ok()
}

fn refusal(resp: Option<ControlResponse>) -> String {
    match resp {
        Some(ControlResponse::Error { message, .. }) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn publish_of_a_bundle_whose_manifest_is_a_fifo_or_a_link_to_dev_zero_is_refused_at_once_and_the_node_keeps_answering()
{
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::fleet::make_fleet_keys(dir);
    let mut n = Node::new(dir, "n1", &dir.join("root.lpr"), &[], "");
    n.start();
    let publish =
        |bundle: &Path| ControlRequest::Publish { bundle: bundle.display().to_string(), mode: PublishMode::Seed };

    // A FIFO nobody writes: opening it to read would block for ever.
    let fifo_bundle = dir.join("fifo-bundle");
    std::fs::create_dir_all(&fifo_bundle).unwrap();
    nix::unistd::mkfifo(&fifo_bundle.join("manifest.lpm"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    for _ in 0..3 {
        let why = refusal(control(&n, &publish(&fifo_bundle), Duration::from_secs(10)));
        assert!(why.contains("manifest.lpm is not a regular file"), "{why}");
    }
    assert!(status_within(&n, Duration::from_secs(10)), "the node froze");

    // A link to /dev/zero: reading it would never end.
    let zero_bundle = dir.join("zero-bundle");
    std::fs::create_dir_all(&zero_bundle).unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero_bundle.join("manifest.lpm")).unwrap();
    let why = refusal(control(&n, &publish(&zero_bundle), Duration::from_secs(10)));
    assert!(why.contains("a symbolic link is not followed"), "{why}");

    // A regular file far larger than any signed envelope: refused by its size, not read.
    let big_bundle = dir.join("big-bundle");
    std::fs::create_dir_all(&big_bundle).unwrap();
    let f = std::fs::File::create(big_bundle.join("manifest.lpm")).unwrap();
    f.set_len(8 << 30).unwrap();
    let why = refusal(control(&n, &publish(&big_bundle), Duration::from_secs(10)));
    assert!(why.contains("more than the"), "{why}");
    wait_until(Duration::from_secs(10), "the node answers", || status_within(&n, Duration::from_secs(5)));
}

#[test]
fn an_install_that_replaces_the_node_binary_with_something_that_cannot_run_leaves_the_running_node_patching() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::fleet::make_fleet_keys(dir);
    let admin = crate::fleet::admin(dir, "");
    // The node runs from its own copy of the binary, which the release replaces.
    let exe = dir.join("bin/lanpatch-node");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy(bin("lanpatch-node"), &exe).unwrap();
    let mut n = Node::new(dir, "n1", &dir.join("root.lpr"), &[admin.port], "ring = \"canary\"");
    n.wrapper = Some(vec![exe.display().to_string(), "run".into(), "--config".into(), "{config}".into()]);
    n.start();
    wait_until(Duration::from_secs(30), "connected", || !n.status().peers.is_empty());
    let pid = std::fs::read_to_string(n.dir.join("data/lock")).unwrap_or_default();

    // A script where the binary was (renamed over it, as dpkg does): glibc's exec would hand it
    // to /bin/sh.
    let marker = dir.join("script-ran");
    let install = format!(
        "printf '#!/bin/sh\\ntouch {m}\\n' > {e}.new && chmod 755 {e}.new && mv {e}.new {e}\n",
        m = marker.display(),
        e = exe.display()
    );
    let bad = crate::rollout::release(dir, "bad-update", 1, &install, crate::rollout::ROLLBACK, &[]);
    crate::rollout::approve(dir, &bad, "canary", &[]).ok();
    admin.publish(&bad);
    wait_until(Duration::from_secs(60), "the install succeeds", || {
        n.release_state("tool", 1) == Some(lanpatch_protocol::ReleaseState::Installed)
    });
    wait_until(Duration::from_secs(30), "the node says it stays", || {
        std::fs::read_to_string(n.dir.join("node.log")).unwrap_or_default().contains("the running node stays")
    });
    // The same process, still patching: the next release installs.
    assert_eq!(std::fs::read_to_string(n.dir.join("data/lock")).unwrap_or_default(), pid);
    let next = crate::rollout::release(dir, "next", 2, crate::rollout::INSTALL_OK, crate::rollout::ROLLBACK, &[]);
    crate::rollout::approve(dir, &next, "canary", &[]).ok();
    admin.publish(&next);
    wait_until(Duration::from_secs(60), "the next release installs", || {
        n.release_state("tool", 2) == Some(lanpatch_protocol::ReleaseState::Installed)
    });
    assert!(!marker.exists(), "the script that replaced the binary ran");
}

#[test]
fn at_the_descriptor_limit_the_node_backs_off_instead_of_spinning_and_answers_again_once_clients_are_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::fleet::make_fleet_keys(dir);
    let mut n = Node::new(dir, "n1", &dir.join("root.lpr"), &[], "collector = true\nconsole_listen = \"127.0.0.1:0\"");
    // 128 descriptors, soft and hard: the node cannot raise it, and the two HTTP listeners' 128
    // connections alone exhaust it.
    n.wrapper =
        Some(["prlimit", "--nofile=128:128", "--", "{node}", "run", "--config", "{config}"].map(String::from).to_vec());
    n.start();
    let st = n.status();
    let (metrics, console) = (st.metrics.unwrap(), st.console.unwrap());
    let log = || std::fs::metadata(n.dir.join("node.log")).map(|m| m.len()).unwrap_or(0);
    let before = log();
    let pid: u32 = std::fs::read_to_string(n.dir.join("data/lock")).unwrap().trim().parse().unwrap();
    let cpu_before = cpu_seconds(pid);
    let mut slow = half_sent(&metrics, 100);
    slow.extend(half_sent(&console, 100));
    // Held for the header deadline: at the limit, accept fails at once, again and again.
    let started = Instant::now();
    let mut control_slow = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        if let Ok(s) = UnixStream::connect(n.socket()) {
            control_slow.push(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let grew = log() - before;
    let cpu = cpu_seconds(pid) - cpu_before;
    assert!(grew < 1 << 20, "the log grew {grew} bytes in 5 s: the accept loop spins");
    assert!(cpu < 2.0, "the node used {cpu:.2} CPU seconds in 5 s at the descriptor limit: it spins");
    // Once the slow clients are cut, the control socket answers again.
    drop(control_slow);
    wait_until(Duration::from_secs(60), "the control socket answers again", || {
        status_within(&n, Duration::from_secs(5))
    });
    for c in slow.iter_mut() {
        assert!(closed_by_server(c, Duration::from_secs(60)));
    }
}

/// CPU seconds (user and system) process `pid` has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), here 11 and 12 after the state field.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // In USER_HZ, which Linux fixes at 100 for what /proc reports.
    ticks as f64 / 100.0
}
