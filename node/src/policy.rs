//! Whether a release applies to this node. Plain functions over plain data.

use lanpatch_protocol::{Tag, Targets};

/// The facts about this node that targeting looks at.
#[derive(Clone, Debug)]
pub struct Facts {
    pub os: String,
    pub arch: String,
    pub hostname: String,
    pub tags: Vec<Tag>,
}

impl Facts {
    pub fn local(hostname: String, tags: Vec<Tag>) -> Facts {
        Facts { os: std::env::consts::OS.into(), arch: std::env::consts::ARCH.into(), hostname, tags }
    }
}

/// `Ok` if the release targets this node, otherwise the reason it does not. Every non-empty
/// target list must match; an empty list matches everything.
pub fn targets_match(t: &Targets, f: &Facts) -> Result<(), String> {
    if !t.os.is_empty() && !t.os.iter().any(|o| o.eq_ignore_ascii_case(&f.os)) {
        return Err(format!("targets OS {:?}, this node runs {}", t.os, f.os));
    }
    if !t.arch.is_empty() && !t.arch.iter().any(|a| a.eq_ignore_ascii_case(&f.arch)) {
        return Err(format!("targets architecture {:?}, this node is {}", t.arch, f.arch));
    }
    if !t.hostnames.is_empty() && !t.hostnames.iter().any(|h| h.eq_ignore_ascii_case(&f.hostname)) {
        return Err(format!("targets hosts {:?}, this node is {}", t.hostnames, f.hostname));
    }
    if !t.tags.is_empty() && !t.tags.iter().any(|tag| f.tags.contains(tag)) {
        let want: Vec<&str> = t.tags.iter().map(|t| t.as_str()).collect();
        return Err(format!("targets tags {want:?}, this node has none of them"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            os: "linux".into(),
            arch: "x86_64".into(),
            hostname: "kiosk-7".into(),
            tags: vec!["kiosk".parse().unwrap()],
        }
    }

    #[test]
    fn empty_targets_match_every_node() {
        assert!(targets_match(&Targets::default(), &facts()).is_ok());
    }

    #[test]
    fn every_non_empty_list_must_match() {
        let t = Targets { os: vec!["linux".into()], tags: vec!["kiosk".parse().unwrap()], ..Targets::default() };
        assert!(targets_match(&t, &facts()).is_ok());
        let t = Targets { os: vec!["linux".into()], tags: vec!["server".parse().unwrap()], ..Targets::default() };
        assert!(targets_match(&t, &facts()).unwrap_err().contains("tags"));
        let t = Targets { os: vec!["windows".into()], ..Targets::default() };
        assert!(targets_match(&t, &facts()).unwrap_err().contains("OS"));
        let t = Targets { hostnames: vec!["other".into()], ..Targets::default() };
        assert!(targets_match(&t, &facts()).unwrap_err().contains("hosts"));
    }
}
