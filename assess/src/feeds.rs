//! Vulnerability feeds in their published formats, parsed and checked (no I/O but reading the
//! given files). Every refusal names the file and the line or record; a feed is taken whole or
//! not at all.
//!
//! - OSV (osv.dev) records of the Debian ecosystem: one JSON file per record, a directory of
//!   them, or the zip export (`https://osv-vulnerabilities.storage.googleapis.com/Debian/all.zip`,
//!   updated continuously).
//! - EPSS (FIRST.org): the daily CSV, plain or gzip (`https://epss.cyentia.com/epss_scores-current.csv.gz`),
//!   a `#model_version:...,score_date:...` comment line, then `cve,epss,percentile`.
//! - CISA's Known Exploited Vulnerabilities catalogue JSON
//!   (`https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json`,
//!   updated on weekdays).

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

/// Bytes read from one feed file (or one zip entry, decompressed) at most.
pub const MAX_FILE: u64 = 512 * 1024 * 1024;
/// Records in an OSV zip at most.
pub const MAX_ZIP_ENTRIES: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {what}", at.as_ref().map(|a| format!(", {a}")).unwrap_or_default())]
pub struct FeedError {
    pub file: String,
    /// Where in the file: "line 7", "record DSA-5514-1", "zip entry x.json".
    pub at: Option<String>,
    pub what: String,
}

fn err(file: &Path, at: Option<String>, what: impl Into<String>) -> FeedError {
    FeedError { file: file.display().to_string(), at, what: what.into() }
}

/// `CVE-YYYY-NNNN...`
pub fn is_cve(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("CVE-") else { return false };
    let Some((year, num)) = rest.split_once('-') else { return false };
    year.len() == 4
        && year.bytes().all(|b| b.is_ascii_digit())
        && (4..=12).contains(&num.len())
        && num.bytes().all(|b| b.is_ascii_digit())
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

fn read_capped(file: &Path, r: impl Read) -> Result<Vec<u8>, FeedError> {
    let mut buf = Vec::new();
    r.take(MAX_FILE + 1).read_to_end(&mut buf).map_err(|e| err(file, None, format!("cannot read: {e}")))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(err(file, None, format!("larger than {MAX_FILE} bytes")));
    }
    Ok(buf)
}

fn read_file(file: &Path) -> Result<Vec<u8>, FeedError> {
    let f = std::fs::File::open(file).map_err(|e| err(file, None, format!("cannot open: {e}")))?;
    read_capped(file, f)
}

// ---------------------------------------------------------------------------------------------
// OSV

/// One affected range of a source package, for one CVE.
#[derive(Clone, Debug, PartialEq)]
pub struct OsvAffected {
    pub cve: String,
    /// The record's id (e.g. `DEBIAN-CVE-2023-4911`, `DSA-5514-1`).
    pub advisory: String,
    /// Source package name.
    pub package: String,
    /// The Debian release the range is for (`12` from `Debian:12`), None for any.
    pub release: Option<String>,
    /// The first affected version; None or "0": from the beginning.
    pub introduced: Option<String>,
    /// The first fixed version; None: not fixed yet.
    pub fixed: Option<String>,
    /// The last affected version (instead of `fixed`), inclusive.
    pub last_affected: Option<String>,
    pub cvss_vector: Option<String>,
    /// The CVSS base score computed from the vector (RustSec's `cvss` crate).
    pub cvss: Option<f64>,
}

#[derive(Debug, Default)]
pub struct OsvFeed {
    pub records: usize,
    pub affected: Vec<OsvAffected>,
    /// The newest `modified` time among the records: the feed's date.
    pub date: String,
}

#[derive(Deserialize)]
struct OsvRecord {
    id: String,
    #[serde(default)]
    modified: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    upstream: Vec<String>,
    #[serde(default)]
    affected: Vec<OsvAffectedJson>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
}

#[derive(Deserialize)]
struct OsvAffectedJson {
    package: Option<OsvPackage>,
    #[serde(default)]
    ranges: Vec<OsvRange>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
}

