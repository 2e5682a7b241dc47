//! Validated newtypes. Untrusted strings and byte arrays become one of these once, at the edge
//! (decoding goes through `TryFrom`), so the rest of the code never re-checks them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value was refused when building a validated newtype.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long, the limit is {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("{what} {value:?} contains {bad:?}, allowed are {allowed}")]
    BadChar { what: &'static str, value: String, bad: char, allowed: &'static str },
    #[error("path {0:?} is absolute; release file names must be relative")]
    AbsolutePath(String),
    #[error("path {0:?} has a `..`, `.` or empty component")]
    BadComponent(String),
    #[error("{what} {value:?} is not valid: {why}")]
    Invalid { what: &'static str, value: String, why: &'static str },
}

/// A BLAKE3 hash: the content address of a chunk, a file or a signed payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    pub fn of(bytes: &[u8]) -> Self {
        Hash32(*blake3::hash(bytes).as_bytes())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The first 8 bytes in hex: enough to tell hashes apart in logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl From<blake3::Hash> for Hash32 {
    fn from(h: blake3::Hash) -> Self {
        Hash32(*h.as_bytes())
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", self.short())
    }
}
impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Hash32 {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s, "hash").map(Hash32)
    }
}

fn parse_hex32(s: &str, what: &'static str) -> Result<[u8; 32], NameError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).map_err(|_| NameError::Invalid {
        what,
        value: s.chars().take(80).collect(),
        why: "expected 64 hex digits",
    })?;
    Ok(out)
}

/// Fixed-size byte arrays as serde byte strings (serde's derive only covers arrays up to 32 and
/// encodes them element by element).
pub(crate) mod byte_array {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        struct V<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for V<N> {
            type Value = [u8; N];
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V::<N>)
    }
}

impl Serialize for Hash32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        byte_array::serialize(&self.0, s)
    }
}
impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        byte_array::deserialize(d).map(Hash32)
    }
}

/// An ed25519 public key. Keys are identified by their bytes: no separate key-id scheme to get
/// wrong, and "count each key once" is plain equality.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}
impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl FromStr for PublicKey {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s, "public key").map(PublicKey)
    }
}
impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        byte_array::serialize(&self.0, s)
    }
}
impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        byte_array::deserialize(d).map(PublicKey)
    }
}

/// Seconds since the Unix epoch (UTC). Signed metadata carries no floating point and no time zones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn plus_secs(self, secs: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs))
    }
}
impl Timestamp {
    /// The time as RFC 3339 in UTC (`2026-12-07T20:28:00Z`), for people.
    pub fn rfc3339(self) -> String {
        let secs = self.0;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm, proleptic Gregorian).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3_600, rem % 3_600 / 60, rem % 60)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

/// A monotonically increasing version number. A node never accepts a version lower than one it
/// already trusts for the same product (rollback protection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version(pub u64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl FromStr for Version {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u64>().map(Version).map_err(|_| NameError::Invalid {
            what: "version",
            value: s.chars().take(40).collect(),
            why: "expected a whole number (the release sequence number)",
        })
    }
}

/// Checks a short identifier: 1..=max bytes of `[a-z0-9._-]`, starting with a letter or digit.
fn check_ident(what: &'static str, s: &str, max: usize) -> Result<(), NameError> {
    const ALLOWED: &str = "lowercase letters, digits, '.', '_' and '-'";
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > max {
        return Err(NameError::TooLong { what, len: s.len(), max });
    }
    for (i, c) in s.chars().enumerate() {
        let ok = c.is_ascii_lowercase() || c.is_ascii_digit() || (i > 0 && matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(NameError::BadChar { what, value: s.to_string(), bad: c, allowed: ALLOWED });
        }
    }
    Ok(())
}

/// `Deserialize` through `TryFrom<String>`, reporting the typed refusal (see `encoding::refuse`).
macro_rules! validated_deserialize {
    ($name:ident) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::try_from(s).map_err(crate::encoding::refuse)
            }
        }
    };
}

macro_rules! ident_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                check_ident($what, &s, $max)?;
                Ok($name(s))
            }
        }
        validated_deserialize!($name);
        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::try_from(s.to_string())
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

ident_newtype!(
    /// A rollout ring such as `canary`, `pilot` or `broad`.
    RingName, "ring name", 32
);
ident_newtype!(
    /// A site (an office, a data centre, one remote endpoint's home): the nodes that share one
    /// LAN and one WAN link, and split that link's work among themselves.
    SiteName, "site name", 32
);
ident_newtype!(
    /// A product name: the unit whose versions must only go up.
    ProductName, "product name", 64
);
ident_newtype!(
    /// A free-form node tag used for targeting (`kiosk`, `site-berlin`).
    Tag, "tag", 64
);

/// A file name inside a release: relative, `/`-separated, no `..`, `.` or empty components, no
/// backslashes or control characters. A node joins it under its staging directory, so this type is
/// the guard against path traversal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct RelPath(String);

