//! `orch staging-check`: runs the pipeline file's staging checks at once, each with its
//! own deadline, classifies and judges them (`core::staging_check`), prints the verdict, and
//! writes the report the `deploy-staging → deploy` gate reads.
//!
//! With a task (`--task`, else `ORCH_TASK_ID`, which `run-job` gives every agent) it
//! writes the task's `10-staging-report.md` and, on SUCCESS, records the revision it
//! validated on the task: the pin `merge-guard` merges (`core::pin`). Where image
//! freshness applies that is the revision an image-freshness check read from staging
//! (expected, by default, to be the PR head); elsewhere it is the PR head read from
//! Gitea when the check starts and read again when the checks end.
//!
//! Never a false green: an internal error (database, report write, a PR head that moved,
//! no open PR) turns the verdict FAILED (exit 1) and records nothing. A task's PR head
//! that cannot be read from Gitea (no answer, 5xx, a refused token, an answer that is not
//! a pull request: `core::pin::HeadError::Unreadable`) gives no verdict at all: exit 2,
//! no report (an older one is removed), the validated revision cleared, so a Gitea outage
//! never sends a task back to its developer. Usage and configuration errors exit 2 too.
//! No pass lock: CI and agents may run it concurrently, and the report is written
//! atomically.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::adapters::artefacts::{task_dir, write_atomic, ArtefactStore};
use crate::adapters::db::Db;
use crate::adapters::gitea::GiteaClient;
use crate::config::Settings;
use crate::core::artefact::STAGING_REPORT_FILE;
use crate::core::pin::{
    expected_at_start, head_at_end, pinned_revision, HeadError, PinKind, PrHead, Unreadable,
};
use crate::core::plane::Project;
use crate::core::staging_check::{
    freshness_applies, parse_revision, Policy, StagingCheckOutcome, VerdictStatus,
};
use crate::core::staging_check_report::{
    judge_lines, report_targets, CheckLine, NoVerdictRun, StagingRun,
};
use crate::core::task::Task;
use crate::exit::ExitStatus;
use crate::ops::pass::{PassContext, PassReport};
use crate::ops::pin::{clear_validated, read_pr_head};
use crate::ops::staging_check::{
    remove_reports, roundtrip_env, run_checks, same_file, write_reports, CheckPlan,
};

/// Smoke-check a staging install and print a verdict
///
/// Runs every check of the pipeline file's `staging.checks` at once, each with its own
/// deadline. A check is SANDBOX_INFRA only when its id is in
/// ORCH_STAGING_INFRA_ALLOWLIST (default C9a,C9b); every other id is REAL. Prints a line
/// per check, `INFRA-WAIVED: <ids>` when allowlisted failures were waived, and
/// `VERDICT: SUCCESS|FAILED` last. Exit codes: 0 SUCCESS; 1 FAILED (a REAL failure, an
/// unwaived infra failure, no checks configured, a check that could not run, no open PR,
/// a PR head that moved, or any internal error); 2 no verdict (the task's PR head could
/// not be read from Gitea: nothing recorded, run it again), usage or configuration
/// error.
///
/// With a task (--task, else ORCH_TASK_ID) it writes the task's 10-staging-report.md
/// and, on SUCCESS, records the revision it validated (the pin merge-guard merges): the
/// image-freshness check's revision where image freshness applies, else the PR head read
/// from Gitea before and after the checks (FAILED if it moved).
#[derive(Debug, clap::Args)]
pub struct StagingCheckArgs {
    /// Print the result as JSON (the same facts as the text, plus exit_code)
    #[arg(long)]
    pub json: bool,

    /// Fail on any failure, allowlisted infra checks included (tolerance off for this
    /// run, whatever ORCH_STAGING_INFRA_TOLERANCE_ENABLED says)
    #[arg(long)]
    pub strict: bool,

    /// Also write the Markdown report (frontmatter staging_status, waived,
    /// checked_revision, checked_at) to FILE
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Write the report into this task's artefacts (10-staging-report.md) and record
    /// the validated revision on the task (id, key or work item id) [default:
    /// ORCH_TASK_ID, set for agents by run-job]
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,

    /// The revision staging must run, for image-freshness checks [default with a task:
    /// its PR head, read from Gitea]
    #[arg(long, value_name = "SHA", env = "EXPECTED_REVISION")]
    pub expected_revision: Option<String>,
}

