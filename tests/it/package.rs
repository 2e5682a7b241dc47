//! The Debian packages, installed for real with dpkg on this machine (CI's machine is root and
//! disposable): files, owners and modes, the unit, the installed binary with the installed config
//! serving metrics that promtool accepts, purge leaving nothing; and self-update through a
//! lanpatch release carrying a newer lanpatch-node package.
//!
//! Slow (release builds) and root-only: `#[ignore]`d in the quick loop; CI runs them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::fleet::{DebianHost, Node, debian_root, free_port, make_fleet_keys, sample, wait_for_node, wait_until};

use crate::support::{Run, cannot_run, is_root, signer};

/// The version the upgrade package reports (above the workspace's in Debian order).
const UPGRADE: &str = "0.1.0+upgrade1";

/// dpkg state is machine-wide: one of these tests at a time.
static DPKG: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> Run {
    cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")).into()
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// Whatever this machine needs for these tests, or why it cannot run them.
fn missing() -> Option<String> {
    if !is_root() {
        return Some("dpkg -i needs root".into());
    }
    ["dpkg", "cargo-deb", "promtool", "unshare", "curl"]
        .iter()
        .find(|t| !have(t))
        .map(|t| format!("{t} is missing (scripts/test installs it)"))
}

/// Builds the packages for `version` (None: the workspace version) once per test run.
fn debs(version: Option<&str>) -> (PathBuf, PathBuf) {
    static BUILT: Mutex<Vec<(Option<String>, PathBuf, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, n, s)) = built.iter().find(|(v, _, _)| v.as_deref() == version) {
        return (n.clone(), s.clone());
    }
    let out = repo().join("target/test-debs").join(version.unwrap_or("workspace"));
    let _ = fs::remove_dir_all(&out);
    let mut cmd = Command::new(repo().join("packaging/build-debs.sh"));
    cmd.arg("--out").arg(&out);
    if let Some(v) = version {
        cmd.args(["--version", v]);
    }
    run(&mut cmd).ok();
    let find = |prefix: &str| -> PathBuf {
        fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
            .unwrap_or_else(|| panic!("no {prefix}*.deb in {}", out.display()))
    };
    let (n, s) = (find("lanpatch-node_"), find("lanpatch-signer_"));
    built.push((version.map(String::from), n.clone(), s.clone()));
    (n, s)
}

fn purge() {
    run(Command::new("dpkg").args(["--purge", "lanpatch-node", "lanpatch-signer"])).ok();
}

fn installed_version(package: &str) -> Option<String> {
    let r = run(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status} ${Version}", package]));
    r.stdout.strip_prefix("installed ").map(String::from)
}

/// (mode bits, owner uid, group name) of a path.
fn mode_of(path: &str) -> (u32, u32, String) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let group = run(Command::new("stat").args(["-c", "%G", path])).stdout.trim().to_string();
    (m.permissions().mode() & 0o7777, m.uid(), group)
}

/// Everything the node package puts on the machine, or that its scripts create.
const PACKAGE_PATHS: &[&str] = &[
    "/usr/bin/lanpatch-node",
    "/usr/bin/lanpatch-signer",
    "/lib/systemd/system/lanpatch-node.service",
    "/etc/lanpatch",
    "/var/lib/lanpatch",
    "/etc/systemd/system/multi-user.target.wants/lanpatch-node.service",
    "/usr/share/man/man1/lanpatch-node.1.gz",
    "/usr/share/bash-completion/completions/lanpatch-node",
    "/usr/share/doc/lanpatch-node",
];

