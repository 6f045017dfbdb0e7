//! `post-deploy-tick` through the real binary: arming on deploy → done, probes against
//! a loopback production stand-in, rollbacks as real processes (one kills the tick),
//! alerts to a Telegram stand-in, the log artefact, `status`, the lock. Time moves only
//! through `ORCH_NOW` between ticks.

use std::path::Path;

use orch::core::stage::Stage;
use orch::standin::prod::Prod;
use orch::standin::telegram;

use crate::common::{
    pipeline, seed_task, snapshot, Project, Run, SeedTask, Standin, TestEnv, TestEnvBuilder,
    NOW_UNIX,
};

const SHOP_ITEM: &str = "1c2d3e4f-0000-4000-8000-0000000000aa";
const ORCH_ITEM: &str = "7b1e4c2a-0000-4000-8000-0000000000bb";
const BLOG_ITEM: &str = "9e8d7c6b-0000-4000-8000-0000000000cc";

/// The only agent the pipeline names.
const AGENTS: &str = r#"analyst: [/bin/true, "{task}"]"#;

/// A pipeline with production URLs and a rollback argv (YAML flow list) per project,
/// and a project (`blog`) with no production URL at all.
fn pipeline(health: &str, metrics: Option<&str>, rollback: &str) -> String {
    pipeline::render(&projects(health, metrics, rollback), AGENTS, "")
}

/// The projects of [`pipeline`].
fn projects(health: &str, metrics: Option<&str>, rollback: &str) -> Vec<Project> {
    let metrics = metrics
        .map(|m| format!("metrics_url: {m}\n"))
        .unwrap_or_default();
    let watched = format!("health_url: {health}\n{metrics}rollback: {rollback}");
    vec![
        Project::orch().with(&watched),
        Project::shop().with(&watched),
        Project::new(
            "blog",
            "9e8d7c6b-0000-4000-8000-000000000003",
            "BLOG",
            "acme/blog",
        )
        .with(&format!("rollback: {rollback}")),
    ]
}

/// An env on [`pipeline`] (production dead) with the Telegram stand-in wired.
fn with_telegram(rollback: &str) -> TestEnvBuilder {
    TestEnv::builder()
        .projects(projects(&dead_url(), None, rollback))
        .agents(AGENTS)
        .standins(&[Standin::Telegram])
        .set("ORCH_POST_DEPLOY_FAIL_THRESHOLD", "1")
}

/// Returns an RFC 3339 instant `secs` after the pinned `NOW`.
fn at(secs: i64) -> String {
    jiff::Timestamp::from_second(NOW_UNIX + secs)
        .unwrap()
        .to_string()
}

/// A URL on which nothing listens (bound, then released).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/health")
}

/// Starts a task and moves it along the table to done (the operator's path, which has
/// every effect of the transitions, including arming post-deploy).
fn deploy_to_done(env: &TestEnv, project: &str, item: &str, key: &str) {
    env.run(&[
        "task",
        "add",
        "--project",
        project,
        "--work-item",
        item,
        "--key",
        key,
    ])
    .expect(0);
    for stage in ["development", "review", "deploy-staging", "deploy", "done"] {
        env.run(&["task", "move", key, "--to", stage, "--reason", "test"])
            .expect(0);
    }
}

fn tick_at(env: &mut TestEnv, secs: i64, extra: &[&str]) -> Run {
    env.set("ORCH_NOW", &at(secs));
    let mut args = vec!["post-deploy-tick"];
    args.extend_from_slice(extra);
    env.run(&args)
}

fn tick_json(env: &mut TestEnv, secs: i64) -> serde_json::Value {
    tick_at(env, secs, &["--json"]).expect(0).json()
}

