//! Prints the encoded size in bytes of each node message lanpatch gossips (signed envelopes as
//! nodes send them), as one JSON object: the report-traffic simulation (bench/report_traffic.py)
//! takes its byte counts from here rather than guessing.
//!
//! usage: cargo run -p lanpatch-protocol --example message_sizes [PACKAGES=1500] [RELEASES=20]
#![allow(clippy::expect_used, clippy::print_stdout)]

use ed25519_dalek::SigningKey;
use lanpatch_protocol::report::{InstalledRelease, Package};
use lanpatch_protocol::{
    Digest, DownloadProgress, Hash32, Inventory, Mark, Payload, PublicKey, Pull, PullTarget, ReleaseState, Report,
    Signed, Timestamp, Version,
};

fn signed<T: Payload>(key: &SigningKey, value: T) -> usize {
    let mut s = Signed::new(value);
    s.sign(key);
    s.to_bytes().len()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let packages = args.first().copied().unwrap_or(1500);
    let releases = args.get(1).copied().unwrap_or(20);
    let key = SigningKey::from_bytes(&[7; 32]);
    let node = PublicKey(key.verifying_key().to_bytes());
    let ring: lanpatch_protocol::RingName = "broad".parse().expect("ring");
    // Every node message carries its author's certificate, signed here by one enroll key.
    let enroll = SigningKey::from_bytes(&[8; 32]);
    let mut c = Signed::new(lanpatch_protocol::NodeCertificate {
        fleet: Hash32([9; 32]),
        node,
        hostname: "ws-0421.branch.example".into(),
        ring: ring.clone(),
        site: "branch-12".parse().expect("site"),
        tags: vec!["office".parse().expect("tag")],
        issued: Timestamp(1_796_000_000),
        expires: Timestamp(1_827_536_000),
    });
    c.sign(&enroll);
    let cert = c.into_envelope();
    let hostname = "ws-0421.branch.example".to_string();
    let at = Timestamp(1_796_000_000);
    let seq = 1_796_000_000_123;
    let report = Report {
        node,
        hostname: hostname.clone(),
        ring: ring.clone(),
        manifest: Hash32([1; 32]),
        product: "openssl".parse().expect("product"),
        version: Version(202612011),
        state: ReleaseState::Installed,
        detail: "installed: openssl 3.0.15-1~deb12u2 (exit 0)".into(),
        exit_code: Some(0),
        at,
        seq,
        progress: Some(DownloadProgress {
            have_chunks: 74,
            total_chunks: 74,
            from_peers: 70 << 20,
            from_origin: 4 << 20,
        }),
        certificate: Some(cert.clone()),
        attempt: 0,
    };
    let inventory = Inventory {
        node,
        hostname: hostname.clone(),
        os: "debian".into(),
        os_version: "12".into(),
        kernel: "6.1.0-28-amd64".into(),
        arch: "x86_64".into(),
        ring: ring.clone(),
        tags: vec!["office".parse().expect("tag")],
        packages: (0..packages)
            .map(|i| Package {
                name: format!("package-{i:05}"),
                version: "2.36.1-8+deb12u1".into(),
                source: (i % 3 == 0).then(|| format!("source-{i:05}")),
                source_version: None,
            })
            .collect(),
        releases: (0..releases.min(256))
            .map(|i| InstalledRelease {
                product: "openssl".parse().expect("product"),
                version: Version(i as u64),
                manifest: Hash32([i as u8; 32]),
            })
            .collect(),
        at,
        seq,
        agent_version: "0.1.0".into(),
        certificate: Some(cert.clone()),
        reboot_required: None,
    };
    let digest = Digest {
        node,
        hostname,
        ring,
        at,
        inventory: seq,
        reports: (0..releases.min(256))
            .map(|i| Mark { manifest: Hash32([i as u8; 32]), seq: seq + i as u64 })
            .collect(),
        certificate: Some(cert.clone()),
    };
    let pull_one = Pull {
        node,
        target: PullTarget::Node(node),
        at,
        inventory: false,
        reports: vec![Hash32([1; 32])],
        certificate: Some(cert.clone()),
    };
    let pull_everyone =
        Pull { node, target: PullTarget::Everyone, at, inventory: false, reports: vec![], certificate: Some(cert) };
    println!(
        "{{\"packages\": {packages}, \"releases\": {releases}, \"report\": {}, \"inventory\": {}, \"digest\": {}, \"pull_one\": {}, \"pull_everyone\": {}}}",
        signed(&key, report),
        signed(&key, inventory),
        signed(&key, digest),
        signed(&key, pull_one),
        signed(&key, pull_everyone),
    );
}
