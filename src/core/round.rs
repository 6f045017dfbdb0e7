//! Rounds (SPEC §3 "Rounds"): when a move back to `development` starts a new round,
//! and whether a recorded pull request is still the task's current one.
//!
//! A round is one pass of the task's work through a PR. A move back to `development`
//! after the task's PR was merged starts the next round: the task gets a fresh branch
//! from the current default branch (named by [`crate::core::branch::round_branch_name`]
//! when the old branch still exists), no recorded PR and no validated revision. A
//! closed or merged PR is never the task's current PR, except at `deploy`, where the
//! merged PR is the one this round delivers. When whether the PR was merged is unknown,
//! a `deploy → development` move is undecided and waits ([`reopen`]). Pure decisions
//! over plain data: the callers gather the merge evidence.

use crate::core::facts::{Fact, PrFacts};
use crate::core::stage::Stage;

/// What a move does to the task's round.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "round", rename_all = "kebab-case")]
pub enum RoundChange {
    /// The round goes on: not a move back to development, or one before any merge.
    Keep,
    /// The PR was merged: the move starts the next round.
    New {
        /// The evidence, for the stage event and the log.
        because: String,
    },
    /// Whether the PR was merged could not be told, so the round cannot be decided:
    /// the move must not happen yet (see [`reopen`]).
    Undecided {
        /// Why it could not be told.
        why: String,
    },
}

impl RoundChange {
    /// Returns whether the move starts a new round.
    pub fn is_new(&self) -> bool {
        matches!(self, RoundChange::New { .. })
    }
}

/// Returns whether deciding the move from `from` to `to` needs to know whether the
/// task's PR was merged (only `deploy → development`: the deploy may have failed before
/// or after the merge).
pub fn needs_merge_evidence(from: Stage, to: Stage) -> bool {
    from == Stage::Deploy && to == Stage::Development
}

/// Decides whether the move from `from` to `to` starts a new round.
///
/// - `done → development` (the post-deploy rollback) always does: a task reaches `done`
///   only with its PR merged.
/// - `deploy → development` (`deploy_status: FAILED`) does when `merged` says the PR
///   was merged or its head is contained in the base (`Ok(true)`); `Ok(false)` keeps
///   the round. When it cannot be told (`Err`: Gitea down, and deploys often fail
///   exactly then) the answer is [`RoundChange::Undecided`] and the move waits: either
///   guess is wrong half the time, keeping the round sends the developer back to a
///   merged PR's branch, and a new round abandons an open PR still under review. The
///   deploy gate waits for the fact ([`crate::core::gate`]'s `check_merge_known`);
///   an operator's `task move` is refused unless they say which round it is.
/// - `review → development` and `deploy-staging → development` come before any merge
///   in the pipeline and keep the round; so does every other move. `merged` is read only
///   for `deploy → development`.
pub fn reopen(from: Stage, to: Stage, merged: &Fact<bool>) -> RoundChange {
    if to != Stage::Development {
        return RoundChange::Keep;
    }
    match from {
        Stage::Done => RoundChange::New {
            because: "done -> development: the PR was merged before done".into(),
        },
        Stage::Deploy => match merged {
            Ok(true) => RoundChange::New {
                because: "deploy -> development after the PR was merged".into(),
            },
            Ok(false) => RoundChange::Keep,
            Err(e) => RoundChange::Undecided {
                why: format!(
                    "whether the PR was merged is unknown ({e}), so whether the move starts a \
                     new round cannot be decided"
                ),
            },
        },
        _ => RoundChange::Keep,
    }
}

/// Returns the merge evidence in the deploy gate's PR fact: merged (at `deploy` this
/// includes a head already contained in the base), not merged (also when no PR is known),
/// or unknown with the reason.
pub fn merged(pr: &Fact<Option<PrFacts>>) -> Fact<bool> {
    match pr {
        Ok(Some(pr)) => Ok(pr.merged),
        Ok(None) => Ok(false),
        Err(e) => Err(e.clone()),
    }
}

/// Returns whether a PR recorded on a task at `stage` is still its current PR, given
/// whether Gitea says it is open. At `deploy` the recorded PR is current whatever its
/// state (the merged PR is how `deploy → done` passes); at every other stage a closed
/// or merged PR is not, and the open PR of the task's branch is looked for instead.
pub fn recorded_pr_is_current(stage: Stage, open: bool) -> bool {
    open || stage == Stage::Deploy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_table() {
        use Stage::*;
        let yes: Fact<bool> = Ok(true);
        let no: Fact<bool> = Ok(false);
        let unknown: Fact<bool> = Err("gitea answered 502".into());
        // (from, to, merged evidence, new round?)
        let cases: &[(Stage, Stage, &Fact<bool>, bool)] = &[
            (Done, Development, &no, true),
            (Done, Development, &unknown, true),
            (Done, Development, &yes, true),
            (Deploy, Development, &yes, true),
            (Deploy, Development, &no, false),
            (Deploy, Development, &unknown, false),
            (Review, Development, &yes, false),
            (Review, Development, &no, false),
            (DeployStaging, Development, &yes, false),
            (DeployStaging, Development, &unknown, false),
            (Analysis, Development, &yes, false),
            (Deploy, Done, &yes, false),
            (Done, Cancelled, &yes, false),
            (Development, Review, &yes, false),
        ];
        for (from, to, merged, new) in cases {
            assert_eq!(
                reopen(*from, *to, merged).is_new(),
                *new,
                "{from} -> {to} with {merged:?}"
            );
        }
    }

    #[test]
    fn an_unknown_merge_leaves_the_deploy_rollback_undecided_and_says_why() {
        let r = reopen(Stage::Deploy, Stage::Development, &Err("timed out".into()));
        match r {
            RoundChange::Undecided { why } => {
                assert!(why.contains("timed out"), "{why}");
                assert!(
                    why.contains("whether the PR was merged is unknown"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Only deploy -> development waits on the fact; every other move is decided.
        let unknown: Fact<bool> = Err("timed out".into());
        for from in Stage::ALL {
            for to in Stage::ALL {
                let undecided = matches!(reopen(from, to, &unknown), RoundChange::Undecided { .. });
                assert_eq!(undecided, needs_merge_evidence(from, to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn only_deploy_to_development_needs_merge_evidence() {
        for from in Stage::ALL {
            for to in Stage::ALL {
                assert_eq!(
                    needs_merge_evidence(from, to),
                    from == Stage::Deploy && to == Stage::Development,
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn merge_evidence_from_the_pr_fact() {
        let pr = |merged: bool| PrFacts {
            number: 1,
            open: !merged,
            merged,
            mergeable: None,
            head_sha: "a".into(),
        };
        assert_eq!(merged(&Ok(Some(pr(true)))), Ok(true));
        assert_eq!(merged(&Ok(Some(pr(false)))), Ok(false));
        assert_eq!(merged(&Ok(None)), Ok(false));
        assert_eq!(merged(&Err("502".into())), Err("502".to_string()));
    }

    #[test]
    fn a_closed_pr_is_current_only_at_deploy() {
        for stage in Stage::ALL {
            assert!(recorded_pr_is_current(stage, true), "{stage} open");
            assert_eq!(
                recorded_pr_is_current(stage, false),
                stage == Stage::Deploy,
                "{stage} closed"
            );
        }
    }
}
