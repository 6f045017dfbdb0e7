//! `cargo bench --bench dispatch`: one whole `orch dispatch --dry-run` process with
//! 10,000 queued jobs over 4 projects and a limit of 4 (the dry run decides exactly as a
//! real pass and launches nothing, so every run sees the same queue): median wall time
//! and peak RSS. A real pass adds one guarded UPDATE and one spawn per started job.

mod common;

use common::{measure, report, Home};

fn main() {
    let home = Home::with_projects(4);
    home.seed_jobs(10_000, 4, None);
    report(
        "dispatch --dry-run, 10000 queued",
        &measure(11, || {
            let mut c = home.orch(&["dispatch", "--dry-run"]);
            c.env("ORCH_MAX_CONCURRENCY", "4");
            c
        }),
    );
}
