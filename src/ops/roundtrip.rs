//! `staging-check`'s webhook round trip (`kind: webhook-roundtrip`, C9a/C9b): resolve
//! the sandbox project's *in progress* state from Plane, send one signed synthetic
//! delivery to staging's webhook endpoint, then wait with the check's deadline for the
//! sandbox branch on Gitea (C9a) or the analyst job on staging (C9b), and clean up.
//!
//! Checks naming the same project, endpoint and state share one [`Trip`]: one
//! delivery, one synthetic work item, however many checks wait on it. Decisions (which
//! state, the body, the lookups' shapes, the backoff) are `core::roundtrip`'s.

use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::adapters::gitea::GiteaClient;
use crate::adapters::http::HttpError;
use crate::adapters::plane::PlaneClient;
use crate::adapters::poll::{self, RealTime, Step};
use crate::adapters::roundtrip::{post_delivery, random_uuid, staging_jobs_from_db};
use crate::adapters::staging_probes::command_probe;
use crate::config::{ConfigError, Secret};
use crate::core::intake::{sign, PlaneState};
use crate::core::plane::Project;
use crate::core::roundtrip::{
    analyst_job, backoff, delivery_body, in_progress_state, jobs_from_task_show, status_argv,
    synthetic, StagingJob, Synthetic,
};
use crate::core::staging_check::{
    one_line, ProbeError, RoundtripCheck, RoundtripTarget, StagingCheckOutcome,
};
use crate::ops::pass::PassContext;

/// The shortest per-request timeout a poll gets, even at its deadline.
const MIN_CALL: Duration = Duration::from_millis(200);

/// The settings and clients every round trip of a run needs, checked before any check
/// runs. The clients are the pass's (sharing its connections); each call made with them
/// gets a timeout cut to the check's deadline.
#[derive(Debug)]
pub struct RoundtripEnv {
    plane: PlaneClient,
    gitea: Option<GiteaClient>,
    secret: Secret,
    connect: Duration,
    http_timeout: Duration,
}

impl RoundtripEnv {
    /// Checks the settings and takes the pass's clients; Gitea's settings are required
    /// when some check waits for the branch (otherwise they only serve the clean-up).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first missing setting, or a client that cannot be
    /// built.
    pub fn new(ctx: &PassContext, needs_gitea: bool) -> Result<RoundtripEnv> {
        let config = &ctx.config;
        let s = &config.settings;
        let missing = |key: &str, why: &str| ConfigError::new(key, why);
        // The staging receiver's own secret; production's only when none is set (an
        // agent is granted the first, never the second: docs/security.md).
        let secret = s
            .staging_webhook_secret
            .clone()
            .or_else(|| s.plane_webhook_secret.clone())
            .ok_or_else(|| {
                missing(
                    "ORCH_STAGING_WEBHOOK_SECRET",
                    "required by webhook-roundtrip checks to sign the synthetic delivery (the staging webhook's secret; ORCH_PLANE_WEBHOOK_SECRET is used when it is unset)",
                )
            })?;
        s.plane_url.as_ref().ok_or_else(|| {
            missing(
                "ORCH_PLANE_URL",
                "required by webhook-roundtrip checks to read the sandbox's states",
            )
        })?;
        s.plane_api_key.as_ref().ok_or_else(|| {
            missing(
                "ORCH_PLANE_API_KEY",
                "required by webhook-roundtrip checks to read the sandbox's states",
            )
        })?;
        config.pipeline.plane_workspace.as_ref().ok_or_else(|| {
            missing(
                "plane.workspace",
                "required by webhook-roundtrip checks (the workspace slug)",
            )
        })?;
        let gitea = match (&s.gitea_url, &s.gitea_token) {
            (Some(_), Some(_)) => Some(ctx.require_gitea()?.clone()),
            _ if needs_gitea => {
                let key = if s.gitea_url.is_none() {
                    "ORCH_GITEA_URL"
                } else {
                    "ORCH_GITEA_TOKEN"
                };
                return Err(missing(
                    key,
                    "required by webhook-roundtrip checks with wait_for: branch",
                )
                .into());
            }
            _ => None,
        };
        Ok(RoundtripEnv {
            plane: ctx.require_plane()?.clone(),
            gitea,
            secret,
            connect: s.http_connect_timeout_s.0.max(Duration::from_secs(1)),
            http_timeout: s.http_timeout_s.0,
        })
    }

