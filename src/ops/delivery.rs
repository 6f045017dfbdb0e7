//! Acting on a stored Plane delivery, exactly once: what `webhook-handle` does after it
//! answers, and what `reconcile` calls to replay deliveries left pending (SPEC §4).

use anyhow::{Context as _, Result};

use crate::adapters::db::{
    AlreadyRecorded, Created, Db, MoveError, Moved, Recorder, Superseded, TaskStart, PENDING,
};
use crate::core::intake::{
    self, DeliveryOutcome, Freshness, Intake, OutcomeKind, PlaneState, SeenUpdate, StateChange,
    StateChangeDecision, TaskFacts,
};
use crate::core::plane::Project;
use crate::core::stage::{Actor, Agent, Stage};
use crate::core::task::{NewTask, Task};
use crate::ops::moves::{self, MoveRequest};
use crate::ops::pass::PassContext;

/// Acts on a stored delivery and records its outcome; what `webhook-handle` does after
/// answering and what `reconcile` calls to replay pending deliveries.
///
/// Exactly once: a delivery's effects in the database and its outcome are committed in
/// one transaction (the move and its next job, the re-queued analyst job, the task and
/// its analyst job, or just the outcome when there is nothing to do), so a crash leaves
/// either nothing (the replay does it all) or everything (the replay finds the outcome
/// and returns it). Two processes acting on the same delivery at once cannot both
/// commit: the second finds the outcome recorded inside its transaction and rolls back.
/// A start's branch is the step after the commit (a remote call never runs inside a
/// write transaction); when Gitea is down it is left for `reconcile`. Counts an attempt
/// each time it acts.
///
/// A stale delivery (a strictly newer update of its work item is known, from any
/// stored delivery or listing) acts on nothing and is recorded `stale` with both
/// times: checked before acting, and again inside the write's transaction (a newer
/// delivery stored meanwhile rolls the write back, and the delivery is stale).
///
/// # Errors
/// When acting fails (Plane unreachable while resolving the state, a write failing):
/// the delivery stays `pending` with the error recorded, and nothing of it was written.
pub fn process_delivery(
    ctx: &PassContext,
    db: &mut Db,
    delivery_row_id: i64,
) -> Result<DeliveryOutcome> {
    let row = db
        .delivery(delivery_row_id)?
        .with_context(|| format!("no delivery {delivery_row_id}"))?;
    if row.outcome != PENDING {
        return Ok(recorded(&row.outcome, row.detail.as_deref()));
    }
    db.count_delivery_attempt(row.id)?;
    match act(ctx, db, row.id, &row.body) {
        Ok(outcome) => Ok(outcome),
        Err(e) if e.downcast_ref::<Superseded>().is_some() => {
            let newest = &e.downcast_ref::<Superseded>().expect("matched").newest;
            let outcome = stale(&row.body, newest);
            match db.record_outcome(row.id, &outcome, ctx.now_secs()) {
                Ok(()) => Ok(outcome),
                Err(e) if e.downcast_ref::<AlreadyRecorded>().is_some() => {
                    let row = db.delivery(row.id)?.expect("rows are never deleted");
                    Ok(recorded(&row.outcome, row.detail.as_deref()))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) if e.downcast_ref::<AlreadyRecorded>().is_some() => {
            // Another process (the receiver or reconcile) recorded it first; all this
            // one wrote was rolled back with the outcome.
            let row = db.delivery(row.id)?.expect("rows are never deleted");
            Ok(recorded(&row.outcome, row.detail.as_deref()))
        }
        Err(e) => {
            let error = format!("{e:#}");
            if let Err(e2) = db.fail_delivery(row.id, &error) {
                log::warn!("delivery {}: could not record the error: {e2:#}", row.id);
            }
            let tries = row.attempts + 1;
            // Only a failure that trying again cannot mend brings the give-up nearer: an
            // outage of Plane or Gitea, a busy database or an undecided round must not
            // lose a real delivery after a few passes. Such a delivery keeps being
            // replayed; fewest tries first, it starves nothing.
            if tries >= i64::from(ctx.config.settings.delivery_max_attempts.0) && !transient(&e) {
                give_up(ctx, db, &row, tries, &error)?;
            }
            Err(e)
        }
    }
}

/// Whether acting failed for a reason that passes by itself: a remote unreachable,
/// timed out, 5xx or rate-limited; the database busy or refusing a write; a round that
/// Gitea could not decide yet.
fn transient(e: &anyhow::Error) -> bool {
    use crate::adapters::http::HttpError;
    crate::ops::pass::is_database_failure(e)
        || e.chain().any(|c| {
            matches!(
                c.downcast_ref::<HttpError>(),
                Some(HttpError::Retryable(_) | HttpError::RateLimited { .. })
            ) || c
                .downcast_ref::<crate::ops::moves::RoundUndecided>()
                .is_some()
        })
}

/// Gives up a delivery whose acting failed on its last allowed try: recorded `given_up`
/// with the last error (never replayed again, so it cannot starve newer ones) and
/// announced once (deduplicated by the delivery's row id).
fn give_up(
    ctx: &PassContext,
    db: &Db,
    row: &crate::adapters::db::DeliveryRow,
    tries: i64,
    error: &str,
) -> Result<()> {
    let detail = format!("acting failed on all {tries} tries; last error: {error}");
    if !db.give_up_delivery(row.id, &detail, error, ctx.now_secs())? {
        return Ok(());
    }
    let shown = row.delivery_id.as_deref().unwrap_or("-");
    log::error!(
        "delivery {} (delivery id {shown}) given up: {detail}",
        row.id
    );
    let message = format!(
        "orch: webhook delivery {} (X-Plane-Delivery {shown}) given up after {tries} tries; last error: {error}; it is not replayed again: \
         do by hand what it asked (orch task add / orch task move).",
        row.id
    );
    crate::ops::notify::announce(
        ctx,
        db,
        &format!("delivery-given-up:{}", row.id),
        "delivery_given_up",
        None,
        &message,
    )?;
    Ok(())
}

/// The `stale` outcome of a stored body against the newest update seen.
fn stale(body: &[u8], newest: &SeenUpdate) -> DeliveryOutcome {
    let delivered = intake::parse_envelope(body)
        .map(|e| match e.updated_at() {
            intake::WorkItemTime::At { text, .. } => text,
            _ => "?".into(),
        })
        .unwrap_or_else(|_| "?".into());
    intake::stale_outcome(
        &newest.work_item_id,
        &delivered,
        &newest.text,
        &newest.source,
    )
}

/// The delivery's work item update and whether it is current; logs an update whose
/// time cannot be told (it is acted on: see `core::intake::freshness`).
fn freshness(db: &Db, id: i64, body: &[u8]) -> Result<(Option<SeenUpdate>, Freshness)> {
    let Ok(envelope) = intake::parse_envelope(body) else {
        return Ok((None, Freshness::Current));
    };
    let Some(work_item) = envelope.work_item_id() else {
        return Ok((None, Freshness::Current));
    };
    let newest = db.newest_update(work_item)?;
    let fresh = intake::freshness(&envelope.updated_at(), newest.as_ref());
    if let Freshness::Unknown(why) = &fresh {
        log::warn!(
            "delivery {id}: cannot tell whether work item {work_item} has a newer update ({why}): acting on it as current"
        );
    }
    Ok((envelope.seen_update(&format!("delivery {id}")), fresh))
}

fn recorded(outcome: &str, detail: Option<&str>) -> DeliveryOutcome {
    DeliveryOutcome::new(
        OutcomeKind::parse(outcome).unwrap_or(OutcomeKind::NoAction),
        detail.unwrap_or_default(),
    )
}

/// What a delivery asks for, once its state is resolved.
enum Plan<'a> {
    /// Nothing: the outcome says why.
    Nothing(DeliveryOutcome),
    /// Start the work item's task.
    Start {
        project: &'a Project,
        change: StateChange,
        reason: String,
    },
    /// Move the task.
    Move {
        task: Task,
        from: Stage,
        to: Stage,
        reason: String,
    },
    /// Queue the analyst again (the analysis was rejected).
    RequeueAnalysis { task: Task },
}

/// Acts on one stored body and records the outcome of delivery `id` with its effects.
fn act(ctx: &PassContext, db: &mut Db, id: i64, body: &[u8]) -> Result<DeliveryOutcome> {
    let now = ctx.now_secs();
    let (update, fresh) = freshness(db, id, body)?;
    if let Freshness::Stale {
        delivered,
        newest,
        source,
    } = fresh
    {
        let work_item = update.as_ref().map_or("?", |u| u.work_item_id.as_str());
        let outcome = intake::stale_outcome(work_item, &delivered, &newest, &source);
        db.record_outcome(id, &outcome, now)?;
        return Ok(outcome);
    }
    let update = update.as_ref();
    match plan(ctx, db, body)? {
        Plan::Nothing(outcome) => {
            db.record_outcome(id, &outcome, now)?;
            Ok(outcome)
        }
        Plan::Start {
            project,
            change,
            reason,
        } => start(ctx, db, id, update, project, &change, &reason),
        Plan::Move {
            task,
            from,
            to,
            reason,
        } => {
            let describe = |m: &Moved| moved_outcome(&task, from, to, m);
            let record = Recorder::new(id, now, &describe).guarded(update);
            let req = MoveRequest::new(&task, to, &reason, Actor::Webhook).recorded(Some(&record));
            match moves::move_task(ctx, db, &req) {
                Ok(moved) => Ok(describe(&moved)),
                Err(e) => match e.downcast_ref::<MoveError>() {
                    Some(MoveError::Stale { actual, .. }) => {
                        let outcome = DeliveryOutcome::no_action(format!(
                            "task {} moved to {actual} meanwhile",
                            task.key
                        ));
                        db.record_outcome(id, &outcome, now)?;
                        Ok(outcome)
                    }
                    _ => Err(e),
                },
            }
        }
        Plan::RequeueAnalysis { task } => {
            let describe = |job: &Created| match job {
                Created::New(j) => DeliveryOutcome::new(
                    OutcomeKind::Rejected,
                    format!(
                        "task {} stays at analysis, analyst job {j} queued again",
                        task.key
                    ),
                ),
                Created::Existing(j) => DeliveryOutcome::no_action(format!(
                    "task {} already has an analyst job queued or running (job {j})",
                    task.key
                )),
            };
            let record = Recorder::new(id, now, &describe).guarded(update);
            let job = db.enqueue_job_recorded(
                task.id,
                Agent::Analyst,
                Stage::Analysis,
                now,
                Some(&record),
            )?;
            if let Created::New(j) = job {
                log::info!(
                    "task {}: analysis rejected in Plane: analyst job {j} queued again",
                    task.key
                );
            }
            Ok(describe(&job))
        }
    }
}

fn moved_outcome(task: &Task, from: Stage, to: Stage, moved: &Moved) -> DeliveryOutcome {
    let kind = if to == Stage::Cancelled {
        OutcomeKind::Cancelled
    } else {
        OutcomeKind::Approved
    };
    let job = moved
        .enqueued_job
        .map(|j| format!(", {} job {j} queued", to.agent().map_or("", Agent::as_str)))
        .unwrap_or_default();
    DeliveryOutcome::new(kind, format!("task {} {from} -> {to}{job}", task.key))
}

/// Resolves a stored body to what it asks for. Writes only the state cache.
fn plan<'a>(ctx: &'a PassContext, db: &mut Db, body: &[u8]) -> Result<Plan<'a>> {
    let nothing = |why: String| Ok(Plan::Nothing(DeliveryOutcome::no_action(why)));
    let envelope = match intake::parse_envelope(body) {
        Ok(e) => e,
        Err(r) => return nothing(format!("stored body is not a delivery: {}", r.reason)),
    };
    let change = match intake::classify(&envelope) {
        Intake::Ignore(reason) => return nothing(reason),
        Intake::StateChange(c) => c,
    };
    let Some(project) = ctx.config.pipeline.project_by_plane_id(&change.project_id) else {
        return nothing(format!(
            "project {} is not in the pipeline",
            change.project_id
        ));
    };
    let Some(state) = resolve_state(ctx, db, project, &change)? else {
        return nothing(format!(
            "state {} is not a state of project {} (not even after refreshing from Plane)",
            change.new_state_id, project.name
        ));
    };
    let meaning = match intake::meaning_of(&project.states, &state.name, &state.group) {
        Ok(m) => m,
        Err(both) => {
            let names: Vec<&str> = both.iter().map(|m| m.as_str()).collect();
            return nothing(format!(
                "state {:?} of project {} matches {} (fix projects[].states; config check reports it)",
                state.name,
                project.name,
                names.join(" and ")
            ));
        }
    };
    let task = db.task_by_work_item(&change.work_item_id)?;
    let facts = match &task {
        Some(t) => {
            let (has_analyst_job, has_live_analyst_job) = db.analyst_jobs(t.id)?;
            Some(TaskFacts {
                key: t.key.clone(),
                stage: t.stage,
                has_analyst_job,
                has_live_analyst_job,
            })
        }
        None => None,
    };
    let decision = intake::decide(meaning, &state.name, change.legacy, facts.as_ref());
    let reason = format!("work item moved to {:?} in Plane", state.name);
    Ok(match decision {
        StateChangeDecision::NoAction(why) => Plan::Nothing(DeliveryOutcome::no_action(why)),
        StateChangeDecision::Start => Plan::Start {
            project,
            change,
            reason,
        },
        StateChangeDecision::Move { from, to } => Plan::Move {
            task: task.expect("moves are decided for existing tasks"),
            from,
            to,
            reason,
        },
        StateChangeDecision::RequeueAnalysis => Plan::RequeueAnalysis {
            task: task.expect("requeues are decided for existing tasks"),
        },
    })
}

