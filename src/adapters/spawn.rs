//! Starting and stopping process groups: the launchers `dispatch` uses to start
//! `orch run-job <id>`, the agent spawn of `run-job`, the one runner for "an argv in
//! its own group with a deadline" ([`run_group`]: staging-check's command probes, the
//! post-deploy rollback), and terminating a process group (TERM, a grace period, then
//! KILL), the one way a group is killed, by the runner, `reap` and `job cancel` alike.
//!
//! Agents and commands start in their own process group (`process_group(0)`: the group
//! id is the child's pid), so one signal to the group reaches the command and everything
//! it forked. A group counts as gone when no non-zombie process in `/proc` belongs to
//! it. No decisions here; no shell anywhere.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rustix::process::{kill_process_group, Pid, Signal};

use crate::adapters::poll::{self, RealTime, Step};
use crate::adapters::process::wait_exit;

/// Detaches the calling process into a session (and process group) of its own, so a
/// closing terminal or a signal to dispatch's group never reaches a job. Under systemd
/// the unit's process already leads its session; the refusal is harmless there.
pub fn detach_session() {
    if let Err(e) = rustix::process::setsid() {
        log::debug!("setsid: {e} (already a session or group leader)");
    }
}

/// How often a terminate call looks whether the group is gone.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for the kernel to remove a KILLed group before giving up.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// Opens a job's log file for appending, creating it and its directory.
///
/// # Errors
/// When the file cannot be opened.
pub fn open_log(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating log directory {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening job log {}", path.display()))
}

/// Starts `exe run-job <id>` detached: its own process group, no stdin, output appended
/// to `log`, not waited for (it outlives `dispatch`), with `env` added to the inherited
/// environment and `withheld` removed from it. Returns the supervisor's pid.
///
/// # Errors
/// When the log cannot be opened or the process cannot be started.
pub fn launch_direct(
    exe: &Path,
    job_id: i64,
    log: &Path,
    env: &[(String, OsString)],
    withheld: &[&str],
) -> Result<u32> {
    let out = open_log(log)?;
    let err = out.try_clone().context("duplicating the job log handle")?;
    let mut command = Command::new(exe);
    for name in withheld {
        command.env_remove(name);
    }
    let child = command
        .arg("run-job")
        .arg(job_id.to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // No process_group here: run-job calls setsid() first thing, which a group
        // leader may not, so the supervisor gets its own session (and group).
        .spawn()
        .with_context(|| format!("starting {} run-job {job_id}", exe.display()))?;
    // Not waited for on purpose: the supervisor is re-parented when dispatch exits.
    Ok(child.id())
}

/// The exact argv the systemd launcher runs for a job.
pub fn systemd_argv(job_id: i64) -> [String; 3] {
    [
        "systemctl".into(),
        "start".into(),
        format!("orch-job@{job_id}.service"),
    ]
}

/// Starts a job as `systemctl start orch-job@<id>.service` (found on `path`, the
/// `PATH` value), so it outlives the oneshot dispatch unit and has its own journal.
///
/// # Errors
/// When `systemctl` is not on `PATH`, cannot be run, or exits non-zero (its stderr is
/// part of the message).
pub fn launch_systemd(job_id: i64, path: Option<&std::ffi::OsStr>) -> Result<()> {
    let argv = systemd_argv(job_id);
    let Some(systemctl) = find_on_path(&argv[0], path) else {
        bail!(
            "ORCH_JOB_LAUNCHER=systemd but systemctl is not on PATH; install systemd or set ORCH_JOB_LAUNCHER=direct"
        );
    };
    let out = Command::new(&systemctl)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", systemctl.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{} exited with {}: {}",
            argv.join(" "),
            exit_code_of(out.status),
            stderr.trim()
        );
    }
    Ok(())
}

