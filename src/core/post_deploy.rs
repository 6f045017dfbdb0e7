//! Post-deploy watch decisions: who is watched, what the samples say, what to do.
//!
//! Pure functions over plain data: applicability of a repo, the 5xx counters read from a
//! Prometheus text page, the classification of a window's samples (HEALTHY, DEGRADED,
//! INCONCLUSIVE), the decision for one tick, the window's state machine (what a tick
//! does first, [`next_step`]; the transitions of [`WindowState`] from armed through a
//! rollback to closed) and the rendering of the task's `16-post-deploy-log.md`. No I/O,
//! no clock: the tick command probes, reads the time once and passes everything in;
//! `adapters::windows` stores the windows.

use std::fmt;
use std::path::Path;

use crate::core::artefact::{PostDeployVerdict, StatusValue};
use crate::core::task::Task;

/// Why a project is or is not watched after deploy → done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applicability {
    /// Watched.
    Applies,
    /// Not watched, with the reason (for the log).
    Skipped(String),
}

/// The facts about a project that decide whether post-deploy watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchedProject<'a> {
    /// The project's name in the pipeline file.
    pub name: &'a str,
    /// Its Gitea `owner/name`.
    pub repo: &'a str,
    /// Whether it has a `health_url` to probe.
    pub has_health_url: bool,
}

/// Decides whether post-deploy watches a project.
///
/// `repos` is `ORCH_POST_DEPLOY_REPOS`: project names or Gitea `owner/name`, either form;
/// empty means every project with a `health_url` (the self-hosting one included: its
/// windows only ever alert, see [`decide`]), so a default install watches, rolls back and
/// reopens what it can probe. A listed project is watched as listed. `project` is `None`
/// when the task's project is not in the pipeline file.
pub fn applicability(
    enabled: bool,
    repos: &[String],
    project: Option<WatchedProject<'_>>,
) -> Applicability {
    if !enabled {
        return Applicability::Skipped("ORCH_POST_DEPLOY_ENABLED is off".into());
    }
    let Some(WatchedProject {
        name,
        repo,
        has_health_url,
    }) = project
    else {
        return Applicability::Skipped("the project is not in the pipeline file".into());
    };
    if repos.is_empty() {
        return if has_health_url {
            Applicability::Applies
        } else {
            Applicability::Skipped(format!(
                "ORCH_POST_DEPLOY_REPOS is empty (every project with a health_url) and {name} has no health_url"
            ))
        };
    }
    if repos
        .iter()
        .any(|r| r == name || r.eq_ignore_ascii_case(repo))
    {
        Applicability::Applies
    } else {
        Applicability::Skipped(format!(
            "neither {name} nor {repo} is in ORCH_POST_DEPLOY_REPOS"
        ))
    }
}

/// The thresholds a window is judged with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Consecutive health failures that mean DEGRADED (`ORCH_POST_DEPLOY_FAIL_THRESHOLD`).
    pub fail_streak: u32,
    /// A window 5xx ratio above this means DEGRADED (`ORCH_POST_DEPLOY_5XX_THRESHOLD`).
    pub max_5xx_ratio: f64,
    /// Fewer samples than this is INCONCLUSIVE (`ORCH_POST_DEPLOY_MIN_SAMPLES`).
    pub min_samples: u32,
}

/// Request counters read from one metrics page (cumulative, as Prometheus counters are).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// All requests.
    pub total: f64,
    /// Requests answered 5xx.
    pub errors_5xx: f64,
}

/// One probe of production.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// When (unix seconds).
    pub at: i64,
    /// Health: `Some(true)` a 2xx answer, `Some(false)` anything else (status, timeout,
    /// refused), `None` no health URL configured.
    pub health_ok: Option<bool>,
    /// What the health probe saw (`HTTP 200`, `timed out` ...).
    pub health_detail: String,
    /// The request counters, when a metrics URL is configured and readable.
    pub counters: Option<Counters>,
    /// What the metrics probe saw, when it did not give counters.
    #[serde(default)]
    pub metrics_detail: String,
}

impl Sample {
    /// Returns whether the sample carries any signal.
    pub fn has_signal(&self) -> bool {
        self.health_ok.is_some() || self.counters.is_some()
    }

    /// Returns the sample as the log's `samples` cell says it
    /// (`health HTTP 200; requests 120 (5xx 3)`).
    pub fn summary(&self) -> String {
        let health = match self.health_ok {
            None => "health n/a".to_string(),
            Some(_) => format!("health {}", self.health_detail),
        };
        let metrics = match (&self.counters, self.metrics_detail.is_empty()) {
            (Some(c), _) => format!("requests {} (5xx {})", c.total, c.errors_5xx),
            (None, false) => self.metrics_detail.clone(),
            (None, true) => "metrics n/a".to_string(),
        };
        format!("{health}; {metrics}")
    }
}

/// What a window's samples say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Classification {
    /// No evidence of degradation and enough samples.
    Healthy,
    /// Evidence of degradation.
    Degraded,
    /// No evidence of degradation, but too few samples to call it healthy.
    Inconclusive,
}

