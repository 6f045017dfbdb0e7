//! Which queued jobs a `dispatch` pass starts: as many as free slots allow under
//! `ORCH_MAX_CONCURRENCY`, by priority then age, fair across projects, and never two
//! jobs on the one staging environment at once.
//!
//! How fairness and priority combine: fairness between projects comes first, priority
//! decides within it. Each next slot goes to the project with the fewest jobs running
//! (counting those picked this pass); among projects tied on that count, to the one
//! whose head (its next startable job) comes first by priority (the task's Plane
//! priority: urgent, high, medium, low, none), then age, then id. Within a project jobs
//! start by priority, then oldest first. So an urgent job goes before every older
//! less urgent job of its own project, and before other projects' less urgent heads
//! when the projects are equally loaded; it does not take a slot from a project that
//! has fewer jobs running (one busy project, urgent or not, cannot starve another).
//!
//! Staging is one shared resource (SPEC §3, "the pin"): the pipeline file has one staging
//! environment, and a `deploy-staging` job deploys to it and checks it. So at most one
//! `deploy-staging` job runs at a time, whatever the limit says: while one runs, queued
//! ones wait (and say for which job); a pass starts at most one. Jobs of other stages are
//! not held up by a waiting `deploy-staging` job. No I/O here; the claim's SQL guard
//! (`Db::claim_job`) holds the same rule against racing passes.
//!
//! A job whose agent works on the task's branch (every agent but the analyst) waits while
//! that branch is not confirmed on Gitea (a start or a reopen that found Gitea down):
//! started now, it would work on a branch that does not exist, or on the last round's.
//! The next `reconcile` creates the branch, and the job starts on the pass after.

use std::collections::BTreeMap;

use crate::core::priority::Priority;

/// One queued job as the decision sees it (the first few per project, in start order,
/// suffice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Job id.
    pub id: i64,
    /// The task's project.
    pub project: String,
    /// When it was enqueued (unix seconds).
    pub enqueued_at: i64,
    /// Its task's priority.
    pub priority: Priority,
    /// Whether it is a `deploy-staging` job (it needs the staging environment).
    pub uses_staging: bool,
    /// Whether its agent needs the task's branch and Gitea has not confirmed it yet
    /// (`tasks.branch_ready_at` unset while Gitea is configured).
    pub branch_missing: bool,
}

impl Queued {
    /// The order jobs start in, all else equal: priority, then age, then id.
    pub fn start_order(&self) -> (Priority, i64, i64) {
        (self.priority, self.enqueued_at, self.id)
    }
}

/// Why a queued job does not start this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Wait {
    /// Every slot under the limit is taken (or went to another project's turn).
    NoSlot,
    /// The staging environment is held by this running `deploy-staging` job.
    StagingHeld {
        /// The job holding staging.
        by_job: i64,
    },
    /// The staging environment goes to this job, started by this same pass.
    StagingTaken {
        /// The job picked to take staging.
        by_job: i64,
    },
    /// The task's branch is not on Gitea yet: reconcile creates it first.
    BranchMissing,
}

/// What a pass does with the queued jobs it looked at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The ids to start, in start order.
    pub start: Vec<i64>,
    /// Every other queued job looked at, in start order (priority, then oldest first),
    /// and why it waits.
    pub waits: Vec<(i64, Wait)>,
}

/// The caps a claim must stay under: `ORCH_MAX_CONCURRENCY` across every host and, when
/// set, `ORCH_MAX_CONCURRENCY_PER_HOST` on the claiming host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Jobs running at once across all hosts.
    pub limit: u32,
    /// Jobs running at once on this host; `None`: no per-host cap.
    pub per_host: Option<u32>,
}

impl Caps {
    /// Only the global limit (one host, or no per-host cap).
    pub fn global(limit: u32) -> Caps {
        Caps {
            limit,
            per_host: None,
        }
    }

