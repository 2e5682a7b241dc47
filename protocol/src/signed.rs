//! The signed envelope shared by every piece of metadata.
//!
//! An [`Envelope`] keeps the exact payload bytes that were signed beside the signatures, so
//! verification never re-encodes anything, and more signatures can be added later (by other
//! admins, on other machines) without changing the payload or its hash. [`Signed<T>`] pairs an
//! envelope with the decoded payload.

use std::collections::BTreeSet;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::encoding::{self, DecodeError};
use crate::limits::Limits;
use crate::root::{Role, RoleKeys};
use crate::types::{Hash32, PublicKey, byte_array};

/// What an envelope holds. Part of the signed message, so a signature over a manifest can never be
/// presented as a signature over an approval with the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Root,
    Manifest,
    Approval,
    Yank,
    Report,
    Inventory,
    Statement,
    /// A node's digest of its latest reports (appended: earlier kinds keep their encodings).
    Digest,
    Pull,
    /// A node certificate (fleet membership), signed by the enroll role.
    Certificate,
    /// A list of revoked node keys, signed by the enroll role.
    Revocation,
}

impl Kind {
    fn tag(self) -> &'static [u8] {
        match self {
            Kind::Root => b"root",
            Kind::Manifest => b"manifest",
            Kind::Approval => b"approval",
            Kind::Yank => b"yank",
            Kind::Report => b"report",
            Kind::Inventory => b"inventory",
            Kind::Statement => b"statement",
            Kind::Digest => b"digest",
            Kind::Pull => b"pull",
            Kind::Certificate => b"certificate",
            Kind::Revocation => b"revocation",
        }
    }
}

/// One signature: the signing key and the ed25519 signature over [`signing_message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureEntry {
    pub key: PublicKey,
    #[serde(with = "byte_array")]
    pub sig: [u8; 64],
}

/// The wire and file form of all signed metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub kind: Kind,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub signatures: Vec<SignatureEntry>,
}

/// The bytes an ed25519 signature covers: a domain string, the kind, and the payload.
pub fn signing_message(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + payload.len());
    m.extend_from_slice(b"lanpatch-signed-v1\0");
    m.extend_from_slice(kind.tag());
    m.push(0);
    m.extend_from_slice(payload);
    m
}

/// Why a threshold check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "{role} threshold not met: {valid} valid signature(s) from distinct {role} keys, {threshold} required \
         ({unknown} from keys outside the {role} role, {invalid} invalid, {duplicate} repeated)"
    )]
    BelowThreshold { role: Role, threshold: u32, valid: u32, unknown: u32, invalid: u32, duplicate: u32 },
    #[error("expected a {expected:?} envelope, got {actual:?}")]
    WrongKind { expected: Kind, actual: Kind },
    #[error("envelope carries {count} signatures, the limit is {max}")]
    TooManySignatures { count: usize, max: usize },
}

/// Counts of a threshold check, for messages and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SignatureCount {
    pub valid: u32,
    pub unknown: u32,
    pub invalid: u32,
    pub duplicate: u32,
}

