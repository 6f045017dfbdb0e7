//! `merge-guard`'s decisions: from what a read of the pull request says, whether a merge
//! may go ahead ([`decide`]); and from the merge call's raw answer plus the PR read
//! again, what the end state is ([`after_merge`]).
//!
//! The rules come from `reference/gitea.md` §4 and §11:
//! - `merged: true` is the only proof of a merge, and it is final: after any answer
//!   other than 200 (or none at all) the PR is read again, and `merged: true` is success.
//! - Gitea's `message` text changed between versions (an older already-merged 405 has
//!   an empty message); no decision here reads it. It only goes into the detail a
//!   human sees.
//! - A head already contained in the base (`compare base...head` has no commits) is
//!   nothing to merge: the merge endpoint would answer 405 forever. It counts as merged
//!   ([`head_contained_in_base`], the one rule the deploy gate's PR fact uses too).
//! - The merge pins a head (`head_commit_id`): the revision the pipeline validated, so
//!   a PR that moved since is refused before any merge call.
//!
//! No I/O: the command gathers the facts through the Gitea adapter.

use std::fmt;

use crate::core::revision::{revisions_match, short};

/// The prefixes Gitea treats as "work in progress" (`WORK_IN_PROGRESS_PREFIXES`
/// default), matched case-insensitively at the start of the title.
pub const WIP_PREFIXES: &[&str] = &["WIP:", "[WIP]"];

/// What one read of `GET /repos/{owner}/{repo}/pulls/{index}` says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PrRead {
    /// The PR number.
    pub number: u64,
    /// `state == "open"` (a merged PR is `closed`).
    pub open: bool,
    /// The authoritative merged flag.
    pub merged: bool,
    /// `mergeable`; `None` when Gitea did not send it.
    pub mergeable: Option<bool>,
    /// `draft` (Gitea 1.22+ and Forgejo; `false` when absent).
    pub draft: bool,
    /// The title (older Gitea marks work in progress only there).
    pub title: String,
    /// `head.sha`: the live tip of the head branch.
    pub head_sha: String,
    /// `base.ref`: the branch it merges into.
    pub base_ref: String,
    /// `merge_commit_sha`, once merged.
    pub merge_commit_sha: Option<String>,
}

impl PrRead {
    /// Returns whether Gitea would refuse the merge as work in progress.
    pub fn is_wip(&self) -> bool {
        let title = self.title.trim_start().to_ascii_uppercase();
        self.draft || WIP_PREFIXES.iter().any(|p| title.starts_with(p))
    }
}

impl fmt::Display for PrRead {
    /// The facts a decision used, for the log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mergeable = match self.mergeable {
            Some(m) => m.to_string(),
            None => "absent".into(),
        };
        write!(
            f,
            "state={} merged={} mergeable={mergeable} wip={} head={} base={}",
            if self.open { "open" } else { "closed" },
            self.merged,
            self.is_wip(),
            short(&self.head_sha),
            self.base_ref
        )
    }
}

/// The head the merge must pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// The revision the pipeline validated (from the task).
    Validated(String),
    /// No task: the head as read (`--repo/--pr`), pinned at merge time.
    AsRead,
    /// A task with no validated revision: nothing to pin a merge to.
    Missing {
        /// The task's key, for the message saying what to run.
        task: String,
    },
}

/// What `compare/{base}...{head}` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// Not asked (the PR was merged or closed, so it did not matter).
    NotAsked,
    /// `total_commits`: the head's commits not yet in the base.
    Ahead(u64),
    /// The server has no compare endpoint (Gitea before 1.22 answers 404).
    Unavailable,
    /// The call failed.
    Failed(String),
}

/// Returns whether a PR whose head has `commits_ahead` commits its base lacks
/// (`compare base...head`'s `total_commits`) counts as merged: with none, the head is
/// already contained in the base and nothing is left to merge (the merge endpoint would
/// answer 405 forever). The one rule for merge-guard ([`decide`]) and for the deploy
/// gate's PR fact (`adapters::forge`, which asks at `deploy` when Gitea says unmerged).
pub fn head_contained_in_base(commits_ahead: u64) -> bool {
    commits_ahead == 0
}

/// Why a PR counts as merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergedHow {
    /// Gitea says `merged: true`.
    Merged {
        /// `merge_commit_sha`, when Gitea sent it.
        merge_commit: Option<String>,
    },
    /// The head is already contained in the base: nothing to merge (no merge call).
    ContainedInBase {
        /// The base branch.
        base: String,
        /// The head.
        head: String,
    },
}

