//! `orch merge-guard`: reads a pull request and says whether it may be merged; with
//! `--merge`, merges it at most once, under the merge lease, pinned to the validated head.
//!
//! Load (the task, its PR), decide (`core::merge`), act (the Gitea adapter, the lease),
//! report one line `MERGE-GUARD: <OUTCOME> <detail>` on stdout. Every failure becomes an
//! `ERROR` line and exit 2, so the deployer always gets one line to act on.

use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::adapters::db::{Db, PassRecord};
use crate::adapters::gitea::GiteaClient;
use crate::config::is_repo;
use crate::core::hold::Hold;
use crate::core::merge::{pin_for_task, pin_text, MergeVerdict, Pin};
use crate::exit::ExitStatus;
use crate::ops::merge::{merge_under_lease, settle, HeldLease, Stats, Target};
use crate::ops::pass::{PassContext, PassReport};

/// Read a pull request and say whether it may be merged; with --merge, merge it once
///
/// Prints one line `MERGE-GUARD: <OUTCOME> <detail>`. Without --merge: exit 0 PROCEED
/// (open, mergeable, at the validated revision), 10 ALREADY_MERGED (do not merge; go on),
/// 1 BLOCKED (closed, conflicts, WIP, head moved, project on hold), 2 ERROR (could not
/// tell: do not merge). With --merge the exit code is the end state: 0 merged (now or before), 1
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

/// Runs `merge-guard`.
///
/// # Errors
/// Never for the guard's own failures (they print `ERROR` and exit 2); only when
/// stdout cannot be written.
pub fn run(args: &MergeGuardArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let started = Instant::now();
    // Before taking the merge lease renews the pass's time: the pass is recorded as
    // started when it began.
    let started_at = ctx.now_secs();
    let mut stats = Stats::default();
    let mut db = None;
    let (target, verdict) = match guard(args, ctx, &mut stats, &mut db) {
        Ok((t, v)) => (Some(t.to_string()), v),
        Err(e) => (None, MergeVerdict::Error(format!("{e:#}"))),
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
        record(&db, started_at, &verdict, status, &stats, duration_ms);
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
fn exit_status(verdict: &MergeVerdict, merge: bool) -> ExitStatus {
    match verdict {
        // `--merge` never ends at PROCEED: it merges or reports why not.
        MergeVerdict::Proceed { .. } if merge => ExitStatus::Error,
        MergeVerdict::Proceed { .. } => ExitStatus::Success,
        MergeVerdict::AlreadyMerged(_) if merge => ExitStatus::Success,
        MergeVerdict::AlreadyMerged(_) => ExitStatus::AlreadyMerged,
        MergeVerdict::Merged { .. } => ExitStatus::Success,
        MergeVerdict::Blocked(_) => ExitStatus::No,
        MergeVerdict::Wait(_) | MergeVerdict::Error(_) => ExitStatus::Error,
    }
}

fn guard(
    args: &MergeGuardArgs,
    ctx: &PassContext,
    stats: &mut Stats,
    db_slot: &mut Option<Db>,
) -> Result<(Target, MergeVerdict)> {
    let job_id = job_id_from_env()?;
    let gitea = ctx.require_gitea()?;
    let target = resolve(args, ctx, gitea, db_slot)?;
    if let Some(hold) = hold_on(args, ctx, &target, db_slot)? {
        return Ok((target, MergeVerdict::Blocked(hold.describe())));
    }
    let settings = &ctx.config.settings;
    log::info!(
        "merge-guard: {target} ({}), pin {}",
        if args.merge { "merge" } else { "check" },
        pin_text(&target.pin)
    );
    let verdict = settle(
        gitea,
        &target,
        settings.merge_guard_mergeable_wait_s.0,
        stats,
    );
    if !args.merge || !matches!(verdict, MergeVerdict::Proceed { .. }) {
        return Ok((target, verdict));
    }
    let mut lease = match HeldLease::acquire(ctx, &target, job_id, settings.merge_lease_wait_s.0) {
        Ok(l) => l,
        Err(v) => return Ok((target, v)),
    };
    // A hold set while the guard settled or waited for the lease still stops the merge:
    // read again under the lease, right before the one call that cannot be taken back.
    if let Some(hold) = hold_on(args, ctx, &target, db_slot)? {
        drop(lease);
        return Ok((target, MergeVerdict::Blocked(hold.describe())));
    }
    // A row lease (PostgreSQL) renewed if half its TTL went by; one taken over by now
    // (this guard stalled past its TTL) is no lease: never merge without it.
    if !lease.keep() {
        return Ok((
            target,
            MergeVerdict::Error(
                "the merge lease was taken over by another holder (this guard outlived its \
                 TTL, ORCH_MERGE_LEASE_TTL_S): not merging"
                    .into(),
            ),
        ));
    }
    let verdict = merge_under_lease(gitea, &target, stats);
    drop(lease);
    Ok((target, verdict))
}

/// The hold on the target's project, if one is on (`orch hold`): the task's project,
/// and every project of the pipeline file whose repository the PR is in.
fn hold_on(
    args: &MergeGuardArgs,
    ctx: &PassContext,
    target: &Target,
    db_slot: &mut Option<Db>,
) -> Result<Option<Hold>> {
    let mut projects: Vec<String> = ctx
        .config
        .pipeline
        .projects
        .iter()
        .filter(|p| p.repo == target.repo)
        .map(|p| p.name.clone())
        .collect();
    if db_slot.is_none() && projects.is_empty() {
        return Ok(None);
    }
    let db = match db_slot {
        Some(db) => db,
        None => db_slot.insert(ctx.open_db()?),
    };
    if let Some(reference) = &args.task {
        projects.extend(db.find_task(reference)?.map(|t| t.project));
    }
    for project in projects {
        if let Some(hold) = db.hold_of(&project, ctx.now_secs())? {
            return Ok(Some(hold));
        }
    }
    Ok(None)
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
    ctx: &PassContext,
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
        pin: pin_for_task(task.validated_revision.as_deref(), &task.key),
        label: task.key.clone(),
    })
}

fn record(
    db: &Db,
    started_at: i64,
    verdict: &MergeVerdict,
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
        started_at,
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
        let proceed = MergeVerdict::Proceed { head: "h".into() };
        let already = MergeVerdict::AlreadyMerged(MergedHow::Merged { merge_commit: None });
        let merged = MergeVerdict::Merged {
            merge_commit: None,
            answer: "HTTP 200".into(),
        };
        let blocked = MergeVerdict::Blocked("x".into());
        let error = MergeVerdict::Error("x".into());
        let wait = MergeVerdict::Wait("x".into());
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
