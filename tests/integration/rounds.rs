//! Rounds (SPEC §3): a move back to development after the task's PR was merged starts a
//! new round (round + 1, no PR, no validated revision, a fresh branch from the default
//! branch), and a closed or merged PR is never the task's current PR. The real binary
//! against a real SQLite file and the loopback Gitea and production stand-ins; tasks are
//! seeded through the library in the state the pipeline leaves them, jobs run through the real
//! `run-job` supervisor (the job claimed by SQL, as `dispatch` would).

use orch::standin::gitea::{fake_sha, CompareSupport, GiteaStandin, PullSeed};
use orch::standin::prod::Prod;

use crate::common::{seed_task, Project, Run, SeedTask, Standin, TestEnv, GITEA_TOKEN, NOW_UNIX};

const REPO: &str = "acme/shop";

struct World {
    env: TestEnv,
}

/// One ordinary project (`shop`) with a production health URL and a rollback command,
/// stub agents that succeed, default settings apart from URLs and secrets.
fn world() -> World {
    let shop = Project::shop()
        .default_branch("main")
        .with("health_url: $PROD_URL/health\nrollback: [/bin/true]");
    let env = TestEnv::builder()
        .project(shop)
        .standins(&[Standin::Gitea, Standin::Prod])
        .set("ORCH_HTTP_TIMEOUT_S", "5")
        .build();
    World { env }
}

/// A task row as the pipeline leaves it: round 1, its branch confirmed, its PR and
/// validated revision recorded.
struct Seed<'a> {
    n: u32,
    stage: &'a str,
    branch: &'a str,
    pr: Option<i64>,
}

/// A task's round facts as stored.
#[derive(Debug, PartialEq, Eq)]
struct Round {
    stage: String,
    round: u32,
    branch: String,
    pr: Option<i64>,
    validated: Option<String>,
    branch_ready_at: Option<i64>,
}

impl World {
    /// `orch task move KEY --to development --reason REASON` and `extra`.
    fn move_back(&self, key: &str, reason: &str, extra: &[&str]) -> Run {
        let mut args = vec![
            "task",
            "move",
            key,
            "--to",
            "development",
            "--reason",
            reason,
        ];
        args.extend_from_slice(extra);
        self.env.run(&args)
    }

    fn gitea(&self) -> &GiteaStandin {
        self.env.gitea()
    }

    fn prod(&self) -> &Prod {
        self.env.prod()
    }

    fn seed(&self, s: &Seed<'_>) -> (i64, String) {
        let mut task = SeedTask::new(
            &Project::shop(),
            s.n.into(),
            s.stage.parse().expect("a stage"),
        )
        .work_item(&format!("1c2d3e4f-0000-4000-8000-{:012}", s.n))
        .title("Checkout")
        .branch(s.branch)
        .validated("validated-sha")
        .at(NOW_UNIX - 3600)
        .branch_ready();
        task.pr = s.pr;
        let key = task.key.clone();
        (seed_task(&self.env, &task), key)
    }

    fn round(&self, key: &str) -> Round {
        self.env
            .db()
            .query_row(
                "SELECT stage, round, branch, pr_number, validated_revision, branch_ready_at
                 FROM tasks WHERE key = ?1",
                [key],
                |r| {
                    Ok(Round {
                        stage: r.get(0)?,
                        round: r.get(1)?,
                        branch: r.get(2)?,
                        pr: r.get(3)?,
                        validated: r.get(4)?,
                        branch_ready_at: r.get(5)?,
                    })
                },
            )
            .unwrap()
    }

