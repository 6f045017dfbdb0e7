//! `cargo bench --bench scale_out`: the more-than-one-host figures of docs/scale-out.md,
//! each measured on SQLite (a file) and on PostgreSQL (a fresh database per measurement
//! on the server `ORCH_TEST_PG_URL` names, else the loopback cluster
//! `scripts/pg-cluster start` runs), in the same run, printed side by side:
//!
//! - `status` over 100,000 jobs / 10,000 tasks (the rows of the `status` bench): the
//!   median wall time of the whole process (target: under 100 ms).
//! - `dispatch` with 10,000 queued jobs over 4 projects, `ORCH_MAX_CONCURRENCY=100000`
//!   and 3 hosts: 3 `orch dispatch` processes at once (their own `ORCH_HOST_ID` and
//!   `ORCH_STATE_DIR`, one database), again until nothing is queued. Every claim is the
//!   real one (the guarded UPDATE) followed by the real launch, `ORCH_JOB_LAUNCHER=systemd`
//!   with a `systemctl` on PATH that exits at once (`/bin/true`): one fork and exec per
//!   claim, no agent. Claims per second of wall time, the median over the repeats
//!   (target: at least 1,000), and exactly once checked: the processes' `started`
//!   counts add up to 10,000, 10,000 jobs run, none queued, none at attempt > 1.
//! - `reap` over 10,000 running jobs (stamped with live agent and supervisor pids, a
//!   third of them on each host): 3 `orch reap` processes at once on 3 host ids, the
//!   median wall time until the last exits (target: under 200 ms).
//!
//! `ORCH_BENCH_ONLY=status,dispatch,reap` (default: all three) picks measurements.
//! `ORCH_BENCH_RUNS` (default 11) timed runs of status and reap after one warm-up;
//! `ORCH_BENCH_REPEAT` (default 3) dispatch drains, each on a freshly seeded database.
//! On PostgreSQL each database is `VACUUM ANALYZE`d after seeding, as autovacuum does
//! soon after a bulk load.

mod common;
#[path = "../tests/common/pg_server.rs"]
mod pg_server;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{measure, Home};

const HOSTS: usize = 3;
const STATUS_JOBS: i64 = 100_000;
const STATUS_TASKS: i64 = 10_000;
const DISPATCH_JOBS: usize = 10_000;
const REAP_JOBS: usize = 10_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "SQLite",
            Engine::Postgres => "PostgreSQL",
        }
    }
}

/// A fresh database for one measurement: nothing (the home's file) on SQLite, a new
/// database on the server on PostgreSQL, dropped with this.
struct Fresh(Option<(String, String)>);

impl Fresh {
    fn new(engine: Engine) -> Fresh {
        Fresh((engine == Engine::Postgres).then(pg_server::fresh_database))
    }

    fn url(&self) -> Option<&str> {
        self.0.as_ref().map(|(_, url)| url.as_str())
    }

