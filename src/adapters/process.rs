//! Facts about processes from `/proc`: is a pid alive, and is it still the process we
//! stamped (its start time, field 22 of `/proc/<pid>/stat`, in clock ticks since boot).
//!
//! Pids are reused, so "pid exists" is not "our process is alive": a job's liveness is
//! the pid *and* its stamped start time.

use std::path::Path;

pub use crate::core::job::Liveness;

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

/// Waits until `pid` has exited, for at most `within`, on an event (a pidfd becomes
/// readable when the process ends; it works for processes that are not our children).
/// Returns `true` when it is gone (or was gone already), `false` at the deadline.
pub fn wait_exit(pid: i64, within: std::time::Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return true;
    };
    let Ok(fd) = pidfd_open(p, PidfdFlags::empty()) else {
        return true; // no such process
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let millis = i32::try_from(within.as_millis()).unwrap_or(i32::MAX);
    poll(&mut fds, millis).unwrap_or(0) > 0
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
    fn wait_exit_returns_on_the_exit_event_and_false_at_the_deadline() {
        use std::process::{Command, Stdio};
        let mut child = Command::new("cat").stdin(Stdio::piped()).spawn().unwrap();
        let pid = i64::from(child.id());
        assert!(
            !wait_exit(pid, std::time::Duration::from_millis(20)),
            "cat waits on stdin"
        );
        drop(child.stdin.take());
        assert!(
            wait_exit(pid, std::time::Duration::from_secs(10)),
            "exits on EOF"
        );
        child.wait().unwrap();
        assert!(
            wait_exit(pid, std::time::Duration::ZERO),
            "a reaped pid is gone"
        );
        assert!(wait_exit(-1, std::time::Duration::ZERO));
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

/// Returns the name of the OS user running this process: its real uid's entry in
/// `/etc/passwd`, else `uid N` (a container without one).
pub fn os_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| user_of_uid(&passwd, uid))
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Finds the name of `uid` in the text of `/etc/passwd`.
fn user_of_uid(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod user_tests {
    use super::*;

    #[test]
    fn the_user_of_a_uid_is_its_passwd_name() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# c\norch:x:998:998::/var/lib/orch:/usr/sbin/nologin\n";
        assert_eq!(user_of_uid(passwd, 998).as_deref(), Some("orch"));
        assert_eq!(user_of_uid(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_of_uid(passwd, 5), None);
        assert!(!os_user().is_empty());
    }
}