fn find_on_path(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Spawns an agent argv (no shell) in its own process group, stdin closed, stdout and
/// stderr appended to `log`, with exactly `env` as its environment (nothing inherited:
/// the caller builds it from an allowlist), in `cwd` when given (the task's workspace).
///
/// # Errors
/// When the program cannot be started (missing, not executable): the caller fails the
/// job with this message.
///
/// With a `user`, the child switches to its uid and gid (supplementary groups dropped)
/// before the exec, and starts with no capability: the ambient set is cleared first
/// (a supervisor given `CAP_SETUID` by its unit's `AmbientCapabilities=` would pass it
/// on otherwise: a switch between two non-root users keeps capabilities), and with
/// umask `007`, so what it writes in its setgid artefact folder the supervisor's gate
/// can read through the group.
pub fn spawn_agent(
    argv: &[String],
    env: &[(String, OsString)],
    log: &File,
    cwd: Option<&Path>,
    user: Option<&AgentUser>,
) -> Result<Child> {
    let (program, args) = argv.split_first().context("the agent argv is empty")?;
    let mut command = in_own_group(program, args, &[]);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    command
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    let Some(user) = user else {
        return command
            .spawn()
            .with_context(|| format!("starting agent {program}"));
    };
    rustix::thread::clear_ambient_capability_set()
        .context("clearing the ambient capabilities before starting the agent")?;
    command.uid(user.uid).gid(user.gid);
    // The umask is the process's: set for the spawn only (no other thread runs yet).
    let before = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o007));
    let child = command.spawn();
    rustix::process::umask(before);
    child.with_context(|| format!("starting agent {program} as {}", user.name))
}

/// The user an agent runs as (`ORCH_AGENT_USER`), from `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home directory (the agent's `HOME`).
    pub home: String,
}

/// Finds `spec` (a name or a uid) in `passwd` (the text of `/etc/passwd`). Users only
/// an NSS service knows (LDAP) are not found: give a local user.
///
/// # Errors
/// When no line names it.
pub fn find_user(spec: &str, passwd: &str) -> Result<AgentUser> {
    let spec = spec.trim();
    passwd
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(AgentUser {
                name: (*f.first()?).to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: (*f.get(5)?).to_string(),
            })
        })
        .find(|u| u.name == spec || u.uid.to_string() == spec)
        .with_context(|| format!("ORCH_AGENT_USER={spec:?} is not a user in /etc/passwd"))
}

/// Whether this process may start a child as another user: `CAP_SETUID` and
/// `CAP_SETGID` in its effective set (root has them; a unit grants them).
pub fn may_switch_user() -> bool {
    use rustix::thread::CapabilityFlags as Cap;
    rustix::thread::capabilities(None)
        .is_ok_and(|c| c.effective.contains(Cap::SETUID | Cap::SETGID))
}

/// `program args` with `env` added, stdin closed, in a process group of its own.
fn in_own_group(program: &str, args: &[String], env: &[(&str, String)]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .process_group(0);
    command
}

/// How long a group past its deadline has between TERM and KILL ([`run_group`]'s
/// callers): long enough to flush and remove a temporary file, short enough that a
/// staging-check probe still reports within its `REPORT_GRACE` (3 s).
pub const DEADLINE_KILL_GRACE: Duration = Duration::from_secs(1);

/// Where the output of a [`run_group`] command goes.
#[derive(Debug)]
pub enum Output<'a> {
    /// stdout and stderr are read, at most `limit` bytes of each kept (the rest drained
    /// so the command never blocks on a full pipe).
    Capture {
        /// Bytes kept per stream.
        limit: u64,
    },
    /// stdout and stderr are both written to this file.
    File(&'a File),
}

/// How a [`run_group`] command ended.
#[derive(Debug)]
pub enum GroupEnd {
    /// It exited on its own before the deadline (stdout and stderr are empty unless
    /// captured).
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Captured stdout (lossy UTF-8).
        stdout: String,
        /// Captured stderr (lossy UTF-8).
        stderr: String,
    },
    /// The deadline passed; the whole group was terminated (how: TERM or KILL).
    TimedOut(Terminated),
}

/// Why [`run_group`] has no end to report.
#[derive(Debug)]
pub enum GroupError {
    /// The argv is empty.
    Empty,
    /// The program could not be started (missing, not executable).
    Start(std::io::Error),
    /// Waiting for it failed (the group was terminated first).
    Wait(std::io::Error),
}

