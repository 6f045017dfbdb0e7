//! `dispatch`, `run-job`, `reap` and `job` with real processes, real SQLite and real
//! locks. Time is stepped with `ORCH_NOW`; tests wait on events (a line on a pipe or a
//! FIFO, `wait()`, a pidfd), never on sleeps.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orch::sql_params as params;
use rustix::process::Pid;

use orch::adapters::lock::LockFile;
use orch::adapters::process::{start_time, wait_exit};
use orch::clock::FixedClock;
use orch::config::{Config, Overrides};
use orch::ops::pass::PassContext;

use crate::common::{pipeline, seed_tasks, Project, SeedTask, TestEnv, JOB_FIELDS, NOW_UNIX};

const AGENT: &str = env!("CARGO_BIN_EXE_orch-test-agent");

/// A pipeline whose agents are the test agent with every placeholder, plus `extra` args.
pub(crate) fn pipeline(extra: &str) -> String {
    let argv = format!(
        "[{AGENT}, {extra} \"{{task}}\", \"{{job}}\", \"{{branch}}\", \"{{repo}}\", \"{{artefacts}}\"]"
    );
    let agents = format!("analyst: {argv}\ndeveloper: {argv}\nreviewer: {argv}\ndeployer: {argv}");
    let projects = [Project::orch().self_hosting(false), Project::shop()];
    pipeline::render(&projects, &agents, "")
}

/// Inserts `n` tasks of `project` at `stage`, each with one job of `status`; returns the
/// job ids.
pub(crate) fn seed(env: &TestEnv, project: &str, n: usize, stage: &str, status: &str) -> Vec<i64> {
    env.run(&["init"]).expect(0);
    let agent = match stage {
        "analysis" => "analyst",
        "development" => "developer",
        "review" => "reviewer",
        _ => "deployer",
    };
    let base = env.count("SELECT coalesce(max(id), 0) FROM tasks");
    let tasks: Vec<SeedTask> = (base + 1..=base + n as i64)
        .map(|k| {
            let mut t = SeedTask::new(&Project::orch(), k as u64, stage.parse().expect("a stage"))
                .work_item(&format!("wi-{k}"))
                .branch(&format!("orch-{k}"))
                .title("t")
                .at(0);
            t.project = project.to_string();
            t
        })
        .collect();
    let task_ids = seed_tasks(env, &tasks);
    let c = env.db();
    let tx = c.transaction().unwrap();
    let mut ids = Vec::new();
    for (task, k) in task_ids.into_iter().zip(base + 1..) {
        ids.push(
            tx.query_row(
                "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at, started_at)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6) RETURNING id",
                params![
                    task,
                    agent,
                    stage,
                    status,
                    NOW_UNIX - 100 + k,
                    (status == "running").then_some(NOW_UNIX - 60)
                ],
                |r| r.get::<_, i64>(0),
            )
            .unwrap(),
        );
    }
    tx.commit().unwrap();
    ids
}

fn stamp(env: &TestEnv, job: i64, pid: i64, start: Option<i64>) {
    env.db()
        .execute(
            "UPDATE jobs SET pid = ?2, pid_start_time = ?3 WHERE id = ?1",
            params![job, pid, start],
        )
        .unwrap();
}

fn job_row(env: &TestEnv, job: i64) -> (String, Option<String>, i64, i64, Option<i64>) {
    env.db()
        .query_row(
            "SELECT status, reap_reason, rescue_count, dead_ticks, exit_code FROM jobs WHERE id = ?1",
            [job],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap()
}

/// A pid that was just alive and is now gone (its start time cannot match anything).
fn dead_pid() -> i64 {
    let mut c = Command::new("/bin/true").spawn().unwrap();
    let pid = i64::from(c.id());
    c.wait().unwrap();
    pid
}

/// Kills a test agent's whole process group when a test ends, passed or failed, so no
/// grandchild outlives the test.
struct GroupGuard(i64);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(p) = Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::Kill);
        }
    }
}

/// Starts the test agent as our child in its own process group and waits for `ready`.
fn agent(args: &[&str]) -> (Child, Vec<i64>, GroupGuard) {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(AGENT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.starts_with("ready "))
        .expect("agent says ready");
    let pids: Vec<i64> = ready
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    let guard = GroupGuard(pids[0]);
    (child, pids, guard)
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success());
}

fn read_fifo_line(path: &Path) -> String {
    let mut s = String::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn at(secs_after_now: i64) -> String {
    jiff::Timestamp::from_second(NOW_UNIX + secs_after_now)
        .unwrap()
        .to_string()
}

fn context(env: &TestEnv) -> PassContext {
    let vars: BTreeMap<String, String> = env.env.clone();
    let config = Config::load(&vars, &Overrides::default()).expect("config");
    let now = config.settings.now.0.expect("tests pin ORCH_NOW");
    PassContext::new(config, Box::new(FixedClock(now)))
}

#[test]
fn a_sigkilled_agent_is_flipped_only_after_the_configured_passes() {
    let env = TestEnv::with_pipeline(&pipeline(""));
    let job = seed(&env, "orch", 1, "development", "running")[0];
    let (mut child, pids, _guard) = agent(&["--hold"]);
    let pid = pids[0];
    stamp(&env, job, pid, start_time(pid));
    env.run(&["reap"]).expect(0);
    assert_eq!(job_row(&env, job).0, "running", "alive: left alone");
    assert_eq!(job_row(&env, job).3, 0);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for pass in 1..=2 {
        env.run(&["reap"]).expect(0);
        let row = job_row(&env, job);
        assert_eq!(
            (row.0.as_str(), row.3),
            ("running", pass),
            "not before 3 passes"
        );
    }
    let out = env.run(&["reap"]).expect(0);
    assert!(out.stderr.contains("flipped_dead_pid=1"), "{}", out.stderr);
    let row = job_row(&env, job);
    assert_eq!(
        (row.0.as_str(), row.1.as_deref(), row.2),
        ("failed", Some("dead-pid"), 1)
    );
    // A flip never moves the task.
    assert_eq!(
        env.count("SELECT count(*) FROM tasks WHERE stage = 'development'"),
        1
    );
}

#[test]
fn a_dead_leader_is_flipped_as_dead_pid_and_its_leftover_group_terminated() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_REAPER_DEAD_TICKS", "1")
        .set("ORCH_REAPER_KILL_GRACE_S", "1");
    let job = seed(&env, "orch", 1, "development", "running")[0];
    // The agent forks a grandchild into its group, then the agent alone is SIGKILLed.
    let (mut child, pids, _guard) = agent(&["--fork", "--hold"]);
    stamp(&env, job, pids[0], start_time(pids[0]));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        start_time(pids[1]).is_some(),
        "the grandchild outlives its parent"
    );
    // Long past the backstop: still the dead-pid tier (tier 2 before tier 3).
    env.set("ORCH_NOW", &at(100_000));
    let out = env.run(&["reap"]).expect(0);
    let row = job_row(&env, job);
    assert_eq!(
        (row.0.as_str(), row.1.as_deref()),
        ("failed", Some("dead-pid")),
        "{}",
        out.stderr
    );
    assert!(
        wait_exit(pids[1], Duration::from_secs(30)),
        "grandchild {} terminated with its group",
        pids[1]
    );
}

