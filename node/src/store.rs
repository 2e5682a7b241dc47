//! All persistent node state in one SQLite database (WAL mode), behind one module.
//!
//! Every call runs on tokio's blocking pool with the connection behind a mutex, so the async code
//! never blocks on disk. Every state change is one transaction. The schema is versioned with
//! `PRAGMA user_version`; `MIGRATIONS[i]` moves a database from version i to i + 1.

use lanpatch_protocol::control::RefusalKind;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use lanpatch_protocol::{Hash32, ReleaseState};
use rusqlite::{Connection, OptionalExtension, params};

const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "CREATE TABLE roots (
        version   INTEGER PRIMARY KEY,
        envelope  BLOB NOT NULL,
        received  INTEGER NOT NULL
     );
     CREATE TABLE manifests (
        hash      BLOB PRIMARY KEY,
        product   TEXT NOT NULL,
        version   INTEGER NOT NULL,
        envelope  BLOB NOT NULL,
        received  INTEGER NOT NULL,
        state     TEXT NOT NULL DEFAULT 'available'
     );
     CREATE INDEX manifests_product ON manifests (product, version);
     CREATE TABLE approvals (
        manifest  BLOB NOT NULL,
        ring      TEXT NOT NULL,
        issued    INTEGER NOT NULL,
        envelope  BLOB NOT NULL,
        PRIMARY KEY (manifest, ring)
     );
     CREATE TABLE yanks (
        manifest  BLOB PRIMARY KEY,
        envelope  BLOB NOT NULL
     );
     CREATE TABLE chunks (
        file      BLOB NOT NULL,
        idx       INTEGER NOT NULL,
        PRIMARY KEY (file, idx)
     ) WITHOUT ROWID;
     CREATE TABLE complete_files (
        file      BLOB PRIMARY KEY,
        size      INTEGER NOT NULL
     );
     CREATE TABLE refusals (
        id        INTEGER PRIMARY KEY,
        at        INTEGER NOT NULL,
        source    TEXT NOT NULL,
        kind      TEXT NOT NULL,
        reason    TEXT NOT NULL
     );
     CREATE TABLE transfer (
        peer       TEXT PRIMARY KEY,
        bytes_down INTEGER NOT NULL DEFAULT 0,
        bytes_up   INTEGER NOT NULL DEFAULT 0
     );",
    // 1 -> 2: installs, reports, inventories
    "CREATE TABLE installs (
        manifest  BLOB PRIMARY KEY,
        product   TEXT NOT NULL,
        version   INTEGER NOT NULL,
        state     TEXT NOT NULL,
        detail    TEXT NOT NULL DEFAULT '',
        exit_code INTEGER,
        pid       INTEGER,
        updated   INTEGER NOT NULL
     );
     CREATE TABLE reports_out (
        manifest  BLOB PRIMARY KEY,
        envelope  BLOB NOT NULL
     );
     CREATE TABLE reports (
        node      BLOB NOT NULL,
        manifest  BLOB NOT NULL,
        seq       INTEGER NOT NULL,
        envelope  BLOB NOT NULL,
        PRIMARY KEY (node, manifest)
     );
     CREATE TABLE inventories (
        node      BLOB PRIMARY KEY,
        seq       INTEGER NOT NULL,
        envelope  BLOB NOT NULL
     );",
    // 2 -> 3: the typed release lifecycle (one row per release, state as the serde JSON of
    // lanpatch_protocol::ReleaseState), a persistent report sequence, report ranks on collectors.
    "CREATE TABLE releases (
        manifest  BLOB PRIMARY KEY,
        product   TEXT NOT NULL,
        version   INTEGER NOT NULL,
        state     TEXT NOT NULL,
        detail    TEXT NOT NULL DEFAULT '',
        exit_code INTEGER,
        pid       INTEGER,
        updated   INTEGER NOT NULL
     );
     INSERT INTO releases (manifest, product, version, state, detail, exit_code, pid, updated)
        SELECT manifest, product, version,
               CASE state WHEN 'installed' THEN '\"Installed\"'
                          WHEN 'installing' THEN '\"Installing\"'
                          WHEN 'rolled-back' THEN '{\"RolledBack\":\"InstallFailed\"}'
                          WHEN 'skipped' THEN '\"Installed\"'
                          ELSE '{\"Failed\":\"CommandFailed\"}' END,
               detail, exit_code, pid, updated
        FROM installs;
     DROP TABLE installs;
     ALTER TABLE manifests DROP COLUMN state;
     CREATE TABLE counters (
        name      TEXT PRIMARY KEY,
        value     INTEGER NOT NULL
     );
     ALTER TABLE reports ADD COLUMN rank INTEGER NOT NULL DEFAULT 0;",
    // 3 -> 4: persisted bans; refusal counters per source (the refusal log itself is bounded).
    "CREATE TABLE bans (
        peer      TEXT PRIMARY KEY,
        ip        TEXT,
        until     INTEGER NOT NULL,
        reason    TEXT NOT NULL,
        strikes   INTEGER NOT NULL,
        ip_banned INTEGER NOT NULL DEFAULT 0,
        at        INTEGER NOT NULL
     );
     CREATE TABLE refusal_sources (
        source    TEXT PRIMARY KEY,
        count     INTEGER NOT NULL,
        last      INTEGER NOT NULL
     );
     INSERT INTO refusal_sources (source, count, last)
        SELECT source, count(*), max(at) FROM refusals GROUP BY source;
     CREATE TABLE statement (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        issued    INTEGER NOT NULL,
        envelope  BLOB NOT NULL
     );",
    // 5 -> 6: every node keeps its ring's reports (rollout rules count them), with the ring and
    // when this node received each.
    "ALTER TABLE reports ADD COLUMN ring TEXT NOT NULL DEFAULT '';
     ALTER TABLE reports ADD COLUMN received INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX reports_by_release ON reports (manifest, ring);",
    // 6 -> 7: report anti-entropy (sync.rs): the node's own latest inventory (re-sent when pulled,
    // its sequence number in the digest), and on collectors when each node was last heard from.
    "CREATE TABLE inventory_out (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        seq       INTEGER NOT NULL,
        envelope  BLOB NOT NULL
     );
     CREATE TABLE heard (
        node      BLOB PRIMARY KEY,
        at        INTEGER NOT NULL
     );",
    // -> next: retries; which attempt at a release a node is on (0 the first).
    // A host that already had a release was Skipped(AlreadyInstalled); it is Installed now.
    "ALTER TABLE releases ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
     UPDATE releases SET state = '\"Installed\"' WHERE state = '{\"Skipped\":\"AlreadyInstalled\"}';",
    // -> next: the issue time of the approval a release's latest install attempt ran under: a
    // later one tries a failed release again (`approve --replace`); both times are the signer's.
    "ALTER TABLE releases ADD COLUMN approval_issued INTEGER;",
    // -> next: a collector's webhook notifications (notify.rs): the outbox, delivered oldest
    // first and bounded, and the id of every event ever queued (an event is queued once).
    "CREATE TABLE notify_outbox (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        id        TEXT NOT NULL UNIQUE,
        body      TEXT NOT NULL,
        queued    INTEGER NOT NULL
     );
     CREATE TABLE notify_seen (
        id        TEXT PRIMARY KEY,
        at        INTEGER NOT NULL
     ) WITHOUT ROWID;",
];

