//! Reconcile's decisions: which guard skips a task (in the order SPEC §4 gives), and
//! what to do with a gate's answer (advance, roll back, re-run the stage's job, escalate
//! or wait), where a task stands against the rate limit, the per-pass cap and the
//! project's listing, which listed work items are replayed, and where a capped pass
//! leaves its cursor. Pure: the command gathers the facts and acts on the answer.

use std::collections::HashMap;

use crate::core::gate::GateDecision;
use crate::core::intake::{self, meaning_of, Meaning, StateChangeDecision};
use crate::core::job::JobOutcome;
use crate::core::plane::StateMeanings;
use crate::core::stage::{transition, Stage};

/// The facts the guards read, all local (no network) except `plane_blocked`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardFacts {
    /// The task's stage.
    pub stage: Stage,
    /// When it entered the stage (unix seconds).
    pub stage_entered_at: i64,
    /// A queued or running job of the task, if any (id and status word).
    pub live_job: Option<(i64, &'static str)>,
    /// Developer rollbacks so far.
    pub developer_retries: u32,
    /// Whether the task is already parked for a human.
    pub escalated: bool,
}

/// The limits the guards and decisions apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `ORCH_RECONCILE_GRACE_S`.
    pub grace_s: i64,
    /// `ORCH_MAX_DEVELOPER_RETRIES`.
    pub max_developer_retries: u32,
    /// `ORCH_JOB_MAX_ATTEMPTS`.
    pub job_max_attempts: u32,
}

/// Why a task is left alone this pass. A skip writes nothing and sends nothing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "guard", content = "detail", rename_all = "kebab-case")]
pub enum Skip {
    /// Analysis: a human decides in Plane.
    Analysis,
    /// The stage has no gate.
    NoGate(String),
    /// A job is queued or running.
    JobLive(String),
    /// The task entered its stage too recently.
    Grace(String),
    /// The task is escalated; nothing re-drives it until a human acts.
    Escalated(String),
    /// The Plane work item is in a blocked or needs-input state (or that could not be told).
    Blocked(String),
}

impl Skip {
    /// Returns the guard's stable name.
    pub fn guard(&self) -> &'static str {
        match self {
            Skip::Analysis => "analysis",
            Skip::NoGate(_) => "no-gate",
            Skip::JobLive(_) => "job-live",
            Skip::Grace(_) => "grace",
            Skip::Escalated(_) => "escalated",
            Skip::Blocked(_) => "blocked",
        }
    }
}

/// The first local guard a task fails, told without its reason: what
/// [`local_guards`] words, and what [`passes_local_guards`] asks without wording it.
enum Guard {
    Analysis,
    NoGate,
    JobLive(i64, &'static str),
    Grace(i64),
    Retries,
    Escalated,
}

fn first_guard(t: &GuardFacts, now: i64, limits: &Limits) -> Option<Guard> {
    if t.stage == Stage::Analysis {
        return Some(Guard::Analysis);
    }
    if crate::core::gate::gate(t.stage).is_none() {
        return Some(Guard::NoGate);
    }
    if let Some((id, status)) = t.live_job {
        return Some(Guard::JobLive(id, status));
    }
    let age = now - t.stage_entered_at;
    if age < limits.grace_s {
        return Some(Guard::Grace(age));
    }
    if t.developer_retries >= limits.max_developer_retries {
        return Some(Guard::Retries);
    }
    if t.escalated {
        return Some(Guard::Escalated);
    }
    None
}

/// Applies the local guards, in order: analysis, no gate, live job, grace, escalated.
/// `None` means the task goes on to the blocked check and then its gate.
pub fn local_guards(t: &GuardFacts, now: i64, limits: &Limits) -> Option<Skip> {
    Some(match first_guard(t, now, limits)? {
        Guard::Analysis => Skip::Analysis,
        Guard::NoGate => Skip::NoGate(format!("{} has no gate", t.stage)),
        Guard::JobLive(id, status) => Skip::JobLive(format!("job {id} is {status}")),
        Guard::Grace(age) => Skip::Grace(format!(
            "entered {} {}s ago (grace {}s)",
            t.stage, age, limits.grace_s
        )),
        Guard::Retries => Skip::Escalated(format!(
            "developer retries {} reached the limit {}",
            t.developer_retries, limits.max_developer_retries
        )),
        Guard::Escalated => Skip::Escalated("escalated to a human".into()),
    })
}

/// Whether the local guards let the task through (`local_guards` is `None`), without
/// wording the reason of the one that stops it: what a pass asks of every task to
/// know which to read whole.
pub fn passes_local_guards(t: &GuardFacts, now: i64, limits: &Limits) -> bool {
    first_guard(t, now, limits).is_none()
}

/// Whether judging the task will read its PR, so its repo's open pulls: its stage's
/// gate reads the PR and the local guards let it through. What a pass lists on Gitea
/// ahead of the judging.
pub fn reads_open_pulls(t: &GuardFacts, now: i64, limits: &Limits) -> bool {
    crate::core::gate::reads_pr(&crate::core::gate::needs(t.stage))
        && passes_local_guards(t, now, limits)
}

/// What Plane said about the work item's state, for the blocked guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkItemState {
    /// A state that is not blocked (its name).
    Clear(String),
    /// A blocked or needs-input state (its name).
    Blocked(String),
    /// Could not tell (error, timeout, unknown state): skip, never advance.
    Unknown(String),
}

