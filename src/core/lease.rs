//! The merge lease as data and the rule that judges it (whether a holder may be
//! overtaken); `adapters::lease` keeps the file and its lock, and reads the holder's
//! liveness from `/proc`.
//!
//! Under PostgreSQL (several hosts, no shared state dir) a lease is a row of the
//! `leases` table instead ([`LeaseRow`]): whoever finds it absent or expired takes it by
//! raising its generation, and renews or releases only the generation it took. Whether
//! a row may be taken is [`judge_row`]; the holder's name is [`holder_text`].

use crate::core::job::Liveness;

/// Who holds the lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The job that holds it, when a job does (`None` for an operator's run).
    pub job_id: Option<i64>,
    /// The task it merges for, when known.
    pub task: Option<String>,
    /// The holder's pid.
    pub pid: i64,
    /// The holder's start time (`/proc/<pid>/stat` field 22), to tell pid reuse.
    pub pid_start_time: Option<i64>,
    /// When it was taken (unix seconds).
    pub acquired_at: i64,
    /// How long it may be held (seconds) before it counts as stale.
    pub ttl_s: i64,
}

/// Why a lease counts as stale, or that it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseState {
    /// The holder lives and the TTL has not passed.
    Held,
    /// The holder's process is gone (or its pid now belongs to another process).
    HolderDead,
    /// `acquired_at + ttl_s` has passed.
    Expired,
}

impl Lease {
    /// Judges the lease at `now` with the holder's liveness.
    pub fn state(&self, now: i64, holder: Liveness) -> LeaseState {
        if holder != Liveness::Alive {
            LeaseState::HolderDead
        } else if now >= self.acquired_at.saturating_add(self.ttl_s) {
            LeaseState::Expired
        } else {
            LeaseState::Held
        }
    }
}

/// A lease row (`leases`): one holder at a time across hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The lease's name: `merge`, `pass:reconcile`, `pass:post-deploy-tick`.
    pub name: String,
    /// Who holds (or last held) it: [`holder_text`], or anything a human wrote.
    pub holder: String,
    /// Raised by one at every take; renewals and releases name the one they took.
    pub generation: i64,
    /// When the current holder took it (unix seconds).
    pub acquired_at: i64,
    /// When it lapses unless renewed (unix seconds); released: the release's time.
    pub expires_at: i64,
    /// What the holder says about itself (JSON for the merge lease: job and task).
    pub detail: Option<String>,
    /// When its holder released it (`None` while held, or once it lapsed unreleased).
    pub released_at: Option<i64>,
}

/// What a would-be holder finds in a lease row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowVerdict {
    /// No row: never taken. Take it at generation 1.
    Free,
    /// Its holder released it: take it.
    Released,
    /// `expires_at <= now` (lapsed, or released): take it over.
    Expired,
    /// Not expired, but its holder is a process of this host that is gone: take it over.
    HolderGone,
    /// Someone else holds it: wait, or give up (exit 75 for a pass).
    Held,
}

impl RowVerdict {
    /// Whether the row may be taken.
    pub fn takeable(self) -> bool {
        self != RowVerdict::Held
    }
}

/// Judges `row` at `now`. `holder` is the holder's liveness when it is a process of this
/// host (its pid can be read here), `None` for another host's (or an unreadable) holder,
/// which only expiry frees.
pub fn judge_row(row: Option<&LeaseRow>, now: i64, holder: Option<Liveness>) -> RowVerdict {
    match row {
        None => RowVerdict::Free,
        Some(r) if r.released_at.is_some() => RowVerdict::Released,
        Some(r) if r.expires_at <= now => RowVerdict::Expired,
        Some(_) if matches!(holder, Some(Liveness::Dead | Liveness::Reused)) => {
            RowVerdict::HolderGone
        }
        Some(_) => RowVerdict::Held,
    }
}

/// The generation a take writes: one above the row's (1 for a new row, and 1 again
/// after the largest value, so it always differs from the one it replaces).
pub fn next_generation(row: Option<&LeaseRow>) -> i64 {
    row.map_or(1, |r| r.generation.checked_add(1).unwrap_or(1))
}

/// Whether a holder that last renewed `since_renewal_s` seconds ago should renew a lease
/// of `ttl_s` now: once half the TTL has passed.
pub fn renewal_due(since_renewal_s: u64, ttl_s: i64) -> bool {
    let half = u64::try_from(ttl_s.max(0)).unwrap_or(0) / 2;
    since_renewal_s >= half
}

/// A lease holder's identity: its host, pid and the pid's start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// `ORCH_HOST_ID` of the holder's host.
    pub host: String,
    /// The holder's pid on that host.
    pub pid: i64,
    /// The pid's start time (`/proc/<pid>/stat` field 22), to tell pid reuse.
    pub start_time: Option<i64>,
}

/// The `holder` column of a process: `<host>:<pid>:<start time or ->`.
pub fn holder_text(h: &LeaseHolder) -> String {
    let start = h
        .start_time
        .map_or_else(|| "-".to_string(), |s| s.to_string());
    format!("{}:{}:{start}", h.host, h.pid)
}

