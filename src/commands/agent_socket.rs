//! `orch agent-socket`: the narrow path from an agent back to orch (docs/security.md,
//! "Running least-privileged with the units").
//!
//! Serves one connection on stdin (an accepted socket: `orch-agent@.service`, started
//! per connection by `orch-agent.socket` with `Accept=yes`), or, with `--listen PATH`,
//! every connection to a socket it binds (development and tests). For each: reads the
//! peer's pid from the kernel (`SO_PEERCRED`), finds the running job whose agent process
//! group it is in (a read-only look at the database), checks the request against the
//! three verbs an agent's prompt names, for that job's own task ([`decide`]), and only
//! then runs the verb as `orch` itself (this binary, as the server's user) and answers
//! with its exit code and output. Anything else is refused, answered with exit 2 and
//! logged; a refused request runs nothing and writes nothing.
//!
//! The client side is [`request_for`] and [`forward`]: with `ORCH_AGENT_SOCKET` set, an
//! agent's `orch task show`, `staging-check` and `merge-guard` ask the socket instead of
//! opening the database.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::adapters::agent_socket::{self as wire, AgentAnswer, AgentRequest, PeerJob};
use crate::adapters::lock::{LockError, LockFile, LockGuard};
use crate::adapters::spawn::{self, exit_code_of, GroupEnd, Output};
use crate::cli::Command;
use crate::commands::task::TaskCommand;
use crate::exit::ExitStatus;
use crate::ops::pass::PassContext;

/// The environment variable that sends an agent's `orch` calls to the socket.
pub const SOCKET_ENV: &str = "ORCH_AGENT_SOCKET";

/// The folder under the state dir holding the per-job request slots' lock files
/// (`job-<id>.<n>`); `reap` removes those of jobs no longer running.
pub const SLOTS_DIR: &str = "agent-socket";

/// The job id of a request slot's lock file name (`job-<id>.<n>`).
pub fn slot_job(name: &str) -> Option<i64> {
    let (id, n) = name.strip_prefix("job-")?.split_once('.')?;
    n.parse::<u32>().ok()?;
    id.parse().ok()
}

/// The most a served verb may run (a staging-check's checks, merge-guard's wait for the
/// merge lease): past it the verb's process group is stopped and the answer is exit 2.
const VERB_DEADLINE: Duration = Duration::from_secs(3600);
/// Output of a served verb kept per stream.
const OUTPUT_LIMIT: u64 = 2 * 1024 * 1024;

/// Serve agents' task show, staging-check and merge-guard for their own task only
///
/// Without --listen, serves the one connection on stdin (systemd's orch-agent@.service,
/// Accept=yes) and exits 0. The caller must be a process in a running job's agent
/// process group (SO_PEERCRED); the request (one JSON line: verb, task, flags) may name
/// only `task show` [--json], `staging-check` [--json] [--strict] or `merge-guard`
/// [--merge], and no task but the job's own. The verb runs as this process's user;
/// the answer is one JSON line (exit, stdout, stderr). Anything else is refused (exit 2
/// in the answer) and logged. See docs/security.md.
#[derive(Debug, clap::Args)]
pub struct AgentSocketArgs {
    /// Bind a Unix socket at PATH and serve every connection (development and tests);
    /// prints `listening on PATH` once it accepts
    #[arg(long, value_name = "PATH")]
    pub listen: Option<PathBuf>,
}

/// Runs the server.
///
/// # Errors
/// When stdin is not a socket, or the socket cannot be bound.
pub fn run(args: &AgentSocketArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let server = Server {
        db: ctx.config.settings.db.clone(),
        state_dir: ctx.config.settings.state_dir.clone(),
        exe: std::env::current_exe().context("finding the orch binary")?,
        max_per_job: ctx.config.settings.agent_socket_max_per_job.0,
    };
    let Some(path) = &args.listen else {
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stdin")?;
        server.serve(&UnixStream::from(fd));
        return Ok(ExitStatus::Success);
    };
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    println!("listening on {}", path.display());
    log::info!("agent-socket: listening on {}", path.display());
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let server = server.clone();
                std::thread::spawn(move || server.serve(&s));
            }
            Err(e) => log::warn!("agent-socket: accept: {e}"),
        }
    }
    Ok(ExitStatus::Success)
}