/// Applies the blocked guard (only when `ORCH_RECONCILE_SKIP_BLOCKED_ENABLED`).
pub fn blocked_guard(state: &WorkItemState) -> Option<Skip> {
    match state {
        WorkItemState::Clear(_) => None,
        WorkItemState::Blocked(name) => Some(Skip::Blocked(format!("work item is in {name:?}"))),
        WorkItemState::Unknown(why) => Some(Skip::Blocked(format!(
            "could not tell the work item's state: {why}"
        ))),
    }
}

/// What reconcile does with a task whose guards let it through.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Move forward (the next stage's job is enqueued by the move).
    Advance {
        /// The next stage.
        to: Stage,
    },
    /// Move back to development; `escalate` when this rollback reaches the retry limit.
    Rollback {
        /// Where to.
        to: Stage,
        /// The check that triggered it.
        because: String,
        /// Whether the task is escalated right after the move.
        escalate: bool,
    },
    /// Re-run the stage's ended job as a new attempt.
    Rerun {
        /// The job.
        job_id: i64,
        /// The new attempt number.
        attempt: u32,
        /// Why the gate failed.
        because: String,
    },
    /// Park the task for a human, once.
    Escalate {
        /// Why.
        reason: String,
    },
    /// Nothing to do yet.
    Wait {
        /// What holds the gate.
        because: String,
    },
}

/// Decides what to do with a gate's answer.
///
/// `last_job` is the stage's latest job with its id. Only failures on evidence count
/// against the attempt cap; a gate held by unknowns (Gitea still computing, CI pending,
/// an unreachable forge) waits and never re-runs a job.
pub fn decide(
    stage: Stage,
    decision: &GateDecision,
    last_job: Option<(i64, JobOutcome)>,
    developer_retries: u32,
    limits: &Limits,
) -> Action {
    match decision {
        GateDecision::NoGate => Action::Wait {
            because: "no gate".into(),
        },
        GateDecision::Advance { to, .. } => Action::Advance { to: *to },
        GateDecision::Rollback { to, because, .. } => {
            let counts = transition(stage, *to).is_some_and(|t| t.counts_developer_retry);
            let after = developer_retries + u32::from(counts);
            Action::Rollback {
                to: *to,
                because: (*because).to_string(),
                escalate: crate::core::escalation::rollback_reaches_limit(
                    counts,
                    after,
                    limits.max_developer_retries,
                ),
            }
        }
        GateDecision::Wait {
            failed_on_evidence: false,
            ..
        } => Action::Wait {
            because: decision.blockers(),
        },
        GateDecision::Wait {
            failed_on_evidence: true,
            ..
        } => match last_job {
            Some((id, job)) if job.status.is_terminal() => {
                if job.attempt >= limits.job_max_attempts {
                    Action::Escalate {
                        reason: format!(
                            "gate still fails after {} attempts of job {id}: {}",
                            job.attempt,
                            decision.blockers()
                        ),
                    }
                } else {
                    Action::Rerun {
                        job_id: id,
                        attempt: job.attempt + 1,
                        because: decision.blockers(),
                    }
                }
            }
            Some(_) => Action::Wait {
                because: "the stage's job has not ended".into(),
            },
            None => Action::Wait {
                because: format!("no job has run yet: {}", decision.blockers()),
            },
        },
    }
}

/// What a pass learned about one work item from the project's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// Seen, with its state's name and group (shared: a listing of 100,000 work items
    /// holds each of its project's few states once, not once per item).
    Seen {
        /// The state's name.
        name: std::sync::Arc<str>,
        /// The state's group.
        group: std::sync::Arc<str>,
    },
    /// Seen, but its state id is neither expanded nor cached nor known to the States API.
    UnknownState(String),
    /// Not on any page read: `complete` when every page was read.
    NotSeen {
        /// Whether the listing reached its last page.
        complete: bool,
    },
    /// The listing failed (Plane 5xx, timeout, refusal, malformed answer).
    Failed(String),
}

/// Tells the blocked guard what the listed work item's state means. A state matching
/// two meanings, an unknown state, an item the complete listing does not show, and a
/// failed or unfinished listing are all "could not tell" (skip, never advance).
pub fn plane_state_of(meanings: &StateMeanings, listed: &Listed) -> WorkItemState {
    match listed {
        Listed::Seen { name, group } => match meaning_of(meanings, name, group) {
            Ok(Some(Meaning::Blocked)) => WorkItemState::Blocked(name.to_string()),
            Ok(_) => WorkItemState::Clear(name.to_string()),
            Err(_) => WorkItemState::Unknown(format!("state {name:?} matches two meanings")),
        },
        Listed::UnknownState(id) => WorkItemState::Unknown(format!("unknown state id {id}")),
        Listed::NotSeen { complete: true } => {
            WorkItemState::Unknown("the work item is not in its project's listing".into())
        }
        Listed::NotSeen { complete: false } => WorkItemState::Unknown(
            "the project's listing stopped early (rate limit); next pass".into(),
        ),
        Listed::Failed(why) => WorkItemState::Unknown(why.clone()),
    }
}

/// Where a project's listing goes after a page Plane answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterPage<'a> {
    /// Read the next page, at this cursor.
    Next(&'a str),
    /// That was the last page: the listing is complete (the next project may be listed).
    Last,
    /// Plane's remaining budget is below the floor: the pass's listing stops here.
    BelowFloor,
}

/// Where the listing goes after a page with `next_cursor` and Plane's
/// `X-RateLimit-Remaining` (`remaining`): the one rule the page reader and the pass
/// that judges the pages both follow, so they stop at the same page.
pub fn after_page(next_cursor: Option<&str>, remaining: Option<u32>, floor: u32) -> AfterPage<'_> {
    match next_cursor {
        None => AfterPage::Last,
        Some(_) if below_floor(remaining, floor) => AfterPage::BelowFloor,
        Some(next) => AfterPage::Next(next),
    }
}

