//! lanpatch-assess: the assess and prioritise steps of the patch cycle. Vulnerability feeds
//! (OSV, EPSS, CISA KEV) are parsed with bounded reads (`feeds`), kept in the admin workstation's
//! feed database (`feedstore`, SQLite), and matched against the collector's inventories
//! (`vulns`). `lanpatch-signer` imports and queries; the collector's console reads the same
//! database read-only.

pub mod feeds;
pub mod feedstore;
pub mod vulns;