    /// The last stage event of a task: (from, to, actor, reason).
    fn last_event(&self, task: i64) -> (String, String, String, String) {
        self.env
            .db()
            .query_row(
                "SELECT from_stage, to_stage, actor, reason FROM stage_events
                 WHERE task_id = ?1 ORDER BY id DESC LIMIT 1",
                [task],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap()
    }

    /// Runs the task's live job of `agent` through the real supervisor (claimed by SQL,
    /// as dispatch would), seeding one when none is live; returns run-job's stderr.
    fn run_job(&self, task: i64, agent: &str, stage: &str) -> String {
        let job = crate::common::seed::claim_live_job(&self.env, task, agent, stage);
        self.env
            .run(&["run-job", &job.to_string()])
            .expect(0)
            .stderr
    }

    /// The developer of the new round: pushes to `branch`, opens PR `n`, CI goes green.
    fn developer_opens_pr(&self, n: u64, branch: &str) {
        let sha = fake_sha(&format!("round work on {branch}"));
        self.gitea().push(REPO, branch, &sha);
        self.gitea().add_pull(REPO, &PullSeed::open(n, branch));
        self.gitea().add_status(REPO, &sha, "ci/build", "success");
    }

    fn main_sha(&self) -> String {
        self.gitea().branch(REPO, "main").unwrap()
    }
}

/// Returns an RFC 3339 instant `secs` after the pinned `NOW`.
fn at(secs: i64) -> String {
    jiff::Timestamp::from_second(NOW_UNIX + secs)
        .unwrap()
        .to_string()
}

/// Seeds a task at deploy whose PR #1 is merged, moves it to done (arming post-deploy
/// on default settings), and lets a tick see production DEGRADED and roll back.
fn deployed_then_rolled_back(w: &mut World, n: u32, branch: &str) -> (i64, String) {
    w.gitea()
        .add_pull(REPO, &PullSeed::open(1, branch).merged());
    let (id, key) = w.seed(&Seed {
        n,
        stage: "deploy",
        branch,
        pr: Some(1),
    });
    w.env
        .run(&["task", "move", &key, "--to", "done", "--reason", "deployed"])
        .expect(0);
    w.prod().set_health(503);
    w.env
        .set("ORCH_POST_DEPLOY_FAIL_THRESHOLD", "1")
        .set("ORCH_NOW", &at(60));
    let tick = w.env.run(&["post-deploy-tick", "--json"]).expect(0);
    let r = &tick.json()[0];
    assert_eq!(r["decision"], "ROLLBACK", "{}", tick.stderr);
    assert!(
        r["action"]
            .as_str()
            .unwrap()
            .contains("task reopened to development (round 2)"),
        "{r}"
    );
    (id, key)
}

#[test]
fn a_post_deploy_rollback_starts_round_2_on_the_deleted_branch_and_its_new_pr_advances() {
    let mut w = world();
    // The merge deleted the branch: it is not on Gitea any more.
    let (id, key) = deployed_then_rolled_back(&mut w, 1, "shop-1-checkout");
    assert_eq!(
        w.round(&key),
        Round {
            stage: "development".into(),
            round: 2,
            branch: "shop-1-checkout".into(),
            pr: None,
            validated: None,
            branch_ready_at: Some(NOW_UNIX + 60),
        }
    );
    // Recreated under the same name from the current default branch.
    assert_eq!(
        w.gitea().branch(REPO, "shop-1-checkout"),
        Some(w.main_sha())
    );
    let (from, to, actor, reason) = w.last_event(id);
    assert_eq!((from.as_str(), to.as_str()), ("done", "development"));
    assert_eq!(actor, "post-deploy");
    assert!(reason.ends_with("(reopened: round 2)"), "{reason}");
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM jobs WHERE agent = 'developer' AND status = 'queued'"),
        1
    );
    // Round 2: the developer opens PR #2 for the branch, CI is green; the developer
    // job's gate records #2 and advances.
    w.developer_opens_pr(2, "shop-1-checkout");
    let stderr = w.run_job(id, "developer", "development");
    let r = w.round(&key);
    assert_eq!(
        (r.stage.as_str(), r.pr, r.round),
        ("review", Some(2), 2),
        "{stderr}"
    );
    assert!(
        stderr.contains("PR #2 found for branch shop-1-checkout"),
        "{stderr}"
    );
    let (_, to, actor, _) = w.last_event(id);
    assert_eq!((to.as_str(), actor.as_str()), ("review", "run-job"));
}

