//! Facts about processes from `/proc`: is a pid alive, and is it still the process we
//! stamped (its start time, field 22 of `/proc/<pid>/stat`, in clock ticks since boot).
//!
//! Pids are reused, so "pid exists" is not "our process is alive": a job's liveness is
//! the pid *and* its stamped start time.

use std::path::Path;

/// What `/proc` says about a stamped pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    /// The pid runs and its start time matches the stamp (or no stamp to compare).
    Alive,
    /// No such process, or a zombie.
    Dead,
    /// The pid now belongs to another process (start time differs).
    Reused,
}

impl Liveness {
    /// Returns the word `status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Reused => "reused",
        }
    }
}

/// Returns the start time (clock ticks since boot) of a live, non-zombie `pid`.
pub fn start_time(pid: i64) -> Option<i64> {
    if pid <= 0 || pid > i64::from(i32::MAX) {
        return None;
    }
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&stat)
}

/// Parses `/proc/<pid>/stat`: the start time, or `None` for a zombie or a bad line.
pub fn parse_stat(stat: &str) -> Option<i64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 (starttime) is index 19.
    let state = *fields.first()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Judges a stamped pid.
pub fn liveness(pid: i64, stamped_start: Option<i64>) -> Liveness {
    match (start_time(pid), stamped_start) {
        (None, _) => Liveness::Dead,
        (Some(now), Some(stamp)) if now != stamp => Liveness::Reused,
        (Some(_), _) => Liveness::Alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_awkward_names() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_stat(line), Some(987_654));
        let zombie = "1234 (x) Z 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_stat(zombie), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_stamp_is_reuse() {
        let me = i64::from(std::process::id());
        let start = start_time(me).expect("own /proc entry");
        assert_eq!(liveness(me, Some(start)), Liveness::Alive);
        assert_eq!(liveness(me, Some(start + 1)), Liveness::Reused);
        assert_eq!(liveness(me, None), Liveness::Alive);
        assert_eq!(liveness(0, None), Liveness::Dead);
        assert_eq!(liveness(-5, None), Liveness::Dead);
        assert_eq!(liveness(i64::MAX, None), Liveness::Dead);
    }
}