impl Classification {
    /// Returns the word logs and the artefact use.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Healthy => "HEALTHY",
            Classification::Degraded => "DEGRADED",
            Classification::Inconclusive => "INCONCLUSIVE",
        }
    }

    /// Returns the artefact verdict with the same meaning.
    pub fn verdict(self) -> PostDeployVerdict {
        match self {
            Classification::Healthy => PostDeployVerdict::Healthy,
            Classification::Degraded => PostDeployVerdict::Degraded,
            Classification::Inconclusive => PostDeployVerdict::Inconclusive,
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classification with the evidence behind it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assessment {
    /// The classification.
    pub classification: Classification,
    /// Consecutive health failures at the end of the samples.
    pub fail_streak: u32,
    /// Requests counted over the window (counter increases between samples).
    pub requests: f64,
    /// 5xx answers counted over the window.
    pub errors_5xx: f64,
    /// `errors_5xx / requests`, or `None` with no requests.
    pub ratio_5xx: Option<f64>,
    /// Samples with any signal.
    pub samples: u32,
    /// One line of evidence for logs, alerts and the reopen reason.
    pub evidence: String,
}

/// Sums a counter's increases over consecutive readings; a decrease is a counter reset
/// (the process restarted), after which the new reading is the increase.
fn increase(readings: impl Iterator<Item = f64>) -> f64 {
    let mut prev: Option<f64> = None;
    let mut sum = 0.0;
    for cur in readings {
        if let Some(p) = prev {
            sum += if cur >= p { cur - p } else { cur };
        }
        prev = Some(cur);
    }
    sum
}

/// Classifies a window's samples.
///
/// DEGRADED iff the last `fail_streak` samples with a health result all failed (a
/// success resets the streak), or the window's 5xx ratio is strictly above
/// `max_5xx_ratio`. Otherwise INCONCLUSIVE with fewer than `min_samples` samples carrying
/// a signal, else HEALTHY. No requests at all is no evidence, not a ratio of zero.
pub fn classify(samples: &[Sample], t: &Thresholds) -> Assessment {
    let mut streak = 0u32;
    for ok in samples.iter().filter_map(|s| s.health_ok) {
        streak = if ok { 0 } else { streak.saturating_add(1) };
    }
    let counters: Vec<Counters> = samples.iter().filter_map(|s| s.counters).collect();
    let requests = increase(counters.iter().map(|c| c.total));
    let errors_5xx = increase(counters.iter().map(|c| c.errors_5xx)).min(requests);
    let ratio_5xx = (requests > 0.0).then(|| errors_5xx / requests);
    let with_signal =
        u32::try_from(samples.iter().filter(|s| s.has_signal()).count()).unwrap_or(u32::MAX);
    let streak_bad = streak >= t.fail_streak;
    let ratio_bad = ratio_5xx.is_some_and(|r| r > t.max_5xx_ratio);
    let classification = if streak_bad || ratio_bad {
        Classification::Degraded
    } else if with_signal < t.min_samples {
        Classification::Inconclusive
    } else {
        Classification::Healthy
    };
    let ratio_text = match ratio_5xx {
        Some(r) => format!(
            "5xx {errors_5xx}/{requests} = {:.2}% (threshold {:.2}%)",
            r * 100.0,
            t.max_5xx_ratio * 100.0
        ),
        None => "5xx n/a (no requests counted)".to_string(),
    };
    let evidence = format!(
        "{classification}: health failure streak {streak} (threshold {}), {ratio_text}, {with_signal} samples (minimum {})",
        t.fail_streak, t.min_samples
    );
    Assessment {
        classification,
        fail_streak: streak,
        requests,
        errors_5xx,
        ratio_5xx,
        samples: with_signal,
        evidence,
    }
}

/// What one tick does for one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TickDecision {
    /// Keep watching.
    Continue,
    /// Run the rollback command, alert, reopen the task, close the window DEGRADED.
    Rollback,
    /// Alert only (the self-hosting repo, or no rollback command configured).
    AlertOnly,
    /// The window is over: close it with its final verdict.
    Close,
}

impl TickDecision {
    /// Returns the word logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            TickDecision::Continue => "CONTINUE",
            TickDecision::Rollback => "ROLLBACK",
            TickDecision::AlertOnly => "ALERT_ONLY",
            TickDecision::Close => "CLOSE",
        }
    }
}

impl fmt::Display for TickDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decides one tick for an open window whose samples were just classified.
///
/// The self-hosting repo is always ALERT_ONLY: a tick never restarts the process that
/// runs it. An ordinary repo without a rollback command can only alert too. The window
/// is over at `now >= ends_at`; a window that degraded on its last tick still rolls back.
pub fn decide(
    classification: Classification,
    self_hosting: bool,
    has_rollback: bool,
    now: i64,
    ends_at: i64,
) -> TickDecision {
    match classification {
        Classification::Degraded if self_hosting || !has_rollback => TickDecision::AlertOnly,
        Classification::Degraded => TickDecision::Rollback,
        _ if now >= ends_at => TickDecision::Close,
        _ => TickDecision::Continue,
    }
}

/// The verdict a window closes with: DEGRADED when any tick saw degradation, else what
/// its samples say (INCONCLUSIVE with too few).
pub fn final_verdict(samples: &[Sample], ever_degraded: bool, t: &Thresholds) -> Classification {
    if ever_degraded {
        return Classification::Degraded;
    }
    classify(samples, t).classification
}

/// Whether a window is due for a new sample: not sampled for at least half the interval,
/// so a burst of manual or overlapping ticks cannot compress the failure streak.
///
/// A last sample later than `now` means the clock stepped back: the window is due at
/// once (one probe a tick, as ever), never paused until the clock catches up.
pub fn is_due(last_sample_at: Option<i64>, now: i64, interval_s: i64) -> bool {
    last_sample_at.is_none_or(|at| at > now || now - at >= interval_s / 2)
}

/// Why the metrics page could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// The counter is not on the page.
    #[error("metric {0} not found")]
    Missing(String),
    /// A sample line of the counter does not parse.
    #[error("malformed sample line {0:?}")]
    Malformed(String),
}

