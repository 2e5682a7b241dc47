//! Debian package relations (`Depends`, `Pre-Depends`, `Conflicts`, `Breaks`), checked against
//! what a host will have once a release's packages are unpacked: so a release with a missing
//! dependency or a conflict is refused before dpkg touches anything, naming the relation.
//!
//! The grammar (Debian Policy 7.1): relations separated by `,`, alternatives by `|`, each
//! `name[:arch] [(op version)] [[arch list]] [<build profiles>]`. Architecture lists and build
//! profiles restrict build relations; in a binary package's fields they do not occur, and a
//! relation carrying one is ignored rather than guessed at.

use std::cmp::Ordering;

use lanpatch_protocol::debver;

/// A package that is (or will be) on the host: name, version, and what it provides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Present {
    pub name: String,
    pub version: String,
    /// Virtual packages it provides, each with the version it provides, if any.
    pub provides: Vec<(String, Option<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Relation {
    name: String,
    constraint: Option<(Op, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Lt,
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }

    fn holds(self, o: Ordering) -> bool {
        match self {
            Op::Lt => o == Ordering::Less,
            Op::Le => o != Ordering::Greater,
            Op::Eq => o == Ordering::Equal,
            Op::Ge => o != Ordering::Less,
            Op::Gt => o == Ordering::Greater,
        }
    }
}

/// One relation, or why it cannot be read.
fn parse_relation(text: &str) -> Result<Option<Relation>, String> {
    let text = text.trim();
    let outside: String = match (text.find('('), text.find(')')) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &text[..a], &text[b + 1..]),
        _ => text.to_string(),
    };
    if outside.contains('[') || outside.contains('<') {
        // Architecture or profile restrictions: not for binary packages.
        return Ok(None);
    }
    let (name_part, constraint) = match text.split_once('(') {
        None => (text, None),
        Some((n, rest)) => {
            let inner = rest.split_once(')').map(|(i, _)| i).ok_or_else(|| format!("unclosed '(' in {text:?}"))?;
            let inner = inner.trim();
            let op_len = inner.chars().take_while(|c| "<>=".contains(*c)).count();
            let op = Op::parse(&inner[..op_len]).ok_or_else(|| format!("unknown operator in {text:?}"))?;
            let version = inner[op_len..].trim();
            if debver::parse(version).is_err() {
                return Err(format!("{version:?} in {text:?} is not a Debian version"));
            }
            (n, Some((op, version.to_string())))
        }
    };
    // `name:any`, `name:native` or `name:amd64`: the name is what is checked here.
    let name = name_part.trim().split(':').next().unwrap_or("").to_string();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("no package name in {text:?}"));
    }
    Ok(Some(Relation { name, constraint }))
}

fn satisfied(r: &Relation, have: &[Present]) -> bool {
    have.iter().any(|p| {
        let real = p.name == r.name
            && match &r.constraint {
                None => true,
                Some((op, v)) => debver::compare(&p.version, v).is_some_and(|o| op.holds(o)),
            };
        let virtual_ = p.provides.iter().any(|(name, version)| {
            name == &r.name
                && match (&r.constraint, version) {
                    (None, _) => true,
                    (Some((op, v)), Some(pv)) => debver::compare(pv, v).is_some_and(|o| op.holds(o)),
                    (Some(_), None) => false,
                }
        });
        real || virtual_
    })
}

/// The relations of `field` (a `Depends` or `Pre-Depends` value) that nothing in `have`
/// satisfies, each as written, or why the field cannot be read.
pub fn unmet(field: &str, have: &[Present]) -> Result<Vec<String>, String> {
    let mut missing = Vec::new();
    for group in field.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let mut alternatives = Vec::new();
        for alt in group.split('|') {
            if let Some(r) = parse_relation(alt)? {
                alternatives.push(r);
            }
        }
        if !alternatives.is_empty() && !alternatives.iter().any(|r| satisfied(r, have)) {
            missing.push(group.to_string());
        }
    }
    Ok(missing)
}