/// A notification waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Its place in the outbox (delivered in this order).
    pub seq: i64,
    /// The event's id (the dedupe key the body carries too).
    pub id: String,
    /// The JSON body, as POSTed.
    pub body: String,
}

/// What [`Store::enqueue_notifications`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// Events new to the store, now in the outbox.
    pub queued: usize,
    /// Ids of the oldest entries dropped to keep the outbox within its bound.
    pub dropped: Vec<String>,
    /// Entries in the outbox now.
    pub depth: u64,
}

/// A node's report as [`Store::put_report`] keeps it.
pub struct StoredReport {
    pub node: Vec<u8>,
    pub manifest: Hash32,
    pub seq: u64,
    pub rank: u64,
    pub ring: String,
    pub received: u64,
    pub envelope: Vec<u8>,
}

/// A ban as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub peer: String,
    pub ip: Option<String>,
    pub until: u64,
    pub strikes: u32,
    pub ip_banned: bool,
}

/// A release's state on this node, as persisted.
#[derive(Clone, Debug)]
pub struct ReleaseRecord {
    pub manifest: Hash32,
    /// When its state last changed (seconds since the epoch).
    pub updated: u64,
    pub state: ReleaseState,
    pub detail: String,
    /// Which attempt at the release (0 the first; each retry starts the next).
    pub attempt: u32,
}