#[test]
#[ignore = "builds release packages and installs them with dpkg (root); CI runs it"]
fn debian_packages_install_with_their_modes_run_under_the_installed_config_and_purge_leaves_nothing() {
    if let Some(why) = missing() {
        return cannot_run(&why);
    }
    let _dpkg = DPKG.lock().unwrap_or_else(|p| p.into_inner());
    let (node_deb, signer_deb) = debs(None);
    purge();
    run(Command::new("dpkg").arg("-i").arg(&node_deb).arg(&signer_deb)).ok();
    assert!(installed_version("lanpatch-node").is_some() && installed_version("lanpatch-signer").is_some());

    // Files, owners, modes.
    assert_eq!(mode_of("/usr/bin/lanpatch-node"), (0o755, 0, "root".into()));
    assert_eq!(mode_of("/usr/bin/lanpatch-signer"), (0o755, 0, "root".into()));
    assert_eq!(mode_of("/lib/systemd/system/lanpatch-node.service"), (0o644, 0, "root".into()));
    // node.toml may hold a secret (webhook_url): root and the lanpatch group only.
    assert_eq!(mode_of("/etc/lanpatch/node.toml"), (0o640, 0, "lanpatch".into()));
    assert_eq!(mode_of("/var/lib/lanpatch"), (0o710, 0, "lanpatch".into()));
    for p in PACKAGE_PATHS {
        assert!(fs::symlink_metadata(p).is_ok(), "{p} is missing after install");
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "lanpatch-node"]));
    assert!(conffiles.stdout.contains("/etc/lanpatch/node.toml"), "conffiles: {}", conffiles.stdout);
    assert!(run(Command::new("getent").args(["group", "lanpatch"])).code == Some(0));
    assert!(fs::metadata("/usr/share/man/man1/lanpatch-signer-release.1.gz").is_ok());
    if have("systemd-analyze") {
        let v = run(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/lanpatch-node.service"]));
        assert_eq!(v.code, Some(0), "systemd-analyze verify:\n{}", v.all());
        assert!(!v.all().contains("lanpatch-node.service:"), "systemd-analyze complains:\n{}", v.all());
    }

    // The installed binary with the installed config (mDNS on, listening on 0.0.0.0): in a
    // network namespace of its own, so nothing leaves this machine.
    let tmp = tempfile::tempdir().unwrap();
    make_fleet_keys(tmp.path());
    fs::copy(tmp.path().join("root.lpr"), "/etc/lanpatch/root.lpr").unwrap();
    // Not enrolled yet: the installed node refuses to start (exit 4), saying what to do.
    let refused = run(Command::new("unshare").args([
        "--net",
        "/usr/bin/lanpatch-node",
        "run",
        "--config",
        "/etc/lanpatch/node.toml",
    ]));
    assert_eq!(refused.code, Some(4), "{}", refused.all());
    assert!(refused.all().contains("lanpatch-node id"), "{}", refused.all());
    // Enrolled as an admin enrolls a host: `id` on the host (the packaged config by default),
    // `enroll node` on the workstation, `join` on the host.
    let id = run(Command::new("/usr/bin/lanpatch-node").args(["id", "--json"]));
    let cert = enroll_packaged(tmp.path(), &id, "pkg-host", "broad");
    run(Command::new("/usr/bin/lanpatch-node").arg("join").arg(&cert)).ok();
    assert_eq!(mode_of("/var/lib/lanpatch/node.cert").0, 0o600);
    let log = fs::File::create(tmp.path().join("installed.log")).unwrap();
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec /usr/bin/lanpatch-node run --config /etc/lanpatch/node.toml",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    let log_tail = || fs::read_to_string(tmp.path().join("installed.log")).unwrap_or_default();
    // `status` without arguments finds the packaged config and its socket.
    let status = || run(Command::new("/usr/bin/lanpatch-node").args(["status", "--json"]));
    crate::fleet::wait_until(Duration::from_secs(60), "the installed node answering status", || {
        assert!(child.try_wait().unwrap().is_none(), "the installed node exited:\n{}", log_tail());
        status().code == Some(0)
    });
    assert_eq!(mode_of("/var/lib/lanpatch/control.sock").0, 0o660);
    assert_eq!(mode_of("/var/lib/lanpatch/control.sock").2, "lanpatch");
    // Metrics on the packaged default address, inside the node's namespace (the shell exec'd
    // the node, so its pid is the namespace's).
    let scrape = || {
        run(Command::new("nsenter").args([
            "-t",
            &pid.to_string(),
            "-n",
            "curl",
            "-sf",
            "http://127.0.0.1:9717/metrics",
        ]))
    };
    let mut metrics = scrape();
    crate::fleet::wait_until(Duration::from_secs(30), "metrics on 127.0.0.1:9717", || {
        metrics = scrape();
        metrics.code == Some(0)
    });
    assert_eq!(sample(&metrics.stdout, "lanpatch_build_info{version=\"0.1.0\"}"), 1.0, "{}", metrics.stdout);
    let file = tmp.path().join("metrics.txt");
    fs::write(&file, &metrics.stdout).unwrap();
    let checked = run(Command::new("sh").args(["-c", "promtool check metrics < \"$0\""]).arg(&file));
    assert!(checked.code == Some(0) && checked.all().trim().is_empty(), "promtool:\n{}", checked.all());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut code = None;
    crate::fleet::wait_until(Duration::from_secs(60), "the installed node to stop", || {
        code = child.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    });
    assert_eq!(code, Some(Some(0)), "{}", log_tail());

    // Remove keeps data and config; purge removes everything.
    run(Command::new("dpkg").args(["--remove", "lanpatch-node"])).ok();
    assert!(fs::metadata("/etc/lanpatch/node.toml").is_ok() && fs::metadata("/var/lib/lanpatch").is_ok());
    assert!(fs::metadata("/usr/bin/lanpatch-node").is_err());
    purge();
    for p in PACKAGE_PATHS {
        assert!(fs::symlink_metadata(p).is_err(), "{p} is left after purge");
    }
    let overrides = run(Command::new("dpkg-statoverride").args(["--list", "/etc/lanpatch/node.toml"]));
    assert_ne!(overrides.code, Some(0), "purge left node.toml's stat override: {}", overrides.stdout);
    // The system group stays, so its gid is never handed to another group.
    assert_eq!(run(Command::new("getent").args(["group", "lanpatch"])).code, Some(0), "purge deleted the group");
    assert_eq!(installed_version("lanpatch-node"), None);
}

