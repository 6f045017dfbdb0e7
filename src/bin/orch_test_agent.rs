//! A stand-in agent for tests, benches and the walkthrough (test-helpers only).
//!
//! `orch-test-agent [--ready-fifo PATH] [--fork] [--hold | --hold-forever]
//! [--ignore-term] [--exit N] [ARGS...]`
//!
//! Announces `ready <pid> [<grandchild pid>]` (on the FIFO when given, so a test can
//! wait on it as an event, else on stdout), optionally after starting a grandchild in
//! its own process group (`--fork`); then blocks on stdin until EOF (`--hold`) or until
//! killed (`--hold-forever`), and exits with `--exit N` (default 0). `--ignore-term`
//! makes it (and its grandchild) survive SIGTERM, so only KILL stops it. It also prints
//! the `ORCH_*` job environment and its arguments, so tests can check them in the log.
//!
//! `orch-test-agent --socket-request JSON` sends JSON (a request any client could
//! craft, not only what `orch` sends) to `$ORCH_AGENT_SOCKET` and prints the answer's
//! output and `answer exit N`; exits 0, 2 when the socket gave no answer.
//!
//! `orch-test-agent --socket-idle` connects to `$ORCH_AGENT_SOCKET`, sends nothing and
//! holds the connection until killed (a request in flight, for the per-job cap).
//!
//! `orch-test-agent --wait-pid PID` only waits, on a pidfd, until process PID (not a
//! child: a detached `run-job` supervisor) has exited, then exits 0; 1 if it still runs
//! after 120 s. Scripts use it to wait for a job as an event, where `tail --pid` polls
//! once a second.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args == ["--socket-idle"] {
        let path = std::env::var("ORCH_AGENT_SOCKET").unwrap_or_default();
        let _held = std::os::unix::net::UnixStream::connect(&path).expect("connect to the socket");
        loop {
            std::thread::park();
        }
    }
    if let [flag, request] = args.as_slice() {
        if flag == "--socket-request" {
            socket_request(request);
        }
    }
    if let [flag, pid] = args.as_slice() {
        if flag == "--wait-pid" {
            let Ok(pid) = pid.parse::<i64>() else {
                eprintln!("--wait-pid needs a process id, not {pid:?}");
                std::process::exit(2);
            };
            let ended =
                orch::adapters::process::wait_exit(pid, std::time::Duration::from_secs(120));
            std::process::exit(if ended { 0 } else { 1 });
        }
    }
    let mut fifo = None;
    let mut fork = false;
    let mut hold = false;
    let mut forever = false;
    let mut ignore_term = false;
    let mut report_session = false;
    let mut code = 0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ready-fifo" => fifo = it.next().cloned(),
            "--fork" => fork = true,
            "--hold" => hold = true,
            "--hold-forever" => forever = true,
            "--ignore-term" => ignore_term = true,
            "--report-session" => report_session = true,
            "--exit" => code = it.next().and_then(|c| c.parse().ok()).unwrap_or(2),
            _ => {}
        }
    }
    let _signals = ignore_term.then(|| {
        // Registering a handler replaces TERM's default action (exit): it is ignored.
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM]).expect("signals")
    });
    // Output errors are ignored: a test may stop reading once it saw `ready`.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "args {}", args.join(" "));
    for k in [
        "ORCH_TASK_ID",
        "ORCH_TASK_KEY",
        "ORCH_JOB_ID",
        "ORCH_TASK_ARTEFACTS",
    ] {
        let _ = writeln!(out, "{k}={}", std::env::var(k).unwrap_or_default());
    }
    let mut ready = format!("ready {}", std::process::id());
    if fork {
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        // Its output goes nowhere: only this process announces `ready`.
        cmd.arg("--hold-forever")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if ignore_term {
            cmd.arg("--ignore-term");
        }
        let child = cmd.spawn().expect("start grandchild");
        ready.push_str(&format!(" {}", child.id()));
        // Left running on purpose: it belongs to this process group.
        std::mem::forget(child);
    }
    if report_session {
        // Field 6 of /proc/self/stat: the session id (after the ')' that ends field 2).
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let sid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(3))
            .unwrap_or("?");
        ready.push_str(&format!(" sid={sid}"));
    }
    match &fifo {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .expect("open ready fifo");
            writeln!(f, "{ready}").expect("write ready");
        }
        None => {
            let _ = writeln!(out, "{ready}");
        }
    }
    let _ = out.flush();
    if hold {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    }
    if forever {
        loop {
            std::thread::park();
        }
    }
    std::process::exit(code);
}

fn socket_request(json: &str) -> ! {
    let path = std::env::var("ORCH_AGENT_SOCKET").unwrap_or_default();
    match orch::adapters::agent_socket::ask_raw(std::path::Path::new(&path), json) {
        Ok(a) => {
            print!("{}", a.stdout);
            print!("{}", a.stderr);
            println!("answer exit {}", a.exit);
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("--socket-request: {e:#}");
            std::process::exit(2);
        }
    }
}
