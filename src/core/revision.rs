//! Revisions (commit SHAs) as the pipeline compares and prints them: one rule for
//! "the same commit" and one short form, so every message abbreviates alike.

/// How many hex digits a revision is shortened to in messages.
pub const SHORT_LEN: usize = 10;

/// Returns whether two revisions name the same commit (a full SHA and its prefix of at
/// least 7 digits match, case-insensitively).
pub fn revisions_match(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim().to_ascii_lowercase(), b.trim().to_ascii_lowercase());
    if a.is_empty() || b.is_empty() {
        return false;
    }
    let (short, long) = if a.len() <= b.len() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    short.len() >= 7 && long.starts_with(short.as_str())
}

/// Returns `sha` shortened to [`SHORT_LEN`] characters for messages (whole when shorter).
pub fn short(sha: &str) -> &str {
    sha.get(..SHORT_LEN).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cuts_to_ten_and_keeps_what_is_shorter() {
        assert_eq!(short("0123456789abcdef"), "0123456789");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short(""), "");
    }
}
