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
pub const MAX_ZIP_ENTRIES: usize = 200_000;
/// Largest OSV record (a file of a directory, an entry of the zip) once decompressed.
pub const MAX_RECORD: u64 = 8 * 1024 * 1024;
/// Bytes of the input each row of the OSV feed must be paid with (beyond 64 rows per file).
pub const ROW_BYTES: usize = 32;
/// Longest version, CVSS vector or other string an OSV row copies.
pub const MAX_FIELD: usize = 256;

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
    /// Of those, withdrawn ones (no rows).
    pub withdrawn: usize,
    /// Rows the input paid for so far (64 per file plus one per [`ROW_BYTES`]).
    budget: usize,
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
    /// Set when the record was withdrawn: it no longer says anything is affected.
    #[serde(default)]
    withdrawn: Option<String>,
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
    if rec.withdrawn.as_deref().is_some_and(|w| !w.trim().is_empty()) {
        feed.records += 1;
        feed.withdrawn += 1;
        return Ok(());
    }
    let mut cves: Vec<String> = std::iter::once(rec.id.strip_prefix("DEBIAN-").unwrap_or(&rec.id).to_string())
        .chain(rec.aliases.iter().cloned())
        .chain(rec.upstream.iter().cloned())
        .filter(|c| is_cve(c))
        .collect();
    cves.sort();
    cves.dedup();
    // Rows are CVEs x range events: a small input naming many of both would expand to more
    // rows than a real feed ever has. Each row is paid for by ROW_BYTES of the input as given
    // (compressed, for the zip), and every string a row copies is bounded.
    let events: usize = rec
        .affected
        .iter()
        .flat_map(|a| a.ranges.iter())
        .filter(|r| r.kind == "ECOSYSTEM")
        .map(|r| r.events.len())
        .sum();
    let rows = feed.affected.len().saturating_add(events.saturating_mul(cves.len()));
    if rows > feed.budget {
        let what = format!(
            "{} CVEs x {events} range events would take the feed past {} rows (one per {ROW_BYTES} bytes of the file)",
            cves.len(),
            feed.budget
        );
        return Err(err(file, at, what));
    }
    let record_vector = vector(&rec.severity);
    if record_vector.is_some_and(|v| v.len() > MAX_FIELD) {
        return Err(err(file, at, format!("a CVSS vector longer than {MAX_FIELD} bytes")));
    }
    for a in &rec.affected {
        let Some(pkg) = &a.package else { continue };
        let (eco, release) = match pkg.ecosystem.split_once(':') {
            Some((_, r)) if r.len() > 32 => {
                return Err(err(file, at, "an ecosystem's release is longer than 32 bytes"));
            }
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
        if vec.is_some_and(|v| v.len() > MAX_FIELD) {
            return Err(err(file, at, format!("a CVSS vector longer than {MAX_FIELD} bytes")));
        }
        let cvss = vec.map(cvss_score).transpose().map_err(|e| err(file, at.clone(), e))?;
        for r in a.ranges.iter().filter(|r| r.kind == "ECOSYSTEM") {
            let mut introduced: Option<String> = None;
            for ev in &r.events {
                let (key, value) =
                    ev.iter().next().and_then(|(k, v)| v.as_str().map(|v| (k.as_str(), v.to_string()))).ok_or_else(
                        || err(file, at.clone(), "a range event is not {\"introduced\"|\"fixed\": \"version\"}"),
                    )?;
                if value.len() > MAX_FIELD {
                    return Err(err(file, at, format!("a range event's version is longer than {MAX_FIELD} bytes")));
                }
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

/// One OSV record, at most [`MAX_RECORD`] bytes.
fn read_record(file: &Path, r: impl Read) -> Result<Vec<u8>, FeedError> {
    let mut buf = Vec::new();
    r.take(MAX_RECORD + 1).read_to_end(&mut buf).map_err(|e| err(file, None, format!("cannot read: {e}")))?;
    if buf.len() as u64 > MAX_RECORD {
        return Err(err(file, None, format!("an OSV record larger than {MAX_RECORD} bytes")));
    }
    Ok(buf)
}

/// The number of entries a zip's end-of-central-directory record declares (its Zip64 record's
/// when the classic one says 0xFFFF), `None` when there is none.
fn zip_entry_count(bytes: &[u8]) -> Option<u64> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const ZIP64_LOCATOR: [u8; 4] = [0x50, 0x4b, 0x06, 0x07];
    const ZIP64_EOCD: [u8; 4] = [0x50, 0x4b, 0x06, 0x06];
    let from = bytes.len().saturating_sub(22 + 65_535);
    let at = (from..=bytes.len().checked_sub(22)?).rev().find(|&i| bytes[i..i + 4] == EOCD)?;
    let count = u16::from_le_bytes([bytes[at + 10], bytes[at + 11]]);
    if count != 0xFFFF {
        return Some(u64::from(count));
    }
    let loc = at.checked_sub(20)?;
    if bytes[loc..loc + 4] != ZIP64_LOCATOR {
        return Some(u64::from(count));
    }
    let offset = usize::try_from(u64::from_le_bytes(bytes[loc + 8..loc + 16].try_into().ok()?)).ok()?;
    let rec = bytes.get(offset..offset.checked_add(40)?)?;
    if rec[..4] != ZIP64_EOCD {
        return None;
    }
    Some(u64::from_le_bytes(rec[32..40].try_into().ok()?))
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
            let file = std::fs::File::open(&f).map_err(|e| err(&f, None, format!("cannot open: {e}")))?;
            let bytes = read_record(&f, file)?;
            feed.budget += 64 + bytes.len() / ROW_BYTES;
            parse_osv_record(&f, None, &bytes, &mut feed)?;
        }
    } else {
        feed = parse_osv_bytes(path, &read_file(path)?)?;
    }
    if feed.records == 0 {
        return Err(err(path, None, "no OSV records"));
    }
    Ok(feed)
}

/// The OSV records of one file's bytes: a record, or the zip export (`path` names it in
/// errors). The zip's records together may expand to at most [`EXPANSION`] times the file.
pub fn parse_osv_bytes(path: &Path, bytes: &[u8]) -> Result<OsvFeed, FeedError> {
    let mut feed = OsvFeed { budget: 64 + bytes.len() / ROW_BYTES, ..OsvFeed::default() };
    if !bytes.starts_with(b"PK\x03\x04") {
        parse_osv_record(path, None, bytes, &mut feed)?;
        return Ok(feed);
    }
    // The entry count from the end-of-central-directory record, before the zip crate parses
    // (and allocates for) every entry.
    let declared =
        zip_entry_count(bytes).ok_or_else(|| err(path, None, "not a readable zip: no end of central directory"))?;
    if declared > MAX_ZIP_ENTRIES as u64 {
        return Err(err(path, None, format!("{declared} entries, the limit is {MAX_ZIP_ENTRIES}")));
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| err(path, None, format!("not a readable zip: {e}")))?;
    if zip.len() > MAX_ZIP_ENTRIES {
        return Err(err(path, None, format!("{} entries, the limit is {MAX_ZIP_ENTRIES}", zip.len())));
    }
    // Entries may share compressed bytes: what they expand to is counted together.
    let cap = expansion_cap(bytes.len());
    let mut expanded = 0u64;
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| err(path, Some(format!("zip entry {i}")), e.to_string()))?;
        let name = entry.name().map(|n| n.to_string()).unwrap_or_else(|_| format!("#{i}"));
        if !name.ends_with(".json") {
            continue;
        }
        let data = read_record(path, entry).map_err(|e| err(path, Some(format!("zip entry {name}")), e.what))?;
        expanded += data.len() as u64;
        if expanded > cap {
            let what = format!("the records expand to more than {cap} bytes ({EXPANSION}x the file)");
            return Err(err(path, Some(format!("zip entry {name}")), what));
        }
        parse_osv_record(path, Some(&name), &data, &mut feed)?;
    }
    Ok(feed)
}

