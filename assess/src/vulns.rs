//! Assess and prioritise: which hosts are exposed to which CVE, from the collector's inventories
//! and the imported feeds, in priority order.
//!
//! A host is exposed to a CVE through a package when the OSV feed has an affected range for the
//! package's source name (dpkg's `Source:`, else its name), for the host's Debian release or for
//! any release, and the installed source version is inside it: at or above `introduced` (or any
//! version when there is none) and below `fixed` (or at most `last_affected`; or any version when
//! the range is open), in Debian version order.
//!
//! Priority (documented in docs/OPERATIONS.md): known exploited (CISA KEV) first, then by EPSS
//! score, then by CVSS base score, then by the number of exposed hosts; ties by CVE id.

use std::cmp::Ordering;
use std::collections::HashMap;

use anyhow::Result;
use lanpatch_protocol::CveId;
use lanpatch_protocol::control::{InventoryView, ReportView};
use serde::Serialize;

use crate::feeds::OsvAffected;
use crate::feedstore::{Epss, FeedStore, Kev};
use lanpatch_protocol::debver;

/// One host's exposure through one installed package.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Exposure {
    pub hostname: String,
    pub node: String,
    /// The binary package installed and its version.
    pub installed: String,
    pub version: String,
    /// The first fixed version for this host, if any.
    pub fixed: Option<String>,
}

/// One CVE in one source package, with every exposed host.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub cve: String,
    pub package: String,
    pub advisories: Vec<String>,
    pub cvss: Option<f64>,
    pub cvss_vector: Option<String>,
    pub epss: Option<Epss>,
    pub kev: Option<Kev>,
    pub hosts: Vec<Exposure>,
}

impl Finding {
    /// Hosts exposed (one host may be listed once per binary package of the source).
    pub fn host_count(&self) -> usize {
        let mut nodes: Vec<&str> = self.hosts.iter().map(|h| h.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.len()
    }
}

/// Whether `version` is inside the range. A bound that is not a Debian version cannot clear a
/// host: the host counts as exposed.
pub fn in_range(version: &str, a: &OsvAffected) -> bool {
    if a.introduced.as_deref().is_some_and(|i| debver::compare(version, i) == Some(Ordering::Less)) {
        return false;
    }
    match (&a.fixed, &a.last_affected) {
        (Some(f), _) => matches!(debver::compare(version, f), Some(Ordering::Less) | None),
        (None, Some(l)) => debver::compare(version, l) != Some(Ordering::Greater),
        (None, None) => true,
    }
}

/// Debian's release number from an os_version ("12", "12.5" -> "12").
fn release_of(os_version: &str) -> &str {
    os_version.split('.').next().unwrap_or(os_version)
}

/// Every exposure of `hosts` to the ranges in `by_package`, grouped by (CVE, package).
///
/// The matching itself borrows everything (hosts, packages and ranges are indices); strings are
/// copied only for the findings it returns.
pub fn exposures(hosts: &[InventoryView], by_package: &HashMap<String, Vec<OsvAffected>>) -> Vec<Finding> {
    // (cve, package) -> the ranges that matched, and (host, package index, range) per exposure.
    type Hit<'a> = (usize, usize, &'a OsvAffected);
    let mut found: HashMap<(&str, &str), Vec<Hit<'_>>> = HashMap::new();
    // A fleet runs few distinct versions of each package: the ranges a (package, version, release)
    // falls in are worked out once, however many hosts have it.
    let mut memo: HashMap<(&str, &str, &str, bool), Vec<&OsvAffected>> = HashMap::new();
    for (hi, h) in hosts.iter().enumerate() {
        let release = release_of(&h.os_version);
        let debian = h.os == "debian";
        for (pi, p) in h.packages.iter().enumerate() {
            let (src, ver) = p.source_key();
            let Some(ranges) = by_package.get(src) else { continue };
            let hits = memo.entry((src, ver, release, debian)).or_insert_with(|| {
                ranges
                    .iter()
                    .filter(|a| a.release.as_deref().is_none_or(|r| debian && r == release) && in_range(ver, a))
                    .collect()
            });
            for a in hits.iter() {
                found.entry((a.cve.as_str(), a.package.as_str())).or_default().push((hi, pi, a));
            }
        }
    }
    let mut out: Vec<Finding> = found
        .into_iter()
        .map(|((cve, package), hits)| {
            let mut f = Finding {
                cve: cve.to_string(),
                package: package.to_string(),
                advisories: Vec::new(),
                cvss: None,
                cvss_vector: None,
                epss: None,
                kev: None,
                hosts: Vec::with_capacity(hits.len()),
            };
            let mut seen = std::collections::HashSet::new();
            for (hi, pi, a) in hits {
                if !f.advisories.contains(&a.advisory) {
                    f.advisories.push(a.advisory.clone());
                }
                if a.cvss.is_some_and(|c| f.cvss.is_none_or(|old| c > old)) {
                    f.cvss = a.cvss;
                    f.cvss_vector = a.cvss_vector.clone();
                }
                // One line per installed package, even when several ranges matched it.
                if seen.insert((hi, pi)) {
                    let (h, p) = (&hosts[hi], &hosts[hi].packages[pi]);
                    f.hosts.push(Exposure {
                        hostname: h.hostname.clone(),
                        node: h.node.clone(),
                        installed: p.name.clone(),
                        version: p.version.clone(),
                        fixed: a.fixed.clone(),
                    });
                }
            }
            f
        })
        .collect();
    out.sort_by(|a, b| (&a.cve, &a.package).cmp(&(&b.cve, &b.package)));
    out
}

