//! The trust model: must-pass and must-fail cases side by side, plus encoding properties.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use lanpatch_protocol::verify::{self, Trusted};
use lanpatch_protocol::*;
use proptest::prelude::*;

const NOW: Timestamp = Timestamp(1_800_000_000);
const DAY: u64 = 86_400;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}
fn public(k: &SigningKey) -> PublicKey {
    PublicKey(k.verifying_key().to_bytes())
}

/// A fleet: 3 root keys (2-of-3), 3 release keys (2-of-3), 2 approve keys (1-of-2).
struct Fleet {
    root_keys: Vec<SigningKey>,
    release_keys: Vec<SigningKey>,
    approve_keys: Vec<SigningKey>,
    root: Signed<Root>,
}

fn role(keys: &[SigningKey], threshold: u32) -> RoleKeys {
    RoleKeys { keys: keys.iter().map(public).collect(), threshold }
}

fn root_value(
    version: u64,
    fleet: Option<Hash32>,
    root_keys: &[SigningKey],
    release: &[SigningKey],
    approve: &[SigningKey],
) -> Root {
    let mut roles = BTreeMap::new();
    roles.insert(Role::Root, role(root_keys, 2));
    roles.insert(Role::Release, role(release, 2));
    roles.insert(Role::Approve, role(approve, 1));
    Root { version: Version(version), fleet, expires: NOW.plus_secs(365 * DAY), roles }
}

fn fleet() -> Fleet {
    let root_keys = vec![key(1), key(2), key(3)];
    let release_keys = vec![key(11), key(12), key(13)];
    let approve_keys = vec![key(21), key(22)];
    let mut root = Signed::new(root_value(1, None, &root_keys, &release_keys, &approve_keys));
    root.sign(&root_keys[0]);
    root.sign(&root_keys[1]);
    Fleet { root_keys, release_keys, approve_keys, root }
}

fn file(path: &str, bytes: &[u8]) -> FileEntry {
    let mut h = FileHasher::new(16 * 1024);
    h.update(bytes);
    h.finish(path.parse().unwrap(), false)
}

fn manifest_value(version: u64) -> ReleaseManifest {
    ReleaseManifest {
        product: "openssl".parse().unwrap(),
        version: Version(version),
        label: format!("3.0.{version}"),
        description: "fixes things".into(),
        created: NOW,
        expires: NOW.plus_secs(30 * DAY),
        files: vec![file("pkg/openssl.deb", &vec![7u8; 40_000])],
        installer: Installer::Commands {
            install: Command { argv: vec!["sh".into(), "install.sh".into()], timeout_secs: 60 },
            rollback: Some(Command { argv: vec!["sh".into(), "rollback.sh".into()], timeout_secs: 60 }),
            detect: None,
        },
        targets: Targets { os: vec!["linux".into()], ..Targets::default() },
        severity: Severity {
            level: SeverityLevel::Critical,
            cves: vec!["CVE-2024-3094".parse().unwrap()],
            cvss_tenths: Some(98),
            epss_bp: Some(9730),
            known_exploited: true,
            feed_dates: vec![],
        },
        urgent: false,
        origins: vec![],
    }
}

fn signed_manifest(_fleet: &Fleet, version: u64, signers: &[&SigningKey]) -> Signed<ReleaseManifest> {
    let mut m = Signed::new(manifest_value(version));
    for k in signers {
        m.sign(k);
    }
    m
}

fn approval_value(m: &Signed<ReleaseManifest>, ring: &str) -> Approval {
    Approval {
        manifest: m.payload_hash(),
        product: m.value().product.clone(),
        version: m.value().version,
        ring: ring.parse().unwrap(),
        issued: NOW,
        not_before: NOW,
        deadline: None,
        expires: NOW.plus_secs(7 * DAY),
        forced_reason: None,
        rules: None,
        retry: Some(Retry { count: 3, spacing_secs: 600 }),
    }
}

fn check_manifest(
    f: &Fleet,
    m: &Signed<ReleaseManifest>,
    trusted: Option<Trusted>,
) -> Result<Signed<ReleaseManifest>, VerifyError> {
    verify::verify_manifest(&m.to_bytes(), f.root.value(), &Limits::default(), NOW, trusted)
}