#[test]
fn a_post_deploy_rollback_takes_a_round_name_when_the_old_branch_survived_the_merge() {
    let mut w = world();
    // The merge kept the branch (no delete after merge): it still holds round 1's work.
    let old = fake_sha("round 1 work");
    w.gitea().push(REPO, "shop-2-checkout", &old);
    let (id, key) = deployed_then_rolled_back(&mut w, 2, "shop-2-checkout");
    let r = w.round(&key);
    assert_eq!(
        (r.round, r.branch.as_str(), r.pr, r.branch_ready_at),
        (2, "shop-2-checkout--r2", None, Some(NOW_UNIX + 60))
    );
    assert_eq!(
        w.gitea().branch(REPO, "shop-2-checkout--r2"),
        Some(w.main_sha())
    );
    assert_eq!(
        w.gitea().branch(REPO, "shop-2-checkout"),
        Some(old),
        "untouched"
    );
    // A PR still open on the old branch is not this round's; the one on the new
    // branch is, found by reconcile.
    w.gitea()
        .add_pull(REPO, &PullSeed::open(3, "shop-2-checkout"));
    w.developer_opens_pr(4, "shop-2-checkout--r2");
    w.env
        .db()
        .execute(
            "UPDATE jobs SET status = 'succeeded', exit_code = 0, finished_at = ?2
             WHERE task_id = ?1",
            orch::sql_params![id, NOW_UNIX + 60],
        )
        .unwrap();
    w.env
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", "false")
        .set("ORCH_RECONCILE_REPLAY_ENABLED", "false")
        .set("ORCH_NOW", &at(120));
    let run = w.env.run(&["reconcile"]).expect(0);
    let r = w.round(&key);
    assert_eq!(
        (r.stage.as_str(), r.pr),
        ("review", Some(4)),
        "{}",
        run.stderr
    );
}

#[test]
fn a_reopen_whose_branch_cannot_be_made_still_moves_and_reconcile_completes_it() {
    let mut w = world();
    for n in [3u64, 4] {
        let branch = format!("shop-{n}-checkout");
        w.gitea()
            .add_pull(REPO, &PullSeed::open(n, &branch).merged());
    }
    let (_, unreachable) = w.seed(&Seed {
        n: 3,
        stage: "done",
        branch: "shop-3-checkout",
        pr: Some(3),
    });
    let (_, unconfigured) = w.seed(&Seed {
        n: 4,
        stage: "done",
        branch: "shop-4-checkout",
        pr: Some(4),
    });
    // Gitea unreachable (nothing listens on the port): the move stands, the branch is
    // left unconfirmed for reconcile.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    w.env.set("ORCH_GITEA_URL", &dead);
    let run = w.move_back(&unreachable, "bad", &[]).expect(0);
    run.stderr_has("reconcile completes it");
    // Gitea not configured at all: the same.
    w.env.unset("ORCH_GITEA_URL").unset("ORCH_GITEA_TOKEN");
    let run = w.move_back(&unconfigured, "bad", &[]).expect(0);
    assert!(
        run.stderr.contains("ORCH_GITEA_URL is unset")
            && run.stderr.contains("reconcile completes it"),
        "{}",
        run.stderr
    );
    for (key, branch) in [
        (&unreachable, "shop-3-checkout"),
        (&unconfigured, "shop-4-checkout"),
    ] {
        assert_eq!(
            w.round(key),
            Round {
                stage: "development".into(),
                round: 2,
                branch: branch.into(),
                pr: None,
                validated: None,
                branch_ready_at: None,
            }
        );
        assert_eq!(w.gitea().branch(REPO, branch), None, "not made");
    }
    // Gitea is back; meanwhile someone pushed SHOP-4's old branch again, so it exists.
    // The next reconcile completes both rounds' branches through the same branch step:
    // the same name where the old branch is gone, the round name where it exists.
    let pushed = fake_sha("pushed again");
    w.gitea().push(REPO, "shop-4-checkout", &pushed);
    let gitea = w.gitea().url().to_string();
    w.env
        .set("ORCH_GITEA_URL", &gitea)
        .set("ORCH_GITEA_TOKEN", GITEA_TOKEN)
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", "false")
        .set("ORCH_RECONCILE_REPLAY_ENABLED", "false")
        .set("ORCH_NOW", &at(300));
    let run = w.env.run(&["reconcile"]).expect(0);
    let r = w.round(&unreachable);
    assert_eq!(
        (r.branch.as_str(), r.branch_ready_at),
        ("shop-3-checkout", Some(NOW_UNIX + 300)),
        "{}",
        run.stderr
    );
    assert_eq!(
        w.gitea().branch(REPO, "shop-3-checkout"),
        Some(w.main_sha())
    );
    let r = w.round(&unconfigured);
    assert_eq!(
        (r.branch.as_str(), r.branch_ready_at),
        ("shop-4-checkout--r2", Some(NOW_UNIX + 300)),
        "{}",
        run.stderr
    );
    assert_eq!(
        w.gitea().branch(REPO, "shop-4-checkout--r2"),
        Some(w.main_sha())
    );
    assert_eq!(w.gitea().branch(REPO, "shop-4-checkout"), Some(pushed));
}

