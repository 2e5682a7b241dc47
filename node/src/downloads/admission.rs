//! Whether a release fits on this node: the cache quota (after evicting what retention allows)
//! and the free disk. Decided by the download owner, one release at a time, so two releases
//! admitted together cannot both count on the same room.

use lanpatch_protocol::{FailReason, Hash32, ReleaseManifest};

use crate::shared::Shared;

/// Why a release was not admitted: the typed reason and the human text beside it.
pub struct Refused {
    pub reason: FailReason,
    pub why: String,
}

/// Makes room within the cache quota if it can, then checks quota and free disk.
pub async fn admit(s: &Shared, v: &ReleaseManifest) -> Result<(), Refused> {
    // Everything the node writes counts: release files, staging copies of a release whose
    // commands run, and the database with its WAL.
    let besides = crate::disk::written_besides_releases(&s.cfg.data_dir);
    let need = v.total_bytes().saturating_add(besides);
    let mut used = s.library.used_bytes().saturating_add(besides);
    // A release larger than the whole quota never fits: nothing is evicted for it.
    if used.saturating_add(v.total_bytes()) > s.cfg.cache_quota && need <= s.cfg.cache_quota {
        // Make room first: yanked and superseded releases, oldest first, as retention allows.
        let protect: Vec<Hash32> = v.files.iter().map(|f| f.hash).collect();
        match crate::retention::make_room(s, need, &protect).await {
            Ok(freed) if freed > 0 => {
                tracing::info!(product = %v.product, version = %v.version, freed, "evicted older releases to fit the cache quota");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot evict: {e:#}"),
        }
        used = s.library.used_bytes().saturating_add(besides);
    }
    if used.saturating_add(v.total_bytes()) > s.cfg.cache_quota {
        let why = format!(
            "needs {} bytes, the node holds {used} (release files, staging, state.db) of a {} byte quota",
            v.total_bytes(),
            s.cfg.cache_quota
        );
        return Err(Refused { reason: FailReason::OverQuota, why });
    }
    if let Some(free) = crate::disk::free_disk(&s.cfg.data_dir) {
        // What is already downloaded of it takes no more room.
        let have = s.library.release_bytes_held(&v.files);
        let need = v.total_bytes().saturating_sub(have);
        let reserve = s.cfg.disk_reserve(crate::disk::disk_size(&s.cfg.data_dir));
        if free < need.saturating_add(reserve) {
            let why = format!(
                "needs {need} more bytes, the disk holding the data directory has {free} free and min_free_disk keeps {reserve}"
            );
            return Err(Refused { reason: FailReason::LowDisk, why });
        }
    }
    Ok(())
}