#[test]
fn a_process_seen_alive_again_resets_the_streak() {
    let env = TestEnv::with_pipeline(&pipeline(""));
    let job = seed(&env, "orch", 1, "development", "running")[0];
    let (mut child, pids, _guard) = agent(&["--hold"]);
    env.db()
        .execute("UPDATE jobs SET dead_ticks = 2 WHERE id = ?1", [job])
        .unwrap();
    stamp(&env, job, pids[0], start_time(pids[0]));
    env.run(&["reap"]).expect(0);
    assert_eq!(job_row(&env, job).3, 0);
    drop(child.stdin.take());
    child.wait().unwrap();
}

#[test]
fn a_recorded_exit_code_is_flipped_on_the_next_pass() {
    let env = TestEnv::with_pipeline(&pipeline(""));
    let jobs = seed(&env, "orch", 2, "development", "running");
    // The supervisor recorded the code and was killed before the flip.
    for (job, code) in jobs.iter().zip([0, 4]) {
        stamp(&env, *job, dead_pid(), Some(1));
        env.db()
            .execute(
                "UPDATE jobs SET exit_code = ?2, supervisor_pid = ?3 WHERE id = ?1",
                params![job, code, dead_pid()],
            )
            .unwrap();
    }
    env.run(&["reap"]).expect(0);
    let a = job_row(&env, jobs[0]);
    let b = job_row(&env, jobs[1]);
    assert_eq!(
        (a.0.as_str(), a.1.as_deref(), a.2),
        ("succeeded", Some("exit-code"), 1)
    );
    assert_eq!(
        (b.0.as_str(), b.1.as_deref(), b.4),
        ("failed", Some("exit-code"), Some(4))
    );
}

#[test]
fn a_reap_that_could_not_write_what_it_decided_exits_2() {
    let env = TestEnv::with_pipeline(&pipeline(""));
    let job = seed(&env, "orch", 1, "development", "running")[0];
    stamp(&env, job, dead_pid(), Some(1));
    let db = env.db();
    db.execute(
        "UPDATE jobs SET exit_code = 0, supervisor_pid = ?2 WHERE id = ?1",
        params![job, dead_pid()],
    )
    .unwrap();
    // The database refuses every write to jobs (as a read-only or failing disk would).
    db.execute_batch(match crate::common::backend() {
        crate::common::Backend::Sqlite => {
            "CREATE TRIGGER jobs_frozen BEFORE UPDATE ON jobs
             BEGIN SELECT RAISE(ABORT, 'attempt to write a readonly database'); END;"
        }
        crate::common::Backend::Postgres => {
            "CREATE FUNCTION jobs_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'attempt to write a readonly database'; END $$;
             CREATE TRIGGER jobs_frozen BEFORE UPDATE ON jobs
             FOR EACH ROW EXECUTE FUNCTION jobs_frozen();"
        }
    })
    .unwrap();
    let out = env.run(&["reap"]).expect(2);
    assert!(out.stderr.contains("readonly database"), "{}", out.stderr);
    assert!(
        out.stderr.contains("could not be handled"),
        "{}",
        out.stderr
    );
    assert_eq!(job_row(&env, job).0, "running");
    db.execute_batch(match crate::common::backend() {
        crate::common::Backend::Sqlite => "DROP TRIGGER jobs_frozen",
        crate::common::Backend::Postgres => "DROP TRIGGER jobs_frozen ON jobs",
    })
    .unwrap();
    env.run(&["reap"]).expect(0);
    assert_eq!(job_row(&env, job).0, "succeeded");
}

/// Asserts that `job` was flipped as dead (`dead-pid`) while the unrelated live process
/// `me` its stamps pointed at was not touched.
#[track_caller]
fn flipped_dead_and_left_alone(env: &TestEnv, job: i64, me: i64) {
    let row = job_row(env, job);
    assert_eq!(
        (row.0.as_str(), row.1.as_deref()),
        ("failed", Some("dead-pid"))
    );
    assert!(
        start_time(me).is_some(),
        "the unrelated process was not touched"
    );
}

#[test]
fn a_reused_pid_counts_as_dead() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_REAPER_DEAD_TICKS", "1");
    let job = seed(&env, "orch", 1, "development", "running")[0];
    // This test process is alive and unrelated: stamp it with a wrong start time.
    let me = i64::from(std::process::id());
    stamp(&env, job, me, Some(start_time(me).unwrap() + 1));
    env.run(&["reap"]).expect(0);
    flipped_dead_and_left_alone(&env, job, me);
}

#[test]
fn a_reused_supervisor_pid_is_neither_alive_nor_signalled() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_REAPER_DEAD_TICKS", "1")
        .set("ORCH_REAPER_KILL_GRACE_S", "1");
    let job = seed(&env, "orch", 1, "development", "running")[0];
    // Claimed, no agent pid yet; the supervisor pid now belongs to this (unrelated, live)
    // test process, stamped with another start time. Past the backstop, too.
    let me = i64::from(std::process::id());
    env.db()
        .execute(
            "UPDATE jobs SET supervisor_pid = ?2, supervisor_start_time = ?3 WHERE id = ?1",
            orch::sql_params![job, me, start_time(me).unwrap() + 1],
        )
        .unwrap();
    env.set("ORCH_NOW", &at(100_000));
    env.run(&["reap"]).expect(0);
    flipped_dead_and_left_alone(&env, job, me);
}

