//! Any bytes as a node report: steps N1 to N3.
#![no_main]
use lanpatch_protocol::report::verify_node_signed;
use lanpatch_protocol::{Limits, Report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = verify_node_signed::<Report>(data, &Limits::default());
});
