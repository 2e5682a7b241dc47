//! Patch management with real node processes: rings and the approval gate, installs that change
//! files, failures and rollback, targeting and maintenance windows, a crash mid-install, inventory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lanpatch_protocol::{ReleaseState, RollbackCause, SkipReason, WaitReason};

use crate::fleet::{Node, admin, endpoint, make_fleet_keys, wait_for_node, wait_until};
use crate::support::{Run, cannot_run, is_root, signer};

/// A release whose install script writes `$LANPATCH_DATA/<marker>`; `extra` adds signer flags.
pub fn release(dir: &Path, name: &str, version: u32, install: &str, rollback: &str, extra: &[&str]) -> PathBuf {
    release_sized(dir, name, version, 200_000, install, rollback, extra)
}

/// [`release`] with a payload of `size` bytes.
pub fn release_sized(
    dir: &Path,
    name: &str,
    version: u32,
    size: usize,
    install: &str,
    rollback: &str,
    extra: &[&str],
) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("install.sh"), install).unwrap();
    fs::write(src.join("rollback.sh"), rollback).unwrap();
    fs::write(src.join("payload.bin"), crate::fleet::payload(size, u64::from(version))).unwrap();
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
        "--rollback",
        "sh rollback.sh",
        "--timeout",
        "60s",
        "--out",
        name,
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    signer(dir, &args).ok();
    signer(dir, &["release", "sign", "--key", "alice.key", name]).ok();
    signer(dir, &["release", "sign", "--key", "bob.key", name]).ok();
    dir.join(name)
}

pub fn approve(dir: &Path, bundle: &Path, ring: &str, extra: &[&str]) -> Run {
    let mut args: Vec<String> = ["approve", "--key", "bob.key", "--ring", ring].map(String::from).to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(bundle.to_string_lossy().into_owned());
    let first = signer(dir, &args);
    if first.code == Some(0) {
        signer(
            dir,
            &[
                "approve".as_ref(),
                "--key".as_ref(),
                "carol.key".as_ref(),
                "--ring".as_ref(),
                ring.as_ref(),
                bundle.as_os_str(),
            ],
        )
        .ok();
    }
    first
}

/// The state of the node's first release and the text beside it.
pub fn install_state(n: &Node) -> (ReleaseState, String) {
    n.status()
        .releases
        .into_iter()
        .next()
        .map(|r| (r.state, r.detail))
        .unwrap_or((ReleaseState::Available, String::new()))
}

fn fleet_status(dir: &Path, admin: &Node, bundle: &Path) -> String {
    signer(dir, &["status".as_ref(), "--node".as_ref(), admin.socket().as_os_str(), bundle.as_os_str()])
        .ok()
        .stdout
        .clone()
}

pub const INSTALL_OK: &str =
    "echo \"tool $LANPATCH_VERSION\" > \"$LANPATCH_DATA/installed-tool\"\necho installed fine\n";
pub const ROLLBACK: &str = "rm -f \"$LANPATCH_DATA/installed-tool\"\necho rolled > \"$LANPATCH_DATA/rolled-back\"\n";

