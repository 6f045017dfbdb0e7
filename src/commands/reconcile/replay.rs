//! The replays: pending webhook deliveries, and listed work items whose start /
//! approved / cancel state the task does not reflect, acted on as their lost webhook
//! would have (the decision is `core::reconcile::replay`).

use std::collections::HashMap;

use anyhow::Result;

use crate::adapters::db::{Db, ListedTask};
use crate::adapters::plane::WorkItem;
use crate::core::intake;
use crate::core::plane::Project;
use crate::core::reconcile::{self, Replay};
use crate::core::stage::{Actor, Stage};
use crate::core::task::NewTask;
use crate::ops::moves::{self, MoveRequest};

use super::listing::ProjectListing;
use super::report::ReplayLine;
use super::Pass;

impl Pass<'_> {
    /// Replays pending deliveries, at most `cap`, each exactly once
    /// (`ops::delivery::process_delivery`); a failed one stays pending for the next pass.
    pub(super) fn replay_deliveries(&mut self, db: &mut Db, cap: usize) -> Result<()> {
        for row in db.pending_deliveries(cap)? {
            let id = row.id.to_string();
            if self.dry_run {
                self.report.replays.push(ReplayLine {
                    source: "delivery",
                    id,
                    detail: "pending: would be processed again".into(),
                });
                continue;
            }
            match crate::ops::delivery::process_delivery(self.ctx, db, row.id) {
                Ok(o) => {
                    if o.kind == intake::OutcomeKind::Stale {
                        self.report.c.stale += 1;
                    } else {
                        self.report.c.replayed += 1;
                    }
                    log::info!(
                        "replayed delivery {}: {} {}",
                        row.id,
                        o.kind.as_str(),
                        o.detail
                    );
                    self.report.replays.push(ReplayLine {
                        source: "delivery",
                        id,
                        detail: format!("{}: {}", o.kind.as_str(), o.detail),
                    });
                }
                Err(e) => {
                    self.failed(&e);
                    log::warn!(
                        "replaying delivery {} failed (stays pending): {e:#}",
                        row.id
                    );
                    self.report.replays.push(ReplayLine {
                        source: "delivery",
                        id,
                        detail: format!("failed, stays pending: {e:#}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Acts on work items whose meaning the task does not reflect, as their webhook
    /// would have. Returns whether anything changed.
    pub(super) fn replay_work_items(
        &mut self,
        db: &mut Db,
        listings: &HashMap<String, ProjectListing>,
        cap: usize,
    ) -> Result<bool> {
        let mut changed = false;
        let mut done = 0usize;
        for project in &self.ctx.config.pipeline.projects {
            let Some(l) = listings.get(&project.name) else {
                continue;
            };
            for (item, state) in &l.resolved {
                let Some(meaning) =
                    reconcile::replayable_meaning(&project.states, &state.name, &state.group)
                else {
                    continue;
                };
                let task = db.task_of_work_item(&item.id)?;
                let task = task.as_ref();
                let facts = task_facts(db, task.map(|t| (t.id, t.key.as_str(), t.stage)))?;
                let decision = reconcile::replay(meaning, &state.name, facts.as_ref(), done, cap);
                let reason = format!(
                    "replayed: work item is in {:?} in Plane (its webhook was lost)",
                    state.name
                );
                if matches!(decision, Replay::Start | Replay::Move { .. }) {
                    // The listing may be older than a delivery stored meanwhile: the
                    // same rule as for deliveries.
                    let newest = db.newest_update(&item.id)?;
                    if let intake::Freshness::Stale {
                        delivered,
                        newest,
                        source,
                    } = intake::freshness(&item.updated_at, newest.as_ref())
                    {
                        self.report.c.stale += 1;
                        self.report.replays.push(ReplayLine {
                            source: "work-item",
                            id: item.id.clone(),
                            detail: format!(
                                "stale: listed at {delivered}, but an update at {newest} is already known ({source}): nothing done"
                            ),
                        });
                        continue;
                    }
                }
                let detail = match decision {
                    Replay::Ignore => continue,
                    Replay::Capped => {
                        self.report.stopped_early.get_or_insert_with(|| {
                            format!("replayed ORCH_RECONCILE_MAX_TASKS={cap} work items")
                        });
                        return Ok(changed);
                    }
                    Replay::Start if self.dry_run => "would start the task".to_string(),
                    Replay::Move { from, to } if self.dry_run => {
                        format!("would move the task {from} -> {to}")
                    }
                    Replay::Start => {
                        done += 1;
                        match self.replay_start(db, project, item, &reason) {
                            Ok(d) => {
                                changed = true;
                                self.report.c.replayed += 1;
                                d
                            }
                            Err(e) => {
                                self.failed(&e);
                                log::warn!("replaying the start of {} failed: {e:#}", item.id);
                                format!("start failed: {e:#}")
                            }
                        }
                    }
                    Replay::Move { from, to } => {
                        done += 1;
                        let t = task.expect("moves are decided for existing tasks");
                        let req = MoveRequest::new(t, to, &reason, Actor::Reconcile);
                        match moves::move_task(self.ctx, db, &req) {
                            Ok(_) => {
                                changed = true;
                                self.report.c.replayed += 1;
                                format!("task {} {from} -> {to}", t.key)
                            }
                            Err(e) => {
                                self.failed(&e);
                                log::warn!("replaying the move of {} failed: {e:#}", t.key);
                                format!("move failed: {e:#}")
                            }
                        }
                    }
                };
                self.report.replays.push(ReplayLine {
                    source: "work-item",
                    id: item.id.clone(),
                    detail,
                });
            }
        }
        Ok(changed)
    }

    /// Whether a listed work item may need a replay: its state has a replayable
    /// meaning and the decision for its task as it stands is not to ignore it. The
    /// listing keeps only these (in a steady state, none), so a pass never holds every
    /// listed work item.
    /// `task` is the work item's task as the page's read found it
    /// (`Db::listed_known`).
    pub(super) fn replay_candidate(
        db: &Db,
        project: &Project,
        state: &intake::PlaneState,
        task: Option<&ListedTask>,
    ) -> Result<bool> {
        let Some(meaning) =
            reconcile::replayable_meaning(&project.states, &state.name, &state.group)
        else {
            return Ok(false);
        };
        reconcile::would_replay(meaning, task.map(|t| t.stage), || {
            task.map_or(Ok(false), |t| Ok(db.analyst_jobs(t.id)?.0))
        })
    }

    fn replay_start(
        &mut self,
        db: &mut Db,
        project: &Project,
        item: &WorkItem,
        reason: &str,
    ) -> Result<String> {
        let seq = i64::try_from(item.sequence_id).ok();
        let key = intake::task_key(
            project.plane_identifier.as_deref(),
            &project.name,
            seq,
            &item.id,
        );
        let new = NewTask {
            project: project.name.clone(),
            work_item_id: item.id.clone(),
            key: key.clone(),
            title: item.name.clone(),
            repo: project.repo.clone(),
            branch: crate::core::branch::branch_name(&key, &item.name),
            priority: item.priority,
        };
        let started = moves::start_task(self.ctx, db, &new, Actor::Reconcile, reason, None)?;
        if started.branch.asked_gitea() {
            self.forge.requests += 1;
        }
        Ok(format!(
            "task {key} {}, {}, branch {}",
            if started.created {
                "created"
            } else {
                "already existed"
            },
            started
                .enqueued_job
                .map_or("analyst job already there".to_string(), |j| format!(
                    "analyst job {j} queued"
                )),
            started.branch.describe()
        ))
    }
}

/// The replay's facts of a task given as (id, key, stage).
fn task_facts(db: &Db, task: Option<(i64, &str, Stage)>) -> Result<Option<intake::TaskFacts>> {
    Ok(match task {
        Some((id, key, stage)) if stage == Stage::Analysis => {
            let (has_analyst_job, has_live_analyst_job) = db.analyst_jobs(id)?;
            Some(intake::TaskFacts {
                key: key.to_string(),
                stage,
                has_analyst_job,
                has_live_analyst_job,
            })
        }
        Some((_, key, stage)) => Some(intake::TaskFacts {
            key: key.to_string(),
            stage,
            has_analyst_job: true,
            has_live_analyst_job: false,
        }),
        None => None,
    })
}
