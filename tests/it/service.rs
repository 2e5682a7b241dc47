//! Running under a service manager: systemd's readiness protocol, JSON logs, SIGHUP reload.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::fleet::{Node, make_fleet_keys, wait_for_node};

#[test]
fn node_tells_systemd_ready_over_notify_socket_once_its_control_socket_answers_and_stopping_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut node = Node::new(dir, "n1", &dir.join("root.lpr"), &[], "");
    node.env.push(("NOTIFY_SOCKET".into(), sock_path.display().to_string()));
    node.start();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a READY datagram");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "first notification: {msg:?}");
    // READY comes after the control socket is bound: status answers now.
    assert!(node.try_status().is_some());
    assert_eq!(node.stop(), Some(0));
    let n = sock.recv(&mut buf).expect("a STOPPING datagram");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "after SIGTERM: {msg:?}");
}

#[test]
fn json_log_format_writes_one_json_object_per_line_with_level_and_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let mut node = Node::new(dir, "n1", &dir.join("root.lpr"), &[], "log_format = \"json\"");
    node.start();
    let log = fs::read_to_string(node.dir.join("node.log")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object() && v["target"].is_string(), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains("lanpatch-node starting")), "{log}");
}

#[test]
fn sighup_reloads_the_log_filter_and_a_broken_config_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let mut node = Node::new(dir, "n1", &dir.join("root.lpr"), &[], "");
    let original = fs::read_to_string(&node.config).unwrap();
    node.start();
    let hup = |n: &Node| {
        let pid = nix::unistd::Pid::from_raw(n.pid().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    };
    let log = |n: &Node| fs::read_to_string(n.dir.join("node.log")).unwrap();

    fs::write(&node.config, format!("{original}\nthis is = not toml [\n")).unwrap();
    hup(&node);
    wait_for_node(&node, Duration::from_secs(30), "the refused reload", || {
        log(&node).contains("SIGHUP: config not reloaded, nothing changed")
    });
    assert!(node.try_status().is_some(), "the node keeps running on a broken config");

    let quieter = original.replace("log = \"info,lanpatch_node=debug,libp2p_gossipsub=warn\"", "log = \"warn\"");
    assert_ne!(quieter, original);
    fs::write(&node.config, format!("{quieter}upload_limit = 1048576\n")).unwrap();
    hup(&node);
    wait_for_node(&node, Duration::from_secs(30), "the reload", || log(&node).contains("SIGHUP: reloaded"));
    let mark = log(&node).len();
    // At warn, the info line of the next reload is no longer written; a warn line still is.
    fs::write(&node.config, format!("{quieter}log_filter_typo = 1\n")).unwrap();
    hup(&node);
    wait_for_node(&node, Duration::from_secs(30), "the second refused reload", || {
        log(&node)[mark..].contains("config not reloaded")
    });
    assert!(!log(&node)[mark..].contains(" INFO "), "{}", &log(&node)[mark..]);
}