/// Gitea 1.22.x / Forgejo v8 refuse compare by SHA (and older versions have no
/// compare): the deploy gate's merged fact still comes from the PR's commit list, so a
/// failed deploy of a PR already contained in its base starts a new round.
#[test]
fn a_contained_pr_is_known_merged_where_compare_refuses_shas() {
    let w = world();
    w.gitea().set_compare(CompareSupport::BranchesOnly);
    let branch = "shop-11-checkout";
    let head = fake_sha(branch);
    w.gitea().push(REPO, branch, &head);
    w.gitea().add_pull(REPO, &PullSeed::open(11, branch));
    w.gitea().set_ahead(REPO, "main", &head, 0);
    let (id, key) = w.seed(&Seed {
        n: 11,
        stage: "deploy",
        branch,
        pr: Some(11),
    });
    w.env.artefact(
        &key,
        "12-deploy-report.md",
        "---\ndeploy_status: FAILED\n---\nthe release did not start\n",
    );
    let stderr = w.run_job(id, "deployer", "deploy");
    let r = w.round(&key);
    assert_eq!((r.stage.as_str(), r.round), ("development", 2), "{stderr}");
    assert_eq!(w.gitea().count(Some("GET"), REPO, "pulls/11/commits"), 1);
}

#[test]
fn a_failed_deploy_reopens_only_after_the_merge() {
    let w = world();
    let report = "---\ndeploy_status: FAILED\n---\nthe release did not start\n";
    // (n, PR #, how the PR stands, new round?)
    let cases: &[(u32, u64, &str, bool)] = &[
        (10, 10, "merged", true),
        (11, 11, "contained", true),
        (12, 12, "open", false),
    ];
    for (n, pr, how, new_round) in cases {
        let branch = format!("shop-{n}-checkout");
        let head = fake_sha(&branch);
        w.gitea().push(REPO, &branch, &head);
        match *how {
            "merged" => w
                .gitea()
                .add_pull(REPO, &PullSeed::open(*pr, &branch).merged()),
            _ => w.gitea().add_pull(REPO, &PullSeed::open(*pr, &branch)),
        };
        w.gitea()
            .set_ahead(REPO, "main", &head, u64::from(*how != "contained"));
        let (id, key) = w.seed(&Seed {
            n: *n,
            stage: "deploy",
            branch: &branch,
            pr: Some(i64::try_from(*pr).unwrap()),
        });
        w.env.artefact(&key, "12-deploy-report.md", report);
        let stderr = w.run_job(id, "deployer", "deploy");
        let r = w.round(&key);
        assert_eq!(r.stage, "development", "{how}: {stderr}");
        let (_, _, actor, reason) = w.last_event(id);
        assert_eq!(actor, "run-job");
        if *new_round {
            assert_eq!((r.round, r.pr, r.validated), (2, None, None), "{how}");
            assert!(reason.ends_with("(reopened: round 2)"), "{how}: {reason}");
            // The old branch still exists: the round takes its round name.
            assert_eq!(r.branch, format!("{branch}--r2"), "{how}");
            assert_eq!(r.branch_ready_at, Some(NOW_UNIX), "{how}");
            assert_eq!(
                w.gitea().branch(REPO, &r.branch),
                Some(w.main_sha()),
                "{how}"
            );
        } else {
            assert_eq!(
                (r.round, r.pr, r.validated.as_deref(), r.branch.as_str()),
                (
                    1,
                    Some(i64::try_from(*pr).unwrap()),
                    Some("validated-sha"),
                    branch.as_str()
                ),
                "{how}"
            );
            assert!(!reason.contains("reopened"), "{how}: {reason}");
        }
    }
    // An operator's move after a merge reopens too (orch reads the merge from Gitea).
    let branch = "shop-13-checkout";
    w.gitea()
        .add_pull(REPO, &PullSeed::open(13, branch).merged());
    let (_, key) = w.seed(&Seed {
        n: 13,
        stage: "deploy",
        branch,
        pr: Some(13),
    });
    w.move_back(&key, "redo", &[]).expect(0);
    let r = w.round(&key);
    assert_eq!((r.round, r.pr, r.branch.as_str()), (2, None, branch));
    assert_eq!(w.gitea().branch(REPO, branch), Some(w.main_sha()));
}

