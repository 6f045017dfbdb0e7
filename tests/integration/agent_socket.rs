//! The agent socket (docs/security.md, "Running least-privileged with the units"): a real
//! agent under a real `run-job` reaches its own task through `orch agent-socket --listen`
//! and nothing else; a process outside every job is refused without a write; and
//! `ORCH_AGENT_USER` switches the agent's user, or fails the job before the agent starts
//! when run-job may not.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};

use orch::sql_params as params;

use crate::common::{pipeline, seed_tasks, Project, SeedTask, TestEnv, NOW_UNIX};

const AGENT: &str = env!("CARGO_BIN_EXE_orch-test-agent");
const ORCH: &str = env!("CARGO_BIN_EXE_orch");

/// An env whose analyst is `sh -c script`.
fn env_with_analyst(script: &str) -> TestEnv {
    let agents = format!(
        "analyst: [/bin/sh, -c, {}]",
        serde_json::to_string(script).unwrap()
    );
    let projects = [Project::orch().self_hosting(false)];
    TestEnv::with_pipeline(&pipeline::render(&projects, &agents, ""))
}

/// Seeds tasks ORCH-1 and ORCH-2 at analysis, each with a running analyst job (no
/// supervisor yet); returns the job ids.
fn seed_running(env: &TestEnv) -> Vec<i64> {
    env.run(&["init"]).expect(0);
    let tasks: Vec<SeedTask> = (1..=2)
        .map(|k| {
            SeedTask::new(&Project::orch(), k, "analysis".parse().unwrap())
                .work_item(&format!("wi-{k}"))
                .branch(&format!("orch-{k}"))
                .title("t")
                .at(0)
        })
        .collect();
    let c = env.db();
    seed_tasks(env, &tasks)
        .into_iter()
        .map(|task| {
            c.query_row(
                "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at, started_at)
                 VALUES (?1, 'analyst', 'analysis', 'running', 1, ?2, ?2) RETURNING id",
                params![task, NOW_UNIX - 60],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
        })
        .collect()
}

/// `orch agent-socket --listen` on a socket in the env's directory, started once it
/// says it listens (an event, not a wait). Killed and reaped on drop. The loop test
/// (`the_loop.rs`) runs a whole round through one.
pub(crate) struct SocketServer {
    child: Child,
    pub(crate) path: String,
}

impl SocketServer {
    pub(crate) fn start(env: &TestEnv) -> SocketServer {
        let path = env.path("agent.sock").display().to_string();
        let mut child = env
            .command(&["agent-socket", "--listen", &path])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), format!("listening on {path}"));
        SocketServer { child, path }
    }

    /// Stops the server and returns its log (stderr).
    pub(crate) fn stop(mut self) -> String {
        self.child.kill().unwrap();
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn job_log(env: &TestEnv, job: i64) -> String {
    std::fs::read_to_string(env.path(&format!("state/jobs/{job}.log"))).unwrap()
}

#[test]
fn an_agent_gets_its_own_task_through_the_socket_and_nothing_else() {
    // Raw requests any client could craft (in files: braces in an argv are placeholders).
    let requests = tempfile::tempdir().unwrap();
    let (unlisted, unknown) = (requests.path().join("1"), requests.path().join("2"));
    std::fs::write(&unlisted, r#"{"verb":"task move","flags":["--to"]}"#).unwrap();
    std::fs::write(&unknown, r#"{"verb":"task show","as":"orch"}"#).unwrap();
    let script = format!(
        "{ORCH} task show \"$ORCH_TASK_KEY\" --json; echo \"own exit $?\"; \
         {ORCH} task show ORCH-2; echo \"other exit $?\"; \
         {ORCH} staging-check --report /tmp/anywhere; echo \"report exit $?\"; \
         {AGENT} --socket-request \"$(cat {})\"; {AGENT} --socket-request \"$(cat {})\"",
        unlisted.display(),
        unknown.display()
    );
    let mut env = env_with_analyst(&script);
    let jobs = seed_running(&env);
    let server = SocketServer::start(&env);
    env.set("ORCH_AGENT_SOCKET", &server.path.clone());
    env.run(&["run-job", &jobs[0].to_string()]).expect(0);
    let log = job_log(&env, jobs[0]);
    // Its own task, as `task show --json` prints it, read by the server as orch.
    assert!(log.contains("\"key\": \"ORCH-1\""), "{log}");
    assert!(log.contains("own exit 0"), "{log}");
    // Another task, a flag that writes a file of the caller's choosing, a verb not
    // served, a request with a field nobody defined: refused with the reason, exit 2.
    assert!(log.contains("other exit 2"), "{log}");
    assert!(
        log.contains("task \"ORCH-2\" is not this job's task (ORCH-1)"),
        "{log}"
    );
    assert!(!log.contains("\"key\": \"ORCH-2\""), "{log}");
    assert!(log.contains("report exit 2"), "{log}");
    assert!(
        log.contains("staging-check --report is not allowed"),
        "{log}"
    );
    assert!(log.contains("\"task move\" is not served here"), "{log}");
    assert!(log.contains("unknown field `as`"), "{log}");
    assert_eq!(log.matches("answer exit 2").count(), 2, "{log}");
    assert!(!std::path::Path::new("/tmp/anywhere").exists());
    let server_log = server.stop();
    assert_eq!(
        server_log.matches("agent-socket: refused process").count(),
        4,
        "{server_log}"
    );
    assert!(
        server_log.contains(&format!("agent-socket: job {} (task ORCH-1", jobs[0])),
        "{server_log}"
    );
}

/// The database and its WAL, byte for byte.
fn db_bytes(env: &TestEnv) -> Vec<Vec<u8>> {
    ["orch.db", "orch.db-wal"]
        .iter()
        .map(|f| std::fs::read(env.path(f)).unwrap_or_default())
        .collect()
}

#[test]
fn a_process_outside_every_job_is_refused_and_nothing_is_written() {
    let mut env = env_with_analyst("true");
    let jobs = seed_running(&env);
    // Job 1's agent is a real process in a group of its own, not ours.
    let mut other = Command::new(AGENT)
        .arg("--hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let start = orch::adapters::process::start_time(i64::from(other.id()));
    env.db()
        .execute(
            "UPDATE jobs SET pid = ?1, pid_start_time = ?2 WHERE id = ?3",
            params![other.id(), start, jobs[0]],
        )
        .unwrap();
    let server = SocketServer::start(&env);
    let before = db_bytes(&env);
    env.set("ORCH_AGENT_SOCKET", &server.path.clone());
    for args in [
        &["task", "show", "ORCH-1"][..],
        &["merge-guard", "--task", "ORCH-1", "--merge"],
        &["staging-check"],
    ] {
        let out = env.run(args).expect(2);
        assert!(
            out.stderr
                .contains("is not in a running job's agent process group"),
            "{args:?}: {}",
            out.stderr
        );
        assert_eq!(out.stdout, "", "{args:?}");
    }
    assert_eq!(
        db_bytes(&env),
        before,
        "a refused request wrote to the database"
    );
    drop(other.stdin.take());
    other.wait().unwrap();
    let server_log = server.stop();
    assert_eq!(
        server_log.matches("agent-socket: refused process").count(),
        3,
        "{server_log}"
    );
    // Without the socket the same command reads the database as before.
    env.unset("ORCH_AGENT_SOCKET");
    env.run(&["task", "show", "ORCH-1"]).expect(0);
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn an_agent_user_run_job_may_not_switch_to_fails_the_job_before_its_agent_starts() {
    let marker = tempfile::tempdir().unwrap();
    let started = marker.path().join("started");
    let mut env = env_with_analyst(&format!("touch {}", started.display()));
    let jobs = seed_running(&env);
    env.set("ORCH_AGENT_USER", "nobody");
    let mut command = env.command(&["run-job", &jobs[0].to_string()]);
    if is_root() {
        // Root may switch: run run-job without CAP_SETUID and CAP_SETGID instead.
        let drop = [
            "--bounding-set=-setuid,-setgid",
            "--inh-caps=-setuid,-setgid",
        ];
        command = setpriv(&command, &drop);
    }
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let log = job_log(&env, jobs[0]);
    assert!(
        log.contains("ORCH_AGENT_USER=nobody (uid 65534) but run-job may not switch users"),
        "{log}"
    );
    assert!(!started.exists(), "the agent ran: {log}");
    let (status, code): (String, Option<i64>) = env
        .db()
        .query_row(
            "SELECT status, exit_code FROM jobs WHERE id = ?1",
            [jobs[0]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), code), ("failed", Some(127)));
}

#[test]
fn as_root_the_agent_runs_as_the_agent_user_with_no_capability() {
    if !is_root() {
        // Only root (or CAP_SETUID) can switch; the refusal test above covers the rest.
        return;
    }
    let mut env = env_with_analyst(
        "id -u; id -g; echo \"home $HOME user $USER\"; grep -E '^Cap(Eff|Prm|Amb)' /proc/self/status; \
         cat \"$ORCH_DB\" > /dev/null; echo \"db read exit $?\"",
    );
    let jobs = seed_running(&env);
    env.set("ORCH_AGENT_USER", "nobody");
    env.run(&["run-job", &jobs[0].to_string()]).expect(0);
    let log = job_log(&env, jobs[0]);
    assert!(log.contains("65534\n65534\n"), "{log}");
    assert!(log.contains("home /nonexistent user nobody"), "{log}");
    for set in ["CapEff", "CapPrm", "CapAmb"] {
        assert!(log.contains(&format!("{set}:\t0000000000000000")), "{log}");
    }
    // orch's database is out of its reach.
    assert!(log.contains("db read exit 1"), "{log}");
    let art = env.path("artefacts/ORCH-1");
    let meta = std::fs::metadata(&art).unwrap();
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    assert_eq!(
        (meta.permissions().mode() & 0o7777, meta.gid()),
        (0o2770, 65534)
    );
}

/// Gives `dir` and everything in it to `uid:gid`.
fn chown_tree(dir: &std::path::Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    if dir.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// `command` (an orch command of `env`) run through `setpriv` with `privileges`.
fn setpriv(command: &Command, privileges: &[&str]) -> Command {
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args(privileges)
        .arg(command.get_program())
        .args(command.get_args())
        .env_clear()
        .current_dir(command.get_current_dir().unwrap());
    for (k, v) in command.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    wrapped
}

#[test]
fn a_supervisor_holding_ambient_capabilities_as_the_unit_grants_passes_none_to_its_agent() {
    if !is_root() {
        // Setting up a non-root supervisor with ambient capabilities needs root.
        return;
    }
    // orch-job@.service: User=orch with AmbientCapabilities=CAP_SETUID CAP_SETGID
    // CAP_KILL. A switch between two non-root users keeps capabilities, so without
    // run-job clearing its ambient set the agent would start with all three.
    let mut env = env_with_analyst(
        "id -u; grep -E '^Cap(Eff|Prm|Amb)' /proc/self/status; \
         cat \"$ORCH_DB\" > /dev/null; echo \"db read exit $?\"",
    );
    let jobs = seed_running(&env);
    env.set("ORCH_AGENT_USER", "nobody");
    // The supervisor is `daemon` (uid 1), a member of the agent's group, owning orch's files.
    chown_tree(env.dir.path(), 1, 1);
    let command = env.command(&["run-job", &jobs[0].to_string()]);
    let out = setpriv(
        &command,
        &[
            "--reuid=1",
            "--regid=1",
            "--groups=65534",
            "--inh-caps=+setuid,+setgid,+kill",
            "--ambient-caps=+setuid,+setgid,+kill",
        ],
    )
    .output()
    .unwrap();
    let log = job_log(&env, jobs[0]);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{log}");
    assert!(log.contains("65534\n"), "{log}");
    for set in ["CapEff", "CapPrm", "CapAmb"] {
        assert!(log.contains(&format!("{set}:\t0000000000000000")), "{log}");
    }
    assert!(log.contains("db read exit 1"), "{log}");
}

/// `command` run as `daemon` (uid 1, the test's "orch"): no capability at all, so no
/// `CAP_KILL` to reach another user's process group, as `orch-reap.service` runs.
fn as_orch_without_caps(command: &Command) -> Command {
    setpriv(
        command,
        &[
            "--reuid=1",
            "--regid=1",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ],
    )
}

fn at(secs_after_now: i64) -> String {
    jiff::Timestamp::from_second(NOW_UNIX + secs_after_now)
        .unwrap()
        .to_string()
}

/// Kills a process group when the test ends, passed or failed.
struct KillGroup(i64);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::Kill);
        }
    }
}

/// The job's status and stamped agent pid.
fn status_and_pid(env: &TestEnv, job: i64) -> (String, Option<i64>) {
    env.db()
        .query_row("SELECT status, pid FROM jobs WHERE id = ?1", [job], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
}

#[test]
fn reap_as_orch_stops_another_users_agent_through_its_supervisor() {
    if !is_root() {
        // Making the users and setting up the supervisor's capabilities needs root.
        return;
    }
    // A FIFO the agent user can open: the agent says `ready <pid> <grandchild>` on it.
    let fifo_dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(fifo_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let fifo = fifo_dir.path().join("ready");
    assert!(Command::new("mkfifo")
        .args(["-m", "0666"])
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // It and its grandchild shrug off TERM: only the supervisor's KILL ends them.
    let mut env = env_with_analyst(&format!(
        "exec {AGENT} --ready-fifo {} --fork --hold-forever --ignore-term",
        fifo.display()
    ));
    let jobs = seed_running(&env);
    env.set("ORCH_AGENT_USER", "nobody")
        .set("ORCH_REAPER_MAX_RUNNING_S", "600")
        .set("ORCH_REAPER_KILL_GRACE_S", "1");
    chown_tree(env.dir.path(), 1, 1);
    // The supervisor as orch-job@.service runs it: daemon with the unit's capabilities.
    let supervisor = setpriv(
        &env.command(&["run-job", &jobs[0].to_string()]),
        &[
            "--reuid=1",
            "--regid=1",
            "--groups=65534",
            "--inh-caps=+setuid,+setgid,+kill",
            "--ambient-caps=+setuid,+setgid,+kill",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut ready = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::open(&fifo).unwrap(), &mut ready).unwrap();
    let pids: Vec<i64> = ready
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    let _guard = KillGroup(pids[0]);
    // The pid is stamped right after the spawn: wait for that event.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while status_and_pid(&env, jobs[0]).1 != Some(pids[0]) {
        assert!(std::time::Instant::now() < deadline, "pid never stamped");
        std::thread::yield_now();
    }
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(format!("/proc/{}", pids[0])).unwrap(),
    );
    assert_eq!(owner, 65534, "the agent runs as the agent user");
    // Reap, as orch without CAP_KILL, past the backstop.
    env.set("ORCH_NOW", &at(600));
    let out: crate::common::Run = as_orch_without_caps(&env.command(&["reap"]))
        .output()
        .unwrap()
        .into();
    let out = out.expect(0);
    for pid in &pids {
        assert_eq!(
            orch::adapters::process::start_time(*pid),
            None,
            "process {pid} is gone\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains(&format!(
            "process group {} (user nobody) stopped, through its supervisor",
            pids[0]
        )),
        "{}",
        out.stderr
    );
    let sup = supervisor.wait_with_output().unwrap();
    assert_eq!(sup.status.code(), Some(1), "{sup:?}");
    assert_eq!(status_and_pid(&env, jobs[0]).0, "failed");
    let log = job_log(&env, jobs[0]);
    assert!(log.contains("== agent exited with code 137"), "{log}");
    assert!(log.contains("through its supervisor"), "{log}");
}

#[test]
fn another_users_agent_with_no_supervisor_is_reported_and_left_running() {
    if !is_root() {
        return;
    }
    let mut env = env_with_analyst("true");
    let jobs = seed_running(&env);
    env.set("ORCH_REAPER_MAX_RUNNING_S", "600")
        .set("ORCH_REAPER_KILL_GRACE_S", "1")
        .set("ORCH_NOW", &at(600));
    // The agent user's process, its supervisor gone (none stamped).
    let mut agent = Command::new(AGENT)
        .arg("--hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .uid(65534)
        .gid(65534)
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = i64::from(agent.id());
    let _guard = KillGroup(pid);
    let start = orch::adapters::process::start_time(pid);
    env.db()
        .execute(
            "UPDATE jobs SET pid = ?1, pid_start_time = ?2 WHERE id = ?3",
            params![pid, start, jobs[0]],
        )
        .unwrap();
    chown_tree(env.dir.path(), 1, 1);
    let out: crate::common::Run = as_orch_without_caps(&env.command(&["reap"]))
        .output()
        .unwrap()
        .into();
    let out = out.expect(2);
    assert!(
        out.stderr.contains(&format!(
            "job {} (max-running) NOT stopped: agent process group {pid} (user nobody) STILL RUNNING, not reachable",
            jobs[0]
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("unstoppable=1"), "{}", out.stderr);
    assert_eq!(status_and_pid(&env, jobs[0]).0, "running");
    assert_eq!(
        orch::adapters::process::start_time(pid),
        start,
        "still alive"
    );
    // job cancel says the same and flips nothing either.
    let cancel: crate::common::Run =
        as_orch_without_caps(&env.command(&["job", "cancel", &jobs[0].to_string()]))
            .output()
            .unwrap()
            .into();
    let cancel = cancel.expect(2);
    assert!(
        cancel
            .stderr
            .contains("not cancelled: its agent process group"),
        "{}",
        cancel.stderr
    );
    assert_eq!(status_and_pid(&env, jobs[0]).0, "running");
    // Root (the direct launcher's supervisor, or an operator) reaches it.
    env.run(&["job", "cancel", &jobs[0].to_string()]).expect(0);
    agent.wait().unwrap();
    assert_eq!(status_and_pid(&env, jobs[0]).0, "cancelled");
}

#[test]
fn a_job_at_its_request_cap_is_refused_while_another_job_is_served() {
    let fifos = tempfile::tempdir().unwrap();
    let (go1, go2) = (fifos.path().join("go1"), fifos.path().join("go2"));
    for f in [&go1, &go2] {
        assert!(Command::new("mkfifo").arg(f).status().unwrap().success());
    }
    // ORCH-1's agent holds both its slots with connections that send nothing, then asks
    // once more; ORCH-2's agent just asks.
    let script = format!(
        "if [ \"$ORCH_TASK_KEY\" = ORCH-1 ]; then \
           {AGENT} --socket-idle & a=$!; {AGENT} --socket-idle & b=$!; \
           cat {g1} > /dev/null; {ORCH} task show \"$ORCH_TASK_KEY\" > /dev/null; echo \"third exit $?\"; \
           cat {g2} > /dev/null; kill $a $b; \
         else {ORCH} task show \"$ORCH_TASK_KEY\" > /dev/null; echo \"other job exit $?\"; fi",
        g1 = go1.display(),
        g2 = go2.display()
    );
    let mut env = env_with_analyst(&script);
    let jobs = seed_running(&env);
    // The slot lines are debug lines.
    env.set("ORCH_AGENT_SOCKET_MAX_PER_JOB", "2")
        .set("ORCH_LOG", "debug");
    let mut server = SocketServer::start(&env);
    env.set("ORCH_AGENT_SOCKET", &server.path.clone());
    let mut first = env
        .command(&["run-job", &jobs[0].to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Both slots taken: the server says so (an event in its log, not a wait).
    let mut server_log = BufReader::new(server.child.stderr.take().unwrap());
    let mut seen = String::new();
    let taken = format!("job {}: request slot", jobs[0]);
    while seen.matches(&taken).count() < 2 {
        let mut line = String::new();
        assert!(server_log.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
    }
    std::fs::write(&go1, "go\n").unwrap();
    // While job 1 is at its cap, job 2 is served.
    env.run(&["run-job", &jobs[1].to_string()]).expect(0);
    assert!(job_log(&env, jobs[1]).contains("other job exit 0"));
    std::fs::write(&go2, "go\n").unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(0));
    let log = job_log(&env, jobs[0]);
    assert!(log.contains("third exit 2"), "{log}");
    assert!(
        log.contains("already 2 request(s) in flight for this job (ORCH_AGENT_SOCKET_MAX_PER_JOB)"),
        "{log}"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut server_log, &mut rest).unwrap();
    assert!(
        (seen + &rest).contains("request(s) in flight for this job"),
        "the refusal is logged"
    );
}

#[test]
fn a_request_cap_that_is_not_a_positive_count_is_refused_by_name() {
    let mut env = env_with_analyst("true");
    env.run(&["init"]).expect(0);
    for bad in ["0", "-1", "many", ""] {
        env.set("ORCH_AGENT_SOCKET_MAX_PER_JOB", bad);
        let out = env.run(&["agent-socket", "--listen", "/nonexistent/x.sock"]);
        let out = out.expect(2);
        assert!(
            out.stderr.contains("ORCH_AGENT_SOCKET_MAX_PER_JOB"),
            "{bad:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("binding"), "nothing was bound");
    }
}

#[test]
fn reap_removes_the_request_slots_of_jobs_no_longer_running() {
    let env = env_with_analyst("true");
    let jobs = seed_running(&env);
    env.db()
        .execute(
            "UPDATE jobs SET status = 'succeeded', finished_at = ?2 WHERE id = ?1",
            params![jobs[1], NOW_UNIX],
        )
        .unwrap();
    let dir = env.path("state/agent-socket");
    std::fs::create_dir_all(&dir).unwrap();
    let names = [
        format!("job-{}.0", jobs[0]),
        format!("job-{}.0", jobs[1]),
        format!("job-{}.1", jobs[1]),
        "job-999.0".to_string(),
        "notes".to_string(),
    ];
    for n in &names {
        std::fs::write(dir.join(n), "").unwrap();
    }
    env.run(&["reap"]).expect(0);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [format!("job-{}.0", jobs[0]), "notes".to_string()]);
}
