//! Assess and prioritise: feeds imported from files in their real formats, matched against the
//! inventories real nodes report, in priority order.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fleet::{Node, make_fleet_keys, make_release, wait_until};
use crate::support::{cannot_run, is_root, signer};

pub fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/feeds")
}

pub fn import(dir: &Path, db: &Path, args: &[&str]) -> crate::support::Run {
    let mut a: Vec<String> = vec!["feeds".into(), "import".into(), "--db".into(), db.display().to_string()];
    a.extend(args.iter().map(|s| s.to_string()));
    signer(dir, &a)
}

fn shown(dir: &Path, db: &Path) -> serde_json::Value {
    let out = signer(dir, &["feeds", "show", "--db", &db.display().to_string(), "--json"]);
    serde_json::from_str(&out.ok().stdout).unwrap()
}

#[test]
fn each_broken_feed_file_is_refused_naming_file_and_place_and_nothing_of_the_import_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = dir.join("feeds.db");
    let d = data();
    let good = |name: &str| d.join(name).display().to_string();
    // A good import of all three, from the zip export and the gzip CSV.
    import(dir, &db, &["--osv", &good("osv-debian.zip"), "--epss", &good("epss.csv.gz"), "--kev", &good("kev.json")])
        .ok();
    let before = shown(dir, &db);
    assert_eq!(before.as_array().unwrap().len(), 3, "{before}");
    assert_eq!(before[1]["date"], "2026-11-30T00:00:00+0000");
    assert_eq!(
        fs::metadata(&db).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777).unwrap(),
        0o600
    );

    for (args, names) in [
        (vec!["--osv", "broken/osv-truncated.json"], vec!["osv-truncated.json", "line 10", "EOF"]),
        (
            vec!["--osv", "broken/osv-bad-vector.json"],
            vec!["osv-bad-vector.json", "record DEBIAN-CVE-2024-6387", "does not parse"],
        ),
        (vec!["--epss", "broken/epss-bad-row.csv"], vec!["epss-bad-row.csv", "line 5", "expected 3 fields"]),
        (vec!["--kev", "broken/kev-count.json"], vec!["kev-count.json", "count says 4"]),
        (vec!["--kev", "broken/kev-truncated.json"], vec!["kev-truncated.json", "line 7"]),
        // A good file beside a broken one: neither is imported.
        (vec!["--osv", "osv", "--epss", "broken/epss-bad-row.csv"], vec!["epss-bad-row.csv"]),
    ] {
        let args: Vec<String> =
            args.iter().map(|a| if a.starts_with("--") { a.to_string() } else { good(a) }).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = import(dir, &db, &args);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.all());
        for n in names {
            assert!(r.stderr.contains(n), "{args:?}: the error names {n:?}: {}", r.stderr);
        }
        assert_eq!(shown(dir, &db), before, "{args:?} changed the database");
        let fresh = dir.join("fresh.db");
        assert_eq!(import(dir, &fresh, &args).code, Some(2));
        assert_eq!(shown(dir, &fresh), serde_json::json!([]), "{args:?} left something in a fresh database");
    }
    // The directory form imports the same records as the zip.
    import(dir, &db, &["--osv", &good("osv")]).ok();
    assert_eq!(shown(dir, &db)[0]["rows"], before[0]["rows"]);
}

