//! A job as several passes see it: where its log goes (`dispatch` names it for the
//! supervisor, `run-job` writes it) and its stable JSON shape (`task show --json`,
//! `job ... --json`).

use std::path::PathBuf;

use crate::clock::format_unix;
use crate::core::job::Job;
use crate::ops::pass::PassContext;

/// Returns the path of a job's log file under the state dir.
pub fn job_log_path(ctx: &PassContext, id: i64) -> PathBuf {
    ctx.config
        .settings
        .state_dir
        .join("jobs")
        .join(format!("{id}.log"))
}

/// Returns the stable JSON shape of a job.
pub fn job_json(j: &Job) -> serde_json::Value {
    serde_json::json!({
        "id": j.id,
        "task_id": j.task_id,
        "agent": j.agent,
        "stage": j.stage,
        "status": j.status,
        "attempt": j.attempt,
        "pid": j.pid,
        "exit_code": j.exit_code,
        "reap_reason": j.reap_reason,
        "rescue_count": j.rescue_count,
        "enqueued_at": format_unix(j.enqueued_at),
        "started_at": j.started_at.map(format_unix),
        "finished_at": j.finished_at.map(format_unix),
        "log_path": j.log_path,
    })
}