    /// A request timeout for a call made with `remaining` left: half of it (a read may
    /// be retried once), at least [`MIN_CALL`], at most `ORCH_HTTP_TIMEOUT_S`.
    fn call_timeout(&self, remaining: Duration) -> Duration {
        (remaining / 2).max(MIN_CALL).min(self.http_timeout)
    }

    fn plane(&self, timeout: Duration) -> PlaneClient {
        self.plane.with_timeout(timeout)
    }

    fn gitea(&self, timeout: Duration) -> Option<GiteaClient> {
        self.gitea.as_ref().map(|g| g.with_timeout(timeout))
    }
}

/// What one delivery sent.
#[derive(Debug, Clone)]
struct Sent {
    item: Synthetic,
    state: PlaneState,
    at: Instant,
}

/// One round trip: a synthetic delivery shared by the checks that wait on it.
pub struct Trip {
    env: Arc<RoundtripEnv>,
    project: Project,
    webhook_url: String,
    in_progress_state: Option<String>,
    sent: Mutex<Option<Result<Sent, StagingCheckOutcome>>>,
}

impl Trip {
    /// A round trip for `check`'s project (already validated to exist) and endpoint.
    pub fn new(env: Arc<RoundtripEnv>, project: Project, check: &RoundtripCheck) -> Trip {
        Trip {
            env,
            project,
            webhook_url: check.webhook_url.clone(),
            in_progress_state: check.in_progress_state.clone(),
            sent: Mutex::new(None),
        }
    }

    /// Returns whether `check` waits on this round trip's delivery.
    pub fn serves(&self, check: &RoundtripCheck) -> bool {
        self.project.name == check.project
            && self.webhook_url == check.webhook_url
            && self.in_progress_state == check.in_progress_state
    }

    /// Runs one check: sends the delivery unless another check of this trip did, then
    /// waits for `check`'s target within `timeout`.
    pub fn check(&self, check: &RoundtripCheck, timeout: Duration) -> StagingCheckOutcome {
        let deadline = Instant::now() + timeout;
        let sent = match self.send_once(deadline) {
            Ok(s) => s,
            Err(o) => return o,
        };
        match check.wait_for {
            RoundtripTarget::Branch => self.wait_branch(&sent, deadline),
            RoundtripTarget::AnalystJob => self.wait_job(&sent, check, deadline),
        }
    }

    fn send_once(&self, deadline: Instant) -> Result<Sent, StagingCheckOutcome> {
        let mut slot = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(done) = &*slot {
            return done.clone();
        }
        let result = self.send(deadline);
        *slot = Some(result.clone());
        result
    }

