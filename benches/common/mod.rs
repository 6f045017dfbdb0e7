//! The one bench harness: a temporary orch home (pipeline file, `orch init`, the
//! environment every run gets), seeding, and timing whole `orch` processes (median, p99
//! and min wall time after one warm-up run, peak RSS of the children).
//!
//! [`Home::seed_jobs`] seeds through the library (`Db`), as tests do. [`Home::seed_fast`]
//! and the `status` and `reconcile` benches write their rows with SQL in one transaction
//! with prepared statements (a million rows in seconds): they need jobs in states no
//! sequence of legal moves leaves, or sizes one transaction per task would take minutes
//! to write. The schema's triggers (kept counts, a job's project) run either way.
//!
//! A home's database is its `orch.db` file, or a PostgreSQL URL ([`Home::new_on`]);
//! [`Home::conn`] and the seeding through it work on both engines.
//!
//! Peak memory is the orch process's own: one extra run under `/usr/bin/time -f %M`
//! (the harness's own memory and other children never count).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orch::adapters::db::{Conn, Db, Move};
use orch::core::stage::{Actor, Stage};
use orch::core::task::NewTask;

/// A temporary orch home: `orch.yaml`, its database (`orch.db` or a PostgreSQL URL,
/// initialised), `state/`, `artefacts/`.
pub struct Home {
    pub dir: tempfile::TempDir,
    /// `ORCH_DB`: the file `orch.db` in `dir`, or a PostgreSQL URL.
    pub db_name: std::ffi::OsString,
}

impl Home {
    /// A home with `pipeline` as its pipeline file and an initialised database.
    pub fn new(pipeline: &str) -> Home {
        Home::new_on(pipeline, None)
    }

    /// [`Home::new`] with its database at `url` (PostgreSQL, an empty database) instead
    /// of the file `orch.db`.
    pub fn new_on(pipeline: &str, url: Option<&str>) -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("orch.yaml"), pipeline).unwrap();
        let db_name = url.map_or_else(|| dir.path().join("orch.db").into(), Into::into);
        let home = Home { dir, db_name };
        let out = home.orch(&["init"]).output().unwrap();
        assert!(
            out.status.success(),
            "orch init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        home
    }

    /// A home whose pipeline has `projects` projects `p0`, `p1`, ... (repo `acme/pN`) and
    /// a developer agent that does nothing.
    pub fn with_projects(projects: usize) -> Home {
        Home::with_projects_on(projects, None)
    }

    /// [`Home::with_projects`] with its database at `url` ([`Home::new_on`]).
    pub fn with_projects_on(projects: usize, url: Option<&str>) -> Home {
        let mut yaml = String::from("plane: { workspace: acme }\nprojects:\n");
        for p in 0..projects {
            yaml.push_str(&format!(
                "  - name: p{p}\n    plane_project_id: 00000000-0000-4000-8000-{p:012}\n    repo: acme/p{p}\n"
            ));
        }
        yaml.push_str("agents:\n  developer: [/bin/true, \"{task}\"]\n");
        Home::new_on(&yaml, url)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command for the release binary with this home's environment (and nothing else
    /// from the caller's).
    pub fn orch(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_orch"));
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("ORCH_DB", &self.db_name)
            .env("ORCH_STATE_DIR", self.path("state"))
            .env("ORCH_ARTEFACTS_DIR", self.path("artefacts"))
            .env("ORCH_CONFIG", self.path("orch.yaml"))
            .env("ORCH_LOG", "warn")
            .current_dir(self.dir.path())
            .args(args);
        c
    }

    /// A connection to the home's database on either engine, for seeding and counting.
    pub fn conn(&self) -> Conn {
        orch::adapters::db::open_conn(std::path::Path::new(&self.db_name)).expect("open db")
    }

    /// The single integer `sql` returns, on either engine.
    pub fn count_on(&self, sql: &str) -> i64 {
        self.conn()
            .query_row(sql, orch::sql_params![], |r| r.get(0))
            .unwrap()
    }

    /// A SQLite connection to the home's `orch.db`, for seeding and counting.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path("orch.db")).unwrap()
    }

    /// The single integer `sql` returns.
    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Seeds `n` development tasks spread over `projects` projects (`p0`, ...) through the
    /// library, as the binary writes them: each created and moved to development, which
    /// enqueues its developer job (task `i` at instant `i`). With `running`, every job is
    /// then started and stamped round-robin with `stamps` (pid, start time) in one
    /// statement: what dispatch's claim and the supervisor's stamp write, in bulk (one
    /// claim per job re-counts the running jobs, quadratic at 100,000).
    pub fn seed_jobs(&self, n: usize, projects: usize, running: Option<&[(i64, i64)]>) {
        let mut db = Db::open(&self.path("orch.db")).expect("open db");
        for i in 0..n {
            let at = i as i64;
            let task = NewTask {
                project: format!("p{}", i % projects),
                work_item_id: format!("wi-{i}"),
                key: format!("K-{i}"),
                title: "t".into(),
                repo: "acme/x".into(),
                branch: format!("k-{i}"),
                priority: orch::core::priority::Priority::None,
            };
            let id = db
                .create_task(&task, Actor::Operator, "seeded", at)
                .expect("create task")
                .id();
            db.move_task(&Move::new(
                id,
                Stage::Analysis,
                Stage::Development,
                "seeded",
                Actor::Operator,
                at,
            ))
            .expect("move to development");
        }
        if let Some(stamps) = running {
            let tx = db.conn_mut().transaction().unwrap();
            {
                let mut start = tx
                    .prepare(
                        "UPDATE jobs SET status = 'running', started_at = ?2, pid = ?3,
                                pid_start_time = ?4
                         WHERE id = ?1 AND status = 'queued'",
                    )
                    .unwrap();
                let ids: Vec<i64> = tx
                    .prepare("SELECT id FROM jobs ORDER BY id")
                    .unwrap()
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                for (k, id) in ids.into_iter().enumerate() {
                    let (pid, pid_start) = stamps[k % stamps.len()];
                    assert_eq!(
                        start
                            .execute(orch::sql_params![id, now_secs(), pid, pid_start])
                            .unwrap(),
                        1
                    );
                }
            }
            tx.commit().unwrap();
        }
    }
}