#[test]
fn the_backstop_terminates_the_whole_group_then_flips() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_REAPER_MAX_RUNNING_S", "600")
        .set("ORCH_REAPER_KILL_GRACE_S", "1");
    let jobs = seed(&env, "orch", 2, "development", "running");
    // One dies on TERM; the other ignores TERM (and so does its grandchild): KILL after grace.
    let (mut polite, p, _g1) = agent(&["--fork", "--hold"]);
    let (mut stubborn, s, _g2) = agent(&["--fork", "--hold", "--ignore-term"]);
    stamp(&env, jobs[0], p[0], start_time(p[0]));
    stamp(&env, jobs[1], s[0], start_time(s[0]));
    env.run(&["reap"]).expect(0);
    assert_eq!(job_row(&env, jobs[0]).0, "running", "within the limit");
    env.set("ORCH_NOW", &at(600));
    let out = env.run(&["reap"]).expect(0);
    assert!(
        out.stderr.contains("flipped_max_running=2"),
        "{}",
        out.stderr
    );
    for (job, (child, pids)) in jobs.iter().zip([(&mut polite, &p), (&mut stubborn, &s)]) {
        let row = job_row(&env, *job);
        assert_eq!(
            (row.0.as_str(), row.1.as_deref()),
            ("failed", Some("max-running"))
        );
        let st = child.wait().unwrap();
        assert!(
            st.code().is_none(),
            "job {job} killed by a signal: {st:?}\n{}",
            out.stderr
        );
        assert_eq!(start_time(pids[1]), None, "grandchild {} is gone", pids[1]);
    }
}

