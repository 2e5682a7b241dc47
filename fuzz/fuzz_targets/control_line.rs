//! Any bytes as a control-socket line, both ways: a request as the node reads it, a response as
//! the signer and `lanpatch-node status` read it.
#![no_main]
use lanpatch_protocol::control::{ControlRequest, ControlResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ControlRequest>(data);
    let _ = serde_json::from_slice::<ControlResponse>(data);
});
