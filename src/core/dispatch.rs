//! Which queued jobs a `dispatch` pass starts: as many as free slots allow under
//! `ORCH_MAX_CONCURRENCY`, oldest first, fair across projects.
//!
//! Fair means one busy project cannot starve another: each next slot goes to the project
//! with the fewest jobs running (counting those picked this pass), ties broken by whose
//! oldest queued job is older. Within a project jobs start oldest first. No I/O here.

use std::collections::BTreeMap;

/// One queued job as the decision sees it (the oldest few per project suffice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Job id.
    pub id: i64,
    /// The task's project.
    pub project: String,
    /// When it was enqueued (unix seconds).
    pub enqueued_at: i64,
}

/// Returns the ids to start, in start order.
///
/// `queued` may come in any order; `running` counts running jobs per project; `limit` is
/// `ORCH_MAX_CONCURRENCY`.
pub fn pick(queued: &[Queued], running: &BTreeMap<String, u32>, limit: u32) -> Vec<i64> {
    let total_running: u32 = running.values().sum();
    let mut free = limit.saturating_sub(total_running);
    // Per project, its queue oldest first.
    let mut queues: BTreeMap<&str, Vec<&Queued>> = BTreeMap::new();
    for q in queued {
        queues.entry(q.project.as_str()).or_default().push(q);
    }
    for v in queues.values_mut() {
        v.sort_by_key(|q| (q.enqueued_at, q.id));
        v.reverse(); // pop() takes the oldest
    }
    let mut load: BTreeMap<&str, u32> = queues
        .keys()
        .map(|p| (*p, running.get(*p).copied().unwrap_or(0)))
        .collect();
    let mut out = Vec::new();
    while free > 0 {
        let next = queues
            .iter()
            .filter_map(|(p, v)| v.last().map(|head| (*p, head)))
            .min_by_key(|(p, head)| (load[p], head.enqueued_at, head.id));
        let Some((project, _)) = next else { break };
        let job = queues
            .get_mut(project)
            .and_then(Vec::pop)
            .expect("the chosen project has a head");
        out.push(job.id);
        *load
            .get_mut(project)
            .expect("every queued project has a load") += 1;
        free -= 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: i64, project: &str, at: i64) -> Queued {
        Queued {
            id,
            project: project.into(),
            enqueued_at: at,
        }
    }

    fn running(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(p, n)| (p.to_string(), *n)).collect()
    }

    type Case<'a> = (&'a [Queued], &'a [(&'a str, u32)], u32, &'a [i64]);

    #[test]
    fn picks_oldest_first_fairly_under_the_limit() {
        let busy: Vec<Queued> = (1..=5).map(|i| q(i, "orch", i)).collect();
        let mut all = busy.clone();
        all.push(q(9, "shop", 100));
        let cases: &[Case<'_>] = &[
            (&[], &[], 4, &[]),
            (&busy, &[], 1, &[1]),
            (&busy, &[], 3, &[1, 2, 3]),
            // Full: nothing starts; over-full is not negative.
            (&busy, &[("orch", 2)], 2, &[]),
            (&busy, &[("orch", 5)], 2, &[]),
            // A younger job of a quiet project gets the second slot.
            (&all, &[], 2, &[1, 9]),
            // The project already running gets nothing while another waits.
            (&all, &[("orch", 1)], 2, &[9]),
            (&all, &[("shop", 3)], 5, &[1, 2]),
            // Only one slot: the idle project first, even with a younger job.
            (&all, &[("orch", 1)], 2, &[9]),
        ];
        for (queued, run, limit, want) in cases {
            assert_eq!(
                pick(queued, &running(run), *limit),
                want.to_vec(),
                "{run:?} {limit}"
            );
        }
    }

    #[test]
    fn order_of_input_does_not_matter_and_ties_break_on_id() {
        let a = vec![q(3, "b", 5), q(2, "a", 5), q(1, "a", 5)];
        assert_eq!(pick(&a, &BTreeMap::new(), 3), vec![1, 3, 2]);
    }
}