#[test]
#[ignore = "builds two release packages and installs them with dpkg (root); CI runs it"]
fn a_release_carrying_a_newer_node_package_upgrades_the_node_which_execs_into_it_and_reports_it() {
    if let Some(why) = missing() {
        return cannot_run(&why);
    }
    let _dpkg = DPKG.lock().unwrap_or_else(|p| p.into_inner());
    let (v1, _) = debs(None);
    let (v2, _) = debs(Some(UPGRADE));
    purge();
    run(Command::new("dpkg").arg("-i").arg(&v1)).ok();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    // A collector node on loopback, running the installed binary.
    let mut node = Node::new(dir, "n1", &dir.join("root.lpr"), &[], "collector = true\nring = \"canary\"");
    node.wrapper = Some(["/usr/bin/lanpatch-node", "run", "--config", "{config}"].map(String::from).to_vec());
    node.start();
    assert_eq!(node.status().version, "0.1.0");
    let pid = node.pid().unwrap();

    // The release: the new package, installed with dpkg by the node.
    let src = dir.join("upgrade-src");
    fs::create_dir_all(&src).unwrap();
    let deb_name = v2.file_name().unwrap().to_string_lossy().into_owned();
    fs::copy(&v2, src.join(&deb_name)).unwrap();
    let install = format!("dpkg -i {deb_name}");
    signer(
        dir,
        &[
            "release",
            "create",
            "--product",
            "lanpatch-node",
            "--version",
            "2",
            "--dir",
            &src.to_string_lossy(),
            "--install",
            &install,
            "--out",
            "upgrade",
        ],
    )
    .ok();
    for k in ["alice.key", "bob.key"] {
        signer(dir, &["release", "sign", "--key", k, "upgrade"]).ok();
    }
    for k in ["bob.key", "carol.key"] {
        signer(dir, &["approve", "--key", k, "--ring", "canary", "upgrade"]).ok();
    }
    node.publish(&dir.join("upgrade"));

    wait_for_node(&node, Duration::from_secs(120), "the node running the upgraded version", || {
        node.try_status().is_some_and(|s| s.version == UPGRADE)
    });
    // The same process (exec, not a crash and restart), now the new binary.
    assert_eq!(node.pid(), Some(pid));
    let lock = fs::read_to_string(node.dir.join("data/lock")).unwrap();
    assert_eq!(lock.trim(), pid.to_string(), "the data-dir lock holder");
    assert_eq!(installed_version("lanpatch-node").as_deref(), Some(UPGRADE));
    assert!(node.release_state("lanpatch-node", 2).is_some_and(|s| s.is_installed()));
    let log = fs::read_to_string(node.dir.join("node.log")).unwrap();
    assert!(log.contains("restarting into the upgraded /usr/bin/lanpatch-node"), "{log}");
    // The upgrade kept node.toml's owner and mode (its stat override).
    assert_eq!(mode_of("/etc/lanpatch/node.toml"), (0o640, 0, "lanpatch".into()));
    // Reported: the inventory on the collector shows the new package version.
    wait_for_node(&node, Duration::from_secs(60), "the inventory with the new version", || {
        let inv = signer(
            dir,
            &["inventory", "--node", &node.socket().to_string_lossy(), "--package", "lanpatch-node", "--json"],
        );
        inv.code == Some(0) && inv.stdout.contains(UPGRADE)
    });
    assert_eq!(node.stop(), Some(0));
    purge();
}

