//! Shared by the fuzz targets and the seed generator: a fixed fleet (keys, root) and real
//! encodings of every message a node reads, for the seed corpora.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use lanpatch_protocol::manifest::FileHasher;
use lanpatch_protocol::report::{DownloadProgress, InstalledRelease, Package};
use lanpatch_protocol::{
    Approval, Command, Installer, RolloutRules, Wave, Hash32, Inventory, ProductName, PublicKey, ReleaseManifest, ReleaseState, Report, Role,
    RoleKeys, Root, Severity, SeverityLevel, Signed, Targets, Timestamp, Version, WaitReason, Yank, YankAction,
};

pub fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

fn public(k: &SigningKey) -> PublicKey {
    PublicKey(k.verifying_key().to_bytes())
}

/// A version-1 root: two keys per role, threshold 1, signed by both root keys.
pub fn root() -> Signed<Root> {
    let keys = RoleKeys { keys: vec![public(&key(1)), public(&key(2))], threshold: 1 };
    let roles: BTreeMap<Role, RoleKeys> = Role::ANY.iter().map(|r| (*r, keys.clone())).collect();
    let mut s = Signed::new(Root { version: Version(1), fleet: None, expires: Timestamp(4_000_000_000), roles });
    s.sign(&key(1));
    s.sign(&key(2));
    s
}

/// The fleet id of [`root`].
pub fn fleet() -> Hash32 {
    let r = root();
    lanpatch_protocol::fleet_id(r.value(), &r.envelope().payload)
}

/// A certificate enrolling node key 9 as kiosk-3 in ring canary, signed by an enroll key.
pub fn certificate() -> Signed<lanpatch_protocol::NodeCertificate> {
    let mut s = Signed::new(lanpatch_protocol::NodeCertificate {
        fleet: fleet(),
        node: public(&key(9)),
        hostname: "kiosk-3".into(),
        ring: "canary".parse().unwrap_or_else(|_| unreachable!()),
        site: "branch-12".parse().unwrap_or_else(|_| unreachable!()),
        tags: vec!["kiosk".parse().unwrap_or_else(|_| unreachable!())],
        issued: Timestamp(1_700_000_000),
        expires: Timestamp(4_000_000_000),
    });
    s.sign(&key(2));
    s
}

/// A revocation list naming node key 10.
pub fn revocations() -> Signed<lanpatch_protocol::Revocations> {
    let mut s = Signed::new(lanpatch_protocol::Revocations {
        fleet: fleet(),
        issued: Timestamp(1_700_000_500),
        nodes: vec![public(&key(10))],
    });
    s.sign(&key(1));
    s
}

fn product() -> ProductName {
    "openssl".parse().unwrap_or_else(|_| unreachable!())
}

pub fn manifest() -> Signed<ReleaseManifest> {
    let data = vec![7u8; 100_000];
    let mut h = FileHasher::new(16 * 1024);
    h.update(&data);
    let file = h.finish("bin/tool".parse().unwrap_or_else(|_| unreachable!()), true);
    let mut s = Signed::new(ReleaseManifest {
        product: product(),
        version: Version(7),
        label: "3.0.13-1".into(),
        description: "fixes CVE-2024-12797".into(),
        created: Timestamp(1_700_000_000),
        expires: Timestamp(4_000_000_000),
        files: vec![file],
        installer: Installer::Commands {
            install: Command { argv: vec!["sh".into(), "install.sh".into()], timeout_secs: 600 },
            rollback: Some(Command { argv: vec!["sh".into(), "rollback.sh".into()], timeout_secs: 600 }),
            detect: None,
        },
        targets: Targets { os: vec!["debian".into()], ..Targets::default() },
        severity: Severity {
            level: SeverityLevel::Critical,
            cves: vec!["CVE-2024-12797".parse().unwrap_or_else(|_| unreachable!())],
            cvss_tenths: Some(91),
            epss_bp: Some(4200),
            known_exploited: true,
            feed_dates: vec![lanpatch_protocol::manifest::FeedDate {
                feed: "epss".into(),
                date: "2026-11-30T00:00:00+0000".into(),
            }],
        },
        urgent: false,
        origins: vec!["https://mirror.example/openssl-7".into()],
    });
    s.sign(&key(1));
    s
}

pub fn approval(m: &Signed<ReleaseManifest>) -> Signed<Approval> {
    let mut s = Signed::new(Approval {
        manifest: m.payload_hash(),
        product: product(),
        version: Version(7),
        ring: "canary".parse().unwrap_or_else(|_| unreachable!()),
        issued: Timestamp(1_700_000_100),
        not_before: Timestamp(1_700_000_100),
        deadline: Some(Timestamp(1_700_100_000)),
        expires: Timestamp(4_000_000_000),
        forced_reason: None,
        rules: Some(RolloutRules {
            max_failure_bp: 500,
            min_reports: 3,
            waves: vec![Wave { percent: 10, min_soak_secs: 3600, min_success: 1 }, Wave { percent: 100, min_soak_secs: 0, min_success: 0 }],
        }),
        retry: Some(lanpatch_protocol::Retry { count: 3, spacing_secs: 600 }),
    });
    s.sign(&key(2));
    s
}

pub fn yank(m: &Signed<ReleaseManifest>) -> Signed<Yank> {
    let mut s = Signed::new(Yank {
        manifest: m.payload_hash(),
        product: product(),
        version: Version(7),
        action: YankAction::RollBack,
        reason: "breaks TLS 1.0 clients".into(),
        issued: Timestamp(1_700_000_200),
        expires: Timestamp(4_000_000_000),
    });
    s.sign(&key(2));
    s
}