/// What serving needs, shared by every connection.
#[derive(Debug, Clone)]
struct Server {
    db: PathBuf,
    state_dir: PathBuf,
    exe: PathBuf,
    /// `ORCH_AGENT_SOCKET_MAX_PER_JOB`.
    max_per_job: u32,
}

impl Server {
    /// Serves one connection: never fails, every refusal is answered and logged.
    fn serve(&self, stream: &UnixStream) {
        let peer = wire::peer_pid(stream);
        let answer = match peer {
            Ok(pid) => self.answer(stream, pid),
            Err(e) => refuse(None, &format!("{e:#}")),
        };
        if let Err(e) = wire::write_answer(stream, &answer) {
            log::warn!("agent-socket: the caller left before the answer: {e:#}");
        }
        // A request refused before it was read is still in the socket: closing over
        // unread data would reset the connection under the caller's read of the answer.
        drain(stream);
    }

    fn answer(&self, stream: &UnixStream, pid: i64) -> AgentAnswer {
        let job = match wire::job_of_peer(&self.db, pid) {
            Ok(Some(job)) => job,
            Ok(None) => {
                return refuse(
                    Some(pid),
                    &format!(
                        "process {pid} is not in a running job's agent process group: only an agent's own calls are served"
                    ),
                )
            }
            Err(e) => return refuse(Some(pid), &format!("{e:#}")),
        };
        // Held from here to the answer (a slow request line counts too); the kernel
        // drops it when this process ends, however it ends.
        let _slot = match self.take_slot(job.job_id) {
            Ok(slot) => slot,
            Err(why) => return refuse(Some(pid), &format!("job {}: {why}", job.job_id)),
        };
        let request = match wire::read_request(stream) {
            Ok(r) => r,
            Err(e) => return refuse(Some(pid), &format!("{e:#}")),
        };
        let argv = match decide(&request, &job) {
            Ok(argv) => argv,
            Err(why) => return refuse(Some(pid), &format!("job {}: {why}", job.job_id)),
        };
        log::info!(
            "agent-socket: job {} (task {}, process {pid}): orch {}",
            job.job_id,
            job.task_key,
            argv.join(" ")
        );
        self.run_verb(&argv, &job)
    }

    /// Takes one of the job's `max_per_job` request slots: a lock file per slot under
    /// `<state dir>/agent-socket/`, so the count holds across the per-connection
    /// processes of `orch-agent@.service` as well as the threads of `--listen`.
    ///
    /// # Errors
    /// Every slot is held (the refusal's reason), or the lock files cannot be used.
    fn take_slot(&self, job_id: i64) -> Result<LockGuard, String> {
        let dir = self.state_dir.join(SLOTS_DIR);
        for k in 0..self.max_per_job {
            match LockFile::try_acquire(&dir.join(format!("job-{job_id}.{k}"))) {
                Ok(guard) => {
                    log::debug!(
                        "agent-socket: job {job_id}: request slot {} of {} taken",
                        k + 1,
                        self.max_per_job
                    );
                    return Ok(guard);
                }
                Err(LockError::Busy(_)) => {}
                Err(e) => return Err(format!("{e}")),
            }
        }
        Err(format!(
            "already {} request(s) in flight for this job (ORCH_AGENT_SOCKET_MAX_PER_JOB); try again when one has been answered",
            self.max_per_job
        ))
    }

    /// Runs `orch ARGV` as this process, for the job (its id names it in the record).
    fn run_verb(&self, argv: &[String], job: &PeerJob) -> AgentAnswer {
        let mut full = vec![self.exe.display().to_string()];
        full.extend(argv.iter().cloned());
        let env = [
            // Never back to the socket: the verb reads the database itself.
            (SOCKET_ENV, String::new()),
            ("ORCH_DB", self.db.display().to_string()),
            ("ORCH_STATE_DIR", self.state_dir.display().to_string()),
            ("ORCH_JOB_ID", job.job_id.to_string()),
            ("ORCH_TASK_ID", job.task_id.to_string()),
        ];
        let output = Output::Capture {
            limit: OUTPUT_LIMIT,
        };
        let grace = spawn::DEADLINE_KILL_GRACE;
        match spawn::run_group(&full, &env, &output, VERB_DEADLINE, grace) {
            Ok(GroupEnd::Exited {
                status,
                stdout,
                stderr,
            }) => AgentAnswer {
                exit: exit_code_of(status),
                stdout,
                stderr,
                refused: None,
            },
            Ok(GroupEnd::TimedOut(how)) => AgentAnswer {
                exit: 2,
                stdout: String::new(),
                stderr: format!(
                    "error: orch {} ran past {} s and was stopped ({how:?})\n",
                    argv.join(" "),
                    VERB_DEADLINE.as_secs()
                ),
                refused: None,
            },
            Err(e) => AgentAnswer {
                exit: 2,
                stdout: String::new(),
                stderr: format!("error: could not run orch {}: {e:?}\n", argv.join(" ")),
                refused: None,
            },
        }
    }
}

