//! A pass's bounds, shared by the pass and the clients it builds: the page cap of every
//! listing (`ORCH_LIST_MAX_PAGES`), the pass deadline (`ORCH_PASS_DEADLINE_S`, on the
//! monotonic clock, so a clock step never moves it) and the bounds the pass hit.
//!
//! A client that reaches the page cap, or is asked to read after the deadline, notes
//! the hit here and answers an error; the pass's loops stop between items once the
//! deadline has passed ([`PassBounds::past_deadline`]); `run_pass` turns any hit into
//! exit 2, a warning and a count in the pass record. Nothing is stopped mid-write:
//! an item in progress finishes, its remote calls bounded by what is left
//! ([`PassBounds::call_timeout`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::adapters::http::HttpError;

/// The page cap a client uses when no pass gave it one (the setting's default).
pub const DEFAULT_MAX_PAGES: usize = 100;

/// Which bound a pass hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A listing reached `ORCH_LIST_MAX_PAGES` pages and was stopped.
    PageCap,
    /// The pass ran past `ORCH_PASS_DEADLINE_S` and stopped between items.
    Deadline,
    /// The pass's lease across hosts was taken over (it outlived its TTL) and the pass
    /// stopped between items.
    LeaseLost,
}

impl Bound {
    /// The count this bound adds to the pass record (`page_cap_hit`, `deadline_hit`).
    pub fn count_name(self) -> &'static str {
        match self {
            Bound::PageCap => "page_cap_hit",
            Bound::Deadline => "deadline_hit",
            Bound::LeaseLost => "lease_lost",
        }
    }
}

/// The bounds of one pass.
#[derive(Debug)]
pub struct PassBounds {
    /// The most pages one listing reads.
    pub max_pages: usize,
    /// How long a pass may run, from [`PassBounds::start`].
    length: Option<Duration>,
    /// When the pass must stop (monotonic); unset: no deadline (yet).
    deadline: std::sync::OnceLock<Instant>,
    /// The whole-call timeout calls use when nothing shorter applies.
    http_timeout: Duration,
    hits: Mutex<Vec<(Bound, String)>>,
}

impl Default for PassBounds {
    fn default() -> PassBounds {
        PassBounds::new(DEFAULT_MAX_PAGES, None, Duration::from_secs(20))
    }
}

impl PassBounds {
    /// Bounds with a page cap, a deadline `length` after [`PassBounds::start`] (none
    /// when `None`) and the configured whole-call timeout.
    pub fn new(max_pages: usize, length: Option<Duration>, http_timeout: Duration) -> PassBounds {
        PassBounds {
            max_pages: max_pages.max(1),
            length,
            deadline: std::sync::OnceLock::new(),
            http_timeout,
            hits: Mutex::new(Vec::new()),
        }
    }

    /// Starts the deadline clock (a pass under `run_pass`; the first call counts). A
    /// command that is not a pass (`run-job` waiting hours for its agent) never starts
    /// it and has no deadline.
    pub fn start(&self) {
        if let Some(length) = self.length {
            let _ = self.deadline.get_or_init(|| Instant::now() + length);
        }
    }

    /// Whether the deadline has passed.
    pub fn past_deadline(&self) -> bool {
        self.deadline.get().is_some_and(|d| Instant::now() >= *d)
    }

    /// When the deadline has passed: notes the hit (once per `what`) and returns true;
    /// the caller stops before its next item.
    pub fn stop_for_deadline(&self, what: &str) -> bool {
        if !self.past_deadline() {
            return false;
        }
        self.hit(
            Bound::Deadline,
            format!("the pass deadline (ORCH_PASS_DEADLINE_S) passed; stopped {what}"),
        );
        true
    }

    /// The timeout of one remote call: `timeout` (the client's own when `None`), never
    /// past the deadline (at least 1 ms, so a late call fails at once as a timeout).
    pub fn call_timeout(&self, timeout: Option<Duration>) -> Option<Duration> {
        let Some(deadline) = self.deadline.get() else {
            return timeout;
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        Some(timeout.unwrap_or(self.http_timeout).min(left))
    }

    /// Notes that the listing `what` reached the page cap and returns its (fatal)
    /// error: the listing is incomplete and the pass says so.
    pub fn page_cap_hit(&self, what: &str) -> HttpError {
        let m = format!(
            "{what}: stopped at the page cap of {} pages (ORCH_LIST_MAX_PAGES)",
            self.max_pages
        );
        self.hit(Bound::PageCap, m.clone());
        HttpError::Fatal(m)
    }

    /// Notes that `bound` was hit, with what was stopped (the first note of the same
    /// text is kept).
    pub fn hit(&self, bound: Bound, detail: String) {
        let mut hits = self
            .hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !hits.iter().any(|(b, d)| *b == bound && *d == detail) {
            log::warn!("{detail}");
            hits.push((bound, detail));
        }
    }

    /// The bounds hit so far, in order.
    pub fn hits(&self) -> Vec<(Bound, String)> {
        self.hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_never_outlives_the_deadline() {
        let none = PassBounds::new(5, None, Duration::from_secs(20));
        assert_eq!(none.call_timeout(None), None);
        assert_eq!(
            none.call_timeout(Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert!(!none.stop_for_deadline("x"));
        let far = PassBounds::new(5, Some(Duration::from_secs(3600)), Duration::from_secs(20));
        far.start();
        assert_eq!(far.call_timeout(None), Some(Duration::from_secs(20)));
        let near = PassBounds::new(5, Some(Duration::from_secs(2)), Duration::from_secs(20));
        near.start();
        assert!(near.call_timeout(None).unwrap() <= Duration::from_secs(2));
        let past = PassBounds::new(5, Some(Duration::ZERO), Duration::from_secs(20));
        assert_eq!(
            past.call_timeout(None),
            None,
            "no deadline before the pass starts"
        );
        assert!(!past.stop_for_deadline("listing"));
        past.start();
        assert_eq!(past.call_timeout(None), Some(Duration::from_millis(1)));
        assert!(past.stop_for_deadline("listing"));
        assert!(past.stop_for_deadline("listing"));
        assert_eq!(past.hits().len(), 1, "the same stop is noted once");
        assert_eq!(past.hits()[0].0, Bound::Deadline);
    }
}
