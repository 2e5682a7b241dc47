//! Any bytes as a freshness statement: decoding, then steps S1 to S5 against a fixed root with a
//! timestamp role, then the install decision (S6) for a fixed release.
#![no_main]
use lanpatch_protocol::statement::statement_allows;
use lanpatch_protocol::verify::verify_statement_envelope;
use lanpatch_protocol::{Envelope, Hash32, Limits, Signed, Statement, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let now = Timestamp(1_800_000_000);
    let root = lanpatch_fuzz::root();
    if let Ok(s) = Signed::<Statement>::decode(data, &limits) {
        let product = "openssl".parse().unwrap_or_else(|_| unreachable!());
        let ring = "canary".parse().unwrap_or_else(|_| unreachable!());
        let _ = statement_allows(Some(s.value()), &Hash32([1; 32]), &product, &ring, now, 3600);
    }
    if let Ok(env) = Envelope::decode(data, &limits) {
        let _ = verify_statement_envelope(env, root.value(), &Hash32([1; 32]), &limits, now);
    }
});