// ---- must pass --------------------------------------------------------------------------------

#[test]
fn manifest_signed_by_threshold_of_release_keys_is_accepted() {
    let f = fleet();
    let m = signed_manifest(&f, 1, &[&f.release_keys[0], &f.release_keys[2]]);
    let ok = check_manifest(&f, &m, None).unwrap();
    assert_eq!(ok.value(), m.value());
}

#[test]
fn first_root_signed_by_own_threshold_is_accepted() {
    let f = fleet();
    assert!(verify::verify_first_root(&f.root.to_bytes(), &Limits::default(), NOW).is_ok());
}

#[test]
fn approval_signed_by_approve_key_is_accepted_and_matches_manifest() {
    let f = fleet();
    let m = signed_manifest(&f, 1, &[&f.release_keys[0], &f.release_keys[1]]);
    let mut a = Signed::new(approval_value(&m, "canary"));
    a.sign(&f.approve_keys[1]);
    let ok = verify::verify_approval(&a.to_bytes(), f.root.value(), &Limits::default(), NOW).unwrap();
    assert!(verify::approval_matches(ok.value(), &m).is_ok());
}

#[test]
fn rotation_signed_by_old_and_new_thresholds_is_accepted() {
    let f = fleet();
    let fleet_id = fleet_id(f.root.value(), &f.root.envelope().payload);
    let new_root_keys = vec![key(4), key(5), key(6)];
    let mut next = Signed::new(root_value(2, Some(fleet_id), &new_root_keys, &f.release_keys, &f.approve_keys));
    next.sign(&f.root_keys[0]);
    next.sign(&f.root_keys[2]);
    next.sign(&new_root_keys[0]);
    next.sign(&new_root_keys[1]);
    let ok = verify::verify_root_update(&f.root, &next.to_bytes(), &Limits::default(), NOW).unwrap();
    assert_eq!(ok.value().version, Version(2));
}

#[test]
fn same_manifest_seen_again_is_accepted_idempotently() {
    let f = fleet();
    let m = signed_manifest(&f, 3, &[&f.release_keys[0], &f.release_keys[1]]);
    let trusted = Trusted { version: Version(3), manifest: m.payload_hash() };
    assert!(check_manifest(&f, &m, Some(trusted)).is_ok());
}

#[test]
fn received_chunk_matching_signed_hash_is_accepted() {
    let bytes = vec![9u8; 40_000];
    let entry = file("a.bin", &bytes);
    assert_eq!(entry.chunks.len(), 3);
    for i in 0..3u32 {
        let (off, len) = entry.chunk_range(i).unwrap();
        verify_chunk(&entry, i, &bytes[off as usize..off as usize + len as usize]).unwrap();
    }
}

// ---- must fail --------------------------------------------------------------------------------

#[test]
fn manifest_signed_by_wrong_key_is_refused() {
    let f = fleet();
    // Approve keys are real fleet keys, but not release keys.
    let m = signed_manifest(&f, 1, &[&f.approve_keys[0], &f.approve_keys[1]]);
    let err = check_manifest(&f, &m, None).unwrap_err();
    assert!(
        matches!(err, VerifyError::Signature(SignatureError::BelowThreshold { valid: 0, unknown: 2, .. })),
        "{err}"
    );
}

#[test]
fn manifest_with_too_few_signatures_is_refused_naming_the_threshold() {
    let f = fleet();
    let m = signed_manifest(&f, 1, &[&f.release_keys[0]]);
    let err = check_manifest(&f, &m, None).unwrap_err();
    assert!(matches!(err, VerifyError::Signature(SignatureError::BelowThreshold { threshold: 2, valid: 1, .. })));
    assert!(err.to_string().contains("release threshold not met"), "{err}");
}

