//! The `lanpatch-signer` commands an admin runs next, as text: one line per signature the
//! approve role's threshold needs (the first carrying the flags), then the publish. Shared by the
//! collector's console, its webhook notifications and `lanpatch-signer status`, so the three
//! never print different commands for the same situation. No I/O.

use crate::types::RingName;

/// Where the commands point: the bundle (a path, or a placeholder when the collector does not
/// know where the admin keeps it), the admin node's control socket, and how many approve
/// signatures an approval or a yank needs.
pub struct Next<'a> {
    pub bundle: &'a str,
    pub node: &'a str,
    pub approve_threshold: u32,
}

/// The placeholder for the `i`th of `n` approve keys: the admin running the line fills in theirs.
pub fn approve_key(i: u32, n: u32) -> String {
    if n <= 1 { "<approve key>".to_string() } else { format!("<approve key {i} of {n}>") }
}

/// The placeholder for a release's bundle directory.
pub fn bundle_placeholder(product: &str, version: u64) -> String {
    format!("<bundle of {product} {version}>")
}

/// How a new approval comes about.
pub enum Approve<'a> {
    /// The first ring: no gate.
    First,
    /// A later ring: the gate reads the previous ring's results from the collector.
    Gated { order: &'a [RingName], min_success: usize },
    /// A replacement for a halted or failed ring's approval (counts outcomes afresh); a ring
    /// after the first passes its gate again, so it carries the gate's flags.
    Replace { order: &'a [RingName], min_success: usize },
}

/// The lines that approve `ring` and publish the approval.
pub fn approve(n: &Next<'_>, ring: &RingName, how: Approve<'_>) -> Vec<String> {
    let t = n.approve_threshold.max(1);
    let b = n.bundle;
    let first = match how {
        Approve::First => format!("lanpatch-signer approve --key {} --ring {ring} {b}", approve_key(1, t)),
        Approve::Gated { order, min_success } => {
            let rings: Vec<&str> = order.iter().map(|r| r.as_str()).collect();
            format!(
                "lanpatch-signer approve --key {} --ring {ring} --rings {} --min-success {min_success} --node {} {b}",
                approve_key(1, t),
                rings.join(","),
                n.node
            )
        }
        Approve::Replace { order, min_success } if order.first().is_some_and(|f| f != ring) => {
            let rings: Vec<&str> = order.iter().map(|r| r.as_str()).collect();
            format!(
                "lanpatch-signer approve --key {} --ring {ring} --replace --rings {} --min-success {min_success} --node {} {b}",
                approve_key(1, t),
                rings.join(","),
                n.node
            )
        }
        Approve::Replace { .. } => {
            format!("lanpatch-signer approve --key {} --ring {ring} --replace {b}", approve_key(1, t))
        }
    };
    let mut lines = vec![first];
    lines.extend((2..=t).map(|i| format!("lanpatch-signer approve --key {} --ring {ring} {b}", approve_key(i, t))));
    lines.push(format!("lanpatch-signer publish --node {} {b}", n.node));
    lines
}

/// The lines that yank the release (co-signed as the approve role needs) and publish the yank.
/// `rollback`: also roll it back where it is installed.
pub fn yank(n: &Next<'_>, rollback: bool) -> Vec<String> {
    let t = n.approve_threshold.max(1);
    let b = n.bundle;
    let flag = if rollback { " --rollback" } else { "" };
    let mut lines = vec![format!("lanpatch-signer yank --key {} --reason \"<why>\"{flag} {b}", approve_key(1, t))];
    lines.extend((2..=t).map(|i| format!("lanpatch-signer yank --key {} {b}", approve_key(i, t))));
    lines.push(format!("lanpatch-signer publish --node {} {b}", n.node));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(s: &str) -> RingName {
        s.parse().unwrap()
    }

    #[test]
    fn a_threshold_of_two_gives_two_signing_lines_then_the_publish() {
        let n = Next { bundle: "tool-3", node: "/s", approve_threshold: 2 };
        let order = [ring("canary"), ring("broad")];
        assert_eq!(
            approve(&n, &ring("broad"), Approve::Gated { order: &order, min_success: 1 }),
            [
                "lanpatch-signer approve --key <approve key 1 of 2> --ring broad --rings canary,broad --min-success 1 --node /s tool-3",
                "lanpatch-signer approve --key <approve key 2 of 2> --ring broad tool-3",
                "lanpatch-signer publish --node /s tool-3",
            ]
        );
        assert_eq!(
            yank(&n, true),
            [
                "lanpatch-signer yank --key <approve key 1 of 2> --reason \"<why>\" --rollback tool-3",
                "lanpatch-signer yank --key <approve key 2 of 2> tool-3",
                "lanpatch-signer publish --node /s tool-3",
            ]
        );
    }

    #[test]
    fn a_threshold_of_one_names_one_key_and_a_replacement_says_replace() {
        let n = Next { bundle: "b", node: "/s", approve_threshold: 1 };
        let order = [ring("canary"), ring("broad")];
        assert_eq!(
            approve(&n, &ring("canary"), Approve::Replace { order: &order, min_success: 1 }),
            [
                "lanpatch-signer approve --key <approve key> --ring canary --replace b",
                "lanpatch-signer publish --node /s b"
            ]
        );
        // A later ring's replacement passes the gate again: it needs the collector and the order.
        assert_eq!(
            approve(&n, &ring("broad"), Approve::Replace { order: &order, min_success: 2 })[0],
            "lanpatch-signer approve --key <approve key> --ring broad --replace --rings canary,broad --min-success 2 --node /s b"
        );
        assert_eq!(
            approve(&n, &ring("canary"), Approve::First)[0],
            "lanpatch-signer approve --key <approve key> --ring canary b"
        );
    }
}
