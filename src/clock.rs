//! The clock every time-dependent decision reads, once per pass.
//!
//! `ops::pass::PassContext` calls [`Clock::now`] once per pass and hands the value down. Tests and replays pin
//! time with `ORCH_NOW` (RFC 3339), which `main` turns into a [`FixedClock`].

use jiff::Timestamp;

pub use crate::core::when::{format_unix, human_duration};

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Returns the current instant.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock pinned to one instant (tests, `ORCH_NOW` replays).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

/// Parses an RFC 3339 instant such as `2026-11-25T03:00:00Z`.
///
/// # Errors
/// Returns the expected form when `text` is not RFC 3339 with an offset.
pub fn parse_instant(text: &str) -> Result<Timestamp, String> {
    text.trim().parse::<Timestamp>().map_err(|_| {
        format!("expected an RFC 3339 instant such as 2026-11-25T03:00:00Z, got {text:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_and_rejects_other_forms() {
        let t = parse_instant("2026-11-25T03:00:00Z").unwrap();
        assert_eq!(t.as_second(), 1_795_575_600);
        assert!(parse_instant("2026-11-25 03:00").is_err());
        assert!(parse_instant("yesterday").is_err());
        assert!(parse_instant("").is_err());
    }

    #[test]
    fn fixed_clock_does_not_move() {
        let c = FixedClock(parse_instant("2026-01-01T00:00:00Z").unwrap());
        assert_eq!(c.now(), c.now());
    }

    #[test]
    fn human_durations_at_their_boundaries() {
        assert_eq!(human_duration(-5), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(60), "1m00s");
        assert_eq!(human_duration(3599), "59m59s");
        assert_eq!(human_duration(3600), "1h00m");
        assert_eq!(human_duration(86_400), "1d00h");
    }
}