/// Starts the work item's task: the task, its analyst job and the delivery's outcome in
/// one transaction, then the branch step.
fn start(
    ctx: &PassContext,
    db: &mut Db,
    id: i64,
    update: Option<&SeenUpdate>,
    project: &Project,
    change: &StateChange,
    reason: &str,
) -> Result<DeliveryOutcome> {
    let key = intake::task_key(
        project.plane_identifier.as_deref(),
        &project.name,
        change.sequence_id,
        &change.work_item_id,
    );
    let new = NewTask {
        project: project.name.clone(),
        work_item_id: change.work_item_id.clone(),
        key: key.clone(),
        title: change.title.clone(),
        repo: project.repo.clone(),
        branch: crate::core::branch::branch_name(&key, &change.title),
        priority: change.priority,
    };
    if let Some(w) = &change.priority_warning {
        log::warn!("{w}");
    }
    let describe = |s: &TaskStart| {
        DeliveryOutcome::new(
            OutcomeKind::Started,
            format!(
                "task {key} {}, {}",
                if s.created {
                    "created"
                } else {
                    "already existed"
                },
                s.enqueued_job
                    .map_or("analyst job already there".to_string(), |j| format!(
                        "analyst job {j} queued"
                    ))
            ),
        )
    };
    let record = Recorder::new(id, ctx.now_secs(), &describe).guarded(update);
    let started = moves::start_task(ctx, db, &new, Actor::Webhook, reason, Some(&record))?;
    let task = db.task(started.task_id)?.expect("just started");
    // The recorded outcome is what the transaction did; the branch step came after it
    // and is added to the line this command prints and logs.
    let recorded = describe(&TaskStart {
        task_id: started.task_id,
        created: started.created,
        enqueued_job: started.enqueued_job,
    });
    Ok(DeliveryOutcome::new(
        recorded.kind,
        format!(
            "{}, branch {} {}",
            recorded.detail,
            task.branch,
            started.branch.describe()
        ),
    ))
}

/// Resolves the new state within the work item's own project: from the delivery when
/// it describes that very state, else from the project's cache, else from the States
/// API (refreshing the project's cache). `None`: Plane does not know the id either.
fn resolve_state(
    ctx: &PassContext,
    db: &mut Db,
    project: &Project,
    change: &StateChange,
) -> Result<Option<PlaneState>> {
    let pid = &project.plane_project_id;
    let now = ctx.now_secs();
    if let Some(s) = &change.payload_state {
        db.upsert_plane_state(pid, s, now)?;
        return Ok(Some(s.clone()));
    }
    if let Some(s) = db.plane_state(pid, &change.new_state_id)? {
        return Ok(Some(s));
    }
    let plane = ctx
        .require_plane()
        .context("state id not cached: the States API is needed")?;
    let states: Vec<PlaneState> = plane
        .list_states(pid)
        .with_context(|| format!("refreshing the states of project {}", project.name))?;
    log::info!(
        "project {}: cached {} plane states",
        project.name,
        states.len()
    );
    db.replace_plane_states(pid, &states, now)?;
    db.plane_state(pid, &change.new_state_id)
}