#[test]
fn same_key_signing_twice_counts_once() {
    let f = fleet();
    let mut m = signed_manifest(&f, 1, &[&f.release_keys[0]]);
    let dup = m.envelope().signatures[0].clone();
    let mut env = m.clone().into_envelope();
    env.signatures.push(dup);
    m = Signed::open(env, &Limits::default()).unwrap();
    let err = check_manifest(&f, &m, None).unwrap_err();
    assert!(
        matches!(err, VerifyError::Signature(SignatureError::BelowThreshold { valid: 1, duplicate: 1, .. })),
        "{err}"
    );
}

#[test]
fn signature_over_other_bytes_is_counted_invalid() {
    let f = fleet();
    let m = signed_manifest(&f, 1, &[&f.release_keys[0], &f.release_keys[1]]);
    let mut env = m.into_envelope();
    env.signatures[1].sig[0] ^= 1;
    let err = verify::verify_manifest(&env.to_bytes(), f.root.value(), &Limits::default(), NOW, None).unwrap_err();
    assert!(
        matches!(err, VerifyError::Signature(SignatureError::BelowThreshold { valid: 1, invalid: 1, .. })),
        "{err}"
    );
}

#[test]
fn manifest_signature_replayed_as_approval_is_refused() {
    let f = fleet();
    let m = signed_manifest(&f, 1, &[&f.release_keys[0], &f.release_keys[1]]);
    let mut env = m.into_envelope();
    env.kind = Kind::Approval;
    let err = verify::verify_approval(&env.to_bytes(), f.root.value(), &Limits::default(), NOW).unwrap_err();
    assert!(matches!(err, VerifyError::Signature(SignatureError::BelowThreshold { .. })), "{err}");
}

#[test]
fn unknown_role_name_is_refused() {
    let err = "admin".parse::<Role>().unwrap_err();
    assert!(err.to_string().contains("unknown role"), "{err}");
}

#[test]
fn root_with_unknown_role_tag_fails_to_decode() {
    let f = fleet();
    let mut payload = f.root.envelope().payload.clone();
    // Layout: version varint (1), fleet option tag (0), expires varint (5 bytes), map length (3),
    // then the first role's enum tag. Make that tag an undefined role.
    let map_len_at = 1 + 1 + 5;
    assert_eq!(payload[map_len_at], 3);
    payload[map_len_at + 1] = 9;
    let env = Envelope { kind: Kind::Root, payload, signatures: vec![] };
    let err = verify::verify_first_root(&env.to_bytes(), &Limits::default(), NOW).unwrap_err();
    assert!(matches!(err, VerifyError::Decode(_)), "{err}");
}

#[test]
fn root_missing_a_role_is_refused() {
    let f = fleet();
    let mut r = f.root.value().clone();
    r.roles.remove(&Role::Approve);
    let mut s = Signed::new(r);
    s.sign(&f.root_keys[0]);
    s.sign(&f.root_keys[1]);
    let err = verify::verify_first_root(&s.to_bytes(), &Limits::default(), NOW).unwrap_err();
    assert_eq!(err, VerifyError::Invalid(ValidationError::MissingRole(Role::Approve)));
}

#[test]
fn expired_manifest_is_refused() {
    let f = fleet();
    let m = signed_manifest(&f, 1, &[&f.release_keys[0], &f.release_keys[1]]);
    let later = NOW.plus_secs(31 * DAY);
    let err = verify::verify_manifest(&m.to_bytes(), f.root.value(), &Limits::default(), later, None).unwrap_err();
    assert!(matches!(err, VerifyError::Expired { what: "release manifest", .. }), "{err}");
}

#[test]
fn expired_approval_is_refused() {
    let f = fleet();
    let m = signed_manifest(&f, 1, &[&f.release_keys[0], &f.release_keys[1]]);
    let mut a = Signed::new(approval_value(&m, "broad"));
    a.sign(&f.approve_keys[0]);
    let later = NOW.plus_secs(8 * DAY);
    let err = verify::verify_approval(&a.to_bytes(), f.root.value(), &Limits::default(), later).unwrap_err();
    assert!(matches!(err, VerifyError::Expired { what: "approval", .. }), "{err}");
}

#[test]
fn expired_root_is_refused() {
    let f = fleet();
    let later = NOW.plus_secs(366 * DAY);
    let err = verify::verify_first_root(&f.root.to_bytes(), &Limits::default(), later).unwrap_err();
    assert!(matches!(err, VerifyError::Expired { what: "trust root", .. }), "{err}");
}

