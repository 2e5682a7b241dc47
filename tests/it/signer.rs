//! The admin workflow through the real `lanpatch-signer` binary.

use std::fs;
use std::path::Path;

use crate::fleet::make_fleet_keys;
use crate::support::{Run, signer};

/// Three admins, a 2-of-3 trust root for every role, and a release directory.
fn setup(dir: &Path) {
    make_fleet_keys(dir);
    fs::create_dir_all(dir.join("release/bin")).unwrap();
    fs::write(dir.join("release/install.sh"), "#!/bin/sh\necho installing\n").unwrap();
    let payload: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(dir.join("release/bin/tool"), payload).unwrap();
}

fn create_and_sign(dir: &Path) {
    signer(
        dir,
        &[
            "release",
            "create",
            "--product",
            "tool",
            "--version",
            "3",
            "--dir",
            "release",
            "--install",
            "sh install.sh",
            "--rollback",
            "sh -c 'echo undo'",
            "--severity",
            "high",
            "--cve",
            "CVE-2025-0001",
            "--cvss",
            "8.1",
            "--epss",
            "0.42",
            "--out",
            "bundle",
        ],
    )
    .ok();
    signer(dir, &["release", "sign", "--key", "alice.key", "bundle"]).ok();
    signer(dir, &["release", "sign", "--key", "carol.key", "bundle"]).ok();
}

fn verify(dir: &Path, ring: &str) -> Run {
    signer(dir, &["verify", "--root", "root.lpr", "--ring", ring, "bundle"])
}

#[test]
fn two_of_three_admins_sign_and_approve_then_verify_succeeds_and_fails_below_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    create_and_sign(dir);
    signer(dir, &["approve", "--key", "bob.key", "--ring", "canary", "bundle"]).ok();
    signer(dir, &["approve", "--key", "carol.key", "--ring", "canary", "bundle"]).ok();

    let good = verify(dir, "canary");
    good.ok();
    let verdict: Vec<&str> = good.stdout.lines().rev().take(2).collect();
    assert_eq!(
        verdict,
        ["next: lanpatch-signer publish --node <admin node's control.sock> bundle", "valid"],
        "{}",
        good.stdout
    );

    // Drop carol's signature from the manifest: one release signature left, threshold is 2.
    let limits = lanpatch_protocol::Limits::default();
    let path = dir.join("bundle/manifest.lpm");
    let mut m =
        lanpatch_protocol::Signed::<lanpatch_protocol::ReleaseManifest>::decode(&fs::read(&path).unwrap(), &limits)
            .unwrap();
    let carol: lanpatch_protocol::PublicKey =
        fs::read_to_string(dir.join("carol.key.pub")).unwrap().trim().parse().unwrap();
    assert!(m.remove_signature(&carol));
    fs::write(&path, m.to_bytes()).unwrap();

    let bad = verify(dir, "canary");
    assert_eq!(bad.code, Some(1), "{}", bad.all());
    assert!(
        bad.stdout.contains("release threshold not met: 1 valid signature(s) from distinct release keys, 2 required"),
        "{}",
        bad.stdout
    );
}

#[test]
fn verify_names_the_corrupted_chunk_and_the_missing_ring() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    create_and_sign(dir);
    let file = dir.join("bundle/files/bin/tool");
    let mut bytes = fs::read(&file).unwrap();
    bytes[300_000] ^= 0x55; // inside chunk 1 (256 KiB chunks)
    fs::write(&file, bytes).unwrap();
    let out = verify(dir, "broad");
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout.contains("FAIL  file bin/tool: chunk 1 of bin/tool does not match its signed hash"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("FAIL  no valid approval for ring broad"), "{}", out.stdout);
}

#[test]
fn approval_by_one_admin_is_below_the_approve_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    create_and_sign(dir);
    signer(dir, &["approve", "--key", "bob.key", "--ring", "canary", "bundle"]).ok();
    let out = verify(dir, "canary");
    assert_eq!(out.code, Some(1));
    assert!(out.stdout.contains("approve threshold not met"), "{}", out.stdout);
}

#[test]
fn keygen_never_overwrites_and_writes_the_secret_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    signer(dir, &["keygen", "--out", "k"]).ok();
    let before = fs::read(dir.join("k")).unwrap();
    assert_eq!(fs::metadata(dir.join("k")).unwrap().permissions().mode() & 0o777, 0o600);
    let again = signer(dir, &["keygen", "--out", "k"]);
    assert_eq!(again.code, Some(2));
    assert!(again.stderr.contains("refusing to overwrite"), "{}", again.stderr);
    assert_eq!(fs::read(dir.join("k")).unwrap(), before);
}

