//! Release manifests: what a release contains, how to install it, whom it targets, how urgent it is.

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::limits::Limits;
use crate::signed::{Kind, Payload};
use crate::types::{CveId, Hash32, ProductName, RelPath, Tag, Timestamp, Version};

/// A signed release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    pub product: ProductName,
    /// Strictly increasing per product; nodes refuse anything lower than what they trust.
    pub version: Version,
    /// The vendor's version string, for humans (`2.4.1-3`). Not used for ordering.
    pub label: String,
    pub description: String,
    pub created: Timestamp,
    pub expires: Timestamp,
    pub files: Vec<FileEntry>,
    /// How a node installs, detects and rolls back the release.
    pub installer: Installer,
    pub targets: Targets,
    pub severity: Severity,
    /// Install at once, ignoring maintenance windows.
    pub urgent: bool,
    /// HTTP(S) base URLs from which files can be fetched with range requests, `<url>/<file name>`.
    pub origins: Vec<String>,
}

/// One file of a release, with what a node needs to verify every chunk on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: RelPath,
    pub size: u64,
    /// BLAKE3 of the whole file: its content address in the blob store.
    pub hash: Hash32,
    pub chunk_size: u32,
    /// BLAKE3 of each chunk, in order. All chunks are `chunk_size` long except the last.
    pub chunks: Vec<Hash32>,
    pub executable: bool,
}

/// How a node installs a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Installer {
    /// Commands the admin wrote.
    Commands {
        /// Runs in a staging directory holding the release's files.
        install: Command,
        /// Runs when install fails or times out, and on a yank with rollback.
        rollback: Option<Command>,
        /// Exit code 0 means "already installed"; lets a node skip a release and resolve an
        /// interrupted install.
        detect: Option<Command>,
    },
    /// Debian binary packages, installed by the node itself with dpkg: no command of the admin's.
    Debian(DebianPackages),
}

impl Installer {
    /// Whether a failed or yanked install can be undone. Debian releases always can: the node
    /// keeps the packages they replace.
    pub fn can_roll_back(&self) -> bool {
        match self {
            Installer::Commands { rollback, .. } => rollback.is_some(),
            Installer::Debian(_) => true,
        }
    }
}

/// The Debian packages of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianPackages {
    pub packages: Vec<DebPackage>,
    /// Install packages a host does not have yet. Without it a node upgrades only the binary
    /// packages it has, and a host with none of them is not targeted.
    pub add_new: bool,
    /// How long dpkg may run for one install or rollback.
    pub timeout_secs: u32,
}

/// One `.deb` of a release, with the fields of its control file that a node acts on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebPackage {
    /// The release file holding the package.
    pub file: RelPath,
    pub name: String,
    /// The version as dpkg orders it (`[epoch:]upstream[-revision]`).
    pub version: String,
    /// `amd64`, `arm64`, ... or `all`.
    pub architecture: String,
    /// The source package it was built from, and that source's version: what vulnerability
    /// feeds name.
    pub source: String,
    pub source_version: String,
    /// SHA-256 of the `.deb`, the digest Debian's archive indexes list.
    pub sha256: Hash32,
    /// Where Debian's archive vouches for this exact file (`release create --apt-lists`).
    pub archive: Option<ArchiveIndex>,
}

/// A `Packages` index that lists a package with its SHA-256, from a release file (`InRelease`)
/// that verified with Debian's archive keyring on the signing workstation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveIndex {
    /// The release file's `Origin` and `Suite` (`Debian bookworm`).
    pub suite: String,
    /// The release file's `Date`.
    pub date: String,
    /// The index's path in the release (`main/binary-amd64/Packages`).
    pub index: String,
}

/// A command as an argument vector (no shell unless the admin writes `sh -c`), with a timeout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub argv: Vec<String>,
    pub timeout_secs: u32,
}

/// Which nodes a release applies to. An empty list matches everything; a node must match every
/// non-empty list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    pub os: Vec<String>,
    pub arch: Vec<String>,
    pub tags: Vec<Tag>,
    pub hostnames: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SeverityLevel {
    None,
    Low,
    Medium,
    High,
    Critical,
}

impl std::str::FromStr for SeverityLevel {
    type Err = crate::NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "none" => SeverityLevel::None,
            "low" => SeverityLevel::Low,
            "medium" => SeverityLevel::Medium,
            "high" => SeverityLevel::High,
            "critical" => SeverityLevel::Critical,
            _ => {
                return Err(crate::NameError::Invalid {
                    what: "severity",
                    value: s.chars().take(20).collect(),
                    why: "expected none, low, medium, high or critical",
                });
            }
        })
    }
}

