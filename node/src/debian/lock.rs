//! dpkg's frontend lock, held the way apt holds it: the node takes
//! `/var/lib/dpkg/lock-frontend` for the whole install or rollback and runs dpkg with
//! `DPKG_FRONTEND_LOCKED=1`. While another frontend (apt, unattended-upgrades, an admin's dpkg)
//! holds either lock, the node does not start: it waits, with a typed reason.
//!
//! The node takes an open-file-description lock (`F_OFD_SETLK`): it conflicts with the
//! process-wide record locks dpkg and apt take, and, unlike those, it is not dropped when the
//! node closes some other descriptor of the same file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::{FcntlArg, fcntl};

/// dpkg's database directory.
pub const ADMIN_DIR: &str = "/var/lib/dpkg";

/// The frontend lock, held until dropped (closing the file releases an fcntl lock).
#[derive(Debug)]
pub struct FrontendLock {
    _file: File,
}

fn whole_file(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

fn open_lock(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open dpkg's lock {}", path.display()))
}

/// Takes the frontend lock, or `None` when another process holds it or dpkg's own lock.
pub fn try_lock(admin_dir: &Path) -> Result<Option<FrontendLock>> {
    let frontend = open_lock(&admin_dir.join("lock-frontend"))?;
    match fcntl(&frontend, FcntlArg::F_OFD_SETLK(&whole_file(libc::F_WRLCK))) {
        Ok(_) => {}
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => return Ok(None),
        Err(e) => return Err(e).context("cannot take dpkg's frontend lock"),
    }
    // A bare dpkg started without a frontend holds only the database lock.
    let db = open_lock(&admin_dir.join("lock"))?;
    let mut probe = whole_file(libc::F_WRLCK);
    fcntl(&db, FcntlArg::F_OFD_GETLK(&mut probe)).context("cannot test dpkg's database lock")?;
    if probe.l_type != libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    Ok(Some(FrontendLock { _file: frontend }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_process_holding_the_frontend_lock_makes_the_node_wait_until_it_lets_go() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock-frontend");
        // fcntl locks belong to a process: the holder must be another one (python's lockf is fcntl).
        let script = "import fcntl,sys; f=open(sys.argv[1],'a'); fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()";
        let mut holder = Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 holds the lock in this test");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "held");
        assert!(try_lock(dir.path()).unwrap().is_none(), "the lock is held by another process");
        drop(holder.stdin.take());
        holder.wait().unwrap();
        let held = try_lock(dir.path()).unwrap();
        assert!(held.is_some(), "free once the holder exited");
        assert!(try_lock(dir.path()).unwrap().is_none(), "the node's own lock excludes a second taker");
        drop(held);
        assert!(try_lock(dir.path()).unwrap().is_some(), "free once dropped");
    }
}
