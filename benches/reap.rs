//! `cargo bench --bench reap`: one whole `orch reap` process over 10,000 and 100,000
//! running jobs whose stamps name a few real live processes (every job is judged alive,
//! so the pass reads `/proc` once per job and writes nothing): median wall time of the
//! process and its peak RSS.

mod common;

use std::process::{Command, Stdio};

use common::{measure, report, Home};

fn main() {
    // A few real live processes to stamp the jobs with.
    let mut live: Vec<std::process::Child> = (0..4)
        .map(|_| {
            Command::new("/bin/sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .spawn()
                .expect("sleep")
        })
        .collect();
    let stamps: Vec<(i64, i64)> = live
        .iter()
        .map(|c| {
            let pid = i64::from(c.id());
            (pid, orch::adapters::process::start_time(pid).expect("live"))
        })
        .collect();
    for n in [10_000usize, 100_000] {
        let home = Home::with_projects(4);
        home.seed_jobs(n, 4, Some(&stamps));
        let runs = if n > 50_000 { 5 } else { 11 };
        report(
            &format!("reap, {n} running jobs (alive)"),
            &measure(runs, || home.orch(&["reap"])),
        );
    }
    for c in &mut live {
        let _ = c.kill();
        let _ = c.wait();
    }
}