    /// How many more jobs this host may start now: the free slots under the global
    /// limit (`running_total` jobs run on every host) and under the per-host cap
    /// (`running_here` of them run on this host), whichever is fewer. Over-full is 0.
    pub fn free(self, running_total: u32, running_here: u32) -> u32 {
        let global = self.limit.saturating_sub(running_total);
        match self.per_host {
            Some(cap) => global.min(cap.saturating_sub(running_here)),
            None => global,
        }
    }

    /// Whether one more job may be claimed on this host: the rule the claim applies
    /// inside its write transaction, on counts no other claimer can change meanwhile.
    pub fn may_claim(self, running_total: u32, running_here: u32) -> bool {
        self.free(running_total, running_here) > 0
    }

    /// Whether the per-host cap, not the global limit, is what leaves no slot.
    pub fn host_is_full(self, running_total: u32, running_here: u32) -> bool {
        self.free(running_total, running_here) < Caps::global(self.limit).free(running_total, 0)
    }
}

/// Decides which queued jobs start.
///
/// `queued` may come in any order; `running` counts running jobs per project; `limit` is
/// `ORCH_MAX_CONCURRENCY`; `staging_holder` is the running `deploy-staging` job, if any.
pub fn plan(
    queued: &[Queued],
    running: &BTreeMap<String, u32>,
    limit: u32,
    staging_holder: Option<i64>,
) -> Plan {
    let total_running: u32 = running.values().sum();
    plan_slots(
        queued,
        running,
        Caps::global(limit).free(total_running, 0),
        staging_holder,
    )
}