#[test]
fn lower_version_than_trusted_is_refused_as_rollback() {
    let f = fleet();
    let m = signed_manifest(&f, 4, &[&f.release_keys[0], &f.release_keys[1]]);
    let trusted = Trusted { version: Version(5), manifest: Hash32([1; 32]) };
    let err = check_manifest(&f, &m, Some(trusted)).unwrap_err();
    assert!(matches!(err, VerifyError::Rollback { trusted: Version(5), offered: Version(4), .. }), "{err}");
}

#[test]
fn same_version_with_other_content_is_refused() {
    let f = fleet();
    let m = signed_manifest(&f, 5, &[&f.release_keys[0], &f.release_keys[1]]);
    let trusted = Trusted { version: Version(5), manifest: Hash32([1; 32]) };
    assert!(matches!(check_manifest(&f, &m, Some(trusted)), Err(VerifyError::VersionConflict { .. })));
}

#[test]
fn rotation_without_old_threshold_is_refused() {
    let f = fleet();
    let fleet_id = fleet_id(f.root.value(), &f.root.envelope().payload);
    let new_root_keys = vec![key(4), key(5), key(6)];
    let mut next = Signed::new(root_value(2, Some(fleet_id), &new_root_keys, &f.release_keys, &f.approve_keys));
    next.sign(&f.root_keys[0]); // only one old key
    next.sign(&new_root_keys[0]);
    next.sign(&new_root_keys[1]);
    let err = verify::verify_root_update(&f.root, &next.to_bytes(), &Limits::default(), NOW).unwrap_err();
    assert!(
        matches!(err, VerifyError::Signature(SignatureError::BelowThreshold { role: Role::Root, valid: 1, .. })),
        "{err}"
    );
}

#[test]
fn rotation_without_new_threshold_is_refused() {
    let f = fleet();
    let fleet_id = fleet_id(f.root.value(), &f.root.envelope().payload);
    let new_root_keys = vec![key(4), key(5), key(6)];
    let mut next = Signed::new(root_value(2, Some(fleet_id), &new_root_keys, &f.release_keys, &f.approve_keys));
    next.sign(&f.root_keys[0]);
    next.sign(&f.root_keys[1]);
    next.sign(&new_root_keys[0]);
    assert!(verify::verify_root_update(&f.root, &next.to_bytes(), &Limits::default(), NOW).is_err());
}

#[test]
fn rotation_skipping_a_version_or_changing_fleet_is_refused() {
    let f = fleet();
    let fid = fleet_id(f.root.value(), &f.root.envelope().payload);
    let sign_all = |r: Root| {
        let mut s = Signed::new(r);
        for k in &f.root_keys {
            s.sign(k);
        }
        s
    };
    let skip = sign_all(root_value(3, Some(fid), &f.root_keys, &f.release_keys, &f.approve_keys));
    assert!(matches!(
        verify::verify_root_update(&f.root, &skip.to_bytes(), &Limits::default(), NOW),
        Err(VerifyError::RootVersion { .. })
    ));
    let other = sign_all(root_value(2, Some(Hash32([7; 32])), &f.root_keys, &f.release_keys, &f.approve_keys));
    assert!(matches!(
        verify::verify_root_update(&f.root, &other.to_bytes(), &Limits::default(), NOW),
        Err(VerifyError::FleetMismatch { .. })
    ));
}

#[test]
fn tampered_chunk_is_refused() {
    let bytes = vec![9u8; 40_000];
    let entry = file("a.bin", &bytes);
    let mut chunk = bytes[..16 * 1024].to_vec();
    chunk[100] ^= 0xff;
    assert!(matches!(verify_chunk(&entry, 0, &chunk), Err(ChunkError::HashMismatch { index: 0, .. })));
    assert!(matches!(verify_chunk(&entry, 2, &bytes[..10]), Err(ChunkError::WrongLength { .. })));
    assert!(matches!(verify_chunk(&entry, 3, &bytes[..10]), Err(ChunkError::NoSuchChunk { .. })));
}