/// A dpkg status file with these (package, version, source) stanzas.
pub fn dpkg_status(pkgs: &[(&str, &str, Option<&str>)]) -> String {
    pkgs.iter()
        .map(|(p, v, s)| {
            let source = s.map(|s| format!("Source: {s}\n")).unwrap_or_default();
            format!("Package: {p}\nStatus: install ok installed\nArchitecture: amd64\n{source}Version: {v}\n")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A node whose inventory reads `status` as /var/lib/dpkg/status (a private mount namespace).
pub fn node_with_packages(dir: &Path, name: &str, peers: &[u16], extra: &str, status: &str) -> Node {
    let file = dir.join(format!("{name}.dpkg-status"));
    fs::write(&file, status).unwrap();
    let mut n = Node::new(dir, name, &dir.join("root.lpr"), peers, &format!("hostname = \"{name}\"\n{extra}"));
    n.wrapper = Some(vec![
        "unshare".into(),
        "--mount".into(),
        "sh".into(),
        "-c".into(),
        format!("mount --bind {} /var/lib/dpkg/status && exec {{node}} run --config {{config}}", file.display()),
    ]);
    n.start();
    n
}

#[test]
fn vulns_ranks_real_nodes_exposures_known_exploited_first_and_fixed_by_names_the_hosts_a_release_fixes() {
    if !is_root() || !Path::new("/var/lib/dpkg/status").exists() {
        return cannot_run("needs root and a Debian machine (a private mount over /var/lib/dpkg/status)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let db = dir.join("feeds.db");
    let d = data();
    let f = |n: &str| d.join(n).display().to_string();
    import(dir, &db, &["--osv", &f("osv"), "--epss", &f("epss.csv"), "--kev", &f("kev.json")]).ok();
    // feeds show prints dates a person reads (RFC 3339), not epoch seconds.
    let shown = signer(dir, &["feeds", "show", "--db", &db.display().to_string()]);
    let year = format!("(imported at {}-", 1970 + crate::fleet::unix_now() / 31_557_600);
    assert!(shown.ok().stdout.contains(&year), "{}", shown.stdout);

    let admin = node_with_packages(
        dir,
        "admin",
        &[],
        "collector = true\nring = \"admin\"",
        &dpkg_status(&[("base-files", "12.4+deb12u5", None)]),
    );
    // kiosk-1: glibc before the fix of CVE-2023-4911, openssh before regreSSHion's, and a sudo
    // whose only advisory is for Debian 10. kiosk-2: glibc fixed, openssh not.
    let _k1 = node_with_packages(
        dir,
        "kiosk-1",
        &[admin.port],
        "",
        &dpkg_status(&[
            ("libc6", "2.36-9+deb12u1", Some("glibc")),
            ("openssh-server", "1:9.2p1-2+deb12u2", Some("openssh")),
            ("sudo", "1.9.13p3-1+deb12u1", None),
        ]),
    );
    let _k2 = node_with_packages(
        dir,
        "kiosk-2",
        &[admin.port],
        "",
        &dpkg_status(&[
            ("libc6", "2.36-9+deb12u4", Some("glibc")),
            ("openssh-client", "1:9.2p1-2+deb12u2", Some("openssh")),
        ]),
    );
    let sock = admin.socket().display().to_string();
    let vulns = |extra: &[&str]| -> serde_json::Value {
        let mut a: Vec<&str> = vec!["vulns", "--db", db.to_str().unwrap(), "--node", &sock, "--json"];
        a.extend(extra);
        let r = signer(dir, &a);
        serde_json::from_str(&r.ok().stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
    };
    wait_until(Duration::from_secs(60), "three inventories on the collector", || {
        signer(dir, &["inventory", "--node", &sock]).stdout.contains("of 3 node(s)")
    });
    let all = vulns(&[]);
    let rows: Vec<(String, String, Vec<String>)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let hosts = f["hosts"].as_array().unwrap().iter().map(|h| h["hostname"].as_str().unwrap().to_string());
            (f["cve"].as_str().unwrap().into(), f["package"].as_str().unwrap().into(), hosts.collect())
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("CVE-2023-4911".into(), "glibc".into(), vec!["kiosk-1".into()]),
            ("CVE-2024-6387".into(), "openssh".into(), vec!["kiosk-1".into(), "kiosk-2".into()]),
        ],
        "{all:#}"
    );
    // Known exploited (with its due date), EPSS and the CVSS computed from the vector.
    assert_eq!(all[0]["kev"]["due_date"], "2023-12-12");
    assert_eq!(all[0]["cvss"], 7.8);
    assert_eq!(all[1]["kev"], serde_json::Value::Null);
    assert_eq!(all[1]["cvss"], 8.1);
    assert_eq!(all[1]["epss"]["score"], 0.40127);
    assert_eq!(all[1]["hosts"][0]["fixed"], "1:9.2p1-2+deb12u3");

    assert_eq!(vulns(&["--host", "kiosk-2"]).as_array().unwrap().len(), 1);
    assert_eq!(vulns(&["--package", "libc6"])[0]["cve"], "CVE-2023-4911");

    // A release that fixes regreSSHion; its CVSS, EPSS and KEV flag come from the feeds.
    let bundle = make_release(
        dir,
        "openssh-fix",
        1,
        b"fix",
        65536,
        &["--cve", "CVE-2024-6387", "--feeds-db", db.to_str().unwrap()],
    );
    let show = signer(dir, &["release", "show", "--json", bundle.to_str().unwrap()]);
    let m: serde_json::Value = serde_json::from_str(&show.ok().stdout).unwrap();
    assert_eq!(m["severity"]["cvss"], 8.1, "{m:#}");
    assert_eq!(m["severity"]["known_exploited"], false, "{m:#}");
    assert_eq!(m["severity"]["feed_dates"][1]["date"], "2026-11-30T00:00:00+0000", "{m:#}");
    let fixes = vulns(&["--fixed-by", bundle.to_str().unwrap()]);
    assert_eq!(fixes.as_array().unwrap().len(), 1);
    assert_eq!(fixes[0]["hosts"].as_array().unwrap().len(), 2);
    let text =
        signer(dir, &["vulns", "--db", db.to_str().unwrap(), "--node", &sock, "--fixed-by", bundle.to_str().unwrap()]);
    assert!(text.ok().stdout.contains("fixes 1 exposure(s) on 2 host(s): kiosk-1, kiosk-2"), "{}", text.stdout);
    // Not published: no host reports it; both exposed hosts are pending.
    assert!(
        text.stdout.contains("CVE-2024-6387 by release tool 1: fixed 0 [], pending 2 [kiosk-1, kiosk-2], failed 0 []"),
        "{}",
        text.stdout
    );
    let fixes = vulns(&["--fixed-by", bundle.to_str().unwrap()]);
    assert_eq!(fixes[0]["rollout"]["pending"], serde_json::json!(["kiosk-1", "kiosk-2"]), "{fixes:#}");

    // inventory --export writes what an offline workstation's vulns --inventories reads: the
    // same findings as from the collector.
    let exported = signer(dir, &["inventory", "--node", &sock, "--export"]);
    fs::write(dir.join("inventories.json"), &exported.ok().stdout).unwrap();
    let online = signer(dir, &["vulns", "--db", db.to_str().unwrap(), "--node", &sock]);
    let offline = signer(dir, &["vulns", "--db", db.to_str().unwrap(), "--inventories", "inventories.json"]);
    assert_eq!(offline.ok().stdout, online.ok().stdout);
    assert!(online.stdout.contains("CVE-2024-6387"), "{}", online.stdout);
}
