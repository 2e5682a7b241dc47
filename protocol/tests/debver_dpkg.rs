//! `debver` is held to dpkg itself: every comparison must agree with `dpkg --compare-versions`,
//! on random version strings and on the real ones in this machine's dpkg database. dpkg must be
//! installed (it is on every Debian machine, and CI runs on one): without it this test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::cmp::Ordering;
use std::process::Command;

use lanpatch_protocol::debver;
use proptest::prelude::*;

fn dpkg_says(a: &str, b: &str) -> Ordering {
    let holds = |op: &str| {
        let st = Command::new("dpkg")
            .args(["--compare-versions", a, op, b])
            .status()
            .expect("dpkg must be installed for this test (apt-get install dpkg)");
        match st.code() {
            Some(0) => true,
            Some(1) => false,
            other => panic!("dpkg --compare-versions {a:?} {op} {b:?} exited {other:?}"),
        }
    };
    if holds("lt") {
        Ordering::Less
    } else if holds("gt") {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// Versions built from few characters, so that pairs often share prefixes and differ in the
/// places where orderings go wrong (`~`, letters against digits, leading zeros, epochs).
fn version() -> impl Strategy<Value = String> {
    let upstream = "[0-9](0{0,3}|[0-9aZ~.+]{0,6}|[0-9]{18,22})";
    let revision = "[0-9aZ~.+]{1,4}";
    (prop::option::of(0u32..3), upstream, prop::option::of(revision), prop::option::of("[0-9a~]{0,3}")).prop_map(
        |(epoch, up, rev, tail)| {
            let mut v = String::new();
            if let Some(e) = epoch {
                v.push_str(&format!("{e}:"));
            }
            v.push_str(&up);
            if epoch.is_some() && up.ends_with('1') {
                // A colon inside the upstream part, allowed when an epoch comes first.
                v.push_str(":1");
            }
            if let (Some(t), Some(_)) = (&tail, &rev) {
                // A hyphen inside the upstream part, allowed when a revision follows.
                v.push_str(&format!("-{t}"));
            }
            if let Some(r) = rev {
                v.push_str(&format!("-{r}"));
            }
            v
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_versions_order_as_dpkg_orders_them(a in version(), b in version()) {
        let ours = debver::compare(&a, &b);
        prop_assert_eq!(ours, Some(dpkg_says(&a, &b)), "{} vs {}", a, b);
    }
}

#[test]
fn the_versions_in_this_machines_dpkg_database_order_as_dpkg_orders_them() {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}\n"])
        .output()
        .expect("dpkg-query must be installed for this test");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut versions: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    versions.sort();
    versions.dedup();
    assert!(versions.len() >= 50, "only {} installed versions: is this a Debian machine?", versions.len());
    // Each version against its neighbours in byte order (close strings) and one far away.
    let n = versions.len();
    let mut checked = 0;
    for (i, a) in versions.iter().enumerate() {
        for b in [versions[(i + 1) % n], versions[(i + 7) % n], versions[(i * 31 + 3) % n]] {
            let ours = debver::compare(a, b);
            assert_eq!(ours, Some(dpkg_says(a, b)), "{a} vs {b}");
            checked += 1;
        }
    }
    assert!(checked >= 150);
}
