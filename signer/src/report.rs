//! Printing exposure findings for a terminal (`lanpatch-signer vulns`).

use lanpatch_assess::vulns::Finding;
use lanpatch_protocol::CveId;
use lanpatch_protocol::control::ReportView;
use serde::Serialize;

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
pub fn cve_rollout(cves: &[CveId], found: &[Finding], reports: &[ReportView]) -> Vec<CveRollout> {
    let fixed: Vec<String> = reports.iter().filter(|r| r.state.is_installed()).map(|r| r.hostname.clone()).collect();
    let failed: Vec<(String, String)> =
        reports.iter().filter(|r| r.state.is_failure()).map(|r| (r.hostname.clone(), r.state.label())).collect();
    cves.iter()
        .map(|c| {
            let mut pending: Vec<String> = found
                .iter()
                .filter(|f| f.cve == c.as_str())
                .flat_map(|f| f.hosts.iter().map(|h| h.hostname.clone()))
                .filter(|h| !fixed.contains(h) && !failed.iter().any(|(f, _)| f == h))
                .collect();
            pending.sort();
            pending.dedup();
            let mut fixed = fixed.clone();
            fixed.sort();
            CveRollout { cve: c.as_str().to_string(), fixed, pending, failed: failed.clone() }
        })
        .collect()
}

/// Prints [`cve_rollout`]'s result.
pub fn print_rollout(release: &str, rollout: &[CveRollout]) {
    for r in rollout {
        let failed: Vec<String> = r.failed.iter().map(|(h, why)| format!("{h}: {why}")).collect();
        println!(
            "{} by release {release}: fixed {} [{}], pending {} [{}], failed {} [{}]",
            r.cve,
            r.fixed.len(),
            r.fixed.join(", "),
            r.pending.len(),
            r.pending.join(", "),
            r.failed.len(),
            failed.join("; ")
        );
    }
}

/// Prints the findings as a table, most urgent first.
pub fn print_findings(findings: &[Finding]) {
    if findings.is_empty() {
        println!("no host is exposed to any CVE in the imported feeds");
        return;
    }
    for (i, f) in findings.iter().enumerate() {
        let cvss = f.cvss.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into());
        let epss =
            f.epss.map(|e| format!("{:.4} ({:.0}th pct)", e.score, e.percentile * 100.0)).unwrap_or_else(|| "-".into());
        let kev = match &f.kev {
            Some(k) => {
                format!("KNOWN EXPLOITED (due {}{})", k.due_date, if k.ransomware { ", ransomware" } else { "" })
            }
            None => String::new(),
        };
        println!("{:>3}. {} {} on {} host(s): CVSS {cvss}, EPSS {epss} {kev}", i + 1, f.cve, f.package, f.hosts.len());
        for h in &f.hosts {
            let fixed = h.fixed.as_deref().map(|v| format!("fixed in {v}")).unwrap_or_else(|| "no fix yet".into());
            println!("       {} {} {} ({fixed})", h.hostname, h.installed, h.version);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanpatch_assess::vulns::Exposure;
    use lanpatch_protocol::{FailReason, ReleaseState, RollbackCause};

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
        let r = cve_rollout(&cves, &found, &reports);
        assert_eq!(r[0].fixed, ["web-1"]);
        assert_eq!(r[0].pending, ["web-2"]);
        assert_eq!(r[0].failed.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(), ["web-3", "web-4"]);
        assert!(r[0].failed[1].1.contains("dependency"));
    }
}
