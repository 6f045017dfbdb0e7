//! What `orch status` shows, and its two renderings: the text for people and the
//! node_exporter textfile format for scrapers (the JSON is the report's `Serialize`).
//! Pure: the command reads the database, the windows and the lease, and passes the
//! report in.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::core::hold::Hold;
use crate::core::job::JobStatus;
use crate::core::lease::{parse_holder, Lease, LeaseRow, LeaseState};
use crate::core::priority::Priority;
use crate::core::stage::Stage;
use crate::core::when::{format_unix, human_duration};

/// A task's or project's spend as shown (`task show --json`, `status --json`): the
/// totals plus `cost`, the micro-units as a decimal string.
pub fn spend_json(t: &crate::core::spend::SpendTotals) -> serde_json::Value {
    serde_json::json!({
        "jobs": t.jobs,
        "tokens_in": t.tokens_in,
        "tokens_out": t.tokens_out,
        "cost_micros": t.cost_micros,
        "cost": crate::core::spend::format_micros(t.cost_micros),
    })
}

/// A task's spend as `status` appends it to the task's entry: ` spent 0.40`, nothing
/// when none was reported.
fn spent(spend: Option<&serde_json::Value>) -> String {
    spend
        .map(|v| format!(" spent {}", v["cost"].as_str().unwrap_or("?")))
        .unwrap_or_default()
}

/// A task's spend as one line of `task show`.
pub fn spend_text(t: &crate::core::spend::SpendTotals) -> String {
    if t.jobs == 0 {
        return "none reported".into();
    }
    format!(
        "cost {} over {} job(s), tokens in {} out {}",
        crate::core::spend::format_micros(t.cost_micros),
        t.jobs,
        t.tokens_in,
        t.tokens_out
    )
}

/// One running job as shown.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunningJob {
    /// Job id.
    pub id: i64,
    /// Task id.
    pub task_id: i64,
    /// Task key.
    pub key: String,
    /// The task's priority.
    pub priority: Priority,
    /// Agent.
    pub agent: String,
    /// Stage.
    pub stage: String,
    /// Attempt.
    pub attempt: u32,
    /// Agent pid, once stamped.
    pub pid: Option<i64>,
    /// Seconds since it started.
    pub age_s: i64,
    /// `alive`, `dead`, `reused`, or `no-pid`.
    pub liveness: String,
    /// The task's reported spend so far ([`spend_json`]), `None` when none was reported.
    pub spend: Option<serde_json::Value>,
}

/// One escalated task as shown.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EscalatedTask {
    /// Task id.
    pub id: i64,
    /// Task key.
    pub key: String,
    /// The task's priority.
    pub priority: Priority,
    /// Project.
    pub project: String,
    /// Stage it is parked at.
    pub stage: String,
    /// Why.
    pub reason: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// The task's reported spend so far ([`spend_json`]), `None` when none was reported.
    pub spend: Option<serde_json::Value>,
}

/// One subcommand's last pass as shown.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PassView {
    /// The subcommand.
    pub command: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Unix seconds, for scrapers.
    pub started_at_unix: i64,
    /// Seconds before the report.
    pub age_s: i64,
    /// Duration.
    pub duration_ms: i64,
    /// `ok`, `no` or `error`.
    pub outcome: String,
    /// Its counts.
    pub counts: BTreeMap<String, serde_json::Value>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StatusReport {
    /// When it was made (RFC 3339).
    pub generated_at: String,
    /// The report time in unix seconds.
    pub generated_at_unix: i64,
    /// The database schema version.
    pub schema_version: i64,
    /// Jobs by status.
    pub jobs: BTreeMap<String, i64>,
    /// Running jobs, oldest first (at most 20; `running_total` counts all).
    pub running: Vec<RunningJob>,
    /// All running jobs.
    pub running_total: i64,
    /// Tasks by stage.
    pub tasks: BTreeMap<String, i64>,
    /// Escalated tasks (at most 20; `escalated_total` counts all).
    pub escalated: Vec<EscalatedTask>,
    /// All escalated tasks.
    pub escalated_total: i64,
    /// Reported agent spend per project (only projects with any; `cost_micros` and the
    /// `cost` decimal in the currency agents report).
    pub spend: BTreeMap<String, serde_json::Value>,
    /// Webhook deliveries not yet acted on (`pending`) and those that acted on nothing
    /// because a newer update of their work item was known (`stale`).
    pub deliveries: BTreeMap<String, i64>,
    /// Each subcommand's last pass.
    pub passes: Vec<PassView>,
    /// Armed post-deploy windows, soonest end first.
    pub post_deploy: Vec<WindowView>,
    /// The merge lease holder, when a lease file exists.
    pub lease: Option<LeaseView>,
    /// Who holds the staging environment (the running `deploy-staging` job), if anyone.
    pub staging: StagingView,
    /// The projects on hold (`orch hold`) at the report's time, by project.
    pub holds: Vec<HoldView>,
}