#[test]
fn canary_installs_first_broad_is_gated_on_canary_success_then_all_six_install() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let bundle = release(dir, "v1", 1, INSTALL_OK, ROLLBACK, &["--target-tag", "endpoint"]);
    let admin = admin(dir, "");
    let canary: Vec<Node> =
        (1..=2).map(|i| endpoint(dir, &format!("c{i}"), &admin, "ring = \"canary\"\ntags = [\"endpoint\"]")).collect();
    let broad: Vec<Node> =
        (1..=4).map(|i| endpoint(dir, &format!("b{i}"), &admin, "ring = \"broad\"\ntags = [\"endpoint\"]")).collect();
    wait_until(Duration::from_secs(30), "mesh", || admin.status().peers.len() == 6);

    approve(dir, &bundle, "canary", &[]).ok();
    admin.publish(&bundle);
    // Nothing from canary yet: the gate refuses broad.
    let sock = admin.socket().to_string_lossy().into_owned();
    let gate = ["--node", sock.as_str(), "--rings", "canary,broad"];
    let gated = approve(dir, &bundle, "broad", &gate);
    assert_eq!(gated.code, Some(1), "{}", gated.all());
    assert!(
        gated.stderr.contains("refusing to approve broad: ring canary has 0 successful install(s)"),
        "{}",
        gated.stderr
    );

    let marker = |n: &Node| fs::read_to_string(n.dir.join("data/installed-tool")).ok();
    wait_until(Duration::from_secs(60), "canary installs", || {
        canary.iter().all(|n| marker(n).as_deref() == Some("tool 1\n"))
    });
    // Broad nodes reach their waiting state (recorded before any install could start) and stay.
    wait_until(Duration::from_secs(60), "broad waits for its approval", || {
        broad.iter().all(|n| install_state(n).0 == ReleaseState::Waiting(WaitReason::NotApproved))
    });
    assert!(broad.iter().all(|n| marker(n).is_none()), "broad installed without an approval");
    assert!(
        install_state(&broad[0]).1.contains("waiting for an approval for ring broad"),
        "{:?}",
        install_state(&broad[0])
    );

    wait_until(Duration::from_secs(30), "canary reports at the collector", || {
        fleet_status(dir, &admin, &bundle).contains("ring canary: installed 2")
    });
    approve(dir, &bundle, "broad", &gate).ok();
    admin.publish(&bundle);
    wait_until(Duration::from_secs(60), "broad installs", || broad.iter().all(|n| marker(n).is_some()));
    wait_until(Duration::from_secs(30), "all reports", || {
        fleet_status(dir, &admin, &bundle).contains("6/6 targeted nodes installed")
    });
    let st = fleet_status(dir, &admin, &bundle);
    assert!(st.contains("ring broad: installed 4") && st.contains("ring canary: installed 2"), "{st}");
}

#[test]
fn failing_install_is_rolled_back_reported_with_its_output_and_blocks_the_next_ring() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let failing = "echo step one ok\necho \"cannot write /opt/tool: read-only file system\" >&2\nexit 3\n";
    let bundle = release(dir, "bad", 1, failing, ROLLBACK, &["--target-tag", "endpoint"]);
    let admin = admin(dir, "");
    let c = endpoint(dir, "c1", &admin, "ring = \"canary\"\ntags = [\"endpoint\"]");
    wait_until(Duration::from_secs(30), "mesh", || admin.status().peers.len() == 1);
    approve(dir, &bundle, "canary", &[]).ok();
    admin.publish(&bundle);
    wait_until(Duration::from_secs(60), "rollback", || {
        install_state(&c).0 == ReleaseState::RolledBack(RollbackCause::InstallFailed)
    });
    assert!(c.dir.join("data/rolled-back").exists(), "rollback script did not run");
    assert!(install_state(&c).1.contains("install exited with 3"), "{:?}", install_state(&c));
    // "rolling back" is reported before the rollback runs; wait for the final state.
    wait_until(Duration::from_secs(30), "rollback report", || {
        fleet_status(dir, &admin, &bundle).contains("rolled back (install failed) (exit 3)")
    });
    let st = fleet_status(dir, &admin, &bundle);
    assert!(st.contains("failing nodes:") && st.contains("cannot write /opt/tool: read-only file system"), "{st}");
    let gated = approve(dir, &bundle, "pilot", &["--node", &admin.socket().to_string_lossy()]);
    assert_eq!(gated.code, Some(1));
    assert!(
        gated.stderr.contains("ring canary has 1 failed install(s)") && gated.stderr.contains("read-only file system"),
        "{}",
        gated.stderr
    );
    // The override is possible, and its reason is signed into the approval.
    approve(
        dir,
        &bundle,
        "pilot",
        &["--node", &admin.socket().to_string_lossy(), "--force", "--reason", "fixed by hand on c1"],
    )
    .ok();
    let v = signer(dir, &["verify", "--root", "root.lpr", "--ring", "pilot", "bad"]);
    assert!(v.stdout.contains("FORCED: fixed by hand on c1"), "{}", v.stdout);
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn untargeted_node_never_installs_and_node_outside_its_window_waits_until_the_deadline_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let bundle = release(dir, "v1", 1, INSTALL_OK, ROLLBACK, &["--target-tag", "kiosk"]);
    let admin = admin(dir, "");
    let other = endpoint(dir, "server", &admin, "tags = [\"server\"]");
    // A window two hours from now (UTC), so now is outside it.
    let h = (unix_now() / 3600 + 2) % 24;
    let window = format!(
        "tags = [\"kiosk\"]\n[[maintenance_windows]]\ndays = [\"daily\"]\nstart = \"{h:02}:00\"\nend = \"{:02}:00\"\n",
        (h + 1) % 24
    );
    let mut kiosk = Node::new(dir, "kiosk", &dir.join("root.lpr"), &[admin.port], &window);
    kiosk.env.push(("TZ".into(), "UTC".into()));
    kiosk.start();
    wait_until(Duration::from_secs(30), "mesh", || admin.status().peers.len() == 2);
    approve(dir, &bundle, "broad", &["--rings", "broad"]).ok();
    admin.publish(&bundle);
    wait_until(Duration::from_secs(60), "kiosk waits for its window", || {
        install_state(&kiosk).0 == ReleaseState::Waiting(WaitReason::OutsideWindow)
    });
    assert!(install_state(&kiosk).1.contains("waiting for the maintenance window"), "{:?}", install_state(&kiosk));
    wait_until(Duration::from_secs(30), "server skips", || {
        install_state(&other).0 == ReleaseState::Skipped(SkipReason::NotTargeted)
    });
    assert!(!kiosk.dir.join("data/installed-tool").exists(), "installed outside the window");

    // A new approval whose deadline has passed: install at once, window or not.
    let (nb, dl) = (format!("@{}", unix_now() - 120), format!("@{}", unix_now() - 60));
    approve(dir, &bundle, "broad", &["--rings", "broad", "--replace", "--not-before", &nb, "--deadline", &dl]).ok();
    admin.publish(&bundle);
    crate::fleet::wait_for_node(&kiosk, Duration::from_secs(30), "install after the deadline", || {
        kiosk.dir.join("data/installed-tool").exists()
    });
    wait_until(Duration::from_secs(30), "installed state", || install_state(&kiosk).0 == ReleaseState::Installed);
    assert!(!other.dir.join("data/installed-tool").exists());
}