/// Whether listing must stop before the next page: Plane said fewer than `floor`
/// requests are left in its window. An absent header does not stop (Plane sends it on
/// every allowed answer; other servers may not).
pub fn below_floor(remaining: Option<u32>, floor: u32) -> bool {
    remaining.is_some_and(|r| r < floor)
}

/// The 128 bits of a work item id written as a lowercase hyphenated UUID, as Plane
/// writes them (the only spelling accepted, so two different ids never share bits).
pub fn uuid_bits(id: &str) -> Option<u128> {
    let b = id.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

/// Work item id → what a listing saw of it. An id that is a UUID as Plane writes it is
/// held as its 128 bits, any other as its text: a project's listing holds up to
/// ~100,000 items, and a pass holds every listed project's at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListedItems {
    by_uuid: std::collections::BTreeMap<u128, Listed>,
    by_text: HashMap<String, Listed>,
}

impl ListedItems {
    /// Notes what was seen of `id` (the later of two sightings wins).
    pub fn insert(&mut self, id: String, seen: Listed) {
        match uuid_bits(&id) {
            Some(bits) => {
                self.by_uuid.insert(bits, seen);
            }
            None => {
                self.by_text.insert(id, seen);
            }
        }
    }

    /// What was seen of `id`, if it was listed.
    pub fn get(&self, id: &str) -> Option<&Listed> {
        match uuid_bits(id) {
            Some(bits) => self.by_uuid.get(&bits),
            None => self.by_text.get(id),
        }
    }

    /// How many items were listed.
    pub fn len(&self) -> usize {
        self.by_uuid.len() + self.by_text.len()
    }

    /// Whether no item was listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one project's listing told the pass, for the blocked guard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Work item id → what was seen.
    pub items: ListedItems,
    /// Whether every page was read.
    pub complete: bool,
    /// Why listing failed, if it did.
    pub failed: Option<String>,
}

/// Returns what the pass knows of `work_item_id` from its project's listing (`None`:
/// the project was not listed). A listed item wins over a later failure.
pub fn listed(listing: Option<&Listing>, work_item_id: &str) -> Listed {
    match listing {
        None => Listed::Failed("the task's project is not in the pipeline".into()),
        Some(l) => match (&l.failed, l.items.get(work_item_id)) {
            (_, Some(seen)) => seen.clone(),
            (Some(why), None) => Listed::Failed(why.clone()),
            (None, None) => Listed::NotSeen {
                complete: l.complete,
            },
        },
    }
}

/// Where the pass stands when it reaches a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Plane answered 429 this pass: no more Plane calls, no more actions.
    pub rate_limited: bool,
    /// Tasks whose gate was evaluated so far.
    pub handled: usize,
    /// `ORCH_RECONCILE_MAX_TASKS`.
    pub cap: usize,
}

/// Why a task is not reached this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deferral {
    /// Plane answered 429 earlier this pass.
    RateLimited,
    /// The per-pass cap was reached.
    Cap(usize),
    /// The project's listing stopped early (the rate-limit floor).
    ListingStopped,
}

impl std::fmt::Display for Deferral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Deferral::RateLimited => f.write_str("plane rate limited this pass"),
            Deferral::Cap(cap) => write!(
                f,
                "the per-pass cap ORCH_RECONCILE_MAX_TASKS={cap} was reached"
            ),
            Deferral::ListingStopped => f.write_str("the project's listing stopped early"),
        }
    }
}

/// What the pass does with a task before its gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// A guard leaves it alone.
    Skip(Skip),
    /// Not reached this pass.
    Deferred(Deferral),
    /// Evaluate its gate (it counts against the cap).
    Evaluate,
}

/// Applies the guards in SPEC order, then the pass's limits: the local guards, the rate
/// limit, the per-pass cap, then the blocked guard on the listed state. `listed` is
/// `None` when `ORCH_RECONCILE_SKIP_BLOCKED_ENABLED` is off; `meanings` is `None` when
/// the task's project is not in the pipeline file (its state cannot be told).
pub fn judge(
    t: &GuardFacts,
    now: i64,
    limits: &Limits,
    progress: Progress,
    listed: Option<&Listed>,
    meanings: Option<&StateMeanings>,
) -> Judgement {
    if let Some(skip) = local_guards(t, now, limits) {
        return Judgement::Skip(skip);
    }
    if progress.rate_limited {
        return Judgement::Deferred(Deferral::RateLimited);
    }
    if progress.handled >= progress.cap {
        return Judgement::Deferred(Deferral::Cap(progress.cap));
    }
    match (listed, meanings) {
        (Some(Listed::NotSeen { complete: false }), _) => {
            Judgement::Deferred(Deferral::ListingStopped)
        }
        (Some(listed), Some(meanings)) => match blocked_guard(&plane_state_of(meanings, listed)) {
            Some(skip) => Judgement::Skip(skip),
            None => Judgement::Evaluate,
        },
        (Some(listed), None) => Judgement::Skip(
            blocked_guard(&WorkItemState::Unknown(format!("{listed:?}")))
                .expect("unknown always skips"),
        ),
        (None, _) => Judgement::Evaluate,
    }
}

/// Returns the key that orders a pass's tasks for fairness under the cap: those after
/// `cursor` (where the previous capped pass stopped) first, then the rest, by id.
pub fn fair_order_key(task_id: i64, cursor: i64) -> (bool, i64) {
    (task_id <= cursor, task_id)
}

