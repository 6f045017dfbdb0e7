//! `orch merge-guard`: reads a pull request and says whether it may be merged; with
//! `--merge`, merges it at most once, under the merge lease, pinned to the validated head.
//!
//! Load (the task, its PR), decide (`core::merge`), act (the Gitea adapter, the lease),
//! report one line `MERGE-GUARD: <OUTCOME> <detail>` on stdout. Every failure becomes an
//! `ERROR` line and exit 2, so the deployer always gets one line to act on.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::adapters::db::{Db, PassRecord};
use crate::adapters::gitea::{self, GiteaClient, MergeRequest, PullRequest};
use crate::adapters::http::HttpError;
use crate::adapters::lease::{Lease, LeaseFile, LeaseState, MergeLease};
use crate::adapters::lock::LockError;
use crate::adapters::poll::{self, RealTime, Step, TimedOut};
use crate::adapters::process::start_time;
use crate::config::is_repo;
use crate::core::merge::{
    after_merge, decide, needs_compare, Compare, MergeAnswer, Pin, PrRead, Verdict,
};
use crate::core::revision::short;
use crate::exit::ExitStatus;
use crate::ops::pass::{Context, PassReport};

/// The first pause between reads while Gitea computes `mergeable`; it doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause between those reads.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a guard waiting for the merge lease looks again.
const LEASE_POLL: Duration = Duration::from_millis(100);
/// How long releasing the lease may wait for its lock (held only for moments).
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Read a pull request and say whether it may be merged; with --merge, merge it once
///
/// Prints one line `MERGE-GUARD: <OUTCOME> <detail>`. Without --merge: exit 0 PROCEED
/// (open, mergeable, at the validated revision), 10 ALREADY_MERGED (do not merge; go on),
/// 1 BLOCKED (closed, conflicts, WIP, head moved), 2 ERROR (could not tell: do not
/// merge). With --merge the exit code is the end state: 0 merged (now or before), 1
/// BLOCKED, 2 ERROR. The deployer agent runs `orch merge-guard --task "$ORCH_TASK_ID"
/// --merge` before any merge; see docs/merge-guard.md.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["task", "repo"])))]
pub struct MergeGuardArgs {
    /// Task id, key or Plane work item id: its PR, and the validated revision to pin
    #[arg(long, conflicts_with_all = ["repo", "pr"])]
    pub task: Option<String>,
    /// Gitea repository owner/name (with --pr); the merge pins the head as read
    #[arg(long, requires = "pr", value_parser = parse_repo)]
    pub repo: Option<String>,
    /// Pull request number (with --repo)
    #[arg(long, requires = "repo", value_parser = clap::value_parser!(u64).range(1..))]
    pub pr: Option<u64>,
    /// Merge it when needed, under the merge lease [waits ORCH_MERGE_LEASE_WAIT_S]
    #[arg(long)]
    pub merge: bool,
}

fn parse_repo(s: &str) -> Result<String, String> {
    if is_repo(s) {
        Ok(s.to_string())
    } else {
        Err("expected a Gitea repository as owner/name".into())
    }
}

/// Counts for the summary line.
#[derive(Debug, Default)]
struct Stats {
    reads: i64,
    merge_calls: i64,
}

/// The PR a run is about.
struct Target {
    repo: String,
    number: u64,
    pin: Pin,
    /// Who the lease names: the task key, or `owner/name#N`.
    label: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.repo, self.number)
    }
}

