//! Any text as a node.toml (its parsing and every check `Config::parse` makes).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lanpatch_node::config::Config::parse(text, std::path::Path::new("/var/lib/lanpatch-fuzz"));
    }
});