#[test]
fn root_rotation_needs_old_and_new_root_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    create_and_sign(dir);
    signer(dir, &["keygen", "--out", "dave.key"]).ok();
    signer(
        dir,
        &[
            "root",
            "rotate",
            "--current",
            "root.lpr",
            "--root-key",
            "bob.key.pub",
            "--root-key",
            "carol.key.pub",
            "--root-key",
            "dave.key.pub",
            "--root-threshold",
            "2",
            "--out",
            "root2.lpr",
        ],
    )
    .ok();
    // Only new keys sign (dave + carol): the old threshold (alice, bob, carol: 2) is met only by carol.
    signer(dir, &["root", "sign", "--key", "dave.key", "root2.lpr"]).ok();
    signer(dir, &["root", "sign", "--key", "carol.key", "root2.lpr"]).ok();
    let chain = |d: &Path| signer(d, &["verify", "--root", "root.lpr", "--root", "root2.lpr", "bundle"]);
    let out = chain(dir);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stdout.contains("root threshold not met: 1 valid"), "{}", out.stdout);
    signer(dir, &["root", "sign", "--key", "alice.key", "root2.lpr"]).ok();
    chain(dir).ok();
}

#[test]
fn release_create_refuses_an_invalid_product_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("x"), "x").unwrap();
    let out = signer(
        dir,
        &[
            "release",
            "create",
            "--product",
            "BAD NAME",
            "--version",
            "1",
            "--file",
            "x",
            "--install",
            "true",
            "--out",
            "b",
        ],
    );
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("product name"), "{}", out.stderr);
}

#[test]
fn every_subcommand_has_help() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in [
        &["keygen"][..],
        &["root", "init"],
        &["root", "sign"],
        &["root", "rotate"],
        &["root", "show"],
        &["release", "create"],
        &["release", "sign"],
        &["release", "show"],
        &["approve"],
        &["yank"],
        &["verify"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = signer(tmp.path(), &args);
        out.ok();
        assert!(out.stdout.contains("Usage:"), "{cmd:?}: {}", out.stdout);
    }
}