/// Reads the request counter `metric` from a Prometheus text page: the sum over all
/// series, and the sum of the series whose `code` (or `status`) label starts with 5.
///
/// # Errors
/// [`MetricsError`] when the counter is absent or one of its lines is malformed.
pub fn parse_counters(page: &str, metric: &str) -> Result<Counters, MetricsError> {
    let mut found = false;
    let mut total = 0.0;
    let mut errors = 0.0;
    for line in page.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        if &line[..name_end] != metric {
            continue;
        }
        let rest = &line[name_end..];
        let (labels, value_part) = if let Some(inner) = rest.strip_prefix('{') {
            let close = inner
                .rfind('}')
                .ok_or_else(|| MetricsError::Malformed(line.into()))?;
            (&inner[..close], &inner[close + 1..])
        } else {
            ("", rest)
        };
        let value: f64 = value_part
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| MetricsError::Malformed(line.into()))?;
        found = true;
        total += value;
        let is_5xx = labels.split(',').any(|pair| {
            let Some((k, v)) = pair.split_once('=') else {
                return false;
            };
            let v = v.trim().trim_matches('"');
            matches!(k.trim(), "code" | "status") && v.len() == 3 && v.starts_with('5')
        });
        if is_5xx {
            errors += value;
        }
    }
    if !found {
        return Err(MetricsError::Missing(metric.into()));
    }
    Ok(Counters {
        total,
        errors_5xx: errors,
    })
}

/// One line of the post-deploy log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TickRecord {
    /// When (RFC 3339).
    pub at: String,
    /// The sample summary (health, 5xx), or `-` when the tick did not probe.
    pub samples: String,
    /// The classification.
    pub classification: String,
    /// The decision.
    pub decision: String,
    /// What acting did (`-` when nothing).
    pub action: String,
}

/// Renders `16-post-deploy-log.md`: frontmatter with the window and, once closed, the
/// `post_deploy_verdict`; then one table row per tick.
pub fn render_log(
    key: &str,
    armed_at: &str,
    ends_at: &str,
    verdict: Option<PostDeployVerdict>,
    ticks: &[TickRecord],
) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace(['\n', '\r'], " ");
    let mut out = String::from("---\n");
    if let Some(v) = verdict {
        out.push_str(&format!("{}: {}\n", PostDeployVerdict::KEY, v.as_str()));
    }
    out.push_str(&format!("window_armed_at: \"{armed_at}\"\n"));
    out.push_str(&format!("window_ends_at: \"{ends_at}\"\n"));
    out.push_str("---\n");
    out.push_str(&format!("# Post-deploy log of {}\n\n", cell(key)));
    out.push_str("| time | samples | classification | decision | action |\n");
    out.push_str("|---|---|---|---|---|\n");
    for t in ticks {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            cell(&t.at),
            cell(&t.samples),
            cell(&t.classification),
            cell(&t.decision),
            cell(&t.action)
        ));
    }
    out
}

/// Most samples (and log rows) kept per window: a window of 900 s at 60 s holds 15, so
/// the cap only bounds a window file someone left armed with a huge length.
pub const MAX_SAMPLES: usize = 2000;

/// Where the rollback of a window got to. Written before the command starts and after
/// it ends, so a crash in between is seen and the command is never run twice.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ActionState {
    /// Not started.
    None,
    /// Started at this time; no end recorded (yet, or ever: the tick died).
    Started {
        /// Unix seconds.
        at: i64,
    },
    /// Ended.
    Done {
        /// When it started.
        started_at: i64,
        /// When its end was recorded.
        ended_at: i64,
        /// `exit 0`, `exit 3`, `timed out after 300s`, `interrupted` ...
        result: String,
        /// Whether it succeeded.
        ok: bool,
    },
}

/// One post-deploy window: what `window.json` holds, and the state machine a tick
/// drives it through (open → probed ticks → rollback started → rollback done → closed,
/// or open → closed with a verdict).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowState {
    /// The task row id.
    pub task_id: i64,
    /// The task key (`SHOP-12`).
    pub task_key: String,
    /// The project name.
    pub project: String,
    /// Gitea `owner/name`, as given.
    pub repo: String,
    /// The Plane work item id, as given.
    pub work_item: String,
    /// Armed at (unix seconds).
    pub armed_at: i64,
    /// The window ends at (unix seconds).
    pub ends_at: i64,
    /// Who armed it (`deploy -> done`, `operator`).
    pub armed_by: String,
    /// The samples so far.
    #[serde(default)]
    pub samples: Vec<Sample>,
    /// The log lines so far.
    #[serde(default)]
    pub ticks: Vec<TickRecord>,
    /// The latest classification, for `status`.
    #[serde(default)]
    pub last_classification: Option<String>,
    /// Whether any tick classified DEGRADED.
    #[serde(default)]
    pub ever_degraded: bool,
    /// The latest evidence line (what the alert and the reopen reason quote).
    #[serde(default)]
    pub last_evidence: Option<String>,
    /// The rollback's progress.
    pub action: ActionState,
    /// Whether the task was reopened to development.
    #[serde(default)]
    pub reopened: bool,
    /// When the window closed, if it has.
    #[serde(default)]
    pub closed_at: Option<i64>,
    /// The final verdict (`HEALTHY`, `DEGRADED`, `INCONCLUSIVE`), once closed.
    #[serde(default)]
    pub verdict: Option<String>,
}

/// What a tick does first for one open window, before any probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// A rollback started in an earlier tick: finish the window (alert, reopen, close
    /// DEGRADED) without running the command again.
    FinishRollback,
    /// The window is over: close it with this verdict, without probing (judged on what
    /// it saw inside the window, even when the timer was stopped past its end).
    Close(Classification),
    /// The kill switch is off and the window is not over: leave it alone.
    SkipDisabled,
    /// Sampled less than half an interval ago: extra ticks must not shorten the streak.
    SkipNotDue,
    /// Probe production, then classify and [`decide`].
    Probe,
}

/// Decides what a tick does first for an open window, in this order: a recorded
/// rollback is finished, a window past its end closes (even with the kill switch off),
/// a disabled watch skips, a window sampled too recently skips, else it is probed.
pub fn next_step(
    w: &WindowState,
    now: i64,
    enabled: bool,
    interval_s: i64,
    t: &Thresholds,
) -> NextStep {
    if w.action != ActionState::None {
        NextStep::FinishRollback
    } else if now >= w.ends_at {
        NextStep::Close(final_verdict(&w.samples, w.ever_degraded, t))
    } else if !enabled {
        NextStep::SkipDisabled
    } else if !is_due(w.samples.last().map(|s| s.at), now, interval_s) {
        NextStep::SkipNotDue
    } else {
        NextStep::Probe
    }
}

