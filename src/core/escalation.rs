//! When a task is escalated to a human: the one rule for the developer retry limit, used
//! by the move that counts the retry (in its transaction, so no developer job is queued
//! past the limit) and by reconcile's decision (to announce it once).

/// Whether a rollback along an edge that counts a developer retry (`counts_retry`) brings
/// the count to `retries_after` at or over the limit `max` (`ORCH_MAX_DEVELOPER_RETRIES`):
/// the task is then parked where the rollback leaves it.
pub fn rollback_reaches_limit(counts_retry: bool, retries_after: u32, max: u32) -> bool {
    counts_retry && retries_after >= max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_counted_rollback_at_or_over_the_limit_escalates() {
        assert!(!rollback_reaches_limit(true, 2, 3));
        assert!(rollback_reaches_limit(true, 3, 3));
        assert!(rollback_reaches_limit(true, 4, 3));
        assert!(!rollback_reaches_limit(false, 9, 3), "not a counted edge");
    }
}