/// Runs `merge-guard`.
///
/// # Errors
/// Never for the guard's own failures (they print `ERROR` and exit 2); only when
/// stdout cannot be written.
pub fn run(args: &MergeGuardArgs, ctx: &Context) -> Result<ExitStatus> {
    let started = Instant::now();
    let mut stats = Stats::default();
    let mut db = None;
    let (target, verdict) = match guard(args, ctx, &mut stats, &mut db) {
        Ok((t, v)) => (Some(t.to_string()), v),
        Err(e) => (None, Verdict::Error(format!("{e:#}"))),
    };
    let status = exit_status(&verdict, args.merge);
    let prefix = target.map(|t| format!("{t} ")).unwrap_or_default();
    println!(
        "MERGE-GUARD: {} {prefix}{}",
        verdict.outcome(),
        verdict.detail()
    );
    let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    if let Some(db) = db {
        record(&db, ctx, &verdict, status, &stats, duration_ms);
    }
    let millis = u128::try_from(duration_ms).unwrap_or_default();
    let report = PassReport::new("merge-guard", millis)
        .with("outcome", verdict.outcome().to_ascii_lowercase())
        .with("exit", status.code())
        .with("reads", stats.reads)
        .with("merge_calls", stats.merge_calls);
    log::info!("{report}");
    Ok(status)
}

/// Maps a verdict to the exit code, in check mode or `--merge` mode.
fn exit_status(verdict: &Verdict, merge: bool) -> ExitStatus {
    match verdict {
        // `--merge` never ends at PROCEED: it merges or reports why not.
        Verdict::Proceed { .. } if merge => ExitStatus::Error,
        Verdict::Proceed { .. } => ExitStatus::Success,
        Verdict::AlreadyMerged(_) if merge => ExitStatus::Success,
        Verdict::AlreadyMerged(_) => ExitStatus::AlreadyMerged,
        Verdict::Merged { .. } => ExitStatus::Success,
        Verdict::Blocked(_) => ExitStatus::No,
        Verdict::Wait(_) | Verdict::Error(_) => ExitStatus::Error,
    }
}

fn guard(
    args: &MergeGuardArgs,
    ctx: &Context,
    stats: &mut Stats,
    db_slot: &mut Option<Db>,
) -> Result<(Target, Verdict)> {
    let job_id = job_id_from_env()?;
    let gitea = GiteaClient::from_config(&ctx.config)?;
    let target = resolve(args, ctx, &gitea, db_slot)?;
    let settings = &ctx.config.settings;
    log::info!(
        "merge-guard: {target} ({}), pin {}",
        if args.merge { "merge" } else { "check" },
        pin_text(&target.pin)
    );
    let verdict = settle(
        &gitea,
        &target,
        settings.merge_guard_mergeable_wait_s.0,
        stats,
    );
    if !args.merge || !matches!(verdict, Verdict::Proceed { .. }) {
        return Ok((target, verdict));
    }
    let lease = match HeldLease::acquire(ctx, &target, job_id, settings.merge_lease_wait_s.0) {
        Ok(l) => l,
        Err(v) => return Ok((target, v)),
    };
    let verdict = merge_under_lease(&gitea, &target, stats);
    drop(lease);
    Ok((target, verdict))
}

/// Reads `ORCH_JOB_ID` (set by `run-job` in an agent's environment), when set.
fn job_id_from_env() -> Result<Option<i64>> {
    match std::env::var("ORCH_JOB_ID") {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => match v.trim().parse::<i64>() {
            Ok(id) if id > 0 => Ok(Some(id)),
            _ => bail!("ORCH_JOB_ID: expected a job id (a whole number of at least 1), got {v:?}"),
        },
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("ORCH_JOB_ID: not valid text"),
    }
}