/// Where a window stands in a tick's order, lowest first: the work that cannot wait (a
/// recorded rollback to finish, then a window to close), then the windows due for a
/// probe, never sampled first, then least recently sampled, then those
/// with nothing to do this tick. A tick handles a bounded number of windows in this
/// order, so none is starved: a probe moves a window behind every window not probed
/// since, and windows not due never take the place of one that is.
pub fn tick_rank(w: &WindowState, step: &NextStep) -> (u8, Option<i64>) {
    let rank = match step {
        NextStep::FinishRollback => 0,
        NextStep::Close(_) => 1,
        NextStep::Probe => 2,
        NextStep::SkipDisabled | NextStep::SkipNotDue => 3,
    };
    (rank, w.samples.last().map(|s| s.at))
}

/// What a probed tick concluded.
#[derive(Debug, Clone, PartialEq)]
pub struct TickConclusion {
    /// The classification of the window's samples, with its evidence.
    pub assessment: Assessment,
    /// What to do about it.
    pub decision: TickDecision,
}

/// Returns why a DEGRADED window only alerts ([`TickDecision::AlertOnly`]).
pub fn alert_only_reason(self_hosting: bool) -> &'static str {
    if self_hosting {
        "self-hosting repo: alert only, never restarted by a tick"
    } else {
        "no rollback command configured: alert only"
    }
}

impl WindowState {
    /// Returns a new open window for `task`, armed at `now` for `length_s` seconds.
    pub fn arm(task: &Task, now: i64, length_s: i64, armed_by: &str) -> WindowState {
        WindowState {
            task_id: task.id,
            task_key: task.key.clone(),
            project: task.project.clone(),
            repo: task.repo.clone(),
            work_item: task.work_item_id.clone(),
            armed_at: now,
            ends_at: now.saturating_add(length_s),
            armed_by: armed_by.to_string(),
            samples: vec![],
            ticks: vec![],
            last_classification: None,
            ever_degraded: false,
            last_evidence: None,
            action: ActionState::None,
            reopened: false,
            closed_at: None,
            verdict: None,
        }
    }

    /// Returns whether the window is still being watched.
    pub fn is_open(&self) -> bool {
        self.closed_at.is_none()
    }

    /// Returns the seconds left in the window at `now` (0 once over).
    pub fn time_left(&self, now: i64) -> i64 {
        (self.ends_at - now).max(0)
    }

    /// Returns the dedupe key of this window's alert of `kind` (`degraded`, `rollback`):
    /// one alert per window and kind, however many ticks see it.
    pub fn alert_key(&self, kind: &str) -> String {
        format!("post-deploy:{}:{}:{kind}", self.task_id, self.armed_at)
    }

    /// Returns the alert for a DEGRADED window that only alerts ([`TickDecision::AlertOnly`]).
    pub fn degraded_alert(&self, evidence: &str, self_hosting: bool) -> String {
        format!(
            "post-deploy: {} ({}) production DEGRADED: {evidence}. {}.",
            self.task_key,
            self.repo,
            alert_only_reason(self_hosting)
        )
    }

    /// Returns the alert once the rollback ended (`outcome`, [`Self::rollback_outcome`]),
    /// naming the file holding its output.
    pub fn rollback_alert(&self, evidence: &str, outcome: &str, output: &Path) -> String {
        format!(
            "post-deploy: {} ({}) production DEGRADED: {evidence}. {outcome}; the task goes back \
             to development. Output: {}",
            self.task_key,
            self.repo,
            output.display()
        )
    }

    /// Adds a probe's sample (the oldest dropped past [`MAX_SAMPLES`]), classifies the
    /// window and decides the tick; the evidence becomes the window's latest.
    pub fn observe(
        &mut self,
        sample: Sample,
        t: &Thresholds,
        self_hosting: bool,
        has_rollback: bool,
        now: i64,
    ) -> TickConclusion {
        self.samples.push(sample);
        if self.samples.len() > MAX_SAMPLES {
            self.samples.remove(0);
        }
        let assessment = classify(&self.samples, t);
        let decision = decide(
            assessment.classification,
            self_hosting,
            has_rollback,
            now,
            self.ends_at,
        );
        self.last_evidence = Some(assessment.evidence.clone());
        TickConclusion {
            assessment,
            decision,
        }
    }

    /// Records a tick's classification (`status` shows the latest; one DEGRADED makes
    /// the verdict DEGRADED). Returns whether it was DEGRADED.
    pub fn record_classification(&mut self, c: Classification) -> bool {
        self.last_classification = Some(c.as_str().to_string());
        let degraded = c == Classification::Degraded;
        self.ever_degraded |= degraded;
        degraded
    }

    /// Adds a row to the window's log (the oldest dropped past [`MAX_SAMPLES`]).
    pub fn push_tick(
        &mut self,
        at: &str,
        samples: &str,
        classification: &str,
        decision: &str,
        action: &str,
    ) {
        self.ticks.push(TickRecord {
            at: at.to_string(),
            samples: samples.to_string(),
            classification: classification.to_string(),
            decision: decision.to_string(),
            action: action.to_string(),
        });
        if self.ticks.len() > MAX_SAMPLES {
            self.ticks.remove(0);
        }
    }

    /// Records that the rollback `argv` starts at `now` (`at` its RFC 3339 form). Saved
    /// before the command runs, so a crash from then on never runs it again.
    pub fn start_rollback(
        &mut self,
        now: i64,
        at: &str,
        samples: &str,
        classification: Classification,
        argv: &[String],
    ) {
        self.ticks.push(TickRecord {
            at: at.to_string(),
            samples: samples.to_string(),
            classification: classification.as_str().into(),
            decision: TickDecision::Rollback.as_str().into(),
            action: format!("rollback started: {}", argv.join(" ")),
        });
        self.action = ActionState::Started { at: now };
    }

