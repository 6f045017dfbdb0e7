//! Human holds: an operator's "freeze project P now, or until T" (release freeze,
//! incident). While a project's hold is on, `merge-guard` answers BLOCKED with its
//! reason and `dispatch` starts none of its deployer jobs. Pure: the forms `--until`
//! takes, the hold as read back, and the sentence the guard and dispatch print.

use crate::core::when::format_unix;

/// When a hold lapses by itself, as given to `hold set --until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// At this instant (unix seconds), from an RFC 3339 form.
    At(i64),
    /// This many seconds after the pass's time, from a duration such as `2h` or `1h30m`.
    In(i64),
}

impl Until {
    /// Returns the instant (unix seconds) the hold lapses at, for a hold set at `now`.
    pub fn resolve(self, now: i64) -> i64 {
        match self {
            Until::At(t) => t,
            Until::In(secs) => now.saturating_add(secs),
        }
    }
}

/// The units a duration may use, with their length in seconds.
const UNITS: [(char, i64); 5] = [
    ('w', 7 * 86_400),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

/// Parses `--until`: an RFC 3339 instant (`2026-12-01T18:00:00Z`) or a duration of
/// whole numbers each followed by a unit, `w` `d` `h` `m` or `s` (`2h`, `1h30m`, `3d`).
///
/// # Errors
/// Names both accepted forms when `text` is neither, or the duration is zero.
pub fn parse_until(text: &str) -> Result<Until, String> {
    let t = text.trim();
    let expected = || {
        format!(
            "expected an RFC 3339 instant such as 2026-12-01T18:00:00Z or a duration such as 2h, 1h30m or 3d, got {text:?}"
        )
    };
    if t.contains('T') || t.contains(':') {
        return t
            .parse::<jiff::Timestamp>()
            .map(|ts| Until::At(ts.as_second()))
            .map_err(|_| expected());
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = UNITS
            .iter()
            .find(|(u, _)| *u == c)
            .map(|(_, s)| *s)
            .ok_or_else(expected)?;
        let n: i64 = digits.parse().map_err(|_| expected())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(expected)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(if total == 0 && digits.is_empty() && !t.is_empty() {
            format!("a hold of zero length lifts at once; give a duration above 0, got {text:?}")
        } else {
            expected()
        });
    }
    Ok(Until::In(total))
}

/// A project's hold as it stands (the newest `set` of a project not cleared since).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hold {
    /// The project held.
    pub project: String,
    /// Why, as given.
    pub reason: String,
    /// When it lapses by itself (unix seconds); `None`: until cleared.
    pub until: Option<i64>,
    /// When it was set (unix seconds).
    pub set_at: i64,
    /// Who set it (`--by`, else the OS user).
    pub by: String,
    /// The OS user that ran `hold set`.
    pub os_user: String,
    /// The job whose agent set it, when set from inside an agent.
    pub agent_job: Option<i64>,
}

impl Hold {
    /// Whether the hold is on at `now` (its `until`, if any, still ahead).
    pub fn is_on(&self, now: i64) -> bool {
        self.until.is_none_or(|u| u > now)
    }

    /// The sentence `merge-guard` and `dispatch` give for what the hold stops.
    pub fn describe(&self) -> String {
        let until = match self.until {
            Some(u) => format!("until {}", format_unix(u)),
            None => "until cleared".to_string(),
        };
        format!(
            "project {} is on hold ({until}, set {} by {}): {}",
            self.project,
            format_unix(self.set_at),
            self.by,
            self.reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_takes_an_instant_or_a_duration() {
        assert_eq!(
            parse_until("2026-11-25T05:00:00Z"),
            Ok(Until::At(1_795_582_800))
        );
        assert_eq!(
            parse_until("2026-11-25T06:00:00+01:00"),
            Ok(Until::At(1_795_582_800))
        );
        assert_eq!(parse_until("2h"), Ok(Until::In(7_200)));
        assert_eq!(parse_until("1h30m"), Ok(Until::In(5_400)));
        assert_eq!(parse_until("3d"), Ok(Until::In(259_200)));
        assert_eq!(parse_until("1w2d"), Ok(Until::In(777_600)));
        assert_eq!(parse_until("45s"), Ok(Until::In(45)));
        assert_eq!(Until::In(60).resolve(1_000), 1_060);
        assert_eq!(Until::At(5).resolve(1_000), 5);
    }

    #[test]
    fn other_forms_are_refused_with_both_forms_named() {
        for bad in [
            "",
            "2",
            "h",
            "2x",
            "2h3",
            "tomorrow",
            "-2h",
            "2026-11-25 05:00",
            "2.5h",
            "1h 30m",
        ] {
            let e = parse_until(bad).unwrap_err();
            assert!(
                e.contains("RFC 3339") && e.contains("duration"),
                "{bad:?}: {e}"
            );
        }
        assert!(parse_until("0h").unwrap_err().contains("zero length"));
        assert!(parse_until("99999999999999999w").is_err());
    }

    #[test]
    fn a_hold_is_on_until_its_instant() {
        let mut h = Hold {
            project: "shop".into(),
            reason: "release freeze".into(),
            until: Some(100),
            set_at: 10,
            by: "ada".into(),
            os_user: "ada".into(),
            agent_job: None,
        };
        assert!(h.is_on(99));
        assert!(!h.is_on(100), "it lapses at its instant");
        assert_eq!(
            h.describe(),
            "project shop is on hold (until 1970-01-01T00:01:40Z, set 1970-01-01T00:00:10Z by ada): release freeze"
        );
        h.until = None;
        assert!(h.is_on(i64::MAX));
    }
}