/// Enrolls a packaged node as an admin enrolls a host: `id` ran on the host (its output given
/// here), `enroll node` on the workstation (`dir`, holding root.lpr and enroll.key). Returns the
/// certificate for `join` on the host.
fn enroll_packaged(dir: &Path, id: &Run, hostname: &str, ring: &str) -> PathBuf {
    let id: serde_json::Value = serde_json::from_str(&id.ok().stdout).unwrap();
    let key = id["node_key"].as_str().unwrap().to_string();
    let cert = format!("{hostname}.cert");
    let args = [
        "enroll",
        "node",
        "--root",
        "root.lpr",
        "--key",
        "enroll.key",
        "--node-key",
        &key,
        "--hostname",
        hostname,
        "--ring",
        ring,
        "--out",
        &cert,
    ];
    signer(dir, &args).ok();
    dir.join(cert)
}

/// A key's value in `systemctl show -p` output (`Key=value` lines).
fn prop<'a>(show: &'a str, key: &str) -> &'a str {
    show.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or("")
}

#[test]
#[ignore = "builds release packages and boots a Debian container with systemd (root); CI runs it"]
fn the_packaged_node_under_systemd_in_a_debian_container_notifies_reloads_feeds_the_watchdog_restarts_after_sigkill_updates_itself_through_dpkg_and_purges()
 {
    if let Some(why) = missing() {
        return cannot_run(&why);
    }
    let Some(root) = debian_root() else { return };
    let (node_deb, signer_deb) = debs(None);
    let (upgrade_deb, _) = debs(Some(UPGRADE));
    // Not under /tmp: the unit's PrivateTmp hides /tmp from the node, and it reads bundles here.
    let tmp = tempfile::tempdir_in(repo().join("target")).unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let mut host = DebianHost::new(&root, dir, "svc");
    host.boot();
    // The test's directory is the one bound into the container.
    let local = |p: &Path| {
        let to = dir.join(p.file_name().unwrap());
        fs::copy(p, &to).unwrap();
        to.display().to_string()
    };
    host.exec(&["dpkg", "-i", &local(&node_deb), &local(&signer_deb)]).ok();
    // No trust root yet: the unit is skipped by its condition, not restarted in a loop.
    assert_eq!(prop(&host.unit("lanpatch-node", "ActiveState"), "ActiveState"), "inactive");

    let port = free_port();
    let toml = format!(
        "data_dir = \"/var/lib/lanpatch\"\ntrust_root = \"/etc/lanpatch/root.lpr\"\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\nmdns = false\nmetrics_listen = \"127.0.0.1:0\"\ncollector = true\nring = \"canary\"\n"
    );
    fs::write(dir.join("node.toml"), toml).unwrap();
    let d = |name: &str| dir.join(name).display().to_string();
    host.exec(&["cp", &d("node.toml"), "/etc/lanpatch/node.toml"]).ok();
    host.exec(&["cp", &d("root.lpr"), "/etc/lanpatch/root.lpr"]).ok();
    let id = host.exec(&["lanpatch-node", "id", "--json", "--config", "/etc/lanpatch/node.toml"]);
    let cert = enroll_packaged(dir, &id, "svc", "canary").display().to_string();
    host.exec(&["lanpatch-node", "join", &cert, "--config", "/etc/lanpatch/node.toml"]).ok();
    host.exec(&["systemctl", "start", "lanpatch-node"]).ok();

    // Type=notify: active only once the node said READY, with its status text.
    let show = host.unit("lanpatch-node", "ActiveState,SubState,StatusText,MainPID,Type,WatchdogUSec");
    assert_eq!(
        (prop(&show, "ActiveState"), prop(&show, "SubState"), prop(&show, "Type")),
        ("active", "running", "notify"),
        "{show}"
    );
    assert!(prop(&show, "StatusText").starts_with("running; control socket /var/lib/lanpatch/control.sock"), "{show}");
    let pid = prop(&show, "MainPID").to_string();

    // systemctl reload: SIGHUP, the same process, the status text says so.
    host.exec(&["systemctl", "reload", "lanpatch-node"]).ok();
    wait_until(Duration::from_secs(30), "the reload in the status text", || {
        prop(&host.unit("lanpatch-node", "StatusText"), "StatusText").contains("config reloaded at")
    });
    assert_eq!(prop(&host.unit("lanpatch-node", "MainPID"), "MainPID"), pid);

    // The watchdog: with a 3 s WatchdogSec the node must ping or be killed; it stays up and
    // systemd records its pings.
    host.exec(&["mkdir", "-p", "/etc/systemd/system/lanpatch-node.service.d"]).ok();
    fs::write(dir.join("watchdog.conf"), "[Service]\nWatchdogSec=3s\n").unwrap();
    host.exec(&["cp", &d("watchdog.conf"), "/etc/systemd/system/lanpatch-node.service.d/watchdog.conf"]).ok();
    host.exec(&["systemctl", "daemon-reload"]).ok();
    host.exec(&["systemctl", "restart", "lanpatch-node"]).ok();
    let first =
        prop(&host.unit("lanpatch-node", "WatchdogTimestampMonotonic"), "WatchdogTimestampMonotonic").to_string();
    let pid = prop(&host.unit("lanpatch-node", "MainPID"), "MainPID").to_string();
    wait_until(Duration::from_secs(30), "three watchdog periods of pings", || {
        let w = host.unit("lanpatch-node", "WatchdogTimestampMonotonic");
        let now: u64 = prop(&w, "WatchdogTimestampMonotonic").parse().unwrap_or(0);
        now > first.parse::<u64>().unwrap_or(0) + 9_000_000
    });
    let show = host.unit("lanpatch-node", "ActiveState,MainPID,NRestarts");
    assert_eq!(
        (prop(&show, "ActiveState"), prop(&show, "MainPID")),
        ("active", pid.as_str()),
        "killed by the watchdog: {show}"
    );

    // SIGKILL: systemd restarts it (Restart=on-failure), a new process.
    host.exec(&["systemctl", "--signal=SIGKILL", "kill", "lanpatch-node"]).ok();
    wait_until(Duration::from_secs(60), "systemd restarts the killed node", || {
        let show = host.unit("lanpatch-node", "ActiveState,SubState,MainPID");
        prop(&show, "ActiveState") == "active" && prop(&show, "SubState") == "running" && prop(&show, "MainPID") != pid
    });
    let pid = prop(&host.unit("lanpatch-node", "MainPID"), "MainPID").to_string();

    // Self-update: a Debian release of the newer lanpatch-node package, installed by the node
    // with dpkg; it re-executes the new binary in the same process, which systemd keeps.
    let up = local(&upgrade_deb);
    signer(
        dir,
        &["release", "create", "--product", "lanpatch-node", "--version", "2", "--deb", &up, "--out", "upgrade"],
    )
    .ok();
    for k in ["alice.key", "bob.key"] {
        signer(dir, &["release", "sign", "--key", k, "upgrade"]).ok();
    }
    for k in ["bob.key", "carol.key"] {
        signer(dir, &["approve", "--key", k, "--ring", "canary", "upgrade"]).ok();
    }
    host.exec(&["lanpatch-signer", "publish", "--node", "/var/lib/lanpatch/control.sock", &d("upgrade")]).ok();
    wait_until(Duration::from_secs(180), "the node running the upgraded package", || {
        let st = host.exec(&["lanpatch-node", "status", "--json", "--config", "/etc/lanpatch/node.toml"]);
        st.stdout.contains(&format!("\"version\": \"{UPGRADE}\""))
            || st.stdout.contains(&format!("\"version\":\"{UPGRADE}\""))
    });
    let show = host.unit("lanpatch-node", "ActiveState,SubState,MainPID");
    assert_eq!(
        (prop(&show, "ActiveState"), prop(&show, "SubState"), prop(&show, "MainPID")),
        ("active", "running", pid.as_str()),
        "{show}"
    );
    let v = host.exec(&["dpkg-query", "-W", "-f", "${Version}", "lanpatch-node"]);
    assert_eq!(v.stdout, UPGRADE);
    assert_eq!(host.exec(&["dpkg", "--audit"]).stdout.trim(), "");

    // Purge: the service stops, and nothing of the package is left.
    host.exec(&["dpkg", "--purge", "lanpatch-node", "lanpatch-signer"]).ok();
    assert_eq!(prop(&host.unit("lanpatch-node", "LoadState"), "LoadState"), "not-found");
    for p in PACKAGE_PATHS {
        let left = host.exec(&["test", "-e", p]);
        assert_ne!(left.code, Some(0), "{p} is left after purge");
    }
    // The system group stays (its gid must not go to another group), owning nothing any more.
    assert_eq!(host.exec(&["getent", "group", "lanpatch"]).code, Some(0), "purge deleted the lanpatch group");
    let owned = host.exec(&["find", "/", "-xdev", "-group", "lanpatch"]);
    assert_eq!(owned.stdout.trim(), "", "files still carry the lanpatch group after purge");
}
