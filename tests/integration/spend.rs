//! Spend and budgets (issue 16): the usage an agent reports is recorded by the real
//! `run-job`, shown by `task show` and `status`, and a task whose totals reached
//! `ORCH_TASK_BUDGET` is escalated once by `dispatch` (its next job not started) and
//! announced once by `reconcile`.

use orch::sql_params as params;

use crate::common::{seed_tasks, Project, SeedTask, Standin, TestEnv, NOW_UNIX};

const AGENT: &str = env!("CARGO_BIN_EXE_orch-test-agent");

/// The task's work item.
const ITEM: &str = "7b1e4c2a-0000-4000-8000-000000000001";

fn world(vars: &[(&str, &str)]) -> (TestEnv, i64) {
    world_with(vars, &[Standin::Telegram])
}

fn world_with(vars: &[(&str, &str)], standins: &[Standin]) -> (TestEnv, i64) {
    let argv = format!("[{AGENT}]");
    let agents = format!("analyst: {argv}\ndeveloper: {argv}\nreviewer: {argv}\ndeployer: {argv}");
    let mut b = TestEnv::builder()
        .project(Project::orch().self_hosting(false))
        .agents(&agents)
        .standins(standins)
        .set("ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", "false")
        .set("ORCH_RECONCILE_REPLAY_ENABLED", "false");
    for (k, v) in vars {
        b = b.set(k, v);
    }
    let env = b.build();
    let seed = SeedTask::new(env.project("orch"), 1, "review".parse().unwrap())
        .work_item(ITEM)
        .branch("orch-1")
        .at(0);
    let task = seed_tasks(&env, &[seed])[0];
    (env, task)
}

