//! The `orch` binary: parse, set up logging, load the configuration, run, exit.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use orch::cli::{dispatch, Cli};
use orch::clock::{Clock, FixedClock, SystemClock};
use orch::config::Config;
use orch::exit::ExitStatus;
use orch::ops::pass::Context;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
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
    let clock: Box<dyn Clock> = match config.settings.now.0 {
        Some(t) => Box::new(FixedClock(t)),
        None => Box::new(SystemClock),
    };
    let ctx = Context { config, clock };
    match dispatch(&cli.command, &ctx) {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitStatus::Error.into()
        }
    }
}

/// Logs go to stderr at `ORCH_LOG` (RUST_LOG syntax, default `info`); under journald
/// (`JOURNAL_STREAM` set) without timestamps, since journald adds its own.
fn init_logging() {
    let filter = std::env::var("ORCH_LOG").unwrap_or_else(|_| "info".into());
    let mut builder = env_logger::Builder::new();
    builder
        .parse_filters(&filter)
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
