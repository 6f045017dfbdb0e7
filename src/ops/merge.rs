//! `merge-guard`'s I/O steps: reading a PR and deciding, re-reading while Gitea
//! computes `mergeable` ([`settle`]); the merge under the lease, read again before and
//! after the call ([`merge_under_lease`]); and the merge lease held for the merge
//! ([`HeldLease`], released on drop). What a read or an answer means is `core::merge`'s;
//! whether a lease is stale is `core::lease`'s.

use std::fmt;
use std::time::{Duration, Instant};

use crate::adapters::db::is_postgres_url;
use crate::adapters::gitea::{self, GiteaClient, MergeRequest, PullRequest};
use crate::adapters::http::HttpError;
use crate::adapters::lease::{
    this_process, Lease, LeaseFile, LeaseState, MergeLease, RowLease, RowTake,
};
use crate::adapters::lock::LockError;
use crate::adapters::poll::{self, RealTime, Step, TimedOut};
use crate::adapters::process::start_time;
use crate::core::lease::{LeaseRow, RowVerdict};
use crate::core::merge::{
    after_merge, compare_text, decide, needs_compare, pin_text, Compare, MergeAnswer, MergeVerdict,
    Pin, PrRead,
};
use crate::ops::pass::PassContext;

/// The first pause between reads while Gitea computes `mergeable`; it doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause between those reads.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a guard waiting for the merge lease looks again.
const LEASE_POLL: Duration = Duration::from_millis(100);
/// How long releasing the lease may wait for its lock (held only for moments).
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Counts for the summary line.
#[derive(Debug, Default)]
pub struct Stats {
    /// PR reads.
    pub reads: i64,
    /// Merge calls.
    pub merge_calls: i64,
}

/// The PR a run is about.
pub struct Target {
    /// The repository, `owner/name`.
    pub repo: String,
    /// The PR number.
    pub number: u64,
    /// The head the merge must pin.
    pub pin: Pin,
    /// Who the lease names: the task key, or `owner/name#N`.
    pub label: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.repo, self.number)
    }
}