#[test]
fn review_and_staging_rollbacks_keep_the_round() {
    let w = world();
    let branch = "shop-20-checkout";
    w.gitea().push(REPO, branch, &fake_sha(branch));
    w.gitea().add_pull(REPO, &PullSeed::open(20, branch));
    let (id, key) = w.seed(&Seed {
        n: 20,
        stage: "review",
        branch,
        pr: Some(20),
    });
    w.env.artefact(
        &key,
        "05-review.md",
        "---\nreview_verdict: REQUEST_CHANGES\n---\nplease fix\n",
    );
    w.run_job(id, "reviewer", "review");
    let r = w.round(&key);
    assert_eq!(
        (r.stage.as_str(), r.round, r.pr, r.branch.as_str()),
        ("development", 1, Some(20), branch)
    );
    let db = w.env.db();
    db.execute(
        "UPDATE tasks SET stage = 'deploy-staging' WHERE id = ?1",
        [id],
    )
    .unwrap();
    db.execute(
        "UPDATE jobs SET status = 'cancelled' WHERE task_id = ?1",
        [id],
    )
    .unwrap();
    w.env.artefact(
        &key,
        "10-staging-report.md",
        "---\nstaging_status: FAILED\n---\nC1 failed\n",
    );
    w.run_job(id, "deployer", "deploy-staging");
    let r = w.round(&key);
    assert_eq!(
        (r.stage.as_str(), r.round, r.pr, r.validated.as_deref()),
        ("development", 1, Some(20), Some("validated-sha"))
    );
    let (from, _, _, reason) = w.last_event(id);
    assert_eq!(from, "deploy-staging");
    assert!(!reason.contains("reopened"), "{reason}");
}

#[test]
fn a_closed_or_merged_recorded_pr_is_replaced_by_the_open_pr_of_the_branch() {
    let mut w = world();
    w.env
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", "false")
        .set("ORCH_RECONCILE_REPLAY_ENABLED", "false");
    // At development, the recorded PR #1 is merged (a task reopened by an older orch,
    // or whose merge could not be told): with no open PR the gate says there is none,
    // never "PR #1 is already merged".
    let branch = "shop-30-checkout";
    w.gitea()
        .add_pull(REPO, &PullSeed::open(1, branch).merged());
    let (id, key) = w.seed(&Seed {
        n: 30,
        stage: "development",
        branch,
        pr: Some(1),
    });
    w.env
        .db()
        .execute(
            "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at, finished_at, exit_code)
             VALUES (?1, 'developer', 'development', 'succeeded', 1, 0, 0, 0)",
            [id],
        )
        .unwrap();
    let run = w.env.run(&["reconcile", "--dry-run", "--json"]).expect(0);
    let text = run.stdout.clone();
    assert!(
        text.contains("no pull request for the task branch"),
        "{text}"
    );
    assert!(!text.contains("already merged"), "{text}");
    // The developer opens PR #2 for the branch with green CI: recorded, advanced.
    w.developer_opens_pr(2, branch);
    let run = w.env.run(&["reconcile"]).expect(0);
    let r = w.round(&key);
    assert_eq!(
        (r.stage.as_str(), r.pr),
        ("review", Some(2)),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("PR #2 found for branch shop-30-checkout (replaces #1, which is closed)"),
        "{}",
        run.stderr
    );
    // At deploy-staging, a PR closed without merge is replaced the same way.
    let branch = "shop-31-checkout";
    w.gitea()
        .add_pull(REPO, &PullSeed::open(5, branch).closed());
    let (_, key) = w.seed(&Seed {
        n: 31,
        stage: "deploy-staging",
        branch,
        pr: Some(5),
    });
    w.developer_opens_pr(6, branch);
    w.env.run(&["reconcile"]).expect(0);
    assert_eq!(w.round(&key).pr, Some(6));
    // At deploy, the merged PR stays the task's PR: that is how deploy -> done passes.
    let branch = "shop-32-checkout";
    w.gitea()
        .add_pull(REPO, &PullSeed::open(7, branch).merged());
    let (id, key) = w.seed(&Seed {
        n: 32,
        stage: "deploy",
        branch,
        pr: Some(7),
    });
    w.developer_opens_pr(8, branch);
    w.env.artefact(
        &key,
        "12-deploy-report.md",
        "---\ndeploy_status: SUCCESS\n---\n",
    );
    w.run_job(id, "deployer", "deploy");
    let r = w.round(&key);
    assert_eq!((r.stage.as_str(), r.pr, r.round), ("done", Some(7), 1));
}