/// Runs `argv` (with `env` added, no shell, stdin closed) in its own process group,
/// its output as `output` says, and waits at most `deadline`. Past it the whole group
/// is terminated: TERM, then KILL after `grace` ([`terminate_group`]). With captured
/// output, a process the command left running that still holds a pipe is terminated the
/// same way when the pipes do not close within the time left (at least 200 ms).
///
/// The wait is on the exit event (a pidfd) and the child is reaped only after any
/// signal, so its pid, which is the group id, cannot name a stranger when signalled.
///
/// # Errors
/// [`GroupError`]: an empty argv, a program that cannot be started, a failed wait.
pub fn run_group(
    argv: &[String],
    env: &[(&str, String)],
    output: &Output<'_>,
    deadline: Duration,
    grace: Duration,
) -> Result<GroupEnd, GroupError> {
    let started = Instant::now();
    let (program, args) = argv.split_first().ok_or(GroupError::Empty)?;
    let mut command = in_own_group(program, args, env);
    match output {
        Output::Capture { .. } => command.stdout(Stdio::piped()).stderr(Stdio::piped()),
        Output::File(f) => {
            let out = f.try_clone().map_err(GroupError::Start)?;
            let err = f.try_clone().map_err(GroupError::Start)?;
            command.stdout(out).stderr(err)
        }
    };
    let mut child = command.spawn().map_err(GroupError::Start)?;
    let pgid = i64::from(child.id());
    let limit = match output {
        Output::Capture { limit } => *limit,
        Output::File(_) => 0,
    };
    let stdout = capture(child.stdout.take(), limit);
    let stderr = capture(child.stderr.take(), limit);
    let exited = poll::until(&RealTime, started + deadline, |a| {
        // A wait cut short (a signal) is tried again with the time left.
        if wait_exit(pgid, a.left) {
            Step::Done(())
        } else {
            Step::Again(Duration::ZERO)
        }
    });
    if exited.is_err() {
        let how = terminate_group(pgid, grace);
        if how != Terminated::Survived {
            let _ = child.wait();
        }
        return Ok(GroupEnd::TimedOut(how));
    }
    let status = match child.wait() {
        Ok(status) => status,
        Err(e) => {
            terminate_group(pgid, grace);
            return Err(GroupError::Wait(e));
        }
    };
    // Output pipes close when every process of the group has exited; a leftover
    // background process is terminated rather than waited for past the deadline.
    let left = deadline
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(200));
    let stdout = collect(&stdout, left, pgid, grace);
    let stderr = collect(&stderr, Duration::from_millis(200), pgid, grace);
    Ok(GroupEnd::Exited {
        status,
        stdout,
        stderr,
    })
}

fn capture(pipe: Option<impl Read + Send + 'static>, limit: u64) -> Option<Receiver<Vec<u8>>> {
    let pipe = pipe?;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut limited = pipe.take(limit);
        let _ = limited.read_to_end(&mut buf);
        // Drain the rest so the writer never blocks on a full pipe.
        let _ = std::io::copy(&mut limited.into_inner(), &mut std::io::sink());
        let _ = tx.send(buf);
    });
    Some(rx)
}

fn collect(rx: &Option<Receiver<Vec<u8>>>, wait: Duration, pgid: i64, grace: Duration) -> String {
    let Some(rx) = rx else {
        return String::new();
    };
    let bytes = rx.recv_timeout(wait).unwrap_or_else(|_| {
        terminate_group(pgid, grace);
        rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default()
    });
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Returns the exit code of a finished process: its code, or 128 + the signal that
/// killed it (the shell's convention, so `SIGKILL` reads as 137).
pub fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Sends `signal` to the process group `pgid`; `false` when the group does not exist.
pub fn signal_group(pgid: i64, signal: Signal) -> bool {
    let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    // pgid 1 would be init's group: never signal it.
    pgid > 1 && kill_process_group(pid, signal).is_ok()
}

/// Returns whether any live (non-zombie) process belongs to process group `pgid`.
pub fn group_alive(pgid: i64) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| stat_group(&stat) == Some(pgid))
}