/// Reads and decides, re-reading with a bounded backoff while Gitea computes `mergeable`
/// for up to `wait`.
pub fn settle(
    gitea: &GiteaClient,
    target: &Target,
    wait: Duration,
    stats: &mut Stats,
) -> MergeVerdict {
    let deadline = Instant::now() + wait;
    let mut pause = FIRST_BACKOFF;
    let settled = poll::until(&RealTime, deadline, |a| {
        let verdict = read_and_decide(gitea, target, a.left.is_zero(), stats);
        if !matches!(verdict, MergeVerdict::Wait(_)) {
            return Step::Done(verdict);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        log::info!(
            "merge-guard: {target}: waiting {} ms before reading again ({} ms of the wait left)",
            pause.min(left).as_millis(),
            left.as_millis()
        );
        let this = pause;
        pause = (pause * 2).min(MAX_BACKOFF);
        Step::Again(this)
    });
    // A read that found the wait over decides (a PR still computing is an answer then).
    settled.unwrap_or_else(|TimedOut| read_and_decide(gitea, target, true, stats))
}

/// Reads the PR (and, when it matters, compares base and head) and decides.
fn read_and_decide(
    gitea: &GiteaClient,
    target: &Target,
    waited_out: bool,
    stats: &mut Stats,
) -> MergeVerdict {
    stats.reads += 1;
    let pr = match gitea.get_pull(&target.repo, target.number) {
        Ok(pr) => pr_read(&pr),
        Err(e) => {
            let v = MergeVerdict::Error(format!("could not read {target}: {e}"));
            log::warn!("merge-guard: {target}: {}", v.detail());
            return v;
        }
    };
    let compare = if needs_compare(&pr) {
        match gitea.commits_ahead(&target.repo, target.number, &pr.base_ref, &pr.head_sha) {
            Ok(n) => Compare::Ahead(n),
            Err(HttpError::Retryable(e)) => Compare::Failed(e),
            Err(e) => {
                // Gitea before 1.22 has no compare endpoint: decide without the shortcut.
                log::warn!("merge-guard: {target}: compare unavailable, deciding without it: {e}");
                Compare::Unavailable
            }
        }
    } else {
        Compare::NotAsked
    };
    let verdict = decide(&pr, &target.pin, &compare, waited_out);
    log::info!(
        "merge-guard: {target}: {pr} pin={} compare={} waited_out={waited_out} -> {} {}",
        pin_text(&target.pin),
        compare_text(&compare),
        verdict.outcome(),
        verdict.detail()
    );
    verdict
}

/// Under the lease: read again, merge only if still needed, read again, decide.
pub fn merge_under_lease(gitea: &GiteaClient, target: &Target, stats: &mut Stats) -> MergeVerdict {
    // Another guard may have merged it while this one waited for the lease; no waiting
    // for `mergeable` while holding the lease.
    let head = match read_and_decide(gitea, target, true, stats) {
        MergeVerdict::Proceed { head } => head,
        other => return other,
    };
    // The full SHA just read: it matches the validated revision (decide checked), and
    // Gitea refuses the merge with 409 if the head moves before it runs.
    let request = MergeRequest::merge_pinned(&head, None);
    stats.merge_calls += 1;
    log::info!(
        "merge-guard: {target}: merging with head_commit_id={head} style={} delete_branch_after_merge={}",
        request.style,
        request.delete_branch_after_merge
    );
    let answer = match gitea.merge(&target.repo, target.number, &request) {
        Ok(a) => MergeAnswer::Status {
            code: a.status,
            message: message_of(&a),
        },
        Err(e) => MergeAnswer::Transport(e.to_string()),
    };
    log::info!("merge-guard: {target}: merge call gave {answer}; reading the PR again");
    stats.reads += 1;
    let reread = gitea
        .get_pull(&target.repo, target.number)
        .map(|pr| pr_read(&pr))
        .map_err(|e| e.to_string());
    match &reread {
        Ok(pr) => log::info!("merge-guard: {target}: after the merge call: {pr}"),
        Err(e) => log::warn!("merge-guard: {target}: reading again failed: {e}"),
    }
    let verdict = after_merge(&answer, &reread, &head);
    log::info!(
        "merge-guard: {target}: answer {answer} -> {} {}",
        verdict.outcome(),
        verdict.detail()
    );
    verdict
}

/// Gitea's `message`, or a short excerpt of a body that has none (the 409 conflict).
fn message_of(a: &gitea::MergeResponse) -> String {
    match &a.message {
        Some(m) => m.clone(),
        None => a.body.chars().take(160).collect(),
    }
}

/// Returns what `core::merge` needs of a PR.
fn pr_read(pr: &PullRequest) -> PrRead {
    PrRead {
        number: pr.number,
        open: pr.is_open(),
        merged: pr.merged,
        mergeable: pr.mergeable,
        draft: pr.draft,
        title: pr.title.clone(),
        head_sha: pr.head.sha.clone(),
        base_ref: pr.base.ref_name.clone(),
        merge_commit_sha: pr.merge_commit_sha.clone(),
    }
}

/// The name of the merge lease's row (PostgreSQL).
pub const MERGE_LEASE_ROW: &str = "merge";

/// The merge lease while this guard holds it; released on drop, on every path. On
/// SQLite it is the file in the state dir; on PostgreSQL (hosts share no state dir)
/// the `merge` row of `leases`.
pub struct HeldLease {
    held: Holding,
}

enum Holding {
    File { lease: MergeLease, ours: Lease },
    Row(RowLease),
}

impl HeldLease {
    /// Takes the lease, waiting up to `wait`; a stale lease is taken over (under the
    /// file's lock, or in the row's write transaction). `Err` is the verdict to report
    /// (never merge without the lease).
    pub fn acquire(
        ctx: &PassContext,
        target: &Target,
        job_id: Option<i64>,
        wait: Duration,
    ) -> Result<HeldLease, MergeVerdict> {
        if is_postgres_url(&ctx.config.settings.db) {
            acquire_row(ctx, target, job_id, wait).map(|r| HeldLease {
                held: Holding::Row(r),
            })
        } else {
            acquire_file(ctx, target, job_id, wait).map(|(lease, ours)| HeldLease {
                held: Holding::File { lease, ours },
            })
        }
    }

    /// Renews a row lease once half its TTL has passed; `false` when it was taken over
    /// (never merge then). A file lease has no renewal (its holder's liveness keeps it).
    pub fn keep(&mut self) -> bool {
        match &mut self.held {
            Holding::File { .. } => true,
            Holding::Row(r) => r.keep(),
        }
    }
}

/// Takes the `merge` row, trying every [`LEASE_POLL`] for up to `wait`.
fn acquire_row(
    ctx: &PassContext,
    target: &Target,
    job_id: Option<i64>,
    wait: Duration,
) -> Result<RowLease, MergeVerdict> {
    let settings = &ctx.config.settings;
    let me = this_process(&settings.host_id());
    let detail = serde_json::json!({ "job_id": job_id, "task": target.label }).to_string();
    let ttl_s = settings.merge_lease_ttl_s.secs();
    let pinned = settings.now.0.map(jiff::Timestamp::as_second);
    let started = Instant::now();
    let mut db = Some(ctx.open_db().map_err(|e| {
        MergeVerdict::Error(format!(
            "opening the database for the merge lease: {e:#}; not merging"
        ))
    })?);
    let mut holder = String::from("another merge-guard");
    let taken = poll::until(&RealTime, started + wait, |_| {
        let elapsed = i64::try_from(started.elapsed().as_secs()).unwrap_or(0);
        let Some(conn) = db.take() else {
            return Step::Done(Err(MergeVerdict::Error(
                "the merge lease's connection was lost; not merging".into(),
            )));
        };
        let at = pinned.map(|p| p.saturating_add(elapsed));
        match RowLease::take(conn, MERGE_LEASE_ROW, &me, ttl_s, at, Some(&detail)) {
            Ok(RowTake::Held(lease, over)) => {
                if let Some((old, verdict)) = over.filter(|(_, v)| *v != RowVerdict::Released) {
                    log::warn!(
                        "merge-guard: taking over a stale merge lease ({verdict:?}): {}",
                        describe_row(&old)
                    );
                }
                log::info!(
                    "merge-guard: {target}: merge lease taken after {} ms (generation {}, holder {})",
                    started.elapsed().as_millis(),
                    lease.generation(),
                    crate::core::lease::holder_text(&me)
                );
                Step::Done(Ok(lease))
            }
            Ok(RowTake::Busy(row, conn)) => {
                holder = describe_row(&row);
                db = Some(conn);
                Step::Again(LEASE_POLL)
            }
            Err(e) => Step::Done(Err(MergeVerdict::Error(format!(
                "taking the merge lease: {e:#}; not merging"
            )))),
        }
    });
    match taken {
        Ok(r) => r,
        Err(TimedOut) => Err(MergeVerdict::Error(format!(
            "the merge lease is held by {holder} and did not come free within {} s \
             (ORCH_MERGE_LEASE_WAIT_S): not merging",
            wait.as_secs()
        ))),
    }
}

/// Returns who holds a lease row, for the log and the messages.
fn describe_row(r: &LeaseRow) -> String {
    let detail: Option<serde_json::Value> = r
        .detail
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok());
    let field = |k: &str| detail.as_ref().and_then(|d| d.get(k).cloned());
    let task = field("task")
        .and_then(|t| t.as_str().map(|t| format!("{t}, ")))
        .unwrap_or_default();
    let job = field("job_id")
        .and_then(|j| j.as_i64().map(|j| format!("job {j}, ")))
        .unwrap_or_default();
    format!(
        "{task}{job}holder {}, acquired at {}, expires at {}",
        r.holder, r.acquired_at, r.expires_at
    )
}

