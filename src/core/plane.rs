//! The Plane side of the pipeline as data: the projects it runs and which Plane
//! states mean what to it. The pipeline file is one way to write them down
//! (`config` reads and validates it); the decisions that read them
//! (`intake`, `reconcile`, `roundtrip`) live beside this module. No I/O here.

use serde::Deserialize;
use url::Url;

/// A state matcher: Plane state names and/or groups that carry one meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateMatch {
    /// Exact state names (a name match wins over a group match).
    #[serde(default)]
    pub names: Vec<String>,
    /// State groups: backlog, unstarted, started, completed, cancelled.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The five meanings a Plane state can carry for the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateMeanings {
    /// States that start a task (default: group `started`).
    #[serde(default = "default_start")]
    pub start: StateMatch,
    /// States that approve the analysis.
    #[serde(default)]
    pub approved: StateMatch,
    /// States that reject the analysis.
    #[serde(default)]
    pub rejected: StateMatch,
    /// States that cancel the task (default: group `cancelled`).
    #[serde(default = "default_cancel")]
    pub cancel: StateMatch,
    /// States in which reconcile leaves the task alone.
    #[serde(default)]
    pub blocked: StateMatch,
}

impl Default for StateMeanings {
    fn default() -> Self {
        StateMeanings {
            start: default_start(),
            approved: StateMatch::default(),
            rejected: StateMatch::default(),
            cancel: default_cancel(),
            blocked: StateMatch::default(),
        }
    }
}

fn default_start() -> StateMatch {
    StateMatch {
        names: vec![],
        groups: vec!["started".into()],
    }
}

fn default_cancel() -> StateMatch {
    StateMatch {
        names: vec![],
        groups: vec!["cancelled".into()],
    }
}

/// The Plane state groups (`db/models/state.py StateGroup`).
pub const PLANE_STATE_GROUPS: &[&str] = &[
    "backlog",
    "unstarted",
    "started",
    "completed",
    "cancelled",
    "triage",
];

/// One project of the pipeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Project {
    /// Short name used in logs, paths and CSV lists.
    pub name: String,
    /// The Plane project id (UUID).
    pub plane_project_id: String,
    /// The Plane project identifier used in work item keys (`ORCH` in `ORCH-65`), if known.
    pub plane_identifier: Option<String>,
    /// Gitea `owner/name`.
    pub repo: String,
    /// The branch task branches start from and PRs merge into.
    pub default_branch: String,
    /// Whether this repo runs the pipeline itself (post-deploy only alerts).
    pub self_hosting: bool,
    /// Which Plane states mean what.
    pub states: StateMeanings,
    /// Production health endpoint, for post-deploy.
    pub health_url: Option<Url>,
    /// Prometheus-format metrics endpoint (5xx ratio), for post-deploy.
    pub metrics_url: Option<Url>,
    /// The rollback command (argv, no shell), for post-deploy.
    pub rollback: Option<Vec<String>>,
}
