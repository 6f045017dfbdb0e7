//! A task's move between stages, the only way a stage changes: the table, the event,
//! the developer retry count and limit, a new round, the queued jobs and the next job,
//! and (for a webhook delivery) the delivery's outcome, in one transaction.

use crate::adapters::db::sql::{params, OptionalExtension};
use anyhow::Result;

use crate::adapters::db::jobs::enqueue_in;
use crate::adapters::db::recorder::Recorder;
use crate::adapters::db::Db;
use crate::core::stage::{self, Actor, Stage};

/// Why a move was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// The table has no such edge.
    #[error("transition {from} -> {to} is not allowed by the pipeline table")]
    NotAllowed {
        /// Where the task is.
        from: Stage,
        /// Where it was asked to go.
        to: Stage,
    },
    /// The task is no longer where the caller judged it (another pass moved it).
    #[error("task {task_id} is at {actual}, not {expected}: another pass moved it")]
    Stale {
        /// The task.
        task_id: i64,
        /// Where the caller thought it was.
        expected: Stage,
        /// Where it is.
        actual: Stage,
    },
    /// No such task.
    #[error("no task with id {0}")]
    NoTask(i64),
}

/// What a successful move did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    /// The task.
    pub task_id: i64,
    /// From.
    pub from: Stage,
    /// To.
    pub to: Stage,
    /// The job enqueued for the new stage's agent, if any (`None` when one was live).
    pub enqueued_job: Option<i64>,
    /// Queued jobs of other stages that were cancelled by the move.
    pub cancelled_jobs: usize,
    /// Whether the transition arms post-deploy (the caller arms it).
    pub arms_post_deploy: bool,
    /// The developer retry count after the move.
    pub developer_retries: u32,
    /// Whether the move reached the developer retry limit and parked the task.
    pub escalated: bool,
    /// The task's round after the move.
    pub round: u32,
    /// Whether the move started that round (a reopen after a merge).
    pub new_round: bool,
}

/// One move, as [`Db::move_task`] writes it. [`Move::new`] takes what every move has;
/// the setters add what some moves have.
#[derive(Clone, Copy)]
pub struct Move<'a> {
    /// The task.
    pub task_id: i64,
    /// Where the caller judged the task to be (the move is refused when it is not).
    pub from: Stage,
    /// Where it goes.
    pub to: Stage,
    /// Why (the stage event's reason).
    pub reason: &'a str,
    /// Who moves it (a person's move clears an escalation).
    pub actor: Actor,
    /// When (unix seconds).
    pub now: i64,
    /// The developer retry limit to apply in the move's transaction (`None`: none).
    pub retry_limit: Option<u32>,
    /// Whether the move starts the task's next round (decided by `core::round::reopen`).
    pub new_round: bool,
    /// The webhook delivery whose outcome the move records in its transaction.
    pub record: Option<&'a Recorder<'a, Moved>>,
}

impl<'a> Move<'a> {
    /// A move with no retry limit, in the same round, recording no delivery.
    pub fn new(
        task_id: i64,
        from: Stage,
        to: Stage,
        reason: &'a str,
        actor: Actor,
        now: i64,
    ) -> Move<'a> {
        Move {
            task_id,
            from,
            to,
            reason,
            actor,
            now,
            retry_limit: None,
            new_round: false,
            record: None,
        }
    }

    /// Applies the developer retry limit `limit` (see [`Db::move_task`]).
    #[must_use]
    pub fn retry_limit(self, limit: Option<u32>) -> Move<'a> {
        Move {
            retry_limit: limit,
            ..self
        }
    }

    /// Starts the task's next round in the move (see [`Db::move_task`]).
    #[must_use]
    pub fn new_round(self, new_round: bool) -> Move<'a> {
        Move { new_round, ..self }
    }

    /// Records a webhook delivery's outcome in the move's transaction.
    #[must_use]
    pub fn recorded(self, record: Option<&'a Recorder<'a, Moved>>) -> Move<'a> {
        Move { record, ..self }
    }
}