    fn send(&self, deadline: Instant) -> Result<Sent, StagingCheckOutcome> {
        let p = &self.project;
        let call = self.env.call_timeout(remaining(deadline));
        let could_not = |what: String| StagingCheckOutcome::Error(format!("could not run: {what}"));
        let plane = self.env.plane(call);
        let states: Vec<PlaneState> = plane.list_states(&p.plane_project_id).map_err(|e| {
            could_not(format!(
                "reading the states of project {} from Plane: {e}",
                p.name
            ))
        })?;
        let state = in_progress_state(
            &p.name,
            &p.states,
            &states,
            self.in_progress_state.as_deref(),
        )
        .map_err(StagingCheckOutcome::Fail)?
        .clone();
        let id = random_uuid().map_err(|e| could_not(format!("{e:#}")))?;
        let delivery_id = random_uuid().map_err(|e| could_not(format!("{e:#}")))?;
        let item = synthetic(p, &id);
        let body = delivery_body(&p.plane_project_id, &item, &state.id);
        let signature = sign(self.env.secret.expose(), &body);
        log::info!(
            "staging-check: sending synthetic delivery {delivery_id} for work item {} of project {} (state {:?} {})",
            item.work_item_id,
            p.name,
            state.name,
            state.id
        );
        let answer = post_delivery(
            &self.webhook_url,
            &body,
            &signature,
            &delivery_id,
            self.env.connect,
            remaining(deadline).max(MIN_CALL),
        )
        .map_err(|e| match e {
            ProbeError::Timeout(m) => {
                StagingCheckOutcome::Fail(format!("staging webhook timed out: {m}"))
            }
            ProbeError::Connect(m) => {
                StagingCheckOutcome::Fail(format!("could not connect to the staging webhook: {m}"))
            }
            ProbeError::Transport(m) => {
                StagingCheckOutcome::Fail(format!("sending to the staging webhook failed: {m}"))
            }
            ProbeError::CouldNotRun(m) => could_not(m),
        })?;
        if answer.status != 200 {
            let body = one_line(&answer.body, 120);
            return Err(StagingCheckOutcome::Fail(format!(
                "staging webhook answered HTTP {} (expected 200){}",
                answer.status,
                if body.is_empty() {
                    String::new()
                } else {
                    format!(": {body}")
                }
            )));
        }
        Ok(Sent {
            item,
            state,
            at: Instant::now(),
        })
    }

    fn wait_branch(&self, sent: &Sent, deadline: Instant) -> StagingCheckOutcome {
        let repo = &self.project.repo;
        let branch = &sent.item.branch;
        let polled = poll(deadline, |left| {
            let Some(client) = self.env.gitea(self.env.call_timeout(left)) else {
                return Poll::Stop(StagingCheckOutcome::Error(
                    "could not run: ORCH_GITEA_URL and ORCH_GITEA_TOKEN are needed".into(),
                ));
            };
            match client.branch_exists(repo, branch) {
                Ok(true) => Poll::Found(String::new()),
                Ok(false) => Poll::NotYet(None),
                Err(HttpError::Fatal(m)) => {
                    Poll::Stop(StagingCheckOutcome::Error(format!("could not run: {m}")))
                }
                Err(e) => Poll::NotYet(Some(e.to_string())),
            }
        });
        match polled {
            Ok(_) => StagingCheckOutcome::Pass(format!(
                "branch {branch} appeared in {repo} {} ms after the delivery ({})",
                sent.at.elapsed().as_millis(),
                describe(sent)
            )),
            Err(Waited::Stopped(o)) => o,
            Err(Waited::Deadline(last)) => StagingCheckOutcome::Fail(format!(
                "branch {branch} did not appear in {repo} within {} ms of the delivery ({}){}",
                sent.at.elapsed().as_millis(),
                describe(sent),
                last.map(|l| format!("; last error: {l}"))
                    .unwrap_or_default()
            )),
        }
    }

