//! Feedback for the developer (issue 16), one test per way a task is sent back: each
//! writes the task's next numbered `feedback-<n>.md` with its evidence, and the next
//! developer job gets that file as `ORCH_FEEDBACK` and `{feedback}`. The real binary
//! against a real SQLite file, the loopback Gitea and production stand-ins, real
//! `run-job` supervisors running shell agents that write their artefacts (the developer
//! prints the feedback it is handed), real `reconcile` and `post-deploy-tick` passes.
//!
//! Red CI does not move a task (it is at development): `reconcile` re-runs the
//! developer's job, and that re-run gets the failing CI contexts with their target URLs.

use std::os::unix::process::ExitStatusExt as _;

use orch::standin::gitea::{fake_sha, GiteaStandin, PullSeed};

use crate::common::{seed_task, Project, SeedTask, Standin, TestEnv, NOW_UNIX};

const REPO: &str = "acme/shop";
/// The pinned clock, as feedback files print it.
const NOW: &str = "2026-11-25T03:00:00Z";

/// The developer prints what it is handed (`ORCH_FEEDBACK`, `{feedback}`) and the file;
/// the reviewer and the deployer write `$TEST_TEXT` into the artefact `$TEST_WRITE`.
const AGENTS: &str = r#"analyst: [/bin/true]
developer:
  - /bin/sh
  - -c
  - 'if [ -z "$ORCH_FEEDBACK" ]; then echo "feedback env=unset arg=$0"; else echo "feedback env=$ORCH_FEEDBACK arg=$0"; cat "$ORCH_FEEDBACK"; fi'
  - '{feedback}'
reviewer:
  env: [TEST_WRITE, TEST_TEXT]
  command: [/bin/sh, -c, 'printf "%s" "$TEST_TEXT" > "$ORCH_TASK_ARTEFACTS/$TEST_WRITE"']
deployer:
  env: [TEST_WRITE, TEST_TEXT]
  command: [/bin/sh, -c, 'printf "%s" "$TEST_TEXT" > "$ORCH_TASK_ARTEFACTS/$TEST_WRITE"']
"#;

struct World {
    env: TestEnv,
}

fn world() -> World {
    let shop = Project::shop()
        .default_branch("main")
        .with("health_url: $PROD_URL/health\nrollback: [/bin/true]");
    let env = TestEnv::builder()
        .project(shop)
        .agents(AGENTS)
        .standins(&[Standin::Gitea, Standin::Prod])
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_HTTP_TIMEOUT_S", "5")
        .set("ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", "false")
        .set("ORCH_RECONCILE_REPLAY_ENABLED", "false")
        .set("ORCH_POST_DEPLOY_REPOS", "shop")
        .set("ORCH_POST_DEPLOY_FAIL_THRESHOLD", "2")
        .build();
    World { env }
}

impl World {
    fn gitea(&self) -> &GiteaStandin {
        self.env.gitea()
    }

    /// Seeds task SHOP-`n` at `stage`, its branch on Gitea with PR `n` open for it
    /// (CI green unless `ci` says otherwise); returns (id, key, PR head).
    fn seed(&self, n: u32, stage: &str, green: bool) -> (i64, String, String) {
        let branch = format!("shop-{n}-checkout");
        let sha = fake_sha(&format!("work on {branch}"));
        self.gitea().push(REPO, &branch, &sha);
        self.gitea()
            .add_pull(REPO, &PullSeed::open(n.into(), &branch));
        if green {
            self.gitea().add_status(REPO, &sha, "ci/build", "success");
        }
        let mut task = SeedTask::new(&Project::shop(), n.into(), stage.parse().expect("a stage"))
            .work_item(&format!("1c2d3e4f-0000-4000-8000-{n:012}"))
            .branch(&branch)
            .at(NOW_UNIX - 3600)
            .branch_ready();
        task.pr = Some(n.into());
        let key = task.key.clone();
        (seed_task(&self.env, &task), key, sha)
    }

    fn stage(&self, task: i64) -> String {
        self.env
            .db()
            .query_row("SELECT stage FROM tasks WHERE id = ?1", [task], |r| {
                r.get(0)
            })
            .unwrap()
    }

    /// Runs the task's live job of `stage` (seeding one when none is live) through the
    /// real supervisor, claimed by SQL as dispatch would; returns the job's log.
    fn run_job(&self, task: i64, agent: &str, stage: &str) -> String {
        let job = crate::common::seed::claim_live_job(&self.env, task, agent, stage);
        let run = self.env.run(&["run-job", &job.to_string()]).expect(0);
        let log = std::fs::read_to_string(self.env.path(&format!("state/jobs/{job}.log")))
            .unwrap_or_default();
        format!("{log}\n{}", run.stderr)
    }

    /// The reviewer or deployer writes `text` as `file` in its job at `stage`.
    fn agent_writes(&mut self, task: i64, agent: &str, stage: &str, file: &str, text: &str) {
        self.env.set("TEST_WRITE", file).set("TEST_TEXT", text);
        self.run_job(task, agent, stage);
        self.env.unset("TEST_WRITE").unset("TEST_TEXT");
    }

