//! Helpers shared by the integration tests: building and locating the binaries, running them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Builds the workspace binaries once per test run and returns the directory holding them.
/// Running cargo from inside `cargo test` is fine: cargo releases its build lock before it runs
/// test binaries.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "lanpatch-signer", "-p", "lanpatch-node", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the binaries");
        assert!(status.success(), "cargo build of the binaries failed");
        // target/debug/deps/it-<hash> -> target/debug
        let exe = std::env::current_exe().expect("test executable path");
        exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
    })
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The result of one command, with its output kept for assertions and failure messages.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "command failed\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `lanpatch-signer` with `args` in `dir`.
pub fn signer<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S]) -> Run {
    Command::new(bin("lanpatch-signer")).args(args).current_dir(dir).output().expect("spawn lanpatch-signer").into()
}

/// A test that cannot run here (not root, a tool missing). Under CI (`CI` set) that is a
/// failure, never a silent pass; elsewhere it says so loudly and the test returns.
pub fn cannot_run(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("this test cannot run here, and CI is set: {why}");
    }
    eprintln!("\n*** SKIPPING (set CI=1 to make this a failure): {why} ***\n");
}

/// Whether this test process runs as root (the owner of `/proc/self` is the effective uid).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