/// The packages in `have` that a `Conflicts` or `Breaks` value names, each as "RELATION
/// (NAME VERSION here)", or why the field cannot be read.
pub fn clashes(field: &str, have: &[Present]) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for text in field.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let Some(r) = parse_relation(text)? else { continue };
        for p in have.iter().filter(|p| satisfied(&r, std::slice::from_ref(p))) {
            found.push(format!("{text} ({} {} here)", p.name, p.version));
        }
    }
    Ok(found)
}

/// Reads a `Provides` value (`a, b (= 1.0)`).
pub fn parse_provides(field: &str) -> Vec<(String, Option<String>)> {
    field
        .split(',')
        .filter_map(|p| match parse_relation(p) {
            Ok(Some(Relation { name, constraint: Some((Op::Eq, v)) })) => Some((name, Some(v))),
            Ok(Some(Relation { name, constraint: None })) => Some((name, None)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Vec<Present> {
        vec![
            Present { name: "libc6".into(), version: "2.36-9+deb12u4".into(), provides: vec![] },
            Present { name: "mawk".into(), version: "1.3.4.20200120-3.1".into(), provides: vec![("awk".into(), None)] },
            Present {
                name: "libfoo1".into(),
                version: "1.0-1".into(),
                provides: vec![("libfoo-abi-1".into(), Some("1.0".into()))],
            },
        ]
    }

    #[test]
    fn a_versioned_dependency_is_met_only_by_a_version_that_satisfies_it() {
        assert_eq!(unmet("libc6 (>= 2.34)", &host()), Ok(vec![]));
        assert_eq!(unmet("libc6 (>= 2.37)", &host()), Ok(vec!["libc6 (>= 2.37)".to_string()]));
        assert_eq!(unmet("libc6 (<< 2.36-9+deb12u10)", &host()), Ok(vec![]));
        assert_eq!(unmet("libc6 (= 2.36-9+deb12u4)", &host()), Ok(vec![]));
        assert_eq!(unmet("libc6 (>> 2.36-9+deb12u4)", &host()).map(|m| m.len()), Ok(1));
    }

    #[test]
    fn alternatives_and_virtual_packages_count_and_each_unmet_group_is_named() {
        assert_eq!(unmet("awk, libc6:any (>= 2.0) | missing", &host()), Ok(vec![]));
        assert_eq!(unmet("libfoo-abi-1 (= 1.0)", &host()), Ok(vec![]));
        // A versioned relation is not met by an unversioned Provides.
        assert_eq!(unmet("awk (>= 1)", &host()).map(|m| m.len()), Ok(1));
        assert_eq!(
            unmet("lp-missing (>= 1), libc6, other | another", &host()),
            Ok(vec!["lp-missing (>= 1)".to_string(), "other | another".to_string()])
        );
    }

    #[test]
    fn an_unreadable_relation_is_an_error_not_a_pass() {
        assert!(unmet("libc6 (>= 2.0", &host()).is_err());
        assert!(unmet("libc6 (~ 2.0)", &host()).is_err());
        assert!(unmet("libc6 (>= not-a-version)", &host()).is_err());
    }

    #[test]
    fn a_conflict_or_break_names_each_package_it_matches_by_name_version_or_what_it_provides() {
        assert_eq!(
            clashes("libc6 (<< 2.37), mawk", &host()),
            Ok(vec![
                "libc6 (<< 2.37) (libc6 2.36-9+deb12u4 here)".to_string(),
                "mawk (mawk 1.3.4.20200120-3.1 here)".to_string()
            ])
        );
        assert_eq!(clashes("libc6 (<< 2.36), gawk", &host()), Ok(vec![]));
        assert_eq!(clashes("awk", &host()), Ok(vec!["awk (mawk 1.3.4.20200120-3.1 here)".to_string()]));
        assert!(clashes("libc6 (<< nope)", &host()).is_err());
    }

    #[test]
    fn provides_are_read_with_their_versions() {
        assert_eq!(
            parse_provides("awk, libfoo-abi-1 (= 1.0)"),
            vec![("awk".to_string(), None), ("libfoo-abi-1".to_string(), Some("1.0".to_string()))]
        );
    }
}
