//! A stage's gate reads only what its agent wrote during this visit: entering review,
//! deploy-staging or deploy moves the stage's artefact of an earlier visit (an earlier
//! round, or before a rollback) into `<task dir>/history/` before the move commits,
//! while the developer still reads every report at development. The real binary
//! against a real SQLite file and the loopback Gitea stand-in; tasks are seeded through
//! the library in the state the pipeline leaves them, jobs run through the real `run-job`
//! supervisor (claimed by SQL, as `dispatch` would) with shell agents that write their
//! artefact during their job, or stop before writing it.

use std::os::unix::process::ExitStatusExt as _;

use orch::standin::gitea::{fake_sha, GiteaStandin, PullSeed};
use serde_json::Value;

use crate::common::{seed_task, Project, Run, SeedTask, Standin, TestEnv, NOW_UNIX};

const REPO: &str = "acme/shop";
/// What `history_name` makes of the pinned clock.
const WHEN: &str = "20261125T030000Z";

/// Agents as shell scripts: the developer prints its `ORCH_FEEDBACK` and `{feedback}`
/// and that file's `kind:` line, then the first frontmatter line of every report it
/// finds (the feedback it reads); the reviewer writes `$TEST_REVIEW` as its
/// verdict, the deployer `$TEST_STAGING` or `$TEST_DEPLOY` as its report, and each
/// stops with exit 1 before writing anything when its variable is unset. Each is granted
/// its variables (`env:`): an agent's environment is an allowlist.
const AGENTS: &str = r#"analyst: [/bin/true]
developer:
  - /bin/sh
  - -c
  - 'if [ -z "$ORCH_FEEDBACK" ]; then echo "feedback env=unset arg=$0"; else echo "feedback env=$ORCH_FEEDBACK arg=$0"; fi; if [ -n "$ORCH_FEEDBACK" ]; then sed -n 3p "$ORCH_FEEDBACK"; fi; for f in 05-review.md 10-staging-report.md 12-deploy-report.md; do if [ -f "$ORCH_TASK_ARTEFACTS/$f" ]; then echo "feedback $f: $(sed -n 2p "$ORCH_TASK_ARTEFACTS/$f")"; fi; done'
  - '{feedback}'
reviewer:
  env: [TEST_REVIEW]
  command:
  - /bin/sh
  - -c
  - 'if [ -z "$TEST_REVIEW" ]; then echo "stopped before writing" >&2; exit 1; fi; printf "%s\nreview_verdict: %s\n%s\n" --- "$TEST_REVIEW" --- > "$ORCH_TASK_ARTEFACTS/05-review.md"'
deployer:
  env: [TEST_STAGING, TEST_DEPLOY]
  command:
  - /bin/sh
  - -c
  - 'if [ -n "$TEST_STAGING" ]; then printf "%s\nstaging_status: %s\n%s\n" --- "$TEST_STAGING" --- > "$ORCH_TASK_ARTEFACTS/10-staging-report.md"; elif [ -n "$TEST_DEPLOY" ]; then printf "%s\ndeploy_status: %s\n%s\n" --- "$TEST_DEPLOY" --- > "$ORCH_TASK_ARTEFACTS/12-deploy-report.md"; else echo "stopped before writing" >&2; exit 1; fi'
"#;

struct World {
    env: TestEnv,
}

fn world() -> World {
    let env = TestEnv::builder()
        .project(Project::shop().default_branch("main"))
        .agents(AGENTS)
        .standins(&[Standin::Gitea])
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_HTTP_TIMEOUT_S", "5")
        .set("ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", "false")
        .set("ORCH_RECONCILE_REPLAY_ENABLED", "false")
        .build();
    World { env }
}

impl World {
    fn gitea(&self) -> &GiteaStandin {
        self.env.gitea()
    }

    /// Seeds task SHOP-`n` at `stage` in round 1, its branch confirmed, PR `pr` recorded.
    fn seed(&self, n: u32, stage: &str, branch: &str, pr: Option<i64>) -> (i64, String) {
        let mut task = SeedTask::new(&Project::shop(), n.into(), stage.parse().expect("a stage"))
            .work_item(&format!("1c2d3e4f-0000-4000-8000-{n:012}"))
            .title("Checkout")
            .branch(branch)
            .at(NOW_UNIX - 3600)
            .branch_ready();
        task.pr = pr;
        let key = task.key.clone();
        (seed_task(&self.env, &task), key)
    }