    /// After a bulk seed: PostgreSQL's statistics and visibility map, as autovacuum
    /// leaves them soon after a bulk load.
    fn settle(&self, home: &Home) {
        if self.0.is_some() {
            home.conn().execute_batch("VACUUM ANALYZE").unwrap();
        }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if let Some((name, _)) = &self.0 {
            pg_server::drop_database(name);
        }
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// `home.orch(args)` as host `h`: its own `ORCH_HOST_ID` and `ORCH_STATE_DIR`.
fn as_host(home: &Home, h: usize, args: &[&str]) -> Command {
    let mut c = home.orch(args);
    c.env("ORCH_HOST_ID", format!("h{h}"))
        .env("ORCH_STATE_DIR", home.path(&format!("state-h{h}")));
    c
}

/// Starts every command at once and waits for all: the wall time from the first start
/// to the last exit, and each one's output.
fn all_at_once(cmds: Vec<Command>) -> (Duration, Vec<Output>) {
    let t0 = Instant::now();
    let children: Vec<_> = cmds
        .into_iter()
        .map(|mut c| {
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn orch")
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    (t0.elapsed(), outs)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One row of the final table: what was measured, and the two engines' figures.
struct Row {
    what: String,
    target: &'static str,
    sqlite: String,
    postgres: String,
}

fn status(engine: Engine, runs: usize) -> (String, f64) {
    let fresh = Fresh::new(engine);
    let home = Home::with_projects_on(3, fresh.url());
    let t0 = Instant::now();
    common::seed_status(&home.conn(), STATUS_JOBS, STATUS_TASKS);
    fresh.settle(&home);
    println!(
        "  {}: seeded {STATUS_JOBS} jobs / {STATUS_TASKS} tasks in {:.1}s",
        engine.name(),
        t0.elapsed().as_secs_f64()
    );
    let m = measure(runs, || home.orch(&["status"]));
    println!("  {}: status: {m}", engine.name());
    (format!("{:.1} ms", ms(m.median)), ms(m.median))
}

/// One drain: seeds the queue, runs rounds of 3 dispatches at once until nothing is
/// queued; returns claims per second and the check of exactly once.
fn dispatch_once(engine: Engine) -> (f64, usize) {
    let fresh = Fresh::new(engine);
    let home = Home::with_projects_on(4, fresh.url());
    home.seed_fast(DISPATCH_JOBS, 4, None);
    fresh.settle(&home);
    // The launcher: `systemctl start orch-job@<id>.service` finds this `systemctl`,
    // which exits at once; the claim before it is the real one.
    let bin = home.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink("/bin/true", bin.join("systemctl")).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let mut started = 0usize;
    let mut lost = 0usize;
    let mut rounds = 0usize;
    let mut wall = Duration::ZERO;
    while home.count_on("SELECT count(*) FROM jobs WHERE status = 'queued'") > 0 {
        rounds += 1;
        assert!(rounds <= 50, "still queued after 50 rounds");
        let cmds = (0..HOSTS)
            .map(|h| {
                let mut c = as_host(&home, h, &["dispatch"]);
                c.env("ORCH_MAX_CONCURRENCY", "100000")
                    .env("ORCH_JOB_LAUNCHER", "systemd")
                    .env("ORCH_LOG", "info")
                    .env("PATH", &path);
                c
            })
            .collect();
        let (took, outs) = all_at_once(cmds);
        wall += took;
        for out in &outs {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "dispatch failed: {err}");
            started += counted(&err, "started");
            lost += counted(&err, "lost_race");
            assert_eq!(counted(&err, "launch_failed"), 0, "{err}");
        }
    }
    // Exactly once: each job claimed by one process, once.
    let running = home.count_on("SELECT count(*) FROM jobs WHERE status = 'running'");
    let again = home.count_on("SELECT count(*) FROM jobs WHERE attempt > 1");
    let queued = home.count_on("SELECT count(*) FROM jobs WHERE status = 'queued'");
    assert_eq!(started, DISPATCH_JOBS, "claims counted by the passes");
    assert_eq!(running, DISPATCH_JOBS as i64, "running jobs");
    assert_eq!((queued, again), (0, 0), "queued, attempt > 1");
    let rate = DISPATCH_JOBS as f64 / wall.as_secs_f64();
    println!(
        "  {}: dispatch: {DISPATCH_JOBS} claims by {HOSTS} hosts in {rounds} round(s), {:.2}s: {rate:.0} claims/s; {lost} lost races; exactly once: started {started}, running {running}, queued {queued}, attempt>1 {again}",
        engine.name(),
        wall.as_secs_f64()
    );
    (rate, rounds)
}

/// The `key=N` of a pass's summary line in `stderr` (0 when absent).
fn counted(stderr: &str, key: &str) -> usize {
    let pat = format!(" {key}=");
    stderr
        .lines()
        .filter(|l| l.contains("dispatch: queued="))
        .filter_map(|l| {
            let at = l.find(&pat)? + pat.len();
            l[at..].split_whitespace().next()?.parse::<usize>().ok()
        })
        .sum()
}

fn dispatch(engine: Engine, repeat: usize) -> (String, f64) {
    let rates: Vec<f64> = (0..repeat).map(|_| dispatch_once(engine).0).collect();
    let m = median(rates.clone());
    let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    (
        format!("{m:.0} claims/s (of {}), exactly once", all.join(", ")),
        m,
    )
}

fn reap(engine: Engine, runs: usize, stamps: &[[i64; 4]]) -> (String, f64) {
    let fresh = Fresh::new(engine);
    let home = Home::with_projects_on(4, fresh.url());
    home.seed_fast(REAP_JOBS, 4, Some(stamps));
    // A third on each host, each heartbeating, as the supervisors of 3 hosts leave them.
    home.conn()
        .execute(
            "UPDATE jobs SET host = 'h' || (id % 3), heartbeat_at = ?1",
            orch::sql_params![common::now_secs()],
        )
        .unwrap();
    fresh.settle(&home);
    let reaps = || {
        (0..HOSTS)
            .map(|h| as_host(&home, h, &["reap"]))
            .collect::<Vec<_>>()
    };
    let check = |outs: &[Output]| {
        for out in outs {
            assert!(
                out.status.success(),
                "reap failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    check(&all_at_once(reaps()).1);
    let times: Vec<f64> = (0..runs)
        .map(|_| {
            let (took, outs) = all_at_once(reaps());
            check(&outs);
            ms(took)
        })
        .collect();
    let running = home.count_on("SELECT count(*) FROM jobs WHERE status = 'running'");
    assert_eq!(running, REAP_JOBS as i64, "every job judged alive");
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let m = median(times);
    println!(
        "  {}: reap x{HOSTS} at once over {REAP_JOBS} running: runs={runs} median={m:.1}ms min={:.1}ms max={:.1}ms",
        engine.name(),
        sorted[0],
        sorted[sorted.len() - 1]
    );
    (format!("{m:.1} ms"), m)
}

fn main() {
    let runs = env_count("ORCH_BENCH_RUNS", 11);
    let repeat = env_count("ORCH_BENCH_REPEAT", 3);
    let admin = pg_server::admin_url();
    let mut pg = postgres::Client::connect(admin, postgres::NoTls).expect("connect");
    let version: String = pg.query_one("SHOW server_version", &[]).unwrap().get(0);
    println!(
        "scale_out: {} cores; PostgreSQL {version} on loopback; load: {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        Command::new("uptime")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
    let engines = [Engine::Sqlite, Engine::Postgres];
    let only = std::env::var("ORCH_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|w| w.trim() == name);
    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };

    if wanted("status") {
        println!("status over {STATUS_JOBS} jobs / {STATUS_TASKS} tasks:");
        let s: Vec<_> = engines.iter().map(|e| status(*e, runs)).collect();
        rows.push(Row {
            what: format!("status, {STATUS_JOBS} jobs / {STATUS_TASKS} tasks (median)"),
            target: "< 100 ms",
            sqlite: s[0].0.clone(),
            postgres: s[1].0.clone(),
        });
        verdicts.push(format!("status {}", verdict(s[1].1 < 100.0)));
    }

    if wanted("dispatch") {
        println!("dispatch, {DISPATCH_JOBS} queued, {HOSTS} hosts at once:");
        let d: Vec<_> = engines.iter().map(|e| dispatch(*e, repeat)).collect();
        rows.push(Row {
            what: format!("dispatch, {DISPATCH_JOBS} queued, {HOSTS} hosts (median of {repeat})"),
            target: ">= 1,000 claims/s",
            sqlite: d[0].0.clone(),
            postgres: d[1].0.clone(),
        });
        verdicts.push(format!("dispatch {}", verdict(d[1].1 >= 1000.0)));
    }

    if wanted("reap") {
        println!("reap, {REAP_JOBS} running, {HOSTS} hosts at once:");
        let (mut live, stamps) = common::live_stamps();
        let r: Vec<_> = engines.iter().map(|e| reap(*e, runs, &stamps)).collect();
        for c in &mut live {
            let _ = c.kill();
            let _ = c.wait();
        }
        rows.push(Row {
            what: format!("reap, {REAP_JOBS} running, {HOSTS} hosts at once (median)"),
            target: "< 200 ms",
            sqlite: r[0].0.clone(),
            postgres: r[1].0.clone(),
        });
        verdicts.push(format!("reap {}", verdict(r[1].1 < 200.0)));
    }

    println!();
    println!("| measurement | target | SQLite | PostgreSQL |");
    println!("|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} |",
            row.what, row.target, row.sqlite, row.postgres
        );
    }
    println!("targets on PostgreSQL: {}", verdicts.join(", "));
}
