//! `lanpatch-signer feeds`: import vulnerability feeds from local files, or show them.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use lanpatch_assess::{feeds, feedstore};

use crate::time;

#[derive(Subcommand)]
pub enum FeedsCmd {
    /// Parse every given file, then replace each given feed in the database (one transaction
    /// each). A malformed file is refused naming the file and the line or record, and nothing
    /// of any given file is imported.
    Import {
        /// The feed database (default ~/.local/share/lanpatch/feeds.db).
        #[arg(long)]
        db: Option<PathBuf>,
        /// OSV records of the Debian ecosystem: a record .json, a directory of them, or all.zip.
        #[arg(long)]
        osv: Option<PathBuf>,
        /// The EPSS daily CSV (plain or .gz).
        #[arg(long)]
        epss: Option<PathBuf>,
        /// The CISA Known Exploited Vulnerabilities catalogue (JSON).
        #[arg(long)]
        kev: Option<PathBuf>,
    },
    /// The imported feeds: each one's date, source file and size.
    Show {
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn feeds_import(
    db: Option<PathBuf>,
    osv: Option<PathBuf>,
    epss: Option<PathBuf>,
    kev: Option<PathBuf>,
) -> Result<()> {
    if osv.is_none() && epss.is_none() && kev.is_none() {
        bail!("give at least one of --osv, --epss, --kev");
    }
    // Everything is parsed before anything is written: one bad file imports nothing.
    let osv = osv.map(|p| feeds::parse_osv(&p).map(|f| (p, f))).transpose()?;
    let epss = epss.map(|p| feeds::parse_epss(&p).map(|f| (p, f))).transpose()?;
    let kev = kev.map(|p| feeds::parse_kev(&p).map(|f| (p, f))).transpose()?;
    let path = db.unwrap_or_else(feedstore::default_path);
    let mut store = feedstore::FeedStore::open(&path)?;
    if let Some((p, f)) = &osv {
        store.replace_osv(f, p)?;
        println!(
            "osv: {} records ({} withdrawn, ignored), {} affected ranges, dated {}",
            f.records,
            f.withdrawn,
            f.affected.len(),
            f.date
        );
    }
    if let Some((p, f)) = &epss {
        store.replace_epss(f, p)?;
        println!("epss: {} CVEs, model {}, dated {}", f.rows.len(), f.model_version, f.date);
    }
    if let Some((p, f)) = &kev {
        store.replace_kev(f, p)?;
        println!("kev: {} CVEs, catalogue {}, dated {}", f.entries.len(), f.catalog_version, f.date);
    }
    println!("feed database: {}", path.display());
    println!(
        "next: which hosts are exposed, most urgent first: lanpatch-signer vulns --node <collector's control.sock>"
    );
    Ok(())
}

pub fn run(cmd: FeedsCmd) -> Result<()> {
    match cmd {
        FeedsCmd::Import { db, osv, epss, kev } => feeds_import(db, osv, epss, kev),
        FeedsCmd::Show { db, json } => show(db, json),
    }
}

fn show(db: Option<PathBuf>, json: bool) -> Result<()> {
    let store = feedstore::FeedStore::open(&db.unwrap_or_else(feedstore::default_path))?;
    let list = store.feeds()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no feeds imported yet (lanpatch-signer feeds import)");
    }
    for f in &list {
        println!(
            "{}: dated {}, {} rows, from {} (imported at {})",
            f.feed.as_str(),
            f.date,
            f.rows,
            f.source,
            time::show(lanpatch_protocol::Timestamp(f.imported_at))
        );
    }
    Ok(())
}