fn job(env: &TestEnv, task: i64, status: &str) -> i64 {
    let c = env.db();
    c.query_row(
        "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at, started_at)
         VALUES (?1, 'reviewer', 'review', ?2, 1, ?3, ?4) RETURNING id",
        params![
            task,
            status,
            NOW_UNIX - 50,
            (status == "running").then_some(NOW_UNIX - 10)
        ],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
}

fn log_of(env: &TestEnv, job: i64) -> String {
    std::fs::read_to_string(env.path(&format!("state/jobs/{job}.log"))).unwrap()
}

#[test]
fn usage_is_recorded_and_a_bad_form_is_only_a_warning() {
    let (env, task) = world(&[]);
    let first = job(&env, task, "running");
    env.artefact(
        "ORCH-1",
        &format!("usage-{first}.json"),
        r#"{"tokens_in": 1200, "tokens_out": 300, "cost": "0.4", "currency": "USD"}"#,
    );
    env.run(&["run-job", &first.to_string()]).expect(0);
    let (ti, to, cost, cur): (i64, i64, i64, String) = env
        .db()
        .query_row(
            "SELECT tokens_in, tokens_out, cost_micros, currency FROM jobs WHERE id = ?1",
            [first],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!((ti, to, cost, cur.as_str()), (1200, 300, 400_000, "USD"));
    assert!(
        log_of(&env, first).contains("== usage recorded: tokens in 1200, out 300, cost 0.40 USD")
    );
    // The file is set aside, so a later attempt counts only what its own agent writes.
    assert!(!env
        .path(&format!("artefacts/ORCH-1/usage-{first}.json"))
        .exists());
    assert!(env
        .path(&format!("artefacts/ORCH-1/usage-{first}.1.recorded.json"))
        .exists());

    // A bad form: a warning in the job's log, nothing recorded, the job still succeeds.
    let second = job(&env, task, "running");
    env.artefact(
        "ORCH-1",
        &format!("usage-{second}.json"),
        r#"{"cost": "lots"}"#,
    );
    env.run(&["run-job", &second.to_string()]).expect(0);
    assert!(
        log_of(&env, second).contains("== usage not recorded"),
        "{}",
        log_of(&env, second)
    );
    assert_eq!(
        env.count(&format!("SELECT count(*) FROM jobs WHERE id = {second} AND cost_micros IS NULL AND status = 'succeeded'")),
        1
    );
    // No file: nothing recorded, nothing said.
    let third = job(&env, task, "running");
    env.run(&["run-job", &third.to_string()]).expect(0);
    assert!(!log_of(&env, third).contains("usage"));

    let show = env
        .run(&["task", "show", "ORCH-1", "--json"])
        .expect(0)
        .json();
    assert_eq!(show["spend"]["jobs"], 1, "{show:#}");
    assert_eq!(show["spend"]["cost"], "0.40");
    assert_eq!(show["spend"]["tokens_in"], 1200);
    env.run(&["task", "show", "ORCH-1"])
        .expect(0)
        .stdout_has("spend cost 0.40 over 1 job(s), tokens in 1200 out 300")
        // Each job's own usage; the ones that reported nothing say nothing.
        .stdout_has(&format!(
            "  job {first} reviewer (review) attempt 1 succeeded exit 0  usage: tokens in 1200, out 300, cost 0.40 USD\n  job {second} reviewer (review) attempt 1 succeeded exit 0\n"
        ));
    let jobs = show["jobs"].as_array().unwrap();
    assert_eq!(jobs[0]["id"], first);
    assert_eq!(
        jobs[0]["usage"],
        serde_json::json!({"tokens_in": 1200, "tokens_out": 300, "cost_micros": 400_000, "cost": "0.40", "currency": "USD"})
    );
    assert!(
        jobs[1]["usage"].is_null() && jobs[2]["usage"].is_null(),
        "{show:#}"
    );
    let status = env.run(&["status", "--json"]).expect(0).json();
    assert_eq!(
        status["spend"]["orch"]["cost_micros"], 400_000,
        "{status:#}"
    );
    assert_eq!(status["spend"]["orch"]["tokens_out"], 300);
    env.run(&["status"])
        .expect(0)
        .stdout_has("orch: cost 0.40 over 1 job(s)");
    // The metrics export the project's totals.
    let prom = env.path("orch.prom");
    env.run(&["status", "--prometheus", prom.to_str().unwrap()])
        .expect(0);
    let metrics = std::fs::read_to_string(&prom).unwrap();
    for line in [
        "orch_spend_cost_micros{project=\"orch\"} 400000\n",
        "orch_spend_tokens_in{project=\"orch\"} 1200\n",
        "orch_spend_tokens_out{project=\"orch\"} 300\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[test]
fn an_over_budget_task_is_escalated_once_and_its_next_job_not_started() {
    let (env, task) = world(&[("ORCH_TASK_BUDGET", "0.5")]);
    let first = job(&env, task, "running");
    env.artefact("ORCH-1", &format!("usage-{first}.json"), r#"{"cost": 0.3}"#);
    env.run(&["run-job", &first.to_string()]).expect(0);
    // Under the cap: a dry run would start the next job.
    let next = job(&env, task, "queued");
    env.run(&["dispatch", "--dry-run"])
        .expect(0)
        .stdout_has(&format!("job {next} (orch): would start"));
    env.db()
        .execute(
            "UPDATE jobs SET status = 'running', started_at = ?2 WHERE id = ?1",
            params![next, NOW_UNIX],
        )
        .unwrap();
    env.artefact(
        "ORCH-1",
        &format!("usage-{next}.json"),
        r#"{"cost": "0.2", "tokens_in": 5}"#,
    );
    env.run(&["run-job", &next.to_string()]).expect(0);
    // 0.3 + 0.2 reached 0.5: the third job is not started.
    let third = job(&env, task, "queued");
    env.run(&["dispatch", "--dry-run"])
        .expect(0)
        .stdout_has(&format!("job {third} (orch): would not start"));
    env.run(&["dispatch"]).expect(0);
    let (at, reason): (i64, String) = env
        .db()
        .query_row(
            "SELECT escalated_at, escalation_reason FROM tasks WHERE id = ?1",
            [task],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(at, NOW_UNIX);
    assert!(
        reason.contains("spend 0.50 reached ORCH_TASK_BUDGET 0.50 over 2 job(s)"),
        "{reason}"
    );
    assert_eq!(
        env.count(&format!("SELECT count(*) FROM jobs WHERE id = {third} AND status = 'cancelled' AND pid IS NULL AND started_at IS NULL")),
        1
    );
    // A second dispatch pass (a later instant, a fresh queued job) does not escalate again.
    let fourth = job(&env, task, "queued");
    let mut later = env.command(&["dispatch"]);
    later.env("ORCH_NOW", "2026-11-25T03:05:00Z");
    assert!(later.status().unwrap().success());
    assert_eq!(
        env.count(&format!("SELECT escalated_at FROM tasks WHERE id = {task}")),
        NOW_UNIX
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM jobs WHERE id = {fourth} AND status = 'cancelled'"
        )),
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"),
        0
    );
    // Reconcile announces the escalation once, however often it runs.
    for _ in 0..2 {
        env.run(&["reconcile"]).expect(0);
    }
    assert_eq!(
        env.count("SELECT count(*) FROM notifications WHERE kind = 'escalation'"),
        1
    );
    let sent = env.telegram_messages();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("ORCH_TASK_BUDGET"), "{sent:?}");
    // status shows the task's spend on its escalation.
    env.run(&["status"]).expect(0).stdout_has(
        "  ORCH-1 (orch) at review since 2026-11-25T03:00:00Z, spent 0.50: spend 0.50 reached",
    );
    let status = env.run(&["status", "--json"]).expect(0).json();
    assert_eq!(status["escalated"][0]["spend"]["cost_micros"], 500_000);
}

#[test]
fn the_token_cap_escalates_once_with_one_comment_and_one_notification() {
    let (env, task) = world_with(
        &[("ORCH_TASK_TOKEN_BUDGET", "1000")],
        &[Standin::Telegram, Standin::Plane],
    );
    let first = job(&env, task, "running");
    env.artefact(
        "ORCH-1",
        &format!("usage-{first}.json"),
        r#"{"tokens_in": 900, "tokens_out": 100}"#,
    );
    env.run(&["run-job", &first.to_string()]).expect(0);
    // A running job shows its task's spend in status.
    let running = job(&env, task, "running");
    let status = env.run(&["status", "--json"]).expect(0).json();
    assert_eq!(status["running"][0]["id"], running, "{status:#}");
    assert_eq!(status["running"][0]["spend"]["tokens_in"], 900);
    env.db()
        .execute("UPDATE jobs SET status = 'failed' WHERE id = ?1", [running])
        .unwrap();
    // Two dispatch passes, each with a queued job of the task: one escalation.
    for (n, now) in [(1, "2026-11-25T03:00:00Z"), (2, "2026-11-25T03:05:00Z")] {
        let next = job(&env, task, "queued");
        let mut pass = env.command(&["dispatch"]);
        pass.env("ORCH_NOW", now);
        assert!(pass.status().unwrap().success(), "pass {n}");
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM jobs WHERE id = {next} AND status = 'cancelled' AND started_at IS NULL"
            )),
            1,
            "pass {n}"
        );
    }
    let (at, reason): (i64, String) = env
        .db()
        .query_row(
            "SELECT escalated_at, escalation_reason FROM tasks WHERE id = ?1",
            [task],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(at, NOW_UNIX, "escalated by the first pass only");
    assert!(
        reason.contains("tokens 1000 reached ORCH_TASK_TOKEN_BUDGET 1000 over 1 job(s)"),
        "{reason}"
    );
    for _ in 0..2 {
        env.run(&["reconcile"]).expect(0);
    }
    let comments = env
        .plane()
        .comments(env.project("orch").plane_project_id, ITEM);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(
        comments[0].1.contains("ORCH_TASK_TOKEN_BUDGET"),
        "{comments:?}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM notifications WHERE kind = 'escalation'"),
        1
    );
    assert_eq!(env.telegram_messages().len(), 1);
}