    fn stage(&self, task: i64) -> String {
        self.env
            .db()
            .query_row("SELECT stage FROM tasks WHERE id = ?1", [task], |r| {
                r.get(0)
            })
            .unwrap()
    }

    fn count(&self, sql: &str, task: i64) -> i64 {
        self.env.db().query_row(sql, [task], |r| r.get(0)).unwrap()
    }

    /// Runs the task's live job of `stage` through the real supervisor (claimed by SQL,
    /// as dispatch would), seeding one when none is live; returns the job's log.
    fn run_job(&self, task: i64, agent: &str, stage: &str, code: i32) -> String {
        let job = crate::common::seed::claim_live_job(&self.env, task, agent, stage);
        let run = self.env.run(&["run-job", &job.to_string()]).expect(code);
        let log = std::fs::read_to_string(self.env.path(&format!("state/jobs/{job}.log")))
            .unwrap_or_default();
        format!("{log}\n{}", run.stderr)
    }

    /// The developer's work: a commit on `branch`, PR `n` open for it, CI green.
    fn developer_opens_pr(&self, n: u64, branch: &str) {
        let sha = fake_sha(&format!("work {n} on {branch}"));
        self.gitea().push(REPO, branch, &sha);
        self.gitea().add_pull(REPO, &PullSeed::open(n, branch));
        self.gitea().add_status(REPO, &sha, "ci/build", "success");
    }

    fn artefact(&self, key: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.env.path(&format!("artefacts/{key}/{file}"))).ok()
    }

    /// The task's `history/`: (name, second line of the file), sorted by name.
    fn history(&self, key: &str) -> Vec<(String, String)> {
        let dir = self.env.path(&format!("artefacts/{key}/history"));
        let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| {
                    let e = e.unwrap();
                    let text = std::fs::read_to_string(e.path()).unwrap();
                    let line = text.lines().nth(1).unwrap_or("").to_string();
                    (e.file_name().to_string_lossy().into_owned(), line)
                })
                .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    fn reconcile(&self) -> Value {
        self.env.run(&["reconcile", "--json"]).expect(0).json()
    }

    /// What a dry-run reconcile would do with the task, with the gate's blockers.
    fn dry_run(&self, key: &str) -> Value {
        let r = self
            .env
            .run(&["reconcile", "--dry-run", "--json"])
            .expect(0)
            .json();
        r["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == key)
            .unwrap_or_else(|| panic!("{key} not in {r:#}"))
            .clone()
    }
}

