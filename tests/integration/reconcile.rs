//! `orch reconcile`: the real binary against a real SQLite file and the loopback Plane,
//! Gitea and Telegram stand-ins. Tasks are seeded through the library and jobs with SQL (the state a lost
//! event leaves behind); a job "ends" by the test flipping its row, as run-job would.

use orch::core::stage::Stage;
use orch::standin::gitea::{GiteaStandin, PullSeed};
use orch::standin::plane::PlaneStandin;
use orch::standin::server::Reply;
use serde_json::{json, Value};

use crate::common::{
    seed_task, seed_tasks, snapshot, Project, Run, SeedTask, Standin, TestEnv, NOW_UNIX,
    PLANE_STATES,
};

const P1: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";
const P2: &str = "1c2d3e4f-0000-4000-8000-000000000002";
const IN_PROGRESS: &str = PLANE_STATES[0].0;
const APPROVED: &str = PLANE_STATES[1].0;
const BLOCKED: &str = PLANE_STATES[2].0;

struct World {
    env: TestEnv,
}

fn world() -> World {
    let blocked = "states:\n  blocked: { names: [Blocked] }";
    let env = TestEnv::builder()
        .project(Project::orch().self_hosting(false).with(
            "states:\n  approved: { names: [Approved] }\n  blocked: { names: [Blocked, Needs Input] }",
        ))
        .project(Project::shop().with(blocked))
        .project(Project::web().with(blocked))
        .standins(&[Standin::Gitea, Standin::Plane, Standin::Telegram])
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_HTTP_TIMEOUT_S", "5")
        .build();
    World { env }
}

impl World {
    fn plane(&self) -> &PlaneStandin {
        self.env.plane()
    }

    fn gitea(&self) -> &GiteaStandin {
        self.env.gitea()
    }

    /// Seeds a fully started task (its branch confirmed on Gitea); returns its id.
    fn task(&self, project: &str, n: u64, stage: &str, entered: i64, retries: u32) -> i64 {
        let p = self.env.project(project);
        let seed = SeedTask::new(p, n, stage.parse().expect("a stage"))
            .work_item(&item_id(p.plane_project_id, n))
            .at(entered)
            .retries(retries)
            .branch_ready()
            .no_plane_item();
        seed_task(&self.env, &seed)
    }

    /// Seeds a job of a task.
    fn job(&self, task: i64, agent: &str, stage: &str, status: &str, attempt: u32) -> i64 {
        let db = self.env.db();
        db.query_row(
            "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at, exit_code)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, 0) RETURNING id",
            orch::sql_params![task, agent, stage, status, attempt],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    }

    /// Ends every queued job of a task successfully (what run-job does).
    fn finish_jobs(&self, task: i64) {
        self.env
            .db()
            .execute(
                "UPDATE jobs SET status='succeeded', exit_code=0, finished_at=1 WHERE task_id=?1 AND status IN ('queued','running')",
                [task],
            )
            .unwrap();
    }

    fn item(&self, pid: &str, n: u64, state: &str) {
        self.plane()
            .add_work_item(pid, &item_id(pid, n), n, "Work", Some(state));
    }

    fn reconcile(&self, args: &[&str]) -> Run {
        let mut a = vec!["reconcile"];
        a.extend_from_slice(args);
        self.env.run(&a).expect(0)
    }

    fn json(&self) -> Value {
        self.reconcile(&["--json"]).json()
    }

    fn stage(&self, task: i64) -> String {
        self.env
            .db()
            .query_row("SELECT stage FROM tasks WHERE id=?1", [task], |r| r.get(0))
            .unwrap()
    }

    /// Everything a pass could write, except the pass record itself.
    fn snapshot(&self) -> String {
        let db = self.env.db();
        let mut out = String::new();
        for sql in [
            "SELECT id, stage, stage_entered_at, developer_retries, escalated_at, pr_number, updated_at FROM tasks ORDER BY id",
            "SELECT id, task_id, stage, status, attempt FROM jobs ORDER BY id",
            "SELECT id, to_stage FROM stage_events ORDER BY id",
            "SELECT id, dedupe_key FROM notifications ORDER BY id",
            "SELECT id, outcome FROM deliveries ORDER BY id",
            "SELECT project, state_id FROM plane_states ORDER BY 1, 2",
        ] {
            let mut stmt = db.prepare(sql).unwrap();
            let n = stmt.column_count().unwrap();
            let rows = stmt
                .query_map([], |r| {
                    let mut line = Vec::new();
                    for i in 0..n {
                        let v: orch::adapters::db::sql::Value = r.get(i)?;
                        line.push(format!("{v:?}"));
                    }
                    Ok(line.join(","))
                })
                .unwrap();
            for row in rows {
                out.push_str(&row.unwrap());
                out.push('\n');
            }
            out.push_str("--\n");
        }
        out
    }

    fn plane_requests(&self) -> usize {
        self.plane().server().requests().len()
    }

    fn gitea_requests(&self) -> usize {
        self.gitea().server().requests().len()
    }

    /// Plane's answer when throttled (429, `Retry-After: 42`) to the next listing
    /// request of project `pid`.
    fn throttle_listing(&self, pid: &str) {
        self.plane().server().script(
            Some("GET"),
            &format!("/api/v1/workspaces/acme/projects/{pid}/work-items/"),
            Reply::json(
                429,
                &json!({"error_code": 5900, "error_message": "RATE_LIMIT_EXCEEDED"}),
            )
            .with_header("Retry-After", "42"),
            1,
        );
    }
}

fn item_id(pid: &str, n: u64) -> String {
    format!("{}-0000-4000-8000-{:012}", &pid[..8], n)
}

fn review(verdict: &str) -> String {
    format!("---\nreview_verdict: {verdict}\n---\n\n# Review\n")
}

fn verdict_of(report: &Value, key: &str) -> Value {
    report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == key)
        .unwrap_or_else(|| panic!("{key} not in {report:#}"))
        .clone()
}