/// A merge-guard verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeVerdict {
    /// Open, not merged, mergeable, at the revision to pin: merging may go ahead.
    Proceed {
        /// The head SHA the merge pins.
        head: String,
    },
    /// Merged before this run (or nothing to merge): do not merge.
    AlreadyMerged(MergedHow),
    /// This run's merge call merged it (or its lost answer did).
    Merged {
        /// `merge_commit_sha`, when known.
        merge_commit: Option<String>,
        /// What the merge call answered.
        answer: String,
    },
    /// Merging must not happen (closed, conflicts, WIP, refused, head moved).
    Blocked(String),
    /// Gitea is still computing `mergeable`: read again later.
    Wait(String),
    /// Could not tell: do not merge.
    Error(String),
}

impl MergeVerdict {
    /// Returns the word printed after `MERGE-GUARD:`.
    pub fn outcome(&self) -> &'static str {
        match self {
            MergeVerdict::Proceed { .. } => "PROCEED",
            MergeVerdict::AlreadyMerged(_) => "ALREADY_MERGED",
            MergeVerdict::Merged { .. } => "MERGED",
            MergeVerdict::Blocked(_) => "BLOCKED",
            MergeVerdict::Wait(_) => "WAIT",
            MergeVerdict::Error(_) => "ERROR",
        }
    }

    /// Returns the human detail (one line).
    pub fn detail(&self) -> String {
        let text = match self {
            MergeVerdict::Proceed { head } => {
                format!("open, not merged and mergeable at head {}", short(head))
            }
            MergeVerdict::AlreadyMerged(MergedHow::Merged { merge_commit }) => match merge_commit {
                Some(c) => format!("merged before (merge commit {})", short(c)),
                None => "merged before".into(),
            },
            MergeVerdict::AlreadyMerged(MergedHow::ContainedInBase { base, head }) => format!(
                "head {} is already contained in {base}: nothing to merge, counted as merged \
                 (no merge call; the PR itself stays open)",
                short(head)
            ),
            MergeVerdict::Merged {
                merge_commit,
                answer,
            } => match merge_commit {
                Some(c) => format!("merged now (merge commit {}; {answer})", short(c)),
                None => format!("merged now ({answer})"),
            },
            MergeVerdict::Blocked(r) | MergeVerdict::Wait(r) | MergeVerdict::Error(r) => r.clone(),
        };
        one_line(&text)
    }

    /// Returns whether the PR is merged (before or now) or has nothing left to merge.
    pub fn is_merged(&self) -> bool {
        matches!(
            self,
            MergeVerdict::AlreadyMerged(_) | MergeVerdict::Merged { .. }
        )
    }
}

/// Returns whether `compare` must be asked for this read (open and not merged).
pub fn needs_compare(pr: &PrRead) -> bool {
    pr.open && !pr.merged
}

