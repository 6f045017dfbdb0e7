//! Starting and stopping job processes: the launchers `dispatch` uses to start
//! `orch run-job <id>`, the agent spawn of `run-job`, and terminating a process group
//! (TERM, a grace period, then KILL).
//!
//! Agents start in their own process group (`process_group(0)`: the group id is the
//! child's pid), so one signal to the group reaches the agent and everything it forked.
//! A group counts as gone when no non-zombie process in `/proc` belongs to it. No
//! decisions here; no shell anywhere.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rustix::process::{kill_process_group, Pid, Signal};

use crate::adapters::poll::{self, RealTime, Step};

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
/// to `log`, not waited for (it outlives `dispatch`). Returns the supervisor's pid.
///
/// # Errors
/// When the log cannot be opened or the process cannot be started.
pub fn launch_direct(
    exe: &Path,
    job_id: i64,
    log: &Path,
    env: &[(String, OsString)],
) -> Result<u32> {
    let out = open_log(log)?;
    let err = out.try_clone().context("duplicating the job log handle")?;
    let child = Command::new(exe)
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
/// stderr appended to `log`, with `env` added to the inherited environment.
///
/// # Errors
/// When the program cannot be started (missing, not executable): the caller fails the
/// job with this message.
pub fn spawn_agent(argv: &[String], env: &[(&str, String)], log: &File) -> Result<Child> {
    let (program, args) = argv.split_first().context("the agent argv is empty")?;
    Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting agent {program}"))
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

fn wait_gone(pgid: i64, within: Duration) -> bool {
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
