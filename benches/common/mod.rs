//! Shared bench scaffolding: run the real `orch` binary repeatedly and report median and
//! p99 wall time and the peak resident memory of the whole process.

#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

/// What a series of runs measured.
pub struct Measured {
    pub runs: usize,
    pub median: Duration,
    pub p99: Duration,
    pub min: Duration,
    pub max_rss_kib: i64,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "runs={} median={:.2}ms p99={:.2}ms min={:.2}ms peak_rss={:.1}MiB",
            self.runs,
            self.median.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.min.as_secs_f64() * 1e3,
            self.max_rss_kib as f64 / 1024.0
        )
    }
}

/// Runs `make()` `runs` times (after one warm-up), each to completion, and measures it.
/// Panics if a run fails: a benchmark of a failing command measures nothing.
pub fn measure(runs: usize, mut make: impl FnMut() -> Command) -> Measured {
    let warm = make().output().expect("spawn");
    assert!(
        warm.status.success(),
        "warm-up failed: {}",
        String::from_utf8_lossy(&warm.stderr)
    );
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut cmd = make();
        let start = Instant::now();
        let out = cmd.output().expect("spawn");
        times.push(start.elapsed());
        assert!(
            out.status.success(),
            "run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    times.sort();
    let pick = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    // ru_maxrss of RUSAGE_CHILDREN: the largest peak of any child waited for so far (KiB).
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    Measured {
        runs,
        median: pick(0.5),
        p99: pick(0.99),
        min: times[0],
        max_rss_kib: usage.max_rss(),
    }
}

/// Returns the release binary built for this bench.
pub fn orch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_orch"))
}
