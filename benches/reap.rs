//! `cargo bench --bench reap`: one whole `orch reap` process over 1,000, 10,000 and
//! 100,000 running jobs stamped as every real row is (agent pid and start time,
//! supervisor pid and start time) with a few real live processes: every job is judged
//! alive, so the pass reads its rows and `/proc` and writes nothing. Prints the median
//! wall time and the orch process's peak RSS at each size, the growth, and the floor
//! measured in the same run: the `sqlite3` shell selecting the same rows, plus one walk
//! of `/proc` reading every process's start time.

mod common;

use std::time::{Duration, Instant};

use common::{measure, report, report_growth, sqlite3, Home};

/// One walk of `/proc`: every process's `stat` read and its start time parsed.
fn proc_walk() -> Duration {
    let t0 = Instant::now();
    let mut n = 0usize;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        if name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
                n += usize::from(orch::adapters::process::parse_stat(&stat).is_some());
            }
        }
    }
    assert!(n > 0);
    t0.elapsed()
}

fn main() {
    let (mut live, stamps) = common::live_stamps();
    let mut points = Vec::new();
    for n in [1_000usize, 10_000, 100_000] {
        let home = Home::with_projects(4);
        home.seed_fast(n, 4, Some(&stamps));
        let runs = if n > 50_000 { 5 } else { 11 };
        let m = measure(runs, || home.orch(&["reap"]));
        report(
            &format!("reap, {n} running jobs (alive, supervisor stamped)"),
            &m,
        );
        let sql = measure(runs, || {
            sqlite3(
                &home.path("orch.db"),
                "SELECT * FROM jobs WHERE status = 'running' ORDER BY enqueued_at, id",
            )
        });
        let walk = common::median_in_process(runs, proc_walk);
        let floor = sql.median + walk;
        println!(
            "  floor, {n} rows: sqlite3 {:.2}ms + /proc walk {:.2}ms = {:.2}ms; orch/floor ×{:.1}",
            sql.median.as_secs_f64() * 1e3,
            walk.as_secs_f64() * 1e3,
            floor.as_secs_f64() * 1e3,
            m.median.as_secs_f64() / floor.as_secs_f64()
        );
        points.push((n, m.median));
    }
    report_growth("reap", &points);
    for c in &mut live {
        let _ = c.kill();
        let _ = c.wait();
    }
}