/// One lifecycle transition: the new state, and the signed report that announces it. Both are
/// written in one transaction, with the report's sequence number.
pub struct Transition {
    pub manifest: Hash32,
    pub product: String,
    pub version: u64,
    pub state: ReleaseState,
    pub detail: String,
    pub exit_code: Option<i32>,
    pub now: u64,
    pub seq: u64,
    pub report: Vec<u8>,
    pub attempt: u32,
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// Notified when a report, an approval or a yank was stored: what a collector's
    /// notifications are computed from changed (notify.rs looks again).
    news: Arc<tokio::sync::Notify>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        // Created private before SQLite sees it: SQLite gives its -wal and -shm files the
        // database file's mode, and would otherwise use 0644 minus the umask.
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(crate::fsmode::FILE)
                .open(path)
                .with_context(|| format!("cannot create database {}", path.display()))?;
        }
        let mut conn = Connection::open(path).with_context(|| format!("cannot open database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // A small, bounded WAL: it counts against cache_quota, on disks shared with users.
        // Checkpoint every 100 pages (400 KiB) and truncate the file back to 512 KiB after one.
        conn.pragma_update(None, "wal_autocheckpoint", 100)?;
        conn.pragma_update(None, "journal_size_limit", 512 * 1024)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Store { conn: Arc::new(Mutex::new(conn)), news: Arc::new(tokio::sync::Notify::new()) })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| anyhow!("database mutex poisoned"))?;
            f(&mut guard)
        })
        .await
        .context("database task failed")?
    }

    /// Runs `f` on the current thread; for start-up code and code already on the blocking pool.
    fn call_blocking<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut guard = self.conn.lock().map_err(|_| anyhow!("database mutex poisoned"))?;
        f(&mut guard)
    }

    pub async fn put_root(&self, version: u64, envelope: Vec<u8>, now: u64) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO roots (version, envelope, received) VALUES (?1, ?2, ?3)",
                params![version as i64, envelope, now as i64],
            )?;
            Ok(())
        })
        .await
    }

    pub fn roots(&self) -> Result<Vec<Vec<u8>>> {
        self.call_blocking(|c| blobs(c, "SELECT envelope FROM roots ORDER BY version"))
    }

    /// Stores a manifest, or adds nothing if it is already there. Returns whether it was new.
    pub async fn put_manifest(
        &self,
        hash: Hash32,
        product: String,
        version: u64,
        envelope: Vec<u8>,
        now: u64,
    ) -> Result<bool> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO manifests (hash, product, version, envelope, received) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash.0.to_vec(), product, version as i64, envelope, now as i64],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Stored manifest envelopes, lowest version first (so replaying them never looks like a
    /// rollback).
    pub fn manifests(&self) -> Result<Vec<Vec<u8>>> {
        self.call_blocking(|c| blobs(c, "SELECT envelope FROM manifests ORDER BY product, version"))
    }

    /// Keeps the newest freshness statement (by issue time).
    pub async fn put_statement(&self, issued: u64, envelope: Vec<u8>) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO statement (id, issued, envelope) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET issued = ?1, envelope = ?2 WHERE ?1 > statement.issued",
                params![issued as i64, envelope],
            )?;
            Ok(())
        })
        .await
    }

    /// The stored statement, if any. Blocking (start-up).
    pub fn statement(&self) -> Result<Vec<Vec<u8>>> {
        self.call_blocking(|c| blobs(c, "SELECT envelope FROM statement"))
    }

    /// (product, version, hash) of every stored manifest, expired ones included. Blocking.
    pub fn manifest_versions(&self) -> Result<Vec<(String, u64, Hash32)>> {
        self.call_blocking(|c| {
            let mut st = c.prepare("SELECT product, version, hash FROM manifests")?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, Vec<u8>>(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows.into_iter().filter_map(|(p, v, h)| Some((p, v, Hash32(h.try_into().ok()?)))).collect())
        })
    }

    /// Stores an approval unless a newer one (by issue time) for the same manifest and ring is
    /// already there. Returns whether it was stored.
    pub async fn put_approval(&self, manifest: Hash32, ring: String, issued: u64, envelope: Vec<u8>) -> Result<bool> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let existing: Option<(i64, Vec<u8>)> = tx
                .query_row(
                    "SELECT issued, envelope FROM approvals WHERE manifest = ?1 AND ring = ?2",
                    params![manifest.0.to_vec(), ring],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let store = match existing {
                None => true,
                Some((old_issued, old_env)) => {
                    (issued as i64) > old_issued || ((issued as i64) == old_issued && envelope.len() > old_env.len())
                }
            };
            if store {
                tx.execute(
                    "INSERT OR REPLACE INTO approvals (manifest, ring, issued, envelope) VALUES (?1, ?2, ?3, ?4)",
                    params![manifest.0.to_vec(), ring, issued as i64, envelope],
                )?;
            }
            tx.commit()?;
            Ok(store)
        })
        .await
        .inspect(|stored| self.told(*stored))
    }

    /// Notified (one permit) after a report, an approval or a yank was stored.
    pub fn news(&self) -> Arc<tokio::sync::Notify> {
        self.news.clone()
    }

    fn told(&self, stored: bool) {
        if stored {
            self.news.notify_one();
        }
    }

    pub fn approvals(&self) -> Result<Vec<Vec<u8>>> {
        self.call_blocking(|c| blobs(c, "SELECT envelope FROM approvals"))
    }

    pub async fn put_yank(&self, manifest: Hash32, envelope: Vec<u8>) -> Result<bool> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO yanks (manifest, envelope) VALUES (?1, ?2)",
                params![manifest.0.to_vec(), envelope],
            )?;
            Ok(n == 1)
        })
        .await
        .inspect(|stored| self.told(*stored))
    }

    pub fn yanks(&self) -> Result<Vec<Vec<u8>>> {
        self.call_blocking(|c| blobs(c, "SELECT envelope FROM yanks"))
    }

    /// Records a verified chunk of a partial file (its data is already written). Blocking.
    pub fn add_chunk(&self, file: Hash32, idx: u32) -> Result<()> {
        self.call_blocking(|c| {
            c.prepare_cached("INSERT OR IGNORE INTO chunks (file, idx) VALUES (?1, ?2)")?
                .execute(params![file.0.to_vec(), idx])?;
            Ok(())
        })
    }

    /// Forgets every chunk of a partial file. Blocking.
    pub fn reset_file(&self, file: Hash32) -> Result<()> {
        self.call_blocking(|c| {
            c.execute("DELETE FROM chunks WHERE file = ?1", params![file.0.to_vec()])?;
            Ok(())
        })
    }

    /// Verified chunk indices of a partial file.
    pub fn chunks(&self, file: Hash32) -> Result<Vec<u32>> {
        self.call_blocking(|c| {
            let mut st = c.prepare("SELECT idx FROM chunks WHERE file = ?1")?;
            let rows = st
                .query_map(params![file.0.to_vec()], |r| r.get::<_, u32>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Forgets chunks that failed re-verification at start-up.
    pub fn remove_chunks(&self, file: Hash32, indices: &[u32]) -> Result<()> {
        self.call_blocking(|c| {
            let tx = c.transaction()?;
            for i in indices {
                tx.execute("DELETE FROM chunks WHERE file = ?1 AND idx = ?2", params![file.0.to_vec(), i])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Forgets a complete file whose blob was evicted. Blocking.
    pub fn forget_file(&self, file: Hash32) -> Result<()> {
        self.call_blocking(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM complete_files WHERE file = ?1", params![file.0.to_vec()])?;
            tx.execute("DELETE FROM chunks WHERE file = ?1", params![file.0.to_vec()])?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Marks a file complete (its blob is in place) and drops its chunk map. Blocking.
    pub fn complete_file(&self, file: Hash32, size: u64) -> Result<()> {
        self.call_blocking(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO complete_files (file, size) VALUES (?1, ?2)",
                params![file.0.to_vec(), size as i64],
            )?;
            tx.execute("DELETE FROM chunks WHERE file = ?1", params![file.0.to_vec()])?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn is_complete(&self, file: Hash32) -> Result<bool> {
        self.call_blocking(|c| {
            Ok(c.query_row("SELECT 1 FROM complete_files WHERE file = ?1", params![file.0.to_vec()], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }

    /// Records a refusal: its details in a log that keeps the last `keep` rows, and a counter per
    /// source that keeps the total. One transaction; the database does not grow with a flood.
    pub async fn add_refusal(
        &self,
        now: u64,
        source: String,
        kind: RefusalKind,
        reason: String,
        keep: u32,
    ) -> Result<()> {
        let kind = kind.as_str();
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO refusals (at, source, kind, reason) VALUES (?1, ?2, ?3, ?4)",
                params![now as i64, source, kind, reason],
            )?;
            tx.execute("DELETE FROM refusals WHERE id <= (SELECT max(id) FROM refusals) - ?1", params![keep])?;
            tx.execute(
                "INSERT INTO refusal_sources (source, count, last) VALUES (?1, 1, ?2)
                 ON CONFLICT (source) DO UPDATE SET count = count + 1, last = ?2",
                params![source, now as i64],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Records a ban (or a new strike of an earlier one); returns the number of strikes.
    pub async fn put_ban(
        &self,
        peer: String,
        ip: Option<String>,
        now: u64,
        base_secs: u64,
        reason: String,
    ) -> Result<Ban> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let strikes: u32 = tx
                .query_row("SELECT strikes FROM bans WHERE peer = ?1", params![peer], |r| r.get(0))
                .optional()?
                .unwrap_or(0)
                + 1;
            // 1, 4, 16 ... times the base, at most a week.
            let secs = base_secs.saturating_mul(4u64.saturating_pow(strikes.saturating_sub(1))).min(7 * 86_400);
            let until = now.saturating_add(secs);
            tx.execute(
                "INSERT INTO bans (peer, ip, until, reason, strikes, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (peer) DO UPDATE SET ip = ?2, until = ?3, reason = ?4, strikes = ?5, at = ?6",
                params![peer, ip, until as i64, reason, strikes, now as i64],
            )?;
            tx.commit()?;
            Ok(Ban { peer, ip, until, strikes, ip_banned: false })
        })
        .await
    }

    /// How many distinct peers from `ip` were banned since `since`.
    pub async fn bans_from_ip(&self, ip: String, since: u64) -> Result<u32> {
        self.call(move |c| {
            Ok(c.query_row("SELECT count(*) FROM bans WHERE ip = ?1 AND at >= ?2", params![ip, since as i64], |r| {
                r.get::<_, u32>(0)
            })?)
        })
        .await
    }

    pub async fn set_ip_banned(&self, peer: String) -> Result<()> {
        self.call(move |c| {
            c.execute("UPDATE bans SET ip_banned = 1 WHERE peer = ?1", params![peer])?;
            Ok(())
        })
        .await
    }

    /// Bans still in force at `now`.
    pub async fn active_bans(&self, now: u64) -> Result<Vec<Ban>> {
        self.call(move |c| {
            let mut st = c.prepare("SELECT peer, ip, until, strikes, ip_banned FROM bans WHERE until > ?1")?;
            let rows = st
                .query_map(params![now as i64], |r| {
                    Ok(Ban {
                        peer: r.get(0)?,
                        ip: r.get(1)?,
                        until: r.get::<_, i64>(2)? as u64,
                        strikes: r.get(3)?,
                        ip_banned: r.get::<_, i64>(4)? != 0,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// The most recent refusals, newest first.
    /// The newest refusals; a row whose kind this version does not know is left out.
    pub async fn refusals(&self, limit: u32) -> Result<Vec<(u64, String, RefusalKind, String)>> {
        self.call(move |c| {
            let mut st = c.prepare("SELECT at, source, kind, reason FROM refusals ORDER BY id DESC LIMIT ?1")?;
            let rows = st
                .query_map(params![limit], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get(3)?))
                })?
                .collect::<rusqlite::Result<Vec<(u64, String, String, String)>>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(at, source, kind, reason)| {
                    let kind = serde_json::from_value(serde_json::Value::String(kind)).ok()?;
                    Some((at, source, kind, reason))
                })
                .collect())
        })
        .await
    }

    pub async fn add_transfer(&self, peer: String, down: u64, up: u64) -> Result<()> {
        self.call(move |c| {
            // Once per chunk sent or received: the statement is parsed once, not every time.
            c.prepare_cached(
                "INSERT INTO transfer (peer, bytes_down, bytes_up) VALUES (?1, ?2, ?3)
                 ON CONFLICT (peer) DO UPDATE SET bytes_down = bytes_down + ?2, bytes_up = bytes_up + ?3",
            )?
            .execute(params![peer, down as i64, up as i64])?;
            Ok(())
        })
        .await
    }

    /// Counts `bytes` of `file` sent to `peer`: the peer's transfer total and the file's
    /// served total (a counter `served:<file hex>`: the console's seed upload per release), in
    /// one transaction.
    pub async fn add_upload(&self, peer: String, file: Hash32, bytes: u64) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.prepare_cached(
                "INSERT INTO transfer (peer, bytes_down, bytes_up) VALUES (?1, 0, ?2)
                 ON CONFLICT (peer) DO UPDATE SET bytes_up = bytes_up + ?2",
            )?
            .execute(params![peer, bytes as i64])?;
            tx.prepare_cached(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = value + ?2",
            )?
            .execute(params![format!("served:{}", file.to_hex()), bytes as i64])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Bytes this node served of each file, over its lifetime (see [`Store::add_upload`]).
    pub async fn served_files(&self) -> Result<std::collections::HashMap<Hash32, u64>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT name, value FROM counters WHERE name LIKE 'served:%'")?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(name, v)| Some((name.strip_prefix("served:")?.parse::<Hash32>().ok()?, v.max(0) as u64)))
                .collect())
        })
        .await
    }

    pub async fn transfers(&self) -> Result<Vec<(String, u64, u64)>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT peer, bytes_down, bytes_up FROM transfer ORDER BY peer")?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }
}

impl Store {
    /// Persists a lifecycle transition and the report that announces it, in one transaction.
    pub async fn commit_transition(&self, t: Transition) -> Result<()> {
        let state = serde_json::to_string(&t.state)?;
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO releases (manifest, product, version, state, detail, exit_code, updated, attempt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (manifest) DO UPDATE SET state = ?4, detail = ?5, exit_code = ?6, updated = ?7,
                     attempt = ?8",
                params![
                    t.manifest.0.to_vec(),
                    t.product,
                    t.version as i64,
                    state,
                    t.detail,
                    t.exit_code,
                    t.now as i64,
                    i64::from(t.attempt)
                ],
            )?;
            put_seq(&tx, t.seq)?;
            tx.execute(
                "INSERT OR REPLACE INTO reports_out (manifest, envelope) VALUES (?1, ?2)",
                params![t.manifest.0.to_vec(), t.report],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Deletes the stored reports (other nodes', on a non-collector: its ring's) received before
    /// `before` and this node's own latest reports updated before it, of every release not in
    /// `keep` (the releases still trusted). Returns the rows deleted.
    pub async fn prune_reports(&self, before: u64, keep: Vec<Hash32>, own_only: bool) -> Result<usize> {
        self.call(move |c| {
            let keep: std::collections::HashSet<Vec<u8>> = keep.iter().map(|h| h.0.to_vec()).collect();
            let tx = c.transaction()?;
            let old = |sql: &str| -> Result<Vec<Vec<u8>>> {
                let mut st = tx.prepare(sql)?;
                let rows = st.query_map(params![before as i64], |r| r.get(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows.into_iter().filter(|m: &Vec<u8>| !keep.contains(m)).collect())
            };
            let theirs =
                if own_only { Vec::new() } else { old("SELECT DISTINCT manifest FROM reports WHERE received < ?1")? };
            let mine = old(
                "SELECT r.manifest FROM reports_out r JOIN releases l ON l.manifest = r.manifest WHERE l.updated < ?1",
            )?;
            let mut n = 0;
            for m in &theirs {
                n +=
                    tx.execute("DELETE FROM reports WHERE manifest = ?1 AND received < ?2", params![m, before as i64])?;
            }
            for m in &mine {
                n += tx.execute("DELETE FROM reports_out WHERE manifest = ?1", params![m])?;
            }
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    /// This node's latest report about `manifest`, as sent.
    pub async fn report_out(&self, manifest: Hash32) -> Result<Option<Vec<u8>>> {
        self.call(move |c| {
            Ok(c.query_row("SELECT envelope FROM reports_out WHERE manifest = ?1", params![manifest.0.to_vec()], |r| {
                r.get(0)
            })
            .optional()?)
        })
        .await
    }

    /// Replaces this node's latest report about `manifest` with the same report under a new
    /// sequence number (sync.rs answers a pull with it), with the sequence, in one transaction.
    pub async fn restamp_report_out(&self, manifest: Hash32, seq: u64, envelope: Vec<u8>) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            put_seq(&tx, seq)?;
            tx.execute(
                "UPDATE reports_out SET envelope = ?2 WHERE manifest = ?1",
                params![manifest.0.to_vec(), envelope],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Records the issue time of the approval under which an install attempt at `manifest`
    /// starts.
    pub async fn set_attempt_approval(&self, manifest: Hash32, issued: u64) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE releases SET approval_issued = ?2 WHERE manifest = ?1",
                params![manifest.0.to_vec(), i64::try_from(issued).unwrap_or(i64::MAX)],
            )?;
            Ok(())
        })
        .await
    }

    /// The issue time of the approval the latest install attempt at `manifest` started under,
    /// if one did.
    pub async fn attempt_approval(&self, manifest: Hash32) -> Result<Option<u64>> {
        self.call(move |c| {
            let v: Option<Option<i64>> = c
                .query_row(
                    "SELECT approval_issued FROM releases WHERE manifest = ?1",
                    params![manifest.0.to_vec()],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(v.flatten().map(|t| t.max(0) as u64))
        })
        .await
    }

    /// Every release's persisted state. Blocking (start-up).
    pub fn releases(&self) -> Result<Vec<ReleaseRecord>> {
        self.call_blocking(|c| {
            let mut st = c.prepare("SELECT manifest, state, detail, updated, attempt FROM releases")?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for (m, state, detail, updated, attempt) in rows {
                let manifest = Hash32(m.try_into().map_err(|_| anyhow!("releases: a manifest hash is not 32 bytes"))?);
                let state: ReleaseState = serde_json::from_str(&state)
                    .with_context(|| format!("releases: unreadable state {state:?} of {}", manifest.short()))?;
                let attempt = u32::try_from(attempt).unwrap_or(0);
                out.push(ReleaseRecord { manifest, updated: updated.max(0) as u64, state, detail, attempt });
            }
            Ok(out)
        })
    }

    /// The highest report / inventory sequence number this node has used. Blocking (start-up).
    pub fn last_seq(&self) -> Result<u64> {
        self.call_blocking(|c| {
            Ok(c.query_row("SELECT value FROM counters WHERE name = 'seq'", [], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0) as u64)
        })
    }

    /// Records a sequence number used outside a transition (an inventory).
    pub async fn use_seq(&self, seq: u64) -> Result<()> {
        self.call(move |c| put_seq(c, seq)).await
    }

    /// Refusals recorded since the database was created.
    pub async fn refusal_count(&self) -> Result<u64> {
        self.call(|c| {
            Ok(c.query_row("SELECT coalesce(sum(count), 0) FROM refusal_sources", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }

    /// Remembers the process group of a running install, so a restart can stop a leftover one.
    pub async fn set_install_pid(&self, manifest: Hash32, pid: Option<u32>) -> Result<()> {
        self.call(move |c| {
            c.execute("UPDATE releases SET pid = ?2 WHERE manifest = ?1", params![manifest.0.to_vec(), pid])?;
            Ok(())
        })
        .await
    }

    pub async fn install_pid(&self, manifest: Hash32) -> Result<Option<u32>> {
        self.call(move |c| {
            Ok(c.query_row("SELECT pid FROM releases WHERE manifest = ?1", params![manifest.0.to_vec()], |r| {
                r.get::<_, Option<u32>>(0)
            })
            .optional()?
            .flatten())
        })
        .await
    }

    pub async fn reports_out(&self) -> Result<Vec<Vec<u8>>> {
        self.call(|c| blobs(c, "SELECT envelope FROM reports_out")).await
    }

    /// Stores a node's report unless one with a higher sequence number, or a later state (by
    /// `ReleaseState::rank`), is there for the same (node, release). A terminal outcome the node
    /// has seen is never replaced by an earlier state. `received` is this node's clock.
    pub async fn put_report(&self, r: StoredReport) -> Result<bool> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO reports (node, manifest, seq, envelope, rank, ring, received)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (node, manifest) DO UPDATE SET seq = ?3, envelope = ?4, rank = ?5, ring = ?6,
                     received = ?7
                 WHERE ?3 > reports.seq AND ?5 >= reports.rank",
                params![
                    r.node,
                    r.manifest.0.to_vec(),
                    r.seq as i64,
                    r.envelope,
                    r.rank as i64,
                    r.ring,
                    r.received as i64
                ],
            )?;
            Ok(n == 1)
        })
        .await
        .inspect(|stored| self.told(*stored))
    }

    /// The stored reports about one release from nodes of one ring, with when each arrived.
    pub async fn ring_reports(&self, manifest: Hash32, ring: String) -> Result<Vec<(Vec<u8>, u64)>> {
        self.call(move |c| {
            let mut st = c.prepare("SELECT envelope, received FROM reports WHERE manifest = ?1 AND ring = ?2")?;
            let rows = st
                .query_map(params![manifest.0.to_vec(), ring], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn reports(&self) -> Result<Vec<Vec<u8>>> {
        self.call(|c| blobs(c, "SELECT envelope FROM reports")).await
    }

    /// Collector: stores a node's inventory unless a newer one is there.
    pub async fn put_inventory(&self, node: Vec<u8>, seq: u64, envelope: Vec<u8>) -> Result<bool> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO inventories (node, seq, envelope) VALUES (?1, ?2, ?3)
                 ON CONFLICT (node) DO UPDATE SET seq = ?2, envelope = ?3 WHERE ?2 > inventories.seq",
                params![node, seq as i64, envelope],
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn inventories(&self) -> Result<Vec<Vec<u8>>> {
        self.call(|c| blobs(c, "SELECT envelope FROM inventories")).await
    }

    /// The sequence number of the stored report of each release from `node`.
    pub async fn report_seqs(&self, node: Vec<u8>) -> Result<Vec<(Hash32, u64)>> {
        self.call(move |c| {
            let mut st = c.prepare_cached("SELECT manifest, seq FROM reports WHERE node = ?1")?;
            let rows = st
                .query_map(params![node], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows.into_iter().filter_map(|(m, seq)| Some((Hash32(m.try_into().ok()?), seq))).collect())
        })
        .await
    }

    /// Collector: the sequence number of the stored inventory of `node`.
    pub async fn inventory_seq(&self, node: Vec<u8>) -> Result<Option<u64>> {
        self.call(move |c| {
            Ok(c.query_row("SELECT seq FROM inventories WHERE node = ?1", params![node], |r| r.get::<_, i64>(0))
                .optional()?
                .map(|s| s as u64))
        })
        .await
    }

    /// This node's latest inventory, as sent (re-sent when a collector pulls it).
    pub async fn put_inventory_out(&self, seq: u64, envelope: Vec<u8>) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO inventory_out (id, seq, envelope) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET seq = ?1, envelope = ?2 WHERE ?1 > inventory_out.seq",
                params![seq as i64, envelope],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn inventory_out(&self) -> Result<Option<(u64, Vec<u8>)>> {
        self.call(|c| {
            Ok(c.query_row("SELECT seq, envelope FROM inventory_out WHERE id = 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?)
        })
        .await
    }

    /// Collector: `node` was heard from (a digest) at `at`.
    pub async fn heard(&self, node: Vec<u8>, at: u64) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO heard (node, at) VALUES (?1, ?2)
                 ON CONFLICT (node) DO UPDATE SET at = max(at, ?2)",
                params![node, at as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// Collector: when each node was last heard from by a digest.
    pub async fn heard_all(&self) -> Result<Vec<(Vec<u8>, u64)>> {
        self.call(|c| {
            let mut st = c.prepare_cached("SELECT node, at FROM heard")?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }
}

impl Store {
    /// The id of every notification event ever queued.
    pub async fn notification_ids(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT id FROM notify_seen")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Queues each (id, body) whose id was never queued before, in order, in one transaction;
    /// then drops the oldest entries beyond `max` (at least one is kept).
    pub async fn enqueue_notifications(&self, events: Vec<(String, String)>, now: u64, max: u64) -> Result<Enqueued> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let mut out = Enqueued::default();
            for (id, body) in events {
                let new =
                    tx.execute("INSERT OR IGNORE INTO notify_seen (id, at) VALUES (?1, ?2)", params![id, now as i64])?;
                if new == 1 {
                    tx.execute(
                        "INSERT INTO notify_outbox (id, body, queued) VALUES (?1, ?2, ?3)",
                        params![id, body, now as i64],
                    )?;
                    out.queued += 1;
                }
            }
            let depth: i64 = tx.query_row("SELECT count(*) FROM notify_outbox", [], |r| r.get(0))?;
            let over = (depth as u64).saturating_sub(max.max(1));
            if over > 0 {
                let mut st = tx.prepare("SELECT seq, id FROM notify_outbox ORDER BY seq LIMIT ?1")?;
                let oldest = st
                    .query_map(params![over as i64], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                drop(st);
                for (seq, id) in oldest {
                    tx.execute("DELETE FROM notify_outbox WHERE seq = ?1", params![seq])?;
                    out.dropped.push(id);
                }
            }
            out.depth = (depth as u64).saturating_sub(out.dropped.len() as u64);
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Records ids as queued without queueing them (events true before notifications were on).
    pub async fn mark_notifications_seen(&self, ids: Vec<String>, now: u64) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            for id in ids {
                tx.execute("INSERT OR IGNORE INTO notify_seen (id, at) VALUES (?1, ?2)", params![id, now as i64])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The oldest notification in the outbox.
    pub async fn next_notification(&self) -> Result<Option<Outgoing>> {
        self.call(|c| {
            Ok(c.query_row("SELECT seq, id, body FROM notify_outbox ORDER BY seq LIMIT 1", [], |r| {
                Ok(Outgoing { seq: r.get(0)?, id: r.get(1)?, body: r.get(2)? })
            })
            .optional()?)
        })
        .await
    }

    /// Removes a delivered notification; returns the entries left.
    pub async fn delivered_notification(&self, seq: i64) -> Result<u64> {
        self.call(move |c| {
            c.execute("DELETE FROM notify_outbox WHERE seq = ?1", params![seq])?;
            let depth: i64 = c.query_row("SELECT count(*) FROM notify_outbox", [], |r| r.get(0))?;
            Ok(depth as u64)
        })
        .await
    }

    /// Entries in the outbox.
    pub async fn notification_depth(&self) -> Result<u64> {
        self.call(|c| Ok(c.query_row("SELECT count(*) FROM notify_outbox", [], |r| r.get::<_, i64>(0))? as u64)).await
    }
}

fn put_seq(c: &Connection, seq: u64) -> Result<()> {
    c.execute(
        "INSERT INTO counters (name, value) VALUES ('seq', ?1)
         ON CONFLICT (name) DO UPDATE SET value = max(value, ?1)",
        params![seq as i64],
    )?;
    Ok(())
}

/// The single BLOB column of every row `sql` selects (stored envelopes).
fn blobs(c: &mut Connection, sql: &'static str) -> Result<Vec<Vec<u8>>> {
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version as usize > MIGRATIONS.len() {
        anyhow::bail!(
            "database schema version {version} is newer than this lanpatch-node understands ({})",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql).with_context(|| format!("schema migration {i} -> {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunk_map_survives_reopen_and_is_dropped_on_completion() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let file = Hash32([3; 32]);
        {
            let s = Store::open(&path).unwrap();
            for i in [0, 2, 5] {
                s.add_chunk(file, i).unwrap();
            }
        }
        let s = Store::open(&path).unwrap();
        let mut got = s.chunks(file).unwrap();
        got.sort();
        assert_eq!(got, vec![0, 2, 5]);
        s.complete_file(file, 10).unwrap();
        assert!(s.chunks(file).unwrap().is_empty());
        assert!(s.is_complete(file).unwrap());
    }

    #[tokio::test]
    async fn collector_never_replaces_a_later_state_with_an_earlier_one_even_with_a_higher_seq() {
        use lanpatch_protocol::{FailReason, ReleaseState};
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let m = Hash32([2; 32]);
        let failed = u64::from(ReleaseState::Failed(FailReason::CommandFailed).rank());
        let r = |seq: u64, rank: u64, envelope: u8| StoredReport {
            node: vec![1],
            manifest: m,
            seq,
            rank,
            ring: "canary".into(),
            received: seq,
            envelope: vec![envelope],
        };
        assert!(s.put_report(r(10, failed, 1)).await.unwrap());
        // A replayed or regressed report: newer sequence number, earlier state.
        assert!(!s.put_report(r(11, u64::from(ReleaseState::Available.rank()), 2)).await.unwrap());
        // An older sequence number never wins either.
        assert!(!s.put_report(r(9, failed, 3)).await.unwrap());
        assert_eq!(s.reports().await.unwrap(), vec![vec![1]]);
        assert_eq!(s.ring_reports(m, "canary".into()).await.unwrap(), vec![(vec![1], 10)]);
        assert!(s.ring_reports(m, "broad".into()).await.unwrap().is_empty());
        // A retry's report (the next attempt) replaces a failure, even at an earlier state.
        let retried = 16 + u64::from(ReleaseState::Available.rank());
        assert!(s.put_report(r(12, retried, 4)).await.unwrap());
        assert_eq!(s.reports().await.unwrap(), vec![vec![4]]);
    }

    #[tokio::test]
    async fn pruning_deletes_old_reports_of_retired_releases_only_and_a_collector_keeps_the_fleets() {
        use lanpatch_protocol::ReleaseState;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let (retired, trusted) = (Hash32([1; 32]), Hash32([2; 32]));
        let r = |node: u8, manifest: Hash32, received: u64| StoredReport {
            node: vec![node],
            manifest,
            seq: received,
            rank: 0,
            ring: "broad".into(),
            received,
            envelope: vec![node, manifest.0[0]],
        };
        for (node, m, at) in [(1, retired, 100), (2, retired, 5_000), (1, trusted, 100)] {
            assert!(s.put_report(r(node, m, at)).await.unwrap());
        }
        for (m, at) in [(retired, 100), (trusted, 100)] {
            s.commit_transition(Transition {
                manifest: m,
                product: "tool".into(),
                version: u64::from(m.0[0]),
                state: ReleaseState::Installed,
                detail: String::new(),
                exit_code: None,
                now: at,
                seq: at,
                report: vec![m.0[0]],
                attempt: 0,
            })
            .await
            .unwrap();
        }
        // A collector prunes only its own latest report of the retired release.
        assert_eq!(s.prune_reports(1_000, vec![trusted], true).await.unwrap(), 1);
        assert_eq!(s.reports().await.unwrap().len(), 3);
        assert_eq!(s.reports_out().await.unwrap(), vec![vec![2]]);
        // Another node: the retired release's report received before the cutoff goes; the
        // recent one and the trusted release's stay.
        assert_eq!(s.prune_reports(1_000, vec![trusted], false).await.unwrap(), 1);
        let mut left = s.reports().await.unwrap();
        left.sort();
        assert_eq!(left, vec![vec![1, 2], vec![2, 1]]);
    }

    #[tokio::test]
    async fn a_transition_persists_state_report_and_sequence_together() {
        use lanpatch_protocol::{ReleaseState, RollbackCause};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let m = Hash32([5; 32]);
        {
            let s = Store::open(&path).unwrap();
            s.commit_transition(Transition {
                manifest: m,
                product: "tool".into(),
                version: 3,
                state: ReleaseState::RolledBack(RollbackCause::Yanked),
                detail: "yanked: broken".into(),
                exit_code: None,
                now: 1,
                seq: 42,
                report: vec![9],
                attempt: 2,
            })
            .await
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let r = s.releases().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].state, ReleaseState::RolledBack(RollbackCause::Yanked));
        assert_eq!(r[0].detail, "yanked: broken");
        assert_eq!(r[0].attempt, 2, "the attempt survives a restart");
        assert_eq!(s.last_seq().unwrap(), 42);
        assert_eq!(s.reports_out().await.unwrap(), vec![vec![9]]);
    }

    #[test]
    fn a_release_recorded_as_skipped_already_installed_opens_as_installed_at_attempt_zero() {
        use lanpatch_protocol::ReleaseState;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut c = Connection::open(&path).unwrap();
            let before = MIGRATIONS.iter().position(|m| m.contains("ADD COLUMN attempt")).unwrap();
            for (i, sql) in MIGRATIONS.iter().take(before).enumerate() {
                let tx = c.transaction().unwrap();
                tx.execute_batch(sql).unwrap();
                tx.pragma_update(None, "user_version", (i + 1) as u32).unwrap();
                tx.commit().unwrap();
            }
            c.execute(
                "INSERT INTO releases (manifest, product, version, state, detail, updated)
                 VALUES (?1, 'tool', 1, '{\"Skipped\":\"AlreadyInstalled\"}', 'already installed', 5)",
                params![vec![7u8; 32]],
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let r = s.releases().unwrap();
        assert_eq!((r[0].state, r[0].attempt), (ReleaseState::Installed, 0));
    }

    #[tokio::test]
    async fn uploads_count_per_peer_and_per_file_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (a, b) = (Hash32([1; 32]), Hash32([2; 32]));
        {
            let s = Store::open(&path).unwrap();
            s.add_upload("peer-1".into(), a, 100).await.unwrap();
            s.add_upload("peer-2".into(), a, 50).await.unwrap();
            s.add_upload("peer-1".into(), b, 7).await.unwrap();
            s.add_transfer("peer-1".into(), 9, 0).await.unwrap();
        }
        let s = Store::open(&path).unwrap();
        let served = s.served_files().await.unwrap();
        assert_eq!((served.get(&a), served.get(&b), served.len()), (Some(&150), Some(&7), 2));
        let t = s.transfers().await.unwrap();
        assert_eq!(t, vec![("peer-1".to_string(), 9, 107), ("peer-2".to_string(), 0, 50)]);
    }

    #[tokio::test]
    async fn the_approval_an_attempt_ran_under_is_kept_per_release_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (m, a, b) = (Hash32([7; 32]), 1_790_000_000, 1_790_000_001);
        {
            let s = Store::open(&path).unwrap();
            s.call(move |c| {
                c.execute(
                    "INSERT INTO releases (manifest, product, version, state, detail, updated) VALUES (?1, 'tool', 1, '\"Queued\"', '', 5)",
                    params![m.0.to_vec()],
                )?;
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(s.attempt_approval(m).await.unwrap(), None, "no attempt started yet");
            s.set_attempt_approval(m, a).await.unwrap();
            s.set_attempt_approval(m, b).await.unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.attempt_approval(m).await.unwrap(), Some(b));
        assert_eq!(s.attempt_approval(Hash32([9; 32])).await.unwrap(), None);
    }

    #[test]
    fn a_version_2_database_migrates_its_install_states_to_typed_states() {
        use lanpatch_protocol::{FailReason, ReleaseState, RollbackCause};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut c = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS.iter().take(2).enumerate() {
                let tx = c.transaction().unwrap();
                tx.execute_batch(sql).unwrap();
                tx.pragma_update(None, "user_version", (i + 1) as u32).unwrap();
                tx.commit().unwrap();
            }
            for (b, state) in [(1u8, "installed"), (2, "rolled-back"), (3, "failed")] {
                c.execute(
                    "INSERT INTO installs (manifest, product, version, state, updated) VALUES (?1, 'tool', 1, ?2, 0)",
                    params![vec![b; 32], state],
                )
                .unwrap();
            }
        }
        let s = Store::open(&path).unwrap();
        let mut got: Vec<(u8, ReleaseState)> =
            s.releases().unwrap().into_iter().map(|r| (r.manifest.0[0], r.state)).collect();
        got.sort_by_key(|(b, _)| *b);
        assert_eq!(
            got,
            vec![
                (1, ReleaseState::Installed),
                (2, ReleaseState::RolledBack(RollbackCause::InstallFailed)),
                (3, ReleaseState::Failed(FailReason::CommandFailed)),
            ]
        );
    }

    #[tokio::test]
    async fn bans_escalate_and_count_identities_per_ip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let ip = Some("10.0.0.9".to_string());
        let first = s.put_ban("peerA".into(), ip.clone(), 1000, 3600, "bad chunk".into()).await.unwrap();
        assert_eq!((first.strikes, first.until), (1, 1000 + 3600));
        let second = s.put_ban("peerA".into(), ip.clone(), 9000, 3600, "bad chunk".into()).await.unwrap();
        assert_eq!((second.strikes, second.until), (2, 9000 + 4 * 3600));
        let capped = {
            let mut b = second;
            for _ in 0..5 {
                b = s.put_ban("peerA".into(), ip.clone(), 9000, 3600, "again".into()).await.unwrap();
            }
            b
        };
        assert_eq!(capped.until, 9000 + 7 * 86_400, "at most a week");
        s.put_ban("peerB".into(), ip.clone(), 9001, 3600, "flood".into()).await.unwrap();
        s.put_ban("peerC".into(), Some("10.0.0.7".into()), 9001, 3600, "flood".into()).await.unwrap();
        assert_eq!(s.bans_from_ip("10.0.0.9".into(), 8000).await.unwrap(), 2);
        assert_eq!(s.active_bans(9002).await.unwrap().len(), 3);
        assert_eq!(s.active_bans(9000 + 7 * 86_400).await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn refusal_log_keeps_the_newest_rows_and_counts_every_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        for i in 0..30u64 {
            s.add_refusal(i, "peer X".into(), RefusalKind::Metadata, format!("junk {i}"), 10).await.unwrap();
        }
        let rows = s.refusals(100).await.unwrap();
        assert_eq!(rows.len(), 10);
        assert_eq!(rows[0].3, "junk 29");
        assert_eq!(s.refusal_count().await.unwrap(), 30);
    }

    #[tokio::test]
    async fn older_approval_does_not_replace_newer() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let m = Hash32([1; 32]);
        assert!(s.put_approval(m, "pilot".into(), 100, vec![1]).await.unwrap());
        assert!(!s.put_approval(m, "pilot".into(), 50, vec![2]).await.unwrap());
        assert!(s.put_approval(m, "pilot".into(), 150, vec![3]).await.unwrap());
        assert_eq!(s.approvals().unwrap(), vec![vec![3]]);
    }

    #[tokio::test]
    async fn the_notification_outbox_queues_an_event_once_keeps_order_and_bound_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = Store::open(&path).unwrap();
        let ev = |i: u32| (format!("id{i}"), format!("{{\"n\":{i}}}"));
        let q = s.enqueue_notifications(vec![ev(1), ev(2)], 10, 3).await.unwrap();
        assert_eq!(q, Enqueued { queued: 2, dropped: vec![], depth: 2 });
        // Queued once: the same ids again (a re-report) add nothing, even after delivery.
        let first = s.next_notification().await.unwrap().unwrap();
        assert_eq!((first.id.as_str(), first.body.as_str()), ("id1", "{\"n\":1}"));
        assert_eq!(s.delivered_notification(first.seq).await.unwrap(), 1);
        let q = s.enqueue_notifications(vec![ev(1), ev(2), ev(3), ev(4), ev(5)], 11, 3).await.unwrap();
        assert_eq!(q, Enqueued { queued: 3, dropped: vec!["id2".into()], depth: 3 }, "the oldest is dropped");
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.notification_depth().await.unwrap(), 3);
        assert_eq!(s.next_notification().await.unwrap().unwrap().id, "id3");
        let mut seen = s.notification_ids().await.unwrap();
        seen.sort();
        assert_eq!(seen, ["id1", "id2", "id3", "id4", "id5"]);
    }
}
