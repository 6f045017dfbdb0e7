//! `orch webhook-handle`: takes one Plane webhook delivery, stores it, answers, acts.
//!
//! Order matters (SPEC §4): verify the raw bytes, store the row (committed), answer 200,
//! then act. Plane counts any answer as delivered and retries only on network errors,
//! so when the row cannot be stored nothing is answered at all (the sender sees a
//! network error and retries). A failure while acting leaves the row `pending` with
//! its error; [`process_delivery`] is what `reconcile` calls to replay it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use crate::adapters::db::{Created, Db, MoveError, Moved};
use crate::adapters::db_deliveries::{AlreadyRecorded, NewDelivery, Recorder, Stored, PENDING};
use crate::adapters::db_start::TaskStart;
use crate::adapters::http_request::{self, Head, Rejection, MAX_BODY};
use crate::adapters::plane::PlaneClient;
use crate::config::Project;
use crate::core::intake::{
    self, Decision, Intake, Outcome, OutcomeKind, PlaneState, StateChange, TaskFacts,
};
use crate::core::stage::{Actor, Agent, Stage};
use crate::core::task::{NewTask, Task};
use crate::exit::ExitStatus;
use crate::ops::moves;
use crate::ops::pass::Context;

/// Take one Plane webhook delivery: verify, store, answer, act
///
/// `--stdio` reads one HTTP/1.1 request on stdin and writes the response on stdout
/// (what `orch-webhook.socket` with Accept=yes hands over); `--body FILE --header
/// 'Name: value'...` replays a delivery by hand with the same checks and storage and
/// prints the outcome as one line. Needs ORCH_PLANE_WEBHOOK_SECRET. Statuses: 405 not
/// POST, 413 body over 1 MiB, 401 bad or missing X-Plane-Signature, 400 malformed, 422
/// not a Plane delivery, 408 too slow, 200 stored (or a duplicate). Exit codes: 0
/// stored and acted on, or a duplicate; 1 input rejected; 2 configuration or internal
/// error, including a stored delivery whose action failed (it stays pending for
/// reconcile).
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["stdio", "body"])))]
pub struct WebhookHandleArgs {
    /// Read one HTTP request on stdin, answer on stdout (systemd socket, Accept=yes)
    #[arg(long)]
    pub stdio: bool,
    /// Replay the delivery whose raw body is in FILE
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// A request header for --body, e.g. 'X-Plane-Signature: 3f1a...' (repeatable)
    #[arg(long = "header", value_name = "NAME: VALUE", requires = "body")]
    pub headers: Vec<String>,
}

/// What handling one delivery ended with, before acting.
enum Handled {
    /// Refused: the status and why.
    Rejected(Rejection),
    /// Stored before (a retry or replay): the earlier row.
    Duplicate {
        id: i64,
        first_delivery: Option<String>,
        pending: bool,
    },
    /// Stored now.
    Stored(i64),
}

/// Runs `webhook-handle`.
///
/// # Errors
/// No secret configured (before reading anything), a database that cannot be used, or
/// a failure while acting on a stored delivery.
pub fn run(args: &WebhookHandleArgs, ctx: &Context) -> Result<ExitStatus> {
    let Some(secret) = ctx.config.settings.plane_webhook_secret.as_ref() else {
        bail!(
            "ORCH_PLANE_WEBHOOK_SECRET is not set: refusing to take unsigned deliveries (set it to the webhook's secret, plane_wh_...)"
        );
    };
    let started = Instant::now();
    if args.stdio {
        run_stdio(ctx, secret.expose(), started)
    } else {
        let path = args.body.as_ref().expect("clap requires --stdio or --body");
        run_replay(ctx, secret.expose(), path, &args.headers, started)
    }
}

