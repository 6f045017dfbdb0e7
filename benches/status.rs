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

fn main() {
    let mut points = Vec::new();
    for jobs in [1_000i64, 10_000, 100_000, 1_000_000] {
        points.push((jobs as usize, one_size(jobs, jobs / 10)));
    }
    common::report_growth("status", &points);
}

fn one_size(n_jobs: i64, n_tasks: i64) -> std::time::Duration {
    let home = common::Home::with_projects(3);
    common::seed_status(&home.conn(), n_jobs, n_tasks);
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