/// Adds EPSS and KEV from the store and sorts by priority.
pub fn prioritise(store: &FeedStore, mut findings: Vec<Finding>) -> Result<Vec<Finding>> {
    let (epss, kev) = (store.all_epss()?, store.all_kev()?);
    for f in &mut findings {
        f.epss = epss.get(&f.cve).copied();
        f.kev = kev.get(&f.cve).cloned();
        f.hosts.sort_by(|a, b| (&a.hostname, &a.installed).cmp(&(&b.hostname, &b.installed)));
    }
    findings.sort_by(priority);
    Ok(findings)
}

/// The documented priority order (most urgent first).
pub fn priority(a: &Finding, b: &Finding) -> Ordering {
    let key = |f: &Finding| (f.kev.is_some(), f.epss.map(|e| e.score).unwrap_or(-1.0), f.cvss.unwrap_or(-1.0));
    let (ka, kb) = (key(a), key(b));
    kb.0.cmp(&ka.0)
        .then(kb.1.total_cmp(&ka.1))
        .then(kb.2.total_cmp(&ka.2))
        .then(b.host_count().cmp(&a.host_count()))
        .then_with(|| a.cve.cmp(&b.cve))
        .then_with(|| a.package.cmp(&b.package))
}

/// Where a release stands against one CVE it lists: hosts it fixed (installed, or already at
/// the version), hosts still exposed without an outcome, and hosts where it failed.
#[derive(Debug, Serialize)]
pub struct CveRollout {
    pub cve: String,
    pub fixed: Vec<String>,
    pub pending: Vec<String>,
    /// Hostname and the state's label.
    pub failed: Vec<(String, String)>,
}

