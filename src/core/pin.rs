//! The pin: which revision a `staging-check` run validated for its task, and the
//! decisions around reading it from the task's pull request (SPEC §3, "The pin").
//!
//! Two kinds of pin:
//! - **image-freshness**, where image freshness applies to the task's repo
//!   (`core::staging_check::freshness_applies`): the revision staging says it runs, read by an
//!   image-freshness check and compared with the expected revision (by default the PR
//!   head);
//! - **pr-head**, everywhere else: staging cannot say what it runs, so the run pins the
//!   PR head it validated, read from Gitea when the check starts and read again when the
//!   checks end. A head that moved in between is refused: staging may run either.
//!
//! Two ways a read of the PR can fail the pin ([`HeadError`]), and they are kept apart
//! because they lead to opposite places:
//! - **Gitea answered, and the answer says no** ([`HeadError::Refused`]): no open PR for
//!   the branch, a PR merged or closed, a head that moved during the check. That is a
//!   fact about the task's code, so the verdict is FAILED and the gate sends the task
//!   back to its developer.
//! - **Gitea could not be read** ([`HeadError::Unreadable`]): no answer (refused
//!   connection, timeout), a 5xx or 429, a 4xx such as a refused token or an unknown
//!   repository, or an answer that is not a pull request (an HTML maintenance page,
//!   garbage, a PR without a head commit). Nothing is known about the code, and a
//!   developer round cannot fix an outage or a token, so the run has **no verdict**:
//!   nothing is recorded and the caller runs the check again later. Every failed read is
//!   this kind; only a well-formed pull request is an answer.
//!
//! Never a false green either way: neither kind records a pin. Pure: the reads are
//! passed in.

use std::fmt;

use crate::core::facts::{Fact, PrFacts};
use crate::core::revision::revisions_match;
use crate::core::staging_check::one_line;

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

/// Why a read of the task's PR gives no pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Gitea answered and the answer refuses the pin (no open PR, merged, closed, a head
    /// that moved): the run's verdict is FAILED, with this reason.
    Refused(String),
    /// Gitea could not be read: the run has no verdict.
    Unreadable(Unreadable),
}

/// A read of the task's PR that gave no answer: the run has no verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The PR that was read, when its number is known.
    pub pr: Option<u64>,
    /// The task key (named when the PR number is not known).
    pub task: String,
    /// What went wrong, as the HTTP client said it.
    pub why: String,
}

impl Unreadable {
    /// Returns `could not read PR #N's head from Gitea (<why>)`.
    pub fn reason(&self) -> String {
        let what = match self.pr {
            Some(n) => format!("PR #{n}'s head"),
            None => format!("the head of task {}'s PR", self.task),
        };
        format!(
            "could not read {what} from Gitea ({})",
            one_line(&self.why, 300)
        )
    }

    /// Returns the line that ends a run without a verdict:
    /// `staging-check: could not read PR #N's head from Gitea (...): no verdict; nothing
    /// recorded; run it again`.
    pub fn line(&self) -> String {
        format!(
            "staging-check: {}: no verdict; nothing recorded; run it again",
            self.reason()
        )
    }
}