    fn wait_job(
        &self,
        sent: &Sent,
        check: &RoundtripCheck,
        deadline: Instant,
    ) -> StagingCheckOutcome {
        let item = &sent.item;
        let found = |jobs: &[StagingJob]| match analyst_job(jobs) {
            Some(j) => Poll::Found(format!("analyst job {} ({})", j.id, j.status)),
            None => Poll::NotYet(Some(format!("task {} has no analyst job", item.key))),
        };
        let polled = poll(deadline, |left| {
            if let Some(template) = &check.status_command {
                let argv = status_argv(template, item);
                let t = left.clamp(Duration::from_secs(1), Duration::from_secs(30));
                match command_probe(&argv, t) {
                    Err(ProbeError::CouldNotRun(m)) => Poll::Stop(StagingCheckOutcome::Error(
                        format!("could not run: status_command: {m}"),
                    )),
                    Err(e) => Poll::NotYet(Some(format!("status_command: {e:?}"))),
                    Ok(end) if end.code != Some(0) => Poll::NotYet(Some(format!(
                        "status_command exit {}: {}",
                        end.code.map_or("by signal".into(), |c| c.to_string()),
                        one_line(&end.stderr, 120)
                    ))),
                    Ok(end) => match jobs_from_task_show(&end.stdout) {
                        Ok(jobs) => found(&jobs),
                        Err(m) => Poll::Stop(StagingCheckOutcome::Fail(format!(
                            "status_command printed {m}: {}",
                            one_line(&end.stdout, 80)
                        ))),
                    },
                }
            } else if let Some(path) = &check.status_db {
                match staging_jobs_from_db(std::path::Path::new(path), &item.work_item_id) {
                    Ok(Some(jobs)) => found(&jobs),
                    Ok(None) => Poll::NotYet(Some(format!(
                        "no task for work item {} in status_db",
                        item.work_item_id
                    ))),
                    Err(e) => {
                        Poll::Stop(StagingCheckOutcome::Error(format!("could not run: {e:#}")))
                    }
                }
            } else {
                Poll::Stop(StagingCheckOutcome::Error(
                    "could not run: wait_for: analyst-job needs status_command or status_db".into(),
                ))
            }
        });
        match polled {
            Ok(job) => StagingCheckOutcome::Pass(format!(
                "{job} for task {} on staging {} ms after the delivery ({})",
                item.key,
                sent.at.elapsed().as_millis(),
                describe(sent)
            )),
            Err(Waited::Stopped(o)) => o,
            Err(Waited::Deadline(last)) => StagingCheckOutcome::Fail(format!(
                "no analyst job for task {} on staging within {} ms of the delivery ({}){}",
                item.key,
                sent.at.elapsed().as_millis(),
                describe(sent),
                last.map(|l| format!("; last seen: {l}"))
                    .unwrap_or_default()
            )),
        }
    }

    /// Deletes the sandbox branch the round trip caused, and says what stays. `None`
    /// when nothing was delivered (nothing to clean up).
    pub fn cleanup(&self) -> Option<String> {
        let slot = match self.sent.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // A check abandoned at its deadline still holds it while sending.
            Err(TryLockError::WouldBlock) => {
                return Some("cleanup: skipped, the delivery was still being sent".into())
            }
        };
        let sent = match &*slot {
            Some(Ok(s)) => s.clone(),
            _ => return None,
        };
        drop(slot);
        let repo = &self.project.repo;
        let b = &sent.item.branch;
        let branch = if *b == self.project.default_branch {
            format!("branch {b} is {repo}'s default branch: not deleted")
        } else {
            match self.env.gitea(self.env.http_timeout) {
                None => "branch left (no Gitea settings to delete it)".to_string(),
                Some(c) => match c.delete_branch(repo, b) {
                    Ok(true) => "branch deleted".to_string(),
                    Ok(false) => {
                        "branch was not there to delete (if staging creates it later, it stays)"
                            .to_string()
                    }
                    Err(e) => format!("branch left: {e}"),
                },
            }
        };
        log::info!("staging-check: round trip clean-up of {b} in {repo}: {branch}");
        Some(format!(
            "cleanup: {branch}; task {} (work item {}) stays in staging's database",
            sent.item.key, sent.item.work_item_id
        ))
    }
}

fn describe(sent: &Sent) -> String {
    format!("state {:?} {}", sent.state.name, sent.state.id)
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

enum Poll {
    Found(String),
    NotYet(Option<String>),
    Stop(StagingCheckOutcome),
}

enum Waited {
    Stopped(StagingCheckOutcome),
    Deadline(Option<String>),
}

/// Calls `probe` with the time left until it finds its target, stops, or the deadline
/// passes (one last call is made at the deadline), waiting a bounded backoff between
/// calls.
fn poll(deadline: Instant, mut probe: impl FnMut(Duration) -> Poll) -> Result<String, Waited> {
    let mut last = None;
    let polled = poll::until(&RealTime, deadline, |a| match probe(a.left) {
        Poll::Found(what) => Step::Done(Ok(what)),
        Poll::Stop(o) => Step::Done(Err(Waited::Stopped(o))),
        Poll::NotYet(note) => {
            last = note.or(last.take());
            Step::Again(backoff(a.n, Duration::MAX))
        }
    });
    polled.unwrap_or(Err(Waited::Deadline(last)))
}