/// Takes the lease file, waiting up to `wait`; a stale lease is taken over under the lock.
fn acquire_file(
    ctx: &PassContext,
    target: &Target,
    job_id: Option<i64>,
    wait: Duration,
) -> Result<(MergeLease, Lease), MergeVerdict> {
    {
        let lease = MergeLease::new(&ctx.config.settings.state_dir);
        let pid = i64::from(std::process::id());
        let started = Instant::now();
        // merge-guard may have waited a while for Gitea to settle mergeability before
        // this: the lease's times count from when it is taken, so the pass's time is read
        // again here (the one re-read here); the wait below adds elapsed time to it.
        let now0 = ctx.renew_now().as_second();
        let mut holder = String::from("another merge-guard");
        let taken = poll::until(&RealTime, started + wait, |_| {
            let now = now0 + i64::try_from(started.elapsed().as_secs()).unwrap_or(0);
            match lease.lock() {
                Ok(guard) => {
                    let take = match lease.read() {
                        Ok(LeaseFile::Free) => true,
                        Ok(LeaseFile::Held(l)) => match l.judge(now) {
                            LeaseState::Held => {
                                holder = describe(&l);
                                false
                            }
                            stale => {
                                log::warn!(
                                    "merge-guard: taking over a stale merge lease ({stale:?}): {}",
                                    describe(&l)
                                );
                                true
                            }
                        },
                        Ok(LeaseFile::Malformed(m)) => {
                            return Step::Done(Err(MergeVerdict::Error(format!(
                                "the merge lease file cannot be parsed ({m}): left for a human; not merging"
                            ))))
                        }
                        Err(e) => {
                            return Step::Done(Err(MergeVerdict::Error(format!(
                                "reading the merge lease: {e:#}; not merging"
                            ))))
                        }
                    };
                    if take {
                        let ours = Lease {
                            job_id,
                            task: Some(target.label.clone()),
                            pid,
                            pid_start_time: start_time(pid),
                            acquired_at: now,
                            ttl_s: ctx.config.settings.merge_lease_ttl_s.secs(),
                        };
                        if let Err(e) = lease.write(&guard, &ours) {
                            return Step::Done(Err(MergeVerdict::Error(format!(
                                "writing the merge lease: {e:#}; not merging"
                            ))));
                        }
                        log::info!(
                            "merge-guard: {target}: merge lease taken after {} ms ({})",
                            started.elapsed().as_millis(),
                            describe(&ours)
                        );
                        return Step::Done(Ok(ours));
                    }
                }
                Err(LockError::Busy(_)) => {}
                Err(e) => {
                    return Step::Done(Err(MergeVerdict::Error(format!(
                        "taking the merge lease lock: {e}; not merging"
                    ))))
                }
            }
            Step::Again(LEASE_POLL)
        });
        match taken {
            Ok(Ok(ours)) => Ok((lease, ours)),
            Ok(Err(verdict)) => Err(verdict),
            Err(TimedOut) => Err(MergeVerdict::Error(format!(
                "the merge lease is held by {holder} and did not come free within {} s \
                 (ORCH_MERGE_LEASE_WAIT_S): not merging",
                wait.as_secs()
            ))),
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        // A row lease releases itself when dropped (with `self`).
        if let Holding::File { lease, ours } = &self.held {
            release_file(lease, ours);
        }
    }
}

/// Removes the lease file if it is still `ours`.
fn release_file(lease: &MergeLease, ours: &Lease) {
    {
        let mut busy = None;
        let released = poll::until(&RealTime, Instant::now() + RELEASE_WAIT, |_| {
            match lease.lock() {
                Ok(guard) => {
                    match lease.read() {
                        Ok(LeaseFile::Held(l)) if l == *ours => {
                            match lease.remove(&guard) {
                                Ok(_) => log::info!("merge-guard: merge lease released"),
                                Err(e) => log::error!("merge-guard: releasing the merge lease: {e:#}"),
                            }
                        }
                        Ok(_) => log::warn!(
                            "merge-guard: the merge lease is no longer ours (taken over as stale); left as it is"
                        ),
                        Err(e) => log::error!("merge-guard: reading the merge lease to release it: {e:#}"),
                    }
                    Step::Done(None)
                }
                Err(e @ LockError::Busy(_)) => {
                    busy = Some(e);
                    Step::Again(Duration::from_millis(20))
                }
                Err(e) => Step::Done(Some(e)),
            }
        });
        let failed = match released {
            Ok(failed) => failed,
            Err(TimedOut) => busy,
        };
        if let Some(e) = failed {
            log::error!(
                "merge-guard: could not release the merge lease ({e}); it goes stale when this process ends"
            );
        }
    }
}

/// Returns who holds a lease, for the log and the messages.
fn describe(l: &Lease) -> String {
    let job = l.job_id.map(|j| format!("job {j}, ")).unwrap_or_default();
    let task = l
        .task
        .as_deref()
        .map(|t| format!("{t}, "))
        .unwrap_or_default();
    format!(
        "{task}{job}pid {}, acquired at {}, ttl {} s",
        l.pid, l.acquired_at, l.ttl_s
    )
}
