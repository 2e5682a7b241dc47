//! Any bytes as an KEV catalogue: never a panic, and the parser's peak heap stays under
//! a bound set by the input's size.
#![no_main]
use lanpatch_fuzz::peak;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: peak::Counting = peak::Counting;

fuzz_target!(|data: &[u8]| {
    if data.len() > 1 << 20 {
        return;
    }
    let used = peak::during(|| {
        let _ = lanpatch_assess::feeds::parse_kev_bytes(std::path::Path::new("fuzz"), data);
    });
    assert!(used <= peak::feed_bound(data.len()), "{} bytes of input held {used} bytes at once", data.len());
});
