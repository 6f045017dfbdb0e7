//! Escalation: the sweep that finishes missing announcements and escalates tasks at the
//! developer retry limit, parking a task (once), and announcing it with one Plane comment
//! and one notification.

use anyhow::Result;

use crate::adapters::db::{Db, ESCALATION_KIND};
use crate::adapters::http::HttpError;
use crate::adapters::plane::NewComment;
use crate::core::reconcile;
use crate::core::stage::Stage;
use crate::core::task::Task;

use super::Pass;

impl Pass<'_> {
    /// Finishes escalations whose announcement is missing (a crash, Plane down) and
    /// escalates tasks that reached the developer retry limit through another path.
    /// The candidates come from one query (`Db::escalation_sweep_tasks`), in id order.
    pub(super) fn escalation_sweep(&mut self, db: &mut Db) -> Result<()> {
        let candidates = db.escalation_sweep_tasks(self.limits.max_developer_retries)?;
        for t in &candidates {
            if self.rate_limited {
                return Ok(());
            }
            if matches!(t.stage, Stage::Cancelled | Stage::Done) {
                continue;
            }
            if let Some(at) = t.escalated_at {
                if !db.escalation_announced(t.id, at)? {
                    let reason = t.escalation_reason.clone().unwrap_or_default();
                    self.announce_escalation(db, t, at, &reason)?;
                }
                continue;
            }
            if t.developer_retries >= self.limits.max_developer_retries {
                let actor = db.last_event_actor(t.id)?;
                if reconcile::needs_retry_escalation(
                    t.developer_retries,
                    false,
                    actor.as_deref(),
                    &self.limits,
                ) {
                    let reason = format!(
                        "developer retries {} reached ORCH_MAX_DEVELOPER_RETRIES {}",
                        t.developer_retries, self.limits.max_developer_retries
                    );
                    self.escalate(db, t, &reason)?;
                }
            }
        }
        Ok(())
    }

    /// Parks the task for a human (once) and announces it.
    pub(super) fn escalate(&mut self, db: &mut Db, t: &Task, reason: &str) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        if db.escalate(t.id, reason, self.now)? {
            let cancelled = db.cancel_queued_jobs(t.id, self.now)?;
            log::warn!(
                "task {} escalated at {}: {reason}{}",
                t.key,
                t.stage,
                if cancelled > 0 {
                    format!(" ({cancelled} queued job(s) cancelled)")
                } else {
                    String::new()
                }
            );
            self.report.c.escalated += 1;
            self.announce_escalation(db, t, self.now, reason)?;
        }
        Ok(())
    }

    /// Posts the one Plane comment (idempotent through its external id), then records
    /// and sends the one notification. The notification row is written last, so a pass
    /// that could not comment leaves the announcement for the next pass to finish.
    pub(super) fn announce_escalation(
        &mut self,
        db: &mut Db,
        t: &Task,
        at: i64,
        reason: &str,
    ) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let key = reconcile::escalation_key(t.id, at);
        let project = self.ctx.config.pipeline.project(&t.project);
        if let (Some(plane), Some(project)) = (self.plane, project) {
            let comment = NewComment {
                comment_html: format!(
                    "<p><strong>orch escalated {}</strong> at stage <code>{}</code>: {}. \
                     Nothing re-drives it until a person moves it in Plane.</p>",
                    html_escape(&t.key),
                    t.stage,
                    html_escape(reason)
                ),
                external_source: "orch".into(),
                external_id: key.clone(),
            };
            self.report.c.plane_requests += 1;
            match plane.create_comment(&project.plane_project_id, &t.work_item_id, &comment) {
                Ok(_) => {}
                Err(HttpError::RateLimited { retry_after, .. }) => {
                    self.rate_limit(retry_after);
                    return Ok(());
                }
                Err(e) => {
                    self.report.c.errors += 1;
                    log::warn!(
                        "task {}: escalation comment failed (next pass tries again): {e}",
                        t.key
                    );
                    return Ok(());
                }
            }
        }
        let message = format!(
            "orch: task {} escalated at {}: {reason}. Nothing re-drives it until a person moves it in Plane.",
            t.key, t.stage
        );
        crate::ops::notify::announce(self.ctx, db, &key, ESCALATION_KIND, Some(t.id), &message)?;
        self.report.escalations.push(t.key.clone());
        Ok(())
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
