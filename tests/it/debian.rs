//! Releases of Debian packages on real Debian hosts: each node runs in a systemd-nspawn
//! container with its own dpkg database (lab/debian-root.sh), and installs the release's `.deb`
//! files itself. No install, rollback or detect script anywhere: the packages are built here
//! with dpkg-deb, with maintainer scripts of their own.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lanpatch_protocol::{FailReason, ReleaseState, RollbackCause, SkipReason, WaitReason};

use crate::fleet::{DebianHost, Node, blob_name, debian_root, make_fleet_keys, wait_until};
use crate::rollout::approve;
use crate::support::signer;

/// A postinst that succeeds.
const OK: &str = "exit 0";
/// A postinst that fails while /etc/lp-hello-fails exists.
const FAILS_WHILE_MARKED: &str = "[ ! -e /etc/lp-hello-fails ]";
/// A postinst that hangs once: while /etc/lp-hello-hangs exists, which it removes first.
const HANGS_ONCE: &str = "if [ -e /etc/lp-hello-hangs ]; then rm /etc/lp-hello-hangs; sleep 300; fi";
/// A postinst that asks for a reboot, as Debian's kernel and libc packages do.
const WANTS_REBOOT: &str =
    "touch /run/reboot-required\necho \"$DPKG_MAINTSCRIPT_PACKAGE\" >> /run/reboot-required.pkgs";

