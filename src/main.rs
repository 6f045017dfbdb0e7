//! The `orch` binary: parse, set up logging, load the configuration, run, exit.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Parser;

use orch::cli::{dispatch, Cli};
use orch::clock::{Clock, FixedClock, SystemClock};
use orch::commands::agent_socket;
use orch::config::Config;
use orch::exit::ExitStatus;
use orch::logging::{fatal, LogSink};
use orch::ops::pass::PassContext;

fn main() -> ExitCode {
    // Before anything is created: files 0600, directories 0700, whatever the caller's umask.
    orch::adapters::fs::private_umask();
    let cli = Cli::parse();
    // Decided once: every line of this run, the final `error:` included, takes one shape.
    let sink = LogSink::detect();
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    // Inside an agent with the agent socket: its task show, staging-check and
    // merge-guard ask orch through the socket instead of opening the database (which a
    // separate agent user cannot), before any configuration is read.
    if let Some(socket) = env.get(agent_socket::SOCKET_ENV).filter(|s| !s.is_empty()) {
        if let Some(request) = agent_socket::request_for(&cli.command) {
            return agent_socket::forward(std::path::Path::new(socket), &request);
        }
    }
    // Crash tests only (docs/webhook.md, "Crash points"); unset in production.
    if let Err(e) = orch::crash::arm(env.get(orch::crash::ENV).map(String::as_str)) {
        fatal(sink, &e.to_string());
        return ExitStatus::Error.into();
    }
    let config = match Config::load(&env, &cli.overrides()) {
        Ok(c) => c,
        Err(e) => {
            fatal(sink, &e.to_string());
            return ExitStatus::Error.into();
        }
    };
    // After loading: ORCH_LOG may come from the pipeline file's `settings:` as well as
    // from the environment (config check shows the effective value and its source).
    orch::logging::init(&config.settings.log.0, sink);
    let clock: Box<dyn Clock> = match config.settings.now.0 {
        Some(t) => Box::new(FixedClock(t)),
        None => Box::new(SystemClock),
    };
    // The pass begins here: its time is read once, now.
    let ctx = PassContext::new(config, clock);
    let result = dispatch(&cli.command, &ctx);
    // doctor is read-only: it reports the budget itself and writes nothing.
    if !matches!(cli.command, orch::cli::Command::Doctor(_)) {
        ctx.record_plane_budget();
    }
    match result {
        Ok(status) => status.into(),
        Err(e) => {
            fatal(sink, &format!("{e:#}"));
            ExitStatus::Error.into()
        }
    }
}
