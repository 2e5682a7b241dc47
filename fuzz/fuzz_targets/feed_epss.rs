//! Any bytes as an EPSS file (CSV or gzip): never a panic, and the parser's peak heap stays under
//! a bound set by the input's size.
#![no_main]
use lanpatch_fuzz::peak;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: peak::Counting = peak::Counting;

fuzz_target!(|data: &[u8]| {
    peak::check_feed(data, |d| {
        let _ = lanpatch_assess::feeds::parse_epss_bytes(std::path::Path::new("fuzz"), d.to_vec());
    });
});