#[test]
fn node_killed_during_install_resolves_the_attempt_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let slow = "touch \"$LANPATCH_DATA/install-started\"\nsleep 20\ntouch \"$LANPATCH_DATA/installed-tool\"\n";
    let bundle =
        release(dir, "slow", 1, slow, ROLLBACK, &["--detect", "sh -c 'test -f \"$LANPATCH_DATA/installed-tool\"'"]);
    let admin = admin(dir, "");
    let mut n = endpoint(dir, "n1", &admin, "ring = \"canary\"");
    wait_until(Duration::from_secs(30), "mesh", || admin.status().peers.len() == 1);
    approve(dir, &bundle, "canary", &[]).ok();
    admin.publish(&bundle);
    wait_until(Duration::from_secs(60), "install starts", || n.dir.join("data/install-started").exists());
    n.kill9();
    n.start();
    wait_until(Duration::from_secs(30), "attempt resolved", || {
        install_state(&n).0 == ReleaseState::RolledBack(RollbackCause::Interrupted)
    });
    assert!(install_state(&n).1.contains("interrupted"), "{:?}", install_state(&n));
    assert!(n.dir.join("data/rolled-back").exists());
    wait_until(Duration::from_secs(30), "report at the collector", || {
        fleet_status(dir, &admin, &bundle).contains("rolled back (install interrupted)")
    });
    // The leftover install process was stopped: no process runs in its staging directory.
    let stage = n.dir.join("data/stage");
    assert!(
        crate::fleet::processes_in(&stage).is_empty(),
        "leftover install: {:?}",
        crate::fleet::processes_in(&stage)
    );
    assert!(!n.dir.join("data/installed-tool").exists());
}

