//! The one poll-until-deadline loop: try, and while the answer is "not yet" and time is
//! left, pause (never past the deadline) and try again.
//!
//! The monotonic clock and the deadline are parameters, so the loop is tested with a
//! stepped clock and no real waiting. Waiting on an event (a pipe, a pidfd, a channel)
//! is better where there is one; this is for state that can only be looked at.

use std::time::{Duration, Instant};

/// A monotonic clock that can also wait.
pub trait Monotonic {
    /// Returns the current instant.
    fn now(&self) -> Instant;
    /// Waits for `pause`.
    fn sleep(&self, pause: Duration);
}

/// The real monotonic clock: [`Instant::now`] and [`std::thread::sleep`].
#[derive(Debug, Default, Clone, Copy)]
pub struct RealTime;

impl Monotonic for RealTime {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, pause: Duration) {
        std::thread::sleep(pause);
    }
}

/// What one try is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// How many tries came before this one (0 for the first).
    pub n: u32,
    /// The time left until the deadline when this try starts (zero: at or past it).
    pub left: Duration,
}

/// What one try answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    /// Finished with this value: the loop returns it.
    Done(T),
    /// Not yet: try again after this pause (cut to the time left).
    Again(Duration),
}

/// The deadline passed with every try answering "not yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// Calls `attempt` until it is [`Step::Done`], pausing as it asks between tries but
/// never past `deadline`. After a "not yet" with no time left the loop ends with
/// [`TimedOut`]; since a pause is cut to the time left, the last try starts at the
/// deadline (unless the one before it ran past it).
///
/// # Errors
/// [`TimedOut`] when the deadline passed first.
pub fn until<T>(
    time: &impl Monotonic,
    deadline: Instant,
    mut attempt: impl FnMut(Attempt) -> Step<T>,
) -> Result<T, TimedOut> {
    let left = || deadline.saturating_duration_since(time.now());
    for n in 0u32.. {
        match attempt(Attempt { n, left: left() }) {
            Step::Done(value) => return Ok(value),
            Step::Again(pause) => {
                let left = left();
                if left.is_zero() {
                    break;
                }
                time.sleep(pause.min(left));
            }
        }
    }
    Err(TimedOut)
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;

    /// A clock that moves only when slept on (and by `work` per try).
    struct Stepped {
        now: Cell<Instant>,
        slept: RefCell<Vec<Duration>>,
    }

    impl Stepped {
        fn new() -> Stepped {
            Stepped {
                now: Cell::new(Instant::now()),
                slept: RefCell::new(Vec::new()),
            }
        }
        fn advance(&self, d: Duration) {
            self.now.set(self.now.get() + d);
        }
    }

    impl Monotonic for Stepped {
        fn now(&self) -> Instant {
            self.now.get()
        }
        fn sleep(&self, pause: Duration) {
            self.slept.borrow_mut().push(pause);
            self.advance(pause);
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn returns_the_first_done_without_sleeping() {
        let t = Stepped::new();
        let got = until(&t, t.now() + 100 * MS, Step::Done);
        assert_eq!(
            got,
            Ok(Attempt {
                n: 0,
                left: 100 * MS
            })
        );
        assert!(t.slept.borrow().is_empty());
    }

    #[test]
    fn pauses_are_cut_to_the_deadline_and_the_last_try_is_at_it() {
        let t = Stepped::new();
        let mut seen = Vec::new();
        let got: Result<(), _> = until(&t, t.now() + 100 * MS, |a| {
            seen.push(a);
            Step::Again(40 * MS)
        });
        assert_eq!(got, Err(TimedOut));
        assert_eq!(*t.slept.borrow(), [40 * MS, 40 * MS, 20 * MS]);
        let lefts: Vec<_> = seen.iter().map(|a| a.left).collect();
        assert_eq!(lefts, [100 * MS, 60 * MS, 20 * MS, Duration::ZERO]);
        assert_eq!(seen.last().map(|a| a.n), Some(3));
    }

    #[test]
    fn a_try_that_runs_past_the_deadline_is_the_last() {
        let t = Stepped::new();
        let mut tries = 0;
        let got: Result<(), _> = until(&t, t.now() + 10 * MS, |_| {
            tries += 1;
            t.advance(15 * MS);
            Step::Again(MS)
        });
        assert_eq!(got, Err(TimedOut));
        assert_eq!(tries, 1);
        assert!(t.slept.borrow().is_empty());
    }

    #[test]
    fn a_deadline_already_passed_still_gets_one_try() {
        let t = Stepped::new();
        let deadline = t.now();
        t.advance(5 * MS);
        let mut tries = 0;
        let got = until(&t, deadline, |a| {
            tries += 1;
            assert_eq!(a.left, Duration::ZERO);
            Step::<()>::Again(MS)
        });
        assert_eq!((got, tries), (Err(TimedOut), 1));
        let done = until(&t, deadline, |_| Step::Done(7));
        assert_eq!(done, Ok(7));
    }

    #[test]
    fn the_real_clock_waits_until_done() {
        let mut n = 0;
        let got = until(&RealTime, Instant::now() + Duration::from_secs(10), |a| {
            n = a.n;
            if a.n < 2 {
                Step::Again(MS)
            } else {
                Step::Done(a.n)
            }
        });
        assert_eq!((got, n), (Ok(2), 2));
    }
}
