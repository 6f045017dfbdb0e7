//! The pin: which revision a `staging-check` run validated for its task, and the
//! decisions around reading it from the task's pull request (SPEC §3, "The pin").
//!
//! Two kinds of pin:
//! - **image-freshness**, where image freshness applies to the task's repo
//!   (`core::staging::freshness_applies`): the revision staging says it runs, read by an
//!   image-freshness check and compared with the expected revision (by default the PR
//!   head);
//! - **pr-head**, everywhere else: staging cannot say what it runs, so the run pins the
//!   PR head it validated, read from Gitea when the check starts and read again when the
//!   checks end. A head that moved in between is refused: staging may run either.
//!
//! Every refusal is a reason the verdict turns FAILED for (never a false green, nothing
//! recorded). Pure: the reads are passed in.

use std::fmt;

use crate::core::gate::{revisions_match, Fact, PrFacts};

/// Which kind of revision a run pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinKind {
    /// The revision an image-freshness check read from staging.
    ImageFreshness,
    /// The PR head, read from Gitea before and after the checks.
    PrHead,
}

impl PinKind {
    /// Returns `image-freshness` or `pr-head` (the report's `pin:` value).
    pub fn as_str(self) -> &'static str {
        match self {
            PinKind::ImageFreshness => "image-freshness",
            PinKind::PrHead => "pr-head",
        }
    }

    /// Returns the kind of pin for a repo: image freshness where it applies, else the
    /// PR head.
    pub fn for_repo(freshness_applies: bool) -> PinKind {
        if freshness_applies {
            PinKind::ImageFreshness
        } else {
            PinKind::PrHead
        }
    }
}

impl fmt::Display for PinKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The task's PR head as read from Gitea.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrHead {
    /// The PR number.
    pub number: u64,
    /// The head commit SHA, as Gitea gave it (full).
    pub sha: String,
}

/// Judges the task's PR as read when the check starts: the head to validate, or why
/// there is none (`task` is the task key, `branch` its branch, for the message).
///
/// # Errors
/// A reason naming the task: Gitea could not be read, no PR, a PR that is merged or
/// closed (never the task's current PR), or one without a head commit.
pub fn head_at_start(
    pr: &Fact<Option<PrFacts>>,
    task: &str,
    branch: &str,
) -> Result<PrHead, String> {
    match pr {
        Err(e) => Err(format!(
            "could not read task {task}'s pull request from Gitea, so there is no PR head to \
             pin: {e}"
        )),
        Ok(None) => Err(format!(
            "task {task} has no open pull request for branch {branch}: nothing to validate \
             (open the PR, deploy its head to staging, then run the check again)"
        )),
        Ok(Some(p)) if p.merged => Err(format!(
            "task {task}'s PR #{} is already merged: it is not the task's current PR",
            p.number
        )),
        Ok(Some(p)) if !p.open => Err(format!(
            "task {task}'s PR #{} is closed: it is not the task's current PR",
            p.number
        )),
        Ok(Some(p)) if p.head_sha.trim().is_empty() => Err(format!(
            "task {task}'s PR #{} has no head commit in Gitea's answer",
            p.number
        )),
        Ok(Some(p)) => Ok(PrHead {
            number: p.number,
            sha: p.head_sha.trim().to_string(),
        }),
    }
}

/// Judges the PR as read again when the checks ended against the head read at the
/// start: the pin holds only when the PR is still open at the same head.
///
/// # Errors
/// A reason naming both SHAs when the head moved, or why the second read failed.
pub fn head_at_end(start: &PrHead, end: &Fact<PrFacts>) -> Result<(), String> {
    let n = start.number;
    match end {
        Err(e) => Err(format!(
            "could not read PR #{n} again after the checks, to make sure its head did not \
             move during them: {e}"
        )),
        Ok(p) if !revisions_match(&p.head_sha, &start.sha) => Err(format!(
            "PR #{n}'s head moved during the check: it was {} when the check started and \
             is {} now, and staging may run either; nothing is recorded (deploy the new \
             head to staging and run the check again)",
            start.sha,
            if p.head_sha.trim().is_empty() {
                "(none)"
            } else {
                p.head_sha.trim()
            }
        )),
        Ok(p) if p.merged || !p.open => Err(format!(
            "PR #{n} was {} during the check: it is not the task's current PR",
            if p.merged { "merged" } else { "closed" }
        )),
        Ok(_) => Ok(()),
    }
}

