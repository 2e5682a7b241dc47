//! A release's life on real node processes: the eight behaviours of issue #9 (the typed,
//! persisted lifecycle), each by a test named after it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanpatch_protocol::{FailReason, ReleaseState, RollbackCause};

use crate::fleet::{
    Node, admin, endpoint, make_fleet_keys, make_release, payload, processes_in, wait_for_node, wait_until,
};
use crate::support::{Run, cannot_run, signer};

/// A release of `files` (name, content) with these install / rollback commands, signed by alice
/// and bob, approved for `canary` by bob and carol.
fn release(dir: &Path, name: &str, version: u32, files: &[(&str, &str)], install: &str, extra: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    fs::create_dir_all(&src).unwrap();
    for (f, body) in files {
        fs::write(src.join(f), body).unwrap();
    }
    fs::write(src.join("payload.bin"), payload(100_000, u64::from(version))).unwrap();
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
        install,
        "--timeout",
        "120s",
        "--out",
        name,
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    signer(dir, &args).ok();
    for key in ["alice.key", "bob.key"] {
        signer(dir, &["release", "sign", "--key", key, name]).ok();
    }
    for key in ["bob.key", "carol.key"] {
        signer(dir, &["approve", "--key", key, "--ring", "canary", name]).ok();
    }
    dir.join(name)
}

fn state(n: &Node) -> Option<ReleaseState> {
    n.release_state("tool", 1)
}

/// `lanpatch-signer status --json` of the collector.
fn status_json(dir: &Path, admin: &Node) -> (Run, serde_json::Value) {
    let r = signer(dir, &["status".as_ref(), "--json".as_ref(), "--node".as_ref(), admin.socket().as_os_str()]);
    let v = serde_json::from_str(&r.stdout).unwrap_or(serde_json::Value::Null);
    (r, v)
}

/// The state the collector holds for `host`'s report, typed.
fn collector_state(dir: &Path, admin: &Node, host: &str) -> Option<ReleaseState> {
    let (_, v) = status_json(dir, admin);
    let nodes = v["releases"][0]["nodes"].as_array()?.clone();
    let node = nodes.into_iter().find(|n| n["hostname"] == host)?;
    serde_json::from_value(node["state"].clone()).ok()
}

fn inventory_seq(dir: &Path, admin: &Node, host: &str) -> Option<u64> {
    let r = signer(dir, &["inventory".as_ref(), "--json".as_ref(), "--node".as_ref(), admin.socket().as_os_str()]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).ok()?;
    v["nodes"].as_array()?.iter().find(|n| n["hostname"] == host)?["seq"].as_u64()
}

#[test]
fn restarted_canary_with_a_failed_install_keeps_the_ring_gate_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let bundle = release(dir, "bad", 1, &[("install.sh", "echo broken >&2\nexit 4\n")], "sh install.sh", &[]);
    let admin = admin(dir, "");
    let mut c = endpoint(dir, "c1", &admin, "hostname = \"c1\"");
    admin.publish(&bundle);
    let failed = ReleaseState::Failed(FailReason::CommandFailed);
    wait_until(Duration::from_secs(60), "failure at the collector", || {
        collector_state(dir, &admin, "c1") == Some(failed)
    });

    // Restart the canary; wait until it has spoken to the collector again (a newer inventory).
    let before = inventory_seq(dir, &admin, "c1").unwrap_or(0);
    assert_eq!(c.stop(), Some(0), "{}", c.log_tail());
    c.start();
    assert_eq!(state(&c), Some(failed), "the restarted node lost its outcome");
    wait_until(Duration::from_secs(60), "an inventory from the restarted canary", || {
        inventory_seq(dir, &admin, "c1").is_some_and(|s| s > before)
    });
    assert_eq!(collector_state(dir, &admin, "c1"), Some(failed));
    let sock = admin.socket().to_string_lossy().into_owned();
    let gate = signer(
        dir,
        &["approve", "--key", "bob.key", "--ring", "broad", "--rings", "canary,broad", "--node", &sock, "bad"],
    );
    assert_eq!(gate.code, Some(1), "the gate passed over a failure: {}", gate.all());
    assert!(gate.stderr.contains("ring canary has 1 failed install(s)"), "{}", gate.stderr);
}