#[derive(Deserialize)]
struct OsvPackage {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct OsvRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

/// The base score of a CVSS v3.x or v4.0 vector.
pub fn cvss_score(vector: &str) -> Result<f64, String> {
    let v: cvss::Cvss = vector.parse().map_err(|e| format!("CVSS vector {vector:?} does not parse: {e}"))?;
    Ok(v.score())
}

/// The CVSS vector of a record or an affected entry: the newest version given.
fn vector(list: &[OsvSeverity]) -> Option<&str> {
    ["CVSS_V4", "CVSS_V3"].iter().find_map(|k| list.iter().find(|s| s.kind == *k).map(|s| s.score.as_str()))
}

fn parse_osv_record(file: &Path, entry: Option<&str>, bytes: &[u8], feed: &mut OsvFeed) -> Result<(), FeedError> {
    let place = |id: Option<&str>| -> Option<String> {
        match (entry, id) {
            (Some(e), Some(id)) => Some(format!("zip entry {e}, record {id}")),
            (Some(e), None) => Some(format!("zip entry {e}")),
            (None, Some(id)) => Some(format!("record {id}")),
            (None, None) => None,
        }
    };
    let rec: OsvRecord = serde_json::from_slice(bytes).map_err(|e| {
        err(file, place(None), format!("not an OSV record: line {} column {}: {e}", e.line(), e.column()))
    })?;
    if rec.id.is_empty() || rec.id.len() > 128 {
        return Err(err(file, place(None), "the record has no usable id"));
    }
    let at = place(Some(&rec.id));
    let mut cves: Vec<String> = std::iter::once(rec.id.strip_prefix("DEBIAN-").unwrap_or(&rec.id).to_string())
        .chain(rec.aliases.iter().cloned())
        .chain(rec.upstream.iter().cloned())
        .filter(|c| is_cve(c))
        .collect();
    cves.sort();
    cves.dedup();
    let record_vector = vector(&rec.severity);
    for a in &rec.affected {
        let Some(pkg) = &a.package else { continue };
        let (eco, release) = match pkg.ecosystem.split_once(':') {
            Some((e, r)) => (e, Some(r.to_string())),
            None => (pkg.ecosystem.as_str(), None),
        };
        if eco != "Debian" {
            continue;
        }
        if pkg.name.is_empty() || pkg.name.len() > 128 {
            return Err(err(file, at.clone(), "an affected package has no usable name"));
        }
        let vec = vector(&a.severity).or(record_vector);
        let cvss = vec.map(cvss_score).transpose().map_err(|e| err(file, at.clone(), e))?;
        for r in a.ranges.iter().filter(|r| r.kind == "ECOSYSTEM") {
            let mut introduced: Option<String> = None;
            for ev in &r.events {
                let (key, value) =
                    ev.iter().next().and_then(|(k, v)| v.as_str().map(|v| (k.as_str(), v.to_string()))).ok_or_else(
                        || err(file, at.clone(), "a range event is not {\"introduced\"|\"fixed\": \"version\"}"),
                    )?;
                let limit = match key {
                    "introduced" => {
                        introduced = Some(value);
                        continue;
                    }
                    "fixed" => (Some(value), None),
                    "last_affected" => (None, Some(value)),
                    "limit" => continue,
                    other => return Err(err(file, at.clone(), format!("unknown range event {other:?}"))),
                };
                for cve in &cves {
                    feed.affected.push(OsvAffected {
                        cve: cve.clone(),
                        advisory: rec.id.clone(),
                        package: pkg.name.clone(),
                        release: release.clone(),
                        introduced: introduced.clone().filter(|v| v != "0"),
                        fixed: limit.0.clone(),
                        last_affected: limit.1.clone(),
                        cvss_vector: vec.map(String::from),
                        cvss,
                    });
                }
                introduced = None;
            }
            // An open range: introduced and never fixed.
            if let Some(intro) = introduced {
                for cve in &cves {
                    feed.affected.push(OsvAffected {
                        cve: cve.clone(),
                        advisory: rec.id.clone(),
                        package: pkg.name.clone(),
                        release: release.clone(),
                        introduced: Some(intro.clone()).filter(|v| v != "0"),
                        fixed: None,
                        last_affected: None,
                        cvss_vector: vec.map(String::from),
                        cvss,
                    });
                }
            }
        }
    }
    feed.records += 1;
    if rec.modified > feed.date {
        feed.date = rec.modified.chars().take(40).collect();
    }
    Ok(())
}

/// An OSV feed from `path`: a record file, a directory of `*.json` records, or the zip export.
pub fn parse_osv(path: &Path) -> Result<OsvFeed, FeedError> {
    let mut feed = OsvFeed::default();
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| err(path, None, format!("cannot list: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            parse_osv_record(&f, None, &read_file(&f)?, &mut feed)?;
        }
    } else {
        let bytes = read_file(path)?;
        if bytes.starts_with(b"PK\x03\x04") {
            let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes))
                .map_err(|e| err(path, None, format!("not a readable zip: {e}")))?;
            if zip.len() > MAX_ZIP_ENTRIES {
                return Err(err(path, None, format!("{} entries, the limit is {MAX_ZIP_ENTRIES}", zip.len())));
            }
            for i in 0..zip.len() {
                let entry = zip.by_index(i).map_err(|e| err(path, Some(format!("zip entry {i}")), e.to_string()))?;
                let name = entry.name().map(|n| n.to_string()).unwrap_or_else(|_| format!("#{i}"));
                if !name.ends_with(".json") {
                    continue;
                }
                let data =
                    read_capped(path, entry).map_err(|e| err(path, Some(format!("zip entry {name}")), e.what))?;
                parse_osv_record(path, Some(&name), &data, &mut feed)?;
            }
        } else {
            parse_osv_record(path, None, &bytes, &mut feed)?;
        }
    }
    if feed.records == 0 {
        return Err(err(path, None, "no OSV records"));
    }
    Ok(feed)
}