impl Envelope {
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Envelope, DecodeError> {
        encoding::decode("signed envelope", bytes, limits.max_envelope_bytes)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// The content address of the signed payload. Independent of the signatures.
    pub fn payload_hash(&self) -> Hash32 {
        Hash32::of(&self.payload)
    }

    /// Adds (or replaces) the signature of `key`.
    pub fn sign(&mut self, key: &SigningKey) {
        let public = PublicKey(key.verifying_key().to_bytes());
        let sig = key.sign(&signing_message(self.kind, &self.payload)).to_bytes();
        self.signatures.retain(|s| s.key != public);
        self.signatures.push(SignatureEntry { key: public, sig });
    }

    /// Counts valid signatures by distinct keys of `keys`. Each key counts at most once, however
    /// many times it appears; signatures by keys outside the role never count.
    pub fn count_signatures(&self, keys: &RoleKeys) -> SignatureCount {
        let message = signing_message(self.kind, &self.payload);
        let mut seen = BTreeSet::new();
        let mut count = SignatureCount::default();
        for entry in &self.signatures {
            if !keys.keys.contains(&entry.key) {
                count.unknown += 1;
                continue;
            }
            if seen.contains(&entry.key) {
                count.duplicate += 1;
                continue;
            }
            let ok = VerifyingKey::from_bytes(&entry.key.0)
                .and_then(|vk| vk.verify_strict(&message, &Signature::from_bytes(&entry.sig)))
                .is_ok();
            if ok {
                seen.insert(entry.key);
                count.valid += 1;
            } else {
                count.invalid += 1;
            }
        }
        count
    }

    /// The distinct keys of `keys` whose signature verifies, in signing order: who has signed so
    /// far (for the co-signing flow, `lanpatch-signer pending`).
    pub fn valid_signers(&self, keys: &RoleKeys) -> Vec<PublicKey> {
        let message = signing_message(self.kind, &self.payload);
        let mut out: Vec<PublicKey> = Vec::new();
        for entry in &self.signatures {
            if !keys.keys.contains(&entry.key) || out.contains(&entry.key) {
                continue;
            }
            let ok = VerifyingKey::from_bytes(&entry.key.0)
                .and_then(|vk| vk.verify_strict(&message, &Signature::from_bytes(&entry.sig)))
                .is_ok();
            if ok {
                out.push(entry.key);
            }
        }
        out
    }

    /// Checks that `kind` is expected and that a threshold of `role`'s keys signed.
    pub fn check_threshold(
        &self,
        expected: Kind,
        role: Role,
        keys: &RoleKeys,
        limits: &Limits,
    ) -> Result<SignatureCount, SignatureError> {
        if self.kind != expected {
            return Err(SignatureError::WrongKind { expected, actual: self.kind });
        }
        if self.signatures.len() > limits.max_signatures {
            return Err(SignatureError::TooManySignatures { count: self.signatures.len(), max: limits.max_signatures });
        }
        let c = self.count_signatures(keys);
        if c.valid < keys.threshold || keys.threshold == 0 {
            return Err(SignatureError::BelowThreshold {
                role,
                threshold: keys.threshold,
                valid: c.valid,
                unknown: c.unknown,
                invalid: c.invalid,
                duplicate: c.duplicate,
            });
        }
        Ok(c)
    }
}

/// A payload type: what it is called, and how it checks its own fields against the limits.
pub trait Payload: Serialize + DeserializeOwned {
    const KIND: Kind;
    const NAME: &'static str;
    fn validate(&self, limits: &Limits) -> Result<(), crate::ValidationError>;
}

/// An envelope with its decoded payload. Holding a `Signed<T>` says nothing about its signatures;
/// the `verify` module decides whether it is trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed<T> {
    envelope: Envelope,
    value: T,
}

/// Why a signed payload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("expected a {expected:?} envelope, got {actual:?}")]
    WrongKind { expected: Kind, actual: Kind },
    #[error(transparent)]
    Invalid(#[from] crate::ValidationError),
}

impl<T: Payload> Signed<T> {
    /// Wraps a new payload with no signatures yet.
    pub fn new(value: T) -> Self {
        let envelope = Envelope { kind: T::KIND, payload: encoding::encode(&value), signatures: Vec::new() };
        Signed { envelope, value }
    }

    /// Decodes the payload of an envelope and validates it against `limits`.
    pub fn open(envelope: Envelope, limits: &Limits) -> Result<Self, OpenError> {
        if envelope.kind != T::KIND {
            return Err(OpenError::WrongKind { expected: T::KIND, actual: envelope.kind });
        }
        let value: T = encoding::decode(T::NAME, &envelope.payload, limits.max_envelope_bytes)?;
        value.validate(limits)?;
        Ok(Signed { envelope, value })
    }

    /// Decodes an envelope from bytes and opens it.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, OpenError> {
        Self::open(Envelope::decode(bytes, limits)?, limits)
    }

    pub fn value(&self) -> &T {
        &self.value
    }
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
    pub fn into_envelope(self) -> Envelope {
        self.envelope
    }
    pub fn payload_hash(&self) -> Hash32 {
        self.envelope.payload_hash()
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        self.envelope.to_bytes()
    }
    pub fn sign(&mut self, key: &SigningKey) {
        self.envelope.sign(key)
    }
    /// Drops the signature of `key` (used by tests and by `signer` when a key is revoked).
    pub fn remove_signature(&mut self, key: &PublicKey) -> bool {
        let before = self.envelope.signatures.len();
        self.envelope.signatures.retain(|s| &s.key != key);
        before != self.envelope.signatures.len()
    }
}