#[test]
fn the_bounce_escalates_once_and_then_nothing_moves() {
    let w = world();
    let t = w.task("orch", 1, "development", NOW_UNIX - 1_000, 0);
    w.item(P1, 1, IN_PROGRESS);
    w.job(t, "developer", "development", "succeeded", 1);
    w.gitea()
        .add_pull("acme/orch", &PullSeed::open(7, "task/orch-1"));
    let head = w.gitea().pull("acme/orch", 7).unwrap().head_sha;
    w.gitea()
        .add_status("acme/orch", &head, "ci/test", "success");

    for round in 1..=3u32 {
        let r = w.json();
        assert_eq!(r["counts"]["advanced"], 1, "round {round}: {r:#}");
        assert_eq!(w.stage(t), "review", "round {round}");
        // The PR number is recorded the first time it is seen.
        assert_eq!(w.env.count("SELECT pr_number FROM tasks"), 7);
        w.finish_jobs(t);
        w.env
            .artefact("ORCH-1", "05-review.md", &review("REQUEST_CHANGES"));
        let r = w.json();
        assert_eq!(r["counts"]["rolled_back"], 1, "round {round}: {r:#}");
        assert_eq!(w.stage(t), "development");
        assert_eq!(
            w.env.count("SELECT developer_retries FROM tasks"),
            i64::from(round)
        );
        if round < 3 {
            assert_eq!(
                w.env
                    .count("SELECT count(*) FROM tasks WHERE escalated_at IS NOT NULL"),
                0
            );
            w.finish_jobs(t);
        }
    }
    // The third rollback escalated: parked (its queued developer job cancelled),
    // one comment, one notification.
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM tasks WHERE escalated_at IS NOT NULL"),
        1
    );
    assert_eq!(
        w.env.count(
            "SELECT count(*) FROM stage_events WHERE reason LIKE 'check_review_requests_changes%'"
        ),
        3
    );
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM jobs WHERE status IN ('queued','running')"),
        0
    );
    let comments = w.plane().comments(P1, &item_id(P1, 1));
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(comments[0]
        .0
        .as_deref()
        .unwrap()
        .starts_with("orch-escalation-"));
    assert_eq!(w.env.count("SELECT count(*) FROM notifications"), 1);
    assert_eq!(w.env.telegram_messages().len(), 1);

    // Any number of further passes write nothing and send nothing.
    let before = w.snapshot();
    let gitea_before = w.gitea_requests();
    for _ in 0..4 {
        let r = w.json();
        assert_eq!(verdict_of(&r, "ORCH-1")["guard"], "escalated", "{r:#}");
    }
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.gitea_requests(), gitea_before);
    assert_eq!(w.plane().comments(P1, &item_id(P1, 1)).len(), 1);
    assert_eq!(w.plane().count(Some("POST"), ""), 1);
    assert_eq!(w.env.telegram_messages().len(), 1);
    // status shows the escalation and the last pass's counts.
    let s = w.env.run(&["status", "--json"]).expect(0).json();
    assert_eq!(s["escalated_total"], 1, "{s:#}");
}

#[test]
fn each_guard_alone_writes_nothing_and_calls_only_what_it_may() {
    // (name, stage, entered, retries, job, escalated, plane state, allowed plane requests)
    type Case = (
        &'static str,
        &'static str,
        i64,
        u32,
        Option<&'static str>,
        bool,
        &'static str,
        usize,
    );
    let cases: [Case; 6] = [
        ("analysis", "analysis", 0, 0, None, false, IN_PROGRESS, 0),
        ("no-gate", "done", 0, 0, None, false, IN_PROGRESS, 0),
        (
            "job-live",
            "review",
            0,
            0,
            Some("running"),
            false,
            IN_PROGRESS,
            0,
        ),
        (
            "grace",
            "review",
            NOW_UNIX - 10,
            0,
            None,
            false,
            IN_PROGRESS,
            0,
        ),
        ("escalated", "review", 0, 3, None, true, IN_PROGRESS, 0),
        ("blocked", "review", 0, 0, None, false, BLOCKED, 1),
    ];
    for (guard, stage, entered, retries, job, escalated, state, plane_allowed) in cases {
        let mut w = world();
        w.env
            .set("ORCH_RECONCILE_REPLAY_ENABLED", "false")
            .set("ORCH_RECONCILE_GRACE_S", "300");
        let t = w.task("orch", 1, stage, entered, retries);
        w.item(P1, 1, state);
        // A verdict that would advance if the guard did not hold.
        w.env.artefact("ORCH-1", "05-review.md", &review("APPROVE"));
        if let Some(status) = job {
            w.job(t, "reviewer", stage, status, 1);
        }
        if escalated {
            let db = w.env.db();
            db.execute(
                "UPDATE tasks SET escalated_at = 5, escalation_reason = 'limit' WHERE id = ?1",
                [t],
            )
            .unwrap();
            db.execute(
                "INSERT INTO notifications (dedupe_key, kind, task_id, message, created_at) VALUES ('k', 'escalation', ?1, 'm', 5)",
                [t],
            )
            .unwrap();
        }
        let before = w.snapshot();
        let r = w.json();
        assert_eq!(verdict_of(&r, "ORCH-1")["guard"], guard, "{guard}: {r:#}");
        assert_eq!(r["counts"]["skipped"], 1, "{guard}");
        assert_eq!(w.snapshot(), before, "{guard}: a skip writes nothing");
        assert_eq!(w.plane_requests(), plane_allowed, "{guard}: plane requests");
        assert_eq!(w.gitea_requests(), 0, "{guard}: gitea requests");
        assert!(
            w.env.telegram_messages().is_empty(),
            "{guard}: nothing sent"
        );
    }
}