#[test]
fn a_silent_agent_is_stopped_as_stalled_and_a_chatty_one_left_alone() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_AGENT_STALL_S", "900")
        .set("ORCH_REAPER_KILL_GRACE_S", "1");
    let jobs = seed(&env, "orch", 2, "development", "running");
    let (mut silent, s, _g1) = agent(&["--fork", "--hold"]);
    let (_chatty, c, _g2) = agent(&["--hold"]);
    let logs: Vec<PathBuf> = jobs
        .iter()
        .map(|j| env.dir.path().join(format!("job-{j}.log")))
        .collect();
    for ((job, pid), log) in jobs.iter().zip([s[0], c[0]]).zip(&logs) {
        stamp(&env, *job, pid, start_time(pid));
        std::fs::write(log, "== orch run-job\n").unwrap();
        env.db()
            .execute(
                "UPDATE jobs SET log_path = ?2 WHERE id = ?1",
                params![job, log.display().to_string()],
            )
            .unwrap();
    }
    let speak = |what: &str| {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&logs[1])
            .unwrap();
        writeln!(f, "{what}").unwrap();
    };
    let grew_at = |env: &TestEnv, job: i64| -> (Option<i64>, Option<i64>) {
        env.db()
            .query_row(
                "SELECT log_size, log_grew_at FROM jobs WHERE id = ?1",
                [job],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    // The first pass stores each log's size with the pass time.
    env.run(&["reap"]).expect(0);
    assert_eq!(grew_at(&env, jobs[0]), (Some(16), Some(NOW_UNIX)));
    speak("working on it");
    env.set("ORCH_NOW", &at(899));
    let out = env.run(&["reap"]).expect(0);
    assert!(out.stderr.contains("flipped=0"), "{}", out.stderr);
    assert_eq!(
        grew_at(&env, jobs[1]).1,
        Some(NOW_UNIX + 899),
        "the chatty log grew"
    );
    speak("still working");
    env.set("ORCH_NOW", &at(900));
    let out = env.run(&["reap"]).expect(0);
    assert!(out.stderr.contains("flipped_stalled=1"), "{}", out.stderr);
    let row = job_row(&env, jobs[0]);
    assert_eq!(
        (row.0.as_str(), row.1.as_deref(), row.2),
        ("failed", Some("stalled"), 1)
    );
    let st = silent.wait().unwrap();
    assert!(st.code().is_none(), "killed by a signal: {st:?}");
    assert_eq!(
        start_time(s[1]),
        None,
        "its grandchild {} is gone too",
        s[1]
    );
    assert_eq!(
        job_row(&env, jobs[1]).0,
        "running",
        "the chatty one runs on"
    );
    // The chatty agent falls silent: counted from its last growth (at 900), not before.
    env.set("ORCH_NOW", &at(1799));
    env.run(&["reap"]).expect(0);
    assert_eq!(job_row(&env, jobs[1]).0, "running");
    env.set("ORCH_NOW", &at(1800));
    env.run(&["reap"]).expect(0);
    assert_eq!(job_row(&env, jobs[1]).1.as_deref(), Some("stalled"));
    // Switched off (0), a silent agent is left to the backstop.
    let mut off = TestEnv::with_pipeline(&pipeline(""));
    off.set("ORCH_AGENT_STALL_S", "0");
    let job = seed(&off, "orch", 1, "development", "running")[0];
    let (_quiet, q, _g3) = agent(&["--hold"]);
    stamp(&off, job, q[0], start_time(q[0]));
    let log = off.dir.path().join("quiet.log");
    std::fs::write(&log, "x").unwrap();
    off.db()
        .execute(
            "UPDATE jobs SET log_path = ?2 WHERE id = ?1",
            params![job, log.display().to_string()],
        )
        .unwrap();
    for secs in [0, 5000] {
        off.set("ORCH_NOW", &at(secs));
        off.run(&["reap"]).expect(0);
    }
    assert_eq!(job_row(&off, job).0, "running");
}

#[test]
fn eight_reap_passes_at_once_flip_each_dead_job_exactly_once() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_REAPER_DEAD_TICKS", "1");
    let jobs = seed(&env, "orch", 1000, "development", "running");
    let dead = dead_pid();
    env.db()
        .execute("UPDATE jobs SET pid = ?1, pid_start_time = 1", [dead])
        .unwrap();
    let children: Vec<Child> = (0..8)
        .map(|_| {
            env.command(&["reap"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<i32> = children
        .into_iter()
        .map(|mut c| c.wait().unwrap().code().unwrap())
        .collect();
    assert!(codes.iter().all(|c| *c == 0 || *c == 75), "{codes:?}");
    assert!(codes.contains(&0), "{codes:?}");
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'failed' AND rescue_count = 1"),
        jobs.len() as i64
    );
}

#[test]
fn the_guarded_update_holds_with_the_flock_bypassed() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_REAPER_DEAD_TICKS", "1");
    let jobs = seed(&env, "orch", 1000, "development", "running");
    let dead = dead_pid();
    env.db()
        .execute("UPDATE jobs SET pid = ?1, pid_start_time = 1", [dead])
        .unwrap();
    let db_path = env.db_path();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let flipped: i64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ctx = context(&env);
                let path = db_path.clone();
                let barrier = barrier.clone();
                s.spawn(move || {
                    let mut db = orch::adapters::db::Db::open(&path).unwrap();
                    barrier.wait();
                    let out =
                        orch::commands::reap::pass(&ctx, &mut db, false).expect("no pass errors");
                    out.counts
                        .iter()
                        .find(|(k, _)| *k == "flipped")
                        .map(|(_, v)| *v)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(
        flipped,
        jobs.len() as i64,
        "each job flipped by exactly one pass"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'failed' AND rescue_count = 1"),
        jobs.len() as i64
    );
}

/// A fake `systemctl` that records its argv, one line per call, and exits `code`.
pub(crate) fn fake_systemctl(env: &mut TestEnv, code: i32) -> PathBuf {
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = env.path("systemctl.calls");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> {}\n[ {code} -eq 0 ] || echo 'Failed to start unit: Unit orch-job@x.service not found.' >&2\nexit {code}\n",
        calls.display()
    );
    let path = bin.join("systemctl");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.set("PATH", &format!("{}:/usr/bin:/bin", bin.display()))
        .set("ORCH_JOB_LAUNCHER", "systemd");
    calls
}

#[test]
fn two_dispatch_passes_never_double_start_or_exceed_the_limit() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_MAX_CONCURRENCY", "3");
    let calls = fake_systemctl(&mut env, 0);
    seed(&env, "orch", 6, "development", "queued");
    seed(&env, "shop", 2, "development", "queued");
    // Through the binary (the flock), twice at once.
    let kids: Vec<Child> = (0..2)
        .map(|_| {
            env.command(&["dispatch"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut k in kids {
        let code = k.wait().unwrap().code().unwrap();
        assert!(code == 0 || code == 75, "{code}");
    }
    let lines = std::fs::read_to_string(&calls).unwrap();
    let mut started: Vec<&str> = lines.lines().collect();
    assert_eq!(started.len(), 3, "{lines}");
    started.sort_unstable();
    started.dedup();
    assert_eq!(started.len(), 3, "no job started twice: {lines}");
    assert!(started
        .iter()
        .all(|l| l.starts_with("start orch-job@") && l.ends_with(".service")));
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'running'"),
        3
    );
    // Fair: the quiet project got a slot although its jobs are younger.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM jobs j JOIN tasks t ON t.id = j.task_id
             WHERE j.status = 'running' AND t.project = 'shop'"
        ),
        1
    );
    // With the flock bypassed: eight passes racing in this process still claim only the
    // two free slots. (Their launches use this process's PATH, where systemctl may be
    // missing, so a claimed job is `running` or, launch failed, `failed`: never twice.)
    env.set("ORCH_MAX_CONCURRENCY", "5");
    let db_path = env.db_path();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let claimed: i64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ctx = context(&env);
                let path = db_path.clone();
                let barrier = barrier.clone();
                s.spawn(move || {
                    let mut db = orch::adapters::db::Db::open(&path).unwrap();
                    barrier.wait();
                    let out = orch::commands::dispatch::pass(&ctx, &mut db, false).unwrap();
                    out.counts
                        .iter()
                        .filter(|(k, _)| *k == "started" || *k == "launch_failed")
                        .map(|(_, v)| *v)
                        .sum::<i64>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    // Launches fail here (no systemd), and a failed launch flips its job to `failed`,
    // which frees its slot for another racing pass: so at least the two free slots are
    // claimed, every claim takes a distinct queued job, and the limit is never exceeded.
    assert!(claimed >= 2, "the free slots were claimed: {claimed}");
    assert!(env.count("SELECT count(*) FROM jobs WHERE status = 'running'") <= 5);
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status IN ('running', 'failed')"),
        3 + claimed,
        "each claim took a distinct job"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'queued'"),
        5 - claimed
    );
}

#[test]
fn the_systemd_launcher_failing_or_missing_fails_the_job_with_the_reason() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    let calls = fake_systemctl(&mut env, 5);
    let job = seed(&env, "orch", 1, "development", "queued")[0];
    let out = env.run(&["dispatch"]).expect(0);
    assert!(
        out.stderr.contains("Unit orch-job@x.service not found"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("exited with 5"), "{}", out.stderr);
    assert!(out.stderr.contains("launch_failed=1"), "{}", out.stderr);
    assert_eq!(job_row(&env, job).0, "failed");
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        format!("start orch-job@{job}.service\n")
    );
    // No systemctl at all.
    let empty = env.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    env.set("PATH", &empty.display().to_string());
    let job = seed(&env, "orch", 1, "development", "queued")[0];
    let out = env.run(&["dispatch"]).expect(0);
    assert!(
        out.stderr.contains("systemctl is not on PATH"),
        "{}",
        out.stderr
    );
    assert_eq!(job_row(&env, job).0, "failed");
}

#[test]
fn direct_dispatch_runs_the_agent_under_a_detached_supervisor() {
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("ready");
    mkfifo(&fifo);
    let env = TestEnv::with_pipeline(&pipeline(&format!(
        "--ready-fifo, {}, --report-session,",
        fifo.display()
    )));
    let job = seed(&env, "orch", 1, "analysis", "queued")[0];
    env.run(&["dispatch"]).expect(0);
    let ready = read_fifo_line(&fifo);
    assert!(ready.starts_with("ready "), "{ready}");
    let supervisor: i64 = env
        .db()
        .query_row(
            "SELECT supervisor_pid FROM jobs WHERE id = ?1",
            [job],
            |r| r.get(0),
        )
        .unwrap();
    // The supervisor leads a session of its own (a detached child): the agent runs in it.
    assert!(
        ready.trim_end().ends_with(&format!(" sid={supervisor}")),
        "agent session should be the supervisor's ({supervisor}): {ready}"
    );
    assert!(
        wait_exit(supervisor, Duration::from_secs(30)),
        "supervisor ends"
    );
    let row = job_row(&env, job);
    assert_eq!((row.0.as_str(), row.4), ("succeeded", Some(0)));
    let log = std::fs::read_to_string(env.path(&format!("state/jobs/{job}.log"))).unwrap();
    assert!(log.contains(&format!("ORCH_JOB_ID={job}")), "{log}");
    assert!(log.contains("args --ready-fifo"), "{log}");
    assert!(log.contains("ORCH-1 "), "{log}");
}

/// Reads `/proc/<pid>/environ` as `NAME=value` lines.
fn environ(pid: i64) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect()
}

#[test]
fn an_agent_and_its_supervisor_hold_no_secret_they_were_not_granted() {
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("ready");
    mkfifo(&fifo);
    let hold = format!(
        "[{AGENT}, --ready-fifo, {}, --hold-forever]",
        fifo.display()
    );
    let agents = format!(
        "analyst: {{ command: {hold}, credentials: [gitea], env: [LLM_KEY] }}\ndeveloper: {hold}"
    );
    let projects = [Project::orch().self_hosting(false)];
    let mut env = TestEnv::with_pipeline(&pipeline::render(&projects, &agents, ""));
    for (k, v) in [
        ("ORCH_PLANE_WEBHOOK_SECRET", "plane_wh_forge_me"),
        ("ORCH_TELEGRAM_BOT_TOKEN", "123:telegram"),
        ("ORCH_PLANE_API_KEY", "plane_api_key"),
        ("ORCH_GITEA_TOKEN", "gitea_token"),
        ("LLM_KEY", "llm_key"),
        ("UNRELATED_SECRET", "unrelated"),
    ] {
        env.set(k, v);
    }
    let secrets = [
        "plane_wh_forge_me",
        "123:telegram",
        "plane_api_key",
        "unrelated",
    ];
    for (stage, granted) in [("analysis", true), ("development", false)] {
        let job = seed(&env, "orch", 1, stage, "queued")[0];
        env.run(&["dispatch"]).expect(0);
        let ready = read_fifo_line(&fifo);
        let agent: i64 = ready.split_whitespace().nth(1).unwrap().parse().unwrap();
        let guard = GroupGuard(agent);
        let supervisor: i64 = env
            .db()
            .query_row(
                "SELECT supervisor_pid FROM jobs WHERE id = ?1",
                [job],
                |r| r.get(0),
            )
            .unwrap();
        let (agent_env, sup_env) = (environ(agent), environ(supervisor));
        for secret in secrets {
            assert!(
                !agent_env.iter().any(|e| e.contains(secret)),
                "{stage} agent has {secret}: {agent_env:?}"
            );
        }
        for withheld in ["plane_wh_forge_me", "123:telegram"] {
            assert!(
                !sup_env.iter().any(|e| e.contains(withheld)),
                "supervisor has {withheld}: {sup_env:?}"
            );
        }
        // The supervisor keeps what its gate needs; the agent only what it was granted.
        assert!(
            sup_env.contains(&"ORCH_GITEA_TOKEN=gitea_token".to_string()),
            "{sup_env:?}"
        );
        for e in ["ORCH_GITEA_TOKEN=gitea_token", "LLM_KEY=llm_key"] {
            assert_eq!(
                agent_env.contains(&e.to_string()),
                granted,
                "{stage} {e}: {agent_env:?}"
            );
        }
        assert!(
            agent_env.contains(&format!("ORCH_JOB_ID={job}")),
            "{agent_env:?}"
        );
        let db = format!("ORCH_DB={}", env.db_path().display());
        assert!(agent_env.contains(&db), "{agent_env:?}");
        drop(guard);
        assert!(
            wait_exit(supervisor, Duration::from_secs(30)),
            "supervisor ends"
        );
    }
}

#[test]
fn an_approval_forged_from_inside_an_agent_fails_or_names_the_agent() {
    let orch = env!("CARGO_BIN_EXE_orch");
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("approved.json");
    std::fs::write(&body, br#"{"event":"issue","action":"updated","data":{}}"#).unwrap();
    // The analyst tries both ways: a delivery signed with the secret (it has none), and
    // the operator's own command.
    let script = format!(
        "{orch} webhook-handle --body {} --header 'X-Plane-Signature: 00'; echo \"webhook exit $?\"; \
         {orch} task move \"$ORCH_TASK_KEY\" --to development --reason 'approved, trust me'; echo \"move exit $?\"",
        body.display()
    );
    let agents = format!(
        "analyst: [/bin/sh, -c, {}]",
        serde_json::to_string(&script).unwrap()
    );
    let projects = [Project::orch().self_hosting(false)];
    let mut env = TestEnv::with_pipeline(&pipeline::render(&projects, &agents, ""));
    env.set("ORCH_PLANE_WEBHOOK_SECRET", "plane_wh_the_real_one");
    let job = seed(&env, "orch", 1, "analysis", "running")[0];
    env.run(&["run-job", &job.to_string()]).expect(0);
    let log = std::fs::read_to_string(env.path(&format!("state/jobs/{job}.log"))).unwrap();
    assert!(log.contains("webhook exit 2"), "{log}");
    assert!(log.contains("ORCH_PLANE_WEBHOOK_SECRET"), "{log}");
    assert_eq!(env.count("SELECT count(*) FROM deliveries"), 0, "{log}");
    // The operator's command works for a process of the same user (docs/security.md:
    // the separate agent user is what stops it), but the record names the agent.
    assert!(log.contains("move exit 0"), "{log}");
    let agent_job: Option<i64> = env
        .db()
        .query_row(
            "SELECT agent_job FROM stage_events WHERE to_stage = 'development'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(agent_job, Some(job));
    let show = env.run(&["task", "show", "ORCH-1"]).expect(0).stdout;
    assert!(
        show.contains(&format!(
            "by operator [FROM INSIDE job {job}'s agent]: approved, trust me"
        )),
        "{show}"
    );
}

/// The systemd launcher cannot run here (no systemd as init): its unit must unset what
/// the direct launcher withholds (scripts/verify-units checks the unit's syntax).
#[test]
fn the_job_unit_unsets_what_the_direct_launcher_withholds() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/orch-job@.service"
    ))
    .unwrap();
    let unset: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("UnsetEnvironment="))
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(unset, orch::config::WITHHELD_FROM_JOBS, "{unit}");
}

