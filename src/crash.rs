//! Crash points for crash tests: `ORCH_CRASH_AT=<point>` makes the process kill itself
//! with SIGKILL when it reaches that named point (real death: no unwinding, no
//! destructors, no commit of an open transaction, nothing flushed).
//!
//! The points sit between each pair of effects of starting a task and of acting on a
//! webhook delivery, and between moving an artefact aside and the move it is for, so a
//! test can prove that a crash at any of them leaves state that the next `reconcile`
//! pass finishes without doing anything twice (docs/webhook.md, "Crash points"). Unset
//! (production) it costs one comparison per point. `main` arms it once from the
//! environment; an unknown point name is refused there (exit 2), so a typo cannot make
//! a crash test pass by never crashing.

use std::sync::OnceLock;

/// The environment variable that arms a crash point (read by `main`, not a setting).
pub const ENV: &str = "ORCH_CRASH_AT";

/// Every crash point: a start delivery's, in the order it reaches them, then a move's.
pub const POINTS: &[&str] = &[
    // The delivery row is committed (and answered); nothing acted on yet.
    "delivery-stored",
    // Inside the transaction that writes the delivery's effects: the effects are
    // written, the outcome not yet; the kill rolls the transaction back.
    "delivery-acted",
    // The task and its analyst job (and a delivery's outcome) are committed; the
    // branch has not been asked for.
    "task-stored",
    // Gitea has the branch; the task's `branch_ready_at` is not yet written.
    "branch-created",
    // Everything is done and recorded; the process has not reported yet.
    "delivery-done",
    // A move into review, deploy-staging or deploy moved the stage's artefact of an
    // earlier visit into history/; the move itself is not committed yet.
    "artefact-set-aside",
    // A move back to development wrote its feedback file; the move itself is not
    // committed yet.
    "feedback-written",
    // A developer re-run for red CI wrote its feedback file; the re-run (and its count on
    // the task) is not committed yet.
    "ci-feedback-written",
];

static ARMED: OnceLock<&'static str> = OnceLock::new();

/// Arms the crash point named by `ORCH_CRASH_AT` (`None` or empty: none).
///
/// # Errors
/// When the name is not one of [`POINTS`].
pub fn arm(point: Option<&str>) -> Result<(), String> {
    let Some(point) = point.filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let Some(known) = POINTS.iter().find(|p| **p == point) else {
        return Err(format!(
            "ORCH_CRASH_AT: unknown crash point {point:?}; expected one of {}",
            POINTS.join(", ")
        ));
    };
    let _ = ARMED.set(known);
    Ok(())
}

/// Kills this process with SIGKILL when `name` is the armed crash point.
pub fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown crash point {name}");
    if ARMED.get().is_some_and(|armed| *armed == name) {
        eprintln!("orch: ORCH_CRASH_AT={name}: killing this process (SIGKILL)");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::Kill);
        // SIGKILL cannot be caught; should delivery be delayed, never run on.
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_points_are_refused_and_unset_is_fine() {
        assert!(arm(None).is_ok());
        assert!(arm(Some("")).is_ok());
        let err = arm(Some("delivery-stord")).unwrap_err();
        assert!(err.contains("delivery-stored"), "{err}");
        // Nothing armed: reaching a point is harmless.
        point("delivery-stored");
    }
}
