//! Debian package versions (`[epoch:]upstream[-revision]`), ordered as `dpkg --compare-versions`
//! orders them. Parsing and ordering come from the `debversion` crate; a property test
//! (`protocol/tests/debver_dpkg.rs`) holds it to dpkg itself on random and real version strings.

use std::cmp::Ordering;

pub use debversion::Version as DebVersion;

/// A Debian version, or why the string is not one.
pub fn parse(v: &str) -> Result<DebVersion, String> {
    if v.is_empty() || v.len() > 256 {
        return Err(format!("{:?} is not a Debian version (empty or longer than 256 bytes)", trimmed(v)));
    }
    if let Some((epoch, _)) = v.split_once(':')
        && (epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{:?} is not a Debian version (the epoch must be a number)", trimmed(v)));
    }
    if v.ends_with('-') {
        return Err(format!("{:?} is not a Debian version (the revision is empty)", trimmed(v)));
    }
    let first = v.split_once(':').map_or(v, |(_, rest)| rest);
    if !first.starts_with(|c: char| c.is_ascii_digit()) {
        // dpkg warns about these and refuses them in its database.
        return Err(format!("{:?} is not a Debian version (the upstream part must start with a digit)", trimmed(v)));
    }
    v.parse::<DebVersion>().map_err(|_| format!("{:?} is not a Debian version", trimmed(v)))
}

fn trimmed(v: &str) -> String {
    v.chars().take(40).collect()
}

/// Orders two version strings as dpkg does, or `None` when either is not a Debian version.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(parse(a).ok()?.cmp(&parse(b).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn orders_like_dpkg() {
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0-1", Less),
            ("1:0.9", "2.0", Greater),
            ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
            ("1.2.3a", "1.2.3", Greater),
            ("1.0-1", "1.0-1~bpo", Greater),
            ("3.0.11-1~deb12u2", "3.0.13-1~deb12u1", Less),
            ("0:1.0", "1.0", Equal),
        ] {
            assert_eq!(compare(a, b), Some(want), "{a} vs {b}");
        }
    }

    #[test]
    fn strings_that_are_not_debian_versions_do_not_compare() {
        for bad in ["", "abc", "1.0 1", "1:", "x:1.0", "1.0-", "1_0"] {
            assert_eq!(compare(bad, "1.0"), None, "{bad:?}");
        }
    }
}