/// Reads (and drops) what the peer already sent, without waiting.
fn drain(mut stream: &UnixStream) {
    use std::io::Read as _;
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = [0u8; 8192];
    let mut left = wire::MAX_REQUEST_BYTES;
    while left > 0 {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => left = left.saturating_sub(n as u64),
            _ => break,
        }
    }
}

fn refuse(pid: Option<i64>, why: &str) -> AgentAnswer {
    let who = pid.map_or_else(
        || "an unknown caller".to_string(),
        |p| format!("process {p}"),
    );
    log::warn!("agent-socket: refused {who}: {why}");
    AgentAnswer::refusal(why)
}

/// The verbs served and the flags each may carry.
const VERBS: [(&str, &[&str]); 3] = [
    ("task show", &["--json"]),
    ("staging-check", &["--json", "--strict"]),
    ("merge-guard", &["--merge"]),
];

/// Decides a request for `job`: the argv to run (always with the job's own task), or
/// why not. A task the caller named must be the job's own (its id, key or work item).
///
/// # Errors
/// The refusal's reason: a verb not served, a flag not allowed for it, another task.
pub fn decide(request: &AgentRequest, job: &PeerJob) -> Result<Vec<String>, String> {
    let Some((verb, allowed)) = VERBS.iter().find(|(v, _)| *v == request.verb) else {
        let served: Vec<&str> = VERBS.iter().map(|(v, _)| *v).collect();
        return Err(format!(
            "{:?} is not served here (only {})",
            request.verb,
            served.join(", ")
        ));
    };
    if let Some(flag) = request
        .flags
        .iter()
        .find(|f| !allowed.contains(&f.as_str()))
    {
        return Err(format!(
            "{verb} {flag} is not allowed here (only {})",
            allowed.join(" ")
        ));
    }
    if let Some(named) = request.task.as_deref().map(str::trim) {
        let own = [
            job.task_id.to_string(),
            job.task_key.clone(),
            job.work_item_id.clone(),
        ];
        if !own.iter().any(|o| o == named) {
            return Err(format!(
                "task {named:?} is not this job's task ({}): an agent may ask only about its own",
                job.task_key
            ));
        }
    }
    // Validating staging and merging are the deployer's: a developer or reviewer that
    // could run them (as orch, with orch's Gitea token) could ship its own change past
    // review and deploy.
    if *verb != "task show" && job.agent != "deployer" {
        return Err(format!(
            "{verb} is the deployer's; this is a {} job",
            job.agent
        ));
    }
    let id = job.task_id.to_string();
    let mut argv: Vec<String> = match *verb {
        "task show" => vec!["task".into(), "show".into(), id],
        other => vec![other.into(), "--task".into(), id],
    };
    argv.extend(request.flags.iter().cloned());
    Ok(argv)
}

/// The request an agent's command becomes, for the three verbs the socket serves
/// (`None` for every other command, which runs as usual). Every flag given is named, so
/// the server can refuse what it does not serve.
pub fn request_for(command: &Command) -> Option<AgentRequest> {
    let flag = |on: bool, name: &str| on.then(|| name.to_string());
    let (verb, task, flags) = match command {
        Command::Task(TaskCommand::Show(a)) => (
            "task show",
            Some(a.task.clone()),
            vec![flag(a.json, "--json")],
        ),
        Command::StagingCheck(a) => (
            "staging-check",
            a.task.clone(),
            vec![
                flag(a.json, "--json"),
                flag(a.strict, "--strict"),
                flag(a.report.is_some(), "--report"),
                flag(a.expected_revision.is_some(), "--expected-revision"),
            ],
        ),
        Command::MergeGuard(a) => (
            "merge-guard",
            a.task.clone(),
            vec![
                flag(a.repo.is_some(), "--repo"),
                flag(a.pr.is_some(), "--pr"),
                flag(a.merge, "--merge"),
            ],
        ),
        _ => return None,
    };
    Some(AgentRequest {
        verb: verb.into(),
        task,
        flags: flags.into_iter().flatten().collect(),
    })
}

