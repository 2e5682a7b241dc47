//! `lanpatch-signer release show`: a bundle's manifest, severity data, approvals and signatures.

use anyhow::Result;
use lanpatch_protocol::{Command, Installer, Limits, ReleaseManifest, Signed};

use crate::bundle::{self, Bundle};
use crate::report::print_json;
use crate::time;

pub fn show_release(b: &Bundle, limits: &Limits, json: bool) -> Result<()> {
    let signed = bundle::load::<ReleaseManifest>(&b.manifest_path(), limits)?;
    if json {
        return print_json(&release_json(&signed));
    }
    let m = signed.value();
    println!("{} version {} {}", m.product, m.version, m.label);
    if !m.description.is_empty() {
        println!("  {}", m.description);
    }
    println!("manifest hash: {}", signed.payload_hash());
    println!("created {}, expires {}", time::show(m.created), time::show(m.expires));
    let s = &m.severity;
    println!(
        "severity: {:?}{}{}{}{}",
        s.level,
        s.cvss_tenths.map(|c| format!(", CVSS {:.1}", f64::from(c) / 10.0)).unwrap_or_default(),
        s.epss_bp.map(|e| format!(", EPSS {:.4}", f64::from(e) / 10_000.0)).unwrap_or_default(),
        if s.known_exploited { ", known exploited" } else { "" },
        if m.urgent { ", URGENT" } else { "" },
    );
    if !s.cves.is_empty() {
        println!("CVEs: {}", s.cves.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" "));
    }
    if !s.feed_dates.is_empty() {
        let d: Vec<String> = s.feed_dates.iter().map(|f| format!("{} {}", f.feed, f.date)).collect();
        println!("scores from the feeds: {}", d.join(", "));
    }
    match &m.installer {
        Installer::Commands { install, rollback, detect } => {
            println!("install: {:?} (timeout {}s)", install.argv, install.timeout_secs);
            if let Some(c) = rollback {
                println!("rollback: {:?}", c.argv);
            }
            if let Some(c) = detect {
                println!("detect: {:?}", c.argv);
            }
        }
        Installer::Debian(d) => {
            let how = if d.add_new { "upgrades and adds" } else { "upgrades only what a host has" };
            println!("Debian packages, installed by the node with dpkg ({how}; timeout {}s):", d.timeout_secs);
            for p in &d.packages {
                println!(
                    "  {} {} {} (source {} {}), sha256 {}",
                    p.name,
                    p.version,
                    p.architecture,
                    p.source,
                    p.source_version,
                    p.sha256.to_hex()
                );
                match &p.archive {
                    Some(r) => println!("    listed by Debian's archive: {} ({}), {}", r.suite, r.date, r.index),
                    None => println!("    not checked against Debian's archive (no --apt-lists)"),
                }
            }
        }
    }
    let t = &m.targets;
    println!(
        "targets: os {:?} arch {:?} tags {:?} hosts {:?}",
        t.os,
        t.arch,
        t.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        t.hostnames
    );
    for o in &m.origins {
        println!("origin: {o}");
    }
    for f in &m.files {
        println!("  {} {} bytes, {} chunk(s), {}", f.path, f.size, f.chunks.len(), f.hash.short());
    }
    println!(
        "signatures: {}",
        signed.envelope().signatures.iter().map(|s| s.key.short()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

pub fn release_json(signed: &Signed<ReleaseManifest>) -> serde_json::Value {
    let m = signed.value();
    let s = &m.severity;
    let cmd = |c: &Command| serde_json::json!({ "argv": c.argv, "timeout_secs": c.timeout_secs });
    serde_json::json!({
        "manifest": signed.payload_hash().to_hex(),
        "product": m.product.to_string(),
        "version": m.version.0,
        "label": m.label,
        "description": m.description,
        "created": m.created.0,
        "expires": m.expires.0,
        "severity": {
            "level": format!("{:?}", s.level).to_lowercase(),
            "cves": s.cves.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "cvss": s.cvss_tenths.map(|c| f64::from(c) / 10.0),
            "epss": s.epss_bp.map(|e| f64::from(e) / 10_000.0),
            "known_exploited": s.known_exploited,
            "feed_dates": s.feed_dates.iter().map(|f| serde_json::json!({"feed": f.feed, "date": f.date})).collect::<Vec<_>>(),
        },
        "urgent": m.urgent,
        "installer": match &m.installer {
            Installer::Commands { install, rollback, detect } => serde_json::json!({
                "install": cmd(install), "rollback": rollback.as_ref().map(cmd), "detect": detect.as_ref().map(cmd),
            }),
            Installer::Debian(d) => serde_json::json!({
                "debian": {
                    "add_new": d.add_new,
                    "timeout_secs": d.timeout_secs,
                    "packages": d.packages.iter().map(|p| serde_json::json!({
                        "file": p.file.to_string(), "name": p.name, "version": p.version,
                        "architecture": p.architecture, "source": p.source, "source_version": p.source_version,
                        "sha256": p.sha256.to_hex(),
                        "archive": p.archive.as_ref().map(|r| serde_json::json!({
                            "suite": r.suite, "date": r.date, "index": r.index,
                        })),
                    })).collect::<Vec<_>>(),
                },
            }),
        },
        "targets": {
            "os": m.targets.os,
            "arch": m.targets.arch,
            "tags": m.targets.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "hostnames": m.targets.hostnames,
        },
        "origins": m.origins,
        "files": m.files.iter().map(|f| serde_json::json!({
            "path": f.path.to_string(), "size": f.size, "chunks": f.chunks.len(), "hash": f.hash.to_hex(),
            "executable": f.executable,
        })).collect::<Vec<_>>(),
        "signatures": signed.envelope().signatures.iter().map(|s| s.key.to_hex()).collect::<Vec<_>>(),
    })
}
