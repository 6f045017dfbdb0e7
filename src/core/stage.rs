//! The pipeline's stages, agents and the one table of allowed transitions.
//!
//! [`STAGE_TRANSITIONS`] is the single source of truth for how a task may move; the
//! database adapter refuses any move it does not list. No I/O here.

use std::fmt;
use std::str::FromStr;

/// A stage of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The analyst writes `01-analysis.md`; a human approves in Plane.
    Analysis,
    /// The developer works on the branch and opens the PR.
    Development,
    /// The reviewer writes `05-review.md`.
    Review,
    /// The deployer installs on staging; `staging-check` writes `10-staging-report.md`.
    DeployStaging,
    /// The deployer merges (through `merge-guard`) and deploys production.
    Deploy,
    /// Delivered; post-deploy may still watch production.
    Done,
    /// Terminal: the work item was cancelled.
    Cancelled,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 7] = [
        Stage::Analysis,
        Stage::Development,
        Stage::Review,
        Stage::DeployStaging,
        Stage::Deploy,
        Stage::Done,
        Stage::Cancelled,
    ];

    /// Returns the stage's stable name (as stored and printed).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Analysis => "analysis",
            Stage::Development => "development",
            Stage::Review => "review",
            Stage::DeployStaging => "deploy-staging",
            Stage::Deploy => "deploy",
            Stage::Done => "done",
            Stage::Cancelled => "cancelled",
        }
    }

    /// Returns the agent whose job runs in this stage, if any.
    pub fn agent(self) -> Option<Agent> {
        match self {
            Stage::Analysis => Some(Agent::Analyst),
            Stage::Development => Some(Agent::Developer),
            Stage::Review => Some(Agent::Reviewer),
            Stage::DeployStaging | Stage::Deploy => Some(Agent::Deployer),
            Stage::Done | Stage::Cancelled => None,
        }
    }

    /// Returns whether nothing ever leaves this stage.
    pub fn is_terminal(self) -> bool {
        self == Stage::Cancelled
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown stage {s:?}; expected one of {}",
                    Stage::ALL.map(Stage::as_str).join(", ")
                )
            })
    }
}

/// An agent that does a stage's work as a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Agent {
    /// Analysis.
    Analyst,
    /// Development.
    Developer,
    /// Review.
    Reviewer,
    /// Staging and production deploys.
    Deployer,
}

impl Agent {
    /// Every agent.
    pub const ALL: [Agent; 4] = [
        Agent::Analyst,
        Agent::Developer,
        Agent::Reviewer,
        Agent::Deployer,
    ];

