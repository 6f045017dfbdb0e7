//! More than one host on one database (docs/scale-out.md): `dispatch` claiming for its
//! host under the global limit and a per-host cap, `run-job` heartbeating and fencing
//! itself, and `reap` rescuing another host's jobs by heartbeat, exactly once. Each
//! "host" is an `orch` process with its own `ORCH_HOST_ID` and `ORCH_STATE_DIR`, all on
//! the env's one database; real processes, real `kill -9`, time stepped with
//! `ORCH_NOW`, waits on events (a FIFO line, a process exiting) with a bound.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orch::adapters::process::wait_exit;
use rustix::process::{Pid, Signal};

use crate::common::{TestEnv, NOW_UNIX};
use crate::jobs::{fake_systemctl, pipeline, seed};

/// `orch <args>` as host `host`: its own host id and state dir, the env's database.
fn on(env: &TestEnv, host: &str, args: &[&str]) -> Command {
    let mut cmd = env.command(args);
    cmd.env("ORCH_HOST_ID", host)
        .env("ORCH_STATE_DIR", env.path(&format!("state-{host}")));
    cmd
}

/// Runs `orch <args>` on `host` at `ORCH_NOW` = NOW + `after` seconds; (code, stderr).
fn run_on(env: &TestEnv, host: &str, after: i64, args: &[&str]) -> (i32, String) {
    let out = on(env, host, args)
        .env("ORCH_NOW", at(after))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn at(secs_after_now: i64) -> String {
    jiff::Timestamp::from_second(NOW_UNIX + secs_after_now)
        .unwrap()
        .to_string()
}

/// The number after `key=` in a pass's summary line.
fn count_in(stderr: &str, key: &str) -> i64 {
    let needle = format!(" {key}=");
    let at = stderr
        .rfind(&needle)
        .unwrap_or_else(|| panic!("no {key} in:\n{stderr}"));
    stderr[at + needle.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn running_on(env: &TestEnv, host: &str) -> i64 {
    env.count(&format!(
        "SELECT count(*) FROM jobs WHERE status = 'running' AND host = '{host}'"
    ))
}

/// Kills a process group when the test ends, passed or failed.
struct GroupGuard(Vec<i64>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Some(p) = Pid::from_raw(*p as i32) {
                let _ = rustix::process::kill_process_group(p, Signal::Kill);
            }
        }
    }
}

fn kill(pid: i64, signal: Signal) {
    let _ = rustix::process::kill_process(Pid::from_raw(pid as i32).unwrap(), signal);
}

fn kill_group(pid: i64, signal: Signal) {
    let _ = rustix::process::kill_process_group(Pid::from_raw(pid as i32).unwrap(), signal);
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// An env whose agents hold until killed, announcing `ready <pid>` on a FIFO, with
/// heartbeats every 2 s and a timeout of 8 s; returns it and the FIFO.
fn holding_env() -> (TestEnv, tempfile::TempDir, PathBuf) {
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("ready");
    mkfifo(&fifo);
    let mut env = TestEnv::with_pipeline(&pipeline(&format!(
        "--ready-fifo, {}, --hold-forever,",
        fifo.display()
    )));
    env.set("ORCH_HEARTBEAT_INTERVAL_S", "2")
        .set("ORCH_HEARTBEAT_TIMEOUT_S", "8")
        .set("ORCH_REAPER_KILL_GRACE_S", "2");
    (env, fifo_dir, fifo)
}

/// Seeds `n` running jobs claimed by `host` (no heartbeat yet) and starts a `run-job`
/// supervisor on `host` for each; returns (job, supervisor, agent pid) per job.
fn supervise_on(env: &TestEnv, fifo: &Path, host: &str, n: usize) -> Vec<(i64, Child, i64)> {
    let jobs = seed(env, "orch", n, "analysis", "running");
    let mut out = Vec::new();
    for job in jobs {
        env.db()
            .execute(
                "UPDATE jobs SET host = ?2, heartbeat_at = NULL WHERE id = ?1",
                orch::sql_params![job, host],
            )
            .unwrap();
        let sup = on(env, host, &["run-job", &job.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // One agent at a time on the FIFO: its line names its pid.
        let mut line = String::new();
        std::fs::File::open(fifo)
            .unwrap()
            .read_to_string(&mut line)
            .unwrap();
        let pid: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        out.push((job, sup, pid));
    }
    out
}

/// (status, reap reason, rescue count) of a job.
fn job_state(env: &TestEnv, job: i64) -> (String, Option<String>, i64) {
    env.db()
        .query_row(
            "SELECT status, reap_reason, rescue_count FROM jobs WHERE id = ?1",
            [job],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

#[test]
fn three_hosts_dispatching_at_once_claim_each_job_once_under_both_caps() {
    if crate::common::sqlite_only() {
        return;
    }
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    let calls = fake_systemctl(&mut env, 0);
    env.set("ORCH_MAX_CONCURRENCY", "5")
        .set("ORCH_MAX_CONCURRENCY_PER_HOST", "2");
    seed(&env, "orch", 10, "development", "queued");
    seed(&env, "shop", 6, "development", "queued");
    let hosts = ["a", "b", "c"];
    let round = |env: &TestEnv| {
        let kids: Vec<Child> = hosts
            .iter()
            .map(|h| {
                on(env, h, &["dispatch"])
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut k in kids {
            assert_eq!(k.wait().unwrap().code(), Some(0), "separate pass locks");
        }
        for h in hosts {
            assert!(running_on(env, h) <= 2, "host {h} over its cap of 2");
        }
    };
    // The global limit binds (3 hosts x 2 > 5).
    round(&env);
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'running'"),
        5
    );
    // Three jobs end; the next round fills the limit again, never past it.
    env.db()
        .execute(
            "UPDATE jobs SET status = 'succeeded', finished_at = 1 WHERE id IN
               (SELECT id FROM jobs WHERE status = 'running' ORDER BY id LIMIT 3)",
            [],
        )
        .unwrap();
    round(&env);
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'running'"),
        5
    );
    // A larger limit: now each host's cap binds.
    env.set("ORCH_MAX_CONCURRENCY", "50");
    round(&env);
    for h in hosts {
        assert_eq!(running_on(&env, h), 2, "host {h} filled to its cap");
    }
    // Each job started once: one launch per claim, none twice.
    let text = std::fs::read_to_string(&calls).unwrap();
    let mut started: Vec<&str> = text.lines().collect();
    let claimed = env.count("SELECT count(*) FROM jobs WHERE status <> 'queued'");
    assert_eq!(started.len() as i64, claimed, "{text}");
    started.sort_unstable();
    started.dedup();
    assert_eq!(
        started.len() as i64,
        claimed,
        "no job started twice: {text}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status <> 'queued' AND host IS NULL"),
        0,
        "every claim names its host"
    );
    assert_eq!(env.count("SELECT count(*) FROM hosts"), 3);
}

#[test]
fn two_claimers_waiting_on_the_writer_lock_under_a_limit_of_one_start_one_job() {
    if crate::common::sqlite_only() {
        return;
    }
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    let calls = fake_systemctl(&mut env, 0);
    env.set("ORCH_MAX_CONCURRENCY", "1");
    seed(&env, "orch", 1, "development", "queued");
    seed(&env, "shop", 1, "development", "queued");
    // Hold the writer lock, as a long write transaction on a third host would.
    let holder = env.db();
    let tx = holder.begin(orch::adapters::db::Begin::Write).unwrap();
    let kids: Vec<Child> = ["a", "b"]
        .iter()
        .map(|h| {
            on(&env, h, &["dispatch"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Both have read the queue and wait on the lock for their claim.
    let watcher = env.db();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = watcher
            .query_row(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if waiting >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "both claimers wait on the lock");
        std::thread::yield_now();
    }
    tx.commit().unwrap();
    for mut k in kids {
        assert_eq!(k.wait().unwrap().code(), Some(0));
    }
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'running'"),
        1
    );
    assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 1);
}

#[test]
fn a_killed_hosts_jobs_are_rescued_once_after_the_heartbeat_timeout_never_before() {
    if crate::common::sqlite_only() {
        return;
    }
    let (env, _fifo_dir, fifo) = holding_env();
    let mut jobs = supervise_on(&env, &fifo, "a", 2);
    let _guard = GroupGuard(jobs.iter().map(|(_, _, p)| *p).collect());
    // Each supervisor heartbeat once on start (the clock is pinned at NOW).
    for (job, _, _) in &jobs {
        let beat = env.count(&format!("SELECT heartbeat_at FROM jobs WHERE id = {job}"));
        assert_eq!(beat, NOW_UNIX);
    }
    assert_eq!(
        env.count("SELECT heartbeat_at FROM hosts WHERE id = 'a'"),
        NOW_UNIX
    );
    // kill -9 host a's supervisors and agents.
    for (_, sup, agent) in &jobs {
        kill(i64::from(sup.id()), Signal::Kill);
        kill_group(*agent, Signal::Kill);
    }
    for (_, sup, agent) in &mut jobs {
        assert_eq!(sup.wait().unwrap().code(), None, "killed by a signal");
        assert!(wait_exit(*agent, Duration::from_secs(10)));
    }
    // At the timeout (8 s), not past it: nothing rescued, by hosts b or c.
    for host in ["b", "c"] {
        let (code, err) = run_on(&env, host, 8, &["reap"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(count_in(&err, "flipped"), 0, "{err}");
        assert_eq!(count_in(&err, "other_hosts"), 2, "{err}");
    }
    for (job, _, _) in &jobs {
        assert_eq!(job_state(&env, *job).0, "running");
    }
    // Past it, hosts b and c reap at once: each job rescued exactly once.
    let kids: Vec<std::process::Child> = ["b", "c"]
        .iter()
        .map(|h| {
            on(&env, h, &["reap"])
                .env("ORCH_NOW", at(9))
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut flipped = 0;
    for k in kids {
        let out = k.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{err}");
        flipped += count_in(&err, "flipped_heartbeat_expired");
    }
    assert_eq!(flipped, 2, "each job flipped by one of the two reaps");
    for (job, _, _) in &jobs {
        assert_eq!(
            job_state(&env, *job),
            ("failed".into(), Some("heartbeat-expired".into()), 1)
        );
    }
}

#[test]
fn a_completion_racing_the_rescue_leaves_one_terminal_state() {
    if crate::common::sqlite_only() {
        return;
    }
    let (env, _fifo_dir, fifo) = holding_env();
    let mut jobs = supervise_on(&env, &fifo, "a", 3);
    let _guard = GroupGuard(jobs.iter().map(|(_, _, p)| *p).collect());
    // The agents end (their supervisors complete the jobs) while hosts b and c rescue
    // the same jobs, past the timeout.
    let reaps: Vec<Child> = ["b", "c"]
        .iter()
        .map(|h| {
            on(&env, h, &["reap"])
                .env("ORCH_NOW", at(60))
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for (_, _, agent) in &jobs {
        kill_group(*agent, Signal::Kill);
    }
    for mut r in reaps {
        assert_eq!(r.wait().unwrap().code(), Some(0));
    }
    for (_, sup, _) in &mut jobs {
        let code = sup.wait().unwrap().code();
        // 1: it completed the job (failed, killed); 2: the rescue won and the
        // supervisor found the job no longer its own.
        assert!(matches!(code, Some(1 | 2)), "{code:?}");
    }
    for (job, _, _) in &jobs {
        let (status, reason, rescues) = job_state(&env, *job);
        assert_eq!(status, "failed");
        match reason.as_deref() {
            // The rescue won: counted once, and the supervisor's flip changed nothing.
            Some("heartbeat-expired") => assert_eq!(rescues, 1),
            // The completion won: no rescue recorded over it.
            None => assert_eq!(rescues, 0),
            other => panic!("job {job}: {other:?}"),
        }
    }
    assert_eq!(
        env.count(orch::adapters::db::JOB_COUNTS_DRIFT),
        0,
        "the kept counts agree: one transition per job"
    );
}

#[test]
fn a_supervisor_whose_job_was_flipped_stops_its_agent() {
    if crate::common::sqlite_only() {
        return;
    }
    let (env, _fifo_dir, fifo) = holding_env();
    let mut jobs = supervise_on(&env, &fifo, "a", 1);
    let (job, sup, agent) = &mut jobs[0];
    let _guard = GroupGuard(vec![*agent]);
    // Host b rescues the job although its supervisor lives (its heartbeats carry the
    // pinned NOW, so a reap far enough ahead finds them expired).
    let (code, err) = run_on(&env, "b", 3600, &["reap"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(count_in(&err, "flipped_heartbeat_expired"), 1, "{err}");
    // Its next heartbeat changes no row: the supervisor stops its agent and exits.
    assert!(
        wait_exit(*agent, Duration::from_secs(30)),
        "the agent {agent} was stopped by its own supervisor"
    );
    assert_eq!(sup.wait().unwrap().code(), Some(2));
    assert_eq!(
        job_state(&env, *job),
        ("failed".into(), Some("heartbeat-expired".into()), 1),
        "the supervisor left the rescued job as it is"
    );
    let log = std::fs::read_to_string(env.path(&format!("state-a/jobs/{job}.log"))).unwrap();
    assert!(log.contains("run-job stopped its agent"), "{log}");
}

#[test]
fn bad_heartbeat_and_per_host_settings_are_refused_naming_the_key() {
    let env = TestEnv::new();
    let cases = [
        ("ORCH_HEARTBEAT_TIMEOUT_S", "5", "ORCH_HEARTBEAT_TIMEOUT_S"),
        (
            "ORCH_HEARTBEAT_TIMEOUT_S",
            "soon",
            "ORCH_HEARTBEAT_TIMEOUT_S",
        ),
        ("ORCH_HEARTBEAT_TIMEOUT_S", "0", "ORCH_HEARTBEAT_TIMEOUT_S"),
        (
            "ORCH_HEARTBEAT_INTERVAL_S",
            "0",
            "ORCH_HEARTBEAT_INTERVAL_S",
        ),
        (
            "ORCH_HEARTBEAT_INTERVAL_S",
            "x",
            "ORCH_HEARTBEAT_INTERVAL_S",
        ),
        // 30 s heartbeats against an 8 s timeout: under 3 intervals.
        (
            "ORCH_HEARTBEAT_INTERVAL_S",
            "30",
            "ORCH_HEARTBEAT_TIMEOUT_S",
        ),
        (
            "ORCH_MAX_CONCURRENCY_PER_HOST",
            "two",
            "ORCH_MAX_CONCURRENCY_PER_HOST",
        ),
        (
            "ORCH_MAX_CONCURRENCY_PER_HOST",
            "-1",
            "ORCH_MAX_CONCURRENCY_PER_HOST",
        ),
    ];
    for (key, value, named) in cases {
        let mut cmd = env.command(&["reap"]);
        cmd.env("ORCH_HEARTBEAT_INTERVAL_S", "2")
            .env("ORCH_HEARTBEAT_TIMEOUT_S", "8")
            .env(key, value);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {err}");
        assert!(err.contains(named), "{key}={value}: {err}");
    }
    // Exactly 3 intervals is enough.
    let out = env
        .command(&["reap"])
        .env("ORCH_HEARTBEAT_INTERVAL_S", "2")
        .env("ORCH_HEARTBEAT_TIMEOUT_S", "6")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn unpinned_reap_judges_heartbeats_by_the_database_clock() {
    if crate::common::sqlite_only() {
        return;
    }
    let env = TestEnv::with_pipeline(&pipeline(""));
    // Unpinned, reap judges heartbeats by the database's clock: a job of another host
    // that heartbeat just now is left alone, one silent for an hour is rescued.
    let jobs = seed(&env, "orch", 2, "analysis", "running");
    let wall = jiff::Timestamp::now().as_second();
    for (job, beat) in jobs.iter().zip([wall, wall - 3600]) {
        env.db()
            .execute(
                "UPDATE jobs SET host = 'elsewhere', heartbeat_at = ?2 WHERE id = ?1",
                orch::sql_params![*job, beat],
            )
            .unwrap();
    }
    let out = env
        .command(&["reap"])
        .env_remove("ORCH_NOW")
        .env("ORCH_HOST_ID", "here")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(count_in(&err, "other_hosts"), 2, "{err}");
    assert_eq!(count_in(&err, "flipped_heartbeat_expired"), 1, "{err}");
    // Only the silent job was fetched; the live one was counted alive, not read.
    assert_eq!(count_in(&err, "scanned"), 1, "{err}");
    assert_eq!(count_in(&err, "alive"), 1, "{err}");
    assert_eq!(job_state(&env, jobs[0]).0, "running");
    assert_eq!(job_state(&env, jobs[1]).0, "failed");
    // A dry run says what it left without reading it.
    let out = env
        .command(&["reap", "--dry-run"])
        .env_remove("ORCH_NOW")
        .env("ORCH_HOST_ID", "here")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 job(s) of other hosts: skip: heartbeat within"),
        "{text}"
    );
}