// ---------------------------------------------------------------------------------------------
// EPSS

#[derive(Clone, Debug, PartialEq)]
pub struct EpssRow {
    pub cve: String,
    /// Probability of exploitation activity in the next 30 days, 0..1.
    pub epss: f64,
    /// Its percentile among all scored CVEs, 0..1.
    pub percentile: f64,
}

#[derive(Debug)]
pub struct EpssFeed {
    pub model_version: String,
    /// `score_date` of the comment line (the feed's date).
    pub date: String,
    pub rows: Vec<EpssRow>,
}

/// The EPSS daily CSV, plain or gzip.
pub fn parse_epss(path: &Path) -> Result<EpssFeed, FeedError> {
    let raw = read_file(path)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        read_capped(path, flate2::read::GzDecoder::new(&raw[..]))
            .map_err(|e| err(path, None, format!("gzip: {}", e.what)))?
    } else {
        raw
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1;
        err(path, Some(format!("line {line}")), "not UTF-8")
    })?;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
    let (_, first) = lines.next().ok_or_else(|| err(path, None, "empty file"))?;
    let meta = first
        .strip_prefix('#')
        .ok_or_else(|| err(path, Some("line 1".into()), "expected the #model_version:...,score_date:... line"))?;
    let field = |key: &str| {
        meta.split(',').find_map(|kv| kv.trim().strip_prefix(key).and_then(|v| v.strip_prefix(':'))).map(String::from)
    };
    let (Some(model_version), Some(date)) = (field("model_version"), field("score_date")) else {
        return Err(err(path, Some("line 1".into()), "the comment line lacks model_version or score_date"));
    };
    match lines.next() {
        Some((_, "cve,epss,percentile")) => {}
        Some((n, other)) => {
            return Err(err(
                path,
                Some(format!("line {n}")),
                format!("expected header cve,epss,percentile, got {other:?}"),
            ));
        }
        None => return Err(err(path, None, "no header line")),
    }
    let mut rows = Vec::new();
    for (n, line) in lines {
        if line.is_empty() {
            continue;
        }
        let at = || Some(format!("line {n}"));
        let mut parts = line.split(',');
        let (Some(cve), Some(e), Some(p), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(err(path, at(), format!("expected 3 fields: {line:?}")));
        };
        if !is_cve(cve) {
            return Err(err(path, at(), format!("not a CVE id: {cve:?}")));
        }
        let prob = |s: &str, what: &str| -> Result<f64, FeedError> {
            s.parse::<f64>()
                .ok()
                .filter(|v| (0.0..=1.0).contains(v))
                .ok_or_else(|| err(path, at(), format!("{what} {s:?} is not a number from 0 to 1")))
        };
        rows.push(EpssRow { cve: cve.to_string(), epss: prob(e, "epss")?, percentile: prob(p, "percentile")? });
    }
    if rows.is_empty() {
        return Err(err(path, None, "no rows"));
    }
    Ok(EpssFeed { model_version, date, rows })
}