#[test]
fn a_verified_chunk_is_made_only_from_bytes_that_match_and_a_refusal_returns_the_buffer() {
    let bytes = vec![9u8; 40_000];
    let entry = file("a.bin", &bytes);
    let ok = VerifiedChunk::verify(&entry, 1, bytes[16 * 1024..32 * 1024].to_vec()).unwrap();
    assert_eq!((ok.index(), ok.hash(), ok.len()), (1, entry.chunks[1], 16 * 1024));
    let mut bad = bytes[..16 * 1024].to_vec();
    bad[7] ^= 1;
    let (e, back) = VerifiedChunk::verify(&entry, 0, bad.clone()).unwrap_err();
    assert!(matches!(e, ChunkError::HashMismatch { index: 0, .. }));
    assert_eq!(back, bad, "the refused buffer comes back unchanged");
    assert!(matches!(VerifiedChunk::verify(&entry, 9, vec![0; 10]), Err((ChunkError::NoSuchChunk { .. }, _))));
}

#[test]
fn tampered_file_hash_breaks_the_signatures() {
    let f = fleet();
    let m = signed_manifest(&f, 1, &[&f.release_keys[0], &f.release_keys[1]]);
    let mut value = m.value().clone();
    value.files[0].chunks[0] = Hash32([0; 32]);
    // Re-encode the tampered payload but keep the original signatures.
    let mut env = Signed::new(value).into_envelope();
    env.signatures = m.envelope().signatures.clone();
    let err = verify::verify_manifest(&env.to_bytes(), f.root.value(), &Limits::default(), NOW, None).unwrap_err();
    assert!(
        matches!(err, VerifyError::Signature(SignatureError::BelowThreshold { valid: 0, invalid: 2, .. })),
        "{err}"
    );
}

#[test]
fn oversize_description_is_refused() {
    let f = fleet();
    let mut value = manifest_value(1);
    value.description = "x".repeat(5000);
    let mut m = Signed::new(value);
    m.sign(&f.release_keys[0]);
    m.sign(&f.release_keys[1]);
    let err = check_manifest(&f, &m, None).unwrap_err();
    assert!(matches!(err, VerifyError::Invalid(ValidationError::TooLong { field: "description", .. })), "{err}");
}

#[test]
fn oversize_envelope_is_refused_before_decoding() {
    let limits = Limits { max_envelope_bytes: 100, ..Limits::default() };
    let f = fleet();
    let m = signed_manifest(&f, 1, &[&f.release_keys[0], &f.release_keys[1]]);
    let err = verify::verify_manifest(&m.to_bytes(), f.root.value(), &limits, NOW, None).unwrap_err();
    assert!(matches!(err, VerifyError::Decode(DecodeError::TooLarge { max: 100, .. })), "{err}");
}

#[test]
fn too_many_signatures_are_refused() {
    let limits = Limits { max_signatures: 2, ..Limits::default() };
    let f = fleet();
    let m = signed_manifest(&f, 1, &[&f.release_keys[0], &f.release_keys[1], &f.release_keys[2]]);
    let err = verify::verify_manifest(&m.to_bytes(), f.root.value(), &limits, NOW, None).unwrap_err();
    assert!(matches!(err, VerifyError::Signature(SignatureError::TooManySignatures { count: 3, max: 2 })), "{err}");
}

#[test]
fn path_with_parent_component_in_signed_manifest_is_refused() {
    let f = fleet();
    let good = signed_manifest(&f, 1, &[]);
    // Build a payload whose file name is "../../etc/passwd" by swapping the encoded name.
    let good_name = "pkg/openssl.deb";
    let evil_name = "../../etc/passw"; // same length keeps the length prefix valid
    assert_eq!(good_name.len(), evil_name.len());
    let mut payload = good.envelope().payload.clone();
    let at = payload.windows(good_name.len()).position(|w| w == good_name.as_bytes()).unwrap();
    payload[at..at + evil_name.len()].copy_from_slice(evil_name.as_bytes());
    let mut env = Envelope { kind: Kind::Manifest, payload, signatures: vec![] };
    env.sign(&f.release_keys[0]);
    env.sign(&f.release_keys[1]);
    let err = verify::verify_manifest(&env.to_bytes(), f.root.value(), &Limits::default(), NOW, None).unwrap_err();
    match err {
        VerifyError::Decode(DecodeError::Invalid { reason: NameError::BadComponent(p), .. }) => {
            assert_eq!(p, evil_name)
        }
        other => panic!("expected a path refusal, got {other}"),
    }
}