/// A project's hold as shown: merges and deployer jobs of the project are stopped.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HoldView {
    /// The project.
    pub project: String,
    /// Why.
    pub reason: String,
    /// When it lapses by itself (RFC 3339); `None`: until cleared.
    pub until: Option<String>,
    /// The same in unix seconds.
    pub until_unix: Option<i64>,
    /// When it was set (RFC 3339).
    pub set_at: String,
    /// The same in unix seconds.
    pub set_at_unix: i64,
    /// Seconds since it was set.
    pub age_s: i64,
    /// Who set it.
    pub by: String,
    /// The job whose agent set it, when set from inside one.
    pub agent_job: Option<i64>,
}

impl HoldView {
    /// Returns the view of `h` at `now`.
    pub fn of(h: &Hold, now: i64) -> HoldView {
        HoldView {
            project: h.project.clone(),
            reason: h.reason.clone(),
            until: h.until.map(format_unix),
            until_unix: h.until,
            set_at: format_unix(h.set_at),
            set_at_unix: h.set_at,
            age_s: now - h.set_at,
            by: h.by.clone(),
            agent_job: h.agent_job,
        }
    }
}

/// The staging environment as shown: free, or held by the running `deploy-staging` job.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StagingView {
    /// `free` or `held`.
    pub state: String,
    /// The running `deploy-staging` jobs (one at most, unless rows were written by hand).
    pub holders: Vec<StagingHolderView>,
}

/// One holder of the staging environment.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StagingHolderView {
    /// The job id.
    pub job_id: i64,
    /// The task id.
    pub task_id: i64,
    /// The task key.
    pub key: String,
    /// Seconds since the job started.
    pub age_s: i64,
}

/// The merge lease as shown.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LeaseView {
    /// `held`, `holder-dead`, `expired` (the next reap reclaims a file; the next
    /// merge-guard takes a row over) or `malformed`.
    pub state: String,
    /// The holding job, if any.
    pub job_id: Option<i64>,
    /// The holder's pid.
    pub pid: Option<i64>,
    /// Seconds since it was taken.
    pub age_s: Option<i64>,
    /// Its TTL in seconds.
    pub ttl_s: Option<i64>,
    /// Why the file is malformed; for a lease row (PostgreSQL), its holder
    /// (`<host>:<pid>:<start time>`).
    pub detail: Option<String>,
}

impl LeaseView {
    /// Returns the view of a lease file that cannot be parsed (`why`).
    pub fn malformed(why: String) -> LeaseView {
        LeaseView {
            state: "malformed".into(),
            job_id: None,
            pid: None,
            age_s: None,
            ttl_s: None,
            detail: Some(why),
        }
    }