/// Plane failing, slow, or answering what orch did not ask for (a page whose items lack
/// a key `fields=` named, a proxy's login page): the task is skipped as "could not
/// tell", never advanced, and nothing is written.
#[test]
fn plane_failures_and_unknown_states_skip_and_never_advance() {
    for case in ["500", "timeout", "missing-key", "html", "unknown-state"] {
        let mut w = world();
        w.env.set("ORCH_HTTP_TIMEOUT_S", "1");
        let t = w.task("orch", 1, "review", 0, 0);
        w.env.artefact("ORCH-1", "05-review.md", &review("APPROVE"));
        let list = format!("/api/v1/workspaces/acme/projects/{P1}/work-items/");
        match case {
            "500" => {
                w.item(P1, 1, IN_PROGRESS);
                w.plane().server().script(
                    Some("GET"),
                    &list,
                    Reply::json(500, &json!({"error": "boom"})),
                    2,
                );
            }
            "timeout" => {
                w.item(P1, 1, IN_PROGRESS);
                w.plane().server().script(
                    Some("GET"),
                    &list,
                    Reply::json(200, &json!({"results": []}))
                        .delayed(std::time::Duration::from_secs(3)),
                    2,
                );
            }
            "missing-key" => {
                w.item(P1, 1, IN_PROGRESS);
                // The item as a listing with `fields=` shows it, without its `id`.
                let item = json!({"name": "Work", "sequence_id": 1, "project": P1,
                    "state": IN_PROGRESS, "updated_at": "2026-11-25T03:00:00Z",
                    "priority": "none"});
                w.plane().server().script(
                    Some("GET"),
                    &list,
                    Reply::json(
                        200,
                        &json!({"results": [item], "next_cursor": "1000:1:0",
                        "next_page_results": false, "total_results": 1}),
                    ),
                    1,
                );
            }
            "html" => {
                w.item(P1, 1, IN_PROGRESS);
                w.plane().server().script(
                    Some("GET"),
                    &list,
                    Reply::raw(200, "text/html", "<html>sign in</html>"),
                    1,
                );
            }
            _ => w.item(P1, 1, "5a000000-0000-4000-8000-00000000dead"),
        }
        let before = w.snapshot();
        // What a listed page writes, which the snapshot does not hold.
        let page_writes = |w: &World| {
            w.env.count("SELECT count(*) FROM work_item_updates")
                + w.env
                    .count("SELECT count(*) FROM tasks WHERE priority <> 'none'")
        };
        let written_before = page_writes(&w);
        let r = w.json();
        let v = verdict_of(&r, "ORCH-1");
        assert_eq!(v["guard"], "blocked", "{case}: {r:#}");
        let cause = match case {
            "500" => "HTTP 500",
            "timeout" => "timed out",
            "missing-key" => "missing field `id`",
            "html" => "unexpected answer (HTTP 200)",
            _ => "unknown state id",
        };
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.starts_with("could not tell"), "{case}: {detail}");
        assert!(detail.contains(cause), "{case}: {detail}");
        assert_eq!(w.stage(t), "review", "{case}: never advanced");
        if case != "unknown-state" {
            assert_eq!(w.snapshot(), before, "{case}: nothing written");
            assert_eq!(page_writes(&w), written_before, "{case}: nothing written");
        }
        assert_eq!(
            w.env
                .count("SELECT count(*) FROM stage_events WHERE actor='reconcile'"),
            0
        );
        // Nothing of a failed listing is kept: once Plane answers as asked, the next
        // pass lists the project and judges the task.
        if ["500", "missing-key", "html"].contains(&case) {
            let r = w.json();
            let v = verdict_of(&r, "ORCH-1");
            assert_eq!(v["guard"], Value::Null, "{case}, next pass: {r:#}");
            assert_eq!(r["stopped_early"], Value::Null, "{case}, next pass: {r:#}");
        }
    }
}

#[test]
fn a_lost_start_webhook_is_replayed_once() {
    let w = world();
    w.item(P2, 5, IN_PROGRESS);
    w.reconcile(&[]);
    assert_eq!(
        w.env.count("SELECT count(*) FROM tasks WHERE key='SHOP-5'"),
        1
    );
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM jobs WHERE agent='analyst' AND status='queued'"),
        1
    );
    assert_eq!(w.gitea().count(Some("POST"), "acme/shop", "branches"), 1);
    let branch: String = w
        .env
        .db()
        .query_row("SELECT branch FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert!(w.gitea().branch("acme/shop", &branch).is_some(), "{branch}");
    let before = w.snapshot();
    let r = w.json();
    assert_eq!(r["counts"]["replayed"], 0, "{r:#}");
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.gitea().count(Some("POST"), "acme/shop", "branches"), 1);
}

