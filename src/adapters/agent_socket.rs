//! The agent socket's wire and its facts about the caller: one JSON request line in, one
//! JSON answer line out ([`AgentRequest`], [`AgentAnswer`]); the peer's pid from the kernel
//! (`SO_PEERCRED`), and the running job whose agent process group that pid is in, read
//! from a database connection opened read-only (a refused request never writes).
//!
//! No decisions here: which verbs and flags are served is `commands::agent_socket`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::adapters::process::parse_stat;
use crate::adapters::spawn::stat_group;

/// The longest request line the server reads (a verb, a task key and a few flags).
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// The longest answer line a client reads (the verb's captured output is capped lower).
pub const MAX_ANSWER_BYTES: u64 = 8 * 1024 * 1024;
/// How long the server waits for the request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One request: a verb, the task the caller named (if any) and its flags, as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRequest {
    /// `task show`, `staging-check` or `merge-guard`.
    pub verb: String,
    /// The task argument the caller gave (`task show X`, `--task X`), when it gave one.
    #[serde(default)]
    pub task: Option<String>,
    /// The flags the caller gave, by name (`--json`, `--merge`, ...).
    #[serde(default)]
    pub flags: Vec<String>,
}

/// The answer: the verb's exit code and output, or why the request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAnswer {
    /// The exit code the client exits with.
    pub exit: i32,
    /// What the client prints on stdout.
    #[serde(default)]
    pub stdout: String,
    /// What the client prints on stderr.
    #[serde(default)]
    pub stderr: String,
    /// Why the request was refused (then `exit` is 2 and nothing ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl AgentAnswer {
    /// A refusal: exit 2, the reason on stderr.
    pub fn refusal(why: &str) -> AgentAnswer {
        AgentAnswer {
            exit: 2,
            stdout: String::new(),
            stderr: format!("error: the agent socket refused the request: {why}\n"),
            refused: Some(why.to_string()),
        }
    }
}

/// Sends `request` to the socket at `path` and reads the answer.
///
/// # Errors
/// When the socket cannot be reached or the answer is not one.
pub fn ask(path: &Path, request: &AgentRequest) -> Result<AgentAnswer> {
    ask_raw(path, &serde_json::to_string(request)?)
}

/// Sends one line as it is (a request, or anything a client could send) to the socket
/// at `path` and reads the answer.
///
/// # Errors
/// When the socket cannot be reached or the answer is not one.
pub fn ask_raw(path: &Path, line: &str) -> Result<AgentAnswer> {
    let mut stream = UnixStream::connect(path)
        .with_context(|| format!("connecting to the agent socket {}", path.display()))?;
    // A server that refuses at once (a job at its request cap) answers and closes
    // before reading: a failed write still leaves its answer to read.
    let sent = stream
        .write_all(line.trim_end().as_bytes())
        .and_then(|()| stream.write_all(b"\n"))
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write));
    if let Err(e) = sent {
        log::debug!("agent socket: the request was not sent whole ({e}); reading the answer");
    }
    let mut text = String::new();
    BufReader::new(stream.take(MAX_ANSWER_BYTES))
        .read_line(&mut text)
        .context("reading the agent socket's answer")?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "the agent socket {} gave no answer (is orch-agent.socket running?)",
            path.display()
        )
    })
}

/// Reads one request line from `stream`, at most [`MAX_REQUEST_BYTES`].
///
/// # Errors
/// When the line cannot be read, is too long, or is not a request (the message says
/// which, for the refusal).
pub fn read_request(stream: &UnixStream) -> Result<AgentRequest> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    let n = BufReader::new(stream.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .context("reading the request line")?;
    if u64::try_from(n).unwrap_or(u64::MAX) >= MAX_REQUEST_BYTES && !line.ends_with('\n') {
        bail!("the request line is longer than {MAX_REQUEST_BYTES} bytes");
    }
    serde_json::from_str(line.trim_end())
        .context("the request is not one JSON line {\"verb\", \"task\", \"flags\"}")
}

/// Writes the answer as one JSON line.
///
/// # Errors
/// When the peer is gone.
pub fn write_answer(mut stream: &UnixStream, answer: &AgentAnswer) -> Result<()> {
    let mut line = serde_json::to_vec(answer)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    Ok(())
}

