//! The README's first command, smaller: the demo must keep working end to end.

use std::process::Command;

use crate::support::bin;

#[test]
fn demo_spreads_a_release_to_every_node_with_verified_content() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin("lanpatch-node"))
        .args(["demo", "--nodes", "3", "--size-mib", "2", "--dir"])
        .arg(tmp.path().join("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("BLAKE3 verified").count(), 3, "{stdout}");
    assert!(stdout.contains("The admin node uploaded"), "{stdout}");
    assert!(!tmp.path().join("demo").exists(), "demo left its directory behind without --keep");
}
