//! Whether a release applies to this node. Plain functions over plain data.

use lanpatch_protocol::{Approval, Tag, Targets, Timestamp};
use serde::Deserialize;

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

/// A maintenance window as written in node.toml: `days` (mon..sun, or "daily"), `start` and
/// `end` as "HH:MM" in the node's local time. An end before the start crosses midnight.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
}

/// A parsed maintenance window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Monday = 0.
    days: [bool; 7],
    start_min: u32,
    end_min: u32,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s.split_once(':').ok_or_else(|| format!("{s:?} is not HH:MM"))?;
    let (h, m): (u32, u32) =
        (h.parse().map_err(|_| format!("{s:?} is not HH:MM"))?, m.parse().map_err(|_| format!("{s:?} is not HH:MM"))?);
    if h > 24 || m > 59 || (h == 24 && m > 0) {
        return Err(format!("{s:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

impl Window {
    pub fn parse(spec: &WindowSpec) -> Result<Window, String> {
        let mut days = [false; 7];
        for d in &spec.days {
            let d = d.to_ascii_lowercase();
            if d == "daily" {
                days = [true; 7];
            } else {
                let i = DAYS
                    .iter()
                    .position(|x| d.starts_with(x))
                    .ok_or_else(|| format!("unknown day {d:?} (use mon..sun or daily)"))?;
                days[i] = true;
            }
        }
        if !days.iter().any(|d| *d) {
            return Err("a maintenance window needs at least one day".into());
        }
        Ok(Window { days, start_min: parse_hhmm(&spec.start)?, end_min: parse_hhmm(&spec.end)? })
    }

    /// Whether local time (weekday with Monday = 0, minute of the day) is inside the window.
    pub fn contains(&self, weekday: u32, minute: u32) -> bool {
        let today = self.days[(weekday % 7) as usize];
        let yesterday = self.days[((weekday + 6) % 7) as usize];
        if self.start_min <= self.end_min {
            today && minute >= self.start_min && minute < self.end_min
        } else {
            // Crosses midnight: the evening part belongs to today, the morning part to yesterday.
            (today && minute >= self.start_min) || (yesterday && minute < self.end_min)
        }
    }
}

/// No windows configured means "any time".
pub fn in_windows(windows: &[Window], weekday: u32, minute: u32) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(weekday, minute))
}

/// Whether an approved, downloaded release may be installed now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    NotApproved,
    NotBefore(Timestamp),
    OutsideWindow,
    /// The approval has expired (checked at the moment of use, not only on arrival).
    ApprovalExpired,
    Go(&'static str),
}

pub fn install_gate(approval: Option<&Approval>, urgent: bool, now: Timestamp, in_window: bool) -> Gate {
    let Some(a) = approval else { return Gate::NotApproved };
    if a.expires <= now {
        return Gate::ApprovalExpired;
    }
    if now < a.not_before {
        return Gate::NotBefore(a.not_before);
    }
    if urgent {
        return Gate::Go("the release is urgent");
    }
    if a.deadline.is_some_and(|d| now >= d) {
        return Gate::Go("the approval's deadline has passed");
    }
    if in_window {
        return Gate::Go("inside the maintenance window");
    }
    Gate::OutsideWindow
}

#[cfg(test)]
mod tests {
    use super::*;

    fn win(days: &[&str], start: &str, end: &str) -> Window {
        Window::parse(&WindowSpec {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            end: end.into(),
        })
        .unwrap()
    }

    fn approval(not_before: u64, deadline: Option<u64>) -> Approval {
        Approval {
            manifest: lanpatch_protocol::Hash32([0; 32]),
            product: "p".parse().unwrap(),
            version: lanpatch_protocol::Version(1),
            ring: "broad".parse().unwrap(),
            issued: Timestamp(0),
            not_before: Timestamp(not_before),
            deadline: deadline.map(Timestamp),
            expires: Timestamp(u64::MAX),
            forced_reason: None,
            rules: None,
            retry: None,
        }
    }

    #[test]
    fn expired_approval_never_lets_an_install_through_even_urgent_or_past_its_deadline() {
        let mut a = approval(0, Some(10));
        a.expires = Timestamp(100);
        assert!(matches!(install_gate(Some(&a), true, Timestamp(100), true), Gate::ApprovalExpired));
        assert!(matches!(install_gate(Some(&a), false, Timestamp(99), true), Gate::Go(_)));
    }

    #[test]
    fn window_on_listed_days_between_start_and_end() {
        let w = win(&["mon", "wed"], "02:00", "05:00");
        assert!(w.contains(0, 2 * 60));
        assert!(w.contains(2, 4 * 60 + 59));
        assert!(!w.contains(0, 5 * 60));
        assert!(!w.contains(1, 3 * 60));
    }

    #[test]
    fn window_crossing_midnight_belongs_to_the_day_it_starts() {
        let w = win(&["fri"], "22:00", "02:00");
        assert!(w.contains(4, 23 * 60));
        assert!(w.contains(5, 60), "saturday 01:00 is still friday night's window");
        assert!(!w.contains(4, 60), "friday 01:00 belongs to thursday night");
    }

    #[test]
    fn bad_windows_are_refused_with_a_reason() {
        let bad = |d: &str, s: &str, e: &str| {
            Window::parse(&WindowSpec { days: vec![d.into()], start: s.into(), end: e.into() })
        };
        assert!(bad("funday", "01:00", "02:00").unwrap_err().contains("unknown day"));
        assert!(bad("mon", "25:00", "02:00").unwrap_err().contains("time of day"));
        assert!(bad("mon", "1am", "02:00").unwrap_err().contains("HH:MM"));
    }

    #[test]
    fn install_waits_for_approval_not_before_and_window() {
        assert_eq!(install_gate(None, true, Timestamp(10), true), Gate::NotApproved);
        assert_eq!(install_gate(Some(&approval(20, None)), true, Timestamp(10), true), Gate::NotBefore(Timestamp(20)));
        assert_eq!(install_gate(Some(&approval(0, None)), false, Timestamp(10), false), Gate::OutsideWindow);
        assert!(matches!(install_gate(Some(&approval(0, None)), false, Timestamp(10), true), Gate::Go(_)));
    }

    #[test]
    fn passed_deadline_or_urgency_overrides_the_window() {
        assert_eq!(
            install_gate(Some(&approval(0, Some(5))), false, Timestamp(10), false),
            Gate::Go("the approval's deadline has passed")
        );
        assert_eq!(install_gate(Some(&approval(0, Some(50))), false, Timestamp(10), false), Gate::OutsideWindow);
        assert_eq!(
            install_gate(Some(&approval(0, None)), true, Timestamp(10), false),
            Gate::Go("the release is urgent")
        );
    }

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