// ---------------------------------------------------------------------------------------------
// CISA KEV

#[derive(Clone, Debug, PartialEq)]
pub struct KevEntry {
    pub cve: String,
    pub date_added: String,
    /// The date by which US federal agencies must remediate: a good deadline for anyone.
    pub due_date: String,
    pub ransomware: bool,
}

#[derive(Debug)]
pub struct KevFeed {
    pub catalog_version: String,
    /// `dateReleased` (the feed's date).
    pub date: String,
    pub entries: Vec<KevEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KevJson {
    catalog_version: String,
    date_released: String,
    count: usize,
    vulnerabilities: Vec<KevJsonEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KevJsonEntry {
    #[serde(rename = "cveID")]
    cve_id: String,
    date_added: String,
    due_date: String,
    #[serde(default)]
    known_ransomware_campaign_use: String,
}

/// The CISA KEV catalogue JSON.
pub fn parse_kev(path: &Path) -> Result<KevFeed, FeedError> {
    let bytes = read_file(path)?;
    let k: KevJson = serde_json::from_slice(&bytes).map_err(|e| {
        err(path, Some(format!("line {}", e.line())), format!("not the KEV catalogue: column {}: {e}", e.column()))
    })?;
    if k.count != k.vulnerabilities.len() {
        return Err(err(
            path,
            None,
            format!("count says {} entries, the file has {}", k.count, k.vulnerabilities.len()),
        ));
    }
    let mut entries = Vec::with_capacity(k.vulnerabilities.len());
    for (i, v) in k.vulnerabilities.into_iter().enumerate() {
        let at = Some(format!("entry {} ({})", i + 1, v.cve_id.chars().take(40).collect::<String>()));
        if !is_cve(&v.cve_id) {
            return Err(err(path, at, "cveID is not a CVE id"));
        }
        if !is_date(&v.date_added) || !is_date(&v.due_date) {
            return Err(err(path, at, "dateAdded and dueDate must be YYYY-MM-DD"));
        }
        entries.push(KevEntry {
            cve: v.cve_id,
            date_added: v.date_added,
            due_date: v.due_date,
            ransomware: v.known_ransomware_campaign_use == "Known",
        });
    }
    Ok(KevFeed { catalog_version: k.catalog_version, date: k.date_released.chars().take(40).collect(), entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cve_ids_and_dates_are_checked_by_shape() {
        assert!(is_cve("CVE-2023-4911") && is_cve("CVE-2021-44228"));
        assert!(!is_cve("CVE-23-4911") && !is_cve("DSA-5514-1") && !is_cve("CVE-2023-49x1"));
        assert!(is_date("2023-12-12") && !is_date("2023-12-1") && !is_date("12/12/2023"));
    }

    #[test]
    fn cvss_base_scores_come_from_the_vectors() {
        assert_eq!(cvss_score("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H").unwrap(), 7.8);
        assert_eq!(cvss_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H").unwrap(), 10.0);
        assert_eq!(cvss_score("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H").unwrap(), 8.1);
        assert!(cvss_score("CVSS:3.1/AV:X/AC:L").is_err());
    }
}