/// Returns the cursor the pass leaves: the last task it evaluated when the cap stopped
/// it, else none (the file is removed, and the next pass starts from the first task).
pub fn next_cursor(capped: bool, last_handled: Option<i64>) -> Option<i64> {
    match (capped, last_handled) {
        (true, Some(id)) => Some(id),
        _ => None,
    }
}

/// Whether a project's work items must be listed this pass: always when replaying;
/// otherwise only for the blocked guard of a task the local guards let through (so an
/// escalated task alone costs no request at all).
pub fn needs_listing(replay: bool, skip_blocked: bool, a_task_passes_local_guards: bool) -> bool {
    replay || (skip_blocked && a_task_passes_local_guards)
}

/// Returns the meaning of a listed work item's state when it may be replayed: a state
/// with one meaning that is not blocked (blocked / needs-input are never replayed).
pub fn replayable_meaning(meanings: &StateMeanings, name: &str, group: &str) -> Option<Meaning> {
    match meaning_of(meanings, name, group) {
        Ok(Some(m)) if m != Meaning::Blocked => Some(m),
        _ => None,
    }
}

/// What the replay does with one listed work item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The task reflects the state already, or the state is not replayed.
    Ignore,
    /// `done` work items were replayed already: the rest wait for the next pass.
    Capped,
    /// Start the task (once), as the lost webhook would have.
    Start,
    /// Move the task, as the lost webhook would have.
    Move {
        /// Where the task is.
        from: Stage,
        /// Where it goes.
        to: Stage,
    },
}

/// Decides the replay of a work item in a state that means `meaning`, through the same
/// decision as the webhook (`intake::decide`). A finished task is left alone. A
/// rejection is an event, not a level: the state stays "rejected" while the analyst
/// redoes the work, so re-queueing on every pass would loop; it is replayed from its
/// stored delivery only. At most `cap` work items are replayed per pass.
pub fn replay(
    meaning: Meaning,
    state_name: &str,
    task: Option<&intake::TaskFacts>,
    done: usize,
    cap: usize,
) -> Replay {
    if task.is_some_and(|t| matches!(t.stage, Stage::Cancelled | Stage::Done)) {
        return Replay::Ignore;
    }
    match intake::decide(Some(meaning), state_name, false, task) {
        StateChangeDecision::NoAction(_) | StateChangeDecision::RequeueAnalysis => Replay::Ignore,
        _ if done >= cap => Replay::Capped,
        StateChangeDecision::Start => Replay::Start,
        StateChangeDecision::Move { from, to } => Replay::Move { from, to },
    }
}

/// Whether [`replay`] would do anything but ignore the work item (start, move, or stop
/// at the cap): the listing's pre-filter, asked of every listed item in a replayable
/// state, without the reason `intake::decide` formats for doing nothing (one `format!`
/// a listed item). `stage` is the task's (`None`: the item has no task);
/// `has_analyst_job` is asked only where the decision reads it, a start at analysis
/// (it costs a read of the task's jobs), so no other listed item's jobs are read. Held
/// equal to `replay(..) != Replay::Ignore` by a table test, which counts the asks too.
///
/// # Errors
/// `has_analyst_job`'s.
pub fn would_replay<E>(
    meaning: Meaning,
    stage: Option<Stage>,
    has_analyst_job: impl FnOnce() -> Result<bool, E>,
) -> Result<bool, E> {
    let Some(stage) = stage else {
        return Ok(meaning == Meaning::Start);
    };
    Ok(match meaning {
        Meaning::Start => stage == Stage::Analysis && !has_analyst_job()?,
        Meaning::Approved => stage == Stage::Analysis,
        // Re-queueing the analysis is an event, never replayed from a listing.
        Meaning::Rejected | Meaning::Blocked => false,
        Meaning::Cancel => {
            !matches!(stage, Stage::Cancelled | Stage::Done)
                && transition(stage, Stage::Cancelled).is_some()
        }
    })
}

/// The idempotency key of one escalation: the Plane comment's `external_id` and the
/// notification's dedupe key. Derived from the task and the moment it was escalated,
/// so a re-announcement after a crash reuses it and a later, new escalation does not.
pub fn escalation_key(task_id: i64, escalated_at: i64) -> String {
    format!("orch-escalation-{task_id}-{escalated_at}")
}

/// Whether a task at the developer retry limit, not escalated, should be escalated now:
/// only when no person moved it since (a webhook or operator move clears an escalation
/// and the task is then theirs), i.e. its last stage event is by the pipeline itself.
pub fn needs_retry_escalation(
    developer_retries: u32,
    escalated: bool,
    last_event_actor: Option<&str>,
    limits: &Limits,
) -> bool {
    developer_retries >= limits.max_developer_retries
        && !escalated
        && !matches!(last_event_actor, Some("webhook" | "operator"))
}

/// What the branch step does with a task whose branch is not confirmed on Gitea.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchPlan {
    /// Done or cancelled: no branch is needed any more.
    NotNeeded,
    /// Ask Gitea for it (an existing branch counts as created).
    Create,
    /// Leave it for the next pass, and why.
    Wait(String),
}

/// Decides the branch step for a task that lacks its branch. Once Gitea could not be
/// reached this pass (timeout, refused connection, 5xx), the rest wait for the next
/// pass rather than each costing a timeout.
pub fn branch_plan(stage: Stage, gitea_unreachable: Option<&str>) -> BranchPlan {
    if matches!(stage, Stage::Done | Stage::Cancelled) {
        return BranchPlan::NotNeeded;
    }
    match gitea_unreachable {
        Some(why) => BranchPlan::Wait(format!("gitea unreachable earlier this pass: {why}")),
        None => BranchPlan::Create,
    }
}