#[test]
fn a_round_branch_an_interrupted_step_already_made_is_taken_as_this_rounds() {
    let w = world();
    // The old branch survived the merge, and an earlier try of this round's branch step
    // created the round name before it died: 409 on both is success, no third name.
    let branch = "shop-40-checkout";
    w.gitea().push(REPO, branch, &fake_sha("round 1 work"));
    w.gitea().push(REPO, "shop-40-checkout--r2", &w.main_sha());
    w.gitea()
        .add_pull(REPO, &PullSeed::open(40, branch).merged());
    let (id, key) = w.seed(&Seed {
        n: 40,
        stage: "done",
        branch,
        pr: Some(40),
    });
    let run = w.move_back(&key, "bad", &[]).expect(0);
    let r = w.round(&key);
    assert_eq!(
        (r.round, r.branch.as_str(), r.branch_ready_at),
        (2, "shop-40-checkout--r2", Some(NOW_UNIX)),
        "{}",
        run.stderr
    );
    let (_, _, actor, reason) = w.last_event(id);
    assert_eq!(actor, "operator");
    assert_eq!(reason, "bad (reopened: round 2)");
    assert_eq!(
        w.gitea().count(Some("POST"), REPO, "branches"),
        2,
        "one try per name"
    );
}

#[test]
fn gitea_refusals_never_half_reopen() {
    let w = world();
    // The recorded PR is unknown to Gitea (404): whether it was merged cannot be told,
    // so the operator's deploy rollback is refused, says why and how to proceed.
    let (id, key) = w.seed(&Seed {
        n: 50,
        stage: "deploy",
        branch: "shop-50-checkout",
        pr: Some(99),
    });
    let move_to_dev = |extra: &[&str]| w.move_back(&key, "redo", extra);
    let run = move_to_dev(&[]).expect(1);
    assert!(
        run.stderr.contains(
            "task SHOP-50 not moved: deploy -> development: whether the PR was merged is unknown"
        ) && run.stderr.contains("--round new (PR #99 was merged")
            && run.stderr.contains("--round keep (PR #99 was not merged"),
        "{}",
        run.stderr
    );
    let r = w.round(&key);
    assert_eq!(
        (r.stage.as_str(), r.round, r.pr, r.validated.as_deref()),
        ("deploy", 1, Some(99), Some("validated-sha"))
    );
    // The operator knows it was not merged: they say so, and the round goes on.
    move_to_dev(&["--round", "keep"]).expect(0);
    let r = w.round(&key);
    assert_eq!(
        (r.stage.as_str(), r.round, r.pr, r.validated.as_deref()),
        ("development", 1, Some(99), Some("validated-sha"))
    );
    let (_, _, actor, reason) = w.last_event(id);
    assert_eq!(
        (actor.as_str(), reason.as_str()),
        ("operator", "redo (--round keep)")
    );

    // Gitea refuses the new round's branch (the repository is gone: 404): the reopen
    // stands, the branch is left unconfirmed, nothing is renamed.
    let (id, key) = w.seed(&Seed {
        n: 51,
        stage: "done",
        branch: "shop-51-checkout",
        pr: Some(51),
    });
    w.env
        .db()
        .execute("UPDATE tasks SET repo = 'acme/gone' WHERE id = ?1", [id])
        .unwrap();
    // --round answers only the question deploy -> development asks (done ->
    // development always starts a new round).
    let run = w.move_back(&key, "bad", &["--round", "keep"]).expect(2);
    assert!(
        run.stderr
            .contains("--round applies only to deploy -> development (task SHOP-51 is at done)"),
        "{}",
        run.stderr
    );
    let run = w.move_back(&key, "bad", &[]).expect(0);
    run.stderr_has("reconcile completes it");
    let r = w.round(&key);
    assert_eq!(
        (r.round, r.branch.as_str(), r.pr, r.branch_ready_at),
        (2, "shop-51-checkout", None, None)
    );
}