/// Sends `request` to the socket at `path`, prints the answer's output and returns its
/// exit code (2, with the reason, when the socket cannot be reached).
pub fn forward(path: &Path, request: &AgentRequest) -> ExitCode {
    match wire::ask(path, request) {
        Ok(answer) => {
            print!("{}", answer.stdout);
            eprint!("{}", answer.stderr);
            ExitCode::from(u8::try_from(answer.exit).unwrap_or(2))
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitStatus::Error.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> PeerJob {
        PeerJob {
            job_id: 7,
            task_id: 3,
            task_key: "ORCH-3".into(),
            work_item_id: "wi-3".into(),
            agent: "deployer".into(),
        }
    }

    #[test]
    fn slot_file_names_name_their_job() {
        assert_eq!(slot_job("job-12.0"), Some(12));
        assert_eq!(slot_job("job-12.x"), None);
        assert_eq!(slot_job("notes"), None);
        assert_eq!(slot_job("job-.1"), None);
    }

    #[test]
    fn only_the_deployer_validates_staging_and_merges() {
        for agent in ["analyst", "developer", "reviewer"] {
            let j = PeerJob {
                agent: agent.into(),
                ..job()
            };
            assert!(decide(&req("task show", None, &[]), &j).is_ok(), "{agent}");
            for verb in ["staging-check", "merge-guard"] {
                let e = decide(&req(verb, None, &[]), &j).unwrap_err();
                assert!(e.contains("is the deployer's"), "{agent} {verb}: {e}");
            }
        }
    }

    fn req(verb: &str, task: Option<&str>, flags: &[&str]) -> AgentRequest {
        AgentRequest {
            verb: verb.into(),
            task: task.map(String::from),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn the_three_verbs_run_for_the_jobs_own_task_only() {
        let served = [
            (
                req("task show", Some("ORCH-3"), &["--json"]),
                "task show 3 --json",
            ),
            (req("task show", Some("3"), &[]), "task show 3"),
            (
                req("staging-check", None, &["--strict"]),
                "staging-check --task 3 --strict",
            ),
            (
                req("merge-guard", Some("wi-3"), &["--merge"]),
                "merge-guard --task 3 --merge",
            ),
        ];
        for (r, argv) in served {
            assert_eq!(decide(&r, &job()).unwrap().join(" "), argv, "{r:?}");
        }
        let refused = [
            (req("task move", Some("ORCH-3"), &[]), "is not served here"),
            (
                req("task show", Some("ORCH-4"), &[]),
                "not this job's task (ORCH-3)",
            ),
            (
                req("staging-check", None, &["--report"]),
                "--report is not allowed",
            ),
            (
                req("merge-guard", None, &["--repo", "--pr"]),
                "--repo is not allowed",
            ),
            (req("webhook-handle", None, &[]), "not served"),
        ];
        for (r, why) in refused {
            let e = decide(&r, &job()).unwrap_err();
            assert!(e.contains(why), "{r:?}: {e}");
        }
    }

    #[test]
    fn every_flag_of_the_three_commands_is_named_in_the_request() {
        use clap::Parser as _;
        let parse = |args: &[&str]| {
            let cli = crate::cli::Cli::try_parse_from(args).unwrap();
            request_for(&cli.command)
        };
        let r = parse(&[
            "orch",
            "staging-check",
            "--report",
            "x",
            "--expected-revision",
            "abc1234",
        ]);
        let r = r.unwrap();
        assert_eq!(r.flags, ["--report", "--expected-revision"]);
        let r = parse(&["orch", "merge-guard", "--repo", "o/r", "--pr", "4"]).unwrap();
        assert_eq!(
            (r.task, r.flags),
            (None, vec!["--repo".into(), "--pr".into()])
        );
        assert_eq!(parse(&["orch", "task", "list"]), None);
    }
}
