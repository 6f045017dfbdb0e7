//! The branch step: live tasks whose branch is not confirmed on Gitea (starts that
//! `task add`, a delivery or a replay stored while Gitea was down or not configured, and
//! reopened rounds) get it created, at most the cap per pass.

use anyhow::Result;

use crate::adapters::db::Db;
use crate::adapters::http::HttpError;
use crate::core::reconcile;
use crate::ops::moves;

use super::report::BranchLine;
use super::Pass;

impl Pass<'_> {
    /// The branch step for live tasks whose branch is not confirmed on Gitea, at most
    /// `cap` per pass, oldest first ([`moves::ensure_branch`]: 409 counts as created).
    pub(super) fn complete_branches(&mut self, db: &mut Db, cap: usize) -> Result<()> {
        let lacking = db.tasks_without_branch(cap)?;
        let beyond_cap = db.count_tasks_without_branch()? - lacking.len() as i64;
        self.report.c.branches_left += beyond_cap;
        if beyond_cap > 0 {
            self.report.stopped_early.get_or_insert_with(|| {
                format!(
                    "{beyond_cap} more task(s) lack their branch beyond ORCH_RECONCILE_MAX_TASKS={cap}; the next pass goes on"
                )
            });
        }
        let mut unreachable: Option<String> = None;
        let mut not_configured = 0;
        for t in lacking {
            let line = |detail: String| BranchLine {
                id: t.id,
                key: t.key.clone(),
                branch: t.branch.clone(),
                detail,
            };
            let plan = reconcile::branch_plan(t.stage, unreachable.as_deref());
            let detail = match plan {
                reconcile::BranchPlan::NotNeeded => continue,
                reconcile::BranchPlan::Wait(why) => {
                    self.report.c.branches_left += 1;
                    why
                }
                reconcile::BranchPlan::Create if self.ctx.config.settings.gitea_url.is_none() => {
                    self.report.c.branches_left += 1;
                    not_configured += 1;
                    "left: gitea is not configured (ORCH_GITEA_URL is unset)".into()
                }
                reconcile::BranchPlan::Create if self.dry_run => {
                    self.report.c.branches_left += 1;
                    let from = self
                        .ctx
                        .config
                        .pipeline
                        .project(&t.project)
                        .map_or("(project not in the pipeline file)", |p| {
                            p.default_branch.as_str()
                        });
                    format!(
                        "would create it in {} from {from} (its start left it)",
                        t.repo
                    )
                }
                reconcile::BranchPlan::Create => match moves::ensure_branch(self.ctx, db, &t) {
                    Ok(step) if step.is_left() => {
                        self.report.c.branches_left += 1;
                        step.describe()
                    }
                    Ok(step) => {
                        self.forge.requests += i64::from(step.asked_gitea());
                        self.report.c.branches += 1;
                        step.describe()
                    }
                    Err(e) => {
                        self.forge.requests += 1;
                        self.report.c.branches_left += 1;
                        self.failed(&e);
                        if matches!(e.downcast_ref::<HttpError>(), Some(HttpError::Retryable(_))) {
                            unreachable = Some(format!("{e:#}"));
                        }
                        log::warn!(
                            "task {}: branch {} still missing (next pass tries again): {e:#}",
                            t.key,
                            t.branch
                        );
                        format!("failed, next pass tries again: {e:#}")
                    }
                },
            };
            self.report.branches.push(line(detail));
        }
        if not_configured > 0 {
            log::warn!(
                "{not_configured} task(s) lack their branch: gitea is not configured (ORCH_GITEA_URL); reconcile creates them once it is"
            );
        }
        Ok(())
    }
}