    fn feedback(&self, key: &str, n: u32) -> String {
        std::fs::read_to_string(self.env.path(&format!("artefacts/{key}/feedback-{n}.md")))
            .unwrap_or_else(|e| panic!("feedback-{n}.md of {key}: {e}"))
    }

    fn feedback_files(&self, key: &str) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.env.path(&format!("artefacts/{key}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("feedback-"))
            .collect();
        out.sort();
        out
    }

    /// Runs the developer's next job and checks it was handed feedback `n`, whose whole
    /// text it printed.
    fn developer_sees(&self, task: i64, key: &str, n: u32) {
        let text = self.feedback(key, n);
        let log = self.run_job(task, "developer", "development");
        let path = self.env.path(&format!("artefacts/{key}/feedback-{n}.md"));
        let path = path.display();
        assert!(
            log.contains(&format!("feedback env={path} arg={path}\n{text}")),
            "{log}"
        );
    }

    fn reconcile(&self) -> serde_json::Value {
        self.env.run(&["reconcile", "--json"]).expect(0).json()
    }
}

#[test]
fn review_changes_hand_the_requested_changes_to_the_developer() {
    let mut w = world();
    let (id, key, _) = w.seed(1, "review", true);
    let review = "---\nreview_verdict: REQUEST_CHANGES\n---\n## Requested changes\n\n- `cart.rs`: an empty cart panics in `total()`\n- add a test for the empty cart\n";
    w.agent_writes(id, "reviewer", "review", "05-review.md", review);
    assert_eq!(w.stage(id), "development");
    let text = w.feedback(&key, 1);
    assert_eq!(
        text,
        format!(
            "---\nfeedback: 1\nkind: review-changes\nround: 1\nevidence_file: 05-review.md\n---\n\
             # Feedback 1 for {key}: the review requested changes\n\n\
             Sent back to development by run-job at {NOW}: check_review_requests_changes\n\n\
             ## Evidence\n\n\
             Copied from `05-review.md` as it was when the task was sent back:\n\n{review}"
        )
    );
    w.developer_sees(id, &key, 1);
}

#[test]
fn staging_failed_hands_the_staging_reports_failures_to_the_developer() {
    let mut w = world();
    let (id, key, sha) = w.seed(2, "deploy-staging", true);
    let report = format!(
        "---\nstaging_status: FAILED\nchecked_revision: {sha}\n---\n# Staging check\n\n\
         | check | result |\n|---|---|\n| C1 health | FAILED: 503 from /health |\n\
         | C2 login | FAILED: expected 200, got 500 |\n"
    );
    w.agent_writes(
        id,
        "deployer",
        "deploy-staging",
        "10-staging-report.md",
        &report,
    );
    assert_eq!(w.stage(id), "development");
    let text = w.feedback(&key, 1);
    assert!(
        text.starts_with("---\nfeedback: 1\nkind: staging-failed\nround: 1\nevidence_file: 10-staging-report.md\n---\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Sent back to development by run-job at {NOW}: check_staging_failed\n"
        )),
        "{text}"
    );
    assert!(text.ends_with(&report), "{text}");
    w.developer_sees(id, &key, 1);
}

#[test]
fn deploy_failed_hands_the_deploy_reports_reason_to_the_developer() {
    let mut w = world();
    let (id, key, _) = w.seed(3, "deploy", true);
    let report = "---\ndeploy_status: FAILED\n---\nreason: migration 0042 timed out after 300 s on the production database\n";
    w.agent_writes(id, "deployer", "deploy", "12-deploy-report.md", report);
    assert_eq!(w.stage(id), "development");
    let text = w.feedback(&key, 1);
    assert!(
        text.starts_with("---\nfeedback: 1\nkind: deploy-failed\nround: 1\nevidence_file: 12-deploy-report.md\n---\n"),
        "{text}"
    );
    assert!(text.contains(": check_deploy_failed\n"), "{text}");
    assert!(text.ends_with(report), "{text}");
    w.developer_sees(id, &key, 1);
}