#[test]
fn yank_rollback_is_its_own_outcome_and_never_listed_as_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let files =
        [("install.sh", "touch \"$LANPATCH_DATA/installed\"\n"), ("rollback.sh", "rm \"$LANPATCH_DATA/installed\"\n")];
    let bundle = release(dir, "v1", 1, &files, "sh install.sh", &["--rollback", "sh rollback.sh"]);
    let admin = admin(dir, "");
    let n = endpoint(dir, "n1", &admin, "hostname = \"n1\"");
    admin.publish(&bundle);
    wait_until(Duration::from_secs(60), "installed", || state(&n) == Some(ReleaseState::Installed));
    signer(dir, &["yank", "--key", "bob.key", "--rollback", "--reason", "breaks printing", "v1"]).ok();
    signer(dir, &["yank", "--key", "carol.key", "v1"]).ok();
    admin.publish(&bundle);
    let yanked = ReleaseState::RolledBack(RollbackCause::Yanked);
    wait_until(Duration::from_secs(60), "rolled back at the collector", || {
        collector_state(dir, &admin, "n1") == Some(yanked)
    });
    assert!(!n.dir.join("data/installed").exists());
    let text = signer(dir, &["status".as_ref(), "--node".as_ref(), admin.socket().as_os_str()]).ok().stdout.clone();
    assert!(!text.contains("failing nodes"), "{text}");
    assert!(text.contains("rolled back by yank 1"), "{text}");
    let (_, v) = status_json(dir, &admin);
    assert_eq!(v["releases"][0]["rings"]["canary"]["failed"], 0, "{v}");
    assert_eq!(v["releases"][0]["rings"]["canary"]["rolled_back_by_yank"], 1, "{v}");
}

#[test]
fn disk_full_during_download_reaches_the_collector_as_failed_disk_full_and_frees_the_partial_file() {
    if !crate::support::is_root() {
        cannot_run("disk-full test: needs root to mount a small tmpfs in a private mount namespace");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    // 4 MiB of release on a 1 MiB partial/ directory.
    let bundle = make_release(dir, "big", 1, &payload(4 * 1024 * 1024, 7), 64 * 1024, &[]);
    let admin = admin(dir, "");
    let mut n = Node::new(dir, "small", &dir.join("root.lpr"), &[admin.port], "hostname = \"small\"");
    let partial = n.dir.join("data/partial");
    fs::create_dir_all(&partial).unwrap();
    // A mount namespace of its own: the tmpfs vanishes with the node, nothing leaks to the host.
    let script =
        format!("mount -t tmpfs -o size=1m lanpatch-test '{}' && exec \"$0\" run --config \"$1\"", partial.display());
    n.wrapper = Some(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", &script, "{node}", "{config}"]
            .map(String::from)
            .to_vec(),
    );
    n.start();
    wait_until(Duration::from_secs(30), "connected", || !n.status().peers.is_empty());
    admin.publish(&bundle);
    let full = ReleaseState::Failed(FailReason::DiskFull);
    wait_for_node(&n, Duration::from_secs(60), "failed (disk full) at the node", || state(&n) == Some(full));
    assert!(n.status().releases[0].detail.contains("download failed"), "{:?}", n.status().releases[0]);
    wait_until(Duration::from_secs(60), "failed (disk full) at the collector", || {
        collector_state(dir, &admin, "small") == Some(full)
    });
    // The node's own view of partial/ (inside its mount namespace) is empty again.
    let inside = PathBuf::from(format!("/proc/{}/root", n.pid().unwrap())).join(partial.strip_prefix("/").unwrap());
    let left: Vec<_> = fs::read_dir(&inside).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "partial files left behind: {left:?}");
}