/// Runs `staging-check`.
///
/// # Errors
/// Only usage and configuration errors (exit 2): a bad `--expected-revision`, an
/// unknown `--task` or `ORCH_TASK_ID`, Gitea not configured when a task's PR head must
/// be read. Everything else ends in a verdict, or (exit 2 too, as a value) in none when
/// the task's PR head could not be read.
pub fn run(args: &StagingCheckArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let started = Instant::now();
    let settings = &ctx.config.settings;
    let pipeline = &ctx.config.pipeline;
    let mut expected = match args.expected_revision.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(
            parse_revision(text)
                .map_err(|m| anyhow::anyhow!("--expected-revision / EXPECTED_REVISION: {m}"))?,
        ),
    };
    // Missing round-trip settings are configuration errors, reported before anything runs.
    let roundtrip_env = roundtrip_env(ctx)?;
    let now = ctx.now();
    let mut internal: Vec<String> = Vec::new();

    // The task, when asked for (--task, else ORCH_TASK_ID): an unknown one is a usage
    // error; a database that cannot be read is an internal error (the verdict becomes
    // FAILED, nothing is skipped).
    let mut db = None;
    let mut task: Option<Task> = None;
    if let Some((reference, source)) = task_reference(args)? {
        match ctx.open_db() {
            Ok(d) => {
                match d.find_task(&reference) {
                    Ok(Some(t)) => task = Some(t),
                    Ok(None) => {
                        bail!("{source}: no task {reference:?} (give an id, key or work item id)")
                    }
                    Err(e) => internal.push(format!("reading task {reference}: {e:#}")),
                }
                db = Some(d);
            }
            Err(e) => internal.push(format!("opening the database: {e:#}")),
        }
    }
    let report_path = match &task {
        Some(t) => match task_dir(&settings.artefacts_dir, &t.key) {
            Ok(dir) => Some(dir.join(STAGING_REPORT_FILE)),
            Err(e) => {
                internal.push(format!("{e:#}"));
                None
            }
        },
        None => None,
    };
    let targets = report_targets(report_path.as_deref(), args.report.as_deref(), same_file);
    // Ends the run without a verdict (Gitea did not answer about the task's PR).
    let no_verdict = |unreadable: &Unreadable,
                      task: &Task,
                      internal: &[String],
                      checks: Vec<CheckLine>,
                      expected: Option<String>| {
        let end = Unjudged {
            unreadable,
            task,
            db: db.as_ref(),
            targets: &targets,
            now: now.as_second(),
            started,
        };
        end.finish(args, internal, checks, expected, settings)
    };

    // The pin: which kind the task's repo gets, and its PR head when it is needed (for a
    // pr-head pin, or as the expected revision of an image-freshness pin).
    let applies = |project: Option<&Project>| {
        freshness_applies(
            settings.image_freshness_enabled,
            &settings.image_freshness_repos.0,
            project.map(|p| (p.name.as_str(), p.repo.as_str(), p.self_hosting)),
        )
    };
    let kind = match &task {
        Some(t) => PinKind::for_repo(applies(pipeline.project(&t.project))),
        // Without a task only an image-freshness check can report a revision.
        None => PinKind::ImageFreshness,
    };
    let needs_head = kind == PinKind::PrHead || expected.is_none();
    let gitea = match &task {
        Some(t) if needs_head => match ctx.require_gitea() {
            Ok(g) => Some(g),
            // A pr-head pin cannot be made without Gitea: a configuration error.
            Err(e) if kind == PinKind::PrHead => {
                return Err(e).with_context(|| {
                    format!(
                        "staging-check reads task {}'s PR head from Gitea (the revision it pins)",
                        t.key
                    )
                })
            }
            // An image-freshness pin only loses its default expected revision: the
            // freshness check then fails for want of one, as it says.
            Err(e) => {
                log::warn!(
                    "staging-check: no default expected revision for task {} (its PR head): {e:#}",
                    t.key
                );
                None
            }
        },
        _ => None,
    };
    let mut head: Option<(&GiteaClient, PrHead)> = None;
    if let (Some(t), Some(gitea)) = (&task, gitea) {
        match read_pr_head(gitea, t, db.as_ref(), now.as_second()) {
            Ok(h) => {
                log::info!(
                    "staging-check: task {} pin {kind}: PR #{} head {} when the check starts",
                    t.key,
                    h.number,
                    h.sha
                );
                match expected_at_start(kind, expected.as_deref(), &h) {
                    Ok(Some(default)) => {
                        log::info!(
                            "staging-check: expected revision defaults to PR #{}'s head {}",
                            h.number,
                            h.sha
                        );
                        expected = Some(default);
                    }
                    Ok(None) => {}
                    Err(e) => internal.push(e),
                }
                head = Some((gitea, h));
            }
            Err(HeadError::Refused(e)) => internal.push(e),
            // Gitea gave no answer about the PR: no verdict, and no check is run for one.
            Err(HeadError::Unreadable(u)) => {
                return Ok(no_verdict(&u, t, &internal, Vec::new(), expected));
            }
        }
    }

    // Run the checks.
    let default_project = task
        .as_ref()
        .and_then(|t| pipeline.project(&t.project))
        .or_else(|| pipeline.projects.iter().find(|p| p.self_hosting));
    let plan = CheckPlan {
        pipeline,
        roundtrip_env: roundtrip_env.as_ref(),
        expected: expected.as_deref(),
        connect: settings
            .http_connect_timeout_s
            .0
            .max(Duration::from_secs(1)),
        applies: |name: Option<&str>| {
            applies(name.and_then(|n| pipeline.project(n)).or(default_project))
        },
        allowlist: &settings.staging_infra_allowlist.0,
    };
    let (mut lines, checked) = run_checks(&pipeline.staging_checks, &plan);
    let policy = Policy {
        allowlist: settings.staging_infra_allowlist.0.clone(),
        tolerance: settings.staging_infra_tolerance_enabled,
        strict: args.strict,
    };

    // A task whose repo image freshness applies to needs a checked revision: without one
    // the deploy-staging gate could never pass, while CI would read this run as green.
    if let Some(t) = &task {
        if kind == PinKind::ImageFreshness && checked.is_none() {
            internal.push(format!(
                "image freshness applies to {} but no image-freshness check reported the revision staging runs",
                t.project
            ));
        }
    }
    // A PR head read at the start is read again now: the pin holds only if it did not move
    // while the checks ran.
    let mut held = None;
    if let (Some((gitea, h)), Some(t)) = (&head, &task) {
        let again = gitea
            .get_pull(&t.repo, h.number)
            .map(|p| p.facts())
            .map_err(|e| e.to_string());
        match head_at_end(h, &again, &t.key) {
            Ok(()) => held = Some(h),
            Err(HeadError::Refused(e)) => internal.push(e),
            // The checks ran, but whether staging ran the head they were for is unknown.
            Err(HeadError::Unreadable(u)) => {
                return Ok(no_verdict(&u, t, &internal, lines, expected));
            }
        }
    }
    let checked_revision = pinned_revision(kind, checked, held);

    let mut run = StagingRun {
        verdict: judge_lines(&mut lines, &policy, &internal),
        checks: lines,
        pin: checked_revision.as_ref().map(|_| kind),
        pr_number: head.as_ref().map(|(_, h)| h.number),
        checked_revision,
        expected_revision: expected,
        checked_at: jiff::Timestamp::from_second(now.as_second())
            .unwrap_or(now)
            .to_string(),
        strict: args.strict,
        tolerance: settings.staging_infra_tolerance_enabled,
        task: task.as_ref().map(|t| t.key.clone()),
    };

    let known_errors = internal.len();
    // Act: reports first, then the validated revision. Any failure turns the verdict
    // FAILED and the reports already written are rewritten to say so.
    let (written, errors) = write_reports(&targets, &run.render_report());
    internal.extend(errors);
    // Under PostgreSQL the task's report is stored for the gate on any host, before the
    // revision is recorded as validated.
    let store_report = |task: &Option<Task>| -> Result<()> {
        match (task, &db) {
            (Some(t), Some(d)) => ArtefactStore::new(&settings.artefacts_dir, d).sync_file(
                &t.key,
                STAGING_REPORT_FILE,
                now.as_second(),
            ),
            _ => Ok(()),
        }
    };
    if let Err(e) = store_report(&task) {
        internal.push(format!("storing the report for the other hosts: {e:#}"));
    }
    if internal.is_empty() && run.verdict.status == VerdictStatus::Success {
        if let (Some(t), Some(d), Some(rev)) = (&task, &db, &run.checked_revision) {
            match d.set_validated_revision(t.id, t.round, rev, now.as_second()) {
                Ok(true) => log::info!(
                    "staging-check: task {} validated revision {rev} (pin {kind})",
                    t.key
                ),
                Ok(false) => internal.push(format!(
                    "task {} left round {} during the check (reopened): revision {rev} not recorded",
                    t.key, t.round
                )),
                Err(e) => internal.push(format!("recording the validated revision: {e:#}")),
            }
        }
    }
    if internal.len() > known_errors {
        run.verdict = judge_lines(&mut run.checks, &policy, &internal);
        for path in written {
            if let Err(e) = write_atomic(path, run.render_report().as_bytes()) {
                log::error!(
                    "staging-check: could not rewrite {} as FAILED: {e:#}",
                    path.display()
                );
            }
        }
        if let Err(e) = store_report(&task) {
            log::error!("staging-check: could not store the FAILED report: {e:#}");
        }
    }
    // A FAILED run for a task leaves it no validated revision: what staging runs now was
    // not validated, so nothing older may be merged on its word.
    if run.verdict.status == VerdictStatus::Failed {
        if let (Some(t), Some(d)) = (&task, &db) {
            clear_validated(d, t, now.as_second(), "this run failed");
        }
    }
    for e in &internal {
        log::error!("staging-check: internal error: {e}");
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&run.render_json())?);
    } else {
        print!("{}", run.render_text());
    }
    let count = |f: &dyn Fn(&CheckLine) -> bool| run.checks.iter().filter(|l| f(l)).count();
    let report = PassReport::new("staging-check", started.elapsed().as_millis())
        .with("checks", run.checks.len())
        .with(
            "passed",
            count(&|l| matches!(l.outcome, StagingCheckOutcome::Pass(_))),
        )
        .with("failed", count(&|l| l.outcome.is_failure()))
        .with("waived", run.verdict.waived.len())
        .with(
            "skipped",
            count(&|l| matches!(l.outcome, StagingCheckOutcome::Skip(_))),
        )
        .with("verdict", run.verdict.status.as_str());
    log::info!("{report}");
    Ok(match run.verdict.status {
        VerdictStatus::Success => ExitStatus::Success,
        VerdictStatus::Failed => ExitStatus::No,
    })
}

