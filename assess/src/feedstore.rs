//! The signing workstation's feed database (SQLite, `--db`, default
//! `~/.local/share/lanpatch/feeds.db`, mode 0600): the last import of each feed with its date.
//! The signer's only module that names SQLite. A re-import replaces that feed in one
//! transaction: a reader sees the old feed or the new one, never a mix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};

use crate::feeds::{EpssFeed, KevFeed, OsvAffected, OsvFeed};

/// Which feed (its serde name is [`Feed::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Feed {
    Osv,
    Epss,
    Kev,
}

impl Feed {
    pub fn as_str(self) -> &'static str {
        match self {
            Feed::Osv => "osv",
            Feed::Epss => "epss",
            Feed::Kev => "kev",
        }
    }
    pub const ALL: [Feed; 3] = [Feed::Osv, Feed::Epss, Feed::Kev];
}

/// One feed's last import.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FeedInfo {
    pub feed: Feed,
    /// The feed's own date (OSV: newest `modified`; EPSS: `score_date`; KEV: `dateReleased`).
    pub date: String,
    pub imported_at: u64,
    pub source: String,
    pub rows: u64,
}

/// EPSS of one CVE.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Epss {
    pub score: f64,
    pub percentile: f64,
}

/// A CVE's entry in the KEV catalogue.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Kev {
    pub date_added: String,
    pub due_date: String,
    pub ransomware: bool,
}

pub struct FeedStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS feeds (name TEXT PRIMARY KEY, date TEXT NOT NULL, imported_at INTEGER NOT NULL,
                                  source TEXT NOT NULL, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS osv (cve TEXT NOT NULL, advisory TEXT NOT NULL, package TEXT NOT NULL, release TEXT,
                                introduced TEXT, fixed TEXT, last_affected TEXT, cvss_vector TEXT, cvss REAL);
CREATE INDEX IF NOT EXISTS osv_package ON osv (package);
CREATE INDEX IF NOT EXISTS osv_cve ON osv (cve);
CREATE TABLE IF NOT EXISTS epss (cve TEXT PRIMARY KEY, score REAL NOT NULL, percentile REAL NOT NULL);
CREATE TABLE IF NOT EXISTS kev (cve TEXT PRIMARY KEY, date_added TEXT NOT NULL, due_date TEXT NOT NULL,
                                ransomware INTEGER NOT NULL);
";

/// `~/.local/share/lanpatch/feeds.db` (or under `$XDG_DATA_HOME`).
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("lanpatch/feeds.db")
}

