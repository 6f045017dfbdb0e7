//! Task branch names: derived from the work item key and title, always a valid git ref.
//!
//! The rules are git's `check-ref-format` for a branch name plus Gitea's 100-character
//! limit on `new_branch_name`. A later round whose old branch still exists gets
//! [`round_branch_name`]. No I/O here.

/// The longest branch name Gitea accepts when creating a branch.
pub const MAX_BRANCH_LEN: usize = 100;

/// Derives the task branch from the work item key and title: `orch-65-fix-the-login-page`.
///
/// Lowercase ASCII letters and digits survive; every other run of characters becomes
/// one `-`; the slug is cut on a character boundary so the whole name fits in
/// [`MAX_BRANCH_LEN`]. The same key and title always give the same name, and the result
/// always passes [`check_ref_name`].
pub fn branch_name(key: &str, title: &str) -> String {
    let key_slug = slug(key, 40);
    let key_slug = if key_slug.is_empty() {
        "task".to_string()
    } else {
        key_slug
    };
    let room = MAX_BRANCH_LEN - key_slug.len() - 1;
    let title_slug = slug(title, room.min(60));
    if title_slug.is_empty() {
        key_slug
    } else {
        format!("{key_slug}-{title_slug}")
    }
}

/// What separates a task's first-round branch name from a round number in
/// [`round_branch_name`]. [`branch_name`] never writes two dashes in a row, so a name
/// holding the marker is always a round name and its first-round part is unambiguous.
pub const ROUND_MARKER: &str = "--r";

/// Returns the branch name of round `round` (2 or more) for a task whose branch is
/// `branch` (its first-round name or any later round's): the first-round name, then
/// [`ROUND_MARKER`] and the round: `orch-65-fix-the-login-page--r2`.
///
/// It is used when a new round starts while the old branch still exists (its merge did
/// not delete it); when the merge deleted it, the round reuses the same name. The
/// first-round part is everything before the first `--`, cut (on a character boundary,
/// trailing `-`, `.` and `/` dropped) so the whole name fits in [`MAX_BRANCH_LEN`].
/// Giving it its own output returns that output, so repeating the branch step of one
/// round never stacks suffixes; and for a name [`branch_name`] derived, the result always
/// passes [`check_ref_name`].
pub fn round_branch_name(branch: &str, round: u32) -> String {
    let base = branch.find("--").map_or(branch, |i| &branch[..i]);
    let suffix = format!("{ROUND_MARKER}{round}");
    let room = MAX_BRANCH_LEN - suffix.len();
    let mut cut = base.len().min(room);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    let base = base[..cut].trim_end_matches(['-', '.', '/']);
    let base = if base.is_empty() { "task" } else { base };
    format!("{base}{suffix}")
}

fn slug(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        } else {
            dash = true;
        }
        if out.len() >= max {
            break;
        }
    }
    out.truncate(max);
    out.trim_end_matches('-').to_string()
}