#[test]
fn relative_data_dir_gives_installs_absolute_paths_hostname_ring_and_nothing_else_of_the_nodes_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let script = "env > \"$LANPATCH_DATA/install-env\"\npwd > \"$LANPATCH_DATA/install-cwd\"\n";
    let bundle = release(dir, "v1", 1, &[("install.sh", script)], "sh install.sh", &[]);
    let admin = admin(dir, "");
    let mut n =
        Node::new(dir, "rel", &dir.join("root.lpr"), &[admin.port], "ring = \"canary\"\nhostname = \"kiosk-7\"");
    n.relative_config = true;
    n.env.push(("NODE_SECRET".into(), "must-not-leak".into()));
    n.start();
    wait_until(Duration::from_secs(30), "connected", || !n.status().peers.is_empty());
    admin.publish(&bundle);
    wait_for_node(&n, Duration::from_secs(60), "installed", || state(&n) == Some(ReleaseState::Installed));
    let data = fs::canonicalize(n.dir.join("data")).unwrap();
    let env = fs::read_to_string(data.join("install-env")).expect("the install wrote into LANPATCH_DATA");
    let var = |k: &str| env.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(str::to_string);
    assert_eq!(var("LANPATCH_DATA").map(PathBuf::from), Some(data.clone()), "{env}");
    let stage = PathBuf::from(var("LANPATCH_STAGE").unwrap());
    assert!(stage.is_absolute() && stage.starts_with(&data), "{env}");
    assert_eq!(var("LANPATCH_HOSTNAME").as_deref(), Some("kiosk-7"));
    assert_eq!(var("LANPATCH_RING").as_deref(), Some("canary"));
    assert_eq!(fs::read_to_string(data.join("install-cwd")).unwrap().trim(), stage.to_string_lossy());
    assert!(!env.contains("must-not-leak"), "the node's environment leaked into the install: {env}");
    for l in env.lines() {
        let k = l.split('=').next().unwrap_or("");
        assert!(
            k.starts_with("LANPATCH_") || ["PATH", "LANG", "PWD", "SHLVL", "_", "OLDPWD"].contains(&k),
            "unexpected variable {k} in the install environment:\n{env}"
        );
    }
}

#[test]
fn second_node_on_a_used_port_or_a_locked_data_dir_refuses_to_start_naming_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let root = dir.join("root.lpr");
    let mut a = Node::new(dir, "a", &root, &[], "");
    a.start();

    // Same listen address, other data directory.
    let toml = format!(
        "data_dir = \"data\"\ntrust_root = \"{}\"\nlisten = [\"/ip4/127.0.0.1/tcp/{}\"]\nmdns = false\nmetrics_listen = \"127.0.0.1:0\"\n",
        root.display(),
        a.port
    );
    let b = Node::with_config(dir, "b", &toml, a.port, None);
    let (code, log) = b.run_expecting_exit(Duration::from_secs(30));
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains(&format!("/ip4/127.0.0.1/tcp/{}", a.port)) && log.contains("already in use"), "{log}");

    // Same data directory (a's own config started twice).
    let mut twin = Node::with_config(dir, "a", &fs::read_to_string(&a.config).unwrap(), a.port, None);
    twin.config = a.config.clone();
    let (code, log) = twin.run_expecting_exit(Duration::from_secs(30));
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("already running with data directory"), "{log}");
    assert!(log.contains(&format!("(pid {})", a.pid().unwrap())), "{log}");
    // The first node is untouched: its control socket still answers.
    assert!(a.try_status().is_some(), "{}", a.log_tail());
}

#[test]
fn sigterm_during_an_install_kills_its_process_group_and_the_next_start_resolves_it_as_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    // The install starts a background child of its own, then waits.
    let install = "sleep 300 &\ntouch \"$LANPATCH_DATA/install-started\"\nsleep 300\n";
    let files = [("install.sh", install), ("rollback.sh", "touch \"$LANPATCH_DATA/rolled-back\"\n")];
    let bundle = release(dir, "slow", 1, &files, "sh install.sh", &["--rollback", "sh rollback.sh"]);
    let admin = admin(dir, "");
    let mut n = endpoint(dir, "n1", &admin, "hostname = \"n1\"\nshutdown_grace_secs = 1");
    admin.publish(&bundle);
    wait_for_node(&n, Duration::from_secs(60), "install starts", || n.dir.join("data/install-started").exists());
    let stage = n.dir.join("data/stage");
    assert!(processes_in(&stage).len() >= 2, "the install and its child should run: {:?}", processes_in(&stage));
    assert_eq!(n.stop(), Some(0), "{}", n.log_tail());
    assert!(processes_in(&stage).is_empty(), "orphans after SIGTERM: {:?}", processes_in(&stage));
    assert!(n.log_tail().contains("interrupted"), "{}", n.log_tail());

    n.start();
    let done = ReleaseState::RolledBack(RollbackCause::Interrupted);
    wait_for_node(&n, Duration::from_secs(60), "resolved after restart", || state(&n) == Some(done));
    assert!(n.dir.join("data/rolled-back").exists());
    wait_until(Duration::from_secs(60), "collector sees it", || collector_state(dir, &admin, "n1") == Some(done));
}