/// Per CVE of a release: from its reports (installed: fixed; a failure: failed) and the
/// exposures still found (exposed without either: pending).
pub fn cve_rollout(cves: &[CveId], found: &[Finding], reports: &[&ReportView]) -> Vec<CveRollout> {
    // Hosts by node key: two nodes may share a hostname (cloned images).
    let fixed: Vec<(&str, &str)> =
        reports.iter().filter(|r| r.state.is_installed()).map(|r| (r.node.as_str(), r.hostname.as_str())).collect();
    let failed: Vec<(&str, &str, String)> = reports
        .iter()
        .filter(|r| r.state.is_failure())
        .map(|r| (r.node.as_str(), r.hostname.as_str(), r.state.label()))
        .collect();
    let decided = |node: &str| fixed.iter().any(|(n, _)| *n == node) || failed.iter().any(|(n, _, _)| *n == node);
    let mut fixed_names: Vec<String> = fixed.iter().map(|(_, h)| h.to_string()).collect();
    fixed_names.sort();
    let mut failed_names: Vec<(String, String)> =
        failed.iter().map(|(_, h, why)| (h.to_string(), why.clone())).collect();
    failed_names.sort();
    cves.iter()
        .map(|c| {
            // A host exposed through two packages counts once.
            let mut hosts: Vec<(&str, &str)> = found
                .iter()
                .filter(|f| f.cve == c.as_str())
                .flat_map(|f| f.hosts.iter())
                .filter(|h| !decided(&h.node))
                .map(|h| (h.node.as_str(), h.hostname.as_str()))
                .collect();
            hosts.sort();
            hosts.dedup();
            let mut pending: Vec<String> = hosts.iter().map(|(_, h)| h.to_string()).collect();
            pending.sort();
            CveRollout {
                cve: c.as_str().to_string(),
                fixed: fixed_names.clone(),
                pending,
                failed: failed_names.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanpatch_protocol::{FailReason, ReleaseState, RollbackCause};

    fn range(intro: Option<&str>, fixed: Option<&str>, last: Option<&str>) -> OsvAffected {
        OsvAffected {
            cve: "CVE-2023-4911".into(),
            advisory: "DSA-5514-1".into(),
            package: "glibc".into(),
            release: Some("12".into()),
            introduced: intro.map(String::from),
            fixed: fixed.map(String::from),
            last_affected: last.map(String::from),
            cvss_vector: None,
            cvss: Some(7.8),
        }
    }

    #[test]
    fn ranges_follow_debian_version_order() {
        let fixed = range(None, Some("2.36-9+deb12u3"), None);
        assert!(in_range("2.36-9+deb12u1", &fixed));
        assert!(!in_range("2.36-9+deb12u3", &fixed));
        assert!(!in_range("2.36-9+deb12u10", &fixed), "u10 is after u3 in Debian order");
        let intro = range(Some("2.34-1"), Some("2.36-9+deb12u3"), None);
        assert!(!in_range("2.33-8", &intro));
        let last = range(None, None, Some("2.36-9+deb12u2"));
        assert!(in_range("2.36-9+deb12u2", &last) && !in_range("2.36-9+deb12u3", &last));
        assert!(in_range("1:0.1", &range(None, None, None)));
    }

    fn finding(cve: &str, kev: bool, epss: Option<f64>, cvss: Option<f64>) -> Finding {
        Finding {
            cve: cve.into(),
            package: "p".into(),
            advisories: vec![],
            cvss,
            cvss_vector: None,
            epss: epss.map(|score| Epss { score, percentile: 0.5 }),
            kev: kev.then(|| Kev { date_added: "2023-11-21".into(), due_date: "2023-12-12".into(), ransomware: false }),
            hosts: vec![],
        }
    }

    #[test]
    fn a_host_exposed_through_several_binary_packages_of_one_source_counts_once() {
        let e = |node: &str, pkg: &str| Exposure {
            hostname: node.into(),
            node: node.into(),
            installed: pkg.into(),
            version: "2.36-9".into(),
            fixed: None,
        };
        let f = Finding {
            cve: "CVE-2023-4911".into(),
            package: "glibc".into(),
            advisories: vec![],
            cvss: None,
            cvss_vector: None,
            epss: None,
            kev: None,
            hosts: vec![e("web-1", "libc6"), e("web-1", "libc-bin"), e("web-1", "locales"), e("web-2", "libc6")],
        };
        assert_eq!(f.host_count(), 2);
    }

    #[test]
    fn known_exploited_comes_first_then_epss_then_cvss() {
        let mut v = [
            finding("CVE-2000-0001", false, Some(0.9), Some(9.8)),
            finding("CVE-2000-0002", true, Some(0.01), Some(5.0)),
            finding("CVE-2000-0003", false, Some(0.9), Some(10.0)),
            finding("CVE-2000-0004", false, None, Some(10.0)),
            finding("CVE-2000-0005", false, Some(0.95), None),
        ];
        v.sort_by(priority);
        let order: Vec<&str> = v.iter().map(|f| f.cve.as_str()).collect();
        assert_eq!(order, ["CVE-2000-0002", "CVE-2000-0005", "CVE-2000-0003", "CVE-2000-0001", "CVE-2000-0004"]);
    }

    fn report(host: &str, state: ReleaseState) -> ReportView {
        ReportView {
            node: host.into(),
            hostname: host.into(),
            ring: "canary".into(),
            manifest: "00".into(),
            product: "openssl".into(),
            version: 8,
            state,
            detail: String::new(),
            exit_code: None,
            at: 0,
            seq: 1,
            progress: None,
            envelope: None,
        }
    }

    #[test]
    fn a_cve_counts_hosts_fixed_by_reports_failed_by_reports_and_pending_where_still_exposed() {
        let exposure = |h: &str| Exposure {
            hostname: h.into(),
            node: h.into(),
            installed: "libssl3".into(),
            version: "3.0.11-1~deb12u2".into(),
            fixed: Some("3.0.17-1~deb12u1".into()),
        };
        let found = vec![Finding {
            cve: "CVE-2025-0001".into(),
            package: "openssl".into(),
            advisories: vec![],
            cvss: None,
            cvss_vector: None,
            epss: None,
            kev: None,
            hosts: vec![exposure("web-2"), exposure("web-3"), exposure("web-4")],
        }];
        let reports = [
            report("web-1", ReleaseState::Installed),
            report("web-3", ReleaseState::RolledBack(RollbackCause::InstallFailed)),
            report("web-4", ReleaseState::Failed(FailReason::MissingDependency)),
        ];
        let cves: Vec<CveId> = vec!["CVE-2025-0001".parse().unwrap()];
        let r = cve_rollout(&cves, &found, &reports.iter().collect::<Vec<_>>());
        assert_eq!(r[0].fixed, ["web-1"]);
        assert_eq!(r[0].pending, ["web-2"]);
        assert_eq!(r[0].failed.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(), ["web-3", "web-4"]);
        assert!(r[0].failed[1].1.contains("dependency"));
    }
}