/// [`plan`] with the number of jobs that may start given: `free`, from
/// [`Caps::free`] (the global limit and this host's cap).
pub fn plan_slots(
    queued: &[Queued],
    running: &BTreeMap<String, u32>,
    free: u32,
    staging_holder: Option<i64>,
) -> Plan {
    let mut free = free;
    // Per project, its queue in start order.
    let mut queues: BTreeMap<&str, Vec<&Queued>> = BTreeMap::new();
    let mut branchless: Vec<&Queued> = Vec::new();
    for q in queued {
        if q.branch_missing {
            branchless.push(q);
        } else {
            queues.entry(q.project.as_str()).or_default().push(q);
        }
    }
    for v in queues.values_mut() {
        v.sort_by_key(|q| q.start_order());
    }
    let mut load: BTreeMap<&str, u32> = queues
        .keys()
        .map(|p| (*p, running.get(*p).copied().unwrap_or(0)))
        .collect();
    let mut staging = staging_holder.map(|by_job| Wait::StagingHeld { by_job });
    let mut out = Plan::default();
    while free > 0 {
        // Each project's first job that may start now.
        let next = queues
            .iter()
            .filter_map(|(p, v)| {
                v.iter()
                    .position(|q| !q.uses_staging || staging.is_none())
                    .map(|i| (*p, i, v[i]))
            })
            .min_by_key(|(p, _, head)| (load[p], head.start_order()));
        let Some((project, index, job)) = next else {
            break;
        };
        queues
            .get_mut(project)
            .expect("the chosen project has a queue")
            .remove(index);
        out.start.push(job.id);
        if job.uses_staging {
            staging = Some(Wait::StagingTaken { by_job: job.id });
        }
        *load
            .get_mut(project)
            .expect("every queued project has a load") += 1;
        free -= 1;
    }
    let mut rest: Vec<&Queued> = queues.into_values().flatten().collect();
    rest.extend(branchless);
    rest.sort_by_key(|q| q.start_order());
    out.waits = rest
        .into_iter()
        .map(|q| match staging {
            _ if q.branch_missing => (q.id, Wait::BranchMissing),
            Some(w) if q.uses_staging => (q.id, w),
            _ => (q.id, Wait::NoSlot),
        })
        .collect();
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
            priority: Priority::None,
            uses_staging: false,
            branch_missing: false,
        }
    }

    fn s(id: i64, project: &str, at: i64) -> Queued {
        Queued {
            uses_staging: true,
            ..q(id, project, at)
        }
    }

    fn running(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(p, n)| (p.to_string(), *n)).collect()
    }

    fn p(id: i64, project: &str, at: i64, priority: Priority) -> Queued {
        Queued {
            priority,
            ..q(id, project, at)
        }
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
            let p = plan(queued, &running(run), *limit, None);
            assert_eq!(p.start, want.to_vec(), "{run:?} {limit}");
            assert_eq!(p.start.len() + p.waits.len(), queued.len());
            assert!(p.waits.iter().all(|(_, w)| *w == Wait::NoSlot));
        }
    }

    #[test]
    fn priority_then_age_within_a_project_and_among_equally_loaded_projects() {
        use Priority::{High, Low, Medium, Urgent};
        // One project: the urgent job goes before the older low ones; equal priorities
        // oldest first; none last.
        let one = [
            p(1, "orch", 1, Low),
            q(2, "orch", 2),
            p(3, "orch", 3, Urgent),
            p(4, "orch", 4, Low),
            p(5, "orch", 5, Medium),
        ];
        let plan1 = plan(&one, &BTreeMap::new(), 5, None);
        assert_eq!(plan1.start, vec![3, 5, 1, 4, 2]);
        assert_eq!(plan(&one, &BTreeMap::new(), 1, None).start, vec![3]);
        let waits: Vec<i64> = plan(&one, &BTreeMap::new(), 1, None)
            .waits
            .iter()
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(waits, vec![5, 1, 4, 2], "waits in start order");
        // Two idle projects: the more urgent head first, whatever its age.
        let two = [p(1, "orch", 1, Low), p(2, "shop", 9, High)];
        assert_eq!(plan(&two, &BTreeMap::new(), 1, None).start, vec![2]);
        assert_eq!(plan(&two, &BTreeMap::new(), 2, None).start, vec![2, 1]);
    }

    #[test]
    fn fairness_across_projects_comes_before_priority() {
        use Priority::{Low, Urgent};
        // orch has only urgent jobs, shop one low job: shop still gets its turn.
        let mut queued: Vec<Queued> = (1..=4).map(|i| p(i, "orch", i, Urgent)).collect();
        queued.push(p(9, "shop", 100, Low));
        assert_eq!(
            plan(&queued, &BTreeMap::new(), 2, None).start,
            vec![1, 9],
            "one slot each, the urgent one first"
        );
        // orch already runs a job: the one free slot goes to idle shop, low or not.
        assert_eq!(
            plan(&queued, &running(&[("orch", 1)]), 2, None).start,
            vec![9]
        );
        // Round-robin after that: orch, shop (empty), orch, orch.
        assert_eq!(
            plan(&queued, &BTreeMap::new(), 5, None).start,
            vec![1, 9, 2, 3, 4]
        );
    }

    #[test]
    fn free_slots_are_the_fewer_of_the_global_limit_and_the_host_cap() {
        // (limit, per-host cap, running everywhere, running here, free)
        let cases: &[(u32, Option<u32>, u32, u32, u32)] = &[
            (4, None, 0, 0, 4),
            (4, None, 3, 3, 1),
            (4, None, 4, 0, 0),
            (4, None, 9, 0, 0),
            // The host cap binds before the limit.
            (10, Some(2), 0, 0, 2),
            (10, Some(2), 5, 1, 1),
            (10, Some(2), 5, 2, 0),
            (10, Some(2), 5, 7, 0),
            // The limit binds before the host cap: other hosts took the slots.
            (3, Some(2), 2, 0, 1),
            (3, Some(2), 3, 0, 0),
            // A cap of 0: this host starts nothing.
            (10, Some(0), 0, 0, 0),
        ];
        for &(limit, per_host, total, here, want) in cases {
            let caps = Caps { limit, per_host };
            assert_eq!(caps.free(total, here), want, "{caps:?} {total} {here}");
            assert_eq!(
                caps.may_claim(total, here),
                want > 0,
                "{caps:?} {total} {here}"
            );
        }
        assert!(Caps {
            limit: 10,
            per_host: Some(2)
        }
        .host_is_full(2, 2));
        assert!(!Caps {
            limit: 2,
            per_host: Some(2)
        }
        .host_is_full(2, 2));
        assert!(!Caps::global(2).host_is_full(1, 1));
        // The plan starts no more than the free slots, whatever the limit.
        let queued: Vec<Queued> = (1..=5).map(|i| q(i, "orch", i)).collect();
        assert_eq!(
            plan_slots(&queued, &BTreeMap::new(), 2, None).start,
            vec![1, 2]
        );
        assert!(plan_slots(&queued, &BTreeMap::new(), 0, None)
            .start
            .is_empty());
    }

    #[test]
    fn order_of_input_does_not_matter_and_ties_break_on_id() {
        let a = vec![q(3, "b", 5), q(2, "a", 5), q(1, "a", 5)];
        assert_eq!(plan(&a, &BTreeMap::new(), 3, None).start, vec![1, 3, 2]);
    }

    #[test]
    fn one_deploy_staging_job_at_a_time_whatever_the_limit() {
        let two = [s(1, "orch", 1), s(2, "shop", 2)];
        // Free staging, room for both: only the older starts; the other waits for it.
        let p = plan(&two, &BTreeMap::new(), 5, None);
        assert_eq!(p.start, vec![1]);
        assert_eq!(p.waits, vec![(2, Wait::StagingTaken { by_job: 1 })]);
        // Staging held by a running job: neither starts, both name the holder.
        let p = plan(&two, &running(&[("orch", 1)]), 5, Some(7));
        assert!(p.start.is_empty());
        assert_eq!(
            p.waits,
            vec![
                (1, Wait::StagingHeld { by_job: 7 }),
                (2, Wait::StagingHeld { by_job: 7 })
            ]
        );
        // No slot and staging free: the limit is the reason.
        let p = plan(&two, &running(&[("orch", 1)]), 1, None);
        assert!(p.start.is_empty());
        assert_eq!(p.waits, vec![(1, Wait::NoSlot), (2, Wait::NoSlot)]);
    }

    #[test]
    fn a_waiting_deploy_staging_job_holds_up_nothing_else() {
        // orch's oldest job waits for staging; its younger developer job and shop's job
        // start in its place.
        let queued = [s(1, "orch", 1), q(2, "orch", 2), q(3, "shop", 3)];
        let p = plan(&queued, &running(&[("shop", 1)]), 2, Some(9));
        assert_eq!(p.start, vec![2]);
        assert_eq!(
            p.waits,
            vec![(1, Wait::StagingHeld { by_job: 9 }), (3, Wait::NoSlot)]
        );
        let p = plan(&queued, &BTreeMap::new(), 3, Some(9));
        assert_eq!(p.start, vec![2, 3]);
        // Staging free: the oldest goes first, as always.
        let p = plan(&queued, &BTreeMap::new(), 3, None);
        assert_eq!(p.start, vec![1, 3, 2]);
    }

    #[test]
    fn a_job_whose_branch_is_missing_waits_and_takes_no_slot() {
        let missing = Queued {
            branch_missing: true,
            ..q(1, "orch", 1)
        };
        let staging_missing = Queued {
            branch_missing: true,
            ..s(2, "orch", 2)
        };
        let queued = [missing, staging_missing, q(3, "orch", 3), q(4, "shop", 4)];
        let p = plan(&queued, &BTreeMap::new(), 2, None);
        assert_eq!(p.start, vec![3, 4], "the others start in their place");
        assert_eq!(
            p.waits,
            vec![(1, Wait::BranchMissing), (2, Wait::BranchMissing)],
            "the missing branch is the reason, also for a deploy-staging job"
        );
        // Alone and with every slot free, it still waits.
        let p = plan(&queued[..1], &BTreeMap::new(), 4, None);
        assert!(p.start.is_empty());
    }
}