/// Returns the pid of the process at the other end of a connected Unix socket, as the
/// kernel recorded it when it connected (`SO_PEERCRED`: not something the peer says).
///
/// # Errors
/// When `fd` is not a connected Unix socket.
pub fn peer_pid(fd: impl AsFd) -> Result<i64> {
    let cred = rustix::net::sockopt::get_socket_peercred(fd)
        .context("reading the peer's credentials (SO_PEERCRED): not a Unix socket connection")?;
    Ok(i64::from(cred.pid.as_raw_nonzero().get()))
}

/// The running job a caller belongs to, and its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerJob {
    /// The job.
    pub job_id: i64,
    /// Its task's id.
    pub task_id: i64,
    /// Its task's key.
    pub task_key: String,
    /// Its task's Plane work item id.
    pub work_item_id: String,
    /// The job's agent (`analyst`, `developer`, `reviewer`, `deployer`).
    pub agent: String,
}

/// Returns the running job whose agent process group `pid` is in.
///
/// The group is the one `/proc/<pid>/stat` names; it belongs to a job when its leader
/// is the job's stamped agent (`jobs.pid`, with the same start time, so a reused pid is
/// not taken for the agent), or, in the moment between the spawn and the stamp, when
/// the job has no pid yet and the leader's parent is the job's supervisor. The database
/// is opened read-only.
///
/// # Errors
/// When the database cannot be read. A pid or group that is gone is `Ok(None)`.
pub fn job_of_peer(db: &Path, pid: i64) -> Result<Option<PeerJob>> {
    let Some(pgid) = read_stat(pid).as_deref().and_then(stat_group) else {
        return Ok(None);
    };
    let Some(leader) = read_stat(pgid) else {
        return Ok(None);
    };
    let (Some(parent), Some(started)) = (stat_parent(&leader), parse_stat(&leader)) else {
        return Ok(None);
    };
    let conn = crate::adapters::db::open_read_only(db)?;
    // The job whose stamped agent leads the group; else, between spawn and stamp, the
    // one job without a pid whose supervisor is the leader's parent. Two such rows (a
    // dead supervisor's pid reused before reap flipped its job) name no one: refused.
    let mut stmt = conn.prepare(
        "SELECT j.pid_start_time, j.pid IS NOT NULL, t.id, t.key, t.work_item_id, j.agent, j.id
           FROM jobs j JOIN tasks t ON t.id = j.task_id
          WHERE j.status = 'running'
            AND (j.pid = ?1 OR (j.pid IS NULL AND j.supervisor_pid = ?2))",
    )?;
    let rows = stmt
        .query_map([pgid, parent], |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?,
                r.get::<_, bool>(1)?,
                PeerJob {
                    job_id: r.get(6)?,
                    task_id: r.get(2)?,
                    task_key: r.get(3)?,
                    work_item_id: r.get(4)?,
                    agent: r.get(5)?,
                },
            ))
        })?
        .collect::<crate::adapters::db::sql::Result<Vec<_>>>()?;
    let stamped: Vec<_> = rows.iter().filter(|r| r.1).collect();
    let unstamped: Vec<_> = rows.iter().filter(|r| !r.1).collect();
    let chosen = match (stamped.as_slice(), unstamped.as_slice()) {
        ([one], _) => Some(*one),
        ([], [one]) => Some(*one),
        _ => None,
    };
    Ok(chosen.and_then(|(stamp, _, job)| match stamp {
        Some(s) if *s != started => None,
        _ => Some(job.clone()),
    }))
}

fn read_stat(pid: i64) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// Parses the parent pid of a `/proc/<pid>/stat` line.
fn stat_parent(stat: &str) -> Option<i64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_an_unknown_field_is_not_a_request() {
        let ok: AgentRequest = serde_json::from_str(r#"{"verb":"task show"}"#).unwrap();
        assert_eq!((ok.task, ok.flags.len()), (None, 0));
        let bad = serde_json::from_str::<AgentRequest>(r#"{"verb":"task show","as":"orch"}"#);
        assert!(bad.is_err());
    }

    #[test]
    fn stat_parent_reads_the_fourth_field() {
        assert_eq!(stat_parent("77 (a (b) c) S 12 77 77 0"), Some(12));
        assert_eq!(stat_parent("garbage"), None);
    }

    #[test]
    fn a_pair_of_sockets_knows_its_peer_and_a_gone_pid_has_no_job() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(peer_pid(&a).unwrap(), i64::from(std::process::id()));
        let dir = tempfile::tempdir().unwrap();
        // No such process: no job, and the database is never opened.
        assert_eq!(
            job_of_peer(&dir.path().join("none.db"), i64::MAX).unwrap(),
            None
        );
    }
}
