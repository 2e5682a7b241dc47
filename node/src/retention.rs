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

/// How long a report of a node still fetching a release keeps it on the collector: a node gone
/// for longer (offline mid-download, or lying) no longer pins it.
pub const FETCH_REPORT_FRESH_SECS: u64 = 86_400;

/// The releases (manifest hashes, hex) some node's recent report says it still needs to fetch:
/// known but not started, queued, downloading, or failed for a cause a retry may clear.
/// Reports are (manifest, state, time); `now` in the same seconds. Pure.
pub fn still_fetched<'a>(reports: impl IntoIterator<Item = (&'a str, ReleaseState, u64)>, now: u64) -> HashSet<String> {
    reports
        .into_iter()
        .filter(|(_, _, at)| now.saturating_sub(*at) < FETCH_REPORT_FRESH_SECS)
        .filter(|(_, st, _)| match st {
            ReleaseState::Available | ReleaseState::Queued | ReleaseState::Downloading => true,
            ReleaseState::Failed(f) => f.is_transient(),
            _ => false,
        })
        .map(|(m, _, _)| m.to_string())
        .collect()
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
    let mut order = evictable(&all, s.cfg.keep_versions);
    // A collector (usually the node that publishes) keeps what some node is still fetching:
    // the fleet does not hold it yet, and this node may hold the only copy.
    if s.cfg.collector && !order.is_empty() {
        let reports = crate::fleetview::fleet_reports(s).await?;
        let now = crate::clock::now().0;
        let wanted = still_fetched(reports.iter().map(|r| (r.manifest.as_str(), r.state, r.at)), now);
        order.retain(|m| !wanted.contains(&m.to_hex()));
    }
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

/// A release as [`obsolete_kept`] sees it: what trust knows of it (product, version; `None`
/// once the node no longer trusts it) and its lifecycle state.
pub struct KeptOwner {
    pub manifest: Hash32,
    pub release: Option<(String, u64)>,
    pub state: ReleaseState,
}

/// Which of the kept-package directories (`data_dir/kept/<manifest>`, the packages a Debian
/// release replaced, for its rollback) can go. Kept: those of the newest `keep_versions`
/// installed versions of each product (a yank of the newest puts the one before back, and a
/// yank of that one needs its own kept packages), and of any release whose install, rollback or
/// recovery is not finished (installing, interrupted, rolling back, failed). Gone: those of
/// older installed versions, and of releases the node no longer trusts that ended installed,
/// rolled back or skipped (a yank of them would not verify). Pure.
pub fn obsolete_kept(kept: &[String], owners: &[KeptOwner], keep_versions: usize) -> Vec<String> {
    let mut installed: HashMap<&str, Vec<u64>> = HashMap::new();
    for o in owners.iter().filter(|o| o.state.is_installed()) {
        if let Some((product, version)) = &o.release {
            installed.entry(product).or_default().push(*version);
        }
    }
    for versions in installed.values_mut() {
        versions.sort_unstable_by(|a, b| b.cmp(a));
    }
    let keep_versions = keep_versions.max(1);
    kept.iter()
        .filter(|name| {
            let Ok(hash) = name.parse::<Hash32>() else { return false };
            let Some(o) = owners.iter().find(|o| o.manifest == hash) else { return true };
            let settled =
                matches!(o.state, ReleaseState::Installed | ReleaseState::RolledBack(_) | ReleaseState::Skipped(_));
            match &o.release {
                _ if !settled => false,
                None => true,
                Some((product, version)) => {
                    o.state.is_installed()
                        && installed
                            .get(product.as_str())
                            .is_some_and(|v| v.iter().take(keep_versions).all(|newer| newer != version))
                }
            }
        })
        .cloned()
        .collect()
}

/// The file beside a kept-package directory that says its packages were removed by retention:
/// a rollback of that release then fails, naming why, instead of finding "nothing to undo".
pub fn pruned_marker(kept_dir: &std::path::Path) -> std::path::PathBuf {
    kept_dir.with_extension("pruned")
}

/// Removes the kept-package directories [`obsolete_kept`] names, leaving each a
/// [`pruned_marker`]. Returns the bytes freed.
pub async fn prune_kept(s: &Shared) -> Result<u64> {
    let dir = s.cfg.data_dir.join("kept");
    let keep_versions = s.cfg.keep_versions;
    let owners: Vec<KeptOwner> = {
        let states = s.lifecycle.snapshot();
        let t = s.trust();
        states
            .iter()
            .map(|(hash, e)| KeptOwner {
                manifest: *hash,
                release: t.manifests.get(hash).map(|m| (m.value().product.to_string(), m.value().version.0)),
                state: e.state,
            })
            .collect()
    };
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(d) => d
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        // Markers of releases the node forgot entirely go too.
        if let Ok(d) = std::fs::read_dir(&dir) {
            for e in d.flatten() {
                let name = e.file_name();
                let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".pruned")) else { continue };
                if hex.parse::<Hash32>().is_ok_and(|h| !owners.iter().any(|o| o.manifest == h)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut freed = 0;
        for name in obsolete_kept(&names, &owners, keep_versions) {
            let path = dir.join(&name);
            freed += crate::disk::tree_bytes(&path);
            crate::fsmode::write_private(&pruned_marker(&path), b"removed by retention (keep_versions)\n")?;
            std::fs::remove_dir_all(&path)?;
            tracing::info!(manifest = %name, "removed the packages kept for an older release's rollback");
        }
        Ok(freed)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanpatch_protocol::FailReason;

    #[test]
    fn a_release_some_node_still_needs_is_still_fetched_and_finished_or_stale_ones_are_not() {
        let now = 1_000_000;
        let wanted = still_fetched(
            [
                ("aa", ReleaseState::Downloading, now - 10),
                ("bb", ReleaseState::Installed, now),
                ("cc", ReleaseState::Queued, now),
                ("bb", ReleaseState::Waiting(lanpatch_protocol::WaitReason::NotApproved), now),
                ("dd", ReleaseState::Failed(FailReason::DownloadError), now),
                ("ee", ReleaseState::Failed(FailReason::CommandFailed), now),
                ("ff", ReleaseState::Available, now),
                // Gone for more than a day mid-download: no longer pins the release.
                ("gg", ReleaseState::Downloading, now - FETCH_REPORT_FRESH_SECS),
            ],
            now,
        );
        let want: HashSet<String> = ["aa", "cc", "dd", "ff"].map(String::from).into();
        assert_eq!(wanted, want);
    }

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
    fn kept_packages_stay_for_the_newest_installed_versions_and_unfinished_releases_and_go_otherwise() {
        use lanpatch_protocol::{FailReason, RollbackCause};
        let h = |n: u8| Hash32([n; 32]);
        let owner = |n: u8, release: Option<(&str, u64)>, state| KeptOwner {
            manifest: h(n),
            release: release.map(|(p, v)| (p.to_string(), v)),
            state,
        };
        let owners = vec![
            owner(1, Some(("hello", 1)), ReleaseState::Installed),
            owner(2, Some(("hello", 2)), ReleaseState::Installed),
            owner(3, Some(("hello", 3)), ReleaseState::Installed),
            owner(4, Some(("other", 1)), ReleaseState::Failed(FailReason::RollbackFailed)),
            owner(5, None, ReleaseState::Interrupted),
            owner(6, None, ReleaseState::Installed),
            owner(7, Some(("other", 2)), ReleaseState::RolledBack(RollbackCause::InstallFailed)),
        ];
        let names: Vec<String> = (1..=8).map(|n| h(n).to_hex()).chain(["not-a-hash".to_string()]).collect();
        // keep_versions 2: hello 3 and 2 stay (a yank of 3 puts 2 back; a yank of 2 needs its own).
        assert_eq!(obsolete_kept(&names, &owners, 2), vec![h(1).to_hex(), h(6).to_hex(), h(8).to_hex()]);
        assert_eq!(obsolete_kept(&names, &owners, 3), vec![h(6).to_hex(), h(8).to_hex()]);
        let busy = vec![
            owner(1, Some(("hello", 1)), ReleaseState::Installing),
            owner(2, Some(("hello", 2)), ReleaseState::Installed),
        ];
        assert_eq!(obsolete_kept(&[h(1).to_hex()], &busy, 1), Vec::<String>::new());
    }
}