/// Reads a `holder` column written by [`holder_text`] (the host may itself contain
/// `:`); `None` for anything else, which only expiry frees.
pub fn parse_holder(text: &str) -> Option<LeaseHolder> {
    let mut parts = text.rsplitn(3, ':');
    let start = parts.next()?;
    let pid = parts.next()?.parse::<i64>().ok().filter(|p| *p > 0)?;
    let host = parts.next().filter(|h| !h.is_empty())?;
    let start_time = match start {
        "-" => None,
        s => Some(s.parse::<i64>().ok()?),
    };
    Some(LeaseHolder {
        host: host.to_string(),
        pid,
        start_time,
    })
}

/// A lease held by job 1 for `ORCH-1` (pid 1), for tests here and in the adapter.
#[cfg(test)]
pub(crate) fn sample(acquired_at: i64, ttl_s: i64) -> Lease {
    Lease {
        job_id: Some(1),
        task: Some("ORCH-1".into()),
        pid: 1,
        pid_start_time: None,
        acquired_at,
        ttl_s,
    }
}

#[cfg(test)]
mod tests {
    use super::sample as lease;
    use super::*;

    #[test]
    fn lease_states_at_their_boundaries() {
        let l = lease(100, 60);
        assert_eq!(l.state(100, Liveness::Alive), LeaseState::Held);
        assert_eq!(l.state(159, Liveness::Alive), LeaseState::Held);
        assert_eq!(l.state(160, Liveness::Alive), LeaseState::Expired);
        assert_eq!(l.state(100, Liveness::Dead), LeaseState::HolderDead);
        assert_eq!(l.state(100, Liveness::Reused), LeaseState::HolderDead);
    }

    fn row(generation: i64, expires_at: i64) -> LeaseRow {
        LeaseRow {
            name: "merge".into(),
            holder: "h1:42:7".into(),
            generation,
            acquired_at: expires_at.saturating_sub(60),
            expires_at,
            detail: None,
            released_at: None,
        }
    }

    #[test]
    fn a_row_is_free_expired_gone_or_held() {
        use RowVerdict::*;
        let r = row(3, 160);
        let cases: &[(Option<&LeaseRow>, i64, Option<Liveness>, RowVerdict)] = &[
            (None, 100, None, Free),
            (None, 100, Some(Liveness::Alive), Free),
            (Some(&r), 159, None, Held),
            (Some(&r), 159, Some(Liveness::Alive), Held),
            (Some(&r), 160, None, Expired),
            (Some(&r), 160, Some(Liveness::Alive), Expired),
            (Some(&r), 10_000, None, Expired),
            (Some(&r), 100, Some(Liveness::Dead), HolderGone),
            (Some(&r), 100, Some(Liveness::Reused), HolderGone),
        ];
        for (row, now, live, want) in cases {
            assert_eq!(
                judge_row(*row, *now, *live),
                *want,
                "{row:?} at {now} {live:?}"
            );
            assert_eq!(want.takeable(), *want != Held);
        }
        let released = LeaseRow {
            released_at: Some(150),
            ..r.clone()
        };
        assert_eq!(judge_row(Some(&released), 100, None), Released);
        assert_eq!(
            judge_row(Some(&released), 100, Some(Liveness::Alive)),
            Released
        );
        // Bad forms: a negative expiry is long past; a huge one is held.
        assert_eq!(judge_row(Some(&row(1, -5)), 0, None), Expired);
        assert_eq!(judge_row(Some(&row(1, i64::MAX)), i64::MAX - 1, None), Held);
        assert_eq!(judge_row(Some(&row(1, i64::MIN)), i64::MIN, None), Expired);
    }

    #[test]
    fn generations_always_move() {
        assert_eq!(next_generation(None), 1);
        assert_eq!(next_generation(Some(&row(1, 0))), 2);
        assert_eq!(next_generation(Some(&row(-7, 0))), -6);
        assert_eq!(next_generation(Some(&row(i64::MAX, 0))), 1);
    }

    #[test]
    fn renewal_is_due_at_half_the_ttl() {
        assert!(!renewal_due(0, 120));
        assert!(!renewal_due(59, 120));
        assert!(renewal_due(60, 120));
        assert!(renewal_due(0, 1));
        assert!(renewal_due(0, -3));
    }

    #[test]
    fn holders_round_trip_and_garbage_is_none() {
        let h = LeaseHolder {
            host: "db:a".into(),
            pid: 42,
            start_time: Some(7),
        };
        assert_eq!(holder_text(&h), "db:a:42:7");
        assert_eq!(parse_holder("db:a:42:7"), Some(h));
        let none = LeaseHolder {
            host: "h".into(),
            pid: 1,
            start_time: None,
        };
        assert_eq!(parse_holder(&holder_text(&none)), Some(none));
        for bad in [
            "", "garbage", "h:x:1", ":1:2", "h:0:1", "h:-4:1", "h:1:x", "\u{0}:::",
        ] {
            assert_eq!(parse_holder(bad), None, "{bad:?}");
        }
    }
}