pub fn report(m: &Signed<ReleaseManifest>) -> Signed<Report> {
    let node = key(9);
    let mut s = Signed::new(Report {
        node: public(&node),
        hostname: "kiosk-3".into(),
        ring: "canary".parse().unwrap_or_else(|_| unreachable!()),
        manifest: m.payload_hash(),
        product: product(),
        version: Version(7),
        state: ReleaseState::Waiting(WaitReason::OutsideWindow),
        detail: "approved, waiting for the maintenance window".into(),
        exit_code: None,
        at: Timestamp(1_700_000_300),
        seq: 1_700_000_300_123,
        progress: Some(DownloadProgress { have_chunks: 64, total_chunks: 64, from_peers: 7 << 20, from_origin: 1 << 20 }),
        certificate: Some(certificate().into_envelope()),
        attempt: 1,
    });
    s.sign(&node);
    s
}

/// A node's digest naming the release, and a pull of its report.
pub fn sync(m: &Signed<ReleaseManifest>) -> (Signed<lanpatch_protocol::Digest>, Signed<lanpatch_protocol::Pull>) {
    use lanpatch_protocol::{Digest, Mark, Pull, PullTarget};
    let node = key(9);
    let mut d = Signed::new(Digest {
        node: public(&node),
        hostname: "kiosk-3".into(),
        ring: "canary".parse().unwrap_or_else(|_| unreachable!()),
        at: Timestamp(1_700_000_400),
        inventory: 1_700_000_300_000,
        reports: vec![Mark { manifest: m.payload_hash(), seq: 1_700_000_300_123 }],
        certificate: Some(certificate().into_envelope()),
    });
    d.sign(&node);
    let asker = key(10);
    let mut p = Signed::new(Pull {
        node: public(&asker),
        target: PullTarget::Node(public(&node)),
        at: Timestamp(1_700_000_410),
        inventory: true,
        reports: vec![m.payload_hash()],
        certificate: None,
    });
    p.sign(&asker);
    (d, p)
}

pub fn inventory(m: &Signed<ReleaseManifest>) -> Signed<Inventory> {
    let node = key(9);
    let mut s = Signed::new(Inventory {
        node: public(&node),
        hostname: "kiosk-3".into(),
        os: "debian".into(),
        os_version: "12".into(),
        kernel: "6.1.0-18-amd64".into(),
        arch: "x86_64".into(),
        ring: "canary".parse().unwrap_or_else(|_| unreachable!()),
        tags: vec!["kiosk".parse().unwrap_or_else(|_| unreachable!())],
        packages: vec![Package {
            name: "libssl3".into(),
            version: "3.0.11-1~deb12u2".into(),
            source: Some("openssl".into()),
            source_version: None,
        }],
        releases: vec![InstalledRelease { product: product(), version: Version(7), manifest: m.payload_hash() }],
        at: Timestamp(1_700_000_400),
        seq: 1_700_000_400_000,
        agent_version: "0.1.0".into(),
        certificate: Some(certificate().into_envelope()),
        reboot_required: Some(vec!["libssl3".into()]),
    });
    s.sign(&node);
    s
}

pub fn statement(m: &Signed<ReleaseManifest>) -> Signed<lanpatch_protocol::Statement> {
    let mut s = Signed::new(lanpatch_protocol::Statement {
        fleet: Hash32([1; 32]),
        issued: Timestamp(1_799_999_000),
        expires: Timestamp(1_800_000_900),
        current: vec![lanpatch_protocol::Current {
            product: product(),
            version: Version(7),
            manifest: m.payload_hash(),
            rings: vec!["canary".parse().unwrap_or_else(|_| unreachable!())],
            yanked: false,
        }],
    });
    s.sign(&key(1));
    s
}

/// The hash of nothing in particular, for wire requests.
pub fn some_hash() -> Hash32 {
    Hash32([0x42; 32])
}

/// Peak heap use of a closure, for the targets that assert memory stays bounded by the input:
/// each such target installs [`peak::Counting`] as its global allocator.
pub mod peak {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// The system allocator, counting the bytes held and their peak.
    pub struct Counting;

    static NOW: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    fn grew(by: usize) {
        let now = NOW.fetch_add(by, Relaxed) + by;
        PEAK.fetch_max(now, Relaxed);
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; only sizes are counted.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            NOW.fetch_sub(layout.size(), Relaxed);
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                if new_size > layout.size() {
                    grew(new_size - layout.size());
                } else {
                    NOW.fetch_sub(layout.size() - new_size, Relaxed);
                }
            }
            p
        }
    }

    /// Runs `f`; returns the most bytes it held at once beyond what was held before.
    pub fn during(f: impl FnOnce()) -> usize {
        let base = NOW.load(Relaxed);
        PEAK.store(base, Relaxed);
        f();
        PEAK.load(Relaxed).saturating_sub(base)
    }

    /// Runs a feed parser on `data` (inputs up to 1 MiB) and asserts its peak heap stays under
    /// [`feed_bound`]: the body of every `feed_*` target.
    pub fn check_feed(data: &[u8], parse: impl FnOnce(&[u8])) {
        if data.len() > 1 << 20 {
            return;
        }
        let used = during(|| parse(data));
        assert!(used <= feed_bound(data.len()), "{} bytes of input held {used} bytes at once", data.len());
    }

    /// The bound a feed parser's peak must stay under for an input of `len` bytes (inputs up
    /// to 1 MiB): 64 MiB plus 128 bytes per input byte. Before the bounds, a 151 KB OSV record
    /// asked 1.7 GB.
    pub fn feed_bound(len: usize) -> usize {
        (64 << 20) + 128 * len
    }
}
