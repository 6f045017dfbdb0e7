//! `orch status` on a database with 100,000 jobs and 10,000 tasks.
//!
//! Run: `cargo bench --bench status`. Prints median and p99 wall time of the whole
//! process and its peak resident memory; the goal is a median under 50 ms and a peak
//! under 20 MB on the 2-core reference machine.

mod common;

use rusqlite::params;

const TASKS: i64 = 10_000;
const JOBS: i64 = 100_000;
const STAGES: [&str; 7] = [
    "analysis",
    "development",
    "review",
    "deploy-staging",
    "deploy",
    "done",
    "cancelled",
];
const AGENTS: [&str; 4] = ["analyst", "developer", "reviewer", "deployer"];
const STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

fn main() {
    let home = common::Home::with_projects(3);
    let mut conn = home.db();
    let tx = conn.transaction().unwrap();
    let now = 1_795_575_600_i64;
    {
        let mut t = tx
            .prepare("INSERT INTO tasks (project, work_item_id, key, title, repo, branch, stage, stage_entered_at, created_at, updated_at, escalated_at, escalation_reason) VALUES (?1, ?2, ?3, 't', 'acme/x', ?4, ?5, ?6, ?6, ?6, ?7, ?8)")
            .unwrap();
        for i in 0..TASKS {
            let escalated = (i % 500 == 0).then_some(now - i);
            t.execute(params![
                format!("p{}", i % 3),
                format!("wi-{i}"),
                format!("K-{i}"),
                format!("k-{i}"),
                STAGES[(i % 7) as usize],
                now - i,
                escalated,
                escalated.map(|_| "developer retries reached 3")
            ])
            .unwrap();
        }
        let mut j = tx
            .prepare("INSERT INTO jobs (task_id, agent, stage, status, attempt, pid, enqueued_at, started_at, finished_at) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?6, ?7)")
            .unwrap();
        for i in 0..JOBS {
            // Only ~1% running (as in life) and never two live jobs per task and stage.
            let status = if i % 100 == 0 {
                "running"
            } else {
                STATUSES[[2, 3, 4][(i % 3) as usize]]
            };
            let task = if status == "running" {
                (i / 100) % TASKS + 1
            } else {
                i % TASKS + 1
            };
            let stage = STAGES[(i % 5) as usize];
            j.execute(params![
                task,
                AGENTS[(i % 4) as usize],
                stage,
                status,
                100_000 + i,
                now - 3600 + (i % 3600),
                (status != "running").then_some(now)
            ])
            .unwrap();
        }
        tx.execute(
            "INSERT INTO passes (command, started_at, duration_ms, outcome, counts) VALUES ('reap', ?1, 12, 'ok', '{\"flipped\":1}')",
            [now - 60],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    drop(conn);
    for json in [false, true] {
        let args: &[&str] = if json {
            &["status", "--json"]
        } else {
            &["status"]
        };
        let m = common::measure(30, || home.orch(args));
        println!(
            "status{} over {JOBS} jobs / {TASKS} tasks: {m}",
            if json { " --json" } else { "" }
        );
    }
}