impl Db {
    /// Returns the running job whose agent leads process group `pgid` (an agent runs in
    /// a group of its own, its pid the group id), if any.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn running_job_of_group(&self, pgid: i64) -> Result<Option<i64>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id FROM jobs WHERE status = 'running' AND pid = ?1",
                [pgid],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Returns how many feedback files the task's record accounts for: its moves back to
    /// development (every move into development but the first one, from analysis) plus
    /// its developer re-runs for red CI (`tasks.ci_feedbacks`). Numbers its feedback
    /// files: the newest is this count, the next this count plus one.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn feedback_count(&self, task_id: i64) -> Result<u32> {
        Ok(self.conn().query_row(
            "SELECT (SELECT count(*) FROM stage_events
                      WHERE task_id = ?1 AND to_stage = 'development' AND from_stage <> 'analysis')
                  + coalesce((SELECT ci_feedbacks FROM tasks WHERE id = ?1), 0)",
            [task_id],
            |r| r.get(0),
        )?)
    }

    /// Moves a task from `m.from` to `m.to`, the only way a stage changes.
    ///
    /// In one transaction: refuses an edge the table does not list, or a task no longer
    /// at `from`; writes the stage, its entry time and the `stage_events` row; adds a
    /// developer retry on a review rollback; cancels queued jobs of other stages; and
    /// enqueues the new stage's agent job unless one is live. A move by a person
    /// (webhook or operator) clears an escalation.
    ///
    /// With a `retry_limit`, the limit applies in the same transaction: a review
    /// rollback that brings the count to the limit parks the task (sets its escalation)
    /// and enqueues no developer job, so no agent runs past the limit, even when
    /// `dispatch` runs before reconcile announces the escalation.
    ///
    /// With `new_round` (the caller decided with `core::round::reopen` that the move
    /// follows a merge) the same transaction starts the task's next round: `round` + 1,
    /// no PR number, no validated revision, `branch_ready_at` cleared (the round's branch
    /// is still to be made), and the event's reason ends with `(reopened: round N)`.
    ///
    /// With a `record`, the webhook delivery's outcome is recorded in the move's
    /// transaction, so the move, its job and the outcome are committed together or not
    /// at all, and the event names the delivery. The event also names the job whose
    /// agent made the move, when this handle is attributed to one
    /// ([`Db::set_agent_job`]).
    ///
    /// # Errors
    /// [`MoveError`] (inside `anyhow`) when refused;
    /// [`AlreadyRecorded`](crate::adapters::db::AlreadyRecorded) when the delivery got
    /// its outcome meanwhile (nothing is written then); SQL errors otherwise.
    pub fn move_task(&mut self, m: &Move<'_>) -> Result<Moved> {
        let (task_id, from, to, now, new_round) = (m.task_id, m.from, m.to, m.now, m.new_round);
        let edge = stage::transition(from, to).ok_or(MoveError::NotAllowed { from, to })?;
        let agent_job = self.agent_job();
        let tx = self.immediate()?;
        let actual: Option<String> = tx
            .query_row("SELECT stage FROM tasks WHERE id = ?1", [task_id], |r| {
                r.get(0)
            })
            .optional()?;
        let actual: Stage = actual
            .ok_or(MoveError::NoTask(task_id))?
            .parse()
            .map_err(anyhow::Error::msg)?;
        if actual != from {
            return Err(MoveError::Stale {
                task_id,
                expected: from,
                actual,
            }
            .into());
        }
        let clears_escalation = matches!(m.actor, Actor::Webhook | Actor::Operator);
        tx.execute(
            "UPDATE tasks SET stage = ?2, stage_entered_at = ?3, updated_at = ?3,
                    developer_retries = developer_retries + ?4,
                    escalated_at = CASE WHEN ?5 THEN NULL ELSE escalated_at END,
                    escalation_reason = CASE WHEN ?5 THEN NULL ELSE escalation_reason END
             WHERE id = ?1 AND stage = ?6",
            params![
                task_id,
                to.as_str(),
                now,
                i64::from(edge.counts_developer_retry),
                clears_escalation,
                from.as_str()
            ],
        )?;
        if new_round {
            tx.execute(
                "UPDATE tasks SET round = round + 1, pr_number = NULL, validated_revision = NULL,
                        branch_ready_at = NULL
                 WHERE id = ?1",
                [task_id],
            )?;
        }
        let round: u32 = tx.query_row("SELECT round FROM tasks WHERE id = ?1", [task_id], |r| {
            r.get(0)
        })?;
        let reason = if new_round {
            format!("{} (reopened: round {round})", m.reason)
        } else {
            m.reason.to_string()
        };
        tx.execute(
            "INSERT INTO stage_events
                 (task_id, from_stage, to_stage, reason, actor, at, delivery, agent_job)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                task_id,
                from.as_str(),
                to.as_str(),
                reason,
                m.actor.as_str(),
                now,
                m.record.map(|r| r.delivery),
                agent_job,
            ],
        )?;
        let cancelled_jobs = tx.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?3
             WHERE task_id = ?1 AND status = 'queued' AND stage <> ?2",
            params![task_id, to.as_str(), now],
        )?;
        let developer_retries: u32 = tx.query_row(
            "SELECT developer_retries FROM tasks WHERE id = ?1",
            [task_id],
            |r| r.get(0),
        )?;
        let escalated = m.retry_limit.is_some_and(|max| {
            crate::core::escalation::rollback_reaches_limit(
                edge.counts_developer_retry,
                developer_retries,
                max,
            )
        });
        if escalated {
            tx.execute(
                "UPDATE tasks SET escalated_at = ?2, escalation_reason = ?3
                 WHERE id = ?1 AND escalated_at IS NULL",
                params![
                    task_id,
                    now,
                    format!(
                        "developer retries {developer_retries} reached ORCH_MAX_DEVELOPER_RETRIES {}",
                        m.retry_limit.unwrap_or(0)
                    )
                ],
            )?;
        }
        let enqueued_job = match to.agent() {
            Some(agent) if !escalated => enqueue_in(&tx, task_id, agent, to, now)?,
            _ => None,
        };
        let moved = Moved {
            task_id,
            from,
            to,
            enqueued_job,
            cancelled_jobs,
            arms_post_deploy: edge.arms_post_deploy,
            developer_retries,
            escalated,
            round,
            new_round,
        };
        if let Some(r) = m.record {
            r.record_in(&tx, &moved)?;
        }
        tx.commit()?;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::db::test_support::{count, db, db_with_task, new_task};
    use crate::core::stage::Agent;
    use crate::core::stage::Stage::{
        Analysis, Cancelled, Deploy, DeployStaging, Development, Done, Review,
    };

    /// Counts the queued and running jobs.
    fn live_jobs(db: &Db) -> i64 {
        count(
            db,
            "SELECT count(*) FROM jobs WHERE status IN ('queued','running')",
        )
    }

    #[test]
    fn every_allowed_transition_moves_and_records_its_event() {
        let (_d, mut db) = db();
        for (n, t) in stage::STAGE_TRANSITIONS.iter().enumerate() {
            let id = db
                .create_task(&new_task(n as u32), Actor::Operator, "test", 1)
                .unwrap()
                .id();
            let mv = |from, to, reason, actor, now| Move::new(id, from, to, reason, actor, now);
            // Put the task at `from` through the table itself.
            let path: &[Stage] = match t.from {
                Analysis => &[],
                Development => &[Development],
                Review => &[Development, Review],
                DeployStaging => &[Development, Review, DeployStaging],
                Deploy => &[Development, Review, DeployStaging, Deploy],
                Done => &[Development, Review, DeployStaging, Deploy, Done],
                Cancelled => unreachable!(),
            };
            let mut at = Analysis;
            for s in path {
                db.move_task(&mv(at, *s, "setup", Actor::Operator, 2))
                    .unwrap();
                at = *s;
            }
            let before = db.stage_events(id).unwrap().len();
            let moved = db
                .move_task(&mv(t.from, t.to, "under test", Actor::Reconcile, 3))
                .unwrap();
            assert_eq!(moved.to, t.to);
            assert_eq!(moved.arms_post_deploy, t.arms_post_deploy);
            let task = db.task(id).unwrap().unwrap();
            assert_eq!(task.stage, t.to);
            assert_eq!(task.stage_entered_at, 3);
            let events = db.stage_events(id).unwrap();
            assert_eq!(events.len(), before + 1);
            let last = events.last().unwrap();
            assert_eq!((last.from_stage, last.to_stage), (Some(t.from), t.to));
            assert_eq!(last.actor, "reconcile");
            // The new stage's job is enqueued exactly once.
            let live = count(&db, &format!(
                "SELECT count(*) FROM jobs WHERE task_id = {id} AND status = 'queued' AND stage = '{}'",
                t.to
            ));
            assert_eq!(
                live,
                i64::from(t.to.agent().is_some()),
                "{} -> {}",
                t.from,
                t.to
            );
        }
    }

    #[test]
    fn a_forbidden_transition_writes_nothing() {
        let (_d, mut db, id) = db_with_task();
        let mv = |from, to, reason, actor, now| Move::new(id, from, to, reason, actor, now);
        let events = count(&db, "SELECT count(*) FROM stage_events");
        let jobs = count(&db, "SELECT count(*) FROM jobs");
        for to in [Review, Deploy, Done, Analysis] {
            let err = db
                .move_task(&mv(Analysis, to, "x", Actor::Operator, 2))
                .unwrap_err();
            assert!(matches!(
                err.downcast_ref::<MoveError>(),
                Some(MoveError::NotAllowed { .. })
            ));
        }
        // Stale: the caller thinks the task is elsewhere.
        let err = db
            .move_task(&mv(Review, DeployStaging, "x", Actor::Operator, 2))
            .unwrap_err();
        assert!(matches!(
            err.downcast_ref::<MoveError>(),
            Some(MoveError::Stale { .. })
        ));
        assert_eq!(count(&db, "SELECT count(*) FROM stage_events"), events);
        assert_eq!(count(&db, "SELECT count(*) FROM jobs"), jobs);
        assert_eq!(db.task(id).unwrap().unwrap().stage, Analysis);
    }

    #[test]
    fn review_rollback_counts_a_developer_retry_and_cancel_drops_queued_jobs() {
        let (_d, mut db, id) = db_with_task();
        let mv = |from, to, reason, actor, now| Move::new(id, from, to, reason, actor, now);
        db.enqueue_job(id, Agent::Analyst, Analysis, 1).unwrap();
        let m = db
            .move_task(&mv(Analysis, Development, "ok", Actor::Webhook, 2))
            .unwrap();
        assert_eq!(m.cancelled_jobs, 1, "the queued analyst job is dropped");
        db.move_task(&mv(Development, Review, "ok", Actor::Reconcile, 3))
            .unwrap();
        let m = db
            .move_task(&mv(Review, Development, "changes", Actor::Reconcile, 4))
            .unwrap();
        assert_eq!(m.developer_retries, 1);
        let m = db
            .move_task(&mv(Development, Cancelled, "cancel", Actor::Webhook, 5))
            .unwrap();
        assert_eq!(m.enqueued_job, None);
        assert_eq!(live_jobs(&db), 0);
    }

    #[test]
    fn the_rollback_that_reaches_the_retry_limit_parks_the_task_without_a_job() {
        let (_d, mut db, id) = db_with_task();
        let mv = |from, to, reason, actor, now| Move::new(id, from, to, reason, actor, now);
        db.move_task(&mv(Analysis, Development, "ok", Actor::Webhook, 2))
            .unwrap();
        for round in 1..=2u32 {
            db.move_task(&mv(Development, Review, "ok", Actor::Reconcile, 3))
                .unwrap();
            let m = db
                .move_task(&mv(Review, Development, "rc", Actor::Reconcile, 4).retry_limit(Some(2)))
                .unwrap();
            assert_eq!(m.escalated, round == 2, "round {round}");
            assert_eq!(m.enqueued_job.is_some(), round < 2, "round {round}");
        }
        let t = db.task(id).unwrap().unwrap();
        assert_eq!(t.escalated_at, Some(4));
        assert!(t
            .escalation_reason
            .unwrap()
            .contains("reached ORCH_MAX_DEVELOPER_RETRIES 2"));
        assert_eq!(live_jobs(&db), 0);
    }

    #[test]
    fn a_reopen_starts_the_next_round_in_the_same_move() {
        let (_d, mut db, id) = db_with_task();
        let mv = |from, to, reason, actor, now| Move::new(id, from, to, reason, actor, now);
        for (from, to) in [
            (Analysis, Development),
            (Development, Review),
            (Review, DeployStaging),
            (DeployStaging, Deploy),
            (Deploy, Done),
        ] {
            db.move_task(&mv(from, to, "t", Actor::Reconcile, 2))
                .unwrap();
        }
        assert!(db.set_pr_number(id, 1, 1, 2).unwrap());
        assert!(db.set_validated_revision(id, 1, "abc", 2).unwrap());
        db.conn()
            .execute("UPDATE tasks SET branch_ready_at = 2 WHERE id = ?1", [id])
            .unwrap();
        let m = db
            .move_task(
                &mv(Done, Development, "degraded", Actor::PostDeploy, 5)
                    .retry_limit(Some(3))
                    .new_round(true),
            )
            .unwrap();
        assert_eq!((m.round, m.new_round), (2, true));
        assert!(m.enqueued_job.is_some());
        let t = db.task(id).unwrap().unwrap();
        assert_eq!(t.round, 2);
        assert_eq!(t.pr_number, None);
        assert_eq!(t.validated_revision, None);
        assert_eq!(t.branch_ready_at, None);
        // A check or a gate that read the task in round 1 and writes after the reopen
        // writes nothing: the new round starts with no PR and no validated revision.
        assert!(!db.set_pr_number(id, 1, 1, 5).unwrap());
        assert!(!db.set_validated_revision(id, 1, "abc", 5).unwrap());
        let t = db.task(id).unwrap().unwrap();
        assert_eq!((t.pr_number, t.validated_revision), (None, None));
        let last = db.stage_events(id).unwrap().pop().unwrap();
        assert_eq!(last.reason, "degraded (reopened: round 2)");
        // A move that keeps the round leaves the PR and the revision alone.
        db.move_task(&mv(Development, Review, "t", Actor::Reconcile, 6))
            .unwrap();
        assert!(db.set_pr_number(id, 2, 2, 6).unwrap());
        let m = db
            .move_task(&mv(Review, Development, "rc", Actor::Reconcile, 7))
            .unwrap();
        assert_eq!((m.round, m.new_round), (2, false));
        let t = db.task(id).unwrap().unwrap();
        assert_eq!((t.round, t.pr_number), (2, Some(2)));
        // A refused move starts nothing.
        assert!(db
            .move_task(&mv(Review, Development, "x", Actor::Reconcile, 8).new_round(true))
            .is_err());
        assert_eq!(db.task(id).unwrap().unwrap().round, 2);
    }
}
