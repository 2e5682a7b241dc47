//! "Did you mean": the known name nearest to a mistyped one, for error messages that name
//! the fix (config keys, release files).

/// Levenshtein distance between two strings, in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The candidate nearest to `typed`, if it is near enough to be the one meant (at most two
/// edits, or a quarter of its length for long names).
pub fn nearest<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(typed, c), c))
        .filter(|(d, c)| *d > 0 && *d <= 2.max(c.chars().count() / 4))
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_known_name_is_suggested_and_nothing_far_off() {
        assert_eq!(edit_distance("rign", "ring"), 2);
        assert_eq!(nearest("rign", ["ring", "tags", "site"]), Some("ring"));
        assert_eq!(nearest("instal.sh", ["install.sh", "payload.bin"]), Some("install.sh"));
        assert_eq!(nearest("zzzzzz", ["ring", "tags"]), None);
        assert_eq!(nearest("ring", ["ring"]), None, "an exact match is no suggestion");
    }
}