#[test]
fn a_lost_approval_advances_once() {
    let w = world();
    let t = w.task("orch", 3, "analysis", 0, 0);
    w.job(t, "analyst", "analysis", "succeeded", 1);
    w.item(P1, 3, APPROVED);
    let r = w.json();
    assert_eq!(r["counts"]["replayed"], 1, "{r:#}");
    assert_eq!(w.stage(t), "development");
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM jobs WHERE agent='developer' AND status='queued'"),
        1
    );
    let before = w.snapshot();
    w.reconcile(&[]);
    w.reconcile(&[]);
    assert_eq!(w.snapshot(), before);
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM stage_events WHERE to_stage='development'"),
        1
    );
}

#[test]
fn a_thousand_tasks_cost_pages_not_tasks_and_a_429_ends_the_pass_cleanly() {
    let mut w = world();
    w.env.set("ORCH_RECONCILE_MAX_TASKS", "5000");
    let seeds: Vec<SeedTask> = (1..=1000u64)
        .map(|n| {
            let p = w.env.project(["orch", "shop", "web"][(n % 3) as usize]);
            SeedTask::new(p, n, Stage::Review)
                .work_item(&item_id(p.plane_project_id, n))
                .branch(&format!("task/{}", p.key(n)))
                .at(0)
                .branch_ready()
        })
        .collect();
    seed_tasks(&w.env, &seeds);
    for n in (2..=1000u64).step_by(2) {
        let ident = ["ORCH", "SHOP", "WEB"][(n % 3) as usize];
        w.env
            .artefact(&format!("{ident}-{n}"), "05-review.md", &review("APPROVE"));
    }
    // 334 + 333 + 333 items: one page of 1,000 per project, whatever the task count.
    w.plane().set_rate_limit(1000, false);
    let before = w.plane_requests();
    let events = w.env.count("SELECT count(*) FROM stage_events");
    let r = w.reconcile(&["--dry-run", "--json"]).json();
    assert_eq!(w.plane_requests() - before, 3, "{}", r["counts"]);
    assert_eq!(r["counts"]["scanned"], 1000);
    assert_eq!(r["tasks"].as_array().unwrap().len(), 1000);
    assert_eq!(
        w.env.count("SELECT count(*) FROM stage_events"),
        events,
        "dry run"
    );

    // A budget that runs out mid-listing: 429 ends the pass cleanly (exit 0).
    // (Plane's answer when throttled, on the second project's first page.)
    w.throttle_listing(P2);
    let run = w.reconcile(&["--json"]);
    let r = run.json();
    assert!(
        r["stopped_early"].as_str().unwrap().contains("429"),
        "{}",
        r["stopped_early"]
    );
    assert!(run.stderr.contains("stopped early"), "{}", run.stderr);
    assert_eq!(r["counts"]["advanced"], 0);
    assert!(r["stopped_early"].as_str().unwrap().contains("42s"));
    assert_eq!(w.plane_requests() - before, 3 + 2, "one page, then the 429");
    assert_eq!(r["counts"]["deferred"], 1000);

    // The next pass (a fresh window) finishes the work.
    w.plane().set_rate_limit(1000, false);
    let r = w.json();
    assert_eq!(r["stopped_early"], Value::Null, "{}", r["counts"]);
    assert_eq!(r["counts"]["advanced"], 500);
    assert_eq!(r["counts"]["plane_requests"], 3);

    // A low X-RateLimit-Remaining stops listing early and says so: the first project
    // now takes two pages (1,000 more items, blocked, without tasks), and the first
    // page's 999 is under the floor.
    for n in 5001..=6000u64 {
        w.item(P1, n, BLOCKED);
    }
    w.env.set("ORCH_RECONCILE_RATE_LIMIT_FLOOR", "1000");
    w.plane().set_rate_limit(1000, false);
    let before = w.plane_requests();
    let r = w.json();
    assert!(
        r["stopped_early"]
            .as_str()
            .unwrap()
            .contains("X-RateLimit-Remaining"),
        "{}",
        r["stopped_early"]
    );
    assert!(r["counts"]["deferred"].as_i64().unwrap() > 0);
    // No request after the page below the floor (the page reader does not read
    // ahead past it): neither the first project's second page nor another project's.
    assert_eq!(r["counts"]["plane_requests"], 1, "{}", r["counts"]);
    assert_eq!(w.plane_requests() - before, 1, "Plane saw one request");
}