#[test]
fn yank_with_rollback_rolls_back_installed_nodes_and_no_stage_copy_outlives_its_command() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let bundle = release(dir, "v1", 1, INSTALL_OK, ROLLBACK, &[]);
    let admin = admin(dir, "");
    let n = endpoint(dir, "n1", &admin, "ring = \"canary\"");
    wait_until(Duration::from_secs(30), "mesh", || admin.status().peers.len() == 1);
    approve(dir, &bundle, "canary", &[]).ok();
    admin.publish(&bundle);
    wait_until(Duration::from_secs(60), "install", || install_state(&n).0 == ReleaseState::Installed);
    assert!(n.dir.join("data/installed-tool").exists());
    let stage_empty = || fs::read_dir(n.dir.join("data/stage")).map(|d| d.count() == 0).unwrap_or(true);
    wait_until(Duration::from_secs(10), "the install's staging copy removed", stage_empty);
    signer(dir, &["yank", "--key", "bob.key", "--rollback", "--reason", "breaks printing", "v1"]).ok();
    signer(dir, &["yank", "--key", "carol.key", "v1"]).ok();
    admin.publish(&bundle);
    wait_until(Duration::from_secs(30), "rollback after yank", || n.dir.join("data/rolled-back").exists());
    wait_until(Duration::from_secs(10), "state", || {
        install_state(&n).0 == ReleaseState::RolledBack(RollbackCause::Yanked)
    });
    assert!(install_state(&n).1.contains("yanked: breaks printing"));
    // The rollback ran from a fresh staging copy (rollback.sh is one of the release's files),
    // removed once it was done.
    wait_until(Duration::from_secs(10), "the rollback's staging copy removed", stage_empty);
}

#[test]
fn inventory_of_this_debian_machine_is_collected_and_queried() {
    let Ok(dpkg) = fs::read_to_string("/var/lib/dpkg/status") else {
        cannot_run("inventory test: no /var/lib/dpkg/status on this machine");
        return;
    };
    let dpkg_version = dpkg
        .split("\n\n")
        .find(|s| s.lines().any(|l| l == "Package: dpkg"))
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Version: ")))
        .expect("dpkg itself is installed")
        .to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "");
    let _n = endpoint(dir, "n1", &admin, "tags = [\"kiosk\"]");
    let inv = |args: &[&str]| {
        let mut a: Vec<String> =
            vec!["inventory".into(), "--node".into(), admin.socket().to_string_lossy().into_owned()];
        a.extend(args.iter().map(|s| s.to_string()));
        signer(dir, &a).stdout
    };
    wait_until(Duration::from_secs(30), "two inventories", || inv(&[]).contains("of 2 node(s)"));
    let all = inv(&[]);
    assert!(all.contains("kernel") && all.contains("packages"), "{all}");
    let below_high = inv(&["--package", "dpkg", "--below", "99"]);
    assert!(below_high.contains(&format!("dpkg {dpkg_version}")) && below_high.contains("2 of 2"), "{below_high}");
    assert!(inv(&["--package", "dpkg", "--below", "1.0"]).contains("0 of 2"));
    assert!(inv(&["--tag", "kiosk"]).contains("1 of 2"));
}