impl Home {
    /// Seeds `n` development tasks over `projects` projects (`p0`, ...), each with one
    /// developer job, in one transaction with prepared statements. Without `running`
    /// every job is queued (task `i` enqueued at instant `i`); with it every job runs,
    /// stamped round-robin with `stamps`: (pid, start time, supervisor pid, supervisor
    /// start time), as the supervisor and the agent stamp every real row.
    ///
    /// Works on either engine (one prepared statement per row: on PostgreSQL one round
    /// trip each: 100,000 rows take minutes on a loaded machine).
    pub fn seed_fast(&self, n: usize, projects: usize, running: Option<&[[i64; 4]]>) {
        let conn = self.conn();
        let tx = conn.transaction().unwrap();
        {
            let mut task = tx
                .prepare(
                    "INSERT INTO tasks (id, project, work_item_id, key, title, repo, branch, stage,
                                        stage_entered_at, created_at, updated_at, priority)
                     VALUES (?1, ?2, ?3, ?4, 't', 'acme/x', ?5, 'development', ?6, ?6, ?6, ?7)",
                )
                .unwrap();
            let mut job = tx
                .prepare(
                    "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at,
                                       started_at, pid, pid_start_time, supervisor_pid,
                                       supervisor_start_time, log_path)
                     VALUES (?1, 'developer', 'development', ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .unwrap();
            let now = now_secs();
            for i in 0..n {
                let id = i as i64 + 1;
                let at = i as i64;
                task.execute(orch::sql_params![
                    id,
                    format!("p{}", i % projects),
                    format!("wi-{i}"),
                    format!("K-{i}"),
                    format!("k-{i}"),
                    at,
                    // Every priority, round-robin: dispatch's queue order reads them all.
                    orch::core::priority::Priority::ALL[i % 5].as_str()
                ])
                .unwrap();
                match running {
                    None => job.execute(orch::sql_params![
                        id,
                        "queued",
                        at,
                        None::<i64>,
                        None::<i64>,
                        None::<i64>,
                        None::<i64>,
                        None::<i64>,
                        None::<String>
                    ]),
                    Some(stamps) => {
                        let [pid, start, sup, sup_start] = stamps[i % stamps.len()];
                        job.execute(orch::sql_params![
                            id,
                            "running",
                            at,
                            now,
                            pid,
                            start,
                            sup,
                            sup_start,
                            format!("/var/log/orch/jobs/{id}.log")
                        ])
                    }
                }
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

pub const STAGES: [&str; 7] = [
    "analysis",
    "development",
    "review",
    "deploy-staging",
    "deploy",
    "done",
    "cancelled",
];
pub const AGENTS: [&str; 4] = ["analyst", "developer", "reviewer", "deployer"];
pub const STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

pub const OUTCOMES: [&str; 4] = ["started", "moved", "ignored", "stale"];

/// The rows of the `status` benches: `n_tasks` tasks over 3 projects and every stage
/// (one in 500 escalated), `n_jobs` jobs (a history of finished ones, ~1% running, never
/// two live per task and stage) and as many deliveries as tasks (1% pending, the rest
/// acted on, a quarter of those stale), one recorded pass; in one transaction with
/// prepared statements, on either engine. The schema's triggers keep the counts.
pub fn seed_status(conn: &Conn, n_jobs: i64, n_tasks: i64) {
    let tx = conn.transaction().unwrap();
    let now = 1_795_575_600_i64;
    {
        let mut t = tx
            .prepare("INSERT INTO tasks (project, work_item_id, key, title, repo, branch, stage, stage_entered_at, created_at, updated_at, escalated_at, escalation_reason) VALUES (?1, ?2, ?3, 't', 'acme/x', ?4, ?5, ?6, ?6, ?6, ?7, ?8)")
            .unwrap();
        for i in 0..n_tasks {
            let escalated = (i % 500 == 0).then_some(now - i);
            t.execute(orch::sql_params![
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
            j.execute(orch::sql_params![
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
            .prepare("INSERT INTO deliveries (body_sha256, delivery_id, event, body, received_at, outcome, processed_at) VALUES (?1, ?1, 'issue', ?4, ?2, ?3, ?2)")
            .unwrap();
        for i in 0..n_tasks {
            // 1% still pending; the rest acted on, a quarter of those stale.
            let outcome = if i % 100 == 0 {
                "pending"
            } else {
                OUTCOMES[(i % 4) as usize]
            };
            d.execute(orch::sql_params![
                format!("sha-{i}"),
                now - i,
                outcome,
                b"{}".to_vec()
            ])
            .unwrap();
        }
        tx.execute(
            "INSERT INTO passes (command, started_at, duration_ms, outcome, counts) VALUES ('reap', ?1, 12, 'ok', '{\"flipped\":1}')",
            orch::sql_params![now - 60],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// A few real live processes to stamp running jobs with (`/bin/sleep`, killed by the
/// caller): 4 stamps of (agent pid, its start time, supervisor pid, its start time), as
/// the supervisor and the agent stamp every real row, so `reap` judges every job alive.
pub fn live_stamps() -> (Vec<std::process::Child>, Vec<[i64; 4]>) {
    let live: Vec<std::process::Child> = (0..8)
        .map(|_| {
            Command::new("/bin/sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .spawn()
                .expect("sleep")
        })
        .collect();
    let start = |c: &std::process::Child| {
        let pid = i64::from(c.id());
        (pid, orch::adapters::process::start_time(pid).expect("live"))
    };
    let stamps = (0..4)
        .map(|k| {
            let (pid, st) = start(&live[k]);
            let (sup, sup_st) = start(&live[k + 4]);
            [pid, st, sup, sup_st]
        })
        .collect();
    (live, stamps)
}

/// Runs `sql` with the `sqlite3` shell on `db` (output discarded): the floor of a pass
/// whose work is that SQL. Needs `sqlite3` on PATH.
pub fn sqlite3(db: &std::path::Path, sql: &str) -> Command {
    let mut c = Command::new("sqlite3");
    c.env_clear().env("PATH", "/usr/bin:/bin").arg(db).arg(sql);
    c
}

/// Runs `cmd` once under `strace -f -e trace=<trace> <extra>` with stdin from `stdin` and
/// returns the trace (`strace -o`'s file), or `None` without `strace` on PATH.
pub fn strace(
    cmd: &Command,
    stdin: &std::path::Path,
    trace: &str,
    extra: &[&str],
) -> Option<String> {
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let mut c = Command::new("strace");
    c.env_clear()
        .arg("-f")
        .arg("-o")
        .arg(out_file.path())
        .arg(format!("-e trace={trace}").replace(' ', ""))
        .args(extra)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    let status = c
        .stdin(std::fs::File::open(stdin).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    assert!(status.success(), "under strace: {status}");
    Some(std::fs::read_to_string(out_file.path()).unwrap())
}

/// The calls counted on the `total` line of a `strace -c` summary.
pub fn strace_total_calls(summary: &str) -> i64 {
    summary
        .lines()
        .find(|l| l.trim_end().ends_with("total"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The median of `runs` timings of `once`, work done in the bench's own process (a
/// floor with no process of its own: a `/proc` walk, a parse), each run timing itself.
pub fn median_in_process(runs: usize, mut once: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..runs.max(1)).map(|_| once()).collect();
    times.sort();
    times[times.len() / 2]
}

/// Prints how a series of sizes grew: `name growth: 1000→10000 ×9.8, ...`.
pub fn report_growth(name: &str, points: &[(usize, Duration)]) {
    let steps: Vec<String> = points
        .windows(2)
        .map(|w| {
            format!(
                "{}→{} ×{:.1}",
                w[0].0,
                w[1].0,
                w[1].1.as_secs_f64() / w[0].1.as_secs_f64()
            )
        })
        .collect();
    println!("{name} growth: {}", steps.join(", "));
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What a series of runs measured.
pub struct Measured {
    pub runs: usize,
    pub median: Duration,
    pub p99: Duration,
    pub min: Duration,
    /// The CPU time (user + system) of one run, the mean over the timed runs: the
    /// measured process's own (and its children's), never the harness's or its
    /// stand-ins' threads.
    pub cpu: Duration,
    pub max_rss_kib: i64,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "runs={} median={:.2}ms p99={:.2}ms min={:.2}ms cpu={:.2}ms peak_rss={:.1}MiB",
            self.runs,
            self.median.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.min.as_secs_f64() * 1e3,
            self.cpu.as_secs_f64() * 1e3,
            self.max_rss_kib as f64 / 1024.0
        )
    }
}

/// Runs `make()` `runs` times (after one warm-up), each to completion with stdout
/// discarded, and measures it. Panics if a run fails: a benchmark of a failing command measures nothing.
pub fn measure(runs: usize, mut make: impl FnMut() -> Command) -> Measured {
    let warm = make().stdout(Stdio::null()).output().expect("spawn");
    assert!(
        warm.status.success(),
        "warm-up failed: {}",
        String::from_utf8_lossy(&warm.stderr)
    );
    let mut times = Vec::with_capacity(runs);
    let cpu_before = children_cpu();
    for _ in 0..runs {
        let mut cmd = make();
        cmd.stdout(Stdio::null());
        let start = Instant::now();
        let out = cmd.output().expect("spawn");
        times.push(start.elapsed());
        assert!(
            out.status.success(),
            "run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cpu = (children_cpu() - cpu_before) / u32::try_from(runs.max(1)).unwrap();
    times.sort();
    let pick = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    Measured {
        runs,
        median: pick(0.5),
        p99: pick(0.99),
        min: times[0],
        cpu,
        max_rss_kib: peak_rss_kib(make()),
    }
}

/// The CPU time (user + system) of every child waited for so far.
fn children_cpu() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    secs(u.user_time()) + secs(u.system_time())
}

/// Runs `cmd` once more under `/usr/bin/time -f %M` and returns that process's own peak
/// RSS (KiB); without `/usr/bin/time`, the largest peak of any child so far.
fn peak_rss_kib(cmd: Command) -> i64 {
    let time = std::path::Path::new("/usr/bin/time");
    if time.exists() {
        let mut t = Command::new(time);
        t.env_clear()
            .args(["-f", "%M"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                t.env(k, v);
            }
        }
        if let Some(dir) = cmd.get_current_dir() {
            t.current_dir(dir);
        }
        let out = t
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .expect("spawn");
        let err = String::from_utf8_lossy(&out.stderr);
        if let Some(kib) = err.lines().last().and_then(|l| l.trim().parse().ok()) {
            return kib;
        }
    }
    // ru_maxrss of RUSAGE_CHILDREN: the largest peak of any child waited for so far (KiB).
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage")
        .max_rss()
}

/// Prints one measured line: `name: runs=... median=...`.
pub fn report(name: &str, m: &Measured) {
    println!("{name}: {m}");
}