#[test]
fn signer_queries_speak_json_and_a_missing_release_or_a_non_collector_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let published = release(dir, "v1", 1, &[("install.sh", "true\n")], "sh install.sh", &[]);
    let never = release(dir, "v2", 2, &[("install.sh", "true\n")], "sh install.sh", &[]);
    let admin = admin(dir, "");
    let n = endpoint(dir, "n1", &admin, "hostname = \"n1\"");
    admin.publish(&published);
    wait_until(Duration::from_secs(60), "installed", || state(&n) == Some(ReleaseState::Installed));
    let sock = admin.socket();
    wait_until(Duration::from_secs(60), "report", || {
        collector_state(dir, &admin, "n1") == Some(ReleaseState::Installed)
    });
    let (r, v) = status_json(dir, &admin);
    assert_eq!(r.code, Some(0));
    assert_eq!(v["releases"][0]["rings"]["canary"]["installed"], 1, "{v}");

    let missing = signer(dir, &["status".as_ref(), "--node".as_ref(), sock.as_os_str(), never.as_os_str()]);
    assert_eq!(missing.code, Some(3), "{}", missing.all());
    assert!(missing.stderr.contains("no node has reported on release"), "{}", missing.stderr);

    let not_collector =
        signer(dir, &["inventory".as_ref(), "--json".as_ref(), "--node".as_ref(), n.socket().as_os_str()]);
    assert_eq!(not_collector.code, Some(3), "{}", not_collector.all());
    assert!(not_collector.stderr.contains("not a collector"), "{}", not_collector.stderr);

    let unreachable = signer(dir, &["status", "--node", "/nonexistent/control.sock"]);
    assert_eq!(unreachable.code, Some(4), "{}", unreachable.all());

    for args in [
        vec!["verify", "--json", "--root", "root.lpr", "--ring", "canary", "v1"],
        vec!["release", "show", "--json", "v1"],
        vec!["root", "show", "--json", "root.lpr"],
    ] {
        let r = signer(dir, &args);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.all());
        let v: serde_json::Value =
            serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", r.stdout));
        assert!(v.is_object(), "{args:?}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&signer(dir, &["verify", "--json", "--root", "root.lpr", "v1"]).stdout).unwrap();
    assert_eq!(v["valid"], true, "{v}");
}

#[test]
fn release_create_refused_for_a_bad_flag_leaves_nothing_and_the_corrected_retry_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("payload.bin"), payload(300_000, 3)).unwrap();
    let args = |cvss: &str| {
        [
            "release",
            "create",
            "--product",
            "openssl",
            "--version",
            "7",
            "--dir",
            "src",
            "--install",
            "sh -c true",
            "--cvss",
            cvss,
            "--out",
            "openssl-7",
        ]
        .map(String::from)
        .to_vec()
    };
    let bad = signer(dir, &args("11"));
    assert_eq!(bad.code, Some(2), "{}", bad.all());
    assert!(bad.stderr.contains("CVSS 11 is out of range"), "{}", bad.stderr);
    let left: Vec<_> = fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name()).filter(|n| n != "src").collect();
    assert!(left.is_empty(), "a refused create left {left:?}");
    signer(dir, &args("9.1")).ok();
    assert!(dir.join("openssl-7/manifest.lpm").exists());
    assert!(dir.join("openssl-7/files/payload.bin").exists());
}
