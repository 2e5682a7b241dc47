//! `lanpatch-node` as a library: the modules of the endpoint service. The binary (`main.rs`) is
//! the CLI around them; the fuzz targets (`fuzz/`) reach the decoders through here.

/// The version this binary reports (`--version`, status, metrics, the origin User-Agent): the
/// crate's, unless the build set `LANPATCH_BUILD_VERSION` (packaging builds a test upgrade so).
pub const VERSION: &str = match option_env!("LANPATCH_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

pub mod bufpool;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod debian;
pub mod demo;
pub mod disk;
pub mod door;
pub mod downloads;
pub mod enrollment;
pub mod fleetview;
pub mod fsmode;
pub mod install;
pub mod inventory;
pub mod ipguard;
pub mod library;
pub mod lifecycle;
pub mod listen;
pub mod membership;
pub mod metrics;
pub mod net;
pub mod node;
pub mod notify;
pub mod origin;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod report;
pub mod request;
pub mod retention;
pub mod sched;
pub mod seeding;
pub mod selfupdate;
pub mod serve;
pub mod shared;
pub mod site;
pub mod store;
pub mod sync;
pub mod trust;
pub mod wan;
pub mod wire;
