//! Which releases' blobs a node keeps on its disk, and eviction when a download needs room.
//!
//! Per product the node keeps the newest `keep_versions` versions it knows, and always the
//! version installed last (a rollback after a yank needs its files) and anything whose install
//! is still ahead or under way. Everything else is evictable: yanked releases first, then
//! superseded ones, oldest version first. A blob another kept release shares is never removed.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use lanpatch_protocol::{Hash32, ReleaseState};

use crate::shared::Shared;

/// What retention looks at of one release.
#[derive(Clone, Debug)]
pub struct Held {
    pub manifest: Hash32,
    pub product: String,
    pub version: u64,
    pub yanked: bool,
    pub state: ReleaseState,
    /// Its files (hash, size).
    pub files: Vec<(Hash32, u64)>,
}

/// The releases whose blobs may go, in eviction order. Pure.
pub fn evictable(held: &[Held], keep_versions: usize) -> Vec<Hash32> {
    let mut by_product: HashMap<&str, Vec<&Held>> = HashMap::new();
    for h in held {
        by_product.entry(&h.product).or_default().push(h);
    }
    let mut out: Vec<&Held> = Vec::new();
    for list in by_product.values_mut() {
        list.sort_by_key(|h| std::cmp::Reverse(h.version));
        let newest = list.first().map(|h| h.version).unwrap_or(0);
        let installed = list.iter().find(|h| h.state.is_installed()).map(|h| h.version);
        for (i, h) in list.iter().enumerate() {
            let busy =
                matches!(h.state, ReleaseState::Installing | ReleaseState::Interrupted | ReleaseState::RollingBack(_));
            // Still ahead: the newest version, not yet at an outcome (it may install).
            let ahead = h.version == newest && !h.state.is_outcome();
            let keep = busy || ahead || Some(h.version) == installed || (!h.yanked && i < keep_versions);
            if !keep {
                out.push(h);
            }
        }
    }
    out.sort_by(|a, b| b.yanked.cmp(&a.yanked).then(a.version.cmp(&b.version)).then(a.product.cmp(&b.product)));
    out.into_iter().map(|h| h.manifest).collect()
}

/// Every release whose files this node holds, as retention sees it.
fn held(s: &Shared) -> Vec<Held> {
    let states = s.lifecycle.snapshot();
    let t = s.trust();
    t.manifests
        .iter()
        .map(|(hash, m)| {
            let v = m.value();
            Held {
                manifest: *hash,
                product: v.product.to_string(),
                version: v.version.0,
                yanked: t.yanks.contains_key(hash),
                state: states.get(hash).map(|e| e.state).unwrap_or(ReleaseState::Available),
                files: v.files.iter().map(|f| (f.hash, f.size)).collect(),
            }
        })
        .filter(|h| h.files.iter().any(|(f, _)| s.library.file(f).is_some_and(|st| st.complete)))
        .collect()
}

/// Evicts what policy allows, in order, until `need` more bytes fit under `cache_quota`
/// (`need` = 0: evict everything beyond policy). `protect`: files that must stay (the release
/// about to download). Returns the bytes freed.
pub async fn make_room(s: &Shared, need: u64, protect: &[Hash32]) -> Result<u64> {
    let all = held(s);
    let order = evictable(&all, s.cfg.keep_versions);
    let kept: HashSet<Hash32> = all
        .iter()
        .filter(|h| !order.contains(&h.manifest))
        .flat_map(|h| h.files.iter().map(|(f, _)| *f))
        .chain(protect.iter().copied())
        .collect();
    let mut freed = 0;
    for manifest in order {
        if need > 0 && s.library.used_bytes().saturating_add(need) <= s.cfg.cache_quota {
            break;
        }
        let Some(h) = all.iter().find(|h| h.manifest == manifest) else { continue };
        let files: Vec<Hash32> = h.files.iter().map(|(f, _)| *f).filter(|f| !kept.contains(f)).collect();
        let lib = s.library.clone();
        let bytes = tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut n = 0;
            for f in files {
                n += lib.evict(&f)?;
            }
            Ok(n)
        })
        .await??;
        if bytes > 0 {
            tracing::info!(product = %h.product, version = h.version, bytes, yanked = h.yanked, "evicted a release's files");
            s.metrics.evicted(bytes);
        }
        freed += bytes;
    }
    Ok(freed)
}