/// Returns the task asked for and where it came from: `--task`, else `ORCH_TASK_ID`
/// (set by `run-job` for agents; empty counts as unset).
fn task_reference(args: &StagingCheckArgs) -> Result<Option<(String, &'static str)>> {
    if let Some(t) = &args.task {
        return Ok(Some((t.clone(), "--task")));
    }
    match std::env::var("ORCH_TASK_ID") {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some((v.trim().to_string(), "ORCH_TASK_ID"))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("ORCH_TASK_ID: not valid text"),
    }
}

/// A run that ends without a verdict, and what ending it touches.
struct Unjudged<'a> {
    unreadable: &'a Unreadable,
    task: &'a Task,
    db: Option<&'a Db>,
    /// The reports this run would have written.
    targets: &'a [PathBuf],
    now: i64,
    started: Instant,
}

impl Unjudged<'_> {
    /// Ends the run without a verdict: removes the older reports (the gate must not read
    /// an earlier SUCCESS or FAILED as this run's answer), clears the task's validated
    /// revision (staging may run something nobody validated), prints the `no verdict`
    /// line (text or JSON) and returns exit 2. Writes no report.
    fn finish(
        &self,
        args: &StagingCheckArgs,
        internal: &[String],
        checks: Vec<CheckLine>,
        expected: Option<String>,
        settings: &Settings,
    ) -> ExitStatus {
        let u = self.unreadable;
        for e in internal {
            log::error!("staging-check: internal error: {e}");
        }
        log::error!("staging-check: {}: no verdict", u.reason());
        remove_reports(self.targets);
        if let Some(db) = self.db {
            let store = ArtefactStore::new(&settings.artefacts_dir, db);
            if let Err(e) = store.sync_file(&self.task.key, STAGING_REPORT_FILE, self.now) {
                log::error!("staging-check: could not remove the stored report: {e:#}");
            }
            clear_validated(db, self.task, self.now, "this run has no verdict");
        }
        let run = NoVerdictRun {
            no_verdict: u.line(),
            checks,
            pr_number: u.pr,
            expected_revision: expected,
            checked_at: jiff::Timestamp::from_second(self.now)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            strict: args.strict,
            tolerance: settings.staging_infra_tolerance_enabled,
            task: Some(self.task.key.clone()),
        };
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&run.render_json()).expect("JSON renders")
            );
        } else {
            print!("{}", run.render_text());
        }
        let report = PassReport::new("staging-check", self.started.elapsed().as_millis())
            .with("checks", run.checks.len())
            .with("verdict", "NONE");
        log::info!("{report}");
        ExitStatus::Error
    }
}