impl FeedStore {
    /// Opens (creating, mode 0600 in a 0700 directory) the database at `path`.
    pub fn open(path: &Path) -> Result<FeedStore> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // Created with its final mode whatever the umask; an existing file is tightened.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let conn = Connection::open(path).with_context(|| format!("cannot open feed database {}", path.display()))?;
        conn.execute_batch(SCHEMA).context("feed database schema")?;
        Ok(FeedStore { conn })
    }

    /// Opens an existing database read-only (the collector's console): nothing is created or
    /// changed, and a missing file is an error naming it.
    pub fn open_read_only(path: &Path) -> Result<FeedStore> {
        use rusqlite::OpenFlags;
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .with_context(|| format!("cannot open feed database {} read-only", path.display()))?;
        Ok(FeedStore { conn })
    }

    fn replace<F>(&mut self, feed: Feed, date: &str, source: &Path, rows: usize, fill: F) -> Result<()>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let tx = self.conn.transaction()?;
        tx.execute(&format!("DELETE FROM {}", feed.as_str()), [])?;
        fill(&tx)?;
        tx.execute(
            "INSERT INTO feeds (name, date, imported_at, source, rows) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (name) DO UPDATE SET date = ?2, imported_at = ?3, source = ?4, rows = ?5",
            params![feed.as_str(), date, now as i64, source.display().to_string(), rows as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn replace_osv(&mut self, f: &OsvFeed, source: &Path) -> Result<()> {
        self.replace(Feed::Osv, &f.date, source, f.affected.len(), |tx| {
            let mut st = tx.prepare(
                "INSERT INTO osv (cve, advisory, package, release, introduced, fixed, last_affected, cvss_vector, cvss)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for a in &f.affected {
                st.execute(params![
                    a.cve,
                    a.advisory,
                    a.package,
                    a.release,
                    a.introduced,
                    a.fixed,
                    a.last_affected,
                    a.cvss_vector,
                    a.cvss
                ])?;
            }
            Ok(())
        })
    }

    pub fn replace_epss(&mut self, f: &EpssFeed, source: &Path) -> Result<()> {
        self.replace(Feed::Epss, &f.date, source, f.rows.len(), |tx| {
            // A CVE listed twice keeps its last row (the file is the authority).
            let mut st = tx.prepare("INSERT OR REPLACE INTO epss (cve, score, percentile) VALUES (?1, ?2, ?3)")?;
            for r in &f.rows {
                st.execute(params![r.cve, r.epss, r.percentile])?;
            }
            Ok(())
        })
    }

    pub fn replace_kev(&mut self, f: &KevFeed, source: &Path) -> Result<()> {
        self.replace(Feed::Kev, &f.date, source, f.entries.len(), |tx| {
            let mut st = tx.prepare(
                "INSERT OR REPLACE INTO kev (cve, date_added, due_date, ransomware) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in &f.entries {
                st.execute(params![e.cve, e.date_added, e.due_date, e.ransomware])?;
            }
            Ok(())
        })
    }

    /// The last import of every feed imported so far.
    pub fn feeds(&self) -> Result<Vec<FeedInfo>> {
        let mut out = Vec::new();
        for f in Feed::ALL {
            let row = self
                .conn
                .query_row(
                    "SELECT date, imported_at, source, rows FROM feeds WHERE name = ?1",
                    params![f.as_str()],
                    |r| {
                        Ok(FeedInfo {
                            feed: f,
                            date: r.get(0)?,
                            imported_at: r.get::<_, i64>(1)? as u64,
                            source: r.get(2)?,
                            rows: r.get::<_, i64>(3)? as u64,
                        })
                    },
                )
                .optional()?;
            out.extend(row);
        }
        Ok(out)
    }

    /// Every affected range, by source package name.
    pub fn affected_by_package(&self) -> Result<HashMap<String, Vec<OsvAffected>>> {
        let mut st = self.conn.prepare(
            "SELECT cve, advisory, package, release, introduced, fixed, last_affected, cvss_vector, cvss FROM osv",
        )?;
        let rows = st.query_map([], |r| {
            Ok(OsvAffected {
                cve: r.get(0)?,
                advisory: r.get(1)?,
                package: r.get(2)?,
                release: r.get(3)?,
                introduced: r.get(4)?,
                fixed: r.get(5)?,
                last_affected: r.get(6)?,
                cvss_vector: r.get(7)?,
                cvss: r.get(8)?,
            })
        })?;
        let mut map: HashMap<String, Vec<OsvAffected>> = HashMap::new();
        for a in rows {
            let a = a?;
            map.entry(a.package.clone()).or_default().push(a);
        }
        Ok(map)
    }

    /// The highest CVSS base score the OSV feed gives a CVE.
    pub fn cvss(&self, cve: &str) -> Result<Option<f64>> {
        Ok(self.conn.query_row("SELECT max(cvss) FROM osv WHERE cve = ?1", params![cve], |r| r.get(0))?)
    }

    /// Every EPSS score, by CVE.
    pub fn all_epss(&self) -> Result<HashMap<String, Epss>> {
        let mut st = self.conn.prepare("SELECT cve, score, percentile FROM epss")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, Epss { score: r.get(1)?, percentile: r.get(2)? })))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every KEV entry, by CVE.
    pub fn all_kev(&self) -> Result<HashMap<String, Kev>> {
        let mut st = self.conn.prepare("SELECT cve, date_added, due_date, ransomware FROM kev")?;
        let rows = st.query_map([], |r| {
            Ok((r.get(0)?, Kev { date_added: r.get(1)?, due_date: r.get(2)?, ransomware: r.get(3)? }))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn epss(&self, cve: &str) -> Result<Option<Epss>> {
        Ok(self
            .conn
            .query_row("SELECT score, percentile FROM epss WHERE cve = ?1", params![cve], |r| {
                Ok(Epss { score: r.get(0)?, percentile: r.get(1)? })
            })
            .optional()?)
    }

    pub fn kev(&self, cve: &str) -> Result<Option<Kev>> {
        Ok(self
            .conn
            .query_row("SELECT date_added, due_date, ransomware FROM kev WHERE cve = ?1", params![cve], |r| {
                Ok(Kev { date_added: r.get(0)?, due_date: r.get(1)?, ransomware: r.get(2)? })
            })
            .optional()?)
    }
}