/// Builds `name_version_all.deb` in `dir`: a file under /usr/share/NAME, a postinst that says
/// it ran and then runs `postinst`, and the `relations` control lines ("Depends: ...").
fn build_deb(dir: &Path, name: &str, version: &str, relations: &[&str], postinst: &str) -> PathBuf {
    let tree = dir.join(format!("{name}-{version}-tree"));
    fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    fs::create_dir_all(tree.join(format!("usr/share/{name}"))).unwrap();
    fs::write(tree.join(format!("usr/share/{name}/version")), format!("{version}\n")).unwrap();
    let mut control = format!(
        "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: lanpatch tests <tests@lanpatch.invalid>\nDescription: a test package\n"
    );
    for r in relations {
        control.push_str(&format!("{r}\n"));
    }
    fs::write(tree.join("DEBIAN/control"), control).unwrap();
    let script = tree.join("DEBIAN/postinst");
    fs::write(&script, format!("#!/bin/sh\necho \"{name} {version} configured\"\n{postinst}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let deb = dir.join(format!("{name}_{version}_all.deb"));
    let st = Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&tree).arg(&deb).output().unwrap();
    assert!(st.status.success(), "dpkg-deb: {}", String::from_utf8_lossy(&st.stderr));
    deb
}

/// A release of `debs`, signed by the release role's two keys.
fn deb_release(dir: &Path, out: &str, product: &str, version: u32, debs: &[&Path], extra: &[&str]) -> PathBuf {
    let mut args: Vec<String> =
        ["release", "create", "--product", product, "--version", &version.to_string(), "--out", out]
            .map(String::from)
            .to_vec();
    for d in debs {
        args.extend(["--deb".to_string(), d.display().to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    signer(dir, &args).ok();
    for k in ["alice.key", "bob.key"] {
        signer(dir, &["release", "sign", "--key", k, out]).ok();
    }
    dir.join(out)
}

/// The node's state for `product` and the text beside it.
fn state_of(n: &Node, product: &str) -> Option<(ReleaseState, String)> {
    n.status().releases.into_iter().find(|r| r.product.as_str() == product).map(|r| (r.state, r.detail))
}

/// The node's state for version `version` of product hello, and the text beside it.
fn release_state(n: &Node, version: u64) -> Option<(ReleaseState, String)> {
    n.status()
        .releases
        .into_iter()
        .find(|r| r.product.as_str() == "hello" && r.version == version)
        .map(|r| (r.state, r.detail))
}

fn fleet_status(dir: &Path, admin: &Node, bundle: &Path) -> String {
    signer(dir, &["status".as_ref(), "--node".as_ref(), admin.socket().as_os_str(), bundle.as_os_str()]).stdout
}

/// Holds dpkg's frontend lock of a host from this process, as apt would, until dropped.
struct HeldLock(#[allow(dead_code)] fs::File);

fn hold_dpkg_lock(host: &DebianHost) -> HeldLock {
    let f =
        fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(host.lock_frontend()).unwrap();
    let l = libc_flock();
    nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_SETLK(&l)).expect("take dpkg's lock");
    HeldLock(f)
}

fn libc_flock() -> nix::libc::flock {
    nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

#[test]
#[ignore = "Debian host lab: root, systemd-nspawn and a debootstrapped root (CI runs it)"]
fn a_deb_release_goes_canary_then_broad_counting_hosts_already_at_it_waits_out_a_held_dpkg_lock_and_its_yank_after_it_was_superseded_rolls_back_only_hosts_still_on_it()
 {
    let Some(root) = debian_root() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let v1 = build_deb(dir, "lp-hello", "1.0-1", &[], OK);
    let v2 = build_deb(dir, "lp-hello", "1:2.0-1", &[], OK);
    let v3 = build_deb(dir, "lp-hello", "1:3.0-1", &[], WANTS_REBOOT);

    // Six Debian hosts: the admin's workstation; c1 (canary), b1..b3 (broad) have lp-hello
    // 1.0-1; b2 is already at 2.0; x1 has none.
    let workstation = DebianHost::new(&root, dir, "admin");
    let hosts: Vec<DebianHost> =
        ["c1", "b1", "b2", "b3", "x1"].iter().map(|h| DebianHost::new(&root, dir, h)).collect();
    for h in &hosts[..4] {
        h.run(&["dpkg", "-i", &v1.display().to_string()]).ok();
    }
    hosts[2].run(&["dpkg", "-i", &v2.display().to_string()]).ok();
    assert_eq!(hosts[2].version("lp-hello").as_deref(), Some("1:2.0-1"));

    let admin = workstation.admin(dir, "");
    let rings = ["canary", "broad", "broad", "broad", "broad"];
    let nodes: Vec<Node> = hosts
        .iter()
        .zip(rings)
        .map(|(h, r)| h.node(dir, &admin, &format!("ring = \"{r}\"\nkeep_versions = 1")))
        .collect();
    wait_until(Duration::from_secs(60), "mesh", || admin.status().peers.len() == 5);

    // The feeds know a CVE in lp-hello that 2.0 fixes; the release lists it.
    let osv = dir.join("osv");
    fs::create_dir_all(&osv).unwrap();
    fs::write(osv.join("a.json"), osv_record("CVE-2026-10001", "lp-hello", "1:2.0-1")).unwrap();
    let db = dir.join("feeds.db");
    crate::feeds::import(dir, &db, &["--osv", &osv.display().to_string()]).ok();
    let bundle = deb_release(dir, "hello-2", "hello", 1, &[&v2], &["--cve", "CVE-2026-10001"]);
    let shown = signer(dir, &["release", "show", "hello-2"]);
    assert!(shown.stdout.contains("lp-hello 1:2.0-1 all (source lp-hello 1:2.0-1), sha256 "), "{}", shown.stdout);
    approve(dir, &bundle, "canary", &[]).ok();
    admin.publish(&bundle);
    wait_until(Duration::from_secs(90), "canary installs", || {
        state_of(&nodes[0], "hello").is_some_and(|s| s.0 == ReleaseState::Installed)
    });
    assert_eq!(
        hosts[0].version("lp-hello").as_deref(),
        Some("1:2.0-1"),
        "{:?} {}",
        state_of(&nodes[0], "hello"),
        hosts[0].audit()
    );
    wait_until(Duration::from_secs(60), "x1 is not targeted", || {
        state_of(&nodes[4], "hello").is_some_and(|s| s.0 == ReleaseState::Skipped(SkipReason::NotTargeted))
    });
    let deb_blob = blob_name(&fs::read(&v2).unwrap());
    assert!(nodes[4].blob(&deb_blob).is_none(), "a host with none of the packages downloaded the release");
    assert!(nodes[0].blob(&deb_blob).is_some());

    // Per CVE: fixed where the release installed, pending where hosts are still exposed.
    let sock = admin.socket();
    let vulns = || {
        let args = [
            "vulns".as_ref(),
            "--node".as_ref(),
            sock.as_os_str(),
            "--db".as_ref(),
            db.as_os_str(),
            "--fixed-by".as_ref(),
            bundle.as_os_str(),
        ];
        signer(dir, &args).stdout
    };
    wait_until(Duration::from_secs(60), "vulns shows the CVE fixed on canary, pending on broad", || {
        vulns().contains("CVE-2026-10001 by release hello 1: fixed 1 [c1], pending 2 [b1, b3], failed 0 []")
    });

    // A package manager holds b3's dpkg lock: b3 waits, then installs once it is released.
    let lock = hold_dpkg_lock(&hosts[3]);
    let sock = admin.socket().display().to_string();
    wait_until(Duration::from_secs(30), "canary's report reaches the collector", || {
        fleet_status(dir, &admin, &bundle).contains("ring canary: installed 1")
    });
    approve(dir, &bundle, "broad", &["--node", &sock, "--rings", "canary,broad"]).ok();
    admin.publish(&bundle);
    wait_until(Duration::from_secs(90), "b1 installs, b2 counts as installed, b3 waits for the lock", || {
        state_of(&nodes[1], "hello").is_some_and(|s| s.0 == ReleaseState::Installed)
            && state_of(&nodes[2], "hello").is_some_and(|s| s.0 == ReleaseState::Installed)
            && state_of(&nodes[3], "hello")
                .is_some_and(|s| s.0 == ReleaseState::Waiting(WaitReason::PackageManagerBusy))
    });
    let (_, already) = state_of(&nodes[2], "hello").unwrap();
    assert!(already.contains("already at lp-hello 1:2.0-1"), "{already}");
    assert_eq!(hosts[3].version("lp-hello").as_deref(), Some("1.0-1"), "b3 installed under a held lock");
    drop(lock);
    wait_until(Duration::from_secs(90), "b3 installs once the lock is free", || {
        state_of(&nodes[3], "hello").is_some_and(|s| s.0 == ReleaseState::Installed)
    });
    wait_until(Duration::from_secs(30), "every report at the collector", || {
        fleet_status(dir, &admin, &bundle).contains("4/4 targeted nodes installed")
    });
    for h in &hosts[..4] {
        assert_eq!(h.version("lp-hello").as_deref(), Some("1:2.0-1"), "{}", h.name);
    }
    wait_until(Duration::from_secs(60), "vulns shows the CVE fixed everywhere", || {
        vulns().contains("CVE-2026-10001 by release hello 1: fixed 4 [b1, b2, b3, c1], pending 0 [], failed 0 []")
    });

    // Canary moves on to 3.0; then release 1 (2.0) is yanked with --rollback although release 2
    // superseded it: it acts only where hosts are still at it. b1 and b3 go back to the packages
    // they kept; b2 had 2.0 before the release and keeps it; c1, at 3.0, is left alone.
    let third = deb_release(dir, "hello-3", "hello", 2, &[&v3], &[]);
    approve(dir, &third, "canary", &[]).ok();
    admin.publish(&third);
    wait_until(Duration::from_secs(90), "canary moves on to 3.0", || {
        release_state(&nodes[0], 2).is_some_and(|s| s.0 == ReleaseState::Installed)
    });
    // What c1 kept for release 1 is beyond keep_versions once release 2 is installed.
    // With keep_versions = 1 here, only release 2's stays, and the cache quota counts it.
    let kept = || -> Vec<String> {
        fs::read_dir(nodes[0].dir.join("data/kept"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    wait_until(Duration::from_secs(30), "release 1's kept packages removed", || kept().len() == 1);
    let disk = nodes[0].status().disk;
    assert!(disk.kept > 0 && disk.total() >= disk.kept, "{disk:?}");
    // 3.0 asked for a reboot: the inventory at the collector says so.
    let sock_path = admin.socket();
    wait_until(Duration::from_secs(60), "c1's inventory says a reboot is required", || {
        let inv = signer(dir, &["inventory".as_ref(), "--node".as_ref(), sock_path.as_os_str()]).stdout;
        inv.contains("c1: reboot required (for lp-hello)")
    });
    signer(dir, &["yank", "--key", "bob.key", "--rollback", "--reason", "breaks greetings", "hello-2"]).ok();
    signer(dir, &["yank", "--key", "carol.key", "hello-2"]).ok();
    admin.publish(&bundle);
    wait_until(Duration::from_secs(90), "the broad hosts still at release 1 roll back", || {
        nodes[1..4]
            .iter()
            .all(|n| release_state(n, 1).is_some_and(|s| s.0 == ReleaseState::RolledBack(RollbackCause::Yanked)))
    });
    assert_eq!(hosts[1].version("lp-hello").as_deref(), Some("1.0-1"));
    assert_eq!(hosts[3].version("lp-hello").as_deref(), Some("1.0-1"));
    assert_eq!(hosts[2].version("lp-hello").as_deref(), Some("1:2.0-1"), "b2 had 2.0 before the release");
    assert!(release_state(&nodes[2], 1).unwrap().1.contains("nothing to undo"), "{:?}", release_state(&nodes[2], 1));
    assert_eq!(release_state(&nodes[0], 1).map(|s| s.0), Some(ReleaseState::Installed), "c1 moved on");
    assert_eq!(hosts[0].version("lp-hello").as_deref(), Some("1:3.0-1"));

    for h in hosts.iter().chain([&workstation]) {
        assert_eq!(h.audit(), "", "dpkg --audit on {}", h.name);
    }
}

#[test]
#[ignore = "Debian host lab: root, systemd-nspawn and a debootstrapped root (CI runs it)"]
fn a_failing_postinst_rolls_back_to_the_package_kept_from_apts_cache_and_stays_failed_until_approve_replace_a_hung_one_retries_inside_the_rule_and_missing_dependencies_and_conflicts_are_refused_before_dpkg_runs()
 {
    let Some(root) = debian_root() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let old = build_deb(dir, "lp-hello", "1.0-1", &[], OK);
    let fixed = build_deb(dir, "lp-hello", "1:4.0-1", &[], FAILS_WHILE_MARKED);
    let hangs = build_deb(dir, "lp-hello", "1:5.0-1", &[], HANGS_ONCE);
    let needy = build_deb(dir, "lp-needy", "1.0", &["Depends: lp-missing (>= 1), lp-hello"], OK);
    let rival = build_deb(dir, "lp-rival", "1.0", &["Conflicts: lp-hello, lp-other"], OK);
    let plugin = build_deb(dir, "lp-plugin", "1.0", &["Breaks: lp-hello (>= 1:9)"], OK);
    let nine = build_deb(dir, "lp-hello", "1:9.0-1", &[], OK);
    let host = DebianHost::new(&root, dir, "c1");
    host.run(&["dpkg", "-i", &old.display().to_string(), &plugin.display().to_string()]).ok();
    // apt's cache still holds the installed package, as after `apt-get upgrade`.
    host.run(&["cp", &old.display().to_string(), "/var/cache/apt/archives/"]).ok();
    let workstation = DebianHost::new(&root, dir, "admin");
    let admin = workstation.admin(dir, "");
    let node = host.node(dir, &admin, "ring = \"canary\"");
    let rule = ["--retries", "2", "--retry-spacing", "1s"];

    // 4.0's postinst fails on this host (a local condition the admin will fix).
    fs::write(host.path("etc/lp-hello-fails"), "").unwrap();
    let bad = deb_release(dir, "hello-4", "hello", 1, &[&fixed], &[]);
    approve(dir, &bad, "canary", &rule).ok();
    admin.publish(&bad);
    wait_until(Duration::from_secs(120), "the failed install rolls back", || {
        release_state(&node, 1).is_some_and(|s| s.0 == ReleaseState::RolledBack(RollbackCause::InstallFailed))
    });
    assert_eq!(host.version("lp-hello").as_deref(), Some("1.0-1"), "not back at the version before");
    let detail = release_state(&node, 1).unwrap().1;
    assert!(
        detail.contains("lp-hello 1:4.0-1 configured") && detail.contains("reinstalled lp-hello 1.0-1"),
        "{detail}"
    );
    assert!(detail.contains("reinstalled lp-hello 1.0-1 (kept from apt's cache)"), "{detail}");
    // What was kept has served: nothing of it stays.
    let left = fs::read_dir(node.dir.join("data/kept")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "kept packages left after the rollback");
    assert_eq!(host.audit(), "");

    // A missing dependency is refused before dpkg runs, naming it; a met one is not named.
    let needs = deb_release(dir, "needy-1", "needy", 1, &[&needy], &["--add-new"]);
    approve(dir, &needs, "canary", &[]).ok();
    admin.publish(&needs);
    wait_until(Duration::from_secs(90), "the missing dependency is refused", || {
        state_of(&node, "needy").is_some_and(|s| s.0 == ReleaseState::Failed(FailReason::MissingDependency))
    });
    let (_, why) = state_of(&node, "needy").unwrap();
    assert!(why.contains("lp-needy needs lp-missing (>= 1)") && !why.contains("needs lp-hello"), "{why}");
    assert_eq!(host.version("lp-needy"), None);

    // So is a package that conflicts with one on the host.
    let rivals = deb_release(dir, "rival-1", "rival", 1, &[&rival], &["--add-new"]);
    approve(dir, &rivals, "canary", &[]).ok();
    admin.publish(&rivals);
    wait_until(Duration::from_secs(90), "the conflict is refused", || {
        state_of(&node, "rival").is_some_and(|s| s.0 == ReleaseState::Failed(FailReason::Conflicts))
    });
    let (_, why) = state_of(&node, "rival").unwrap();
    assert_eq!(why, "refused before dpkg ran: lp-rival conflicts with lp-hello (lp-hello 1.0-1 here)");
    assert_eq!(host.version("lp-rival"), None);

    // Meanwhile the failed postinst was not tried again, retries or not: a maintainer script's
    // failure waits for the admin.
    assert_eq!(release_state(&node, 1).map(|s| s.0), Some(ReleaseState::RolledBack(RollbackCause::InstallFailed)));
    let log = || fs::read_to_string(node.dir.join("node.log")).unwrap_or_default();
    assert!(!log().contains("retry 1 of 2"), "{}", node.log_tail());
    assert_eq!(host.version("lp-hello").as_deref(), Some("1.0-1"));

    // The admin fixes the host and replaces the approval: the release installs.
    fs::remove_file(host.path("etc/lp-hello-fails")).unwrap();
    approve(dir, &bad, "canary", &["--replace", "--retries", "2", "--retry-spacing", "1s"]).ok();
    admin.publish(&bad);
    wait_until(Duration::from_secs(120), "the replaced approval installs 4.0", || {
        release_state(&node, 1).is_some_and(|s| s.0 == ReleaseState::Installed)
    });
    assert_eq!(host.version("lp-hello").as_deref(), Some("1:4.0-1"));
    assert_eq!(host.audit(), "");

    // 5.0's postinst hangs once: dpkg is stopped at the release's timeout, the host goes back to
    // 4.0, and the rule's retry installs it a second later.
    fs::write(host.path("etc/lp-hello-hangs"), "").unwrap();
    let slow = deb_release(dir, "hello-5", "hello", 2, &[&hangs], &["--timeout", "20s"]);
    approve(dir, &slow, "canary", &rule).ok();
    admin.publish(&slow);
    wait_until(Duration::from_secs(180), "the hung install is retried and installs", || {
        release_state(&node, 2).is_some_and(|s| s.0 == ReleaseState::Installed)
    });
    assert!(!host.path("etc/lp-hello-hangs").exists(), "the postinst never ran");
    assert!(log().contains("retry 1 of 2 after: rolled back (install timed out)"), "{}", node.log_tail());
    assert_eq!(host.version("lp-hello").as_deref(), Some("1:5.0-1"));

    // 9.0 is one that a package staying on the host breaks: refused before dpkg runs.
    let broken_by_plugin = deb_release(dir, "hello-9", "hello", 3, &[&nine], &[]);
    approve(dir, &broken_by_plugin, "canary", &[]).ok();
    admin.publish(&broken_by_plugin);
    wait_until(Duration::from_secs(90), "the installed package's Breaks is honoured", || {
        release_state(&node, 3).is_some_and(|s| s.0 == ReleaseState::Failed(FailReason::Conflicts))
    });
    let why = release_state(&node, 3).unwrap().1;
    assert_eq!(why, "refused before dpkg ran: lp-plugin (installed) breaks lp-hello (>= 1:9) (lp-hello 1:9.0-1 here)");
    assert_eq!(host.version("lp-hello").as_deref(), Some("1:5.0-1"));
    for h in [&host, &workstation] {
        assert_eq!(h.audit(), "", "dpkg --audit on {}", h.name);
    }
}

#[test]
fn release_create_deb_refuses_a_file_that_is_not_a_package_and_commands_beside_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    fs::write(dir.join("fake.deb"), b"not an ar archive").unwrap();
    let r = signer(dir, &["release", "create", "--product", "p", "--version", "1", "--deb", "fake.deb", "--out", "o"]);
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("fake.deb is not a Debian package"), "{}", r.stderr);
    assert!(!dir.join("o").exists(), "a refused release left a bundle behind");
    let deb = build_deb(dir, "lp-hello", "1.0", &[], OK);
    let deb = deb.display().to_string();
    let mixed = signer(
        dir,
        &["release", "create", "--product", "p", "--version", "1", "--deb", &deb, "--install", "sh x", "--out", "o"],
    );
    assert_eq!(mixed.code, Some(2), "{}", mixed.all());
    assert!(mixed.stderr.contains("cannot be used with"), "{}", mixed.stderr);
    let ok = signer(dir, &["release", "create", "--product", "p", "--version", "1", "--deb", &deb, "--out", "o"]);
    ok.ok();
    assert!(ok.stdout.contains("created p version 1"), "{}", ok.stdout);
}

/// An OSV record of Debian's export: `cve` in source package `source` (Debian 12), fixed in
/// `fixed`.
fn osv_record(cve: &str, source: &str, fixed: &str) -> String {
    serde_json::json!({
        "id": format!("DEBIAN-{cve}"),
        "modified": "2026-11-30T06:20:40Z",
        "upstream": [cve],
        "affected": [{
            "package": {"ecosystem": "Debian:12", "name": source},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}],
        }],
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
        "schema_version": "1.6.0",
    })
    .to_string()
}

#[test]
fn release_create_deb_fills_cve_with_the_fleets_exposures_that_these_versions_fix_and_no_others() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let osv = dir.join("osv");
    fs::create_dir_all(&osv).unwrap();
    fs::write(osv.join("a.json"), osv_record("CVE-2026-10001", "lp-hello", "1:2.0-1")).unwrap();
    fs::write(osv.join("b.json"), osv_record("CVE-2026-10002", "lp-hello", "1:5.0-1")).unwrap();
    fs::write(osv.join("c.json"), osv_record("CVE-2026-10003", "other-source", "9.0")).unwrap();
    let db = dir.join("feeds.db").display().to_string();
    crate::feeds::import(dir, Path::new(&db), &["--osv", &osv.display().to_string()]).ok();
    let host = serde_json::json!([{
        "node": "00", "hostname": "web-1", "os": "debian", "os_version": "12", "kernel": "6.1", "arch": "x86_64",
        "ring": "canary", "tags": [], "releases": [], "at": 0, "seq": 1,
        "packages": [
            {"name": "lp-hello", "version": "1.0-1", "source": null, "source_version": null},
            {"name": "other", "version": "1.0", "source": "other-source", "source_version": "1.0"},
        ],
    }]);
    fs::write(dir.join("inv.json"), host.to_string()).unwrap();
    let deb = build_deb(dir, "lp-hello", "1:2.0-1", &[], OK).display().to_string();
    let r = signer(
        dir,
        &[
            "release",
            "create",
            "--product",
            "hello",
            "--version",
            "1",
            "--deb",
            &deb,
            "--inventories",
            "inv.json",
            "--feeds-db",
            &db,
            "--out",
            "r",
        ],
    );
    r.ok();
    assert!(r.stdout.contains("--cve from the fleet's exposures these packages fix: CVE-2026-10001\n"), "{}", r.stdout);
    let shown = signer(dir, &["release", "show", "r"]).stdout;
    assert!(shown.contains("CVEs: CVE-2026-10001\n"), "{shown}");
    assert!(shown.contains("CVSS 9.8"), "scores come from the feeds for the filled CVEs: {shown}");
}

#[test]
#[ignore = "Debian host lab: a debootstrapped root, its apt lists and archive packages (CI runs it)"]
fn release_create_apt_lists_records_debians_own_signature_and_refuses_what_the_archive_does_not_vouch_for() {
    let Some(root) = debian_root() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let lists = root.join("var/lib/apt/lists");
    let cached = root.join("var/cache/apt/archives");
    let dash = fs::read_dir(&cached)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dash_")))
        .expect("debootstrap keeps the packages it installed");
    let create = |lists: &Path, deb: &Path, out: &str| {
        signer(
            dir,
            &[
                "release".as_ref(),
                "create".as_ref(),
                "--product".as_ref(),
                "dash".as_ref(),
                "--version".as_ref(),
                "1".as_ref(),
                "--deb".as_ref(),
                deb.as_os_str(),
                "--apt-lists".as_ref(),
                lists.as_os_str(),
                "--out".as_ref(),
                out.as_ref(),
            ],
        )
    };
    let ok = create(&lists, &dash, "vouched");
    ok.ok();
    assert!(ok.stdout.contains("Debian's archive vouches for dash"), "{}", ok.stdout);
    let shown = signer(dir, &["release", "show", "vouched"]).stdout;
    assert!(
        shown.contains("listed by Debian's archive: Debian ") && shown.contains("main/binary-amd64/Packages"),
        "{shown}"
    );
    crate::fleet::make_fleet_keys(dir);
    let root_lpr = dir.join("root.lpr");
    let verified = signer(dir, &["verify".as_ref(), "--root".as_ref(), root_lpr.as_os_str(), "vouched".as_ref()]);
    assert!(
        verified.stdout.contains("package dash ")
            && verified.stdout.contains(" amd64: listed by Debian's archive, Debian "),
        "{}",
        verified.all()
    );

    // A package the archive does not list.
    let ours = build_deb(dir, "lp-hello", "1.0", &[], OK);
    let r = create(&lists, &ours, "unlisted");
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("lp-hello 1.0 all is in none of the verified Debian archive indexes"), "{}", r.stderr);

    // An index changed after Debian signed its release file.
    let copy = dir.join("lists");
    fs::create_dir_all(&copy).unwrap();
    for e in fs::read_dir(&lists).unwrap().flatten().filter(|e| e.path().is_file()) {
        fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let packages = fs::read_dir(&copy)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("_Packages"))
        .unwrap();
    let mut text = fs::read(&packages).unwrap();
    text.extend_from_slice(b"\nPackage: evil\nVersion: 1\nArchitecture: all\nSHA256: 00\n");
    fs::write(&packages, text).unwrap();
    let r = create(&copy, &dash, "tampered-index");
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("does not match the SHA-256 and size that"), "{}", r.stderr);

    // A release file that Debian did not sign.
    let release = fs::read_dir(&copy)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("_InRelease"))
        .unwrap();
    let forged =
        String::from_utf8(fs::read(&release).unwrap()).unwrap().replacen("Suite:", "Suite: forged\nX-Suite:", 1);
    fs::write(&release, forged).unwrap();
    let r = create(&copy, &dash, "forged-release");
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("does not verify with Debian's archive keyring"), "{}", r.stderr);
    for out in ["unlisted", "tampered-index", "forged-release"] {
        assert!(!dir.join(out).exists(), "a refused release left {out} behind");
    }
}
