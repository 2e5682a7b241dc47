//! The trust root: which keys may sign what, and how many of them must agree.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::limits::Limits;
use crate::signed::{Kind, Payload};
use crate::types::{Hash32, NameError, PublicKey, Timestamp, Version};

/// A role in the trust root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Signs new trust roots (key rotation). Kept offline.
    Root,
    /// Signs release manifests.
    Release,
    /// Signs approvals for rings, and yanks.
    Approve,
    /// Signs short-lived freshness statements (TUF's timestamp role). An online key, held by
    /// the admin workstation's node. Optional: a root without it has no freeze protection.
    Timestamp,
    /// Signs node certificates (fleet membership) and revocation lists. May be one online key
    /// on the admin node, like `timestamp`. Optional in the root's encoding; a node refuses to
    /// start without it unless `enrollment = "off"`.
    Enroll,
}

impl Role {
    /// The roles every root must have.
    pub const ALL: [Role; 3] = [Role::Root, Role::Release, Role::Approve];
    /// Every role a root may have.
    pub const ANY: [Role; 5] = [Role::Root, Role::Release, Role::Approve, Role::Timestamp, Role::Enroll];
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Release => "release",
            Role::Approve => "approve",
            Role::Timestamp => "timestamp",
            Role::Enroll => "enroll",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Role::ANY.into_iter().find(|r| r.as_str() == s).ok_or_else(|| NameError::Invalid {
            what: "role",
            value: s.chars().take(40).collect(),
            why: "unknown role; the roles are root, release, approve, timestamp and enroll",
        })
    }
}

/// The keys of one role and how many of them must sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    pub keys: Vec<PublicKey>,
    pub threshold: u32,
}

/// The fleet's trust root. Version 1 is provisioned on every node; later versions are accepted
/// only through rotation (see `verify::verify_root_update`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Starts at 1, and goes up by exactly one per rotation.
    pub version: Version,
    /// `None` in version 1; the id of the fleet (derived from version 1) in every later version.
    pub fleet: Option<Hash32>,
    pub expires: Timestamp,
    /// Every role in [`Role::ALL`] must be present; [`Role::Timestamp`] and [`Role::Enroll`] may be. A `BTreeMap` keeps the encoding deterministic.
    pub roles: BTreeMap<Role, RoleKeys>,
}

impl Root {
    /// The keys of `role`. Validation guarantees every role is present; an absent one has no keys
    /// and a threshold no signature set can meet.
    pub fn keys(&self, role: Role) -> RoleKeys {
        self.roles.get(&role).cloned().unwrap_or(RoleKeys { keys: Vec::new(), threshold: u32::MAX })
    }
}

/// The fleet id: a hash of the first root's payload, or the id a later root carries. Two fleets on
/// one LAN use different gossip topics and trust different keys, so they never mix.
pub fn fleet_id(root: &Root, payload: &[u8]) -> Hash32 {
    match root.fleet {
        Some(id) => id,
        None => Hash32(blake3::derive_key("lanpatch fleet id v1", payload)),
    }
}

impl Payload for Root {
    const KIND: Kind = Kind::Root;
    const NAME: &'static str = "trust root";

    fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        if self.version.0 == 0 {
            return Err(ValidationError::field("version", "starts at 1"));
        }
        if (self.version.0 == 1) != self.fleet.is_none() {
            return Err(ValidationError::field("fleet", "must be absent in version 1 and present in later versions"));
        }
        for role in Role::ANY {
            let Some(rk) = self.roles.get(&role) else {
                if Role::ALL.contains(&role) {
                    return Err(ValidationError::MissingRole(role));
                }
                continue;
            };
            if rk.keys.len() > limits.max_keys_per_role {
                return Err(ValidationError::TooMany {
                    field: "role keys",
                    count: rk.keys.len(),
                    max: limits.max_keys_per_role,
                });
            }
            let mut distinct = rk.keys.clone();
            distinct.sort();
            distinct.dedup();
            if distinct.len() != rk.keys.len() {
                return Err(ValidationError::DuplicateKey(role));
            }
            if rk.threshold == 0 || rk.threshold as usize > rk.keys.len() {
                return Err(ValidationError::BadThreshold { role, threshold: rk.threshold, keys: rk.keys.len() });
            }
        }
        Ok(())
    }
}
