//! Printing for a terminal: exposure findings (`lanpatch-signer vulns`) and JSON for scripts.

use lanpatch_assess::vulns::{CveRollout, Finding};

/// Prints [`lanpatch_assess::vulns::cve_rollout`]'s result.
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
        println!("{:>3}. {} {} on {} host(s): CVSS {cvss}, EPSS {epss} {kev}", i + 1, f.cve, f.package, f.host_count());
        for h in &f.hosts {
            let fixed = h.fixed.as_deref().map(|v| format!("fixed in {v}")).unwrap_or_else(|| "no fix yet".into());
            println!("       {} {} {} ({fixed})", h.hostname, h.installed, h.version);
        }
    }
}

/// Pretty JSON on stdout, for every subcommand's `--json`.
pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