/// How bad the fixed problem is. Scores are integers so signed data has no floating point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Severity {
    pub level: SeverityLevel,
    pub cves: Vec<CveId>,
    /// CVSS base score in tenths (98 = 9.8), 0..=100.
    pub cvss_tenths: Option<u8>,
    /// EPSS probability in basis points (9730 = 0.973), 0..=10000.
    pub epss_bp: Option<u16>,
    /// Exploitation seen in the wild (e.g. listed in CISA KEV).
    pub known_exploited: bool,
    /// The vulnerability feeds the scores were taken from, each with its own date (empty when
    /// they were typed by hand).
    pub feed_dates: Vec<FeedDate>,
}

/// One feed's name and date, as `release create` read it from the signer's feed database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedDate {
    /// `osv`, `epss` or `kev`.
    pub feed: String,
    /// The feed's own date (OSV: newest `modified`; EPSS: `score_date`; KEV: `dateReleased`).
    pub date: String,
}

impl Severity {
    /// Orders releases for download and install: known-exploited first, then level, CVSS, EPSS.
    pub fn priority_key(&self) -> (bool, SeverityLevel, u8, u16) {
        (self.known_exploited, self.level, self.cvss_tenths.unwrap_or(0), self.epss_bp.unwrap_or(0))
    }
}

impl ReleaseManifest {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
    pub fn total_chunks(&self) -> usize {
        self.files.iter().map(|f| f.chunks.len()).sum()
    }
}

fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), ValidationError> {
    if s.len() > max {
        return Err(ValidationError::TooLong { field, len: s.len(), max });
    }
    Ok(())
}

fn check_list<T>(field: &'static str, items: &[T], max: usize) -> Result<(), ValidationError> {
    if items.len() > max {
        return Err(ValidationError::TooMany { field, count: items.len(), max });
    }
    Ok(())
}

fn check_short_strings(field: &'static str, items: &[String], limits: &Limits) -> Result<(), ValidationError> {
    check_list(field, items, limits.max_list_items)?;
    for s in items {
        check_text(field, s, limits.max_short_bytes)?;
        if s.is_empty() || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ValidationError::field(
                field,
                "entries must be non-empty, without spaces or control characters",
            ));
        }
    }
    Ok(())
}

impl Command {
    fn validate(&self, field: &'static str, limits: &Limits) -> Result<(), ValidationError> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(ValidationError::field(field, "command is empty"));
        }
        check_list(field, &self.argv, limits.max_command_args)?;
        for a in &self.argv {
            check_text(field, a, limits.max_arg_bytes)?;
            if a.contains('\0') {
                return Err(ValidationError::field(field, "argument contains a NUL byte"));
            }
        }
        if self.timeout_secs == 0 {
            return Err(ValidationError::field(field, "timeout must be at least one second"));
        }
        Ok(())
    }
}

/// A Debian package or architecture name: lower-case letters, digits, `+`, `-` and `.`,
/// starting with a letter or digit (Debian Policy 5.6.1).
fn check_deb_name(field: &'static str, name: &str, limits: &Limits) -> Result<(), ValidationError> {
    check_text(field, name, limits.max_short_bytes)?;
    let ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !ok {
        return Err(ValidationError::field(field, "not a Debian package name (a-z, 0-9, +, -, .)"));
    }
    Ok(())
}

