//! The deterministic binary encoding used for everything that is signed or sent.
//!
//! Values are encoded with postcard (varint integers, length-prefixed bytes and strings, struct
//! fields in declaration order, no maps with unspecified order). The same value always gives the
//! same bytes, and decoding refuses trailing bytes so one value has one encoding.

use std::cell::RefCell;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::NameError;

thread_local! {
    /// postcard drops the message of custom deserialization errors, so a validated newtype that
    /// refuses a value parks its typed reason here and `decode` picks it up. Decoding is
    /// synchronous, so the slot never outlives one `decode` call on this thread.
    static REFUSAL: RefCell<Option<NameError>> = const { RefCell::new(None) };
}

/// Called by validated newtypes' `Deserialize` when they refuse a value.
pub(crate) fn refuse<E: serde::de::Error>(reason: NameError) -> E {
    let msg = reason.to_string();
    REFUSAL.with(|r| *r.borrow_mut() = Some(reason));
    E::custom(msg)
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what} is {len} bytes, the limit is {max}")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("{what} is malformed or truncated: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("{what} holds an invalid value: {reason}")]
    Invalid { what: &'static str, reason: NameError },
    #[error("{what} has {extra} unexpected trailing bytes")]
    TrailingBytes { what: &'static str, extra: usize },
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail: postcard errors only on a full fixed
    // buffer or on types it does not support (maps with non-string keys are fine, sequences of
    // unknown length are never produced by derive).
    postcard::to_allocvec(value).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge { what, len: bytes.len(), max });
    }
    REFUSAL.with(|r| r.borrow_mut().take());
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| match REFUSAL.with(|r| r.borrow_mut().take()) {
            Some(reason) => DecodeError::Invalid { what, reason },
            None => DecodeError::Malformed { what, detail: e.to_string() },
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { what, extra: rest.len() });
    }
    Ok(value)
}
