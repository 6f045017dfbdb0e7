//! Runs `staging-check`'s probes: HTTP requests and commands, each with a hard deadline,
//! all at once in threads so one hanging check cannot stall the rest.
//!
//! Probes return observations (`core::staging_check::HttpAnswer`, `CommandEnd`) or a
//! `ProbeError`; judging them is `core::staging_check`'s job. A command runs without a shell
//! in its own process group, and the whole group is terminated when its deadline passes
//! (`adapters::spawn::run_group`).

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::adapters::http::{client_with, redact_url};
use crate::adapters::spawn::{self, GroupEnd, GroupError, Output, DEADLINE_KILL_GRACE};
use crate::core::staging_check::{CommandEnd, HttpAnswer, ProbeError};

/// The most of a body or an output stream kept for judging (1 MiB).
pub const MAX_CAPTURE: u64 = 1024 * 1024;

/// Extra time a probe gets past its own deadline to report before it is abandoned.
/// Probes enforce their deadline themselves; this only catches one that cannot.
pub const REPORT_GRACE: Duration = Duration::from_secs(3);

/// Sends one HTTP request with `timeout` as its whole deadline and reads the answer.
///
/// # Errors
/// [`ProbeError`]: timeout, connection failure, transport failure, or a request that
/// cannot even be built.
pub fn http_probe(
    method: &str,
    url: &str,
    body: Option<&str>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<HttpAnswer, ProbeError> {
    let client = client_with(connect_timeout.min(timeout), timeout)
        .map_err(|e| ProbeError::CouldNotRun(format!("building the HTTP client: {e:#}")))?;
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|e| ProbeError::CouldNotRun(format!("method {method:?}: {e}")))?;
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().map_err(|e| classify(&e))?;
    let status = resp.status().as_u16();
    let shown = redact_url(resp.url());
    let mut bytes = Vec::new();
    resp.take(MAX_CAPTURE)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut
                || e.to_string().to_ascii_lowercase().contains("timed out")
            {
                ProbeError::Timeout(format!("reading the answer of {shown}: {e}"))
            } else {
                ProbeError::Transport(format!("reading the answer of {shown}: {e}"))
            }
        })?;
    Ok(HttpAnswer {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

fn classify(e: &reqwest::Error) -> ProbeError {
    let url = e.url().map(redact_url).unwrap_or_default();
    probe_error(e, &url)
}

/// Classifies a transport error of a probe to `url` (already stripped of secrets):
/// timeout, connection refused, could not run, or another transport failure.
pub(crate) fn probe_error(e: &reqwest::Error, url: &str) -> ProbeError {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let msg = format!("{url}: {cause}");
    if e.is_timeout() {
        ProbeError::Timeout(msg)
    } else if e.is_connect() {
        ProbeError::Connect(msg)
    } else if e.is_builder() {
        ProbeError::CouldNotRun(msg)
    } else {
        ProbeError::Transport(msg)
    }
}

/// Runs `argv` (no shell, stdin closed) in its own process group and waits at most
/// `timeout`; past it the whole group is terminated ([`spawn::run_group`]) and the
/// probe reports a timeout.
///
/// # Errors
/// [`ProbeError::CouldNotRun`] when it cannot be started, [`ProbeError::Timeout`]
/// when it was killed at its deadline.
pub fn command_probe(argv: &[String], timeout: Duration) -> Result<CommandEnd, ProbeError> {
    let program = argv.first().map_or("", String::as_str);
    let output = Output::Capture { limit: MAX_CAPTURE };
    match spawn::run_group(argv, &[], &output, timeout, DEADLINE_KILL_GRACE) {
        Ok(GroupEnd::Exited {
            status,
            stdout,
            stderr,
        }) => Ok(CommandEnd {
            code: status.code(),
            stdout,
            stderr,
        }),
        Ok(GroupEnd::TimedOut(_)) => Err(ProbeError::Timeout(format!(
            "{program} killed after {}s",
            timeout.as_secs()
        ))),
        Err(GroupError::Empty) => Err(ProbeError::CouldNotRun("empty argv".into())),
        Err(GroupError::Start(e)) => Err(ProbeError::CouldNotRun(format!("{program}: {e}"))),
        Err(GroupError::Wait(e)) => Err(ProbeError::CouldNotRun(format!(
            "waiting for {program}: {e}"
        ))),
    }
}

/// One unit of work with its own deadline.
pub struct Deadlined<T> {
    /// How long it may take (its probe's own timeout).
    pub deadline: Duration,
    /// The work.
    pub run: Box<dyn FnOnce() -> T + Send>,
}

/// Why a unit produced no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    /// It did not report within its deadline plus [`REPORT_GRACE`]; it was abandoned.
    Deadline,
    /// It panicked.
    Panicked,
}

/// Runs every unit at once, each in its own thread, and returns their results in
/// order with the time each took. A unit that does not report within its deadline
/// (plus [`REPORT_GRACE`]) is abandoned, so the call returns after the longest
/// deadline at most, whatever the units do.
pub fn run_all<T: Send + 'static>(units: Vec<Deadlined<T>>) -> Vec<(Result<T, Overrun>, Duration)> {
    let started = Instant::now();
    let (tx, rx) = channel::<(usize, Result<T, Overrun>, Duration)>();
    let mut limits = Vec::with_capacity(units.len());
    for (i, unit) in units.into_iter().enumerate() {
        limits.push(unit.deadline + REPORT_GRACE);
        let tx = tx.clone();
        let run = unit.run;
        std::thread::spawn(move || {
            let t = Instant::now();
            let value = catch_unwind(AssertUnwindSafe(run)).map_err(|_| Overrun::Panicked);
            let _ = tx.send((i, value, t.elapsed()));
        });
    }
    drop(tx);
    let mut results: Vec<Option<(Result<T, Overrun>, Duration)>> =
        (0..limits.len()).map(|_| None).collect();
    loop {
        let pending: Vec<usize> = (0..limits.len())
            .filter(|i| results[*i].is_none())
            .collect();
        let Some(next) = pending.iter().map(|i| limits[*i]).min() else {
            break;
        };
        match rx.recv_timeout(next.saturating_sub(started.elapsed())) {
            Ok((i, value, took)) => results[i] = Some((value, took)),
            Err(RecvTimeoutError::Timeout) => {
                let now = started.elapsed();
                for i in pending {
                    if limits[i] <= now {
                        results[i] = Some((Err(Overrun::Deadline), now));
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                for i in pending {
                    results[i] = Some((Err(Overrun::Panicked), started.elapsed()));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every unit has a result when the loop ends"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_command_reports_its_exit_and_output() {
        let end = command_probe(
            &argv(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(end.code, Some(3));
        assert_eq!(end.stdout, "out\n");
        assert_eq!(end.stderr, "err\n");
    }

    #[test]
    fn a_hanging_command_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        // The grandchild writes its pid, then both wait forever.
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let e =
            command_probe(&argv(&["/bin/sh", "-c", &script]), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ProbeError::Timeout(_)), "{e:?}");
        let pid: i64 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild is not our child: wait for its exit on a pidfd (the deadline is
        // a failsafe, not a timing).
        let gone = crate::adapters::process::wait_exit(pid, Duration::from_secs(10));
        assert!(gone, "grandchild {pid} survived the group kill");
    }

    #[test]
    fn a_missing_program_could_not_run() {
        let e = command_probe(&argv(&["/nonexistent/prog"]), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, ProbeError::CouldNotRun(_)), "{e:?}");
    }

    #[test]
    fn run_all_abandons_a_unit_past_its_deadline_and_keeps_the_others() {
        let (_hold, block) = channel::<()>();
        let units: Vec<Deadlined<u32>> = vec![
            Deadlined {
                deadline: Duration::ZERO,
                run: Box::new(move || {
                    // Blocks until the test ends: a probe that ignores its deadline.
                    let _ = block.recv();
                    0
                }),
            },
            Deadlined {
                deadline: Duration::from_secs(30),
                run: Box::new(|| 7),
            },
            Deadlined {
                deadline: Duration::from_secs(30),
                run: Box::new(|| panic!("probe bug")),
            },
        ];
        let results = run_all(units);
        assert_eq!(results[0].0, Err(Overrun::Deadline));
        assert_eq!(results[1].0, Ok(7));
        assert_eq!(results[2].0, Err(Overrun::Panicked));
    }
}