#[test]
fn run_job_records_the_exit_code_and_lets_the_gate_decide() {
    let env = TestEnv::with_pipeline(&pipeline("--exit, \"3\","));
    let job = seed(&env, "orch", 1, "review", "running")[0];
    env.artefact(
        "ORCH-1",
        "05-review.md",
        "---\nreview_verdict: APPROVE\n---\n",
    );
    let out = env.run(&["run-job", &job.to_string()]).expect(1);
    let row = job_row(&env, job);
    assert_eq!((row.0.as_str(), row.4, row.1), ("failed", Some(3), None));
    // The exit code did not hold the task: the approved review advanced it.
    assert_eq!(
        env.count("SELECT count(*) FROM tasks WHERE stage = 'deploy-staging'"),
        1,
        "{}",
        out.stderr
    );
    assert_eq!(
        env.count("SELECT count(*) FROM stage_events WHERE actor = 'run-job'"),
        1
    );
    let log = std::fs::read_to_string(env.path(&format!("state/jobs/{job}.log"))).unwrap();
    let art = env.path("artefacts/ORCH-1").display().to_string();
    assert!(
        log.contains(&format!(
            "args --exit 3 ORCH-1 {job} orch-1 acme/orch {art}"
        )),
        "{log}"
    );
    assert!(log.contains("ORCH_TASK_KEY=ORCH-1"), "{log}");
    assert!(log.contains(&format!("ORCH_TASK_ARTEFACTS={art}")), "{log}");
    // A second supervisor for the same attempt is refused.
    let again = env.run(&["run-job", &job.to_string()]).expect(2);
    assert!(again.stderr.contains("not running"), "{}", again.stderr);
}