fn run_stdio(ctx: &Context, secret: &str, started: Instant) -> Result<ExitStatus> {
    let mut out = std::io::stdout().lock();
    let timeout = ctx.config.settings.webhook_read_timeout_s.0;
    let read = http_request::read_request(std::io::stdin(), timeout, |head| {
        check_head(head)?;
        if head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            // curl waits for this before sending bodies over 1 KiB.
            let _ = out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            let _ = out.flush();
        }
        Ok(())
    });
    let request = match read {
        Ok(r) => r,
        Err(rejection) => {
            let delivery = "-";
            return answer_rejection(&mut out, &rejection, delivery, started);
        }
    };
    let delivery_id = request.head.header("x-plane-delivery").map(str::to_string);
    let shown_id = delivery_id.as_deref().unwrap_or("-");
    let handled = handle(
        ctx,
        secret,
        &request.body,
        request.head.header("x-plane-signature"),
        delivery_id.as_deref(),
    )?;
    match handled {
        Handled::Rejected(r) => answer_rejection(&mut out, &r, shown_id, started),
        Handled::Duplicate {
            id, first_delivery, ..
        } => {
            http_request::write_response(
                &mut out,
                200,
                &[],
                &json!({"status": "duplicate", "delivery": id}),
            )
            .context("answering the sender")?;
            log_duplicate(id, first_delivery.as_deref(), shown_id);
            summary(200, "duplicate", shown_id, started);
            Ok(ExitStatus::Success)
        }
        Handled::Stored(id) => {
            // The row is committed; answer before acting so the sender never waits on
            // Gitea or Plane. A sender that has gone away changes nothing: the row stays.
            if let Err(e) = http_request::write_response(
                &mut out,
                200,
                &[],
                &json!({"status": "stored", "delivery": id}),
            ) {
                log::warn!(
                    "webhook-handle: could not answer the sender (delivery {id} is stored): {e}"
                );
            }
            drop(out);
            act_and_report(ctx, id, shown_id, started, false)
        }
    }
}