/// The windows' folders (their names): the state dir's on SQLite, those the stored
/// windows name on PostgreSQL (the state is in `shared_files` there).
fn window_dirs(env: &TestEnv) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    if crate::common::backend() == crate::common::Backend::Postgres {
        let keys: Vec<String> = env
            .db()
            .prepare("SELECT key FROM shared_files WHERE kind = 'window' ORDER BY key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for key in keys {
            let (repo, item) = key.split_once('/').unwrap();
            out.push(
                env.path("state")
                    .join(format!("post-deploy-state-{repo}"))
                    .join(item),
            );
        }
        return out;
    }
    let Ok(entries) = std::fs::read_dir(env.path("state")) else {
        return out;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("post-deploy-state-")
        {
            for item in std::fs::read_dir(e.path()).unwrap().flatten() {
                out.push(item.path());
            }
        }
    }
    out.sort();
    out
}

/// The stored key of a window folder (PostgreSQL).
fn window_key(dir: &Path) -> String {
    let item = dir.file_name().unwrap().to_string_lossy();
    let repo = dir.parent().unwrap().file_name().unwrap().to_string_lossy();
    format!(
        "{}/{item}",
        repo.strip_prefix("post-deploy-state-").unwrap()
    )
}

/// What `window.json` holds (or its stored copy on PostgreSQL).
fn window_bytes(env: &TestEnv, dir: &Path) -> Vec<u8> {
    if crate::common::backend() == crate::common::Backend::Postgres {
        return env
            .db()
            .query_row(
                "SELECT body FROM shared_files WHERE kind = 'window' AND key = ?1",
                [window_key(dir)],
                |r| r.get(0),
            )
            .unwrap();
    }
    std::fs::read(dir.join("window.json")).unwrap()
}

/// Replaces what `window.json` holds (or its stored copy on PostgreSQL).
fn put_window(env: &TestEnv, dir: &Path, body: &[u8]) {
    if crate::common::backend() == crate::common::Backend::Postgres {
        env.db()
            .execute(
                "INSERT INTO shared_files (kind, key, body, updated_at) VALUES ('window', ?1, ?2, 0)
                 ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body",
                orch::sql_params![window_key(dir), body.to_vec()],
            )
            .unwrap();
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("window.json"), body).unwrap();
}

fn window_json(env: &TestEnv, dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&window_bytes(env, dir)).unwrap()
}

