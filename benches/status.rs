//! `orch status` on databases of 1,000 / 10,000 / 100,000 / 1,000,000 jobs (a history
//! of finished jobs, ~1% running), a tenth as many tasks (one in 500 escalated) and as
//! many deliveries as tasks (a history of acted-on ones, a few pending and stale).
//!
//! Run: `cargo bench --bench status`. Prints median and p99 wall time of the whole
//! process and its peak resident memory at each size, the growth, and the floor measured
//! in the same run: the `sqlite3` shell running the reads status makes (and, for
//! reference, counting tasks and deliveries row by row, as status did before the kept
//! counts of migration 9). The goal is a
//! median under 50 ms and a peak under 20 MB at 1M jobs on the 2-core reference machine.

mod common;

use rusqlite::params;

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

/// What status reads, as SQL: the kept counts (jobs, tasks by stage, escalated tasks,
/// deliveries), the oldest running jobs and escalated tasks, the staging holders, the
/// passes.
const FLOOR_SQL: &str = "SELECT status, sum(n) FROM job_counts GROUP BY status;
SELECT stage, sum(n) FROM task_counts GROUP BY stage;
SELECT outcome, n FROM delivery_counts;
SELECT j.*, t.key FROM jobs j JOIN tasks t ON t.id = j.task_id WHERE j.status = 'running' ORDER BY j.started_at, j.id LIMIT 20;
SELECT sum(n) FROM task_counts WHERE escalated = 1;
SELECT * FROM tasks WHERE escalated_at IS NOT NULL ORDER BY escalated_at LIMIT 20;
SELECT j.id FROM jobs j JOIN tasks t ON t.id = j.task_id WHERE j.status = 'running' AND j.stage = 'deploy-staging' ORDER BY j.started_at, j.id LIMIT 20;
SELECT * FROM passes;";

/// The counts migration 9 keeps, counted row by row (what status ran before it).
const ROW_BY_ROW_SQL: &str = "SELECT stage, count(*) FROM tasks GROUP BY stage;
SELECT count(*) FROM tasks WHERE escalated_at IS NOT NULL;
SELECT count(*) FROM deliveries WHERE outcome = 'pending';
SELECT count(*) FROM deliveries WHERE outcome = 'stale';";
const OUTCOMES: [&str; 4] = ["started", "moved", "ignored", "stale"];

fn main() {
    let mut points = Vec::new();
    for jobs in [1_000i64, 10_000, 100_000, 1_000_000] {
        points.push((jobs as usize, one_size(jobs, jobs / 10)));
    }
    common::report_growth("status", &points);
}

fn one_size(n_jobs: i64, n_tasks: i64) -> std::time::Duration {
    let home = common::Home::with_projects(3);
    let mut conn = home.db();
    let tx = conn.transaction().unwrap();
    let now = 1_795_575_600_i64;
    {
        let mut t = tx
            .prepare("INSERT INTO tasks (project, work_item_id, key, title, repo, branch, stage, stage_entered_at, created_at, updated_at, escalated_at, escalation_reason) VALUES (?1, ?2, ?3, 't', 'acme/x', ?4, ?5, ?6, ?6, ?6, ?7, ?8)")
            .unwrap();
        for i in 0..n_tasks {
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
        for i in 0..n_jobs {
            // Only ~1% running (as in life) and never two live jobs per task and stage.
            let status = if i % 100 == 0 {
                "running"
            } else {
                STATUSES[[2, 3, 4][(i % 3) as usize]]
            };
            let task = if status == "running" {
                (i / 100) % n_tasks + 1
            } else {
                i % n_tasks + 1
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
        let mut d = tx
            .prepare("INSERT INTO deliveries (body_sha256, delivery_id, event, body, received_at, outcome, processed_at) VALUES (?1, ?1, 'issue', x'7b7d', ?2, ?3, ?2)")
            .unwrap();
        for i in 0..n_tasks {
            // 1% still pending; the rest acted on, a quarter of those stale.
            let outcome = if i % 100 == 0 {
                "pending"
            } else {
                OUTCOMES[(i % 4) as usize]
            };
            d.execute(params![format!("sha-{i}"), now - i, outcome])
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
    let mut text = std::time::Duration::ZERO;
    for json in [false, true] {
        let args: &[&str] = if json {
            &["status", "--json"]
        } else {
            &["status"]
        };
        let m = common::measure(30, || home.orch(args));
        println!(
            "status{} over {n_jobs} jobs / {n_tasks} tasks: {m}",
            if json { " --json" } else { "" }
        );
        if !json {
            text = m.median;
        }
    }
    let floor = common::measure(30, || common::sqlite3(&home.path("orch.db"), FLOOR_SQL));
    let rows = common::measure(30, || {
        common::sqlite3(&home.path("orch.db"), ROW_BY_ROW_SQL)
    });
    println!(
        "  floor, {n_jobs} jobs: sqlite3 {:.2}ms; orch/floor ×{:.1}; counting tasks and deliveries row by row instead: sqlite3 {:.2}ms",
        floor.median.as_secs_f64() * 1e3,
        text.as_secs_f64() / floor.median.as_secs_f64(),
        rows.median.as_secs_f64() * 1e3
    );
    text
}
