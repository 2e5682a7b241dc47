//! Any bytes as a digest and as a pull (report anti-entropy): steps N1 to N3, and what a listener
//! would pull for it.
#![no_main]
use lanpatch_protocol::report::verify_node_signed;
use lanpatch_protocol::sync::missing;
use lanpatch_protocol::{Digest, Limits, Pull, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(d) = verify_node_signed::<Digest>(data, &limits) {
        let _ = missing(d.value(), true, Some(1), |_| Some(1));
    }
    if let Ok(p) = verify_node_signed::<Pull>(data, &limits) {
        let _ = p.value().is_fresh(Timestamp(1_700_000_000));
    }
});