#[test]
fn a_development_job_waits_for_the_forge_facts() {
    let env = TestEnv::with_pipeline(&pipeline(""));
    let job = seed(&env, "orch", 1, "development", "running")[0];
    let out = env.run(&["run-job", &job.to_string()]).expect(0);
    assert!(
        out.stderr.contains("gitea is not configured"),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.count("SELECT count(*) FROM tasks WHERE stage = 'development'"),
        1
    );
}

#[test]
fn a_missing_agent_command_is_a_failed_job_not_a_crash() {
    let env = TestEnv::with_pipeline(&pipeline("").replace(AGENT, "/nonexistent/agent"));
    let job = seed(&env, "orch", 1, "analysis", "running")[0];
    let out = env.run(&["run-job", &job.to_string()]).expect(1);
    assert!(out.stderr.contains("/nonexistent/agent"), "{}", out.stderr);
    let row = job_row(&env, job);
    assert_eq!((row.0.as_str(), row.4), ("failed", Some(127)));
    let log = std::fs::read_to_string(env.path(&format!("state/jobs/{job}.log"))).unwrap();
    assert!(log.contains("agent not started"), "{log}");
}

#[test]
fn term_to_the_supervisor_reaches_the_agent_group() {
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("ready");
    mkfifo(&fifo);
    let env = TestEnv::with_pipeline(&pipeline(&format!(
        "--ready-fifo, {}, --fork, --hold-forever,",
        fifo.display()
    )));
    let job = seed(&env, "orch", 1, "analysis", "running")[0];
    let mut sup = env
        .command(&["run-job", &job.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = read_fifo_line(&fifo);
    let pids: Vec<i64> = ready
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    let _guard = GroupGuard(pids[0]);
    rustix::process::kill_process(
        Pid::from_raw(sup.id() as i32).unwrap(),
        rustix::process::Signal::Term,
    )
    .unwrap();
    assert_eq!(sup.wait().unwrap().code(), Some(1));
    let row = job_row(&env, job);
    assert_eq!((row.0.as_str(), row.4), ("failed", Some(143)));
    assert!(
        wait_exit(pids[1], Duration::from_secs(10)),
        "grandchild ends too"
    );
}

fn write_lease(env: &TestEnv, body: &str) -> PathBuf {
    let path = env.path("state/merge-lease.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, body).unwrap();
    path
}

fn lease_json(pid: i64, start: Option<i64>, acquired_at: i64, ttl: i64) -> String {
    serde_json::json!({
        "job_id": 7, "task": "ORCH-1", "pid": pid, "pid_start_time": start,
        "acquired_at": acquired_at, "ttl_s": ttl
    })
    .to_string()
}

#[test]
fn stale_leases_are_reclaimed_live_ones_kept_malformed_ones_reported() {
    let env = TestEnv::with_pipeline(&pipeline(""));
    env.run(&["init"]).expect(0);
    let me = i64::from(std::process::id());
    let mine = start_time(me);
    let cases = [
        (
            "dead holder",
            lease_json(dead_pid(), Some(1), NOW_UNIX, 3600),
            false,
        ),
        (
            "expired",
            lease_json(me, mine, NOW_UNIX - 4000, 3600),
            false,
        ),
        (
            "live within ttl",
            lease_json(me, mine, NOW_UNIX - 10, 3600),
            true,
        ),
        ("malformed", "{\"pid\": ".to_string(), true),
    ];
    for (name, body, kept) in cases {
        let path = write_lease(&env, &body);
        let out = env.run(&["reap"]).expect(0);
        assert_eq!(path.exists(), kept, "{name}: {}", out.stderr);
        if name == "malformed" {
            assert!(out.stderr.contains("malformed"), "{}", out.stderr);
            assert!(out.stderr.contains("lease_malformed=1"), "{}", out.stderr);
        }
        let status = env.run(&["status", "--json"]).expect(0).json();
        if !crate::common::sqlite_only() {
            // Under PostgreSQL the merge lease is a row (none here), not the file.
            assert_eq!(status["lease"], serde_json::Value::Null, "{status}");
        } else if kept && name != "malformed" {
            assert_eq!(status["lease"]["pid"], me, "{status}");
        }
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn switches_off_write_nothing_and_say_so() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_REAPER_ENABLED", "false")
        .set("ORCH_REAPER_DEAD_TICKS", "1");
    let job = seed(&env, "orch", 1, "development", "running")[0];
    stamp(&env, job, dead_pid(), Some(1));
    let lease = write_lease(&env, &lease_json(dead_pid(), Some(1), 0, 1));
    let out = env.run(&["reap"]).expect(0);
    assert!(
        out.stderr.contains("disabled by ORCH_REAPER_ENABLED=false"),
        "{}",
        out.stderr
    );
    assert_eq!(job_row(&env, job).0, "running");
    assert_eq!(env.count("SELECT count(*) FROM passes"), 0);
    assert!(lease.exists());
    env.set("ORCH_REAPER_ENABLED", "true")
        .set("ORCH_LEASE_RECLAIM_ENABLED", "false");
    let out = env.run(&["reap"]).expect(0);
    assert!(
        out.stderr.contains("lease reclaim disabled"),
        "{}",
        out.stderr
    );
    assert!(lease.exists(), "lease untouched");
    assert_eq!(job_row(&env, job).0, "failed", "jobs are still reaped");
}

#[test]
fn dry_runs_explain_and_change_nothing() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_REAPER_DEAD_TICKS", "1");
    let job = seed(&env, "orch", 1, "development", "running")[0];
    stamp(&env, job, dead_pid(), Some(1));
    seed(&env, "orch", 2, "analysis", "queued");
    let out = env.run(&["reap", "--dry-run"]).expect(0);
    assert!(
        out.stdout.contains("flip to failed (dead-pid)"),
        "{}",
        out.stdout
    );
    env.set("ORCH_MAX_CONCURRENCY", "2");
    let out = env.run(&["dispatch", "--dry-run"]).expect(0);
    assert!(out.stdout.contains("would start 1"), "{}", out.stdout);
    assert!(out.stdout.contains(": would start"), "{}", out.stdout);
    assert!(out.stdout.contains("wait: no free slot"), "{}", out.stdout);
    assert_eq!(job_row(&env, job).0, "running");
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'queued'"),
        2
    );
    assert_eq!(env.count("SELECT count(*) FROM passes"), 0);
}

#[test]
fn a_held_lock_makes_reap_and_dispatch_exit_75() {
    let env = TestEnv::with_pipeline(&pipeline(""));
    for pass in ["reap", "dispatch"] {
        let guard = LockFile::try_acquire(&env.path(&format!("state/locks/{pass}.lock"))).unwrap();
        let out = env.run(&[pass]).expect(75);
        assert!(out.stderr.contains("skipped"), "{}", out.stderr);
        drop(guard);
        env.run(&[pass]).expect(0);
    }
}

#[test]
fn job_list_enqueue_and_cancel() {
    let env = TestEnv::with_pipeline(&pipeline(""));
    let queued = seed(&env, "orch", 1, "analysis", "queued")[0];
    let running = seed(&env, "orch", 1, "development", "running")[0];
    let (mut child, pids, _guard) = agent(&["--fork", "--hold"]);
    stamp(&env, running, pids[0], start_time(pids[0]));
    let list = env.run(&["job", "list", "--json"]).expect(0).json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    for key in JOB_FIELDS {
        assert!(list[0].get(key).is_some(), "{key}");
    }
    let e = env
        .run(&[
            "job", "enqueue", "--task", "ORCH-1", "--agent", "analyst", "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(
        (e["id"].as_i64(), e["created"].as_bool()),
        (Some(queued), Some(false))
    );
    let bad = env
        .run(&["job", "enqueue", "--task", "ORCH-1", "--agent", "developer"])
        .expect(2);
    assert!(
        bad.stderr.contains("whose agent is analyst"),
        "{}",
        bad.stderr
    );
    env.run(&["job", "enqueue", "--task", "ORCH-1", "--agent", "poet"])
        .expect(2);
    env.run(&["job", "cancel", &queued.to_string()]).expect(0);
    env.run(&["job", "cancel", &queued.to_string()]).expect(1);
    let c = env
        .run(&["job", "cancel", &running.to_string(), "--json"])
        .expect(0)
        .json();
    assert_eq!(c["status"], "cancelled");
    assert!(
        child.wait().unwrap().code().is_none(),
        "the agent was signalled"
    );
    assert_eq!(start_time(pids[1]), None, "its grandchild too");
    env.run(&["job", "cancel", "999"]).expect(2);
    let f = env.run(&["job", "list", "--status", "cancelled"]).expect(0);
    assert_eq!(f.stdout.lines().count(), 2, "{}", f.stdout);
}

#[test]
fn job_enqueue_on_an_escalated_task_takes_it_back_and_clears_the_escalation() {
    let env = TestEnv::with_pipeline(&pipeline(""));
    let job = seed(&env, "orch", 1, "deploy-staging", "cancelled")[0];
    let task: i64 = env
        .db()
        .query_row("SELECT task_id FROM jobs WHERE id = ?1", [job], |r| {
            r.get(0)
        })
        .unwrap();
    env.db()
        .execute(
            "UPDATE tasks SET escalated_at = 1, escalation_reason = 'spend 2.00 reached ORCH_TASK_BUDGET 1.00 over 3 job(s)' WHERE id = ?1",
            [task],
        )
        .unwrap();
    // A refused enqueue (the wrong agent) leaves the escalation in place.
    env.run(&["job", "enqueue", "--task", "ORCH-1", "--agent", "developer"])
        .expect(2);
    assert_eq!(
        env.count("SELECT count(*) FROM tasks WHERE escalated_at IS NOT NULL"),
        1
    );
    let out = env
        .run(&["job", "enqueue", "--task", "ORCH-1", "--agent", "deployer"])
        .expect(0);
    assert!(
        out.stderr.contains(
            "task ORCH-1: escalation cleared (spend 2.00 reached ORCH_TASK_BUDGET 1.00 over 3 job(s))"
        ),
        "{}",
        out.stderr
    );
    let shown = env
        .run(&["task", "show", "ORCH-1", "--json"])
        .expect(0)
        .json();
    assert_eq!(
        (&shown["escalated"], &shown["escalation_reason"]),
        (&serde_json::json!(false), &serde_json::Value::Null)
    );
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'queued' AND agent = 'deployer'"),
        1
    );
    // Not escalated: nothing cleared, nothing said.
    let again = env
        .run(&["job", "enqueue", "--task", "ORCH-1", "--agent", "deployer"])
        .expect(0);
    assert!(!again.stderr.contains("escalation"), "{}", again.stderr);
}

#[test]
fn dispatch_puts_one_deploy_staging_job_on_staging_at_a_time() {
    // Two tasks in deploy-staging, a limit of 2: staging is one environment, so the
    // second deployer waits until the first has ended. Each agent blocks opening the
    // FIFO until the test reads it: the first job is really running while we look.
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("ready");
    mkfifo(&fifo);
    let mut env = TestEnv::with_pipeline(&pipeline(&format!("--ready-fifo, {},", fifo.display())));
    env.set("ORCH_MAX_CONCURRENCY", "2");
    let first = seed(&env, "orch", 1, "deploy-staging", "queued")[0];
    let second = seed(&env, "shop", 1, "deploy-staging", "queued")[0];
    let out = env.run(&["dispatch"]).expect(0);
    assert!(out.stderr.contains("started=1 "), "{}", out.stderr);
    assert!(out.stderr.contains("staging_waits=1"), "{}", out.stderr);
    assert_eq!(
        job_row(&env, first).0,
        "running",
        "the older job goes first"
    );
    assert_eq!(job_row(&env, second).0, "queued");

    // While it runs: another pass starts nothing, and says why.
    let dry = env.run(&["dispatch", "--dry-run"]).expect(0);
    assert!(dry.stdout.contains("would start 0"), "{}", dry.stdout);
    assert!(
        dry.stdout.contains(&format!(
            "job {second} (shop): waits: staging is held by deploy-staging job {first} of ORCH-1"
        )),
        "{}",
        dry.stdout
    );
    env.run(&["dispatch"]).expect(0);
    assert_eq!(
        job_row(&env, second).0,
        "queued",
        "a free slot is not enough"
    );
    let status = env.run(&["status"]).expect(0);
    assert!(
        status
            .stdout
            .contains(&format!("staging: held by job {first} (ORCH-1) for ")),
        "{}",
        status.stdout
    );
    let json = env.run(&["status", "--json"]).expect(0).json();
    assert_eq!(json["staging"]["state"], "held");
    assert_eq!(json["staging"]["holders"][0]["job_id"], first);
    assert_eq!(json["staging"]["holders"][0]["key"], "ORCH-1");

    // The first job ends: the second takes staging.
    let supervisor = |job: i64| -> i64 {
        env.db()
            .query_row(
                "SELECT supervisor_pid FROM jobs WHERE id = ?1",
                [job],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert!(read_fifo_line(&fifo).starts_with("ready "));
    assert!(wait_exit(supervisor(first), Duration::from_secs(30)));
    assert_eq!(job_row(&env, first).0, "succeeded");
    let json = env.run(&["status", "--json"]).expect(0).json();
    assert_eq!(json["staging"]["state"], "free");
    let out = env.run(&["dispatch"]).expect(0);
    assert!(out.stderr.contains("started=1 "), "{}", out.stderr);
    assert_eq!(job_row(&env, second).0, "running");
    assert!(read_fifo_line(&fifo).starts_with("ready "));
    assert!(wait_exit(supervisor(second), Duration::from_secs(30)));
    assert_eq!(job_row(&env, second).0, "succeeded");
}

#[test]
fn a_hold_leaves_the_projects_deployer_jobs_queued_and_nothing_else() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_MAX_CONCURRENCY", "1");
    let deploys = seed(&env, "shop", 2, "deploy", "queued");
    env.run(&[
        "hold",
        "set",
        "--project",
        "shop",
        "--until",
        "2h",
        "--reason",
        "release freeze",
    ])
    .expect(0);
    let out = env.run(&["dispatch"]).expect(0);
    assert!(out.stderr.contains("started=0 "), "{}", out.stderr);
    assert!(out.stderr.contains("hold_waits=2"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "job {} stays queued: project shop is on hold",
            deploys[0]
        )),
        "{}",
        out.stderr
    );
    for job in &deploys {
        assert_eq!(job_row(&env, *job).0, "queued", "held, not failed");
    }
    // The project's other work goes on, even behind older held jobs and one free slot.
    let dev = seed(&env, "shop", 1, "development", "queued")[0];
    let dry = env.run(&["dispatch", "--dry-run"]).expect(0);
    assert!(
        dry.stdout
            .contains(&format!("job {dev} (shop): would start")),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains(&format!(
            "job {} (shop): waits: project shop is on hold (until 2026-11-25T05:00:00Z",
            deploys[1]
        )),
        "{}",
        dry.stdout
    );
    // Two hours later the hold has lapsed by itself: the oldest deploy job goes first.
    env.set("ORCH_NOW", "2026-11-25T05:00:00Z");
    let dry = env.run(&["dispatch", "--dry-run"]).expect(0);
    assert!(
        dry.stdout
            .contains(&format!("job {} (shop): would start", deploys[0])),
        "{}",
        dry.stdout
    );
    assert!(!dry.stdout.contains("on hold"), "{}", dry.stdout);
}

/// `orch-dispatch.service` runs `dispatch --launcher systemd`: the flag wins over an
/// ORCH_JOB_LAUNCHER=direct from the settings file (which would otherwise start jobs
/// inside the oneshot dispatch unit, stopped when it ends); a bad value starts nothing.
#[test]
fn the_launcher_flag_wins_over_the_settings_file_and_bad_values_start_nothing() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    let calls = fake_systemctl(&mut env, 0);
    env.set("ORCH_JOB_LAUNCHER", "direct");
    let job = seed(&env, "orch", 1, "development", "queued")[0];
    for bad in ["docker", "", "SYSTEMD"] {
        let out = env.run(&["dispatch", "--launcher", bad]).expect(2);
        assert!(
            out.stderr.contains("ORCH_JOB_LAUNCHER"),
            "{bad}: {}",
            out.stderr
        );
        assert_eq!(job_row(&env, job).0, "queued", "{bad}");
    }
    assert!(!calls.exists(), "no launch on a bad value");
    env.run(&["dispatch", "--launcher", "systemd"]).expect(0);
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        format!("start orch-job@{job}.service\n")
    );
    // The unit passes the flag.
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/orch-dispatch.service"),
    )
    .unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/orch dispatch --launcher systemd"),
        "{unit}"
    );
}