/// Runs `bin args` with its stdout a pipe whose reader is already gone (`... | head` after
/// `head` exited): the exit code and stderr.
fn with_closed_stdout(bin: &str, dir: &Path, args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(crate::support::bin(bin))
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_closed_stdout_ends_signer_and_node_commands_quietly_with_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let bundle = crate::fleet::release(dir, "rel", 1, &[]);
    let (code, err) =
        with_closed_stdout("lanpatch-signer", dir, &["release".as_ref(), "show".as_ref(), bundle.as_os_str()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let mut n = crate::fleet::Node::new(dir, "n1", &dir.join("root.lpr"), &[], "");
    n.start();
    let sock = n.socket();
    let (code, err) =
        with_closed_stdout("lanpatch-node", dir, &["status".as_ref(), "--socket".as_ref(), sock.as_os_str()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

#[test]
fn mistakes_are_refused_when_made_naming_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let bundle = crate::fleet::release(dir, "rel", 1, &[]);

    // A key outside the release role (the enroll key): its signature would count nowhere.
    let r = signer(dir, &["release", "sign", "--key", "enroll.key", "rel"]);
    assert_eq!(r.code, Some(1), "{}", r.all());
    assert!(
        r.stderr.contains("is not a key of the release role in root.lpr")
            && r.stderr.contains("sign with one of those"),
        "{}",
        r.stderr
    );

    // A public key file where the secret goes: named as such, not as a file-mode problem.
    let r = signer(dir, &["release", "sign", "--key", "alice.key.pub", "rel"]);
    assert_eq!(r.code, Some(2), "{}", r.all());
    assert!(
        r.stderr.contains("alice.key.pub is a public key; --key takes the secret key file (alice.key)"),
        "{}",
        r.stderr
    );

    // An install command running a file the release does not carry.
    let src = dir.join("rel-src");
    assert!(src.join("install.sh").exists());
    let r = signer(
        dir,
        &[
            "release",
            "create",
            "--product",
            "tool",
            "--version",
            "2",
            "--dir",
            &src.to_string_lossy(),
            "--install",
            "sh instal.sh",
            "--out",
            "typo",
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.all());
    assert!(
        r.stderr
            .contains("the install command runs instal.sh, which the release does not carry; did you mean install.sh?"),
        "{}",
        r.stderr
    );
    assert!(!dir.join("typo").exists(), "a bundle was written");

    // A mistyped node.toml key.
    let config = dir.join("node.toml");
    fs::write(&config, "data_dir = \"data\"\ntrust_root = \"root.lpr\"\nrign = \"canary\"\n").unwrap();
    let out = std::process::Command::new(crate::support::bin("lanpatch-node"))
        .args(["id", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown field `rign`") && err.contains("did you mean `ring`?"), "{err}");
    assert!(bundle.exists());
}

/// Runs the signer and requires exit 0.
fn ran<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S]) -> Run {
    let r = signer(dir, args);
    r.ok();
    r
}

/// The command after "next...: " in a signer's output: the first line that starts with `prefix`,
/// with the key placeholder (`<approve key: bob.key or carol.key>`) filled by the admin running it.
fn printed_next(out: &str, prefix: &str, key: &str) -> Vec<String> {
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{out}"));
    let command =
        line.split_once(": lanpatch-signer ").map(|(_, c)| c).unwrap_or_else(|| panic!("no command in {line:?}"));
    let command = command.split(" (").next().unwrap();
    let filled = match (command.find('<'), command.find('>')) {
        (Some(a), Some(b)) => format!("{}{key}{}", &command[..a], &command[b + 1..]),
        _ => command.to_string(),
    };
    filled.split_whitespace().map(String::from).collect()
}

#[test]
fn pending_names_who_signed_how_many_more_and_the_next_admins_exact_command_and_each_signature_prints_its_next_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let created = ran(
        dir,
        &[
            "release",
            "create",
            "--product",
            "tool",
            "--version",
            "3",
            "--dir",
            "release",
            "--install",
            "sh install.sh",
            "--out",
            "tool-3",
        ],
    );
    assert!(
        created.stdout.contains("next: lanpatch-signer release sign --key <release key> tool-3"),
        "{}",
        created.stdout
    );
    let signed = ran(dir, &["release", "sign", "--key", "alice.key", "tool-3"]);
    assert!(
        signed
            .stdout
            .contains("release manifest: signed by alice.key (1 of 2): waiting for 1 more release signature(s)"),
        "{}",
        signed.stdout
    );

    // Pending, from the bundle directory's parent: the manifest waits for Bob or Carol.
    let p = ran(dir, &["pending"]);
    assert!(p.stdout.contains("tool 3 (tool-3, manifest "), "{}", p.stdout);
    assert!(
        p.stdout.contains("next: lanpatch-signer release sign --key <release key: bob.key or carol.key> tool-3"),
        "{}",
        p.stdout
    );
    // Carol runs exactly that; the manifest is complete and the next step is an approval.
    let carol = ran(dir, &printed_next(&p.stdout, "next: ", "carol.key"));
    assert!(carol.stdout.contains("signed by alice.key, carol.key (2 of 2): complete"), "{}", carol.stdout);
    assert!(carol.stdout.contains("next, by an approve key holder: lanpatch-signer approve --key <approve key: alice.key or bob.key or carol.key>"), "{}", carol.stdout);

    // Alice approves canary; her output tells Bob or Carol the co-signing command.
    let alice = ran(dir, &["approve", "--key", "alice.key", "--ring", "canary", "tool-3"]);
    assert!(
        alice.stdout.contains(
            "approval for ring canary: signed by alice.key (1 of 2): waiting for 1 more approve signature(s)"
        ),
        "{}",
        alice.stdout
    );
    let p = ran(dir, &["pending", "tool-3"]);
    assert!(p.stdout.contains("approval for ring canary: signed by alice.key (1 of 2)"), "{}", p.stdout);
    let bob = ran(dir, &printed_next(&alice.stdout, "next, by another approve key holder", "bob.key"));
    assert!(bob.stdout.contains("signed by alice.key, bob.key (2 of 2): complete"), "{}", bob.stdout);
    assert!(
        bob.stdout.contains("next: lanpatch-signer publish --node <admin node's control.sock> tool-3"),
        "{}",
        bob.stdout
    );
    assert!(ran(dir, &["pending"]).stdout.contains("nothing waits for a signature or a publish"));

    // A yank needs two approve signatures as well.
    let y = ran(dir, &["yank", "--key", "carol.key", "--reason", "breaks the till", "tool-3"]);
    assert!(
        y.stdout.contains("yank: signed by carol.key (1 of 2): waiting for 1 more approve signature(s)"),
        "{}",
        y.stdout
    );
    let p = ran(dir, &["pending"]);
    assert!(
        p.stdout.contains("next: lanpatch-signer yank --key <approve key: alice.key or bob.key> tool-3"),
        "{}",
        p.stdout
    );
    let done = ran(dir, &printed_next(&p.stdout, "next: ", "alice.key"));
    assert!(done.stdout.contains("yank: signed by carol.key, alice.key (2 of 2): complete"), "{}", done.stdout);

    // Without a root nothing can be counted: pending says which file it needs.
    fs::rename(dir.join("root.lpr"), dir.join("root-elsewhere.lpr")).unwrap();
    let no_root = signer(dir, &["pending"]);
    assert_eq!(no_root.code, Some(2), "{}", no_root.all());
    assert!(
        no_root.stderr.contains("the trust root root.lpr tells who signs what (give --root)"),
        "{}",
        no_root.stderr
    );
}