#[test]
fn a_full_cache_quota_evicts_the_superseded_release_keeps_the_rollback_one_and_then_downloads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "");
    // Room for two releases of 1 MB and the database (its WAL bounded to 512 KiB), not three;
    // keep two versions. The quota counts state.db too.
    let n = endpoint(dir, "n1", &admin, "ring = \"canary\"\ncache_quota = 2900000\nkeep_versions = 2");
    wait_until(Duration::from_secs(30), "mesh", || admin.status().peers.len() == 1);
    let payload = |v: u32| crate::fleet::blob_name(&crate::fleet::payload(1_000_000, u64::from(v)));
    for v in 1..=3u32 {
        let bundle = release_sized(dir, &format!("v{v}"), v, 1_000_000, INSTALL_OK, ROLLBACK, &[]);
        approve(dir, &bundle, "canary", &[]).ok();
        admin.publish(&bundle);
        wait_until(Duration::from_secs(60), &format!("v{v} installs"), || {
            n.release_state("tool", u64::from(v)) == Some(ReleaseState::Installed)
        });
        if v == 2 {
            // Two versions fit and policy keeps two: nothing was evicted yet.
            assert!(n.blob(&payload(1)).is_some() && n.blob(&payload(2)).is_some());
        }
    }
    // v3 needed room: v1 (superseded, beyond keep_versions) went; v2, the installed release a
    // rollback would need while v3 downloaded, stayed (and stays: the second version kept).
    assert!(n.blob(&payload(1)).is_none(), "the superseded release was not evicted");
    assert!(n.blob(&payload(2)).is_some() && n.blob(&payload(3)).is_some());
    let evicted = crate::fleet::sample(&n.scrape(), "lanpatch_evicted_bytes_total");
    assert!(evicted >= 1_000_000.0, "evicted {evicted}");
    let log = fs::read_to_string(n.dir.join("node.log")).unwrap();
    assert!(log.contains("evicted older releases to fit the cache quota"), "{}", n.log_tail());
    // Status and metrics show the disk by kind: two releases' files in blobs/, no staging copy.
    let disk = n.status().disk;
    assert!(disk.blobs >= 2_000_000 && disk.blobs < 2_900_000, "{disk:?}");
    assert_eq!(disk.stage, 0, "{disk:?}");
    assert!(disk.state > 0 && disk.blobs + disk.state <= 2_900_000, "everything written fits the quota: {disk:?}");
    assert_eq!(crate::fleet::sample(&n.scrape(), "lanpatch_disk_bytes{kind=\"blobs\"}"), disk.blobs as f64);

    // A release larger than the whole quota: refused with its typed reason, which reaches the
    // collector, and nothing is evicted for it.
    let big = crate::fleet::make_release(dir, "v4", 4, &crate::fleet::payload(3_000_000, 4), 65536, &[]);
    approve(dir, &big, "canary", &[]).ok();
    admin.publish(&big);
    wait_until(Duration::from_secs(60), "v4 refused", || {
        n.release_state("tool", 4) == Some(ReleaseState::Failed(lanpatch_protocol::FailReason::OverQuota))
    });
    wait_until(Duration::from_secs(30), "the refusal on the collector", || {
        fleet_status(dir, &admin, &big).contains("failed (over cache quota)")
    });
    assert!(n.blob(&payload(2)).is_some() && n.blob(&payload(3)).is_some());
}

