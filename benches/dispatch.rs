//! `cargo bench --bench dispatch`: one whole `orch dispatch --dry-run` process with
//! 1,000 / 10,000 / 100,000 / 1,000,000 queued jobs over 4 projects (their tasks' Plane
//! priorities round-robin over the five) and a limit of 4
//! (the dry run decides exactly as a real pass and launches nothing, so every run sees
//! the same queue): median wall time and the orch process's peak RSS at each size, the
//! growth, and the floor measured in the same run: the `sqlite3` shell running one
//! index-ordered `LIMIT 4` query per project. A real pass adds one guarded UPDATE and
//! one spawn per started job.

mod common;

use common::{measure, report, report_growth, sqlite3, Home};

fn main() {
    let mut points = Vec::new();
    for n in [1_000usize, 10_000, 100_000, 1_000_000] {
        let home = Home::with_projects(4);
        let t0 = std::time::Instant::now();
        home.seed_fast(n, 4, None);
        println!(
            "seeded {n} queued jobs in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        let m = measure(11, || {
            let mut c = home.orch(&["dispatch", "--dry-run"]);
            c.env("ORCH_MAX_CONCURRENCY", "4");
            c
        });
        report(&format!("dispatch --dry-run, {n} queued"), &m);
        let per_project: Vec<String> = (0..4)
            .map(|p| {
                format!(
                    "SELECT id FROM jobs WHERE project = 'p{p}' AND status = 'queued' \
                     AND (stage = 'deploy-staging') = 0 \
                     ORDER BY priority_rank, enqueued_at, id LIMIT 4;"
                )
            })
            .collect();
        let floor = measure(11, || {
            sqlite3(&home.path("orch.db"), &per_project.join(" "))
        });
        println!(
            "  floor, {n} queued: sqlite3 {:.2}ms; orch/floor ×{:.1}",
            floor.median.as_secs_f64() * 1e3,
            m.median.as_secs_f64() / floor.median.as_secs_f64()
        );
        points.push((n, m.median));
    }
    report_growth("dispatch", &points);
}