#[test]
fn a_failed_deploy_waits_while_gitea_cannot_tell_the_merge_then_decides_the_round() {
    let mut w = world();
    w.env
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", "false")
        .set("ORCH_RECONCILE_REPLAY_ENABLED", "false");
    let report = "---\ndeploy_status: FAILED\n---\nthe release did not start\n";
    // SHOP-60's PR was merged before the deploy failed; SHOP-61's was not.
    let mut tasks = Vec::new();
    for (n, merged) in [(60u32, true), (61, false)] {
        let branch = format!("shop-{n}-checkout");
        let head = fake_sha(&branch);
        w.gitea().push(REPO, &branch, &head);
        let seed = PullSeed::open(u64::from(n), &branch);
        w.gitea()
            .add_pull(REPO, &if merged { seed.merged() } else { seed });
        w.gitea().set_ahead(REPO, "main", &head, 1);
        let (id, key) = w.seed(&Seed {
            n,
            stage: "deploy",
            branch: &branch,
            pr: Some(i64::from(n)),
        });
        w.env.artefact(&key, "12-deploy-report.md", report);
        tasks.push((id, key, branch));
    }
    let held = |n: u32| {
        format!(
            "check_merge_known: unknown: deploy_status is FAILED, but whether PR #{n} was \
             merged is unknown (gitea get pull acme/shop#{n}: could not connect"
        )
    };
    let unmoved = |w: &World, key: &str, n: u32| {
        assert_eq!(
            w.round(key),
            Round {
                stage: "deploy".into(),
                round: 1,
                branch: format!("shop-{n}-checkout"),
                pr: Some(i64::from(n)),
                validated: Some("validated-sha".into()),
                branch_ready_at: Some(NOW_UNIX - 3600),
            }
        );
    };
    // Gitea is down (nothing listens on the port).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    w.env.set("ORCH_GITEA_URL", &dead);
    // The deployer's job ends with FAILED: run-job's gate leaves the task at deploy.
    let (id60, key60, _) = &tasks[0];
    let (id61, key61, _) = &tasks[1];
    let stderr = w.run_job(*id60, "deployer", "deploy");
    assert!(
        stderr.contains(&format!("task SHOP-60 waits at deploy: {}", held(60))),
        "{stderr}"
    );
    unmoved(&w, key60, 60);
    // Reconcile passes while Gitea stays down (past ORCH_JOB_MAX_ATTEMPTS): both wait
    // and say why; the deployer is never re-run and nothing is escalated.
    for pass in 1..=4 {
        w.env.set("ORCH_NOW", &at(60 * pass));
        let run = w.env.run(&["reconcile", "--json"]).expect(0);
        for n in [60, 61] {
            assert!(run.stdout.contains(&held(n)), "pass {pass}: {}", run.stdout);
        }
        unmoved(&w, key60, 60);
        unmoved(&w, key61, 61);
    }
    assert_eq!(
        w.env.count(
            "SELECT count(*) FROM jobs WHERE agent = 'deployer' AND attempt = 1
               AND status = 'succeeded'"
        ),
        1
    );
    assert_eq!(w.env.count("SELECT count(*) FROM jobs"), 1, "no job queued");
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM tasks WHERE escalated_at IS NOT NULL"),
        0
    );
    // Gitea is back: the next pass rolls both back, each with the round its merge says.
    let gitea = w.gitea().url().to_string();
    w.env
        .set("ORCH_GITEA_URL", &gitea)
        .set("ORCH_NOW", &at(600));
    let run = w.env.run(&["reconcile"]).expect(0);
    let r = w.round(key60);
    assert_eq!(
        (r.stage.as_str(), r.round, r.pr, r.validated),
        ("development", 2, None, None),
        "{}",
        run.stderr
    );
    // The old branch survived the merge: the round takes its round name.
    assert_eq!(r.branch, "shop-60-checkout--r2");
    assert_eq!(w.gitea().branch(REPO, &r.branch), Some(w.main_sha()));
    let (from, _, actor, reason) = w.last_event(*id60);
    assert_eq!((from.as_str(), actor.as_str()), ("deploy", "reconcile"));
    assert!(reason.ends_with("(reopened: round 2)"), "{reason}");
    let r = w.round(key61);
    assert_eq!(
        (
            r.stage.as_str(),
            r.round,
            r.pr,
            r.validated.as_deref(),
            r.branch.as_str()
        ),
        (
            "development",
            1,
            Some(61),
            Some("validated-sha"),
            "shop-61-checkout"
        ),
        "{}",
        run.stderr
    );
    let (_, _, actor, reason) = w.last_event(*id61);
    assert_eq!(actor, "reconcile");
    assert!(!reason.contains("reopened"), "{reason}");
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM jobs WHERE agent = 'developer' AND status = 'queued'"),
        2
    );
}