/// Which of the kept-package directories (`data_dir/kept/<manifest>`, the packages a Debian
/// release replaced, for its rollback) can go: those of releases nothing can roll back any
/// more, because a newer version of the product is installed here (a yank acts only where its
/// version is the one installed) or the node no longer trusts the release (a yank of it would
/// not verify). Pure: `kept` are the directory names, `releases` (manifest, product, version,
/// state) what trust and the lifecycle know.
pub fn obsolete_kept(kept: &[String], releases: &[(Hash32, String, u64, ReleaseState)]) -> Vec<String> {
    let mut installed: HashMap<&str, u64> = HashMap::new();
    for (_, product, version, _) in releases.iter().filter(|r| r.3.is_installed()) {
        let v = installed.entry(product).or_insert(*version);
        *v = (*v).max(*version);
    }
    kept.iter()
        .filter(|name| {
            let Ok(hash) = name.parse::<Hash32>() else { return false };
            match releases.iter().find(|r| r.0 == hash) {
                None => true,
                Some((_, product, version, state)) => {
                    let busy = matches!(state, ReleaseState::Installing | ReleaseState::RollingBack(_));
                    !busy && installed.get(product.as_str()).is_some_and(|newest| newest > version)
                }
            }
        })
        .cloned()
        .collect()
}

/// Removes the kept-package directories [`obsolete_kept`] names. Returns the bytes freed.
pub async fn prune_kept(s: &Shared) -> Result<u64> {
    let dir = s.cfg.data_dir.join("kept");
    let releases: Vec<(Hash32, String, u64, ReleaseState)> = {
        let states = s.lifecycle.snapshot();
        let t = s.trust();
        t.manifests
            .iter()
            .map(|(hash, m)| {
                let v = m.value();
                let state = states.get(hash).map(|e| e.state).unwrap_or(ReleaseState::Available);
                (*hash, v.product.to_string(), v.version.0, state)
            })
            .collect()
    };
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(d) => d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut freed = 0;
        for name in obsolete_kept(&names, &releases) {
            let path = dir.join(&name);
            freed += crate::disk::tree_bytes(&path);
            std::fs::remove_dir_all(&path)?;
            tracing::info!(manifest = %name, "removed the packages kept for a release nothing can roll back");
        }
        Ok(freed)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanpatch_protocol::FailReason;

    fn h(version: u64, state: ReleaseState, yanked: bool) -> Held {
        Held {
            manifest: Hash32([version as u8; 32]),
            product: "tool".into(),
            version,
            yanked,
            state,
            files: vec![(Hash32([100 + version as u8; 32]), 10)],
        }
    }

    #[test]
    fn eviction_keeps_the_installed_release_and_the_newest_and_takes_yanked_then_oldest_first() {
        let held = [
            h(1, ReleaseState::Installed, false),
            h(2, ReleaseState::Skipped(lanpatch_protocol::SkipReason::Yanked), true),
            h(3, ReleaseState::Failed(FailReason::CommandFailed), false),
            h(4, ReleaseState::Installed, false),
            h(5, ReleaseState::Downloaded, false),
        ];
        // keep 1: v5 (newest, ahead) and v4 (installed: the rollback needs it) stay.
        let order = evictable(&held, 1);
        assert_eq!(order, vec![Hash32([2; 32]), Hash32([1; 32]), Hash32([3; 32])]);
        // keep 3 versions: v5, v4 and v3; the yanked v2 goes whatever K is.
        assert_eq!(evictable(&held, 3), vec![Hash32([2; 32]), Hash32([1; 32])]);
        // An install under way is never evicted.
        let busy = [h(1, ReleaseState::Installing, false), h(2, ReleaseState::Downloaded, false)];
        assert!(evictable(&busy, 0).is_empty());
    }

    #[test]
    fn kept_packages_go_once_a_newer_version_is_installed_or_the_release_is_forgotten_and_stay_while_busy() {
        let (a, b, c, gone) = (Hash32([1; 32]), Hash32([2; 32]), Hash32([3; 32]), Hash32([9; 32]));
        let releases = vec![
            (a, "hello".to_string(), 1, ReleaseState::Installed),
            (b, "hello".to_string(), 2, ReleaseState::Installed),
            (c, "other".to_string(), 1, ReleaseState::RolledBack(lanpatch_protocol::RollbackCause::InstallFailed)),
        ];
        let names: Vec<String> = [a, b, c, gone].iter().map(|h| h.to_hex()).chain(["not-a-hash".to_string()]).collect();
        let out = obsolete_kept(&names, &releases);
        assert_eq!(out, vec![a.to_hex(), gone.to_hex()], "superseded and forgotten go; the rest stays");
        let busy = vec![(a, "hello".to_string(), 1, ReleaseState::Installing), releases[1].clone()];
        assert_eq!(obsolete_kept(&[a.to_hex()], &busy), Vec::<String>::new());
    }
}