/// Decides from one read of the PR whether a merge may go ahead.
///
/// `waited_out` says the bounded wait for Gitea's `mergeable` is over: a PR still not
/// mergeable is then reported (BLOCKED when Gitea says `false`, ERROR when it says
/// nothing) instead of [`MergeVerdict::Wait`].
pub fn decide(pr: &PrRead, pin: &Pin, compare: &Compare, waited_out: bool) -> MergeVerdict {
    if pr.merged {
        return MergeVerdict::AlreadyMerged(MergedHow::Merged {
            merge_commit: pr.merge_commit_sha.clone().filter(|s| !s.is_empty()),
        });
    }
    if !pr.open {
        return MergeVerdict::Blocked(format!("PR #{} is closed without being merged", pr.number));
    }
    match pin {
        Pin::Validated(rev) if !revisions_match(&pr.head_sha, rev) => {
            return MergeVerdict::Blocked(head_moved(pr, rev));
        }
        Pin::Missing { task } => {
            return MergeVerdict::Error(format!(
                "task {task} has no validated revision to pin PR #{}'s merge to (staging has \
                 not recorded one): not merging head {}; deploy that head to staging and run \
                 `orch staging-check --task {task}` (it records the revision), then run the \
                 guard again",
                pr.number,
                short(&pr.head_sha)
            ));
        }
        _ => {}
    }
    match compare {
        Compare::Ahead(n) if head_contained_in_base(*n) => {
            return MergeVerdict::AlreadyMerged(MergedHow::ContainedInBase {
                base: pr.base_ref.clone(),
                head: pr.head_sha.clone(),
            });
        }
        Compare::Failed(e) => {
            return MergeVerdict::Error(format!(
                "could not compare {}...{} for PR #{}: {e}",
                pr.base_ref,
                short(&pr.head_sha),
                pr.number
            ));
        }
        Compare::Ahead(_) | Compare::Unavailable | Compare::NotAsked => {}
    }
    if pr.is_wip() {
        return MergeVerdict::Blocked(format!(
            "PR #{} is a work in progress (draft or WIP title): Gitea refuses to merge it",
            pr.number
        ));
    }
    match (pr.mergeable, waited_out) {
        (Some(true), _) => MergeVerdict::Proceed {
            head: pr.head_sha.clone(),
        },
        (Some(false), false) => MergeVerdict::Wait(format!(
            "Gitea reports PR #{} not mergeable yet (conflict check running, or a conflict)",
            pr.number
        )),
        (Some(false), true) => MergeVerdict::Blocked(format!(
            "Gitea still reports PR #{} not mergeable after waiting: a conflict, or a conflict \
             check that has not finished",
            pr.number
        )),
        (None, false) => MergeVerdict::Wait(format!(
            "Gitea did not say whether PR #{} is mergeable",
            pr.number
        )),
        (None, true) => MergeVerdict::Error(format!(
            "Gitea still does not say whether PR #{} is mergeable after waiting: could not tell",
            pr.number
        )),
    }
}

/// What the merge call (`POST .../pulls/{index}/merge`) gave, uninterpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeAnswer {
    /// An HTTP answer: its status and Gitea's `message` (for humans only).
    Status {
        /// The HTTP status.
        code: u16,
        /// The body's `message` (possibly empty), or a short excerpt of a body without one.
        message: String,
    },
    /// No answer: timeout, reset connection (the merge may or may not have happened).
    Transport(String),
}

impl fmt::Display for MergeAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergeAnswer::Status { code, message } if message.trim().is_empty() => {
                write!(f, "HTTP {code}")
            }
            MergeAnswer::Status { code, message } => {
                write!(f, "HTTP {code} {:?}", excerpt(message))
            }
            MergeAnswer::Transport(e) => write!(f, "no answer ({})", excerpt(e)),
        }
    }
}

