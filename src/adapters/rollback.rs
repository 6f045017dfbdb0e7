//! Runs a project's rollback command: argv without a shell, in its own process group,
//! stdout and stderr into a file, with a deadline after which the whole group is
//! terminated (`adapters::spawn::run_group`: TERM, KILL after a grace).
//!
//! It reports what happened and never retries: whether to run it at all is the caller's
//! decision (once per post-deploy window, recorded in the sentinel before it starts).

use std::fs::File;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::adapters::spawn::{self, GroupEnd, GroupError, Output, DEADLINE_KILL_GRACE};

/// How a rollback ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackEnd {
    /// It exited with this code (0 is success).
    Exited(i32),
    /// A signal ended it.
    Signalled(i32),
    /// It ran past the deadline; its process group was killed.
    TimedOut(Duration),
    /// It could not be started.
    NotStarted(String),
}

impl RollbackEnd {
    /// Returns whether the rollback succeeded.
    pub fn is_ok(&self) -> bool {
        *self == RollbackEnd::Exited(0)
    }

    /// Returns a short description for the log and the alert.
    pub fn describe(&self) -> String {
        match self {
            RollbackEnd::Exited(code) => format!("exit {code}"),
            RollbackEnd::Signalled(sig) => format!("killed by signal {sig}"),
            RollbackEnd::TimedOut(d) => format!("timed out after {}s (killed)", d.as_secs()),
            RollbackEnd::NotStarted(why) => format!("could not start: {why}"),
        }
    }
}

/// Runs `argv` (with `env` added) with its output in `output`, terminating its process
/// group after `timeout` ([`spawn::run_group`]).
///
/// # Errors
/// When `argv` is empty or the output file cannot be created.
pub fn run(
    argv: &[String],
    env: &[(&str, String)],
    output: &Path,
    timeout: Duration,
) -> Result<RollbackEnd> {
    let Some(program) = argv.first() else {
        bail!("the rollback command is empty");
    };
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let out = File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let into = Output::File(&out);
    match spawn::run_group(argv, env, &into, timeout, DEADLINE_KILL_GRACE) {
        Ok(GroupEnd::Exited { status, .. }) => Ok(match (status.code(), status.signal()) {
            (Some(code), _) => RollbackEnd::Exited(code),
            (None, Some(sig)) => RollbackEnd::Signalled(sig),
            (None, None) => RollbackEnd::Signalled(0),
        }),
        Ok(GroupEnd::TimedOut(_)) => Ok(RollbackEnd::TimedOut(timeout)),
        Err(GroupError::Start(e)) => Ok(RollbackEnd::NotStarted(format!("{program}: {e}"))),
        Err(GroupError::Wait(e)) => Err(e).context("waiting for the rollback"),
        Err(GroupError::Empty) => bail!("the rollback command is empty"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exit_codes_output_and_missing_programs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o/rollback.out");
        let end = run(
            &argv(&["sh", "-c", "echo rolled; echo oops >&2; exit 3"]),
            &[],
            &out,
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(end, RollbackEnd::Exited(3));
        assert!(!end.is_ok());
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains("rolled") && text.contains("oops"), "{text}");
        let end = run(
            &argv(&["/nonexistent/redeploy"]),
            &[],
            &out,
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(matches!(end, RollbackEnd::NotStarted(_)), "{end:?}");
        assert!(run(&[], &[], &out, Duration::from_secs(5)).is_err());
        assert!(run(&argv(&["true"]), &[], &out, Duration::from_secs(5))
            .unwrap()
            .is_ok());
    }

    #[test]
    fn a_hanging_rollback_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("rollback.out");
        // The grandchild `sleep` holds the output file open; killing only `sh` would
        // leave it running. The whole group goes.
        let end = run(
            &argv(&["sh", "-c", "sleep 600 & wait"]),
            &[],
            &out,
            Duration::from_millis(300),
        );
        let end = end.unwrap();
        assert!(matches!(end, RollbackEnd::TimedOut(_)), "{end:?}");
        assert!(end.describe().contains("timed out"));
    }
}