    /// Returns the view of the merge lease's row (PostgreSQL) at `now`: `None` when it
    /// was released (free); `held` until it expires, then `expired` (free for the next
    /// merge-guard, which takes it over; nothing reaps a row).
    pub fn of_row(r: &LeaseRow, now: i64) -> Option<LeaseView> {
        if r.released_at.is_some() {
            return None;
        }
        let detail: Option<serde_json::Value> = r
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok());
        Some(LeaseView {
            state: if r.expires_at <= now {
                "expired"
            } else {
                "held"
            }
            .into(),
            job_id: detail
                .as_ref()
                .and_then(|d| d.get("job_id"))
                .and_then(serde_json::Value::as_i64),
            pid: parse_holder(&r.holder).map(|h| h.pid),
            age_s: Some(now.saturating_sub(r.acquired_at)),
            ttl_s: Some(r.expires_at.saturating_sub(r.acquired_at)),
            detail: Some(format!("holder {}", r.holder)),
        })
    }

    /// Returns the view of a parsed lease judged `state` at `now`.
    pub fn held(l: &Lease, state: LeaseState, now: i64) -> LeaseView {
        LeaseView {
            state: match state {
                LeaseState::Held => "held",
                LeaseState::HolderDead => "holder-dead",
                LeaseState::Expired => "expired",
            }
            .into(),
            job_id: l.job_id,
            pid: Some(l.pid),
            age_s: Some(now - l.acquired_at),
            ttl_s: Some(l.ttl_s),
            detail: None,
        }
    }
}

/// One armed window as `status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WindowView {
    /// Task id.
    pub task_id: i64,
    /// Task key.
    pub key: String,
    /// Project.
    pub project: String,
    /// Repo.
    pub repo: String,
    /// Armed at (RFC 3339).
    pub armed_at: String,
    /// Ends at (RFC 3339).
    pub ends_at: String,
    /// Seconds left.
    pub time_left_s: i64,
    /// Samples taken.
    pub samples: usize,
    /// The latest classification, once probed.
    pub last_classification: Option<String>,
}