impl World {
    /// The task's feedback files, by name.
    fn feedback_files(&self, key: &str) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.env.path(&format!("artefacts/{key}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("feedback-"))
            .collect();
        out.sort();
        out
    }

    /// Runs the developer and checks it was handed feedback file `n` of `key`, of `kind`.
    fn developer_sees(&self, task: i64, key: &str, n: u32, kind: &str) -> String {
        let log = self.run_job(task, "developer", "development", 0);
        let path = self.env.path(&format!("artefacts/{key}/feedback-{n}.md"));
        let path = path.display();
        assert!(
            log.contains(&format!("feedback env={path} arg={path}\nkind: {kind}\n")),
            "{log}"
        );
        log
    }
}

fn pair(name: &str, line: &str) -> (String, String) {
    (name.to_string(), line.to_string())
}

#[test]
fn a_second_visit_to_review_never_reads_the_verdicts_of_the_first() {
    let mut w = world();
    let branch = "shop-1-checkout";
    w.developer_opens_pr(1, branch);
    let (id, key) = w.seed(1, "review", branch, Some(1));

    // Visit 1: the reviewer approves, then staging fails: back to development.
    w.env.set("TEST_REVIEW", "APPROVE");
    w.run_job(id, "reviewer", "review", 0);
    assert_eq!(w.stage(id), "deploy-staging");
    w.env.unset("TEST_REVIEW").set("TEST_STAGING", "FAILED");
    w.run_job(id, "deployer", "deploy-staging", 0);
    assert_eq!(w.stage(id), "development");
    w.env.unset("TEST_STAGING");

    // The developer reads both reports; its gate (PR open, CI green) enters review,
    // which moves visit 1's verdict aside before the reviewer can run.
    let log = w.run_job(id, "developer", "development", 0);
    assert!(
        log.contains("feedback 05-review.md: review_verdict: APPROVE")
            && log.contains("feedback 10-staging-report.md: staging_status: FAILED"),
        "{log}"
    );
    assert_eq!(w.stage(id), "review", "{log}");
    assert_eq!(w.artefact(&key, "05-review.md"), None);
    assert_eq!(
        w.history(&key),
        vec![pair(
            &format!("05-review.round-1.{WHEN}.md"),
            "review_verdict: APPROVE"
        )]
    );
    assert!(
        log.contains(&format!(
            "task {key}: 05-review.md of an earlier visit moved aside to history/05-review.round-1.{WHEN}.md before it enters review"
        )),
        "{log}"
    );

    // Visit 2: the reviewer stops before writing. The gate waits (visit 1's APPROVE
    // would have sent unreviewed code to staging), and reconcile re-runs the reviewer.
    let log = w.run_job(id, "reviewer", "review", 1);
    assert_eq!(w.stage(id), "review", "{log}");
    let r = w.reconcile();
    assert_eq!(
        (&r["counts"]["advanced"], &r["counts"]["rerun"]),
        (&Value::from(0), &Value::from(1)),
        "{r:#}"
    );
    assert_eq!(w.stage(id), "review");
    // The re-run asks for changes: back to development, with visit 2's verdict.
    w.env.set("TEST_REVIEW", "REQUEST_CHANGES");
    w.run_job(id, "reviewer", "review", 0);
    assert_eq!(w.stage(id), "development");
    w.env.unset("TEST_REVIEW");
    let retries = "SELECT developer_retries FROM tasks WHERE id = ?1";
    assert_eq!(w.count(retries, id), 1);
    let log = w.run_job(id, "developer", "development", 0);
    assert!(
        log.contains("feedback 05-review.md: review_verdict: REQUEST_CHANGES"),
        "{log}"
    );
    assert_eq!(w.stage(id), "review", "{log}");

    // Visit 3: stopped again. Visit 2's REQUEST_CHANGES does not roll the task back
    // (nor count a developer retry): the gate waits for this visit's verdict.
    w.run_job(id, "reviewer", "review", 1);
    assert_eq!(w.stage(id), "review");
    assert_eq!(w.count(retries, id), 1);
    // Both earlier verdicts are kept, the second (same round, same second) under a
    // name of its own.
    assert_eq!(
        w.history(&key),
        vec![
            pair(
                &format!("05-review.round-1.{WHEN}.2.md"),
                "review_verdict: REQUEST_CHANGES"
            ),
            pair(
                &format!("05-review.round-1.{WHEN}.md"),
                "review_verdict: APPROVE"
            ),
        ]
    );
}

#[test]
fn round_2_gates_never_read_round_1_reports_and_its_developer_still_does() {
    let mut w = world();
    let branch = "shop-2-checkout";
    // Round 1 went all the way to done: its PR is merged, its reports are in place.
    w.gitea()
        .add_pull(REPO, &PullSeed::open(1, branch).merged());
    let (id, key) = w.seed(2, "done", branch, Some(1));
    let round_1 = [
        ("01-analysis.md", "analysis_status: APPROVED"),
        ("05-review.md", "review_verdict: APPROVE"),
        ("10-staging-report.md", "staging_status: SUCCESS"),
        ("12-deploy-report.md", "deploy_status: SUCCESS"),
        ("16-post-deploy-log.md", "post_deploy_verdict: DEGRADED"),
    ];
    for (file, line) in round_1 {
        w.env
            .artefact(&key, file, &format!("---\n{line}\n---\nround 1\n"));
    }
    w.env
        .run(&[
            "task",
            "move",
            &key,
            "--to",
            "development",
            "--reason",
            "production degraded",
        ])
        .expect(0);
    assert_eq!(w.count("SELECT round FROM tasks WHERE id = ?1", id), 2);
    assert_eq!(w.history(&key), vec![], "nothing set aside at development");

    // Round 2's developer reads every round 1 report; entering review sets aside only
    // the review.
    w.developer_opens_pr(2, branch);
    let log = w.run_job(id, "developer", "development", 0);
    for (file, line) in &round_1[1..4] {
        assert!(log.contains(&format!("feedback {file}: {line}")), "{log}");
    }
    assert_eq!(w.stage(id), "review", "{log}");
    let review = pair(
        &format!("05-review.round-2.{WHEN}.md"),
        "review_verdict: APPROVE",
    );
    assert_eq!(w.history(&key), vec![review.clone()]);

    // The reviewer stops before writing: round 1's APPROVE is not read; its re-run
    // approves, and entering deploy-staging sets round 1's staging report aside.
    w.run_job(id, "reviewer", "review", 1);
    assert_eq!(w.stage(id), "review");
    assert_eq!(w.reconcile()["counts"]["rerun"], 1);
    w.env.set("TEST_REVIEW", "APPROVE");
    w.run_job(id, "reviewer", "review", 0);
    w.env.unset("TEST_REVIEW");
    assert_eq!(w.stage(id), "deploy-staging");
    let staging = pair(
        &format!("10-staging-report.round-2.{WHEN}.md"),
        "staging_status: SUCCESS",
    );
    assert_eq!(w.history(&key), vec![review.clone(), staging.clone()]);

    // The deployer stops before staging-check: the gate finds no report of this visit.
    w.run_job(id, "deployer", "deploy-staging", 1);
    assert_eq!(w.stage(id), "deploy-staging");
    let t = w.dry_run(&key);
    assert_eq!(t["action"], "rerun", "{t:#}");
    assert!(
        t["because"]
            .as_str()
            .unwrap()
            .contains("check_staging_succeeded: 10-staging-report.md: missing"),
        "{t:#}"
    );

    // An operator sends it on to deploy (any move sets aside): round 1's deploy report
    // goes too. The merge guard merges round 2's PR, and the deployer stops before its
    // report: round 1's SUCCESS would have said done with production not deployed.
    w.env
        .run(&[
            "task",
            "move",
            &key,
            "--to",
            "deploy",
            "--reason",
            "staged by hand",
        ])
        .expect(0);
    let deploy = pair(
        &format!("12-deploy-report.round-2.{WHEN}.md"),
        "deploy_status: SUCCESS",
    );
    assert_eq!(w.history(&key), vec![review, staging, deploy]);
    w.gitea().merge_for_test(REPO, 2);
    w.run_job(id, "deployer", "deploy", 1);
    assert_eq!(w.stage(id), "deploy");
    let r = w.reconcile();
    assert_eq!(
        (&r["counts"]["advanced"], &r["counts"]["rerun"]),
        (&Value::from(0), &Value::from(1)),
        "{r:#}"
    );
    // The re-run reports: done.
    w.env.set("TEST_DEPLOY", "SUCCESS");
    w.run_job(id, "deployer", "deploy", 0);
    assert_eq!(w.stage(id), "done");
    // The analysis and orch's post-deploy log were never set aside.
    assert!(w.artefact(&key, "01-analysis.md").is_some());
    assert!(w.artefact(&key, "16-post-deploy-log.md").is_some());
}

#[test]
fn a_move_killed_after_the_set_aside_is_made_once_by_the_next_pass() {
    let w = world();
    let branch = "shop-3-checkout";
    w.developer_opens_pr(3, branch);
    let (id, key) = w.seed(3, "review", branch, Some(3));
    // Back at review after staging failed once: that FAILED report is still there,
    // and this visit's reviewer approved (its job ended).
    w.env.artefact(
        &key,
        "10-staging-report.md",
        "---\nstaging_status: FAILED\n---\nC1 failed\n",
    );
    w.env
        .artefact(&key, "05-review.md", "---\nreview_verdict: APPROVE\n---\n");
    w.env
        .db()
        .execute(
            "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at, finished_at, exit_code)
             VALUES (?1, 'reviewer', 'review', 'succeeded', 1, 0, 0, 0)",
            [id],
        )
        .unwrap();

    // Killed between the set-aside and the move's commit: the task has not moved.
    let out = w
        .env
        .command(&["reconcile"])
        .env("ORCH_CRASH_AT", "artefact-set-aside")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.stage(id), "review");
    assert_eq!(
        w.count(
            "SELECT count(*) FROM jobs WHERE task_id = ?1 AND stage = 'deploy-staging'",
            id
        ),
        0
    );
    let staging = pair(
        &format!("10-staging-report.round-1.{WHEN}.md"),
        "staging_status: FAILED",
    );
    assert_eq!(w.history(&key), vec![staging.clone()]);