/// Decides the end state after a merge call, from its raw answer and the PR read again
/// right after it (`Err` when that read failed). `pinned` is the head the call pinned.
pub fn after_merge(
    answer: &MergeAnswer,
    reread: &Result<PrRead, String>,
    pinned: &str,
) -> MergeVerdict {
    let said = answer.to_string();
    if let MergeAnswer::Status { code: 200, .. } = answer {
        return match reread {
            Ok(pr) if pr.merged => MergeVerdict::Merged {
                merge_commit: pr.merge_commit_sha.clone().filter(|s| !s.is_empty()),
                answer: said,
            },
            Ok(pr) => MergeVerdict::Error(format!(
                "Gitea answered 200 to the merge but PR #{} still reads unmerged: could not tell",
                pr.number
            )),
            // The 200 itself is Gitea's word that it merged.
            Err(e) => MergeVerdict::Merged {
                merge_commit: None,
                answer: format!("{said}; reading the PR again failed: {e}"),
            },
        };
    }
    let pr = match reread {
        Ok(pr) => pr,
        Err(e) => {
            return MergeVerdict::Error(format!(
                "merge call gave {said} and reading the PR again failed ({e}): could not tell \
                 whether it merged"
            ))
        }
    };
    if pr.merged {
        return MergeVerdict::Merged {
            merge_commit: pr.merge_commit_sha.clone().filter(|s| !s.is_empty()),
            answer: format!("merge call gave {said}; the PR reads merged"),
        };
    }
    if !pr.open {
        return MergeVerdict::Blocked(format!(
            "PR #{} is closed without being merged (merge call gave {said})",
            pr.number
        ));
    }
    if !revisions_match(&pr.head_sha, pinned) {
        return MergeVerdict::Blocked(format!(
            "{} (merge call gave {said})",
            head_moved(pr, pinned)
        ));
    }
    let n = pr.number;
    let code = match answer {
        MergeAnswer::Transport(_) => {
            return MergeVerdict::Error(format!(
                "merge call gave {said} and PR #{n} still reads unmerged: could not tell; run \
                 the guard again later"
            ))
        }
        MergeAnswer::Status { code, .. } => *code,
    };
    match code {
        401 => MergeVerdict::Error(format!(
            "Gitea rejected the token (merge call gave {said}): check ORCH_GITEA_TOKEN"
        )),
        403 => MergeVerdict::Error(format!(
            "the token may not merge (merge call gave {said}): it needs write:repository"
        )),
        405 if pr.is_wip() => MergeVerdict::Blocked(format!(
            "PR #{n} is a work in progress (merge call gave {said})"
        )),
        405 if pr.mergeable != Some(true) => MergeVerdict::Blocked(format!(
            "Gitea refused the merge and reports PR #{n} not mergeable: a conflict, or a \
             conflict check still running (merge call gave {said})"
        )),
        405 => MergeVerdict::Blocked(format!(
            "Gitea refused to merge PR #{n} (branch protection, permission, merge style or \
             nothing to merge; merge call gave {said})"
        )),
        409 if pr.mergeable == Some(false) => MergeVerdict::Blocked(format!(
            "merging PR #{n} failed on a conflict (merge call gave {said})"
        )),
        409 => MergeVerdict::Error(format!(
            "merging PR #{n} failed in git (base moved, or a hook refused the push; merge call \
             gave {said}): run the guard again later"
        )),
        423 => MergeVerdict::Blocked(format!(
            "the repository is archived: Gitea refuses merges (merge call gave {said})"
        )),
        404 => MergeVerdict::Error(format!(
            "Gitea answered not found to the merge while PR #{n} reads open (merge call gave \
             {said}): could not tell"
        )),
        422 => MergeVerdict::Error(format!(
            "Gitea rejected the merge request as malformed (merge call gave {said})"
        )),
        201 => MergeVerdict::Error(format!(
            "Gitea scheduled an auto-merge instead of merging PR #{n} (merge call gave {said})"
        )),
        500..=599 => MergeVerdict::Error(format!(
            "Gitea failed the merge and PR #{n} reads unmerged (merge call gave {said}); an open \
             issue dependency is a common cause: look at the PR"
        )),
        _ => MergeVerdict::Error(format!(
            "unexpected answer to the merge of PR #{n} (merge call gave {said}); it reads unmerged"
        )),
    }
}

fn head_moved(pr: &PrRead, validated: &str) -> String {
    format!(
        "PR #{}'s head moved since it was validated: head {}, validated {}",
        pr.number,
        short(&pr.head_sha),
        short(validated)
    )
}