/// Returns `name count, ...` for every name, zeros included.
fn counts_line<'a>(names: impl Iterator<Item = &'a str>, counts: &BTreeMap<String, i64>) -> String {
    names
        .map(|n| format!("{n} {}", counts.get(n).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The delivery outcomes `status` counts, in the order it prints them.
pub const DELIVERY_COUNTS: [&str; 2] = ["pending", "stale"];

/// A task's priority after its key in the text: ` [urgent]`, nothing for `none` (the
/// JSON always carries it).
fn shown(p: Priority) -> String {
    match p {
        Priority::None => String::new(),
        p => format!(" [{p}]"),
    }
}

/// Renders the report for people.
pub fn render_text(r: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "orch status at {} (schema {})",
        r.generated_at, r.schema_version
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "jobs: {}",
        counts_line(JobStatus::ALL.iter().map(|s| s.as_str()), &r.jobs)
    );
    if r.running.is_empty() {
        let _ = writeln!(out, "running: none");
    } else {
        let _ = writeln!(out, "running ({}, oldest first):", r.running_total);
        for j in &r.running {
            let pid = j.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "  job {} {}{} {} ({}) attempt {} pid {pid} {} age {}{}",
                j.id,
                j.key,
                shown(j.priority),
                j.agent,
                j.stage,
                j.attempt,
                j.liveness,
                human_duration(j.age_s),
                spent(j.spend.as_ref())
            );
        }
        if r.running_total > r.running.len() as i64 {
            let _ = writeln!(
                out,
                "  ... and {} more",
                r.running_total - r.running.len() as i64
            );
        }
    }
    let _ = writeln!(
        out,
        "tasks: {}",
        counts_line(Stage::ALL.iter().map(|s| s.as_str()), &r.tasks)
    );
    let _ = writeln!(
        out,
        "deliveries: {}",
        counts_line(DELIVERY_COUNTS.iter().copied(), &r.deliveries)
    );
    if r.escalated.is_empty() {
        let _ = writeln!(out, "escalated: none");
    } else {
        let _ = writeln!(out, "escalated ({}):", r.escalated_total);
        for t in &r.escalated {
            let _ = writeln!(
                out,
                "  {}{} ({}) at {} since {}{}: {}",
                t.key,
                shown(t.priority),
                t.project,
                t.stage,
                t.since,
                spent(t.spend.as_ref()).replacen(' ', ", ", 1),
                t.reason
            );
        }
    }
    if r.spend.is_empty() {
        let _ = writeln!(out, "spend: none reported");
    } else {
        let _ = writeln!(out, "spend:");
        for (project, v) in &r.spend {
            let _ = writeln!(
                out,
                "  {project}: cost {} over {} job(s), tokens in {} out {}",
                v["cost"].as_str().unwrap_or("?"),
                v["jobs"],
                v["tokens_in"],
                v["tokens_out"]
            );
        }
    }
    if r.post_deploy.is_empty() {
        let _ = writeln!(out, "post-deploy: none armed");
    } else {
        let _ = writeln!(out, "post-deploy ({} armed):", r.post_deploy.len());
        for w in &r.post_deploy {
            let _ = writeln!(
                out,
                "  {} ({}) until {} ({} left), {} samples, latest {}",
                w.key,
                w.repo,
                w.ends_at,
                human_duration(w.time_left_s),
                w.samples,
                w.last_classification.as_deref().unwrap_or("not probed yet")
            );
        }
    }
    match &r.lease {
        None => {
            let _ = writeln!(out, "merge lease: free");
        }
        Some(l) if l.state == "malformed" => {
            let _ = writeln!(
                out,
                "merge lease: MALFORMED (left for an operator): {}",
                l.detail.as_deref().unwrap_or("")
            );
        }
        Some(l) => {
            let _ = writeln!(
                out,
                "merge lease: {} by job {} pid {} for {} (ttl {}s){}",
                l.state,
                l.job_id.map_or("-".into(), |j| j.to_string()),
                l.pid.unwrap_or(0),
                human_duration(l.age_s.unwrap_or(0)),
                l.ttl_s.unwrap_or(0),
                l.detail
                    .as_deref()
                    .map(|d| format!(", {d}"))
                    .unwrap_or_default()
            );
        }
    }
    if r.staging.holders.is_empty() {
        let _ = writeln!(out, "staging: free");
    } else {
        let held: Vec<String> = r
            .staging
            .holders
            .iter()
            .map(|h| {
                format!(
                    "job {} ({}) for {}",
                    h.job_id,
                    h.key,
                    human_duration(h.age_s)
                )
            })
            .collect();
        let _ = writeln!(out, "staging: held by {}", held.join(", "));
    }
    if r.holds.is_empty() {
        let _ = writeln!(out, "holds: none");
    } else {
        let _ = writeln!(out, "holds ({}: no merge, no deployer job):", r.holds.len());
        for h in &r.holds {
            let _ = writeln!(
                out,
                "  {} until {}, set {} ago by {}: {}",
                h.project,
                h.until.as_deref().unwrap_or("cleared"),
                human_duration(h.age_s),
                h.by,
                h.reason
            );
        }
    }
    if r.passes.is_empty() {
        let _ = writeln!(out, "last passes: none yet");
    } else {
        let _ = writeln!(out, "last passes:");
        let width = r.passes.iter().map(|p| p.command.len()).max().unwrap_or(0);
        for p in &r.passes {
            let counts: Vec<String> = p.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                out,
                "  {:width$}  {} ({} ago)  {}  {} ms  {}",
                p.command,
                p.started_at,
                human_duration(p.age_s),
                p.outcome,
                p.duration_ms,
                counts.join(" ")
            );
        }
    }
    out
}

