//! The `orch` binary: parse, set up logging, load the configuration, run, exit.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use orch::cli::{dispatch, Cli};
use orch::clock::{Clock, FixedClock, SystemClock};
use orch::config::Config;
use orch::exit::ExitStatus;
use orch::ops::pass::PassContext;

fn main() -> ExitCode {
    // Before anything is created: files 0600, directories 0700, whatever the caller's umask.
    orch::adapters::fs::private_umask();
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    // Crash tests only (docs/webhook.md, "Crash points"); unset in production.
    if let Err(e) = orch::crash::arm(env.get(orch::crash::ENV).map(String::as_str)) {
        eprintln!("error: {e}");
        return ExitStatus::Error.into();
    }
    let config = match Config::load(&env, &cli.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitStatus::Error.into();
        }
    };
    // After loading: ORCH_LOG may come from the pipeline file's `settings:` as well as
    // from the environment (config check shows the effective value and its source).
    init_logging(&config.settings.log.0);
    let clock: Box<dyn Clock> = match config.settings.now.0 {
        Some(t) => Box::new(FixedClock(t)),
        None => Box::new(SystemClock),
    };
    // The pass begins here: its time is read once, now.
    let ctx = PassContext::new(config, clock);
    match dispatch(&cli.command, &ctx) {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitStatus::Error.into()
        }
    }
}

/// Logs go to stderr at `filter` (the effective `ORCH_LOG`, RUST_LOG syntax, default
/// `info`); under journald (`JOURNAL_STREAM` set) without timestamps, since journald adds
/// its own.
fn init_logging(filter: &str) {
    let mut builder = env_logger::Builder::new();
    builder
        .parse_filters(filter)
        .target(env_logger::Target::Stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|buf, record| writeln!(buf, "{}: {}", record.level(), record.args()));
    } else {
        builder.format(|buf, record| {
            writeln!(
                buf,
                "{} {:<5} {}",
                buf.timestamp_seconds(),
                record.level(),
                record.args()
            )
        });
    }
    builder.init();
}