#[test]
fn root_with_impossible_threshold_is_refused() {
    let f = fleet();
    let mut r = f.root.value().clone();
    r.roles.get_mut(&Role::Release).unwrap().threshold = 4;
    let mut s = Signed::new(r);
    s.sign(&f.root_keys[0]);
    s.sign(&f.root_keys[1]);
    let err = verify::verify_first_root(&s.to_bytes(), &Limits::default(), NOW).unwrap_err();
    assert!(matches!(
        err,
        VerifyError::Invalid(ValidationError::BadThreshold { role: Role::Release, threshold: 4, keys: 3 })
    ));
}

#[test]
fn approval_for_other_manifest_does_not_match() {
    let f = fleet();
    let m1 = signed_manifest(&f, 1, &[&f.release_keys[0], &f.release_keys[1]]);
    let m2 = signed_manifest(&f, 2, &[&f.release_keys[0], &f.release_keys[1]]);
    assert!(verify::approval_matches(&approval_value(&m1, "broad"), &m2).is_err());
}

// ---- encoding properties ----------------------------------------------------------------------

fn roundtrip<T: Payload + PartialEq + std::fmt::Debug + Clone>(value: T) {
    let s = Signed::new(value.clone());
    let back = Signed::<T>::decode(&s.to_bytes(), &Limits::default()).unwrap();
    assert_eq!(back.value(), &value);
    assert_eq!(back.to_bytes(), s.to_bytes(), "encoding is deterministic");
}

#[test]
fn every_payload_type_round_trips() {
    let f = fleet();
    roundtrip(f.root.value().clone());
    let m = signed_manifest(&f, 1, &[]);
    roundtrip(m.value().clone());
    roundtrip(approval_value(&m, "pilot"));
    roundtrip(Yank {
        manifest: m.payload_hash(),
        product: m.value().product.clone(),
        version: Version(1),
        action: YankAction::RollBack,
        reason: "breaks printing".into(),
        issued: NOW,
        expires: NOW.plus_secs(DAY),
    });
}

fn report_value(node: &SigningKey) -> Report {
    Report {
        node: public(node),
        hostname: "kiosk-7".into(),
        ring: "canary".parse().unwrap(),
        manifest: Hash32([4; 32]),
        product: "tool".parse().unwrap(),
        version: Version(3),
        state: ReleaseState::RolledBack(lanpatch_protocol::RollbackCause::InstallFailed),
        detail: "install exited with 3".into(),
        exit_code: Some(3),
        at: NOW,
        seq: 17,
        progress: Some(lanpatch_protocol::DownloadProgress {
            have_chunks: 3,
            total_chunks: 8,
            from_peers: 2 << 20,
            from_origin: 1 << 20,
        }),
        certificate: None,
        attempt: 1,
    }
}

#[test]
fn node_reports_and_inventories_round_trip() {
    roundtrip(report_value(&key(40)));
    roundtrip(Inventory {
        node: public(&key(40)),
        hostname: "kiosk-7".into(),
        os: "debian".into(),
        os_version: "12".into(),
        kernel: "6.1.0".into(),
        arch: "x86_64".into(),
        ring: "broad".parse().unwrap(),
        tags: vec!["kiosk".parse().unwrap()],
        packages: vec![lanpatch_protocol::report::Package {
            name: "openssl".into(),
            version: "3.0.11-1~deb12u2".into(),
            source: None,
            source_version: None,
        }],
        releases: vec![],
        at: NOW,
        seq: 1,
        agent_version: "0.1.0".into(),
        certificate: None,
        reboot_required: Some(vec!["linux-image-6.1.0-30-amd64".into()]),
    });
}

