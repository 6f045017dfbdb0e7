//! What one `reconcile` pass reports, and its renderings: the text lines (what a real
//! pass changed; every task on `--dry-run`), the `--json` document, and the counts the
//! summary line and `orch status` carry.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use crate::core::reconcile::{Action, Skip, TaskVerdict};
use crate::core::stage::Stage;
use crate::ops::pass::Counts;

/// One task's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct TaskLine {
    /// The task id.
    pub id: i64,
    /// Its key.
    pub key: String,
    /// Its project.
    pub project: String,
    /// Its stage when judged.
    pub stage: Stage,
    /// What the pass did (or would do) with it.
    #[serde(flatten)]
    pub verdict: TaskVerdict,
    /// What acting did, when it failed or lost a race.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One replay in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayLine {
    /// `delivery` or `work-item`.
    pub source: &'static str,
    /// The delivery row id or the work item id.
    pub id: String,
    /// What it did (or would do).
    pub detail: String,
}

/// One task of the branch step in the report.
#[derive(Debug, Clone, Serialize)]
pub struct BranchLine {
    /// The task id.
    pub id: i64,
    /// Its key.
    pub key: String,
    /// The branch.
    pub branch: String,
    /// What was done (or would be), or why it is left.
    pub detail: String,
}

/// The pass's report.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Why the pass stopped before finishing its work, if it did.
    pub stopped_early: Option<String>,
    /// Every task scanned (`--dry-run`, `--json`); else only those the text report
    /// prints.
    pub tasks: Vec<TaskLine>,
    /// Replays.
    pub replays: Vec<ReplayLine>,
    /// The branch step: tasks whose branch was not confirmed on Gitea.
    pub branches: Vec<BranchLine>,
    /// Escalations made or finished this pass (task keys).
    pub escalations: Vec<String>,
    /// Decisions whose write the database refused (counted in `errors` too): the pass
    /// exits 2 when there is any.
    #[serde(skip)]
    pub unwritten: i64,
    #[serde(skip)]
    pub c: Tally,
}

/// The pass's counts, as the summary line prints them.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Tally {
    /// Tasks judged.
    pub scanned: i64,
    /// Tasks a guard left alone.
    pub skipped: i64,
    /// Tasks moved forward.
    pub advanced: i64,
    /// Tasks sent back.
    pub rolled_back: i64,
    /// Stage jobs re-queued.
    pub rerun: i64,
    /// Tasks escalated this pass.
    pub escalated: i64,
    /// Tasks whose gate waits.
    pub waiting: i64,
    /// Tasks not reached (rate limit, cap, listing stopped).
    pub deferred: i64,
    /// Deliveries and work items replayed.
    pub replayed: i64,
    /// Deliveries and work items not replayed because a newer update was known.
    pub stale: i64,
    /// Tasks whose priority changed to what the listing showed.
    pub priorities: i64,
    /// Branches created (or found) on Gitea.
    pub branches: i64,
    /// Tasks still lacking their branch after the pass.
    pub branches_left: i64,
    /// Steps that failed (each also logged).
    pub errors: i64,
    /// Requests sent to Plane.
    pub plane_requests: i64,
    /// Requests sent to Gitea.
    pub gitea_requests: i64,
}

impl Report {
    /// Returns the counts in the order the summary line prints them.
    pub fn counts(&self) -> Counts {
        let c = &self.c;
        vec![
            ("scanned", c.scanned),
            ("skipped", c.skipped),
            ("advanced", c.advanced),
            ("rolled_back", c.rolled_back),
            ("rerun", c.rerun),
            ("escalated", c.escalated),
            ("waiting", c.waiting),
            ("deferred", c.deferred),
            ("replayed", c.replayed),
            ("stale", c.stale),
            ("priorities", c.priorities),
            ("branches", c.branches),
            ("branches_left", c.branches_left),
            ("errors", c.errors),
            ("plane_requests", c.plane_requests),
            ("gitea_requests", c.gitea_requests),
            ("requests", c.plane_requests + c.gitea_requests),
            ("stopped_early", i64::from(self.stopped_early.is_some())),
        ]
    }
}

/// Returns the `--json` document: the report with its counts.
pub fn to_json(report: &Report) -> Result<String> {
    let mut v = serde_json::to_value(report)?;
    v["counts"] = serde_json::Value::Object(
        report
            .counts()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n.into()))
            .collect(),
    );
    Ok(serde_json::to_string_pretty(&v)?)
}

/// Returns the text report: the branch step, replays, the tasks a real pass changed
/// (every task on `--dry-run`), escalations, and why the pass stopped early.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    for l in &r.branches {
        let _ = writeln!(out, "branch {} {}: {}", l.key, l.branch, l.detail);
    }
    for l in &r.replays {
        let _ = writeln!(out, "replay {} {}: {}", l.source, l.id, l.detail);
    }
    for t in &r.tasks {
        if !shown(r.dry_run, &t.verdict, t.note.as_ref()) {
            continue;
        }
        let what = match &t.verdict {
            TaskVerdict::Skip { skip } => {
                let detail = match skip {
                    Skip::Analysis => "a human decides in Plane".to_string(),
                    Skip::NoGate(d)
                    | Skip::JobLive(d)
                    | Skip::Grace(d)
                    | Skip::Escalated(d)
                    | Skip::Blocked(d) => d.clone(),
                };
                format!("skip ({}): {detail}", skip.guard())
            }
            TaskVerdict::Act { action } => describe(action),
            TaskVerdict::Deferred { because } => format!("deferred: {because}"),
        };
        let note = t
            .note
            .as_ref()
            .map(|n| format!(" [{n}]"))
            .unwrap_or_default();
        let _ = writeln!(out, "{} {}: {what}{note}", t.key, t.stage);
    }
    for k in &r.escalations {
        let _ = writeln!(out, "escalated {k}");
    }
    if let Some(why) = &r.stopped_early {
        let _ = writeln!(out, "stopped early: {why}");
    }
    out
}

/// Whether the text report prints a task's line: a real pass prints what it changed
/// (and what failed or lost a race); a dry run prints every task.
pub fn shown(dry_run: bool, verdict: &TaskVerdict, note: Option<&String>) -> bool {
    dry_run
        || matches!(
            verdict,
            TaskVerdict::Act { action } if !matches!(action, Action::Wait { .. })
        )
        || note.is_some()
}

fn describe(a: &Action) -> String {
    match a {
        Action::Advance { to } => format!("advance -> {to}"),
        Action::Rollback {
            to,
            because,
            escalate,
        } => format!(
            "roll back -> {to} ({because}){}",
            if *escalate { ", then escalate" } else { "" }
        ),
        Action::Rerun {
            job_id,
            attempt,
            because,
        } => format!("re-run job {job_id} as attempt {attempt} ({because})"),
        Action::Escalate { reason } => format!("escalate: {reason}"),
        Action::Wait { because } => format!("wait: {because}"),
    }
}
