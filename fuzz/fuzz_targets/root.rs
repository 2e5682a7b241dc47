//! Any bytes as a trust root: decoding (R1), the first-root checks and a rotation check.
#![no_main]
use lanpatch_protocol::verify::{verify_first_root, verify_root_update};
use lanpatch_protocol::{Limits, Root, Signed, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let now = Timestamp(1_800_000_000);
    if let Ok(first) = verify_first_root(data, &limits, now) {
        let _ = verify_root_update(&first, data, &limits, now);
    }
    let _ = Signed::<Root>::decode(data, &limits);
});