/// Renders the node_exporter textfile format.
pub fn render_prometheus(r: &StatusReport, extra: &PrometheusExtras) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "orch_jobs",
        "Jobs by status.",
        JobStatus::ALL
            .iter()
            .map(|s| {
                (
                    format!("{{status=\"{s}\"}}"),
                    r.jobs.get(s.as_str()).copied().unwrap_or(0).to_string(),
                )
            })
            .collect(),
    );
    family(
        "orch_tasks",
        "Tasks by stage.",
        Stage::ALL
            .iter()
            .map(|s| {
                (
                    format!("{{stage=\"{s}\"}}"),
                    r.tasks.get(s.as_str()).copied().unwrap_or(0).to_string(),
                )
            })
            .collect(),
    );
    family(
        "orch_deliveries",
        "Webhook deliveries pending (not yet acted on) and stale (a newer update was known).",
        DELIVERY_COUNTS
            .iter()
            .map(|o| {
                (
                    format!("{{outcome=\"{o}\"}}"),
                    r.deliveries.get(*o).copied().unwrap_or(0).to_string(),
                )
            })
            .collect(),
    );
    family(
        "orch_tasks_escalated",
        "Tasks parked for a human.",
        vec![(String::new(), r.escalated_total.to_string())],
    );
    let spend = |field: &str| {
        r.spend
            .iter()
            .map(|(p, v)| (format!("{{project=\"{p}\"}}"), v[field].to_string()))
            .collect()
    };
    family(
        "orch_spend_cost_micros",
        "Cost agents reported, per project, in millionths of their currency.",
        spend("cost_micros"),
    );
    family(
        "orch_spend_tokens_in",
        "Input tokens agents reported, per project.",
        spend("tokens_in"),
    );
    family(
        "orch_spend_tokens_out",
        "Output tokens agents reported, per project.",
        spend("tokens_out"),
    );
    family(
        "orch_running_jobs_not_alive",
        "Running jobs (all of them, not only those listed) whose process is dead, reused or not yet stamped.",
        vec![(String::new(), extra.running_not_alive.to_string())],
    );
    family(
        "orch_running_job_oldest_age_seconds",
        "Age of the oldest running job.",
        vec![(
            String::new(),
            r.running.first().map(|j| j.age_s).unwrap_or(0).to_string(),
        )],
    );
    family(
        "orch_staging_held",
        "1 while a deploy-staging job holds the staging environment.",
        vec![(
            String::new(),
            u8::from(!r.staging.holders.is_empty()).to_string(),
        )],
    );
    let per_pass = |f: &dyn Fn(&PassView) -> String| {
        r.passes
            .iter()
            .map(|p| (format!("{{command=\"{}\"}}", p.command), f(p)))
            .collect::<Vec<_>>()
    };
    family(
        "orch_pass_last_run_timestamp_seconds",
        "When each subcommand's last pass started.",
        per_pass(&|p| p.started_at_unix.to_string()),
    );
    family(
        "orch_pass_duration_seconds",
        "How long each subcommand's last pass took.",
        per_pass(&|p| format!("{:.3}", p.duration_ms as f64 / 1000.0)),
    );
    family(
        "orch_pass_ok",
        "1 when each subcommand's last pass did not fail.",
        per_pass(&|p| u8::from(p.outcome != "error").to_string()),
    );
    family(
        "orch_pass_counts",
        "Each numeric count of each subcommand's last pass (the summary line's name=value).",
        r.passes
            .iter()
            .flat_map(|p| {
                p.counts.iter().filter_map(move |(name, v)| {
                    let n = v.as_f64()?;
                    Some((
                        format!(
                            "{{command=\"{}\",count=\"{}\"}}",
                            p.command,
                            label_value(name)
                        ),
                        n.to_string(),
                    ))
                })
            })
            .collect(),
    );
    family(
        "orch_merge_lease_held",
        "1 while a merge lease file (or, on PostgreSQL, an unreleased lease row) exists (whoever holds it, stale or malformed included).",
        vec![(String::new(), u8::from(r.lease.is_some()).to_string())],
    );
    family(
        "orch_merge_lease_expiry_timestamp_seconds",
        "When the merge lease held now expires (absent while none is held).",
        r.lease
            .iter()
            .filter_map(|l| Some(r.generated_at_unix - l.age_s? + l.ttl_s?))
            .map(|t| (String::new(), t.to_string()))
            .collect(),
    );
    let mut held: Vec<&str> = extra.projects.iter().map(String::as_str).collect();
    held.extend(r.holds.iter().map(|h| h.project.as_str()));
    held.sort_unstable();
    held.dedup();
    family(
        "orch_hold_active",
        "1 while the project is on hold (orch hold: no merge, no deployer job), else 0.",
        held.iter()
            .map(|p| {
                let on = r.holds.iter().any(|h| h.project == *p);
                (
                    format!("{{project=\"{}\"}}", label_value(p)),
                    u8::from(on).to_string(),
                )
            })
            .collect(),
    );
    family(
        "orch_hold_set_timestamp_seconds",
        "When each hold on now was set.",
        r.holds
            .iter()
            .map(|h| {
                (
                    format!("{{project=\"{}\"}}", label_value(&h.project)),
                    h.set_at_unix.to_string(),
                )
            })
            .collect(),
    );
    family(
        "orch_hold_until_timestamp_seconds",
        "When each hold on now lapses by itself (absent for a hold until cleared).",
        r.holds
            .iter()
            .filter_map(|h| {
                Some((
                    format!("{{project=\"{}\"}}", label_value(&h.project)),
                    h.until_unix?.to_string(),
                ))
            })
            .collect(),
    );
    family(
        "orch_plane_ratelimit_remaining",
        "X-RateLimit-Remaining of the last Plane answer that carried it, whichever command read it (absent until one did).",
        extra
            .plane_budget
            .iter()
            .map(|(n, _)| (String::new(), n.to_string()))
            .collect(),
    );
    family(
        "orch_plane_ratelimit_seen_timestamp_seconds",
        "When that Plane answer was read.",
        extra
            .plane_budget
            .iter()
            .map(|(_, t)| (String::new(), t.to_string()))
            .collect(),
    );
    family(
        "orch_build_info",
        "The orch binary that wrote this file: version and git revision.",
        vec![(
            format!(
                "{{version=\"{}\",revision=\"{}\"}}",
                label_value(&extra.version),
                label_value(&extra.revision)
            ),
            "1".into(),
        )],
    );
    out
}

