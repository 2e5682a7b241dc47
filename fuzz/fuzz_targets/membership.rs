//! Any bytes as membership metadata against the fixed fleet: a node certificate (steps C1 to C6,
//! for the key it names and for another), a revocation list (V1 to V4), and a report checked for
//! its author (N4).
#![no_main]
use lanpatch_protocol::membership::{verify_certificate, verify_revocations};
use lanpatch_protocol::report::{MemberCheck, check_author, verify_node_signed};
use lanpatch_protocol::{Envelope, Limits, NodeCertificate, PublicKey, Report, Signed, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let root = lanpatch_fuzz::root();
    let fleet = lanpatch_fuzz::fleet();
    let now = Timestamp(1_800_000_000);
    if let Ok(env) = Envelope::decode(data, &limits) {
        let named = Signed::<NodeCertificate>::open(env.clone(), &limits).map(|c| c.value().node);
        for node in [named.unwrap_or(PublicKey([0; 32])), PublicKey([9; 32])] {
            let _ = verify_certificate(&env, root.value(), &fleet, &node, None, &limits, now);
        }
        let _ = verify_revocations(env, root.value(), &fleet, None, &limits);
    }
    if let Ok(r) = verify_node_signed::<Report>(data, &limits) {
        let check = MemberCheck { root: root.value(), fleet: &fleet, revoked: None, now };
        let _ = check_author(r.value(), &check, &limits);
    }
});