fn stage(env: &TestEnv, key: &str) -> String {
    env.db()
        .query_row("SELECT stage FROM tasks WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .unwrap()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn log_text(env: &TestEnv, key: &str) -> String {
    std::fs::read_to_string(
        env.path("artefacts")
            .join(key)
            .join("16-post-deploy-log.md"),
    )
    .unwrap()
}

#[test]
fn self_hosting_repo_with_dead_production_only_alerts_every_tick() {
    let marker = tempfile::tempdir().unwrap();
    let touched = marker.path().join("rollback-ran");
    let rollback = format!("[/bin/sh, -c, \"touch {}\"]", touched.display());
    let mut env = with_telegram(&rollback).build();
    deploy_to_done(&env, "orch", ORCH_ITEM, "ORCH-1");
    assert_eq!(window_dirs(&env).len(), 1, "the self-hosting repo is armed");
    for (i, secs) in [60, 120, 180, 240].into_iter().enumerate() {
        let run = tick_at(&mut env, secs, &["--json"]).expect(0);
        assert!(!run.stderr.contains(telegram::TOKEN), "token leaked");
        let r = &run.json()[0];
        assert_eq!(r["classification"], "DEGRADED", "tick {i}");
        assert_eq!(r["decision"], "ALERT_ONLY", "tick {i}");
        assert!(!touched.exists(), "the rollback command ran on tick {i}");
    }
    assert_eq!(stage(&env, "ORCH-1"), "done", "never reopened");
    assert_eq!(env.telegram_messages().len(), 1, "one alert per window");
    assert!(env.telegram_messages()[0].contains("ORCH-1"));
    assert_eq!(
        env.count(
            "SELECT count(*) FROM notifications WHERE sent_at IS NOT NULL AND channel = 'telegram'"
        ),
        1
    );
    let log = log_text(&env, "ORCH-1");
    assert_eq!(log.matches("| ALERT_ONLY |").count(), 4, "{log}");
    assert!(!log.contains("post_deploy_verdict"), "still open: {log}");
    // The window ends; the verdict lands in the frontmatter.
    let closed = tick_json(&mut env, 900);
    assert_eq!(closed[0]["decision"], "CLOSE");
    assert!(log_text(&env, "ORCH-1").contains("post_deploy_verdict: DEGRADED"));
    assert!(!touched.exists());
}

#[test]
fn ordinary_repo_rolls_back_once_even_when_the_tick_is_killed_after_the_action() {
    let prod = Prod::start();
    prod.set_health(503);
    let work = tempfile::tempdir().unwrap();
    let count = work.path().join("rollbacks");
    // The rollback does its work, then SIGKILLs the tick that runs it (its parent):
    // the tick never records the end.
    let rollback = format!(
        "[/bin/sh, -c, \"echo ran >> {}; kill -9 $PPID\"]",
        count.display()
    );
    let health = format!("{}/health", prod.url());
    let mut env = TestEnv::with_pipeline(&pipeline(&health, None, &rollback));
    env.set("ORCH_POST_DEPLOY_REPOS", "shop")
        .set("ORCH_POST_DEPLOY_FAIL_THRESHOLD", "2");
    deploy_to_done(&env, "shop", SHOP_ITEM, "SHOP-1");
    let first = tick_json(&mut env, 60);
    assert_eq!(
        (
            first[0]["classification"].as_str(),
            first[0]["decision"].as_str()
        ),
        (Some("INCONCLUSIVE"), Some("CONTINUE"))
    );
    let killed = tick_at(&mut env, 120, &[]);
    assert_eq!(killed.code, -1, "the tick died by signal: {killed:?}");
    assert_eq!(lines(&count), 1);
    let dir = &window_dirs(&env)[0];
    assert_eq!(window_json(&env, dir)["action"]["state"], "started");
    assert_eq!(stage(&env, "SHOP-1"), "done");
    // The next ticks (same instant, then later) finish the window without running it again.
    let again = tick_json(&mut env, 120);
    assert_eq!(again[0]["decision"], "ROLLBACK");
    assert!(
        again[0]["action"].as_str().unwrap().contains("interrupted"),
        "{again}"
    );
    tick_at(&mut env, 180, &[]).expect(0);
    tick_at(&mut env, 240, &[]).expect(0);
    assert_eq!(lines(&count), 1, "the rollback ran exactly once");
    assert_eq!(stage(&env, "SHOP-1"), "development");
    let (actor, reason): (String, String) = env
        .db()
        .query_row(
            "SELECT actor, reason FROM stage_events ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(actor, "post-deploy");
    assert!(reason.contains("health failure streak 2"), "{reason}");
    let w = window_json(&env, dir);
    assert_eq!(w["verdict"], "DEGRADED");
    assert!(w["closed_at"].is_i64());
    assert!(log_text(&env, "SHOP-1").contains("post_deploy_verdict: DEGRADED"));
    assert_eq!(
        env.count("SELECT count(*) FROM notifications WHERE kind = 'post-deploy-rollback'"),
        1
    );
}

#[test]
fn a_failing_rollback_is_reported_and_not_retried() {
    let prod = Prod::start();
    prod.set_health(500);
    let work = tempfile::tempdir().unwrap();
    let count = work.path().join("rollbacks");
    let rollback = format!(
        "[/bin/sh, -c, \"echo ran >> {}; echo no previous release >&2; exit 3\"]",
        count.display()
    );
    let mut env = TestEnv::with_pipeline(&pipeline(
        &format!("{}/health", prod.url()),
        None,
        &rollback,
    ));
    env.set("ORCH_POST_DEPLOY_REPOS", "acme/shop")
        .set("ORCH_POST_DEPLOY_FAIL_THRESHOLD", "1");
    deploy_to_done(&env, "shop", SHOP_ITEM, "SHOP-2");
    let r = tick_json(&mut env, 60);
    let action = r[0]["action"].as_str().unwrap();
    assert!(action.contains("rollback FAILED (exit 3)"), "{action}");
    assert!(action.contains("task reopened"), "{action}");
    for secs in [120, 180, 240] {
        assert_eq!(tick_json(&mut env, secs), serde_json::json!([]));
    }
    assert_eq!(lines(&count), 1, "not retried in a loop");
    let dir = &window_dirs(&env)[0];
    let out = std::fs::read_to_string(dir.join(format!("rollback-{NOW_UNIX}.out"))).unwrap();
    assert!(out.contains("no previous release"), "output kept: {out}");
}

#[test]
fn a_hanging_rollback_is_killed_reported_and_not_retried() {
    let prod = Prod::start();
    prod.set_health(502);
    let work = tempfile::tempdir().unwrap();
    let count = work.path().join("rollbacks");
    let rollback = format!(
        "[/bin/sh, -c, \"echo ran >> {}; sleep 600\"]",
        count.display()
    );
    let mut env = TestEnv::with_pipeline(&pipeline(
        &format!("{}/health", prod.url()),
        None,
        &rollback,
    ));
    env.set("ORCH_POST_DEPLOY_REPOS", "shop")
        .set("ORCH_POST_DEPLOY_FAIL_THRESHOLD", "1")
        .set("ORCH_POST_DEPLOY_ROLLBACK_TIMEOUT_S", "1");
    deploy_to_done(&env, "shop", SHOP_ITEM, "SHOP-3");
    let r = tick_json(&mut env, 60);
    assert!(
        r[0]["action"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s"),
        "{r}"
    );
    tick_at(&mut env, 120, &[]).expect(0);
    assert_eq!(lines(&count), 1);
    assert_eq!(stage(&env, "SHOP-3"), "development");
}

#[test]
fn a_5xx_ratio_above_the_threshold_rolls_back() {
    let prod = Prod::start();
    let work = tempfile::tempdir().unwrap();
    let count = work.path().join("rollbacks");
    let rollback = format!("[/bin/sh, -c, \"echo ran >> {}\"]", count.display());
    let mut env = TestEnv::with_pipeline(&pipeline(
        &format!("{}/health", prod.url()),
        Some(&format!("{}/metrics", prod.url())),
        &rollback,
    ));
    env.set("ORCH_POST_DEPLOY_REPOS", "shop");
    deploy_to_done(&env, "shop", SHOP_ITEM, "SHOP-4");
    prod.add_traffic(200, 1000);
    assert_eq!(tick_json(&mut env, 60)[0]["decision"], "CONTINUE");
    // 5 of 100 new requests: exactly 5%, not above the threshold.
    prod.add_traffic(200, 95);
    prod.add_traffic(500, 5);
    let r = tick_json(&mut env, 120);
    assert_eq!(r[0]["decision"], "CONTINUE", "{r}");
    prod.add_traffic(503, 50);
    let r = tick_json(&mut env, 180);
    assert_eq!(r[0]["decision"], "ROLLBACK", "{r}");
    assert!(
        r[0]["evidence"].as_str().unwrap().contains("5xx 55/"),
        "{r}"
    );
    assert_eq!(lines(&count), 1);
}

#[test]
fn healthy_production_continues_and_dry_run_changes_nothing() {
    let prod = Prod::start();
    let marker = tempfile::tempdir().unwrap();
    let touched = marker.path().join("rollback-ran");
    let rollback = format!("[/bin/sh, -c, \"touch {}\"]", touched.display());
    let mut env = TestEnv::with_pipeline(&pipeline(
        &format!("{}/health", prod.url()),
        None,
        &rollback,
    ));
    env.set("ORCH_POST_DEPLOY_REPOS", "shop")
        .set("ORCH_POST_DEPLOY_FAIL_THRESHOLD", "1");
    deploy_to_done(&env, "shop", SHOP_ITEM, "SHOP-5");
    let dir = window_dirs(&env)[0].clone();
    assert_eq!(tick_json(&mut env, 60)[0]["decision"], "CONTINUE");
    prod.set_health(503);
    let before = window_bytes(&env, &dir);
    let dry = tick_at(&mut env, 120, &["--dry-run", "--json"])
        .expect(0)
        .json();
    assert_eq!(dry[0]["decision"], "ROLLBACK");
    assert_eq!(window_bytes(&env, &dir), before);
    assert!(!touched.exists());
    assert_eq!(stage(&env, "SHOP-5"), "done");
    assert_eq!(env.count("SELECT count(*) FROM notifications"), 0);
    // status shows the armed window, its time left and latest classification.
    env.set("ORCH_NOW", &at(120));
    let status = env.run(&["status", "--json"]).expect(0).json();
    let w = &status["post_deploy"][0];
    assert_eq!(w["key"], "SHOP-5");
    assert_eq!(w["time_left_s"], 780);
    assert_eq!(w["last_classification"], "INCONCLUSIVE");
    let text = env.run(&["status"]).expect(0).stdout;
    assert!(text.contains("SHOP-5 (acme/shop) until"), "{text}");
}

#[test]
fn a_window_that_expired_while_the_timer_was_stopped_closes_with_its_verdict() {
    let prod = Prod::start();
    let mut env = TestEnv::with_pipeline(&pipeline(
        &format!("{}/health", prod.url()),
        None,
        "[/bin/false]",
    ));
    env.set("ORCH_POST_DEPLOY_REPOS", "shop,orch");
    deploy_to_done(&env, "shop", SHOP_ITEM, "SHOP-6");
    deploy_to_done(&env, "orch", ORCH_ITEM, "ORCH-6");
    for secs in [60, 120, 180] {
        tick_at(&mut env, secs, &[]).expect(0);
    }
    // Production dies while the timer is stopped; the next tick is long after the end:
    // the windows close on what they saw inside them, without probing.
    prod.set_health(503);
    let probes_before = prod.server.count(Some("GET"), "/health");
    let r = tick_json(&mut env, 5000);
    assert_eq!(prod.server.count(Some("GET"), "/health"), probes_before);
    let by_key = |k: &str| {
        r.as_array()
            .unwrap()
            .iter()
            .find(|x| x["key"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(by_key("SHOP-6")["decision"], "CLOSE");
    assert_eq!(by_key("SHOP-6")["classification"], "HEALTHY");
    assert!(log_text(&env, "SHOP-6").contains("post_deploy_verdict: HEALTHY"));
    assert_eq!(by_key("ORCH-6")["classification"], "HEALTHY");
    assert_eq!(tick_json(&mut env, 5060), serde_json::json!([]));
    let status = env.run(&["status", "--json"]).expect(0).json();
    assert_eq!(status["post_deploy"], serde_json::json!([]));
}

#[test]
fn too_few_samples_close_inconclusive() {
    let prod = Prod::start();
    let mut env = TestEnv::with_pipeline(&pipeline(
        &format!("{}/health", prod.url()),
        None,
        "[/bin/false]",
    ));
    deploy_to_done(&env, "orch", ORCH_ITEM, "ORCH-7");
    tick_at(&mut env, 60, &[]).expect(0);
    let r = tick_json(&mut env, 901);
    assert_eq!(r[0]["classification"], "INCONCLUSIVE");
    assert!(log_text(&env, "ORCH-7").contains("post_deploy_verdict: INCONCLUSIVE"));
}

#[test]
fn arming_follows_the_switch_and_the_repo_list() {
    let cases: &[(Option<&str>, &str, &str, bool)] = &[
        // (ORCH_POST_DEPLOY_ENABLED, ORCH_POST_DEPLOY_REPOS, project, armed)
        // The default (empty list): every project with a health_url.
        (None, "", "orch", true),
        (None, "", "shop", true),
        (None, "", "blog", false),
        (None, "blog", "blog", true),
        (Some("false"), "", "orch", false),
        (Some("false"), "shop", "shop", false),
        (None, "shop", "shop", true),
        (None, "acme/shop", "shop", true),
        (None, "other, acme/shop", "shop", true),
        (None, "shop", "orch", false),
        (None, "nope,acme/nope", "shop", false),
    ];
    for (enabled, repos, project, armed) in cases {
        let mut env = TestEnv::with_pipeline(&pipeline(&dead_url(), None, "[/bin/false]"));
        if let Some(e) = enabled {
            env.set("ORCH_POST_DEPLOY_ENABLED", e);
        }
        env.set("ORCH_POST_DEPLOY_REPOS", repos);
        let item = match *project {
            "orch" => ORCH_ITEM,
            "blog" => BLOG_ITEM,
            _ => SHOP_ITEM,
        };
        deploy_to_done(&env, project, item, "K-1");
        assert_eq!(
            window_dirs(&env).len(),
            usize::from(*armed),
            "{enabled:?} {repos:?} {project}"
        );
    }
    // A task whose project left the pipeline file is not armed.
    let env = TestEnv::with_pipeline(&pipeline(&dead_url(), None, "[/bin/false]"));
    env.run(&["init"]).expect(0);
    let ghost = Project::new(
        "ghost",
        "0000dead-0000-4000-8000-000000000000",
        "GHOST",
        "acme/ghost",
    );
    let task = SeedTask::new(&ghost, 1, Stage::Deploy)
        .work_item("w-1")
        .branch("b");
    seed_task(&env, &task.at(0));
    env.run(&["task", "move", "GHOST-1", "--to", "done", "--reason", "t"])
        .expect(0);
    assert!(window_dirs(&env).is_empty());
}

#[test]
fn arming_by_hand_and_twice_is_harmless() {
    let mut env = TestEnv::with_pipeline(&pipeline(&dead_url(), None, "[/bin/false]"));
    env.set("ORCH_POST_DEPLOY_REPOS", "orch");
    deploy_to_done(&env, "shop", SHOP_ITEM, "SHOP-8");
    assert!(window_dirs(&env).is_empty(), "shop is not in the list");
    let run = env
        .run(&["post-deploy-tick", "--arm", "--task", "SHOP-8"])
        .expect(0);
    assert!(run.stdout.contains("armed until"), "{}", run.stdout);
    let dir = window_dirs(&env)[0].clone();
    let first = window_bytes(&env, &dir);
    env.set("ORCH_NOW", &at(30));
    let again = env
        .run(&["post-deploy-tick", "--arm", "--task", "SHOP-8", "--json"])
        .expect(0)
        .json();
    assert_eq!(again["outcome"], "already-armed");
    assert_eq!(window_bytes(&env, &dir), first);
    env.run(&[
        "task",
        "add",
        "--project",
        "shop",
        "--work-item",
        "w-9",
        "--key",
        "SHOP-9",
    ])
    .expect(0);
    let refused = env
        .run(&["post-deploy-tick", "--arm", "--task", "SHOP-9"])
        .expect(1);
    assert!(refused.stdout.contains("not done"), "{}", refused.stdout);
    env.run(&["post-deploy-tick", "--arm", "--task", "NOPE-1"])
        .expect(2);
    env.run(&["post-deploy-tick", "--task", "SHOP-8"]).expect(2);
}

#[test]
fn hostile_repo_and_work_item_names_stay_inside_the_state_dir() {
    let mut env = TestEnv::with_pipeline(&pipeline(&dead_url(), None, "[/bin/false]"));
    env.run(&["init"]).expect(0);
    let long = "y".repeat(4000);
    // PostgreSQL's text holds no NUL byte: there the store refuses such an id outright.
    let nul = if crate::common::sqlite_only() {
        "nul\0byte"
    } else {
        "nul byte"
    };
    let hostile = [
        ("../../../escaped", "../../../escaped"),
        ("/tmp/abs", "a/b/../../.."),
        ("..", nul),
        (long.as_str(), long.as_str()),
    ];
    for (i, (repo, item)) in hostile.iter().enumerate() {
        let mut task = SeedTask::new(&Project::orch(), 100 + i as u64, Stage::Deploy)
            .work_item(item)
            .branch("b")
            .at(0);
        task.repo = repo.to_string();
        seed_task(&env, &task);
        env.run(&[
            "task",
            "move",
            &format!("ORCH-{}", 100 + i),
            "--to",
            "done",
            "--reason",
            "t",
        ])
        .expect(0);
    }
    tick_at(&mut env, 60, &[]).expect(0);
    let dirs = window_dirs(&env);
    assert_eq!(dirs.len(), hostile.len());
    for d in &dirs {
        assert!(d.starts_with(env.path("state")), "{d:?}");
    }
    let mut top: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        vec![
            "artefacts",
            "orch.db",
            "orch.db-shm",
            "orch.db-wal",
            "orch.yaml",
            "state"
        ]
        .into_iter()
        .filter(|n| env.path(n).exists())
        .collect::<Vec<_>>()
    );
    assert!(!env.dir.path().parent().unwrap().join("escaped").exists());
    assert!(!Path::new("/tmp/abs").exists());
}

#[test]
fn a_second_tick_while_one_runs_exits_75() {
    let env = TestEnv::new();
    let lock = env.path("state/locks/post-deploy-tick.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&lock).unwrap();
    file.lock().unwrap();
    let busy = env.run(&["post-deploy-tick"]).expect(75);
    assert!(
        busy.stderr.contains("another post-deploy-tick pass"),
        "{}",
        busy.stderr
    );
    file.unlock().unwrap();
    env.run(&["post-deploy-tick"]).expect(0);
}

#[test]
fn a_refused_telegram_delivery_is_recorded_once_without_the_token() {
    let mut env = with_telegram("[/bin/false]")
        .set("ORCH_TELEGRAM_BOT_TOKEN", "999:wrong-secret-token")
        .build();
    deploy_to_done(&env, "orch", ORCH_ITEM, "ORCH-9");
    for secs in [60, 120] {
        let run = tick_at(&mut env, secs, &["--json"]).expect(0);
        assert!(!run.stderr.contains("wrong-secret-token"), "{}", run.stderr);
        assert!(!run.stdout.contains("wrong-secret-token"), "{}", run.stdout);
    }
    let posts = env.telegram().count(Some("POST"), "/bot");
    assert_eq!(posts, 1, "not retried every tick");
    let (sent, error): (Option<i64>, Option<String>) = env
        .db()
        .query_row("SELECT sent_at, error FROM notifications", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(sent, None);
    assert!(error.unwrap().contains("HTTP 401"));
}

#[test]
fn an_unreadable_window_is_shown_by_status_and_fails_the_tick() {
    let mut env = TestEnv::with_pipeline(&pipeline(&dead_url(), None, "[/bin/false]"));
    deploy_to_done(&env, "shop", SHOP_ITEM, "SHOP-8");
    env.run(&["post-deploy-tick", "--arm", "--task", "SHOP-8"])
        .expect(0);
    let dir = window_dirs(&env)[0].clone();
    put_window(&env, &dir, b"{ not json");
    let status = env.run(&["status", "--json"]).expect(0).json();
    let windows = status["post_deploy"].as_array().unwrap();
    assert_eq!(windows.len(), 1, "{status}");
    assert!(
        windows[0]["last_classification"]
            .as_str()
            .unwrap()
            .starts_with("UNREADABLE"),
        "{status}"
    );
    tick_at(&mut env, 60, &[]);
    let status = env.run(&["status", "--json"]).expect(0).json();
    let pass = status["passes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["command"] == "post-deploy-tick")
        .unwrap()
        .clone();
    assert_eq!(pass["outcome"], "error", "{pass}");
}

#[test]
fn the_tick_text_report_names_each_window_and_its_decision() {
    let shop = Project::shop().with("health_url: $PROD_URL/health\nrollback: [/bin/true]");
    let mut env = TestEnv::builder()
        .project(shop)
        .standins(&[Standin::Prod])
        .set("ORCH_POST_DEPLOY_REPOS", "shop")
        .set("ORCH_POST_DEPLOY_FAIL_THRESHOLD", "1")
        .build();
    deploy_to_done(&env, "shop", SHOP_ITEM, "SHOP-5");
    let healthy = tick_at(&mut env, 60, &[]);
    insta::assert_snapshot!(snapshot::report(&env, &healthy), @r#"
    exit: 0
    SHOP-5 acme/shop INCONCLUSIVE CONTINUE (14m00s left): - [INCONCLUSIVE: health failure streak 0 (threshold 1), 5xx n/a (no requests counted), 1 samples (minimum 3)]
    "#);
    env.prod().set_health(503);
    let failing = tick_at(&mut env, 120, &["--dry-run"]);
    insta::assert_snapshot!(snapshot::report(&env, &failing), @r#"
    exit: 0
    SHOP-5 acme/shop DEGRADED ROLLBACK (13m00s left): dry run: nothing done [DEGRADED: health failure streak 1 (threshold 1), 5xx n/a (no requests counted), 2 samples (minimum 3)]
    "#);
}

/// The number of samples a window holds.
fn samples(env: &TestEnv, dir: &Path) -> usize {
    window_json(env, dir)["samples"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn a_clock_stepping_back_neither_stalls_nor_storms_probes_and_dead_temps_go() {
    let prod = Prod::start();
    let mut env = TestEnv::with_pipeline(&pipeline(
        &format!("{}/health", prod.url()),
        None,
        "[/bin/true]",
    ));
    env.set("ORCH_POST_DEPLOY_REPOS", "shop");
    deploy_to_done(&env, "shop", SHOP_ITEM, "SHOP-5");
    let dir = window_dirs(&env)[0].clone();
    // What a tick killed between creating and renaming its temporary file leaves.
    let left = dir.join(".window.json.tmp.99999999");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&left, b"{").unwrap();
    tick_at(&mut env, 120, &[]).expect(0);
    assert_eq!(samples(&env, &dir), 1);
    assert!(
        !left.exists(),
        "the next tick removes a dead writer's temp file"
    );
    // The clock steps back 100 s: probed now, not paused until it catches up ...
    tick_at(&mut env, 20, &[]).expect(0);
    assert_eq!(
        samples(&env, &dir),
        2,
        "a backwards step does not pause probing"
    );
    // ... and ticks after it keep the half-interval spacing (no storm).
    tick_at(&mut env, 21, &[]).expect(0);
    tick_at(&mut env, 40, &[]).expect(0);
    assert_eq!(
        samples(&env, &dir),
        2,
        "not due again within half an interval"
    );
    tick_at(&mut env, 50, &[]).expect(0);
    assert_eq!(samples(&env, &dir), 3);
}

#[test]
fn fifteen_hundred_armed_windows_are_all_probed_over_successive_ticks() {
    const ARMED: usize = 1500;
    let prod = Prod::start();
    let mut env = TestEnv::with_pipeline(&pipeline(
        &format!("{}/health", prod.url()),
        None,
        "[/bin/true]",
    ));
    env.set("ORCH_POST_DEPLOY_REPOS", "shop");
    deploy_to_done(&env, "shop", SHOP_ITEM, "SHOP-5");
    // One real window as the template of 1,499 more, each under its own work item.
    let template = window_json(&env, &window_dirs(&env)[0]);
    let state = env.path("state");
    for n in 1..ARMED {
        let item = format!("5a5a5a5a-0000-4000-8000-{n:012x}");
        let mut w = template.clone();
        w["work_item"] = serde_json::Value::String(item.clone());
        let dir = orch::adapters::windows::window_dir(&state, "acme/shop", &item).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        put_window(&env, &dir, &serde_json::to_vec(&w).unwrap());
    }
    assert_eq!(window_dirs(&env).len(), ARMED);
    let health = || prod.server.count(Some("GET"), "/health");
    let before = health();
    // A tick a minute, 200 windows a tick: 8 ticks reach every one of 1,500.
    let mut ticks = 0;
    for minute in 1..=8 {
        ticks += 1;
        let r = tick_at(&mut env, 60 * minute, &["--json"]).expect(0).json();
        assert_eq!(r.as_array().unwrap().len(), 200, "the cap a tick");
    }
    let never: Vec<_> = window_dirs(&env)
        .into_iter()
        .filter(|d| samples(&env, d) == 0)
        .collect();
    assert!(never.is_empty(), "{} windows never probed", never.len());
    assert_eq!(health() - before, 200 * ticks, "one probe a window a tick");
}
