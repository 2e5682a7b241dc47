//! lanpatch's wire formats, trust model and verification.
//!
//! This crate is pure: no I/O, no async runtime, no networking, no database. Bytes come in, typed
//! values or typed refusals come out. Everything a node or the signer trusts passes through here.
//!
//! - [`types`]: validated newtypes (hashes, keys, versions, ring and file names).
//! - [`limits::Limits`]: every size untrusted input controls.
//! - [`signed`]: the `Envelope` / `Signed<T>` that carries signatures beside the exact signed bytes.
//! - [`root`], [`manifest`], [`approval`]: the metadata.
//! - [`verify`]: the numbered verification steps of docs/PROTOCOL.md.
//! - [`lifecycle`]: a release's typed states on a node and the pure transition function.
//! - [`sync`]: report anti-entropy (digests and pulls).
//! - [`bundle`]: the on-disk layout of a release bundle (paths only).

pub mod approval;
pub mod bundle;
pub mod commands;
pub mod control;
pub mod debver;
pub mod encoding;
pub mod keyfile;
pub mod lifecycle;
pub mod limits;
pub mod manifest;
pub mod membership;
pub mod report;
pub mod rollout;
pub mod root;
pub mod signed;
pub mod statement;
pub mod suggest;
pub mod sync;
pub mod types;
pub mod verify;

pub use approval::{Approval, Retry, RolloutRules, Wave, Yank, YankAction};
pub use encoding::DecodeError;
pub use lifecycle::{Event, FailReason, ReleaseState, RollbackCause, SkipReason, WaitReason};
pub use limits::Limits;
pub use manifest::{
    ArchiveIndex, ChunkError, Command, DebPackage, DebianPackages, FileEntry, FileHasher, Installer, ReleaseManifest,
    Severity, SeverityLevel, Targets, VerifiedChunk, verify_chunk,
};
pub use membership::{MemberRefusal, NodeCertificate, RefusalReason, Revocations};
pub use report::{DownloadProgress, Inventory, Report};
pub use root::{Role, RoleKeys, Root, fleet_id};
pub use signed::{Envelope, Kind, Payload, SignatureEntry, SignatureError, Signed};
pub use statement::{Current, Statement};
pub use sync::{Digest, Mark, Pull, PullTarget};
pub use types::{
    CveId, Hash32, NameError, ProductName, PublicKey, RelPath, RingName, SiteName, Tag, Timestamp, Version,
};
pub use verify::{Trusted, VerifyError};

/// Why a decoded payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{field}: {why}")]
    Field { field: &'static str, why: &'static str },
    #[error("{field} is {len} bytes long, the limit is {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("{field} has {count} entries, the limit is {max}")]
    TooMany { field: &'static str, count: usize, max: usize },
    #[error("{field} is {value}, the limit is {max}")]
    TooLarge { field: &'static str, value: u64, max: u64 },
    #[error("trust root has no {0} role")]
    MissingRole(Role),
    #[error("trust root lists a {0} key twice")]
    DuplicateKey(Role),
    #[error("{role} threshold {threshold} is impossible with {keys} key(s)")]
    BadThreshold { role: Role, threshold: u32, keys: usize },
    #[error("file {path} should have {expected} chunk hashes, has {actual}")]
    ChunkCount { path: String, expected: u64, actual: usize },
    #[error("file {0} appears twice, or as both a file and a directory")]
    DuplicateFile(String),
}

impl ValidationError {
    pub fn field(field: &'static str, why: &'static str) -> Self {
        ValidationError::Field { field, why }
    }
}