impl RelPath {
    pub const MAX_LEN: usize = 255;
    pub const MAX_DEPTH: usize = 16;
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl TryFrom<String> for RelPath {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        const WHAT: &str = "file name";
        if s.is_empty() {
            return Err(NameError::Empty { what: WHAT });
        }
        if s.len() > Self::MAX_LEN {
            return Err(NameError::TooLong { what: WHAT, len: s.len(), max: Self::MAX_LEN });
        }
        if s.starts_with('/') || s.as_bytes().get(1) == Some(&b':') {
            return Err(NameError::AbsolutePath(s));
        }
        if let Some(bad) = s.chars().find(|c| c.is_control() || *c == '\\') {
            return Err(NameError::BadChar {
                what: WHAT,
                value: s,
                bad,
                allowed: "no control characters or backslashes",
            });
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
            return Err(NameError::BadComponent(s));
        }
        if parts.len() > Self::MAX_DEPTH {
            return Err(NameError::Invalid { what: WHAT, value: s, why: "more than 16 directory levels" });
        }
        Ok(RelPath(s))
    }
}
validated_deserialize!(RelPath);
impl FromStr for RelPath {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::try_from(s.to_string())
    }
}
impl From<RelPath> for String {
    fn from(v: RelPath) -> String {
        v.0
    }
}
impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A CVE identifier, `CVE-YYYY-NNNN` with four or more digits in the last part.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct CveId(String);

impl CveId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for CveId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        let valid = s.len() <= 32
            && s.strip_prefix("CVE-").is_some_and(|rest| {
                rest.split_once('-').is_some_and(|(year, num)| {
                    year.len() == 4
                        && year.bytes().all(|b| b.is_ascii_digit())
                        && num.len() >= 4
                        && num.bytes().all(|b| b.is_ascii_digit())
                })
            });
        if valid {
            Ok(CveId(s))
        } else {
            Err(NameError::Invalid {
                what: "CVE id",
                value: s.chars().take(40).collect(),
                why: "expected CVE-YYYY-NNNN",
            })
        }
    }
}
validated_deserialize!(CveId);
impl FromStr for CveId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::try_from(s.to_string())
    }
}
impl From<CveId> for String {
    fn from(v: CveId) -> String {
        v.0
    }
}
impl fmt::Display for CveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn timestamps_print_as_rfc3339_utc() {
        assert_eq!(Timestamp(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp(951_782_400).rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(Timestamp(1_796_675_280).rfc3339(), "2026-12-07T20:28:00Z");
        assert_eq!(Timestamp(4_102_444_799).rfc3339(), "2099-12-31T23:59:59Z");
    }

    use super::*;

    #[test]
    fn rel_path_refuses_parent_components() {
        for bad in ["..", "../etc/passwd", "a/../b", "a/..", "./a", "a//b", "a/"] {
            assert!(matches!(RelPath::from_str(bad), Err(NameError::BadComponent(_))), "{bad}");
        }
    }

    #[test]
    fn rel_path_refuses_absolute_and_backslash() {
        assert!(matches!(RelPath::from_str("/etc/passwd"), Err(NameError::AbsolutePath(_))));
        assert!(matches!(RelPath::from_str("C:/x"), Err(NameError::AbsolutePath(_))));
        assert!(matches!(RelPath::from_str("a\\..\\b"), Err(NameError::BadChar { .. })));
        assert!(matches!(RelPath::from_str("a\nb"), Err(NameError::BadChar { .. })));
    }

    #[test]
    fn rel_path_accepts_nested_names() {
        assert_eq!(RelPath::from_str("bin/tool-1.2.tar.gz").map(|p| p.components().count()), Ok(2));
        assert!(RelPath::from_str("..hidden").is_ok());
    }

    #[test]
    fn idents_refuse_uppercase_space_and_overlong() {
        assert!(RingName::from_str("Canary").is_err());
        assert!(RingName::from_str("can ary").is_err());
        assert!(RingName::from_str("-canary").is_err());
        assert!(matches!(RingName::from_str(&"a".repeat(33)), Err(NameError::TooLong { max: 32, .. })));
        assert!(RingName::from_str("broad-2").is_ok());
    }

    #[test]
    fn cve_ids_are_checked() {
        assert!(CveId::from_str("CVE-2024-3094").is_ok());
        assert!(CveId::from_str("CVE-2024-123456").is_ok());
        assert!(CveId::from_str("CVE-24-3094").is_err());
        assert!(CveId::from_str("cve-2024-3094").is_err());
    }

    #[test]
    fn hash_hex_round_trips_and_rejects_garbage() {
        let h = Hash32::of(b"x");
        assert_eq!(Hash32::from_str(&h.to_hex()), Ok(h));
        assert!(Hash32::from_str("zz").is_err());
    }
}