    // The next pass makes the move once; nothing more is set aside.
    let r = w.reconcile();
    assert_eq!(r["counts"]["advanced"], 1, "{r:#}");
    assert_eq!(w.stage(id), "deploy-staging");
    assert_eq!(
        w.count(
            "SELECT count(*) FROM stage_events WHERE task_id = ?1 AND to_stage = 'deploy-staging'",
            id
        ),
        1
    );
    assert_eq!(
        w.count(
            "SELECT count(*) FROM jobs WHERE task_id = ?1 AND stage = 'deploy-staging'",
            id
        ),
        1
    );
    assert_eq!(w.history(&key), vec![staging]);
    assert!(w.artefact(&key, "05-review.md").is_some(), "kept");
    // The old FAILED report is not read: a deployer that stops before staging-check
    // leaves the gate waiting for this visit's, where it would have rolled back.
    w.run_job(id, "deployer", "deploy-staging", 1);
    assert_eq!(w.stage(id), "deploy-staging");
    let t = w.dry_run(&key);
    assert_eq!(t["action"], "rerun", "{t:#}");
}

#[test]
fn a_set_aside_that_fails_refuses_the_move_until_it_can_be_made() {
    let w = world();
    let branch = "shop-4-checkout";
    w.developer_opens_pr(4, branch);
    let (id, key) = w.seed(4, "development", branch, Some(4));
    w.env
        .artefact(&key, "05-review.md", "---\nreview_verdict: APPROVE\n---\n");
    // A file where history/ must go: the earlier verdict cannot be moved aside.
    w.env.artefact(&key, "history", "in the way\n");
    let events = "SELECT count(*) FROM stage_events WHERE task_id = ?1";
    let seeded = w.count(events, id);

    // The operator's move fails (exit 2) and changes nothing.
    let run: Run = w.env.run(&[
        "task", "move", &key, "--to", "review", "--reason", "by hand",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "task {key} cannot enter review: moving aside the 05-review.md of an earlier visit"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(w.stage(id), "development");
    assert_eq!(w.count(events, id), seeded, "no event");
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE task_id = ?1", id),
        0,
        "no reviewer job"
    );
    assert!(w.artefact(&key, "05-review.md").is_some());

    // The gate's move fails the same way, and every pass decides it again.
    w.env
        .db()
        .execute(
            "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at, finished_at, exit_code)
             VALUES (?1, 'developer', 'development', 'succeeded', 1, 0, 0, 0)",
            [id],
        )
        .unwrap();
    let r = w.reconcile();
    assert_eq!(r["counts"]["advanced"], 0, "{r:#}");
    assert_eq!(w.stage(id), "development");
    std::fs::remove_file(w.env.path(&format!("artefacts/{key}/history"))).unwrap();
    let r = w.reconcile();
    assert_eq!(r["counts"]["advanced"], 1, "{r:#}");
    assert_eq!(w.stage(id), "review");
    assert_eq!(w.artefact(&key, "05-review.md"), None);
    assert_eq!(
        w.history(&key),
        vec![pair(
            &format!("05-review.round-1.{WHEN}.md"),
            "review_verdict: APPROVE"
        )]
    );
}

#[test]
fn every_rollback_writes_numbered_feedback_that_the_next_developer_reads() {
    let mut w = world();
    // The first round's developer is handed none.
    let (first, _) = w.seed(9, "development", "shop-9-checkout", None);
    let log = w.run_job(first, "developer", "development", 0);
    assert!(log.contains("feedback env=unset arg=\n"), "{log}");

    // Review asks for changes: feedback 1 carries the review.
    let branch = "shop-5-checkout";
    w.developer_opens_pr(5, branch);
    let (id, key) = w.seed(5, "review", branch, Some(5));
    w.env.set("TEST_REVIEW", "REQUEST_CHANGES");
    w.run_job(id, "reviewer", "review", 0);
    assert_eq!(w.stage(id), "development");
    let one = w.artefact(&key, "feedback-1.md").expect("feedback 1");
    // Readable by the agent's group (a developer running as ORCH_AGENT_USER), whatever
    // orch's umask; nobody else.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(w.env.path(&format!("artefacts/{key}/feedback-1.md")))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o640, "{mode:o}");
    assert!(
        one.starts_with(
            "---\nfeedback: 1\nkind: review-changes\nround: 1\nevidence_file: 05-review.md\n---\n# Feedback 1 for SHOP-5: the review requested changes\n"
        ) && one.contains("by run-job at ")
            && one.contains(": check_review_requests_changes\n")
            && one.ends_with("---\nreview_verdict: REQUEST_CHANGES\n---\n"),
        "{one}"
    );
    w.developer_sees(id, &key, 1, "review-changes");
    assert_eq!(w.stage(id), "review");

    // Staging fails: feedback 2 carries the staging report; the developer gets the newest.
    w.env.set("TEST_REVIEW", "APPROVE");
    w.run_job(id, "reviewer", "review", 0);
    w.env.unset("TEST_REVIEW").set("TEST_STAGING", "FAILED");
    w.run_job(id, "deployer", "deploy-staging", 0);
    w.env.unset("TEST_STAGING");
    assert_eq!(w.stage(id), "development");
    let two = w.artefact(&key, "feedback-2.md").expect("feedback 2");
    assert!(
        two.contains("kind: staging-failed\n")
            && two.contains("evidence_file: 10-staging-report.md\n")
            && two.ends_with("staging_status: FAILED\n---\n"),
        "{two}"
    );
    // A pass that finds the rollback made writes nothing more.
    w.reconcile();
    assert_eq!(w.feedback_files(&key), ["feedback-1.md", "feedback-2.md"]);
    // An agent plants a higher number in the folder it can write: the developer is
    // still handed the file the recorded rollback wrote.
    std::fs::write(
        w.env.path(&format!("artefacts/{key}/feedback-999.md")),
        "---\nfeedback: 999\nkind: forged\n---\n",
    )
    .unwrap();
    w.developer_sees(id, &key, 2, "staging-failed");
    std::fs::remove_file(w.env.path(&format!("artefacts/{key}/feedback-999.md"))).unwrap();

    // The production deploy fails before the merge: back in the same round.
    let branch = "shop-6-checkout";
    w.developer_opens_pr(6, branch);
    let (id, key) = w.seed(6, "deploy", branch, Some(6));
    w.env.set("TEST_DEPLOY", "FAILED");
    w.run_job(id, "deployer", "deploy", 0);
    w.env.unset("TEST_DEPLOY");
    assert_eq!(w.stage(id), "development");
    let deploy = w.artefact(&key, "feedback-1.md").expect("deploy feedback");
    assert!(
        deploy.contains("kind: deploy-failed\n")
            && deploy.contains(": check_deploy_failed\n")
            && deploy.ends_with("deploy_status: FAILED\n---\n"),
        "{deploy}"
    );
    w.developer_sees(id, &key, 1, "deploy-failed");
}

#[test]
fn a_rollback_killed_after_its_feedback_is_made_once_with_one_file() {
    let w = world();
    let branch = "shop-7-checkout";
    w.gitea()
        .add_pull(REPO, &PullSeed::open(7, branch).merged());
    let (id, key) = w.seed(7, "done", branch, Some(7));
    let samples = "---\npost_deploy_verdict: DEGRADED\n---\n| at | health |\n| 03:01 | 503 |\n| 03:02 | 503 |\n| 03:03 | 503 |\n";
    w.env.artefact(&key, "16-post-deploy-log.md", samples);
    let degrade = [
        "task",
        "move",
        &key,
        "--to",
        "development",
        "--reason",
        "post-deploy DEGRADED",
    ];
    let out = w
        .env
        .command(&degrade)
        .env("ORCH_CRASH_AT", "feedback-written")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.stage(id), "done", "killed before the move's commit");
    assert_eq!(w.feedback_files(&key), ["feedback-1.md"]);
    let before = w.artefact(&key, "feedback-1.md").unwrap();

    // The retry makes the move once and rewrites the same file, no second one.
    w.env.run(&degrade).expect(0);
    assert_eq!(w.stage(id), "development");
    assert_eq!(w.count("SELECT round FROM tasks WHERE id = ?1", id), 2);
    assert_eq!(w.feedback_files(&key), ["feedback-1.md"]);
    let after = w.artefact(&key, "feedback-1.md").unwrap();
    assert_eq!(after, before);
    assert!(
        after.contains("kind: post-deploy-degraded\nround: 1\n")
            && after.contains("by operator at ")
            && after.ends_with(samples),
        "{after}"
    );
    // Replayed once the task is at development: refused, nothing written.
    assert_ne!(w.env.run(&degrade).code, 0);
    assert_eq!(w.feedback_files(&key), ["feedback-1.md"]);
    w.developer_opens_pr(8, branch);
    w.developer_sees(id, &key, 1, "post-deploy-degraded");
}
