//! Every size that untrusted input controls, in one place.
//!
//! Anything a peer, an origin or a file can make large is checked against one of these before it
//! is allocated, stored or forwarded. The defaults are generous for real releases and small enough
//! that a hostile peer cannot make a node allocate much.

/// Size limits applied when decoding and validating metadata and chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest signed envelope (root, manifest, approval, yank, report) in bytes. Bounds memory per
    /// gossip message; gossipsub's `max_transmit_size` is set to this on every node.
    pub max_envelope_bytes: usize,
    /// Most signatures in one envelope. More than any sane threshold; stops CPU burn on
    /// signature checks.
    pub max_signatures: usize,
    /// Most keys in one role of the trust root.
    pub max_keys_per_role: usize,
    /// Most files in one release.
    pub max_files: usize,
    /// Most chunks over all files of one release (each costs 32 bytes of manifest and a row
    /// in the chunk map).
    pub max_total_chunks: usize,
    /// Largest single file in a release.
    pub max_file_bytes: u64,
    /// Smallest allowed chunk size (tiny chunks make huge manifests and chatty transfers).
    pub min_chunk_size: u32,
    /// Largest allowed chunk size; also the largest chunk a peer may send in one response.
    pub max_chunk_size: u32,
    /// Longest free text (title, description, reason, error tails).
    pub max_text_bytes: usize,
    /// Most entries in any list of short items (targets, tags, CVE ids).
    pub max_list_items: usize,
    /// Longest short string inside such a list (OS name, host name).
    pub max_short_bytes: usize,
    /// Most arguments in a command.
    pub max_command_args: usize,
    /// Longest single command argument.
    pub max_arg_bytes: usize,
    /// Most origin URLs in a manifest.
    pub max_origins: usize,
    /// Longest origin URL.
    pub max_url_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_envelope_bytes: 1024 * 1024,
            max_signatures: 32,
            max_keys_per_role: 32,
            max_files: 1024,
            max_total_chunks: 24 * 1024,
            max_file_bytes: 64 * 1024 * 1024 * 1024,
            min_chunk_size: 16 * 1024,
            max_chunk_size: 16 * 1024 * 1024,
            max_text_bytes: 4096,
            max_list_items: 256,
            max_short_bytes: 128,
            max_command_args: 64,
            max_arg_bytes: 4096,
            max_origins: 8,
            max_url_bytes: 2048,
        }
    }
}