/// What the Prometheus rendering needs beyond the report people read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusExtras {
    /// Running jobs whose process is not alive, over every running job (the report
    /// lists only the first few).
    pub running_not_alive: u64,
    /// The binary's version.
    pub version: String,
    /// The git revision it was built from.
    pub revision: String,
    /// The pipeline file's projects (each gets an `orch_hold_active` sample, 0 or 1).
    pub projects: Vec<String>,
    /// The last Plane rate-limit budget any command read: (requests left, when read).
    pub plane_budget: Option<(i64, i64)>,
}

/// Escapes a label value for the text format (backslash, double quote, newline).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        StatusReport {
            generated_at: "2026-11-25T03:00:00Z".into(),
            generated_at_unix: 1_795_575_600,
            schema_version: 2,
            jobs: [("queued", 2), ("running", 1), ("failed", 1)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            running: vec![RunningJob {
                id: 3,
                task_id: 1,
                key: "ORCH-1".into(),
                priority: Priority::None,
                agent: "developer".into(),
                stage: "development".into(),
                attempt: 2,
                pid: Some(4242),
                age_s: 300,
                liveness: "dead".into(),
                spend: None,
            }],
            running_total: 1,
            tasks: [("development", 1)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            escalated: vec![],
            escalated_total: 0,
            spend: [(
                "orch".to_string(),
                spend_json(&crate::core::spend::SpendTotals {
                    jobs: 2,
                    tokens_in: 1500,
                    tokens_out: 200,
                    cost_micros: 1_250_000,
                }),
            )]
            .into_iter()
            .collect(),
            deliveries: [("stale", 1)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            passes: vec![PassView {
                command: "reap".into(),
                started_at: "2026-11-25T02:59:00Z".into(),
                started_at_unix: 1_795_575_540,
                age_s: 60,
                duration_ms: 12,
                outcome: "ok".into(),
                counts: [("flipped".to_string(), serde_json::json!(1))]
                    .into_iter()
                    .collect(),
            }],
            post_deploy: vec![],
            lease: None,
            staging: StagingView {
                state: "held".into(),
                holders: vec![StagingHolderView {
                    job_id: 4,
                    task_id: 2,
                    key: "SHOP-1".into(),
                    age_s: 90,
                }],
            },
            holds: vec![HoldView::of(
                &Hold {
                    project: "shop".into(),
                    reason: "release freeze".into(),
                    until: Some(1_795_582_800),
                    set_at: 1_795_572_000,
                    by: "ada".into(),
                    os_user: "ada".into(),
                    agent_job: None,
                },
                1_795_575_600,
            )],
        }
    }

    #[test]
    fn text_shows_a_priority_after_the_key_unless_none() {
        let mut r = report();
        r.running[0].priority = Priority::Urgent;
        r.escalated = vec![EscalatedTask {
            id: 2,
            key: "SHOP-2".into(),
            priority: Priority::Low,
            project: "shop".into(),
            stage: "review".into(),
            reason: "why".into(),
            since: "2026-11-25T02:00:00Z".into(),
            spend: None,
        }];
        r.escalated_total = 1;
        let text = render_text(&r);
        assert!(
            text.contains("  job 3 ORCH-1 [urgent] developer (development) attempt 2"),
            "{text}"
        );
        assert!(
            text.contains("  SHOP-2 [low] (shop) at review since 2026-11-25T02:00:00Z: why"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["running"][0]["priority"], "urgent");
        assert_eq!(json["escalated"][0]["priority"], "low");
        assert!(!render_text(&report()).contains('['), "none shows nothing");
    }

    #[test]
    fn text_shows_a_task_spend_on_its_running_job_and_escalation() {
        let mut r = report();
        let spend = spend_json(&crate::core::spend::SpendTotals {
            jobs: 3,
            tokens_in: 10,
            tokens_out: 2,
            cost_micros: 2_500_000,
        });
        r.running[0].spend = Some(spend.clone());
        r.escalated = vec![EscalatedTask {
            id: 2,
            key: "SHOP-2".into(),
            priority: Priority::None,
            project: "shop".into(),
            stage: "review".into(),
            reason: "spend 2.50 reached ORCH_TASK_BUDGET 2.50 over 3 job(s)".into(),
            since: "2026-11-25T02:00:00Z".into(),
            spend: Some(spend),
        }];
        r.escalated_total = 1;
        let text = render_text(&r);
        assert!(text.contains(" dead age 5m00s spent 2.50\n"), "{text}");
        assert!(
            text.contains("  SHOP-2 (shop) at review since 2026-11-25T02:00:00Z, spent 2.50: spend 2.50 reached"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["running"][0]["spend"]["cost_micros"], 2_500_000);
        assert_eq!(json["escalated"][0]["spend"]["jobs"], 3);
        let none = serde_json::to_value(report()).unwrap();
        assert!(none["running"][0]["spend"].is_null());
        assert!(!render_text(&report()).contains("spent"));
    }

    #[test]
    fn text_lists_every_status_and_stage_with_zeros() {
        insta::assert_snapshot!(render_text(&report()), @r"
        orch status at 2026-11-25T03:00:00Z (schema 2)

        jobs: queued 2, running 1, succeeded 0, failed 1, cancelled 0
        running (1, oldest first):
          job 3 ORCH-1 developer (development) attempt 2 pid 4242 dead age 5m00s
        tasks: analysis 0, development 1, review 0, deploy-staging 0, deploy 0, done 0, cancelled 0
        deliveries: pending 0, stale 1
        escalated: none
        spend:
          orch: cost 1.25 over 2 job(s), tokens in 1500 out 200
        post-deploy: none armed
        merge lease: free
        staging: held by job 4 (SHOP-1) for 1m30s
        holds (1: no merge, no deployer job):
          shop until 2026-11-25T05:00:00Z, set 1h00m ago by ada: release freeze
        last passes:
          reap  2026-11-25T02:59:00Z (1m00s ago)  ok  12 ms  flipped=1
        ");
    }

    #[test]
    fn prometheus_text_is_well_formed() {
        let extra = PrometheusExtras {
            running_not_alive: 1,
            version: "0.1.0".into(),
            revision: "abc\"def".into(),
            projects: vec!["orch".into(), "shop".into()],
            plane_budget: Some((57, 1_795_575_540)),
        };
        let text = render_prometheus(&report(), &extra);
        for line in text.lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP orch_") || line.starts_with("# TYPE orch_"),
                    "{line}"
                );
                continue;
            }
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("orch_"), "{line}");
            value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
        }
        assert!(text.contains("orch_jobs{status=\"cancelled\"} 0\n"));
        assert!(text.contains("orch_running_jobs_not_alive 1\n"));
        assert!(text.contains("orch_staging_held 1\n"));
        assert!(text.contains("orch_pass_duration_seconds{command=\"reap\"} 0.012\n"));
        assert!(text.contains("orch_pass_counts{command=\"reap\",count=\"flipped\"} 1\n"));
        assert!(text.contains("orch_hold_active{project=\"orch\"} 0\n"));
        assert!(text.contains("orch_hold_active{project=\"shop\"} 1\n"));
        assert!(text.contains("orch_hold_set_timestamp_seconds{project=\"shop\"} 1795572000\n"));
        assert!(text.contains("orch_hold_until_timestamp_seconds{project=\"shop\"} 1795582800\n"));
        assert!(text.contains("orch_build_info{version=\"0.1.0\",revision=\"abc\\\"def\"} 1\n"));
        assert!(text.contains("orch_plane_ratelimit_remaining 57\n"));
        assert!(text.contains("orch_plane_ratelimit_seen_timestamp_seconds 1795575540\n"));
        // Never read: the families are typed but have no sample (not a made-up 0).
        let none = render_prometheus(
            &report(),
            &PrometheusExtras {
                plane_budget: None,
                ..extra
            },
        );
        assert!(none.contains("# TYPE orch_plane_ratelimit_remaining gauge\n"));
        assert!(!none.contains("\norch_plane_ratelimit_remaining "));
    }

    #[test]
    fn a_lease_row_reads_as_held_expired_or_free() {
        let row = LeaseRow {
            name: "merge".into(),
            holder: "h1:4242:7".into(),
            generation: 3,
            acquired_at: 100,
            expires_at: 700,
            detail: Some(r#"{"job_id":9,"task":"SHOP-1"}"#.into()),
            released_at: None,
        };
        let v = LeaseView::of_row(&row, 160).unwrap();
        assert_eq!(
            (v.state.as_str(), v.job_id, v.pid, v.age_s, v.ttl_s),
            ("held", Some(9), Some(4242), Some(60), Some(600))
        );
        assert_eq!(v.detail.as_deref(), Some("holder h1:4242:7"));
        assert_eq!(LeaseView::of_row(&row, 700).unwrap().state, "expired");
        let released = LeaseRow {
            released_at: Some(150),
            ..row.clone()
        };
        assert_eq!(LeaseView::of_row(&released, 160), None);
        let garbage = LeaseRow {
            holder: "?".into(),
            detail: Some("not json".into()),
            expires_at: -5,
            ..row
        };
        let v = LeaseView::of_row(&garbage, 160).unwrap();
        assert_eq!((v.state.as_str(), v.job_id, v.pid), ("expired", None, None));
    }

    #[test]
    fn a_lease_reads_as_its_judged_state() {
        let l = Lease {
            job_id: Some(9),
            task: Some("ORCH-1".into()),
            pid: 4242,
            pid_start_time: None,
            acquired_at: 100,
            ttl_s: 600,
        };
        let cases = [
            (LeaseState::Held, "held"),
            (LeaseState::HolderDead, "holder-dead"),
            (LeaseState::Expired, "expired"),
        ];
        for (state, want) in cases {
            let v = LeaseView::held(&l, state, 160);
            assert_eq!(v.state, want);
            assert_eq!(
                (v.job_id, v.pid, v.age_s, v.ttl_s),
                (Some(9), Some(4242), Some(60), Some(600))
            );
        }
        let m = LeaseView::malformed("bad yaml".into());
        assert_eq!(
            (m.state.as_str(), m.detail.as_deref()),
            ("malformed", Some("bad yaml"))
        );
    }
}