/// Returns the start time of every live (non-zombie) process, by pid: one walk of
/// `/proc`, so a pass over many jobs reads each process once instead of once per row.
pub fn start_times() -> std::collections::HashMap<i64, i64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return std::collections::HashMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid: i64 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            Some((pid, crate::adapters::process::parse_stat(&stat)?))
        })
        .collect()
}

/// Parses the process group of a `/proc/<pid>/stat` line; `None` for zombies.
pub fn stat_group(stat: &str) -> Option<i64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let _ppid = fields.next()?;
    fields.next()?.parse().ok()
}

/// How a terminate call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminated {
    /// No process of the group was alive to begin with.
    AlreadyGone,
    /// TERM was enough.
    ByTerm,
    /// KILL was needed after the grace period.
    ByKill,
    /// Still alive after KILL (unkillable, e.g. stuck in the kernel).
    Survived,
}

/// Terminates process group `pgid`: TERM, wait up to `grace` for it to go, then KILL.
pub fn terminate_group(pgid: i64, grace: Duration) -> Terminated {
    if pgid <= 1 || !group_alive(pgid) {
        return Terminated::AlreadyGone;
    }
    signal_group(pgid, Signal::Term);
    if wait_gone(pgid, grace) {
        return Terminated::ByTerm;
    }
    signal_group(pgid, Signal::Kill);
    if wait_gone(pgid, AFTER_KILL) {
        Terminated::ByKill
    } else {
        Terminated::Survived
    }
}