    /// Records the rollback's end: `result` as the runner described it, `ok` whether it
    /// succeeded.
    pub fn end_rollback(&mut self, started_at: i64, ended_at: i64, result: String, ok: bool) {
        self.action = ActionState::Done {
            started_at,
            ended_at,
            result,
            ok,
        };
    }

    /// Marks a rollback found started with no end (the tick that ran it died) as done and
    /// interrupted at `now`, so it is never run again. Returns when it had started, or
    /// `None` when there was nothing to mark.
    pub fn interrupt_rollback(&mut self, now: i64) -> Option<i64> {
        let ActionState::Started { at } = self.action else {
            return None;
        };
        self.end_rollback(
            at,
            now,
            "interrupted: the tick ended before the rollback's end was recorded; not run again"
                .into(),
            false,
        );
        Some(at)
    }

    /// Returns what the ended rollback did, as the alert and the reopen reason say it
    /// (`rolled back (exit 0)`, `rollback FAILED (exit 3); production needs a human`), or
    /// `None` while no end is recorded.
    pub fn rollback_outcome(&self) -> Option<String> {
        let ActionState::Done { result, ok, .. } = &self.action else {
            return None;
        };
        Some(if *ok {
            format!("rolled back ({result})")
        } else {
            format!("rollback FAILED ({result}); production needs a human")
        })
    }