/// How many times its size a compressed feed file may expand to (real ones: under 15).
pub const EXPANSION: u64 = 64;

/// What a compressed file of `len` bytes may expand to.
fn expansion_cap(len: usize) -> u64 {
    (len as u64).saturating_mul(EXPANSION).saturating_add(1 << 20).min(MAX_FILE)
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
    parse_epss_bytes(path, read_file(path)?)
}

/// [`parse_epss`] of a file's bytes (`path` names it in errors).
pub fn parse_epss_bytes(path: &Path, raw: Vec<u8>) -> Result<EpssFeed, FeedError> {
    // Rows paid for by the input as given (the real gzip holds about one row per 8 bytes).
    let max_rows = 64 + raw.len() / 4;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let cap = expansion_cap(raw.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(cap + 1)
            .read_to_end(&mut out)
            .map_err(|e| err(path, None, format!("gzip: cannot read: {e}")))?;
        if out.len() as u64 > cap {
            return Err(err(path, None, format!("gzip: expands to more than {cap} bytes ({EXPANSION}x the file)")));
        }
        out
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
        if rows.len() >= max_rows {
            return Err(err(path, at(), format!("more than {max_rows} rows (one per 4 bytes of the file)")));
        }
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
    parse_kev_bytes(path, &read_file(path)?)
}

/// [`parse_kev`] of a file's bytes (`path` names it in errors).
pub fn parse_kev_bytes(path: &Path, bytes: &[u8]) -> Result<KevFeed, FeedError> {
    let k: KevJson = serde_json::from_slice(bytes).map_err(|e| {
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

    fn parse_one(json: &str) -> Result<OsvFeed, FeedError> {
        parse_osv_bytes(Path::new("t.json"), json.as_bytes())
    }

    #[test]
    fn a_small_record_naming_many_cves_and_events_is_refused_before_it_expands() {
        // 400 identifiers x 4000 events: 1.6 million rows from 70 KB.
        let aliases: Vec<String> = (0..400).map(|i| format!("\"CVE-2024-{:05}\"", 10000 + i)).collect();
        let events: Vec<&str> = (0..4000).map(|_| "{\"fixed\":\"1\"}").collect();
        let json = format!(
            "{{\"id\":\"DSA-1\",\"aliases\":[{}],\"affected\":[{{\"package\":{{\"ecosystem\":\"Debian:12\",\"name\":\"glibc\"}},\"ranges\":[{{\"type\":\"ECOSYSTEM\",\"events\":[{}]}}]}}]}}",
            aliases.join(","),
            events.join(",")
        );
        assert!(json.len() < 100_000);
        let e = parse_one(&json).unwrap_err();
        assert!(e.what.contains("would take the feed past"), "{}", e.what);
        // A real-sized one passes: 3 CVEs, two ranges.
        let ok = "{\"id\":\"DSA-2\",\"aliases\":[\"CVE-2024-0001\",\"CVE-2024-0002\",\"CVE-2024-0003\"],\"affected\":[{\"package\":{\"ecosystem\":\"Debian:12\",\"name\":\"glibc\"},\"ranges\":[{\"type\":\"ECOSYSTEM\",\"events\":[{\"introduced\":\"0\"},{\"fixed\":\"2.36-9+deb12u4\"}]}]}]}";
        assert_eq!(parse_one(ok).unwrap().affected.len(), 3);
        // Strings a row copies are bounded.
        let long = ok.replace("2.36-9+deb12u4", &"9".repeat(300));
        assert!(parse_one(&long).unwrap_err().what.contains("longer than 256 bytes"));
    }

    #[test]
    fn a_withdrawn_record_says_nothing_is_affected() {
        let json = "{\"id\":\"DEBIAN-CVE-2024-12345\",\"withdrawn\":\"2024-12-01T00:00:00Z\",\"affected\":[{\"package\":{\"ecosystem\":\"Debian:12\",\"name\":\"glibc\"},\"ranges\":[{\"type\":\"ECOSYSTEM\",\"events\":[{\"introduced\":\"0\"},{\"fixed\":\"2.36-9+deb12u4\"}]}]}]}";
        let feed = parse_one(json).unwrap();
        assert_eq!((feed.records, feed.withdrawn, feed.affected.len()), (1, 1, 0));
        let live = json.replace("\"withdrawn\":\"2024-12-01T00:00:00Z\",", "");
        assert_eq!(parse_one(&live).unwrap().affected.len(), 1);
    }

    #[test]
    fn a_zip_declaring_more_entries_than_allowed_is_refused_before_its_directory_is_read() {
        // A local-file signature, then a Zip64 end record declaring 10 million entries, its
        // locator and the classic end record saying 0xFFFF.
        let mut z = b"PK\x03\x04".to_vec();
        z.extend([0u8; 26]);
        let zip64_at = z.len() as u64;
        z.extend([0x50, 0x4b, 0x06, 0x06]);
        z.extend(44u64.to_le_bytes()); // size of the rest of the record
        z.extend([45, 0, 45, 0]); // versions
        z.extend([0u8; 8]); // disk numbers
        z.extend(10_000_000u64.to_le_bytes()); // entries on this disk
        z.extend(10_000_000u64.to_le_bytes()); // entries in all
        z.extend([0u8; 16]); // directory size and offset
        z.extend([0x50, 0x4b, 0x06, 0x07, 0, 0, 0, 0]);
        z.extend(zip64_at.to_le_bytes());
        z.extend(1u32.to_le_bytes());
        z.extend([0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        z.extend([0xff; 8]);
        z.extend([0, 0]);
        assert_eq!(zip_entry_count(&z), Some(10_000_000));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.zip");
        std::fs::write(&path, &z).unwrap();
        let e = parse_osv(&path).unwrap_err();
        assert!(e.what.contains("10000000 entries, the limit is"), "{}", e.what);
        assert_eq!(zip_entry_count(b"PK\x03\x04 no end record"), None);
    }

    #[test]
    fn a_gzip_of_repeated_epss_rows_is_refused_before_it_fills_memory() {
        use std::io::Write;
        let mut text =
            b"#model_version:v2025.03.14,score_date:2026-01-01T00:00:00+0000\ncve,epss,percentile\n".to_vec();
        for _ in 0..2_000_000 {
            text.extend_from_slice(b"CVE-2024-0001,0,0\n");
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&text).unwrap();
        let raw = gz.finish().unwrap();
        assert!(raw.len() < 200_000, "{}", raw.len());
        let e = parse_epss_bytes(Path::new("epss.csv.gz"), raw.clone()).unwrap_err();
        assert!(e.what.contains("expands to more than"), "{}", e.what);
        // Uncompressed, the same rows are refused by their count against the file's size.
        let mut short = text[..text.len() / 40].to_vec();
        short.truncate(short.iter().rposition(|b| *b == b'\n').unwrap() + 1);
        let rows_allowed = 64 + short.len() / 4;
        assert!(short.len() / 18 > rows_allowed / 10, "the sample must be sizeable");
        assert!(parse_epss_bytes(Path::new("epss.csv"), short).is_ok(), "a plain CSV pays for its rows");
    }
}