/// Checks a branch name against git's ref-name rules.
///
/// # Errors
/// Says which rule the name breaks.
pub fn check_ref_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_BRANCH_LEN {
        return Err("longer than 100 characters");
    }
    if name.starts_with('-') || name.starts_with('/') || name.ends_with('/') || name.ends_with('.')
    {
        return Err("starts with - or /, or ends with / or .");
    }
    if name == "@" || name.contains("..") || name.contains("@{") || name.contains("//") {
        return Err("contains .., @{ or //, or is @");
    }
    if name.ends_with(".lock")
        || name
            .split('/')
            .any(|c| c.starts_with('.') || c.ends_with(".lock"))
    {
        return Err("a component starts with . or ends with .lock");
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == ' ' || "~^:?*[\\\x7f".contains(c))
    {
        return Err("contains a space, a control character or one of ~ ^ : ? * [ \\");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_titles() {
        assert_eq!(
            branch_name("ORCH-65", "Fix the login page"),
            "orch-65-fix-the-login-page"
        );
        assert_eq!(branch_name("ORCH-7", ""), "orch-7");
    }

    #[test]
    fn hostile_titles_still_give_valid_refs() {
        let long = "x".repeat(500);
        let titles = [
            "a/b/c",
            "..",
            "a..b",
            "@{upstream}",
            "tab\there",
            "nul\0byte",
            "café ünïcödé 日本語",
            "ends with dot.",
            "x.lock",
            "-leading dash",
            "   ",
            "~^:?*[\\",
            &long,
            "🚀🚀🚀",
            "refs/heads/main",
            "a//b",
        ];
        for t in titles {
            let b = branch_name("ORCH-65", t);
            assert_eq!(check_ref_name(&b), Ok(()), "{t:?} gave {b:?}");
            assert!(b.starts_with("orch-65"), "{b}");
            assert_eq!(b, branch_name("ORCH-65", t), "stable");
        }
        assert_eq!(
            branch_name("ORCH-65", "café au lait"),
            "orch-65-caf-au-lait"
        );
    }

    #[test]
    fn hostile_keys_still_give_valid_refs() {
        for k in ["", "..", "/", "@{", &"K".repeat(300)] {
            let b = branch_name(k, "title");
            assert_eq!(check_ref_name(&b), Ok(()), "{k:?} gave {b:?}");
        }
    }

    #[test]
    fn round_names_append_the_round_to_the_first_round_name() {
        let b = "orch-65-fix-the-login-page";
        assert_eq!(round_branch_name(b, 2), "orch-65-fix-the-login-page--r2");
        // From a later round's name: the first-round part is kept, not stacked.
        assert_eq!(
            round_branch_name("orch-65-fix-the-login-page--r2", 3),
            "orch-65-fix-the-login-page--r3"
        );
        // Its own output gives the same name (a repeated branch step of one round).
        let r2 = round_branch_name(b, 2);
        assert_eq!(round_branch_name(&r2, 2), r2);
        // A title that ends like a round suffix is still a first-round name.
        let tricky = branch_name("ORCH-5", "support r2");
        assert_eq!(tricky, "orch-5-support-r2");
        assert_eq!(round_branch_name(&tricky, 2), "orch-5-support-r2--r2");
        assert_ne!(round_branch_name(&tricky, 2), tricky);
    }

    #[test]
    fn round_names_are_valid_refs_for_every_derived_name_and_round() {
        let long = "x".repeat(500);
        let titles = [
            "",
            "a/b/c",
            "..",
            "x.lock",
            "café ünïcödé",
            &long,
            "-",
            "~^:?*[",
        ];
        for t in titles {
            for k in ["ORCH-65", "", &"K".repeat(300)] {
                let first = branch_name(k, t);
                assert!(!first.contains("--"), "{first}");
                for round in [2, 3, 10, 99_999, u32::MAX] {
                    let r = round_branch_name(&first, round);
                    assert_eq!(check_ref_name(&r), Ok(()), "{k:?} {t:?} {round} gave {r:?}");
                    assert!(r.ends_with(&format!("--r{round}")), "{r}");
                    assert_ne!(r, first);
                    assert_eq!(round_branch_name(&r, round), r, "stable");
                }
            }
        }
    }

    #[test]
    fn round_names_of_odd_stored_names_still_fit() {
        // Names not written by branch_name (an older row, a hand edit): still bounded,
        // never empty, never ending in a separator before the marker.
        for odd in ["", "--", "-", "a-", "a.", "a/", "é".repeat(80).as_str()] {
            let r = round_branch_name(odd, 7);
            assert!(r.len() <= MAX_BRANCH_LEN, "{r}");
            assert!(r.ends_with("--r7"), "{r}");
            assert_eq!(check_ref_name(&r), Ok(()), "{odd:?} gave {r:?}");
        }
    }

    #[test]
    fn ref_rules() {
        for bad in [
            "", "a..b", "a b", "-a", "a/", "a.", "a.lock", ".a", "a/.b", "a@{b", "a:b", "a\x01",
        ] {
            assert!(check_ref_name(bad).is_err(), "{bad:?}");
        }
        for good in ["main", "release/1.2", "feature-x", "a@b"] {
            assert_eq!(check_ref_name(good), Ok(()), "{good:?}");
        }
    }
}
