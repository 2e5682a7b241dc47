//! The signer's exit codes. Every failure that is not bad input carries one of these; anything
//! else (a bad flag, an unreadable file, a malformed bundle) exits 2.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | refused: a verification failed, or the ring gate refused |
//! | 2 | bad input (flags, files) |
//! | 3 | not found: no reports for the release, no inventories, the node is not a collector |
//! | 4 | the node is unreachable or failed to answer |

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Refused = 1,
    BadInput = 2,
    NotFound = 3,
    Unreachable = 4,
}

/// An error with its exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: Code,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

pub fn exit(code: Code, message: impl Into<String>) -> anyhow::Error {
    Exit { code, message: message.into() }.into()
}

/// The exit code for an error: the first [`Exit`] in its chain, else bad input.
pub fn code_of(e: &anyhow::Error) -> u8 {
    e.chain().find_map(|c| c.downcast_ref::<Exit>()).map(|x| x.code).unwrap_or(Code::BadInput) as u8
}
