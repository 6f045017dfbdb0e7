//! Where log lines go and how they look: on a terminal or in a file, with a timestamp
//! and the level; under journald, with the sd-daemon `<N>` priority prefix
//! (sd-daemon(3)) so `journalctl -p warning` finds warnings and errors.
//!
//! Journald is detected as systemd.exec(5) says: `JOURNAL_STREAM` holds the device and
//! inode of the stream systemd connected, and only when they match stderr's own is
//! stderr that stream. A `run-job` started from a unit inherits the variable while its
//! stderr is its own log file: there the lines keep their timestamps.

use std::io::Write as _;
use std::sync::OnceLock;

/// How lines written to stderr are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    /// stderr is journald's stream: `<N>` priority prefix, no timestamp.
    Journal,
    /// Anything else: a timestamp and the level name.
    Plain,
}

impl LogSink {
    /// Decides from `JOURNAL_STREAM` (`device:inode`, as systemd writes it) and the
    /// device and inode of stderr (`None` when it cannot be read).
    pub fn decide(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> LogSink {
        let parsed = journal_stream.and_then(|v| {
            let (dev, ino) = v.trim().split_once(':')?;
            Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
        });
        match (parsed, stderr) {
            (Some(want), Some(have)) if want == have => LogSink::Journal,
            _ => LogSink::Plain,
        }
    }

    /// Detects the sink of this process's stderr.
    pub fn detect() -> LogSink {
        let stream = std::env::var("JOURNAL_STREAM").ok();
        LogSink::decide(stream.as_deref(), stderr_identity())
    }
}

/// Returns the device and inode of this process's stderr (an `fstat` of a duplicate).
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Returns the sd-daemon priority of a log level: error 3, warning 4, info 6, debug
/// and trace 7.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Prefixes every line of `text` with `<N>` (journald reads the prefix per line, so a
/// message of several lines keeps its priority on each).
pub fn journal_lines(prio: u8, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.split('\n') {
        out.push_str(&format!("<{prio}>{line}\n"));
    }
    out
}

/// The sink `init` was given, for [`say`].
static SINK: OnceLock<LogSink> = OnceLock::new();

/// Installs the logger: stderr at `filter` (RUST_LOG syntax), shaped for `sink`.
pub fn init(filter: &str, sink: LogSink) {
    let _ = SINK.set(sink);
    let mut builder = env_logger::Builder::new();
    builder
        .parse_filters(filter)
        .target(env_logger::Target::Stderr);
    match sink {
        LogSink::Journal => {
            builder.format(|buf, record| {
                let text = record.args().to_string();
                buf.write_all(journal_lines(priority(record.level()), &text).as_bytes())
            });
        }
        LogSink::Plain => {
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
    }
    builder.init();
}

/// Writes `text` to stderr for the person at the terminal, as it is (no timestamp, no
/// level name, not filtered by `ORCH_LOG`), and under journald with `level`'s `<N>`
/// prefix on each line: a command's own `error: …` or refusal lines, which are its
/// answer rather than a log, still reach `journalctl -p`.
pub fn say(level: log::Level, text: &str) {
    let sink = SINK.get().copied().unwrap_or_else(LogSink::detect);
    let out = match sink {
        LogSink::Journal => journal_lines(priority(level), text),
        LogSink::Plain => format!("{text}\n"),
    };
    let _ = std::io::stderr().write_all(out.as_bytes());
}

/// Writes the final `error: …` line of a run to stderr, with priority 3 under journald
/// (it may come before the logger exists: the configuration may not have loaded).
pub fn fatal(sink: LogSink, message: &str) {
    let line = format!("error: {message}");
    let text = match sink {
        LogSink::Journal => journal_lines(priority(log::Level::Error), &line),
        LogSink::Plain => format!("{line}\n"),
    };
    let _ = std::io::stderr().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_only_when_device_and_inode_match_stderr() {
        let me = Some((64769, 1234));
        assert_eq!(LogSink::decide(Some("64769:1234"), me), LogSink::Journal);
        assert_eq!(LogSink::decide(Some("64769:1235"), me), LogSink::Plain);
        assert_eq!(LogSink::decide(Some("1:1234"), me), LogSink::Plain);
        assert_eq!(LogSink::decide(Some("set"), me), LogSink::Plain);
        assert_eq!(LogSink::decide(Some(""), me), LogSink::Plain);
        assert_eq!(LogSink::decide(None, me), LogSink::Plain);
        assert_eq!(LogSink::decide(Some("64769:1234"), None), LogSink::Plain);
    }

    #[test]
    fn priorities_follow_sd_daemon() {
        use log::Level::*;
        let got: Vec<u8> = [Error, Warn, Info, Debug, Trace]
            .into_iter()
            .map(priority)
            .collect();
        assert_eq!(got, [3, 4, 6, 7, 7]);
    }

    #[test]
    fn every_line_of_a_message_carries_the_prefix() {
        assert_eq!(journal_lines(4, "one"), "<4>one\n");
        assert_eq!(journal_lines(3, "a\nb"), "<3>a\n<3>b\n");
    }
}