/// Waits until no live process belongs to group `pgid`, for at most `within` (read
/// from `/proc` every 20 ms); `false` at the deadline.
pub fn wait_gone(pgid: i64, within: Duration) -> bool {
    let gone = |_: poll::Attempt| {
        if group_alive(pgid) {
            Step::Again(POLL)
        } else {
            Step::Done(())
        }
    };
    poll::until(&RealTime, Instant::now() + within, gone).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_group_skips_zombies_and_awkward_names() {
        let line = "77 (a (b) c) S 1 77 77 0 -1 4194560 100 0";
        assert_eq!(stat_group(line), Some(77));
        assert_eq!(stat_group("77 (x) Z 1 77 77 0"), None);
        assert_eq!(stat_group("garbage"), None);
    }

    #[test]
    fn an_agent_user_is_found_by_name_or_uid_and_a_missing_one_is_named() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nbad line\norch-agent:x:990:991::/var/lib/orch-agent:/usr/sbin/nologin\n";
        let u = find_user("orch-agent", passwd).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str()),
            (990, 991, "/var/lib/orch-agent")
        );
        assert_eq!(find_user("990", passwd).unwrap(), u);
        let e = find_user("ghost", passwd).unwrap_err().to_string();
        assert!(e.contains("ORCH_AGENT_USER=\"ghost\" is not a user"), "{e}");
    }

    #[test]
    fn exit_codes_of_signals_follow_the_shell() {
        let st = Command::new("/bin/sh")
            .args(["-c", "kill -9 $$"])
            .status()
            .unwrap();
        assert_eq!(exit_code_of(st), 137);
        let st = Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .status()
            .unwrap();
        assert_eq!(exit_code_of(st), 3);
    }

    #[test]
    fn systemd_launcher_argv_is_exact_and_missing_systemctl_is_clear() {
        assert_eq!(
            systemd_argv(42),
            ["systemctl", "start", "orch-job@42.service"]
        );
        let empty = tempfile::tempdir().unwrap();
        let err = launch_systemd(1, Some(empty.path().as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("systemctl is not on PATH"), "{err}");
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    const CAPTURE: Output<'static> = Output::Capture { limit: 1024 };

    fn read_pid(path: &Path) -> i64 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn run_group_reports_the_exit_and_captures_both_streams() {
        let end = run_group(
            &argv(&["/bin/sh", "-c", "echo out; echo \"$X\" >&2; exit 3"]),
            &[("X", "err".into())],
            &CAPTURE,
            Duration::from_secs(20),
            Duration::from_secs(1),
        )
        .unwrap();
        let GroupEnd::Exited {
            status,
            stdout,
            stderr,
        } = end
        else {
            panic!("{end:?}")
        };
        assert_eq!((exit_code_of(status), stdout.as_str()), (3, "out\n"));
        assert_eq!(stderr, "err\n");
    }

    #[test]
    fn run_group_writes_to_a_file_and_names_what_could_not_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let end = run_group(
            &argv(&["/bin/sh", "-c", "echo one; echo two >&2"]),
            &[],
            &Output::File(&file),
            Duration::from_secs(20),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(matches!(end, GroupEnd::Exited { ref stdout, .. } if stdout.is_empty()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
        let none = Duration::ZERO;
        let missing = run_group(&argv(&["/nonexistent/x"]), &[], &CAPTURE, none, none);
        assert!(matches!(missing, Err(GroupError::Start(_))), "{missing:?}");
        let empty = run_group(&[], &[], &CAPTURE, none, none);
        assert!(matches!(empty, Err(GroupError::Empty)), "{empty:?}");
    }

    /// Runs `sh -c script`, where `{pid}` names the file the script writes the pid of
    /// its background `sleep 300` to, and returns how it ended once that `sleep` is
    /// gone. It is not our child: its exit is waited for on a pidfd (the deadline is a
    /// failsafe, not a timing).
    fn run_with_background(script: &str, deadline: Duration, grace: Duration) -> GroupEnd {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("background.pid");
        let script = script.replace("{pid}", &pidfile.display().to_string());
        let sh = argv(&["/bin/sh", "-c", &script]);
        let end = run_group(&sh, &[], &CAPTURE, deadline, grace).unwrap();
        let pid = read_pid(&pidfile);
        let gone = wait_exit(pid, Duration::from_secs(10));
        assert!(gone, "background {pid} survived: {end:?}");
        end
    }

    #[test]
    fn run_group_terminates_the_whole_group_at_the_deadline_and_kills_after_the_grace() {
        let second = Duration::from_secs(1);
        let cases = [
            // The shell and its child wait: TERM to the group ends both.
            (
                "sleep 300 & echo $! > {pid}; wait",
                30 * second,
                Terminated::ByTerm,
            ),
            // An ignored signal stays ignored across fork and exec: the shell and its
            // child both shrug off TERM, so only the KILL after the grace ends them.
            (
                "trap '' TERM; sleep 300 & echo $! > {pid}; wait",
                Duration::from_millis(200),
                Terminated::ByKill,
            ),
        ];
        for (script, grace, how) in cases {
            let end = run_with_background(script, second, grace);
            assert!(
                matches!(end, GroupEnd::TimedOut(h) if h == how),
                "{script}: {end:?}"
            );
        }
    }

    #[test]
    fn run_group_terminates_a_leftover_that_holds_the_output_pipe() {
        // The shell exits at once; its background child keeps stdout open.
        let script = "echo hi; sleep 300 & echo $! > {pid}";
        let end = run_with_background(script, Duration::from_millis(300), Duration::from_secs(30));
        let GroupEnd::Exited { status, stdout, .. } = end else {
            panic!("{end:?}")
        };
        assert_eq!((exit_code_of(status), stdout.as_str()), (0, "hi\n"));
    }

    #[test]
    fn terminate_group_stops_a_real_group_and_init_is_never_signalled() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 30 & sleep 30; wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i64::from(child.id());
        assert!(group_alive(pgid));
        let t = terminate_group(pgid, Duration::from_secs(5));
        assert!(
            matches!(t, Terminated::ByTerm | Terminated::ByKill),
            "{t:?}"
        );
        child.wait().unwrap();
        assert!(!group_alive(pgid));
        assert_eq!(terminate_group(1, Duration::ZERO), Terminated::AlreadyGone);
        assert!(!signal_group(1, Signal::Term));
    }
}