/// Checks a revision given by `--expected-revision` / `EXPECTED_REVISION` against the
/// PR head a pr-head pin validates: saying staging runs one revision while pinning
/// another would validate code that was never checked.
///
/// # Errors
/// A reason naming both revisions when they differ.
pub fn expected_is_head(expected: Option<&str>, head: &PrHead) -> Result<(), String> {
    match expected {
        Some(e) if !revisions_match(e, &head.sha) => Err(format!(
            "the expected revision {e} (--expected-revision / EXPECTED_REVISION) is not PR \
             #{}'s head {}: staging would be validated for a revision the merge would not \
             pin",
            head.number, head.sha
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "fedcba9876543210fedcba9876543210fedcba98";

    fn pr(open: bool, merged: bool, sha: &str) -> PrFacts {
        PrFacts {
            number: 7,
            open,
            merged,
            mergeable: Some(true),
            head_sha: sha.into(),
        }
    }

    #[test]
    fn the_head_at_start_or_why_there_is_none() {
        let ok = head_at_start(&Ok(Some(pr(true, false, A))), "SHOP-1", "task/shop-1");
        assert_eq!(
            ok,
            Ok(PrHead {
                number: 7,
                sha: A.into()
            })
        );
        let cases: Vec<(Fact<Option<PrFacts>>, &str)> = vec![
            (
                Err("connection refused".into()),
                "could not read task SHOP-1's pull request from Gitea",
            ),
            (Ok(None), "no open pull request for branch task/shop-1"),
            (Ok(Some(pr(false, true, A))), "PR #7 is already merged"),
            (Ok(Some(pr(false, false, A))), "PR #7 is closed"),
            (Ok(Some(pr(true, false, " "))), "no head commit"),
        ];
        for (fact, want) in cases {
            let e = head_at_start(&fact, "SHOP-1", "task/shop-1").unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn the_head_must_not_move_during_the_check() {
        let start = PrHead {
            number: 7,
            sha: A.into(),
        };
        assert_eq!(head_at_end(&start, &Ok(pr(true, false, A))), Ok(()));
        let moved = head_at_end(&start, &Ok(pr(true, false, B))).unwrap_err();
        assert!(moved.contains(A) && moved.contains(B), "{moved}");
        assert!(moved.contains("moved during the check"), "{moved}");
        let down = head_at_end(&start, &Err("timed out".into())).unwrap_err();
        assert!(down.contains("could not read PR #7 again") && down.contains("timed out"));
        let merged = head_at_end(&start, &Ok(pr(false, true, A))).unwrap_err();
        assert!(merged.contains("merged during the check"), "{merged}");
        let closed = head_at_end(&start, &Ok(pr(false, false, A))).unwrap_err();
        assert!(closed.contains("closed during the check"), "{closed}");
    }

    #[test]
    fn an_expected_revision_must_be_the_head() {
        let head = PrHead {
            number: 7,
            sha: A.into(),
        };
        assert_eq!(expected_is_head(None, &head), Ok(()));
        assert_eq!(expected_is_head(Some(&A[..12]), &head), Ok(()));
        let e = expected_is_head(Some(B), &head).unwrap_err();
        assert!(e.contains(A) && e.contains(B), "{e}");
    }

    #[test]
    fn kinds() {
        assert_eq!(PinKind::for_repo(true).as_str(), "image-freshness");
        assert_eq!(PinKind::for_repo(false).to_string(), "pr-head");
    }
}