/// Judges the task's PR as read when the check starts: the head to validate, or why
/// there is none (`task` is the task key, `branch` its branch, for the message;
/// `recorded` the PR number recorded on the task, which names the PR when the read
/// failed).
///
/// # Errors
/// [`HeadError::Unreadable`] when Gitea could not be read or its PR has no head commit;
/// [`HeadError::Refused`] naming the task for no open PR, or a PR that is merged or
/// closed (never the task's current PR).
pub fn head_at_start(
    pr: &Fact<Option<PrFacts>>,
    task: &str,
    branch: &str,
    recorded: Option<u64>,
) -> Result<PrHead, HeadError> {
    let unreadable = |pr: Option<u64>, why: String| {
        HeadError::Unreadable(Unreadable {
            pr,
            task: task.to_string(),
            why,
        })
    };
    match pr {
        Err(e) => Err(unreadable(recorded, e.clone())),
        Ok(None) => Err(HeadError::Refused(format!(
            "task {task} has no open pull request for branch {branch}: nothing to validate \
             (open the PR, deploy its head to staging, then run the check again)"
        ))),
        Ok(Some(p)) if p.merged => Err(HeadError::Refused(format!(
            "task {task}'s PR #{} is already merged: it is not the task's current PR",
            p.number
        ))),
        Ok(Some(p)) if !p.open => Err(HeadError::Refused(format!(
            "task {task}'s PR #{} is closed: it is not the task's current PR",
            p.number
        ))),
        Ok(Some(p)) if p.head_sha.trim().is_empty() => Err(unreadable(
            Some(p.number),
            "Gitea's answer has no head commit".into(),
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
/// [`HeadError::Unreadable`] when the second read failed or its answer has no head
/// commit; [`HeadError::Refused`] naming both SHAs when the head moved, or when the PR
/// was merged or closed meanwhile.
pub fn head_at_end(start: &PrHead, end: &Fact<PrFacts>, task: &str) -> Result<(), HeadError> {
    let n = start.number;
    let unreadable = |why: String| {
        HeadError::Unreadable(Unreadable {
            pr: Some(n),
            task: task.to_string(),
            why,
        })
    };
    match end {
        Err(e) => Err(unreadable(format!(
            "read again after the checks, to make sure its head did not move during them: {e}"
        ))),
        Ok(p) if p.head_sha.trim().is_empty() => Err(unreadable(
            "read again after the checks: Gitea's answer has no head commit".into(),
        )),
        Ok(p) if !revisions_match(&p.head_sha, &start.sha) => Err(HeadError::Refused(format!(
            "PR #{n}'s head moved during the check: it was {} when the check started and \
             is {} now, and staging may run either; nothing is recorded (deploy the new \
             head to staging and run the check again)",
            start.sha,
            p.head_sha.trim()
        ))),
        Ok(p) if p.merged || !p.open => Err(HeadError::Refused(format!(
            "PR #{n} was {} during the check: it is not the task's current PR",
            if p.merged { "merged" } else { "closed" }
        ))),
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

/// Returns what the PR head read at the start does to the expected revision: for an
/// image-freshness pin with none given, the head becomes the default (`Ok(Some(head))`);
/// for a pr-head pin a given revision must be the head ([`expected_is_head`]);
/// otherwise nothing changes (`Ok(None)`).
///
/// # Errors
/// The reason a pr-head pin refuses the expected revision.
pub fn expected_at_start(
    kind: PinKind,
    expected: Option<&str>,
    head: &PrHead,
) -> Result<Option<String>, String> {
    match kind {
        PinKind::ImageFreshness if expected.is_none() => Ok(Some(head.sha.clone())),
        PinKind::ImageFreshness => Ok(None),
        PinKind::PrHead => expected_is_head(expected, head).map(|()| None),
    }
}

/// Returns the revision a run validated: for an image-freshness pin, the revision a
/// check read from staging; for a pr-head pin, the PR head, only when it held (read
/// again after the checks, unmoved: `held`), else nothing.
pub fn pinned_revision(
    kind: PinKind,
    checked: Option<String>,
    held: Option<&PrHead>,
) -> Option<String> {
    match kind {
        PinKind::ImageFreshness => checked,
        PinKind::PrHead => held.map(|h| h.sha.clone()),
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

    fn unreadable(e: Result<impl std::fmt::Debug, HeadError>) -> Unreadable {
        match e {
            Err(HeadError::Unreadable(u)) => u,
            other => panic!("not unreadable: {other:?}"),
        }
    }

    fn refused(e: Result<impl std::fmt::Debug, HeadError>) -> String {
        match e {
            Err(HeadError::Refused(r)) => r,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn the_head_at_start_or_why_there_is_none() {
        let ok = head_at_start(&Ok(Some(pr(true, false, A))), "SHOP-1", "task/shop-1", None);
        assert_eq!(
            ok,
            Ok(PrHead {
                number: 7,
                sha: A.into()
            })
        );
        // Gitea's answers about the PR: refusals, a FAILED verdict.
        let cases: Vec<(Fact<Option<PrFacts>>, &str)> = vec![
            (Ok(None), "no open pull request for branch task/shop-1"),
            (Ok(Some(pr(false, true, A))), "PR #7 is already merged"),
            (Ok(Some(pr(false, false, A))), "PR #7 is closed"),
        ];
        for (fact, want) in cases {
            let e = refused(head_at_start(&fact, "SHOP-1", "task/shop-1", Some(7)));
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn a_pr_that_cannot_be_read_is_no_answer() {
        // No answer: the recorded PR names it, else the task does.
        let e = unreadable(head_at_start(
            &Err("gitea get pull acme/shop#7: HTTP 502".into()),
            "SHOP-1",
            "task/shop-1",
            Some(7),
        ));
        assert_eq!(
            e.line(),
            "staging-check: could not read PR #7's head from Gitea (gitea get pull \
             acme/shop#7: HTTP 502): no verdict; nothing recorded; run it again"
        );
        let e = unreadable(head_at_start(
            &Err("could not connect\n  twice".into()),
            "SHOP-1",
            "task/shop-1",
            None,
        ));
        assert_eq!(
            e.reason(),
            "could not read the head of task SHOP-1's PR from Gitea (could not connect twice)"
        );
        // An answer without a head commit is not an answer about the code.
        let e = unreadable(head_at_start(
            &Ok(Some(pr(true, false, " "))),
            "SHOP-1",
            "task/shop-1",
            None,
        ));
        assert_eq!(e.pr, Some(7));
        assert!(e.why.contains("no head commit"), "{e:?}");
    }

    #[test]
    fn the_head_must_not_move_during_the_check() {
        let start = PrHead {
            number: 7,
            sha: A.into(),
        };
        assert_eq!(
            head_at_end(&start, &Ok(pr(true, false, A)), "SHOP-1"),
            Ok(())
        );
        let moved = refused(head_at_end(&start, &Ok(pr(true, false, B)), "SHOP-1"));
        assert!(moved.contains(A) && moved.contains(B), "{moved}");
        assert!(moved.contains("moved during the check"), "{moved}");
        let merged = refused(head_at_end(&start, &Ok(pr(false, true, A)), "SHOP-1"));
        assert!(merged.contains("merged during the check"), "{merged}");
        let closed = refused(head_at_end(&start, &Ok(pr(false, false, A)), "SHOP-1"));
        assert!(closed.contains("closed during the check"), "{closed}");
        // The second read gave no answer: no verdict, naming the PR.
        let down = unreadable(head_at_end(&start, &Err("timed out".into()), "SHOP-1"));
        assert_eq!(down.pr, Some(7));
        assert!(
            down.reason()
                .starts_with("could not read PR #7's head from Gitea (read again")
                && down.why.contains("timed out"),
            "{down:?}"
        );
        let empty = unreadable(head_at_end(&start, &Ok(pr(true, false, "")), "SHOP-1"));
        assert!(empty.why.contains("no head commit"), "{empty:?}");
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

    #[test]
    fn expected_at_start_defaults_or_checks_by_pin_kind() {
        let head = PrHead {
            number: 7,
            sha: A.into(),
        };
        // "default": the head becomes the expected revision; "keep": nothing changes.
        let cases: &[(PinKind, Option<&str>, &str)] = &[
            (PinKind::ImageFreshness, None, "default"),
            (PinKind::ImageFreshness, Some(B), "keep"),
            (PinKind::ImageFreshness, Some(A), "keep"),
            (PinKind::PrHead, None, "keep"),
            (PinKind::PrHead, Some(A), "keep"),
            (PinKind::PrHead, Some(&A[..12]), "keep"),
            (PinKind::PrHead, Some(B), "refused"),
        ];
        for (kind, expected, want) in cases {
            let got = match expected_at_start(*kind, *expected, &head) {
                Ok(Some(d)) if d == A => "default",
                Ok(Some(_)) => "other",
                Ok(None) => "keep",
                Err(_) => "refused",
            };
            assert_eq!(got, *want, "{kind} {expected:?}");
        }
    }

    #[test]
    fn pinned_revision_is_the_checked_one_or_the_head_that_held() {
        let head = PrHead {
            number: 7,
            sha: A.into(),
        };
        let cases: &[(PinKind, Option<&str>, bool, Option<&str>)] = &[
            (PinKind::ImageFreshness, Some(B), true, Some(B)),
            (PinKind::ImageFreshness, Some(B), false, Some(B)),
            (PinKind::ImageFreshness, None, true, None),
            (PinKind::PrHead, Some(B), true, Some(A)),
            (PinKind::PrHead, None, true, Some(A)),
            (PinKind::PrHead, Some(B), false, None),
            (PinKind::PrHead, None, false, None),
        ];
        for (kind, checked, held, want) in cases {
            let got = pinned_revision(*kind, checked.map(str::to_string), held.then_some(&head));
            assert_eq!(got.as_deref(), *want, "{kind} {checked:?} held={held}");
        }
    }
}
