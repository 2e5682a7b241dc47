//! Any bytes as a signed yank: decoding and validation, then the full verification (steps 1-4)
//! against a fixed fleet root.
#![no_main]
use lanpatch_protocol::verify::verify_yank;
use lanpatch_protocol::{Limits, Signed, Timestamp, Yank};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let now = Timestamp(1_800_000_000);
    let root = lanpatch_fuzz::root();
    let _ = Signed::<Yank>::decode(data, &limits);
    let _ = verify_yank(data, root.value(), &limits, now);
});