#[test]
fn dry_run_lists_every_task_and_changes_nothing() {
    let w = world();
    let a = w.task("orch", 1, "review", 0, 0);
    w.task("orch", 2, "analysis", 0, 0);
    w.item(P1, 1, IN_PROGRESS);
    w.item(P1, 2, APPROVED);
    w.item(P1, 9, IN_PROGRESS);
    w.env.artefact("ORCH-1", "05-review.md", &review("APPROVE"));
    let before = w.snapshot();
    let run = w.reconcile(&["--dry-run"]);
    assert!(
        run.stdout
            .contains("ORCH-1 review: advance -> deploy-staging"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("ORCH-2 analysis: skip (analysis)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("would move the task analysis -> development"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("would start the task"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("dry run: nothing changed"),
        "{}",
        run.stderr
    );
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.stage(a), "review");
    assert_eq!(w.env.count("SELECT count(*) FROM passes"), 0);
}

#[test]
fn a_second_pass_while_one_holds_the_lock_exits_75() {
    let w = world();
    let lock = w.env.path("state/locks/reconcile.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&lock).unwrap();
    f.lock().unwrap();
    w.env.run(&["reconcile"]).expect(75);
}

#[test]
fn the_dry_run_report_names_each_task_and_what_a_pass_would_do() {
    let w = world();
    let approved = w.task("orch", 1, "review", 0, 0);
    w.item(P1, 1, IN_PROGRESS);
    w.env.artefact("ORCH-1", "05-review.md", &review("APPROVE"));
    w.job(approved, "reviewer", "review", "succeeded", 1);
    w.task("shop", 2, "development", 0, 0);
    w.item(P2, 2, IN_PROGRESS);
    w.task("web", 3, "review", 0, 0);
    w.item(w.env.project("web").plane_project_id, 3, BLOCKED);
    let run = w.env.run(&["reconcile", "--dry-run"]);
    insta::assert_snapshot!(snapshot::report(&w.env, &run), @r#"
    exit: 0
    ORCH-1 review: advance -> deploy-staging
    SHOP-2 development: wait: no job has run yet: check_job_ended: no job has run in this stage; check_pr_open: no pull request for the task branch; check_ci_green: no pull request for the task branch
    WEB-3 review: skip (blocked): work item is in "Blocked"
    "#);
}

#[test]
fn a_steady_pass_reads_list_pages_and_ci_only_for_heads_not_yet_green() {
    let w = world();
    // Development tasks whose job has not run yet: every pass waits on them, reading
    // their PR and CI (steady: nothing moves). PRs #1 green, #2 red, #3 pending; the
    // PR numbers are recorded by the first pass (found by branch in the listing).
    let repo = "acme/orch";
    let mut heads = Vec::new();
    for (n, ci) in [(1u64, "success"), (2, "failure"), (3, "pending")] {
        w.task("orch", n, "development", NOW_UNIX - 1_000, 0);
        w.item(P1, n, IN_PROGRESS);
        w.gitea()
            .add_pull(repo, &PullSeed::open(n, &format!("task/orch-{n}")));
        let head = w.gitea().pull(repo, n).unwrap().head_sha;
        w.gitea().add_status(repo, &head, "ci/test", ci);
        heads.push(head);
    }
    let seen = std::cell::Cell::new(0usize);
    // The Gitea requests since the last call, as `(list pages, PRs by number, CI reads
    // by head, others)`.
    let gitea_since = || {
        let all = w.gitea().server().requests();
        let new = &all[seen.get()..];
        seen.set(all.len());
        let pulls = format!("/api/v1/repos/{repo}/pulls");
        let mut ci: Vec<String> = Vec::new();
        let (mut pages, mut by_number, mut other) = (0, 0, 0);
        for r in new {
            if r.path == pulls {
                pages += 1;
            } else if r.path.starts_with(&format!("{pulls}/")) {
                by_number += 1;
            } else if let Some(h) = heads.iter().find(|h| r.path.contains(h.as_str())) {
                ci.push(h.clone());
            } else if r.path.ends_with("/status") {
                ci.push(r.path.clone());
            } else {
                other += 1;
            }
        }
        (pages, by_number, ci, other)
    };
    let cached = || w.env.count("SELECT count(*) FROM ci_verdicts");
    let ci_blocker = |r: &Value, key: &str| verdict_of(r, key)["because"].to_string();

    // A dry run reads everything and records nothing.
    w.reconcile(&["--dry-run", "--json"]);
    let (_, _, ci, _) = gitea_since();
    assert_eq!(ci.len(), 3);
    assert_eq!(cached(), 0, "a dry run writes no CI verdict");

    // First pass: one list page, three CI reads; only the green verdict is kept.
    let r = w.json();
    assert_eq!(gitea_since(), (1, 0, heads.clone(), 0), "{}", r["counts"]);
    assert_eq!(r["counts"]["gitea_requests"], 4);
    assert_eq!(cached(), 1, "success kept; failure and pending never");
    assert!(ci_blocker(&r, "ORCH-2").contains("CI failed"), "{r:#}");
    let plane_before = w.plane_requests();

    // Second pass over the unchanged tasks: the list page and only the CI of the heads
    // not green yet (a failure may be re-run green on the same commit).
    let before = w.snapshot();
    let r = w.json();
    assert_eq!(
        gitea_since(),
        (1, 0, vec![heads[1].clone(), heads[2].clone()], 0),
        "{}",
        r["counts"]
    );
    assert_eq!(r["counts"]["gitea_requests"], 3);
    assert_eq!(
        w.plane_requests() - plane_before,
        3,
        "Plane: one list page per project"
    );
    // The cached verdicts decide as the read ones did.
    assert!(ci_blocker(&r, "ORCH-2").contains("CI failed"), "{r:#}");
    assert!(ci_blocker(&r, "ORCH-3").contains("CI pending"), "{r:#}");
    assert!(
        !ci_blocker(&r, "ORCH-1").contains("check_ci_green"),
        "{r:#}"
    );
    assert_eq!(w.snapshot(), before, "a steady pass writes nothing");

    // The pending head turns green, and the red one is re-run green on the same commit:
    // each is read once more, then known.
    w.gitea().add_status(repo, &heads[2], "ci/test", "success");
    w.gitea().add_status(repo, &heads[1], "ci/test", "success");
    let r = w.json();
    assert_eq!(
        gitea_since(),
        (1, 0, vec![heads[1].clone(), heads[2].clone()], 0)
    );
    assert!(
        !ci_blocker(&r, "ORCH-2").contains("check_ci_green"),
        "{r:#}"
    );
    assert_eq!(cached(), 3);
    let r = w.json();
    assert_eq!(gitea_since(), (1, 0, vec![], 0), "only the list page");
    assert_eq!(r["counts"]["gitea_requests"], 1);

    // A push moves PR #1's head: the new head's CI is read, red every pass, green once.
    let new_head = orch::standin::gitea::fake_sha("orch-1 second push");
    w.gitea().push(repo, "task/orch-1", &new_head);
    w.gitea().add_status(repo, &new_head, "ci/test", "failure");
    // `gitea_since` names the first three heads; a read of the new one is its path.
    let reads_only_new_head = || {
        let (pages, by_number, ci, other) = gitea_since();
        assert_eq!((pages, by_number, other), (1, 0, 0));
        assert_eq!(ci.len(), 1);
        assert!(ci[0].contains(&new_head), "{ci:?}");
    };
    let r = w.json();
    reads_only_new_head();
    assert!(ci_blocker(&r, "ORCH-1").contains("CI failed"), "{r:#}");
    w.json();
    reads_only_new_head(); // a red head is read again
    assert_eq!(cached(), 3);
    w.gitea().add_status(repo, &new_head, "ci/test", "success");
    w.json();
    reads_only_new_head();
    w.json();
    assert_eq!(gitea_since(), (1, 0, vec![], 0));
    assert_eq!(cached(), 4);
}

#[test]
fn a_replay_the_database_refuses_exits_2_and_says_so() {
    let env = TestEnv::builder().project(Project::shop()).build();
    let body = json!({
        "event": "issue", "action": "updated",
        "data": {"id": "00000000-0000-4000-8000-000000000001", "project": "0000dead-0000-4000-8000-000000000000",
                 "state": {"id": "x", "name": "In Progress", "group": "started"}},
    })
    .to_string();
    env.db()
        .execute(
            "INSERT INTO deliveries (body_sha256, event, body, received_at) VALUES ('poison-free', 'issue', ?1, ?2)",
            orch::sql_params![body.as_bytes(), NOW_UNIX],
        )
        .unwrap();
    // A real write lock, held by another process (this one) past the busy timeout.
    let holder = env.db();
    let lock = holder.begin(orch::adapters::db::Begin::Write).unwrap();
    let run = env.run(&["reconcile"]).expect(2);
    run.stderr_has("could not be written to the database");
    drop(lock);
    env.run(&["reconcile"]).expect(0);
    assert_eq!(
        env.count("SELECT count(*) FROM deliveries WHERE outcome = 'pending'"),
        0,
        "replayed once the lock is gone"
    );
}

/// A stored, pending delivery moving work item `item` of `project` to the bare state id
/// `state` (not described in the payload, so acting must resolve it).
fn pending_delivery(env: &TestEnv, project: &str, item: u32, state: &str, received_at: i64) {
    let body = json!({
        "event": "issue", "action": "updated",
        "data": {"id": format!("00000000-0000-4000-8000-{item:012}"), "name": format!("Work item {item}"),
                 "sequence_id": item, "project": project, "state": state},
        "activity": {"field": "state_id", "new_value": state, "old_value": null},
    })
    .to_string();
    env.db()
        .execute(
            "INSERT INTO deliveries (body_sha256, event, body, received_at) VALUES (?1, 'issue', ?2, ?3)",
            orch::sql_params![format!("sha-{item}"), body.as_bytes(), received_at],
        )
        .unwrap();
}

#[test]
fn a_poison_delivery_is_given_up_recorded_announced_once_and_starves_nothing() {
    let shop = Project::shop();
    let env = TestEnv::builder()
        .project(shop.clone())
        .standins(&[Standin::Telegram])
        .set("ORCH_DELIVERY_MAX_ATTEMPTS", "3")
        .set("ORCH_RECONCILE_MAX_TASKS", "1")
        .build();
    // The older one always fails: its state id is not cached and Plane is not
    // configured. The newer one (another project) acts at once.
    pending_delivery(
        &env,
        shop.plane_project_id,
        1,
        "5a000000-0000-4000-8000-0000000000ff",
        NOW_UNIX - 600,
    );
    pending_delivery(
        &env,
        "0000dead-0000-4000-8000-000000000000",
        2,
        "x",
        NOW_UNIX - 60,
    );
    let outcome = |id: i64| -> (String, i64) {
        env.db()
            .query_row(
                "SELECT outcome, attempts FROM deliveries WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    // Pass 1 (cap 1) tries the older; pass 2 takes the untried newer one first.
    env.run(&["reconcile"]).expect(0);
    assert_eq!(outcome(1), ("pending".into(), 1));
    assert_eq!(outcome(2), ("pending".into(), 0));
    env.run(&["reconcile"]).expect(0);
    assert_eq!(
        outcome(2).0,
        "no pipeline action",
        "not starved by the poison"
    );
    env.run(&["reconcile"]).expect(0);
    assert_eq!(outcome(1), ("pending".into(), 2));
    env.run(&["reconcile"]).expect(0);
    let (detail, error): (String, String) = env
        .db()
        .query_row(
            "SELECT detail, error FROM deliveries WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(outcome(1), ("given_up".into(), 3));
    assert!(
        detail.contains("all 3 tries") && detail.contains("States API"),
        "{detail}"
    );
    assert!(error.contains("States API"), "{error}");
    // Never replayed again, announced once.
    env.run(&["reconcile"]).expect(0);
    env.run(&["reconcile"]).expect(0);
    assert_eq!(outcome(1).1, 3);
    let given_up: Vec<String> = env
        .telegram_messages()
        .into_iter()
        .filter(|m| m.contains("given up"))
        .collect();
    assert_eq!(given_up.len(), 1, "{given_up:?}");
    assert!(
        given_up[0].contains("delivery 1") && given_up[0].contains("after 3 tries"),
        "{}",
        given_up[0]
    );
    assert_eq!(
        env.count("SELECT count(*) FROM notifications WHERE kind = 'delivery_given_up'"),
        1
    );
}

/// An outage is not poison: a delivery whose acting fails only because Plane cannot be
/// reached is replayed past the try limit and never given up, so a real start or
/// approval survives an outage of any length.
#[test]
fn a_delivery_failing_only_on_an_outage_is_never_given_up() {
    let shop = Project::shop();
    // A loopback port nothing listens on: every Plane call is refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = TestEnv::builder()
        .project(shop.clone())
        .standins(&[Standin::Telegram])
        .set("ORCH_DELIVERY_MAX_ATTEMPTS", "2")
        .set("ORCH_PLANE_URL", &format!("http://127.0.0.1:{closed}"))
        .set("ORCH_PLANE_API_KEY", "plane-key")
        .build();
    pending_delivery(
        &env,
        shop.plane_project_id,
        1,
        "5a000000-0000-4000-8000-0000000000ff",
        NOW_UNIX - 600,
    );
    for _ in 0..4 {
        env.run(&["reconcile"]);
    }
    let (outcome, attempts): (String, i64) = env
        .db()
        .query_row(
            "SELECT outcome, attempts FROM deliveries WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        outcome, "pending",
        "still to be replayed after {attempts} tries"
    );
    assert!(attempts >= 3, "tried past the limit of 2: {attempts}");
    assert!(
        !env.telegram_messages()
            .iter()
            .any(|m| m.contains("given up")),
        "nothing announced"
    );
}

/// Plane expands a work item without a state as `{}`: that item alone cannot be told,
/// and the rest of its project's listing is judged as usual.
#[test]
fn a_work_item_without_a_state_spoils_only_itself() {
    let w = world();
    let a = w.task("orch", 1, "review", 0, 0);
    let b = w.task("orch", 2, "review", 0, 0);
    w.item(P1, 1, IN_PROGRESS);
    w.plane()
        .add_work_item(P1, &item_id(P1, 2), 2, "Work", None);
    w.env.artefact("ORCH-1", "05-review.md", &review("APPROVE"));
    w.env.artefact("ORCH-2", "05-review.md", &review("APPROVE"));
    let r = w.json();
    assert_eq!(r["counts"]["advanced"], 1, "{r:#}");
    assert_eq!(w.stage(a), "deploy-staging", "{r:#}");
    assert_eq!(w.stage(b), "review", "{r:#}");
    assert_eq!(verdict_of(&r, "ORCH-2")["guard"], "blocked", "{r:#}");
}

/// A pass whose first Plane page meets a 429 defers every task; the open pulls it
/// would have listed ahead on Gitea are not asked for either.
#[test]
fn a_429_on_the_first_page_lists_nothing_on_gitea() {
    let w = world();
    w.task("orch", 1, "development", 0, 0);
    w.item(P1, 1, IN_PROGRESS);
    w.throttle_listing(P1);
    let r = w.json();
    assert!(
        r["stopped_early"].as_str().unwrap().contains("429"),
        "{r:#}"
    );
    assert_eq!(r["counts"]["deferred"], 1, "{r:#}");
    assert_eq!(w.gitea_requests(), 0, "{r:#}");
    // The next pass lists the repo's open pulls as the judging needs them.
    let r = w.json();
    assert_eq!(r["stopped_early"], Value::Null, "{r:#}");
    assert!(w.gitea_requests() > 0, "{r:#}");
}

/// With Plane down every task is skipped as "could not tell": nothing is listed on
/// Gitea ahead of the judging either.
#[test]
fn plane_down_lists_nothing_on_gitea() {
    let w = world();
    w.task("orch", 1, "development", 0, 0);
    w.item(P1, 1, IN_PROGRESS);
    for project in ["orch", "shop", "web"] {
        let pid = w.env.project(project).plane_project_id;
        w.plane().server().script(
            Some("GET"),
            &format!("/api/v1/workspaces/acme/projects/{pid}/work-items/"),
            Reply::json(502, &json!({"error": "bad gateway"})),
            10,
        );
    }
    let r = w.json();
    assert_eq!(verdict_of(&r, "ORCH-1")["guard"], "blocked", "{r:#}");
    assert_eq!(w.gitea_requests(), 0, "{r:#}");
}

/// A task of a project no longer in the pipeline is skipped as blocked (its project is
/// not listed), so its repo is not listed ahead on Gitea: only the repos of tasks the
/// judging evaluates are.
#[test]
fn a_task_of_a_project_gone_from_the_pipeline_lists_nothing_ahead() {
    let w = world();
    w.task("orch", 1, "development", 0, 0);
    w.item(P1, 1, IN_PROGRESS);
    let gone = w.task("orch", 2, "development", 0, 0);
    w.env
        .db()
        .execute(
            "UPDATE tasks SET project = 'legacy', repo = 'acme/legacy' WHERE id = ?1",
            [gone],
        )
        .unwrap();
    let r = w.json();
    assert_eq!(verdict_of(&r, "ORCH-2")["guard"], "blocked", "{r:#}");
    let gitea = w.gitea().server();
    assert_eq!(gitea.count(None, "/api/v1/repos/acme/legacy"), 0, "{r:#}");
    assert!(gitea.count(None, "/api/v1/repos/") > 0, "{r:#}");
}

/// A repo's open pulls are listed under the page cap like every listing
/// (`ORCH_LIST_MAX_PAGES`): past it the pass stops reading, counts `page_cap_hit` and
/// exits 2, and the task whose PR it could not find moves nowhere.
#[test]
fn the_open_pulls_listing_stops_at_the_page_cap() {
    let mut w = world();
    w.env.set("ORCH_LIST_MAX_PAGES", "1");
    let t = w.task("orch", 1, "development", 0, 0);
    w.item(P1, 1, IN_PROGRESS);
    // 60 open pulls: two pages of Gitea's 50, the task's own the oldest, on page 2.
    w.gitea()
        .add_pull("acme/orch", &PullSeed::open(1, "task/orch-1"));
    for n in 2..=60 {
        w.gitea()
            .add_pull("acme/orch", &PullSeed::open(n, &format!("task/other-{n}")));
    }
    let run = w.env.run(&["reconcile", "--json"]).expect(2);
    assert!(
        run.stderr
            .contains("page cap of 1 pages (ORCH_LIST_MAX_PAGES)"),
        "{}",
        run.stderr
    );
    let pulls = w
        .gitea()
        .server()
        .count(Some("GET"), "/api/v1/repos/acme/orch/pulls");
    assert_eq!(pulls, 1, "one page, then the cap");
    assert_eq!(w.stage(t), "development");
}

/// The judging reads a page of tasks and their latest jobs before deciding them. A job
/// that changed after that read (here another host's pass re-ran a reviewer while this
/// pass waited on Gitea for an earlier task's CI) is read again before acting on it:
/// the task waits for the re-run, instead of a re-run of its own that loses the race
/// (the store's guard would refuse it; a developer's red-CI re-run would have written
/// its feedback file first).
#[test]
fn a_job_changed_after_its_page_was_read_is_read_again_before_acting() {
    let w = world();
    // ORCH-1: development, its PR open; the gate reads the head's CI from Gitea.
    w.task("orch", 1, "development", 0, 0);
    w.item(P1, 1, IN_PROGRESS);
    w.gitea()
        .add_pull("acme/orch", &PullSeed::open(1, "task/orch-1"));
    // ORCH-2: its reviewer ended without a verdict, so the page's job says "re-run".
    let b = w.task("orch", 2, "review", 0, 0);
    w.item(P1, 2, IN_PROGRESS);
    let ended = w.job(b, "reviewer", "review", "succeeded", 1);

    let gitea = w.gitea().server();
    while gitea.next_arrival(std::time::Duration::ZERO).is_some() {}
    let gate = orch::standin::server::Gate::new();
    gitea.hold(Some("GET"), "/api/v1/repos/acme/orch/commits/", &gate, 1);
    let child = w
        .env
        .command(&["reconcile", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn orch");
    // Held on ORCH-1's CI: ORCH-2's page (with its job) was read before this call.
    loop {
        let r = gitea
            .next_arrival(std::time::Duration::from_secs(60))
            .expect("the pass reads ORCH-1's CI");
        if r.path.contains("/commits/") {
            break;
        }
    }
    // Re-run as `Db::rerun_job` does: the same row, queued again as attempt 2.
    w.env
        .db()
        .execute(
            "UPDATE jobs SET status = 'queued', attempt = 2, finished_at = NULL, exit_code = NULL
             WHERE id = ?1",
            [ended],
        )
        .unwrap();
    gate.open();
    let run: Run = child.wait_with_output().expect("orch").into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.json();
    let v = verdict_of(&r, "ORCH-2");
    assert_eq!(v["action"], "wait", "{v:#}");
    assert_eq!(v["because"], "the stage's job has not ended", "{v:#}");
    // Decided on the job as it is now, not a re-run that lost its race ("was re-run or
    // is live meanwhile").
    assert_eq!(v["note"], Value::Null, "{v:#}");
    assert_eq!(r["counts"]["rerun"], 0, "{r:#}");
    let jobs: Vec<(i64, String, i64)> = w
        .env
        .db()
        .prepare("SELECT id, status, attempt FROM jobs WHERE task_id = ?1 ORDER BY id")
        .unwrap()
        .query_map([b], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(jobs, vec![(ended, "queued".to_string(), 2)]);
}
