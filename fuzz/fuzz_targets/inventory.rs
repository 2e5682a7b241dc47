//! Any bytes as a node inventory: steps N1 to N3.
#![no_main]
use lanpatch_protocol::report::verify_node_signed;
use lanpatch_protocol::{Inventory, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = verify_node_signed::<Inventory>(data, &Limits::default());
});