impl DebianPackages {
    fn validate(&self, files: &[FileEntry], limits: &Limits) -> Result<(), ValidationError> {
        if self.packages.is_empty() {
            return Err(ValidationError::field("debian packages", "a Debian release needs at least one package"));
        }
        check_list("debian packages", &self.packages, limits.max_files)?;
        if self.timeout_secs == 0 {
            return Err(ValidationError::field("debian timeout", "timeout must be at least one second"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.packages {
            check_deb_name("debian package name", &p.name, limits)?;
            check_deb_name("debian source name", &p.source, limits)?;
            check_deb_name("debian architecture", &p.architecture, limits)?;
            for v in [&p.version, &p.source_version] {
                if crate::debver::parse(v).is_err() {
                    return Err(ValidationError::field("debian version", "not a Debian version"));
                }
            }
            if !files.iter().any(|f| f.path == p.file) {
                return Err(ValidationError::field("debian package file", "names no file of the release"));
            }
            if let Some(a) = &p.archive {
                for (field, v) in [("archive suite", &a.suite), ("archive date", &a.date), ("archive index", &a.index)]
                {
                    check_text(field, v, limits.max_short_bytes)?;
                    if v.chars().any(char::is_control) {
                        return Err(ValidationError::field(field, "control characters"));
                    }
                }
            }
            if !seen.insert((p.name.as_str(), p.architecture.as_str())) {
                return Err(ValidationError::field("debian packages", "a package appears twice"));
            }
        }
        Ok(())
    }
}

impl FileEntry {
    /// Number of chunks a file of `size` bytes has with `chunk_size`.
    pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
        size.div_ceil(u64::from(chunk_size.max(1)))
    }

    /// Offset and length of chunk `index`, or `None` if there is no such chunk.
    pub fn chunk_range(&self, index: u32) -> Option<(u64, u32)> {
        let start = u64::from(index).checked_mul(u64::from(self.chunk_size))?;
        if index as usize >= self.chunks.len() || start >= self.size {
            return None;
        }
        let len = (self.size - start).min(u64::from(self.chunk_size));
        Some((start, len as u32))
    }

    fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        if self.size > limits.max_file_bytes {
            return Err(ValidationError::TooLarge { field: "file size", value: self.size, max: limits.max_file_bytes });
        }
        if self.chunk_size < limits.min_chunk_size || self.chunk_size > limits.max_chunk_size {
            return Err(ValidationError::field("chunk size", "outside the allowed range"));
        }
        let expected = Self::chunk_count(self.size, self.chunk_size);
        if self.chunks.len() as u64 != expected {
            return Err(ValidationError::ChunkCount {
                path: self.path.to_string(),
                expected,
                actual: self.chunks.len(),
            });
        }
        Ok(())
    }
}

impl Payload for ReleaseManifest {
    const KIND: Kind = Kind::Manifest;
    const NAME: &'static str = "release manifest";

    fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        if self.version.0 == 0 {
            return Err(ValidationError::field("version", "starts at 1"));
        }
        check_text("label", &self.label, limits.max_short_bytes)?;
        check_text("description", &self.description, limits.max_text_bytes)?;
        if self.expires <= self.created {
            return Err(ValidationError::field("expires", "must be after created"));
        }
        if self.files.is_empty() {
            return Err(ValidationError::field("files", "a release needs at least one file"));
        }
        check_list("files", &self.files, limits.max_files)?;
        let mut total_chunks = 0usize;
        let mut names = std::collections::BTreeSet::new();
        for f in &self.files {
            f.validate(limits)?;
            total_chunks = total_chunks.saturating_add(f.chunks.len());
            if !names.insert(f.path.as_str()) {
                return Err(ValidationError::DuplicateFile(f.path.to_string()));
            }
        }
        // A file may not be a directory prefix of another ("a" and "a/b" cannot both exist).
        for f in &self.files {
            let prefix = format!("{}/", f.path);
            if self.files.iter().any(|g| g.path.as_str().starts_with(&prefix)) {
                return Err(ValidationError::DuplicateFile(f.path.to_string()));
            }
        }
        if total_chunks > limits.max_total_chunks {
            return Err(ValidationError::TooMany {
                field: "chunks",
                count: total_chunks,
                max: limits.max_total_chunks,
            });
        }
        match &self.installer {
            Installer::Commands { install, rollback, detect } => {
                install.validate("install command", limits)?;
                if let Some(c) = rollback {
                    c.validate("rollback command", limits)?;
                }
                if let Some(c) = detect {
                    c.validate("detect command", limits)?;
                }
            }
            Installer::Debian(d) => d.validate(&self.files, limits)?,
        }
        check_short_strings("target os", &self.targets.os, limits)?;
        check_short_strings("target arch", &self.targets.arch, limits)?;
        check_short_strings("target hostnames", &self.targets.hostnames, limits)?;
        check_list("target tags", &self.targets.tags, limits.max_list_items)?;
        check_list("CVE ids", &self.severity.cves, limits.max_list_items)?;
        check_list("feed dates", &self.severity.feed_dates, limits.max_list_items)?;
        for f in &self.severity.feed_dates {
            check_short_strings("feed dates", &[f.feed.clone(), f.date.clone()], limits)?;
        }
        if self.severity.cvss_tenths.is_some_and(|c| c > 100) {
            return Err(ValidationError::field("CVSS", "must be between 0.0 and 10.0"));
        }
        if self.severity.epss_bp.is_some_and(|e| e > 10_000) {
            return Err(ValidationError::field("EPSS", "must be between 0 and 1"));
        }
        check_list("origins", &self.origins, limits.max_origins)?;
        for url in &self.origins {
            check_text("origin URL", url, limits.max_url_bytes)?;
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ValidationError::field("origin URL", "must be an http:// or https:// URL without spaces"));
            }
        }
        Ok(())
    }
}

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {index} of {path} does not exist (the file has {count} chunks)")]
    NoSuchChunk { path: String, index: u32, count: usize },
    #[error("chunk {index} of {path} is {actual} bytes, expected {expected}")]
    WrongLength { path: String, index: u32, expected: u32, actual: usize },
    #[error("chunk {index} of {path} does not match its signed hash (expected {expected}, got {actual})")]
    HashMismatch { path: String, index: u32, expected: Hash32, actual: Hash32 },
}