fn run_replay(
    ctx: &Context,
    secret: &str,
    path: &PathBuf,
    raw_headers: &[String],
    started: Instant,
) -> Result<ExitStatus> {
    let mut headers = Vec::new();
    for h in raw_headers {
        let Some((name, value)) = h.split_once(':') else {
            bail!("--header {h:?} is not 'Name: value'");
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("--header {h:?} has no valid header name");
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let head = Head {
        method: "POST".into(),
        path: "/".into(),
        headers,
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut body = Vec::new();
    file.take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .with_context(|| format!("reading {}", path.display()))?;
    let delivery_id = head.header("x-plane-delivery").map(str::to_string);
    let shown_id = delivery_id.as_deref().unwrap_or("-");
    let handled = if body.len() > MAX_BODY {
        Handled::Rejected(Rejection::new(
            413,
            format!("body larger than {MAX_BODY} bytes"),
        ))
    } else {
        handle(
            ctx,
            secret,
            &body,
            head.header("x-plane-signature"),
            delivery_id.as_deref(),
        )?
    };
    match handled {
        Handled::Rejected(r) => {
            println!("rejected {}: {}", r.status, r.reason);
            log::warn!(
                "webhook-handle: rejected {} delivery {shown_id}: {}",
                r.status,
                r.reason
            );
            summary(r.status, "rejected", shown_id, started);
            Ok(ExitStatus::No)
        }
        Handled::Duplicate {
            id,
            first_delivery,
            pending: true,
        } => {
            // An operator replaying a delivery that is still pending wants it finished:
            // acting is idempotent, so this is safe even while reconcile replays it too.
            log_duplicate(id, first_delivery.as_deref(), shown_id);
            log::info!("webhook-handle: delivery {id} is still pending: acting on it again");
            act_and_report(ctx, id, shown_id, started, true)
        }
        Handled::Duplicate {
            id, first_delivery, ..
        } => {
            println!(
                "duplicate: the same body is delivery {id} (first delivery id {}); nothing done",
                first_delivery.as_deref().unwrap_or("-")
            );
            log_duplicate(id, first_delivery.as_deref(), shown_id);
            summary(200, "duplicate", shown_id, started);
            Ok(ExitStatus::Success)
        }
        Handled::Stored(id) => act_and_report(ctx, id, shown_id, started, true),
    }
}

/// Refuses a request by its head alone, before its body is read.
fn check_head(head: &Head) -> Result<(), Rejection> {
    if head.method != "POST" {
        return Err(Rejection::new(
            405,
            format!(
                "method {} not allowed: Plane delivers with POST",
                head.method
            ),
        ));
    }
    if head.header("x-plane-signature").is_none() {
        return Err(Rejection::new(401, "missing X-Plane-Signature"));
    }
    Ok(())
}

/// Verifies, parses and stores one delivery (the row is committed on return).
fn handle(
    ctx: &Context,
    secret: &str,
    body: &[u8],
    signature: Option<&str>,
    delivery_id: Option<&str>,
) -> Result<Handled> {
    if let Err(r) = intake::verify_signature(secret, body, signature) {
        return Ok(Handled::Rejected(Rejection::new(r.status, r.reason)));
    }
    let envelope = match intake::parse_envelope(body) {
        Ok(e) => e,
        Err(r) => return Ok(Handled::Rejected(Rejection::new(r.status, r.reason))),
    };
    let sha = intake::body_sha256(body);
    let mut db = ctx.open_db()?;
    let stored = db
        .insert_delivery(&NewDelivery {
            body_sha256: &sha,
            delivery_id,
            event: &envelope.event,
            body,
            received_at: ctx.now_secs(),
        })
        .context("storing the delivery")?;
    Ok(match stored {
        Stored::New(id) => {
            log::info!(
                "webhook-handle: stored delivery {id} ({} {}, delivery id {})",
                envelope.event,
                envelope.action,
                delivery_id.unwrap_or("-")
            );
            Handled::Stored(id)
        }
        Stored::Duplicate {
            id,
            delivery_id,
            outcome,
        } => Handled::Duplicate {
            id,
            first_delivery: delivery_id,
            pending: outcome == PENDING,
        },
    })
}

fn answer_rejection(
    out: &mut impl Write,
    r: &Rejection,
    delivery: &str,
    started: Instant,
) -> Result<ExitStatus> {
    let allow: &[(&str, &str)] = if r.status == 405 {
        &[("Allow", "POST")]
    } else {
        &[]
    };
    log::warn!(
        "webhook-handle: rejected {} delivery {delivery}: {}",
        r.status,
        r.reason
    );
    if let Err(e) = http_request::write_response(out, r.status, allow, &json!({"error": r.reason}))
    {
        log::warn!("webhook-handle: could not answer the sender: {e}");
    }
    summary(r.status, "rejected", delivery, started);
    Ok(ExitStatus::No)
}

fn log_duplicate(id: i64, first: Option<&str>, this: &str) {
    log::info!(
        "webhook-handle: duplicate of delivery {id} (first delivery id {}, this delivery id {this}): nothing done",
        first.unwrap_or("-")
    );
}

fn summary(status: u16, outcome: &str, delivery: &str, started: Instant) {
    log::info!(
        "webhook-handle: status={status} outcome={outcome:?} delivery={delivery} duration_ms={}",
        started.elapsed().as_millis()
    );
}

fn act_and_report(
    ctx: &Context,
    id: i64,
    delivery: &str,
    started: Instant,
    print: bool,
) -> Result<ExitStatus> {
    let mut db = ctx.open_db()?;
    crate::crash::point("delivery-stored");
    match process_delivery(ctx, &mut db, id) {
        Ok(outcome) => {
            crate::crash::point("delivery-done");
            if print {
                println!("delivery {id} {outcome}");
            }
            log::info!("webhook-handle: delivery {id} {outcome}");
            summary(200, outcome.kind.as_str(), delivery, started);
            Ok(ExitStatus::Success)
        }
        Err(e) => {
            if print {
                println!("delivery {id} pending: {e:#}");
            }
            summary(200, PENDING, delivery, started);
            Err(e.context(format!(
                "acting on delivery {id} failed; it stays pending for reconcile"
            )))
        }
    }
}

/// Acts on a stored delivery and records its outcome; what `reconcile` calls to replay
/// pending deliveries.
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
/// # Errors
/// When acting fails (Plane unreachable while resolving the state, a write failing):
/// the delivery stays `pending` with the error recorded, and nothing of it was written.
pub fn process_delivery(ctx: &Context, db: &mut Db, delivery_row_id: i64) -> Result<Outcome> {
    let row = db
        .delivery(delivery_row_id)?
        .with_context(|| format!("no delivery {delivery_row_id}"))?;
    if row.outcome != PENDING {
        return Ok(recorded(&row.outcome, row.detail.as_deref()));
    }
    db.count_delivery_attempt(row.id)?;
    match act(ctx, db, row.id, &row.body) {
        Ok(outcome) => Ok(outcome),
        Err(e) if e.downcast_ref::<AlreadyRecorded>().is_some() => {
            // Another process (the receiver or reconcile) recorded it first; all this
            // one wrote was rolled back with the outcome.
            let row = db.delivery(row.id)?.expect("rows are never deleted");
            Ok(recorded(&row.outcome, row.detail.as_deref()))
        }
        Err(e) => {
            if let Err(e2) = db.fail_delivery(row.id, &format!("{e:#}")) {
                log::warn!("delivery {}: could not record the error: {e2:#}", row.id);
            }
            Err(e)
        }
    }
}

fn recorded(outcome: &str, detail: Option<&str>) -> Outcome {
    Outcome::new(
        OutcomeKind::parse(outcome).unwrap_or(OutcomeKind::NoAction),
        detail.unwrap_or_default(),
    )
}

/// What a delivery asks for, once its state is resolved.
enum Plan<'a> {
    /// Nothing: the outcome says why.
    Nothing(Outcome),
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
fn act(ctx: &Context, db: &mut Db, id: i64, body: &[u8]) -> Result<Outcome> {
    let now = ctx.now_secs();
    match plan(ctx, db, body)? {
        Plan::Nothing(outcome) => {
            db.record_outcome(id, &outcome, now)?;
            Ok(outcome)
        }
        Plan::Start {
            project,
            change,
            reason,
        } => start(ctx, db, id, project, &change, &reason),
        Plan::Move {
            task,
            from,
            to,
            reason,
        } => {
            let describe = |m: &Moved| moved_outcome(&task, from, to, m);
            let record = Recorder {
                delivery: id,
                now,
                describe: &describe,
            };
            match moves::move_task_recorded(
                ctx,
                db,
                &task,
                to,
                &reason,
                Actor::Webhook,
                Some(&record),
            ) {
                Ok(moved) => Ok(describe(&moved)),
                Err(e) => match e.downcast_ref::<MoveError>() {
                    Some(MoveError::Stale { actual, .. }) => {
                        let outcome = Outcome::no_action(format!(
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
                Created::New(j) => Outcome::new(
                    OutcomeKind::Rejected,
                    format!(
                        "task {} stays at analysis, analyst job {j} queued again",
                        task.key
                    ),
                ),
                Created::Existing(j) => Outcome::no_action(format!(
                    "task {} already has an analyst job queued or running (job {j})",
                    task.key
                )),
            };
            let record = Recorder {
                delivery: id,
                now,
                describe: &describe,
            };
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

fn moved_outcome(task: &Task, from: Stage, to: Stage, moved: &Moved) -> Outcome {
    let kind = if to == Stage::Cancelled {
        OutcomeKind::Cancelled
    } else {
        OutcomeKind::Approved
    };
    let job = moved
        .enqueued_job
        .map(|j| format!(", {} job {j} queued", to.agent().map_or("", Agent::as_str)))
        .unwrap_or_default();
    Outcome::new(kind, format!("task {} {from} -> {to}{job}", task.key))
}

/// Resolves a stored body to what it asks for. Writes only the state cache.
fn plan<'a>(ctx: &'a Context, db: &mut Db, body: &[u8]) -> Result<Plan<'a>> {
    let nothing = |why: String| Ok(Plan::Nothing(Outcome::no_action(why)));
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
            let jobs = db.task_jobs(t.id)?;
            let analyst = || jobs.iter().filter(|j| j.agent == Agent::Analyst);
            Some(TaskFacts {
                key: t.key.clone(),
                stage: t.stage,
                has_analyst_job: analyst().next().is_some(),
                has_live_analyst_job: analyst().any(|j| !j.status.is_terminal()),
            })
        }
        None => None,
    };
    let decision = intake::decide(meaning, &state.name, change.legacy, facts.as_ref());
    let reason = format!("work item moved to {:?} in Plane", state.name);
    Ok(match decision {
        Decision::NoAction(why) => Plan::Nothing(Outcome::no_action(why)),
        Decision::Start => Plan::Start {
            project,
            change,
            reason,
        },
        Decision::Move { from, to } => Plan::Move {
            task: task.expect("moves are decided for existing tasks"),
            from,
            to,
            reason,
        },
        Decision::RequeueAnalysis => Plan::RequeueAnalysis {
            task: task.expect("requeues are decided for existing tasks"),
        },
    })
}

/// Starts the work item's task: the task, its analyst job and the delivery's outcome in
/// one transaction, then the branch step.
fn start(
    ctx: &Context,
    db: &mut Db,
    id: i64,
    project: &Project,
    change: &StateChange,
    reason: &str,
) -> Result<Outcome> {
    let identifier = project
        .plane_identifier
        .clone()
        .unwrap_or_else(|| project.name.to_ascii_uppercase());
    let key = intake::task_key(&identifier, change.sequence_id, &change.work_item_id);
    let new = NewTask {
        project: project.name.clone(),
        work_item_id: change.work_item_id.clone(),
        key: key.clone(),
        title: change.title.clone(),
        repo: project.repo.clone(),
        branch: crate::core::branch::branch_name(&key, &change.title),
    };
    let describe = |s: &TaskStart| {
        Outcome::new(
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
    let record = Recorder {
        delivery: id,
        now: ctx.now_secs(),
        describe: &describe,
    };
    let started = moves::start_task(ctx, db, &new, Actor::Webhook, reason, Some(&record))?;
    let task = db.task(started.task_id)?.expect("just started");
    // The recorded outcome is what the transaction did; the branch step came after it
    // and is added to the line this command prints and logs.
    let recorded = describe(&TaskStart {
        task_id: started.task_id,
        created: started.created,
        enqueued_job: started.enqueued_job,
    });
    Ok(Outcome::new(
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
    ctx: &Context,
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
    let plane = PlaneClient::from_config(&ctx.config)
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