    /// Returns the agent's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Agent::Analyst => "analyst",
            Agent::Developer => "developer",
            Agent::Reviewer => "reviewer",
            Agent::Deployer => "deployer",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Agent> {
        Agent::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who moved a task (recorded on every stage event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Actor {
    /// A Plane webhook delivery.
    Webhook,
    /// The reconcile pass (gate re-drive or replay).
    Reconcile,
    /// The job supervisor, evaluating the gate after a job ended.
    RunJob,
    /// The reaper (never moves stages; listed for completeness of the log).
    Reaper,
    /// The post-deploy watcher.
    PostDeploy,
    /// A person at the terminal (`orch task move`).
    Operator,
}

impl Actor {
    /// Returns the actor's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Webhook => "webhook",
            Actor::Reconcile => "reconcile",
            Actor::RunJob => "run-job",
            Actor::Reaper => "reaper",
            Actor::PostDeploy => "post-deploy",
            Actor::Operator => "operator",
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of move a transition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveKind {
    /// Forward along the pipeline.
    Advance,
    /// Back to development.
    Rollback,
    /// To the terminal `cancelled`.
    Cancel,
}

/// One allowed edge of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Where the task is.
    pub from: Stage,
    /// Where it goes.
    pub to: Stage,
    /// Forward, rollback or cancel.
    pub kind: MoveKind,
    /// What triggers it, for people (`task move` and the docs print it).
    pub trigger: &'static str,
    /// Whether it adds one to the developer retry count.
    pub counts_developer_retry: bool,
    /// Whether it arms the post-deploy window.
    pub arms_post_deploy: bool,
}

const fn edge(from: Stage, to: Stage, kind: MoveKind, trigger: &'static str) -> Transition {
    Transition {
        from,
        to,
        kind,
        trigger,
        counts_developer_retry: false,
        arms_post_deploy: false,
    }
}

/// The table of every allowed transition except cancellation (see [`transition`]).
pub const STAGE_TRANSITIONS: &[Transition] = &[
    edge(
        Stage::Analysis,
        Stage::Development,
        MoveKind::Advance,
        "work item moved to an approved state in Plane",
    ),
    edge(
        Stage::Development,
        Stage::Review,
        MoveKind::Advance,
        "developer job ended, PR open, CI green on its head",
    ),
    edge(
        Stage::Review,
        Stage::DeployStaging,
        MoveKind::Advance,
        "review_verdict: APPROVE",
    ),
    Transition {
        counts_developer_retry: true,
        ..edge(
            Stage::Review,
            Stage::Development,
            MoveKind::Rollback,
            "review_verdict: REQUEST_CHANGES",
        )
    },
    edge(
        Stage::DeployStaging,
        Stage::Deploy,
        MoveKind::Advance,
        "staging_status: SUCCESS, revision pinned at the PR head, branch mergeable",
    ),
    edge(
        Stage::DeployStaging,
        Stage::Development,
        MoveKind::Rollback,
        "staging_status: FAILED",
    ),
    Transition {
        arms_post_deploy: true,
        ..edge(
            Stage::Deploy,
            Stage::Done,
            MoveKind::Advance,
            "deploy_status: SUCCESS and the PR merged",
        )
    },
    edge(
        Stage::Deploy,
        Stage::Development,
        MoveKind::Rollback,
        "deploy_status: FAILED",
    ),
    edge(
        Stage::Done,
        Stage::Development,
        MoveKind::Rollback,
        "production DEGRADED in the post-deploy window and rolled back",
    ),
];

const CANCEL_EDGES: [Transition; 6] = [
    edge(
        Stage::Analysis,
        Stage::Cancelled,
        MoveKind::Cancel,
        "work item moved to a cancelled state",
    ),
    edge(
        Stage::Development,
        Stage::Cancelled,
        MoveKind::Cancel,
        "work item moved to a cancelled state",
    ),
    edge(
        Stage::Review,
        Stage::Cancelled,
        MoveKind::Cancel,
        "work item moved to a cancelled state",
    ),
    edge(
        Stage::DeployStaging,
        Stage::Cancelled,
        MoveKind::Cancel,
        "work item moved to a cancelled state",
    ),
    edge(
        Stage::Deploy,
        Stage::Cancelled,
        MoveKind::Cancel,
        "work item moved to a cancelled state",
    ),
    edge(
        Stage::Done,
        Stage::Cancelled,
        MoveKind::Cancel,
        "work item moved to a cancelled state",
    ),
];

/// Returns the transition from `from` to `to`, or `None` when the table forbids it.
pub fn transition(from: Stage, to: Stage) -> Option<&'static Transition> {
    STAGE_TRANSITIONS
        .iter()
        .chain(CANCEL_EDGES.iter())
        .find(|t| t.from == from && t.to == to)
}

/// Returns every transition out of `from`.
pub fn transitions_from(from: Stage) -> impl Iterator<Item = &'static Transition> {
    STAGE_TRANSITIONS
        .iter()
        .chain(CANCEL_EDGES.iter())
        .filter(move |t| t.from == from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip() {
        for s in Stage::ALL {
            assert_eq!(s.as_str().parse::<Stage>().unwrap(), s);
        }
        assert!("Deploy".parse::<Stage>().is_err());
    }

    #[test]
    fn each_stage_has_its_agent() {
        assert_eq!(Stage::Analysis.agent(), Some(Agent::Analyst));
        assert_eq!(Stage::Development.agent(), Some(Agent::Developer));
        assert_eq!(Stage::Review.agent(), Some(Agent::Reviewer));
        assert_eq!(Stage::DeployStaging.agent(), Some(Agent::Deployer));
        assert_eq!(Stage::Deploy.agent(), Some(Agent::Deployer));
        assert_eq!(Stage::Done.agent(), None);
        assert_eq!(Stage::Cancelled.agent(), None);
    }

    #[test]
    fn the_table_is_exactly_the_spec() {
        use Stage::*;
        let allowed = [
            (Analysis, Development),
            (Development, Review),
            (Review, DeployStaging),
            (Review, Development),
            (DeployStaging, Deploy),
            (DeployStaging, Development),
            (Deploy, Done),
            (Deploy, Development),
            (Done, Development),
        ];
        for from in Stage::ALL {
            for to in Stage::ALL {
                let expected =
                    allowed.contains(&(from, to)) || (to == Cancelled && from != Cancelled);
                assert_eq!(transition(from, to).is_some(), expected, "{from} -> {to}");
            }
        }
        assert!(
            transition(Review, Development)
                .unwrap()
                .counts_developer_retry
        );
        assert!(
            !transition(DeployStaging, Development)
                .unwrap()
                .counts_developer_retry
        );
        assert!(transition(Deploy, Done).unwrap().arms_post_deploy);
        assert_eq!(transitions_from(Cancelled).count(), 0);
    }
}