fn excerpt(text: &str) -> String {
    let t: String = one_line(text).chars().take(160).collect();
    t.trim().to_string()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Returns the head a task's merge must pin: its validated revision, or
/// [`Pin::Missing`] when it has none (blank counts as none).
pub fn pin_for_task(validated_revision: Option<&str>, task: &str) -> Pin {
    match validated_revision {
        Some(r) if !r.trim().is_empty() => Pin::Validated(r.to_string()),
        _ => Pin::Missing {
            task: task.to_string(),
        },
    }
}

/// Returns how the log names a pin: `validated <short sha>`, `head as read` or `none`.
pub fn pin_text(pin: &Pin) -> String {
    match pin {
        Pin::Validated(r) => format!("validated {}", short(r)),
        Pin::AsRead => "head as read".into(),
        Pin::Missing { .. } => "none (no validated revision)".into(),
    }
}

/// Returns how the log names a compare answer: `not-asked`, `ahead-N`, `unavailable`
/// or `failed`.
pub fn compare_text(c: &Compare) -> String {
    match c {
        Compare::NotAsked => "not-asked".into(),
        Compare::Ahead(n) => format!("ahead-{n}"),
        Compare::Unavailable => "unavailable".into(),
        Compare::Failed(_) => "failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2";
    const OTHER: &str = "0123456789abcdef0123456789abcdef01234567";
    const MERGE: &str = "e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6";

    fn open(mergeable: Option<bool>) -> PrRead {
        PrRead {
            number: 7,
            open: true,
            merged: false,
            mergeable,
            draft: false,
            title: "Add retry to fetcher".into(),
            head_sha: HEAD.into(),
            base_ref: "main".into(),
            merge_commit_sha: None,
        }
    }

    fn merged() -> PrRead {
        PrRead {
            open: false,
            merged: true,
            merge_commit_sha: Some(MERGE.into()),
            ..open(Some(true))
        }
    }

    fn closed() -> PrRead {
        PrRead {
            open: false,
            ..open(Some(true))
        }
    }

    fn moved() -> PrRead {
        PrRead {
            head_sha: OTHER.into(),
            ..open(Some(true))
        }
    }

    fn titled(title: &str) -> PrRead {
        PrRead {
            title: title.into(),
            ..open(Some(true))
        }
    }

    fn pinned() -> Pin {
        Pin::Validated(HEAD.into())
    }

    #[test]
    fn a_head_with_nothing_ahead_of_its_base_counts_as_merged() {
        // (commits the head has that the base lacks, counts as merged?)
        for (ahead, want) in [(0, true), (1, false), (2, false), (u64::MAX, false)] {
            assert_eq!(head_contained_in_base(ahead), want, "{ahead}");
        }
    }

    #[test]
    fn decide_table() {
        let draft = PrRead {
            draft: true,
            ..open(Some(true))
        };
        let cases: Vec<(&str, PrRead, Pin, Compare, bool, &str)> = vec![
            (
                "open mergeable at the validated head",
                open(Some(true)),
                pinned(),
                Compare::Ahead(1),
                false,
                "PROCEED",
            ),
            (
                "a short validated revision matches",
                open(Some(true)),
                Pin::Validated(HEAD[..12].into()),
                Compare::Ahead(1),
                false,
                "PROCEED",
            ),
            (
                "no task: the head as read",
                open(Some(true)),
                Pin::AsRead,
                Compare::Ahead(3),
                false,
                "PROCEED",
            ),
            (
                "no compare endpoint (old Gitea)",
                open(Some(true)),
                pinned(),
                Compare::Unavailable,
                false,
                "PROCEED",
            ),
            (
                "merged",
                merged(),
                pinned(),
                Compare::NotAsked,
                false,
                "ALREADY_MERGED",
            ),
            (
                "merged wins over a moved head",
                PrRead {
                    head_sha: OTHER.into(),
                    ..merged()
                },
                pinned(),
                Compare::NotAsked,
                false,
                "ALREADY_MERGED",
            ),
            (
                "merged needs no validated revision",
                merged(),
                Pin::Missing {
                    task: "SHOP-1".into(),
                },
                Compare::NotAsked,
                false,
                "ALREADY_MERGED",
            ),
            (
                "head contained in base",
                open(Some(true)),
                pinned(),
                Compare::Ahead(0),
                false,
                "ALREADY_MERGED",
            ),
            (
                "closed unmerged",
                closed(),
                pinned(),
                Compare::NotAsked,
                false,
                "BLOCKED",
            ),
            (
                "head moved",
                moved(),
                pinned(),
                Compare::Ahead(1),
                false,
                "BLOCKED",
            ),
            (
                "head moved even when already in base",
                moved(),
                pinned(),
                Compare::Ahead(0),
                false,
                "BLOCKED",
            ),
            (
                "no validated revision",
                open(Some(true)),
                Pin::Missing {
                    task: "SHOP-1".into(),
                },
                Compare::Ahead(1),
                false,
                "ERROR",
            ),
            (
                "compare failed",
                open(Some(true)),
                pinned(),
                Compare::Failed("timed out".into()),
                false,
                "ERROR",
            ),
            (
                "draft",
                draft,
                pinned(),
                Compare::Ahead(1),
                false,
                "BLOCKED",
            ),
            (
                "WIP: title",
                titled("WIP: retry"),
                pinned(),
                Compare::Ahead(1),
                false,
                "BLOCKED",
            ),
            (
                "[wip] title any case",
                titled("[wip] retry"),
                pinned(),
                Compare::Ahead(1),
                false,
                "BLOCKED",
            ),
            (
                "WIP inside the title is not WIP",
                titled("Fix WIP: handling"),
                pinned(),
                Compare::Ahead(1),
                false,
                "PROCEED",
            ),
            (
                "mergeable false: wait",
                open(Some(false)),
                pinned(),
                Compare::Ahead(1),
                false,
                "WAIT",
            ),
            (
                "mergeable false after waiting",
                open(Some(false)),
                pinned(),
                Compare::Ahead(1),
                true,
                "BLOCKED",
            ),
            (
                "mergeable absent: wait",
                open(None),
                pinned(),
                Compare::Ahead(1),
                false,
                "WAIT",
            ),
            (
                "mergeable absent after waiting",
                open(None),
                pinned(),
                Compare::Ahead(1),
                true,
                "ERROR",
            ),
            (
                "mergeable true after waiting",
                open(Some(true)),
                pinned(),
                Compare::Ahead(1),
                true,
                "PROCEED",
            ),
        ];
        for (name, pr, pin, compare, waited, want) in cases {
            let v = decide(&pr, &pin, &compare, waited);
            assert_eq!(v.outcome(), want, "{name}: {v:?}");
            assert!(!v.detail().contains('\n'), "{name}: one line");
        }
    }

    #[test]
    fn verdict_details_name_the_facts() {
        let v = decide(&moved(), &pinned(), &Compare::Ahead(1), false);
        assert_eq!(
            v.detail(),
            "PR #7's head moved since it was validated: head 0123456789, validated c3d4e5f6a7"
        );
        let v = decide(&merged(), &pinned(), &Compare::NotAsked, false);
        assert_eq!(v.detail(), "merged before (merge commit e7f8a9b0c1)");
        let v = decide(&open(Some(true)), &pinned(), &Compare::Ahead(0), false);
        assert!(
            v.detail().contains("already contained in main"),
            "{}",
            v.detail()
        );
        assert!(v.is_merged());
        let v = decide(&open(Some(true)), &pinned(), &Compare::Ahead(2), false);
        assert_eq!(v, MergeVerdict::Proceed { head: HEAD.into() });
    }

    fn status(code: u16, message: &str) -> MergeAnswer {
        MergeAnswer::Status {
            code,
            message: message.into(),
        }
    }

    #[test]
    fn after_merge_table() {
        let lost = MergeAnswer::Transport("timed out".into());
        let unreadable: Result<PrRead, String> = Err("timed out".into());
        let cases: Vec<(&str, MergeAnswer, Result<PrRead, String>, &str)> = vec![
            ("200 and merged", status(200, ""), Ok(merged()), "MERGED"),
            (
                "200, re-read failed: trust the 200",
                status(200, ""),
                unreadable.clone(),
                "MERGED",
            ),
            (
                "200 but reads unmerged",
                status(200, ""),
                Ok(open(Some(true))),
                "ERROR",
            ),
            ("lost answer, merged", lost.clone(), Ok(merged()), "MERGED"),
            (
                "lost answer, unmerged",
                lost.clone(),
                Ok(open(Some(true))),
                "ERROR",
            ),
            ("lost answer, unreadable", lost, unreadable.clone(), "ERROR"),
            (
                "405 already merged (1.25+)",
                status(405, "The PR is already merged"),
                Ok(merged()),
                "MERGED",
            ),
            (
                "405 already merged, empty message (older)",
                status(405, ""),
                Ok(merged()),
                "MERGED",
            ),
            (
                "404 already merged (Gitea <= 1.16)",
                status(404, "The target couldn't be found."),
                Ok(merged()),
                "MERGED",
            ),
            (
                "409 but merged (race)",
                status(409, "merge push out of date"),
                Ok(merged()),
                "MERGED",
            ),
            ("500 but merged", status(500, ""), Ok(merged()), "MERGED"),
            (
                "404 closed unmerged",
                status(404, "not found"),
                Ok(closed()),
                "BLOCKED",
            ),
            (
                "404 on an open PR",
                status(404, "GetPullRequestByIndex"),
                Ok(open(Some(true))),
                "ERROR",
            ),
            (
                "405 not mergeable",
                status(405, "Please try again later"),
                Ok(open(Some(false))),
                "BLOCKED",
            ),
            (
                "405 mergeable true (protection, ancestor)",
                status(405, "Please try again later"),
                Ok(open(Some(true))),
                "BLOCKED",
            ),
            (
                "405 empty message, unmerged",
                status(405, ""),
                Ok(open(Some(true))),
                "BLOCKED",
            ),
            (
                "405 wip",
                status(405, "Work in progress PRs cannot be merged"),
                Ok(titled("WIP: x")),
                "BLOCKED",
            ),
            (
                "405 not allowed",
                status(405, "User not allowed to merge PR"),
                Ok(open(Some(true))),
                "BLOCKED",
            ),
            (
                "409 head out of date",
                status(409, "head out of date"),
                Ok(moved()),
                "BLOCKED",
            ),
            (
                "409 conflict found late",
                status(409, ""),
                Ok(open(Some(false))),
                "BLOCKED",
            ),
            (
                "409 push out of date",
                status(409, "merge push out of date"),
                Ok(open(Some(true))),
                "ERROR",
            ),
            (
                "423 archived",
                status(423, "acme/widgets is archived"),
                Ok(open(Some(true))),
                "BLOCKED",
            ),
            (
                "401 token",
                status(401, "invalid username, password or token"),
                Ok(open(Some(true))),
                "ERROR",
            ),
            (
                "403 scope",
                status(403, "token does not have at least one of required scope(s)"),
                Ok(open(Some(true))),
                "ERROR",
            ),
            (
                "422 body",
                status(422, "[Do]: Required"),
                Ok(open(Some(true))),
                "ERROR",
            ),
            (
                "500 dependency",
                status(500, ""),
                Ok(open(Some(true))),
                "ERROR",
            ),
            ("502", status(502, ""), Ok(open(Some(true))), "ERROR"),
            (
                "201 scheduled",
                status(201, ""),
                Ok(open(Some(true))),
                "ERROR",
            ),
            ("405, unreadable", status(405, ""), unreadable, "ERROR"),
        ];
        for (name, answer, reread, want) in cases {
            let v = after_merge(&answer, &reread, HEAD);
            assert_eq!(v.outcome(), want, "{name}: {v:?}");
            assert!(!v.detail().contains('\n'), "{name}: one line");
        }
    }

    #[test]
    fn the_message_never_decides() {
        // The same status and PR give the same outcome whatever the message says.
        for message in [
            "",
            "The PR is already merged",
            "Please try again later",
            "x",
        ] {
            let v = after_merge(&status(405, message), &Ok(open(Some(true))), HEAD);
            assert_eq!(v.outcome(), "BLOCKED", "{message}");
            let v = after_merge(&status(405, message), &Ok(merged()), HEAD);
            assert_eq!(v.outcome(), "MERGED", "{message}");
        }
    }

    #[test]
    fn answers_render_on_one_line() {
        assert_eq!(status(405, "").to_string(), "HTTP 405");
        assert_eq!(
            status(409, "head out of\ndate").to_string(),
            "HTTP 409 \"head out of date\""
        );
        assert_eq!(
            MergeAnswer::Transport("read timed out".into()).to_string(),
            "no answer (read timed out)"
        );
        let v = after_merge(&status(200, ""), &Ok(merged()), HEAD);
        assert_eq!(v.detail(), "merged now (merge commit e7f8a9b0c1; HTTP 200)");
    }

    #[test]
    fn pr_read_logs_its_facts() {
        assert_eq!(
            open(None).to_string(),
            "state=open merged=false mergeable=absent wip=false head=c3d4e5f6a7 base=main"
        );
    }

    #[test]
    fn pins_and_compares_read_as_the_log_names_them() {
        let pins = [
            (
                Pin::Validated(HEAD.into()),
                format!("validated {}", short(HEAD)),
            ),
            (Pin::AsRead, "head as read".into()),
            (
                Pin::Missing { task: "T-1".into() },
                "none (no validated revision)".into(),
            ),
        ];
        for (pin, want) in pins {
            assert_eq!(pin_text(&pin), want, "{pin:?}");
        }
        let compares = [
            (Compare::NotAsked, "not-asked"),
            (Compare::Ahead(0), "ahead-0"),
            (Compare::Ahead(3), "ahead-3"),
            (Compare::Unavailable, "unavailable"),
            (Compare::Failed("x".into()), "failed"),
        ];
        for (c, want) in compares {
            assert_eq!(compare_text(&c), want, "{c:?}");
        }
    }

    #[test]
    fn a_task_pins_its_validated_revision_or_nothing() {
        let missing = Pin::Missing { task: "T-1".into() };
        let cases = [
            (Some(HEAD), Pin::Validated(HEAD.into())),
            (Some(" "), missing.clone()),
            (Some(""), missing.clone()),
            (None, missing),
        ];
        for (validated, want) in cases {
            assert_eq!(pin_for_task(validated, "T-1"), want, "{validated:?}");
        }
    }
}