/// Unmounts a tmpfs the test mounted, whatever the test's outcome.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as mount's `size=` takes it) at `dir`, created first: an
    /// endpoint's small disk. Unmounted when dropped.
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs on {}", dir.display());
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_download_that_would_cross_min_free_disk_is_refused_and_the_reason_reaches_the_collector() {
    if !is_root() {
        return cannot_run("needs root (mounts a small tmpfs as an endpoint's data directory)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "");
    // The endpoint's disk: 16 MiB, of which it must keep 12 MiB free.
    let _mount = Tmpfs::mount(dir.join("n1/data"), "16m");
    let n = endpoint(dir, "n1", &admin, &format!("ring = \"canary\"\nmin_free_disk = {}", 12 << 20));
    wait_until(Duration::from_secs(30), "mesh", || admin.status().peers.len() == 1);
    // 1 MiB fits above the reserve; 6 MiB would cross it.
    let small = crate::fleet::make_release(dir, "v1", 1, &crate::fleet::payload(1 << 20, 1), 65536, &[]);
    approve(dir, &small, "canary", &[]).ok();
    admin.publish(&small);
    wait_until(Duration::from_secs(60), "v1 installs", || n.release_state("tool", 1) == Some(ReleaseState::Installed));
    let big = crate::fleet::make_release(dir, "v2", 2, &crate::fleet::payload(6 << 20, 2), 65536, &[]);
    approve(dir, &big, "canary", &[]).ok();
    admin.publish(&big);
    wait_until(Duration::from_secs(60), "v2 refused", || {
        n.release_state("tool", 2) == Some(ReleaseState::Failed(lanpatch_protocol::FailReason::LowDisk))
    });
    let detail = n.status().releases.iter().find(|r| r.version == 2).map(|r| r.detail.clone()).unwrap_or_default();
    assert!(detail.contains("min_free_disk keeps 12582912"), "{detail}");
    wait_until(Duration::from_secs(30), "the refusal on the collector", || {
        fleet_status(dir, &admin, &big).contains("failed (would leave too little free disk)")
    });
    // Nothing of it was written: the disk still has its reserve.
    assert_eq!(n.status().disk.partial, 0);
}

#[test]
fn on_a_64_mib_disk_the_default_reserve_lets_a_small_release_install() {
    if !is_root() {
        return cannot_run("needs root (mounts a small tmpfs as an endpoint's data directory)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "");
    let _mount = Tmpfs::mount(dir.join("n1/data"), "64m");
    // No min_free_disk: the default (256 MiB, more than this whole disk) scales down to 5 %.
    let n = endpoint(dir, "n1", &admin, "ring = \"canary\"");
    wait_until(Duration::from_secs(30), "mesh", || admin.status().peers.len() == 1);
    let small = crate::fleet::make_release(dir, "v1", 1, &crate::fleet::payload(53_000, 1), 65536, &[]);
    approve(dir, &small, "canary", &[]).ok();
    admin.publish(&small);
    wait_until(Duration::from_secs(60), "the 53 KB release installs", || {
        n.release_state("tool", 1) == Some(ReleaseState::Installed)
    });
}

/// Reports and inventories go out once, when they are made; a collector that was not running then
/// learns what it missed from the nodes' digests and pulls it (nothing is re-sent on a timer, so
/// without the pull it would never see the install).
#[test]
fn a_collector_that_joins_after_the_install_pulls_the_missed_report_and_inventories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let bundle = release(dir, "v1", 1, INSTALL_OK, ROLLBACK, &["--target-tag", "endpoint"]);
    let fast = "report_digest_secs = 1";
    let mut seed = Node::new(dir, "seed", &dir.join("root.lpr"), &[], &format!("ring = \"admin\"\n{fast}"));
    seed.start();
    let e1 = endpoint(dir, "e1", &seed, &format!("ring = \"canary\"\ntags = [\"endpoint\"]\n{fast}"));
    wait_until(Duration::from_secs(30), "mesh", || seed.status().peers.len() == 1);
    approve(dir, &bundle, "canary", &[]).ok();
    seed.publish(&bundle);
    wait_until(Duration::from_secs(60), "e1 installs", || install_state(&e1).0 == ReleaseState::Installed);

    let collector = endpoint(dir, "collector", &seed, &format!("collector = true\nring = \"admin\"\n{fast}"));
    let status = || {
        signer(dir, &["status".as_ref(), "--node".as_ref(), collector.socket().as_os_str(), bundle.as_os_str()])
            .stdout
            .clone()
    };
    wait_for_node(&collector, Duration::from_secs(60), "the missed install report at the joining collector", || {
        status().contains("1/1 targeted nodes installed")
    });
    let inv = || signer(dir, &["inventory".as_ref(), "--node".as_ref(), collector.socket().as_os_str()]).stdout.clone();
    wait_until(Duration::from_secs(60), "the missed inventories at the joining collector", || {
        inv().contains("of 3 node(s)")
    });
    let st = fleet_status(dir, &collector, &bundle);
    assert!(st.contains("ring canary: installed 1"), "{st}");
}

/// A release of `product` whose install fails at its first attempt and succeeds at the next:
/// `first` is what the first attempt does (`exit 1`, or `sleep 30` past a 2 s timeout).
fn fails_once(dir: &Path, product: &str, first: &str) -> PathBuf {
    let src = dir.join(format!("{product}-src"));
    fs::create_dir_all(&src).unwrap();
    let install = format!(
        "if [ -f \"$LANPATCH_DATA/tried-{product}\" ]; then touch \"$LANPATCH_DATA/installed-{product}\"; else touch \"$LANPATCH_DATA/tried-{product}\"; {first}; fi\n"
    );
    fs::write(src.join("install.sh"), install).unwrap();
    let args = [
        "release",
        "create",
        "--product",
        product,
        "--version",
        "1",
        "--dir",
        &src.to_string_lossy(),
        "--install",
        "sh install.sh",
        "--rollback",
        "true",
        "--timeout",
        "2s",
        "--out",
        product,
    ];
    signer(dir, &args).ok();
    for k in ["alice.key", "bob.key"] {
        signer(dir, &["release", "sign", "--key", k, product]).ok();
    }
    dir.join(product)
}

fn state_of(n: &Node, product: &str) -> Option<ReleaseState> {
    n.status().releases.into_iter().find(|r| r.product.as_str() == product).map(|r| r.state)
}

#[test]
fn a_timed_out_install_is_retried_inside_the_approvals_rule_and_a_failing_install_command_only_after_approve_replace_whatever_the_clocks_say()
 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let admin = admin(dir, "");
    let n = endpoint(dir, "n1", &admin, "ring = \"canary\"");
    wait_until(Duration::from_secs(30), "mesh", || admin.status().peers.len() == 1);
    let rule = ["--retries", "2", "--retry-spacing", "1s"];

    // The install command fails: not transient, not retried by the rule.
    let broken = fails_once(dir, "broken", "exit 1");
    approve(dir, &broken, "canary", &rule).ok();
    let first = dir.join("broken-first-approval");
    let cp = std::process::Command::new("cp").arg("-a").arg(&broken).arg(&first).status().unwrap();
    assert!(cp.success());
    // The replacement is signed now, before the failure it will answer: as by a signer whose
    // clock is behind the node's. It still counts as newer than the approval the attempt ran under.
    approve(dir, &broken, "canary", &["--replace", "--retries", "2", "--retry-spacing", "1s"]).ok();
    // (Its issue time is at most a second ahead of this clock: let the clock pass it, so the
    // failure comes after it on any reading.)
    let signed_by = crate::fleet::unix_now() + 2;
    wait_until(Duration::from_secs(5), "the clock past the replacement's issue time", || {
        crate::fleet::unix_now() > signed_by
    });
    admin.publish(&first);
    wait_until(Duration::from_secs(60), "the failing install rolls back", || {
        state_of(&n, "broken") == Some(ReleaseState::RolledBack(RollbackCause::InstallFailed))
    });

    // The install times out: transient, retried 1 s later, and installed at the second attempt.
    let flaky = fails_once(dir, "flaky", "sleep 30");
    approve(dir, &flaky, "canary", &rule).ok();
    admin.publish(&flaky);
    wait_until(Duration::from_secs(90), "the timed-out install is retried and installs", || {
        state_of(&n, "flaky") == Some(ReleaseState::Installed)
    });
    assert!(n.dir.join("data/installed-flaky").exists());
    let log = fs::read_to_string(n.dir.join("node.log")).unwrap();
    assert!(log.contains("retry 1 of 2 after: rolled back (install timed out)"), "{}", n.log_tail());
    // Meanwhile the installer looked at the failed one again and again, past its spacing.
    assert_eq!(state_of(&n, "broken"), Some(ReleaseState::RolledBack(RollbackCause::InstallFailed)));
    assert!(!n.dir.join("data/installed-broken").exists());
    wait_until(Duration::from_secs(30), "the collector shows the retried install", || {
        fleet_status(dir, &admin, &flaky).contains("ring canary: installed 1")
    });

    // A newer approval (--replace) tries the failed install again.
    admin.publish(&broken);
    wait_until(Duration::from_secs(60), "the replaced approval installs it", || {
        state_of(&n, "broken") == Some(ReleaseState::Installed)
    });
    assert!(n.dir.join("data/installed-broken").exists());
}

/// The publishing node never installs, so installs never ran its retention: it kept every
/// release it published. Each publish now applies keep_versions to it too.
#[test]
fn the_publishing_node_retires_what_it_published_beyond_keep_versions_once_the_fleet_holds_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let size = 1_000_000u64;
    let admin = admin(dir, "keep_versions = 2");
    let node = endpoint(dir, "c1", &admin, "tags = [\"endpoint\"]\nkeep_versions = 2");
    for v in 1..=4u32 {
        let b =
            release_sized(dir, &format!("v{v}"), v, size as usize, INSTALL_OK, ROLLBACK, &["--target-tag", "endpoint"]);
        approve(dir, &b, "canary", &[]).ok();
        admin.publish(&b);
        wait_until(Duration::from_secs(60), "the endpoint installs it", || {
            node.release_state("tool", u64::from(v)) == Some(ReleaseState::Installed)
        });
    }
    // Versions 3 and 4 stay on the publisher (keep_versions = 2); 1 and 2 are gone, as on the
    // endpoint. Each release is its payload plus two small scripts.
    let blobs = |n: &Node| n.status().disk.blobs;
    wait_until(Duration::from_secs(30), "the endpoint keeps two versions", || blobs(&node) < 3 * size);
    let held = blobs(&admin);
    assert!(
        (2 * size..3 * size).contains(&held),
        "the publisher holds {held} bytes of release files after 4 releases of {size}"
    );
}