fn resolve(
    args: &MergeGuardArgs,
    ctx: &Context,
    gitea: &GiteaClient,
    db_slot: &mut Option<Db>,
) -> Result<Target> {
    if let (Some(repo), Some(number)) = (&args.repo, args.pr) {
        return Ok(Target {
            repo: repo.clone(),
            number,
            pin: Pin::AsRead,
            label: format!("{repo}#{number}"),
        });
    }
    let Some(reference) = &args.task else {
        bail!("give --task ID, or --repo owner/name with --pr N");
    };
    let db = db_slot.insert(ctx.open_db()?);
    let task = db
        .find_task(reference)?
        .with_context(|| format!("no task {reference:?} (id, key or work item id)"))?;
    let number = match task.pr_number {
        Some(n) => {
            u64::try_from(n).with_context(|| format!("task {} has PR number {n}", task.key))?
        }
        None => {
            let found = gitea
                .find_open_pull_by_head(&task.repo, &task.branch)
                .map_err(|e| anyhow::anyhow!("finding the PR of task {}: {e}", task.key))?;
            let Some(pr) = found else {
                bail!(
                    "task {} has no PR recorded and {} has no open PR with head branch {}",
                    task.key,
                    task.repo,
                    task.branch
                );
            };
            let n = i64::try_from(pr.number).context("PR number out of range")?;
            if !db.set_pr_number(task.id, task.round, n, ctx.now_secs())? {
                bail!(
                    "task {} started another round while merge-guard read it: run it again",
                    task.key
                );
            }
            log::info!(
                "merge-guard: recorded PR {}#{} on task {} (head branch {})",
                task.repo,
                pr.number,
                task.key,
                task.branch
            );
            pr.number
        }
    };
    Ok(Target {
        repo: task.repo.clone(),
        number,
        pin: task
            .validated_revision
            .clone()
            .filter(|r| !r.trim().is_empty())
            .map_or_else(
                || Pin::Missing {
                    task: task.key.clone(),
                },
                Pin::Validated,
            ),
        label: task.key.clone(),
    })
}