/// What the pass does with one task, as `--dry-run` and `--json` report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum TaskVerdict {
    /// A guard leaves it alone.
    Skip {
        /// The guard.
        #[serde(flatten)]
        skip: Skip,
    },
    /// The gate was evaluated: what follows.
    Act {
        /// The action.
        #[serde(flatten)]
        action: Action,
    },
    /// Not reached this pass (the per-pass cap, or the pass stopped early).
    Deferred {
        /// Why.
        because: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::gate::{CheckOutcome, CheckResult};
    use crate::core::job::JobStatus;

    const LIMITS: Limits = Limits {
        grace_s: 300,
        max_developer_retries: 3,
        job_max_attempts: 3,
    };

    fn facts() -> GuardFacts {
        GuardFacts {
            stage: Stage::Review,
            stage_entered_at: 0,
            live_job: None,
            developer_retries: 0,
            escalated: false,
        }
    }

    #[test]
    fn guards_apply_in_spec_order() {
        let now = 1_000;
        // Every guard true at once: the first in order wins.
        let all = GuardFacts {
            stage: Stage::Analysis,
            stage_entered_at: now,
            live_job: Some((1, "running")),
            developer_retries: 9,
            escalated: true,
        };
        assert_eq!(
            local_guards(&all, now, &LIMITS).unwrap().guard(),
            "analysis"
        );
        let t = GuardFacts {
            stage: Stage::Done,
            ..all.clone()
        };
        assert_eq!(local_guards(&t, now, &LIMITS).unwrap().guard(), "no-gate");
        let t = GuardFacts {
            stage: Stage::Review,
            ..all.clone()
        };
        assert_eq!(local_guards(&t, now, &LIMITS).unwrap().guard(), "job-live");
        let t = GuardFacts {
            live_job: None,
            ..t
        };
        assert_eq!(local_guards(&t, now, &LIMITS).unwrap().guard(), "grace");
        let t = GuardFacts {
            stage_entered_at: now - 300,
            ..t
        };
        assert_eq!(local_guards(&t, now, &LIMITS).unwrap().guard(), "escalated");
        let t = GuardFacts {
            developer_retries: 0,
            ..t
        };
        assert_eq!(local_guards(&t, now, &LIMITS).unwrap().guard(), "escalated");
        let t = GuardFacts {
            escalated: false,
            ..t
        };
        assert_eq!(local_guards(&t, now, &LIMITS), None);
    }

    /// The check that words no reason lets through exactly what `local_guards` does,
    /// over every stage and each guard's boundary.
    #[test]
    fn passing_the_guards_agrees_with_their_verdict() {
        let mut seen = [false; 2];
        for stage in Stage::ALL {
            for entered in [699, 700, 701] {
                for live_job in [None, Some((7, "queued"))] {
                    for developer_retries in [0, LIMITS.max_developer_retries - 1, 9] {
                        for escalated in [false, true] {
                            let t = GuardFacts {
                                stage,
                                stage_entered_at: entered,
                                live_job,
                                developer_retries,
                                escalated,
                            };
                            let passes = passes_local_guards(&t, 1_000, &LIMITS);
                            assert_eq!(passes, local_guards(&t, 1_000, &LIMITS).is_none(), "{t:?}");
                            seen[usize::from(passes)] = true;
                        }
                    }
                }
            }
        }
        assert_eq!(seen, [true, true], "both answers were met");
    }

    /// Only a task past the guards at a stage whose gate reads the PR has its repo's
    /// open pulls read.
    #[test]
    fn which_tasks_read_open_pulls() {
        let at = |stage, live_job, escalated| GuardFacts {
            stage,
            stage_entered_at: 0,
            live_job,
            developer_retries: 0,
            escalated,
        };
        for (facts, reads) in [
            (at(Stage::Development, None, false), true),
            (at(Stage::DeployStaging, None, false), true),
            (at(Stage::Deploy, None, false), true),
            (at(Stage::Review, None, false), false),
            (at(Stage::Analysis, None, false), false),
            (at(Stage::Done, None, false), false),
            (at(Stage::Development, Some((1, "running")), false), false),
            (at(Stage::Development, None, true), false),
        ] {
            assert_eq!(reads_open_pulls(&facts, 1_000, &LIMITS), reads, "{facts:?}");
        }
        let fresh = GuardFacts {
            stage_entered_at: 900,
            ..at(Stage::Development, None, false)
        };
        assert!(!reads_open_pulls(&fresh, 1_000, &LIMITS), "in its grace");
    }

    #[test]
    fn after_a_page_the_last_ends_the_floor_stops_else_next() {
        for (cursor, remaining, want) in [
            (None, Some(0), AfterPage::Last),
            (None, None, AfterPage::Last),
            (Some("c"), Some(9), AfterPage::BelowFloor),
            (Some("c"), Some(10), AfterPage::Next("c")),
            (Some("c"), None, AfterPage::Next("c")),
        ] {
            assert_eq!(
                after_page(cursor, remaining, 10),
                want,
                "{cursor:?} {remaining:?}"
            );
        }
    }

    #[test]
    fn grace_boundary() {
        let t = GuardFacts {
            stage_entered_at: 700,
            ..facts()
        };
        assert!(matches!(
            local_guards(&t, 999, &LIMITS),
            Some(Skip::Grace(_))
        ));
        assert_eq!(local_guards(&t, 1_000, &LIMITS), None);
    }

    #[test]
    fn blocked_guard_skips_on_blocked_and_on_doubt() {
        assert_eq!(
            blocked_guard(&WorkItemState::Clear("In Review".into())),
            None
        );
        assert!(blocked_guard(&WorkItemState::Blocked("Blocked".into())).is_some());
        assert!(blocked_guard(&WorkItemState::Unknown("HTTP 500".into())).is_some());
    }

    fn wait(evidence: bool) -> GateDecision {
        GateDecision::Wait {
            failed_on_evidence: evidence,
            checks: vec![CheckOutcome {
                check: "check_ci_green",
                result: if evidence {
                    CheckResult::Fail("CI failed".into())
                } else {
                    CheckResult::Unknown("pending".into())
                },
            }],
        }
    }

    fn job(status: JobStatus, attempt: u32) -> Option<(i64, JobOutcome)> {
        Some((
            7,
            JobOutcome {
                status,
                attempt,
                exit_code: Some(0),
            },
        ))
    }

    #[test]
    fn decisions() {
        let adv = GateDecision::Advance {
            to: Stage::DeployStaging,
            checks: vec![],
        };
        assert_eq!(
            decide(Stage::Review, &adv, None, 0, &LIMITS),
            Action::Advance {
                to: Stage::DeployStaging
            }
        );
        assert_eq!(
            decide(
                Stage::Review,
                &wait(true),
                job(JobStatus::Failed, 1),
                0,
                &LIMITS
            ),
            Action::Rerun {
                job_id: 7,
                attempt: 2,
                because: "check_ci_green: CI failed".into()
            }
        );
        assert!(matches!(
            decide(
                Stage::Review,
                &wait(true),
                job(JobStatus::Succeeded, 3),
                0,
                &LIMITS
            ),
            Action::Escalate { .. }
        ));
        assert!(matches!(
            decide(
                Stage::Review,
                &wait(true),
                job(JobStatus::Running, 1),
                0,
                &LIMITS
            ),
            Action::Wait { .. }
        ));
        assert!(matches!(
            decide(Stage::Review, &wait(true), None, 0, &LIMITS),
            Action::Wait { .. }
        ));
        // Unknowns never re-run a job, however many attempts.
        assert!(matches!(
            decide(
                Stage::Review,
                &wait(false),
                job(JobStatus::Failed, 1),
                0,
                &LIMITS
            ),
            Action::Wait { .. }
        ));
        assert!(matches!(
            decide(Stage::Review, &GateDecision::NoGate, None, 0, &LIMITS),
            Action::Wait { .. }
        ));
    }

    #[test]
    fn a_failed_deploy_waiting_on_the_merge_fact_never_reruns_nor_escalates() {
        use crate::core::artefact::DeployStatus;
        use crate::core::gate::{evaluate, GateInputs};
        let inputs = GateInputs {
            deploy: Ok(DeployStatus::Failed),
            pr: Err("connection refused".into()),
            recorded_pr: Some(4),
            ..GateInputs::empty()
        };
        let d = evaluate(Stage::Deploy, &inputs);
        // However many attempts the deployer had, at and past the cap.
        for attempt in [1, LIMITS.job_max_attempts, LIMITS.job_max_attempts + 1] {
            match decide(
                Stage::Deploy,
                &d,
                job(JobStatus::Succeeded, attempt),
                0,
                &LIMITS,
            ) {
                Action::Wait { because } => assert!(
                    because.contains("whether PR #4 was merged is unknown"),
                    "{because}"
                ),
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_third_review_rollback_escalates() {
        let rb = GateDecision::Rollback {
            to: Stage::Development,
            because: "check_review_requests_changes",
            checks: vec![],
        };
        for (retries, escalate) in [(0, false), (1, false), (2, true)] {
            assert_eq!(
                decide(Stage::Review, &rb, None, retries, &LIMITS),
                Action::Rollback {
                    to: Stage::Development,
                    because: "check_review_requests_changes".into(),
                    escalate
                }
            );
        }
        // Staging and deploy rollbacks do not count developer retries.
        let rb = GateDecision::Rollback {
            to: Stage::Development,
            because: "check_staging_failed",
            checks: vec![],
        };
        assert!(matches!(
            decide(Stage::DeployStaging, &rb, None, 2, &LIMITS),
            Action::Rollback {
                escalate: false,
                ..
            }
        ));
    }

    #[test]
    fn listed_states_for_the_blocked_guard() {
        let mut m = StateMeanings::default();
        m.blocked.names = vec!["Blocked".into(), "Needs Input".into()];
        m.approved.names = vec!["Approved".into()];
        let seen = |n: &str, g: &str| Listed::Seen {
            name: n.into(),
            group: g.into(),
        };
        assert_eq!(
            plane_state_of(&m, &seen("needs input", "started")),
            WorkItemState::Blocked("needs input".into())
        );
        assert_eq!(
            plane_state_of(&m, &seen("In Review", "started")),
            WorkItemState::Clear("In Review".into())
        );
        for l in [
            Listed::UnknownState("s9".into()),
            Listed::NotSeen { complete: true },
            Listed::NotSeen { complete: false },
            Listed::Failed("HTTP 500".into()),
        ] {
            assert!(
                matches!(plane_state_of(&m, &l), WorkItemState::Unknown(_)),
                "{l:?}"
            );
        }
        // A state with two meanings at one level is doubt, not clear.
        m.approved.names.push("Blocked".into());
        assert!(matches!(
            plane_state_of(&m, &seen("Blocked", "started")),
            WorkItemState::Unknown(_)
        ));
    }

    #[test]
    fn rate_floor() {
        assert!(!below_floor(None, 10));
        assert!(!below_floor(Some(10), 10));
        assert!(below_floor(Some(9), 10));
        assert!(below_floor(Some(0), 1));
        assert!(!below_floor(Some(0), 0));
    }

    #[test]
    fn escalation_keys_and_retry_escalation() {
        assert_eq!(escalation_key(7, 100), "orch-escalation-7-100");
        assert_ne!(escalation_key(7, 100), escalation_key(7, 101));
        let l = LIMITS;
        assert!(needs_retry_escalation(3, false, Some("reconcile"), &l));
        assert!(needs_retry_escalation(4, false, Some("run-job"), &l));
        assert!(needs_retry_escalation(3, false, None, &l));
        assert!(!needs_retry_escalation(2, false, Some("run-job"), &l));
        assert!(!needs_retry_escalation(3, true, Some("run-job"), &l));
        assert!(!needs_retry_escalation(3, false, Some("webhook"), &l));
        assert!(!needs_retry_escalation(3, false, Some("operator"), &l));
    }

    #[test]
    fn the_branch_step_skips_finished_tasks_and_waits_after_gitea_failed() {
        for stage in Stage::ALL {
            let finished = matches!(stage, Stage::Done | Stage::Cancelled);
            let plan = branch_plan(stage, None);
            assert_eq!(plan == BranchPlan::NotNeeded, finished, "{stage}");
            assert_eq!(plan == BranchPlan::Create, !finished, "{stage}");
            let later = branch_plan(stage, Some("connection refused"));
            assert_eq!(matches!(later, BranchPlan::Wait(_)), !finished, "{stage}");
        }
        assert_eq!(
            branch_plan(Stage::Analysis, Some("timeout")),
            BranchPlan::Wait("gitea unreachable earlier this pass: timeout".into())
        );
    }

    fn progress(rate_limited: bool, handled: usize) -> Progress {
        Progress {
            rate_limited,
            handled,
            cap: 2,
        }
    }

    #[test]
    fn judge_orders_guards_rate_limit_cap_then_listing() {
        let now = 1_000;
        let mut m = StateMeanings::default();
        m.blocked.names = vec!["Blocked".into()];
        let clear = Listed::Seen {
            name: "In Review".into(),
            group: "started".into(),
        };
        let blocked = Listed::Seen {
            name: "Blocked".into(),
            group: "started".into(),
        };
        let stopped = Listed::NotSeen { complete: false };
        let grace = GuardFacts {
            stage_entered_at: now,
            ..facts()
        };
        // (facts, progress, listed, meanings known, expected)
        let cases: Vec<(GuardFacts, Progress, Option<&Listed>, bool, &str)> = vec![
            // A local guard wins over the rate limit, the cap and the listing.
            (grace, progress(true, 2), Some(&blocked), true, "skip grace"),
            // The rate limit wins over the cap and the listing.
            (
                facts(),
                progress(true, 2),
                Some(&blocked),
                true,
                "deferred plane rate limited this pass",
            ),
            // The cap wins over the listing; `handled == cap` is reached.
            (
                facts(),
                progress(false, 2),
                Some(&blocked),
                true,
                "deferred the per-pass cap ORCH_RECONCILE_MAX_TASKS=2 was reached",
            ),
            (facts(), progress(false, 1), Some(&clear), true, "evaluate"),
            // An unfinished listing defers; a blocked state or doubt skips.
            (
                facts(),
                progress(false, 0),
                Some(&stopped),
                true,
                "deferred the project's listing stopped early",
            ),
            (
                facts(),
                progress(false, 0),
                Some(&stopped),
                false,
                "deferred the project's listing stopped early",
            ),
            (
                facts(),
                progress(false, 0),
                Some(&blocked),
                true,
                "skip blocked",
            ),
            (
                facts(),
                progress(false, 0),
                Some(&clear),
                false,
                "skip blocked",
            ),
            // The blocked guard off: straight to the gate.
            (facts(), progress(false, 0), None, false, "evaluate"),
        ];
        for (i, (t, p, listed, known, want)) in cases.into_iter().enumerate() {
            let got = match judge(&t, now, &LIMITS, p, listed, known.then_some(&m)) {
                Judgement::Skip(skip) => format!("skip {}", skip.guard()),
                Judgement::Deferred(why) => format!("deferred {why}"),
                Judgement::Evaluate => "evaluate".into(),
            };
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn a_task_of_a_project_outside_the_pipeline_is_skipped_as_doubt() {
        let l = listed(None, "wi-1");
        match judge(&facts(), 1_000, &LIMITS, progress(false, 0), Some(&l), None) {
            Judgement::Skip(Skip::Blocked(d)) => assert_eq!(
                d,
                "could not tell the work item's state: \
                 Failed(\"the task's project is not in the pipeline\")"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listed_prefers_a_seen_item_then_the_failure_then_completeness() {
        let seen = Listed::Seen {
            name: "Todo".into(),
            group: "unstarted".into(),
        };
        let mut l = Listing::default();
        l.items.insert("wi-1".into(), seen.clone());
        assert_eq!(listed(Some(&l), "wi-1"), seen);
        // A UUID is held as its bits: found by its spelling, and only by it.
        let uuid = "0a1b2c3d-0000-4000-8000-00000000000f";
        l.items.insert(uuid.into(), seen.clone());
        assert_eq!(listed(Some(&l), uuid), seen);
        assert_eq!(l.items.len(), 2);
        assert_eq!(
            listed(Some(&l), &uuid.to_uppercase()),
            Listed::NotSeen { complete: false }
        );
        assert_eq!(
            uuid_bits(uuid),
            Some(0x0a1b_2c3d_0000_4000_8000_0000_0000_000f)
        );
        for not in [
            "0a1b2c3d-0000-4000-8000-00000000000",
            "0a1b2c3d+0000-4000-8000-00000000000f",
        ] {
            assert_eq!(uuid_bits(not), None, "{not}");
        }
        assert_eq!(
            listed(Some(&l), "wi-2"),
            Listed::NotSeen { complete: false }
        );
        l.complete = true;
        assert_eq!(listed(Some(&l), "wi-2"), Listed::NotSeen { complete: true });
        l.failed = Some("HTTP 500".into());
        assert_eq!(listed(Some(&l), "wi-1"), seen);
        assert_eq!(listed(Some(&l), "wi-2"), Listed::Failed("HTTP 500".into()));
        assert!(matches!(listed(None, "wi-1"), Listed::Failed(_)));
    }

    #[test]
    fn the_cursor_orders_the_tail_first_and_is_kept_only_when_capped() {
        let mut ids = vec![1, 2, 3, 4, 5];
        ids.sort_by_key(|id| fair_order_key(*id, 3));
        assert_eq!(ids, vec![4, 5, 1, 2, 3]);
        ids.sort_by_key(|id| fair_order_key(*id, 0));
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(next_cursor(true, Some(4)), Some(4));
        assert_eq!(next_cursor(true, None), None);
        assert_eq!(next_cursor(false, Some(4)), None);
    }

    #[test]
    fn projects_are_listed_when_replaying_or_for_the_blocked_guard() {
        for (replay, skip_blocked, passes, want) in [
            (true, false, false, true),
            (false, true, true, true),
            (false, true, false, false),
            (false, false, true, false),
        ] {
            assert_eq!(needs_listing(replay, skip_blocked, passes), want);
        }
    }

    #[test]
    fn replays_follow_the_webhook_decision_skip_rejections_and_stop_at_the_cap() {
        let mut m = StateMeanings::default();
        m.blocked.names = vec!["Blocked".into()];
        m.approved.names = vec!["Approved".into()];
        assert_eq!(replayable_meaning(&m, "Blocked", "started"), None);
        assert_eq!(
            replayable_meaning(&m, "Approved", "started"),
            Some(Meaning::Approved)
        );
        let at = |stage: Stage| intake::TaskFacts {
            key: "T-1".into(),
            stage,
            has_analyst_job: true,
            has_live_analyst_job: false,
        };
        assert_eq!(
            replay(
                Meaning::Approved,
                "Approved",
                Some(&at(Stage::Analysis)),
                0,
                1
            ),
            Replay::Move {
                from: Stage::Analysis,
                to: Stage::Development
            }
        );
        assert_eq!(
            replay(
                Meaning::Approved,
                "Approved",
                Some(&at(Stage::Analysis)),
                1,
                1
            ),
            Replay::Capped
        );
        for stage in [Stage::Done, Stage::Cancelled] {
            assert_eq!(
                replay(Meaning::Cancel, "Cancelled", Some(&at(stage)), 0, 1),
                Replay::Ignore
            );
        }
        // Nothing to do is not capped.
        assert_eq!(
            replay(
                Meaning::Approved,
                "Approved",
                Some(&at(Stage::Development)),
                1,
                1
            ),
            Replay::Ignore
        );
        assert_eq!(
            replay(
                Meaning::Rejected,
                "Rejected",
                Some(&at(Stage::Analysis)),
                0,
                1
            ),
            Replay::Ignore
        );
    }

    #[test]
    fn the_pre_filter_agrees_with_the_replay_decision() {
        let meanings = [
            Meaning::Start,
            Meaning::Approved,
            Meaning::Rejected,
            Meaning::Cancel,
            Meaning::Blocked,
        ];
        let mut tasks = vec![None];
        for stage in Stage::ALL {
            for (has_analyst_job, has_live_analyst_job) in
                [(false, false), (true, false), (true, true)]
            {
                tasks.push(Some(intake::TaskFacts {
                    key: "T-1".into(),
                    stage,
                    has_analyst_job,
                    has_live_analyst_job,
                }));
            }
        }
        let mut acting = 0;
        for meaning in meanings {
            for task in &tasks {
                let decided = replay(meaning, "State", task.as_ref(), 0, usize::MAX);
                let mut reads = 0;
                let asked = would_replay(meaning, task.as_ref().map(|t| t.stage), || {
                    reads += 1;
                    Ok::<_, ()>(task.as_ref().is_some_and(|t| t.has_analyst_job))
                })
                .unwrap();
                assert_eq!(asked, decided != Replay::Ignore, "{meaning:?} {task:?}");
                // The jobs are read only for a start at analysis.
                let reads_jobs = meaning == Meaning::Start
                    && task.as_ref().is_some_and(|t| t.stage == Stage::Analysis);
                assert_eq!(reads, usize::from(reads_jobs), "{meaning:?} {task:?}");
                // Capped wherever it would act.
                let capped = replay(meaning, "State", task.as_ref(), 1, 1);
                assert_eq!(asked, capped == Replay::Capped, "{meaning:?} {task:?}");
                acting += usize::from(asked);
            }
        }
        // Start without a task or before the analyst job, approval and cancellation.
        assert!(
            acting > 5,
            "the table reaches the acting branches: {acting}"
        );
    }

    #[test]
    fn verdicts_serialise_flat() {
        let v = TaskVerdict::Skip {
            skip: Skip::Escalated("x".into()),
        };
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"verdict": "skip", "guard": "escalated", "detail": "x"})
        );
        let v = TaskVerdict::Act {
            action: Action::Advance { to: Stage::Review },
        };
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"verdict": "act", "action": "advance", "to": "review"})
        );
    }
}
