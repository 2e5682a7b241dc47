//! What every subcommand gets besides its own arguments: the protocol's limits, the time the
//! command started and how strictly secret-key file modes are checked.

use lanpatch_protocol::{Limits, Timestamp};

use crate::keys::KeyMode;

pub struct Ctx {
    pub limits: Limits,
    /// The command's start, read once: every check in one command sees the same time.
    pub now: Timestamp,
    pub key_mode: KeyMode,
}
