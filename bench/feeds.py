#!/usr/bin/env python3
"""Generates feed files of real size in the real formats, and inventories, for bench/feeds.sh.

  feeds.py OUT_DIR [EPSS_ROWS] [OSV_RECORDS] [HOSTS] [PACKAGES]

- OUT/epss.csv.gz: EPSS's daily CSV (comment line, header, one row per CVE), EPSS_ROWS rows;
- OUT/osv.zip: OSV's Debian zip export layout, OSV_RECORDS records (one JSON file each, a
  Debian:12 source package with an ECOSYSTEM range and a CVSS v3.1 vector);
- OUT/kev.json: a CISA KEV catalogue of 1,200 entries;
- OUT/inventories.json: HOSTS inventories (the control socket's JSON) of PACKAGES packages each,
  97 % of them at a version past every fix and 3 % at a random one (a managed fleet).
Deterministic (seeded), so runs compare.
"""
import gzip, json, os, random, sys, zipfile

out = sys.argv[1]
epss_rows = int(sys.argv[2]) if len(sys.argv) > 2 else 300_000
osv_records = int(sys.argv[3]) if len(sys.argv) > 3 else 50_000
hosts = int(sys.argv[4]) if len(sys.argv) > 4 else 1_000
packages = int(sys.argv[5]) if len(sys.argv) > 5 else 2_000
rnd = random.Random(42)
os.makedirs(out, exist_ok=True)

def cve(i):
    return f"CVE-{1999 + i % 27}-{10000 + i}"

with gzip.open(os.path.join(out, "epss.csv.gz"), "wt", compresslevel=6) as f:
    f.write("#model_version:v2025.03.14,score_date:2026-11-30T00:00:00+0000\ncve,epss,percentile\n")
    for i in range(epss_rows):
        f.write(f"{cve(i)},{rnd.random():.5f},{rnd.random():.5f}\n")

vectors = ["CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H",
           "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H", "CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N"]
with zipfile.ZipFile(os.path.join(out, "osv.zip"), "w", zipfile.ZIP_DEFLATED) as z:
    for i in range(osv_records):
        rec = {
            "id": f"DEBIAN-{cve(i)}", "modified": "2026-11-30T00:00:00Z", "upstream": [cve(i)],
            "summary": "synthetic record for the benchmark",
            "affected": [{"package": {"ecosystem": "Debian:12", "name": f"pkg{rnd.randrange(packages)}"},
                          "ranges": [{"type": "ECOSYSTEM",
                                      "events": [{"introduced": "0"}, {"fixed": f"1.{rnd.randrange(100)}-1"}]}]}],
            "severity": [{"type": "CVSS_V3", "score": rnd.choice(vectors)}], "schema_version": "1.6.0",
        }
        z.writestr(f"DEBIAN-{cve(i)}.json", json.dumps(rec))

kev = [{"cveID": cve(rnd.randrange(osv_records)), "vendorProject": "v", "product": "p", "vulnerabilityName": "n",
        "dateAdded": "2024-01-01", "shortDescription": "d", "requiredAction": "a", "dueDate": "2024-01-22",
        "knownRansomwareCampaignUse": "Unknown", "notes": "", "cwes": []} for _ in range(1200)]
with open(os.path.join(out, "kev.json"), "w") as f:
    json.dump({"title": "CISA Catalog of Known Exploited Vulnerabilities", "catalogVersion": "2026.11.30",
               "dateReleased": "2026-11-30T17:00:00Z", "count": len(kev), "vulnerabilities": kev}, f)

def version():
    # A managed fleet: 97 % of installed packages are at a version past every fix, 3 % behind.
    return "1.100-1" if rnd.random() < 0.97 else f"1.{rnd.randrange(100)}-1"

with open(os.path.join(out, "inventories.json"), "w") as f:
    f.write("[")
    for h in range(hosts):
        inv = {"node": f"{h:064x}", "hostname": f"host-{h}", "os": "debian", "os_version": "12",
               "kernel": "6.1.0-28-amd64", "arch": "x86_64", "ring": "broad", "tags": [],
               "packages": [{"name": f"pkg{p}", "version": version(), "source": None,
                             "source_version": None} for p in range(packages)],
               "releases": [], "at": 0, "seq": 0}
        f.write(("," if h else "") + json.dumps(inv))
    f.write("]")