#[test]
fn post_deploy_degraded_hands_the_windows_samples_to_the_developer() {
    let mut w = world();
    let (id, key, _) = w.seed(4, "deploy", true);
    // The operator's move to done arms the window, as the deploy gate's would.
    w.env
        .run(&["task", "move", &key, "--to", "done", "--reason", "deployed"])
        .expect(0);
    w.env.prod().set_health(503);
    let at = |secs: i64| {
        jiff::Timestamp::from_second(NOW_UNIX + secs)
            .unwrap()
            .to_string()
    };
    for secs in [60, 120] {
        w.env.set("ORCH_NOW", &at(secs));
        w.env.run(&["post-deploy-tick"]).expect(0);
    }
    assert_eq!(w.stage(id), "development");
    let text = w.feedback(&key, 1);
    assert!(
        text.starts_with("---\nfeedback: 1\nkind: post-deploy-degraded\nround: 1\nevidence_file: 16-post-deploy-log.md\n---\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Sent back to development by post-deploy at {}: post-deploy DEGRADED",
            at(120).replace(".0Z", "Z")
        )) && text.contains("health failure streak 2"),
        "{text}"
    );
    // Every sample up to the one that decided the rollback, as the log had it.
    assert!(
        text.ends_with(&format!(
            "Copied from `16-post-deploy-log.md` as it was when the task was sent back:\n\n\
             ---\nwindow_armed_at: \"{NOW}\"\nwindow_ends_at: \"2026-11-25T03:15:00Z\"\n---\n\
             # Post-deploy log of {key}\n\n\
             | time | samples | classification | decision | action |\n|---|---|---|---|---|\n\
             | 2026-11-25T03:01:00Z | health HTTP 503; metrics n/a | INCONCLUSIVE | CONTINUE | - |\n\
             | 2026-11-25T03:02:00Z | health HTTP 503; metrics n/a | DEGRADED | ROLLBACK | rollback started: /bin/true |\n"
        )),
        "{text}"
    );
    w.developer_sees(id, &key, 1);
}

#[test]
fn red_ci_reruns_the_developer_with_the_failing_contexts_and_their_urls() {
    let mut w = world();
    let (id, key, sha) = w.seed(5, "development", false);
    let build_url = "https://ci.example.com/acme/shop/builds/41";
    w.gitea().add_status_described(
        REPO,
        &sha,
        ("ci/build", "failure"),
        "3 tests failed: cart::total_of_empty_cart",
        build_url,
    );
    w.gitea()
        .add_status_described(REPO, &sha, ("ci/lint", "error"), "", "");
    w.gitea().add_status_described(
        REPO,
        &sha,
        ("ci/docs", "success"),
        "docs built",
        "https://ci.example.com/acme/shop/builds/42",
    );
    // The first round's developer is handed nothing; its gate waits on red CI.
    let log = w.run_job(id, "developer", "development");
    assert!(log.contains("feedback env=unset arg=\n"), "{log}");
    assert_eq!(w.stage(id), "development");
    let job: i64 = w
        .env
        .count("SELECT id FROM jobs WHERE stage = 'development'");

    // A pass killed after writing the file and before the re-run: nothing re-run, and
    // the next pass rewrites the same file and re-runs once.
    let out = w
        .env
        .command(&["reconcile"])
        .env("ORCH_CRASH_AT", "ci-feedback-written")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    assert_eq!(w.feedback_files(&key), ["feedback-1.md"]);
    assert_eq!(
        w.env
            .count(&format!("SELECT attempt FROM jobs WHERE id = {job}")),
        1
    );
    let r = w.reconcile();
    assert_eq!(r["counts"]["rerun"], 1, "{r:#}");
    assert_eq!(
        w.env.count(&format!(
            "SELECT count(*) FROM jobs WHERE id = {job} AND attempt = 2 AND status = 'queued'"
        )),
        1
    );
    assert_eq!(w.feedback_files(&key), ["feedback-1.md"]);
    let text = w.feedback(&key, 1);
    assert_eq!(
        text,
        format!(
            "---\nfeedback: 1\nkind: ci-failed\nround: 1\nci_head: {sha}\n---\n\
             # Feedback 1 for {key}: CI failed on the PR head\n\n\
             The developer's job was re-run by reconcile at {NOW}: check_ci_green: CI failed on {short}\n\n\
             ## Evidence\n\n\
             Gitea's failing CI contexts of commit {sha} (the PR head) when the job was re-run:\n\n\
             - `ci/build`: failure: 3 tests failed: cart::total_of_empty_cart\n  {build_url}\n\
             - `ci/lint`: error\n  (no target URL)\n",
            short = &sha[..10]
        )
    );
    // A pass while the re-run is queued writes nothing more.
    w.reconcile();
    assert_eq!(w.feedback_files(&key), ["feedback-1.md"]);
    w.developer_sees(id, &key, 1);

    // The fix turns CI green: the task goes on; a later review rollback takes the next
    // number, so the developer always gets the newest.
    for context in ["ci/build", "ci/lint"] {
        w.gitea().add_status(REPO, &sha, context, "success");
    }
    let r = w.reconcile();
    assert_eq!(r["counts"]["advanced"], 1, "{r:#}");
    assert_eq!(w.stage(id), "review");
    let review = "---\nreview_verdict: REQUEST_CHANGES\n---\nname the test after the bug\n";
    w.agent_writes(id, "reviewer", "review", "05-review.md", review);
    assert_eq!(w.feedback_files(&key), ["feedback-1.md", "feedback-2.md"]);
    assert!(w.feedback(&key, 2).contains("kind: review-changes\n"));
    w.developer_sees(id, &key, 2);
}
