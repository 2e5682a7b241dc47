//! Any bytes as a signed envelope (step 1 / N1), then opened as every payload kind.
#![no_main]
use lanpatch_protocol::{Approval, Envelope, Inventory, Limits, ReleaseManifest, Report, Root, Signed, Yank};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(env) = Envelope::decode(data, &limits) {
        let _ = Signed::<Root>::open(env.clone(), &limits);
        let _ = Signed::<ReleaseManifest>::open(env.clone(), &limits);
        let _ = Signed::<Approval>::open(env.clone(), &limits);
        let _ = Signed::<Yank>::open(env.clone(), &limits);
        let _ = Signed::<Report>::open(env.clone(), &limits);
        let _ = Signed::<Inventory>::open(env.clone(), &limits);
        let _ = Signed::<lanpatch_protocol::Digest>::open(env.clone(), &limits);
        let _ = Signed::<lanpatch_protocol::Pull>::open(env.clone(), &limits);
        let _ = Signed::<lanpatch_protocol::Statement>::open(env, &limits);
    }
});