    /// Closes the window at `now` with `verdict`, logging the closing row.
    pub fn close(
        &mut self,
        now: i64,
        at: &str,
        verdict: Classification,
        samples: &str,
        action: &str,
    ) {
        self.push_tick(
            at,
            samples,
            verdict.as_str(),
            TickDecision::Close.as_str(),
            action,
        );
        self.closed_at = Some(now);
        self.verdict = Some(verdict.as_str().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::artefact::parse_status;

    const T: Thresholds = Thresholds {
        fail_streak: 3,
        max_5xx_ratio: 0.05,
        min_samples: 3,
    };

    fn health(seq: &[bool]) -> Vec<Sample> {
        seq.iter()
            .enumerate()
            .map(|(i, ok)| Sample {
                at: i as i64 * 60,
                health_ok: Some(*ok),
                health_detail: String::new(),
                counters: None,
                metrics_detail: String::new(),
            })
            .collect()
    }

    fn metrics(readings: &[(f64, f64)]) -> Vec<Sample> {
        readings
            .iter()
            .enumerate()
            .map(|(i, (total, e))| Sample {
                at: i as i64 * 60,
                health_ok: Some(true),
                health_detail: String::new(),
                counters: Some(Counters {
                    total: *total,
                    errors_5xx: *e,
                }),
                metrics_detail: String::new(),
            })
            .collect()
    }

    #[test]
    fn classification_table() {
        use Classification::*;
        let (f, o) = (false, true);
        let cases: Vec<(&str, Vec<Sample>, Classification)> = vec![
            ("no samples", vec![], Inconclusive),
            (
                "two fails, below threshold and too few",
                health(&[f, f]),
                Inconclusive,
            ),
            ("three fails", health(&[f, f, f]), Degraded),
            (
                "fail fail ok fail: the ok resets",
                health(&[f, f, o, f]),
                Healthy,
            ),
            ("ok then three fails", health(&[o, f, f, f]), Degraded),
            (
                "three fails then ok recovers",
                health(&[f, f, f, o]),
                Healthy,
            ),
            ("three oks", health(&[o, o, o]), Healthy),
            ("two oks: too few samples", health(&[o, o]), Inconclusive),
            // 5 of 100 is exactly the 0.05 threshold: not above it.
            (
                "ratio exactly at threshold",
                metrics(&[(0., 0.), (100., 5.), (100., 5.)]),
                Healthy,
            ),
            (
                "ratio just above",
                metrics(&[(0., 0.), (100., 6.), (100., 6.)]),
                Degraded,
            ),
            (
                "ratio above with one delta",
                metrics(&[(1000., 0.), (1100., 50.)]),
                Degraded,
            ),
            (
                "zero requests is no evidence",
                metrics(&[(7., 1.), (7., 1.), (7., 1.)]),
                Healthy,
            ),
            (
                "a single reading has no delta",
                metrics(&[(100., 90.)]),
                Inconclusive,
            ),
            // The counter reset (restart): 50 after 100 counts as 50 new requests.
            (
                "counter reset",
                metrics(&[(100., 0.), (50., 10.), (60., 10.)]),
                Degraded,
            ),
        ];
        for (name, samples, want) in cases {
            assert_eq!(classify(&samples, &T).classification, want, "{name}");
        }
    }

    #[test]
    fn thresholds_at_one_and_zero() {
        let t = Thresholds {
            fail_streak: 1,
            max_5xx_ratio: 0.0,
            min_samples: 1,
        };
        assert_eq!(
            classify(&health(&[false]), &t).classification,
            Classification::Degraded
        );
        assert_eq!(
            classify(&metrics(&[(0., 0.), (10., 0.)]), &t).classification,
            Classification::Healthy
        );
        assert_eq!(
            classify(&metrics(&[(0., 0.), (10., 1.)]), &t).classification,
            Classification::Degraded
        );
        let strict = Thresholds {
            max_5xx_ratio: 1.0,
            ..t
        };
        assert_eq!(
            classify(&metrics(&[(0., 0.), (10., 10.)]), &strict).classification,
            Classification::Healthy,
            "every request failing is not above a ratio of 1"
        );
    }

    #[test]
    fn samples_without_signal_do_not_count() {
        let blank = Sample {
            at: 0,
            health_ok: None,
            health_detail: "no health_url".into(),
            counters: None,
            metrics_detail: String::new(),
        };
        let a = classify(&[blank.clone(), blank.clone(), blank], &T);
        assert_eq!(a.classification, Classification::Inconclusive);
        assert_eq!(a.samples, 0);
        assert!(a.evidence.contains("5xx n/a"), "{}", a.evidence);
    }

    #[test]
    fn decision_table() {
        use Classification::*;
        use TickDecision::*;
        // (classification, self_hosting, has_rollback, now, ends_at, want)
        let cases = [
            (Degraded, false, true, 10, 100, Rollback),
            (Degraded, true, true, 10, 100, AlertOnly),
            (Degraded, false, false, 10, 100, AlertOnly),
            (Degraded, false, true, 100, 100, Rollback),
            (Degraded, true, true, 100, 100, AlertOnly),
            (Healthy, false, true, 10, 100, Continue),
            (Inconclusive, true, true, 99, 100, Continue),
            (Healthy, false, true, 100, 100, Close),
            (Inconclusive, false, true, 500, 100, Close),
        ];
        for (c, sh, rb, now, end, want) in cases {
            assert_eq!(
                decide(c, sh, rb, now, end),
                want,
                "{c} {sh} {rb} {now} {end}"
            );
        }
    }

    #[test]
    fn final_verdicts() {
        assert_eq!(
            final_verdict(&health(&[true, true, true]), true, &T),
            Classification::Degraded
        );
        assert_eq!(
            final_verdict(&health(&[true, true, true]), false, &T),
            Classification::Healthy
        );
        assert_eq!(
            final_verdict(&health(&[true]), false, &T),
            Classification::Inconclusive
        );
    }

    #[test]
    fn due_after_half_the_interval() {
        assert!(is_due(None, 0, 60));
        assert!(!is_due(Some(100), 129, 60));
        assert!(is_due(Some(100), 130, 60));
        assert!(is_due(Some(100), 100, 0));
        // The clock stepped back an hour: due now, not in an hour.
        assert!(is_due(Some(3700), 100, 60));
    }

    #[test]
    fn applicability_table() {
        let csv = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let project = |name, repo, has_health_url| {
            Some(WatchedProject {
                name,
                repo,
                has_health_url,
            })
        };
        let shop = project("shop", "acme/shop", true);
        let orch = project("orch", "acme/orch", true);
        let blind = project("blog", "acme/blog", false);
        // The default (empty list): every project with a health_url, self-hosting or not.
        assert_eq!(applicability(true, &[], orch), Applicability::Applies);
        assert_eq!(applicability(true, &[], shop), Applicability::Applies);
        match applicability(true, &[], blind) {
            Applicability::Skipped(why) => assert!(why.contains("no health_url"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            applicability(false, &[], orch),
            Applicability::Skipped(_)
        ));
        assert!(matches!(
            applicability(false, &csv(&["shop"]), shop),
            Applicability::Skipped(_)
        ));
        assert_eq!(
            applicability(true, &csv(&["shop"]), shop),
            Applicability::Applies
        );
        assert_eq!(
            applicability(true, &csv(&["x", "Acme/Shop"]), shop),
            Applicability::Applies
        );
        assert!(matches!(
            applicability(true, &csv(&["shop"]), orch),
            Applicability::Skipped(_)
        ));
        // A listed project is watched as listed.
        assert_eq!(
            applicability(true, &csv(&["blog"]), blind),
            Applicability::Applies
        );
        assert!(matches!(
            applicability(true, &csv(&["shop"]), None),
            Applicability::Skipped(_)
        ));
        assert!(matches!(
            applicability(true, &[], None),
            Applicability::Skipped(_)
        ));
    }

    #[test]
    fn counters_from_prometheus_text() {
        let page = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
            http_requests_total{code=\"200\",path=\"/\"} 90\n\
            http_requests_total{method=\"GET\",code=\"503\"} 7\n\
            http_requests_total{code=\"500\"} 3 1700000000000\n\
            http_requests_total_created{code=\"200\"} 1.7e9\n\
            other_total 5\n";
        assert_eq!(
            parse_counters(page, "http_requests_total").unwrap(),
            Counters {
                total: 100.0,
                errors_5xx: 10.0
            }
        );
        assert_eq!(
            parse_counters("up 1\n", "http_requests_total"),
            Err(MetricsError::Missing("http_requests_total".into()))
        );
        for bad in [
            "http_requests_total{code=\"200\" 5",
            "http_requests_total{code=\"200\"} five",
            "http_requests_total -1",
            "http_requests_total NaN",
        ] {
            assert!(
                matches!(
                    parse_counters(bad, "http_requests_total"),
                    Err(MetricsError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse_counters("http_requests_total 4\n", "http_requests_total").unwrap(),
            Counters {
                total: 4.0,
                errors_5xx: 0.0
            }
        );
    }

    #[test]
    fn the_log_carries_the_verdict_the_artefact_reader_accepts() {
        let ticks = vec![TickRecord {
            at: "2026-11-25T03:01:00Z".into(),
            samples: "health HTTP 500 | 5xx n/a".into(),
            classification: "DEGRADED".into(),
            decision: "ROLLBACK".into(),
            action: "rollback exit 0".into(),
        }];
        let open = render_log("SHOP-1", "a", "b", None, &ticks);
        assert!(parse_status::<PostDeployVerdict>(Some(&open)).is_err());
        assert!(open.contains("health HTTP 500 \\| 5xx"), "{open}");
        let closed = render_log(
            "SHOP-1",
            "a",
            "b",
            Some(PostDeployVerdict::Degraded),
            &ticks,
        );
        assert_eq!(
            parse_status::<PostDeployVerdict>(Some(&closed)),
            Ok(PostDeployVerdict::Degraded)
        );
    }

    fn task() -> Task {
        Task {
            pr_number: Some(3),
            ..Task::sample(7, crate::core::stage::Stage::Done)
        }
    }

    /// A window armed at 1000 for 900 s.
    fn window() -> WindowState {
        WindowState::arm(&task(), 1000, 900, "deploy -> done")
    }

    #[test]
    fn arming_opens_a_window_with_nothing_seen() {
        let w = window();
        assert_eq!((w.task_id, w.task_key.as_str()), (7, "SHOP-7"));
        assert_eq!(
            (w.repo.as_str(), w.work_item.as_str()),
            ("acme/shop", "item-7")
        );
        assert_eq!((w.armed_at, w.ends_at), (1000, 1900));
        assert!(w.is_open());
        assert_eq!(w.action, ActionState::None);
        assert_eq!(w.time_left(1000), 900);
        assert_eq!(w.time_left(1900), 0);
        assert_eq!(w.time_left(5000), 0);
        assert_eq!(w.alert_key("degraded"), "post-deploy:7:1000:degraded");
        let far = WindowState::arm(&task(), i64::MAX - 1, 900, "operator");
        assert_eq!(far.ends_at, i64::MAX, "saturates");
    }

    #[test]
    fn next_step_precedence() {
        use NextStep::*;
        let fresh = window();
        let mut sampled = window();
        sampled.samples = health(&[true]);
        sampled.samples[0].at = 1500;
        let mut degraded = sampled.clone();
        degraded.ever_degraded = true;
        let mut started = window();
        started.action = ActionState::Started { at: 1200 };
        let mut done = window();
        done.end_rollback(1200, 1210, "exit 0".into(), true);
        // (name, window, now, enabled, want); the interval is 60 s, so due after 30 s.
        let cases = [
            (
                "a started rollback first, even past the end",
                &started,
                5000,
                true,
                FinishRollback,
            ),
            (
                "a started rollback first, even switched off",
                &started,
                1500,
                false,
                FinishRollback,
            ),
            (
                "an ended rollback is finished too",
                &done,
                1500,
                true,
                FinishRollback,
            ),
            (
                "past the end closes without probing",
                &fresh,
                1900,
                true,
                Close(Inconclusive),
            ),
            (
                "past the end closes even switched off",
                &fresh,
                5000,
                false,
                Close(Inconclusive),
            ),
            (
                "a window that degraded closes DEGRADED",
                &degraded,
                1900,
                true,
                Close(Degraded),
            ),
            (
                "switched off inside the window skips",
                &fresh,
                1899,
                false,
                SkipDisabled,
            ),
            ("never sampled is due", &fresh, 1000, true, Probe),
            (
                "sampled 29 s ago is not due",
                &sampled,
                1529,
                true,
                SkipNotDue,
            ),
            ("sampled 30 s ago is due", &sampled, 1530, true, Probe),
        ];
        use Classification::*;
        for (name, w, now, enabled, want) in cases {
            assert_eq!(next_step(w, now, enabled, 60, &T), want, "{name}");
        }
    }

    #[test]
    fn observing_classifies_decides_and_keeps_the_evidence() {
        let mut w = window();
        let mut seen = vec![];
        for (i, ok) in [false, false, false].into_iter().enumerate() {
            let now = 1000 + i as i64 * 60;
            let mut sample = health(&[ok]).remove(0);
            sample.at = now;
            seen.push(w.observe(sample, &T, false, true, now).decision);
        }
        use TickDecision::*;
        assert_eq!(seen, vec![Continue, Continue, Rollback]);
        assert_eq!(w.samples.len(), 3);
        assert!(w.last_evidence.as_deref().unwrap().contains('3'), "{w:?}");
        // Observing alone records no classification: a dry run saves nothing.
        assert_eq!(
            (w.last_classification.as_deref(), w.ever_degraded),
            (None, false)
        );
        let mut hosting = window();
        let failing = health(&[false, false, false]);
        let mut last = None;
        for sample in failing {
            last = Some(hosting.observe(sample, &T, true, true, 1100).decision);
        }
        assert_eq!(last, Some(AlertOnly));
    }

    #[test]
    fn samples_and_log_rows_are_capped() {
        let mut w = window();
        for i in 0..=MAX_SAMPLES {
            let mut sample = health(&[true]).remove(0);
            sample.at = i as i64;
            w.observe(sample, &T, false, true, 1000);
            w.push_tick("t", "s", "HEALTHY", "CONTINUE", &i.to_string());
        }
        assert_eq!(w.samples.len(), MAX_SAMPLES);
        assert_eq!(w.samples[0].at, 1, "the oldest goes");
        assert_eq!(w.ticks.len(), MAX_SAMPLES);
        assert_eq!(w.ticks[0].action, "1");
    }

    #[test]
    fn one_degraded_tick_makes_the_window_degraded() {
        let mut w = window();
        assert!(!w.record_classification(Classification::Healthy));
        assert!(w.record_classification(Classification::Degraded));
        assert!(!w.record_classification(Classification::Inconclusive));
        assert_eq!(w.last_classification.as_deref(), Some("INCONCLUSIVE"));
        assert!(w.ever_degraded);
    }

    #[test]
    fn a_rollback_goes_started_then_done() {
        let mut w = window();
        let argv = vec!["/bin/rollback".to_string(), "shop".to_string()];
        assert_eq!(w.rollback_outcome(), None);
        w.start_rollback(
            1100,
            "at",
            "health HTTP 500",
            Classification::Degraded,
            &argv,
        );
        assert_eq!(w.action, ActionState::Started { at: 1100 });
        assert_eq!(w.rollback_outcome(), None, "no end recorded yet");
        let row = w.ticks.last().unwrap();
        assert_eq!(
            (row.decision.as_str(), row.action.as_str()),
            ("ROLLBACK", "rollback started: /bin/rollback shop")
        );
        let mut ok = w.clone();
        ok.end_rollback(1100, 1105, "exit 0".into(), true);
        assert_eq!(ok.rollback_outcome().unwrap(), "rolled back (exit 0)");
        assert_eq!(
            ok.interrupt_rollback(2000),
            None,
            "an ended rollback stays as it is"
        );
        let mut failed = w.clone();
        failed.end_rollback(1100, 1105, "exit 3".into(), false);
        assert_eq!(
            failed.rollback_outcome().unwrap(),
            "rollback FAILED (exit 3); production needs a human"
        );
    }

    #[test]
    fn a_rollback_whose_tick_died_is_interrupted_not_rerun() {
        let mut w = window();
        assert_eq!(w.interrupt_rollback(2000), None, "nothing started");
        assert_eq!(w.action, ActionState::None);
        w.action = ActionState::Started { at: 1100 };
        assert_eq!(w.interrupt_rollback(2000), Some(1100));
        let ActionState::Done {
            started_at,
            ended_at,
            ok,
            ..
        } = w.action.clone()
        else {
            panic!("{:?}", w.action);
        };
        assert_eq!((started_at, ended_at, ok), (1100, 2000, false));
        assert!(w
            .rollback_outcome()
            .unwrap()
            .starts_with("rollback FAILED (interrupted"));
    }

    #[test]
    fn closing_records_the_verdict_and_a_row() {
        let mut w = window();
        w.close(
            1900,
            "2026-11-25T03:15:00Z",
            Classification::Healthy,
            "-",
            "window closed: HEALTHY",
        );
        assert!(!w.is_open());
        assert_eq!(w.closed_at, Some(1900));
        assert_eq!(w.verdict.as_deref(), Some("HEALTHY"));
        let row = w.ticks.last().unwrap();
        assert_eq!(
            (row.classification.as_str(), row.decision.as_str()),
            ("HEALTHY", "CLOSE")
        );
    }

    #[test]
    fn alerts_say_what_and_why() {
        let w = window();
        assert_eq!(
            w.degraded_alert("3 health failures", true),
            "post-deploy: SHOP-7 (acme/shop) production DEGRADED: 3 health failures. \
             self-hosting repo: alert only, never restarted by a tick."
        );
        assert!(w
            .degraded_alert("e", false)
            .ends_with("no rollback command configured: alert only."));
        assert_eq!(
            w.rollback_alert(
                "e",
                "rolled back (exit 0)",
                Path::new("/s/rollback-1000.out")
            ),
            "post-deploy: SHOP-7 (acme/shop) production DEGRADED: e. rolled back (exit 0); \
             the task goes back to development. Output: /s/rollback-1000.out"
        );
    }

    #[test]
    fn sample_summaries() {
        let mut s = health(&[false]).remove(0);
        s.health_detail = "HTTP 500".into();
        assert_eq!(s.summary(), "health HTTP 500; metrics n/a");
        s.health_ok = None;
        s.metrics_detail = "HTTP 404".into();
        assert_eq!(s.summary(), "health n/a; HTTP 404");
        s.counters = Some(Counters {
            total: 120.0,
            errors_5xx: 3.0,
        });
        assert_eq!(s.summary(), "health n/a; requests 120 (5xx 3)");
    }

    #[test]
    fn the_window_file_format_is_kept() {
        let mut w = window();
        w.action = ActionState::Started { at: 1100 };
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(
            json["action"],
            serde_json::json!({"state": "started", "at": 1100})
        );
        // Fields added later default when an older file lacks them.
        let old = serde_json::json!({
            "task_id": 1, "task_key": "SHOP-1", "project": "shop", "repo": "acme/shop",
            "work_item": "i", "armed_at": 0, "ends_at": 900, "armed_by": "operator",
            "action": {"state": "none"}
        });
        let read: WindowState = serde_json::from_value(old).unwrap();
        assert!(read.is_open() && read.samples.is_empty() && !read.reopened);
    }

    #[test]
    fn a_capped_tick_order_starves_no_window() {
        // 1,500 windows armed at once, 60 s ticks, 200 handled a tick: every window is
        // probed within ceil(1500 / 200) = 8 ticks, and again within the next 8.
        let (interval, cap) = (60, 200);
        let mut ws: Vec<WindowState> = (0..1500)
            .map(|i| {
                let t = Task::sample(i, crate::core::stage::Stage::Done);
                WindowState::arm(&t, 1000, 86_400, "deploy -> done")
            })
            .collect();
        let mut probes = vec![0u32; ws.len()];
        for tick in 0..16 {
            let now = 1000 + tick * interval;
            let mut order: Vec<usize> = (0..ws.len()).collect();
            order.sort_by_key(|&i| tick_rank(&ws[i], &next_step(&ws[i], now, true, interval, &T)));
            for &i in order.iter().take(cap) {
                if next_step(&ws[i], now, true, interval, &T) == NextStep::Probe {
                    ws[i]
                        .samples
                        .extend(health(&[true]).into_iter().map(|s| Sample { at: now, ..s }));
                    probes[i] += 1;
                }
            }
            if tick == 7 {
                assert!(
                    probes.iter().all(|&n| n >= 1),
                    "every window probed by tick 8"
                );
            }
        }
        assert!(probes.iter().all(|&n| n >= 2), "{:?}", probes.iter().min());
        // The old order (the same first 200 every tick) left 1,300 never probed.
    }

    #[test]
    fn a_rollback_to_finish_and_a_window_to_close_come_before_probes() {
        let w = window();
        let mut done = window();
        done.samples = health(&[true]);
        assert!(
            tick_rank(&w, &NextStep::FinishRollback)
                < tick_rank(&w, &NextStep::Close(Classification::Healthy))
        );
        assert!(
            tick_rank(&w, &NextStep::Close(Classification::Healthy))
                < tick_rank(&w, &NextStep::Probe)
        );
        assert!(tick_rank(&w, &NextStep::Probe) < tick_rank(&w, &NextStep::SkipNotDue));
        // Among due windows, never sampled first, then the least recently sampled.
        assert!(tick_rank(&w, &NextStep::Probe) < tick_rank(&done, &NextStep::Probe));
        let mut later = window();
        later.samples = health(&[true, true]);
        assert!(tick_rank(&done, &NextStep::Probe) < tick_rank(&later, &NextStep::Probe));
    }
}
