//! Post-deploy windows, the part other passes share: arming one (on `deploy → done`,
//! from [`crate::ops::moves`], or by hand with `post-deploy-tick --arm`), the task's
//! `16-post-deploy-log.md`, and the open windows `status` lists. The tick itself is
//! `post-deploy-tick`'s.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::adapters::artefact_store::{ArtefactStore, FileMode};
use crate::adapters::db::Db;
use crate::adapters::windows::WindowStore;
use crate::clock::format_unix;
use crate::core::artefact::POST_DEPLOY_LOG_FILE;
use crate::core::post_deploy::{
    applicability, render_log, Applicability, Classification, WatchedProject, WindowState,
};
use crate::core::task::Task;
use crate::ops::pass::PassContext;

pub use crate::core::status::WindowView;

/// What arming did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Armed {
    /// A new window.
    Armed {
        /// Ends at (unix seconds).
        ends_at: i64,
    },
    /// A window was already open; left as it is.
    AlreadyArmed {
        /// Ends at (unix seconds).
        ends_at: i64,
    },
    /// Not watched.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// Arms a window for `task` at `now`, unless one is open; `check_repos` applies
/// `ORCH_POST_DEPLOY_REPOS` (arming on deploy → done) or not (an operator's `--arm`).
///
/// # Errors
/// When the window cannot be written.
pub fn arm(
    ctx: &PassContext,
    db: &Db,
    task: &Task,
    armed_by: &str,
    check_repos: bool,
) -> Result<Armed> {
    let s = &ctx.config.settings;
    let project = ctx.config.pipeline.project(&task.project);
    let facts = project.map(|p| WatchedProject {
        name: &p.name,
        repo: &p.repo,
        has_health_url: p.health_url.is_some(),
    });
    let own = [task.project.clone()];
    let repos: &[String] = if check_repos {
        &s.post_deploy_repos.0
    } else {
        &own
    };
    if let Applicability::Skipped(reason) = applicability(s.post_deploy_enabled, repos, facts) {
        return Ok(Armed::Skipped { reason });
    }
    let now = ctx.now_secs();
    let store = WindowStore::new(&s.state_dir, db, now);
    let dir = store.dir(&task.repo, &task.work_item_id)?;
    if let Some(w) = store.load(&dir)? {
        if w.is_open() {
            return Ok(Armed::AlreadyArmed { ends_at: w.ends_at });
        }
    }
    let w = WindowState::arm(task, now, s.post_deploy_window_s.secs(), armed_by);
    store.save(&dir, &w)?;
    write_log(ctx, db, &w);
    Ok(Armed::Armed { ends_at: w.ends_at })
}

/// Arms post-deploy after `task` moved deploy → done; logs the outcome. A failure to
/// arm is logged as an error and does not undo the move (it is already committed).
pub fn arm_after_deploy(ctx: &PassContext, db: &Db, task: &Task) {
    match arm(ctx, db, task, "deploy -> done", true) {
        Ok(Armed::Armed { ends_at }) => log::info!(
            "task {}: post-deploy armed until {}",
            task.key,
            format_unix(ends_at)
        ),
        Ok(Armed::AlreadyArmed { ends_at }) => log::info!(
            "task {}: post-deploy already armed until {}",
            task.key,
            format_unix(ends_at)
        ),
        Ok(Armed::Skipped { reason }) => {
            log::info!("task {}: post-deploy not armed: {reason}", task.key);
        }
        Err(e) => log::error!("task {}: post-deploy arming failed: {e:#}", task.key),
    }
}

/// Returns the open windows for `status`, soonest end first.
pub fn armed_windows(store: &WindowStore<'_>, state_dir: &Path, now: i64) -> Vec<WindowView> {
    let found = match store.list() {
        Ok(found) => found,
        Err(e) => vec![(state_dir.to_path_buf(), Err(e))],
    };
    // A window that cannot be read is shown, not hidden: every tick fails on it too.
    let unreadable = found.iter().filter_map(|(path, w)| {
        w.as_ref().err().map(|e| WindowView {
            task_id: 0,
            key: path.display().to_string(),
            project: String::new(),
            repo: String::new(),
            armed_at: String::new(),
            ends_at: String::new(),
            time_left_s: 0,
            samples: 0,
            last_classification: Some(format!("UNREADABLE: {e:#}")),
        })
    });
    let unreadable: Vec<WindowView> = unreadable.collect();
    let mut out: Vec<WindowView> = found
        .into_iter()
        .filter_map(|(_, w)| w.ok())
        .filter(WindowState::is_open)
        .map(|w| WindowView {
            task_id: w.task_id,
            key: w.task_key,
            project: w.project,
            repo: w.repo,
            armed_at: format_unix(w.armed_at),
            ends_at: format_unix(w.ends_at),
            time_left_s: (w.ends_at - now).max(0),
            samples: w.samples.len(),
            last_classification: w.last_classification,
        })
        .collect();
    out.sort_by_key(|w| (w.time_left_s, w.task_id));
    out.extend(unreadable);
    out
}

/// Writes the task's `16-post-deploy-log.md`; a failure is logged (the window state
/// holds the same lines and the next write catches up).
pub fn write_log(ctx: &PassContext, db: &Db, w: &WindowState) {
    let verdict = w.verdict.as_deref().and_then(|v| match v {
        "HEALTHY" => Some(Classification::Healthy.verdict()),
        "DEGRADED" => Some(Classification::Degraded.verdict()),
        "INCONCLUSIVE" => Some(Classification::Inconclusive.verdict()),
        _ => None,
    });
    let text = render_log(
        &w.task_key,
        &format_unix(w.armed_at),
        &format_unix(w.ends_at),
        verdict,
        &w.ticks,
    );
    let result = ArtefactStore::new(&ctx.config.settings.artefacts_dir, db)
        .write(
            &w.task_key,
            POST_DEPLOY_LOG_FILE,
            text.as_bytes(),
            FileMode::Private,
            ctx.now_secs(),
        )
        .with_context(|| format!("writing {POST_DEPLOY_LOG_FILE} of {}", w.task_key));
    if let Err(e) = result {
        log::warn!("{e:#}");
    }
}