#[test]
fn report_signed_by_the_node_it_names_is_accepted() {
    let node = key(40);
    let mut r = Signed::new(report_value(&node));
    r.sign(&node);
    assert!(lanpatch_protocol::report::verify_node_signed::<Report>(&r.to_bytes(), &Limits::default()).is_ok());
}

#[test]
fn report_speaking_for_another_node_is_refused() {
    let mut r = Signed::new(report_value(&key(40)));
    r.sign(&key(41));
    let err = lanpatch_protocol::report::verify_node_signed::<Report>(&r.to_bytes(), &Limits::default()).unwrap_err();
    assert_eq!(err, VerifyError::NotSignedByNode);
}

#[test]
fn oversize_report_detail_is_refused() {
    let node = key(40);
    let mut v = report_value(&node);
    v.detail = "x".repeat(5000);
    let mut r = Signed::new(v);
    r.sign(&node);
    let err = lanpatch_protocol::report::verify_node_signed::<Report>(&r.to_bytes(), &Limits::default()).unwrap_err();
    assert!(matches!(err, VerifyError::Invalid(ValidationError::TooLong { field: "detail", .. })), "{err}");
}

proptest! {
    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let limits = Limits::default();
        let _ = Envelope::decode(&bytes, &limits);
        let _ = Signed::<ReleaseManifest>::decode(&bytes, &limits);
        let _ = Signed::<Root>::decode(&bytes, &limits);
        let _ = Signed::<Approval>::decode(&bytes, &limits);
        let _ = Signed::<Yank>::decode(&bytes, &limits);
        let _ = Signed::<Report>::decode(&bytes, &limits);
        let _ = Signed::<Inventory>::decode(&bytes, &limits);
    }

    #[test]
    fn truncated_envelopes_give_typed_errors(cut in 0usize..1000) {
        let f = fleet();
        let m = signed_manifest(&f, 1, &[&f.release_keys[0]]);
        let bytes = m.to_bytes();
        let cut = cut % bytes.len();
        prop_assert!(Signed::<ReleaseManifest>::decode(&bytes[..cut], &Limits::default()).is_err());
    }

    #[test]
    fn flipped_payload_bits_never_verify(pos in 0usize..4000, bit in 0u8..8) {
        let f = fleet();
        let m = signed_manifest(&f, 1, &[&f.release_keys[0], &f.release_keys[1]]);
        let mut env = m.into_envelope();
        let pos = pos % env.payload.len();
        env.payload[pos] ^= 1 << bit;
        prop_assert!(verify::verify_manifest(&env.to_bytes(), f.root.value(), &Limits::default(), NOW, None).is_err());
    }

    #[test]
    fn manifests_round_trip(version in 1u64.., cvss in 0u8..=100, epss in 0u16..=10000, urgent: bool, label in "[a-z0-9.]{0,20}") {
        let mut v = manifest_value(1);
        v.version = Version(version);
        v.severity.cvss_tenths = Some(cvss);
        v.severity.epss_bp = Some(epss);
        v.urgent = urgent;
        v.label = label;
        roundtrip(v);
    }

    #[test]
    fn chunk_hashes_do_not_depend_on_how_bytes_are_fed(data in proptest::collection::vec(any::<u8>(), 0..70_000), split in 1usize..9000) {
        let mut whole = FileHasher::new(16 * 1024);
        whole.update(&data);
        let mut pieces = FileHasher::new(16 * 1024);
        for piece in data.chunks(split) {
            pieces.update(piece);
        }
        let a = whole.finish("f".parse().unwrap(), false);
        let b = pieces.finish("f".parse().unwrap(), false);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.chunks.len() as u64, FileEntry::chunk_count(data.len() as u64, 16 * 1024));
        prop_assert_eq!(a.hash, Hash32::of(&data));
    }

    #[test]
    fn rel_path_never_accepts_dotdot(prefix in "[a-z/]{0,10}", suffix in "[a-z/]{0,10}") {
        let p = format!("{prefix}..{suffix}");
        if let Ok(ok) = p.parse::<RelPath>() {
            prop_assert!(ok.components().all(|c| c != ".."));
        }
    }
}