/// Reads and decides, re-reading with a bounded backoff while Gitea computes `mergeable`.
fn settle(gitea: &GiteaClient, target: &Target, wait: Duration, stats: &mut Stats) -> Verdict {
    let deadline = Instant::now() + wait;
    let mut pause = FIRST_BACKOFF;
    let settled = poll::until(&RealTime, deadline, |a| {
        let verdict = read_and_decide(gitea, target, a.left.is_zero(), stats);
        if !matches!(verdict, Verdict::Wait(_)) {
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

fn read_and_decide(
    gitea: &GiteaClient,
    target: &Target,
    waited_out: bool,
    stats: &mut Stats,
) -> Verdict {
    stats.reads += 1;
    let pr = match gitea.get_pull(&target.repo, target.number) {
        Ok(pr) => pr_read(&pr),
        Err(e) => {
            let v = Verdict::Error(format!("could not read {target}: {e}"));
            log::warn!("merge-guard: {target}: {}", v.detail());
            return v;
        }
    };
    let compare = if needs_compare(&pr) {
        match gitea.compare_total_commits(&target.repo, &pr.base_ref, &pr.head_sha) {
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
fn merge_under_lease(gitea: &GiteaClient, target: &Target, stats: &mut Stats) -> Verdict {
    // Another guard may have merged it while this one waited for the lease; no waiting
    // for `mergeable` while holding the lease.
    let head = match read_and_decide(gitea, target, true, stats) {
        Verdict::Proceed { head } => head,
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
fn message_of(a: &gitea::MergeAnswer) -> String {
    match &a.message {
        Some(m) => m.clone(),
        None => a.body.chars().take(160).collect(),
    }
}

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

fn pin_text(pin: &Pin) -> String {
    match pin {
        Pin::Validated(r) => format!("validated {}", short(r)),
        Pin::AsRead => "head as read".into(),
        Pin::Missing { .. } => "none (no validated revision)".into(),
    }
}

fn compare_text(c: &Compare) -> String {
    match c {
        Compare::NotAsked => "not-asked".into(),
        Compare::Ahead(n) => format!("ahead-{n}"),
        Compare::Unavailable => "unavailable".into(),
        Compare::Failed(_) => "failed".into(),
    }
}

/// The merge lease while this guard holds it; released on drop, on every path.
struct HeldLease {
    lease: MergeLease,
    ours: Lease,
}

impl HeldLease {
    /// Takes the lease, waiting up to `wait`; a stale lease is taken over under the lock.
    /// `Err` is the verdict to report (never merge without the lease).
    fn acquire(
        ctx: &Context,
        target: &Target,
        job_id: Option<i64>,
        wait: Duration,
    ) -> Result<HeldLease, Verdict> {
        let lease = MergeLease::new(&ctx.config.settings.state_dir);
        let pid = i64::from(std::process::id());
        let started = Instant::now();
        let now0 = ctx.now_secs();
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
                            return Step::Done(Err(Verdict::Error(format!(
                                "the merge lease file cannot be parsed ({m}): left for a human; not merging"
                            ))))
                        }
                        Err(e) => {
                            return Step::Done(Err(Verdict::Error(format!(
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
                            return Step::Done(Err(Verdict::Error(format!(
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
                    return Step::Done(Err(Verdict::Error(format!(
                        "taking the merge lease lock: {e}; not merging"
                    ))))
                }
            }
            Step::Again(LEASE_POLL)
        });
        match taken {
            Ok(Ok(ours)) => Ok(HeldLease { lease, ours }),
            Ok(Err(verdict)) => Err(verdict),
            Err(TimedOut) => Err(Verdict::Error(format!(
                "the merge lease is held by {holder} and did not come free within {} s \
                 (ORCH_MERGE_LEASE_WAIT_S): not merging",
                wait.as_secs()
            ))),
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let mut busy = None;
        let released = poll::until(&RealTime, Instant::now() + RELEASE_WAIT, |_| {
            match self.lease.lock() {
                Ok(guard) => {
                    match self.lease.read() {
                        Ok(LeaseFile::Held(l)) if l == self.ours => {
                            match self.lease.remove(&guard) {
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

fn record(
    db: &Db,
    ctx: &Context,
    verdict: &Verdict,
    status: ExitStatus,
    stats: &Stats,
    duration_ms: i64,
) {
    let outcome = match status {
        ExitStatus::No => "no",
        ExitStatus::Error => "error",
        _ => "ok",
    };
    let record = PassRecord {
        command: "merge-guard".into(),
        started_at: ctx.now_secs(),
        duration_ms,
        outcome: outcome.into(),
        counts: [
            (
                "outcome".to_string(),
                serde_json::Value::from(verdict.outcome().to_ascii_lowercase()),
            ),
            ("reads".to_string(), serde_json::Value::from(stats.reads)),
            (
                "merge_calls".to_string(),
                serde_json::Value::from(stats.merge_calls),
            ),
        ]
        .into_iter()
        .collect(),
    };
    if let Err(e) = db.record_pass(&record) {
        log::warn!("merge-guard: could not record the pass for status: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::merge::MergedHow;

    #[test]
    fn exit_codes_per_mode() {
        let proceed = Verdict::Proceed { head: "h".into() };
        let already = Verdict::AlreadyMerged(MergedHow::Merged { merge_commit: None });
        let merged = Verdict::Merged {
            merge_commit: None,
            answer: "HTTP 200".into(),
        };
        let blocked = Verdict::Blocked("x".into());
        let error = Verdict::Error("x".into());
        let wait = Verdict::Wait("x".into());
        let cases = [
            (&proceed, false, 0),
            (&proceed, true, 2),
            (&already, false, 10),
            (&already, true, 0),
            (&merged, true, 0),
            (&blocked, false, 1),
            (&blocked, true, 1),
            (&error, false, 2),
            (&error, true, 2),
            (&wait, false, 2),
        ];
        for (v, merge, code) in cases {
            assert_eq!(exit_status(v, merge).code(), code, "{v:?} merge={merge}");
        }
    }

    #[test]
    fn bad_repos_are_refused() {
        assert!(parse_repo("acme/orch").is_ok());
        for bad in ["acme", "", "a/b/c", "/x"] {
            assert!(parse_repo(bad).is_err(), "{bad}");
        }
    }
}