/// Verifies one received chunk against the signed manifest. A node calls this for every chunk it
/// receives, from a peer or an origin, before storing or serving it (PROTOCOL.md step C1).
pub fn verify_chunk(file: &FileEntry, index: u32, bytes: &[u8]) -> Result<(), ChunkError> {
    let Some((_, expected_len)) = file.chunk_range(index) else {
        return Err(ChunkError::NoSuchChunk { path: file.path.to_string(), index, count: file.chunks.len() });
    };
    if bytes.len() != expected_len as usize {
        return Err(ChunkError::WrongLength {
            path: file.path.to_string(),
            index,
            expected: expected_len,
            actual: bytes.len(),
        });
    }
    let actual = Hash32::of(bytes);
    let expected = file.chunks[index as usize];
    if actual != expected {
        return Err(ChunkError::HashMismatch { path: file.path.to_string(), index, expected, actual });
    }
    Ok(())
}

/// A chunk's bytes that hashed to the chunk hash a signed manifest gives for them. Only
/// [`VerifiedChunk::verify`] makes one, so code that takes a `VerifiedChunk` (the node's store)
/// cannot be handed unverified bytes, and does not hash them a second time: it only checks that
/// its own file entry expects the same chunk hash at the same index.
#[derive(Debug)]
pub struct VerifiedChunk {
    index: u32,
    hash: Hash32,
    bytes: Vec<u8>,
}

impl VerifiedChunk {
    /// Verifies `bytes` as chunk `index` of `file` ([`verify_chunk`]). On a refusal the bytes are
    /// returned beside the reason, so the caller can reuse the buffer.
    pub fn verify(file: &FileEntry, index: u32, bytes: Vec<u8>) -> Result<VerifiedChunk, (ChunkError, Vec<u8>)> {
        match verify_chunk(file, index, &bytes) {
            Ok(()) => Ok(VerifiedChunk { index, hash: file.chunks[index as usize], bytes }),
            Err(e) => Err((e, bytes)),
        }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// The signed chunk hash the bytes matched.
    pub fn hash(&self) -> Hash32 {
        self.hash
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Computes a file's size, hash and chunk hashes from its bytes, fed in pieces of any size.
pub struct FileHasher {
    chunk_size: u32,
    whole: blake3::Hasher,
    chunk: blake3::Hasher,
    in_chunk: u64,
    size: u64,
    chunks: Vec<Hash32>,
}

impl FileHasher {
    pub fn new(chunk_size: u32) -> Self {
        FileHasher {
            chunk_size: chunk_size.max(1),
            whole: blake3::Hasher::new(),
            chunk: blake3::Hasher::new(),
            in_chunk: 0,
            size: 0,
            chunks: Vec::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = u64::from(self.chunk_size) - self.in_chunk;
            let take = (data.len() as u64).min(room) as usize;
            self.chunk.update(&data[..take]);
            self.in_chunk += take as u64;
            data = &data[take..];
            if self.in_chunk == u64::from(self.chunk_size) {
                self.chunks.push(self.chunk.finalize().into());
                self.chunk.reset();
                self.in_chunk = 0;
            }
        }
    }

    pub fn finish(mut self, path: RelPath, executable: bool) -> FileEntry {
        if self.in_chunk > 0 {
            self.chunks.push(self.chunk.finalize().into());
        }
        FileEntry {
            path,
            size: self.size,
            hash: self.whole.finalize().into(),
            chunk_size: self.chunk_size,
            chunks: self.chunks,
            executable,
        }
    }
}

/// Picks a chunk size for a release of `total_bytes`: 256 KiB, doubled until the chunk count fits
/// comfortably within `limits.max_total_chunks`.
pub fn default_chunk_size(total_bytes: u64, limits: &Limits) -> u32 {
    let mut size: u32 = 256 * 1024;
    while size < limits.max_chunk_size && total_bytes.div_ceil(u64::from(size)) > (limits.max_total_chunks / 2) as u64 {
        size *= 2;
    }
    size
}
