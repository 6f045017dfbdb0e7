//! Priority (issue 16): the Plane work item's priority recorded at start (a webhook
//! delivery through `webhook-handle`), refreshed by `reconcile` from the listing it
//! already reads, and the order `dispatch` starts jobs in; bad values from Plane are
//! `none` with a warning. The real binary, a real SQLite file, the loopback stand-ins.

use orch::core::stage::Stage;
use serde_json::{json, Value};

use crate::common::{seed_task, Project, SeedTask, Standin, TestEnv, NOW_UNIX, PLANE_STATES};
use crate::jobs::{fake_systemctl, pipeline, seed};
use crate::webhook::{delivery, signed, state, stdio, world, IN_PROGRESS, ORCH_PROJECT};

/// A start delivery of orch work item `n` whose `data.priority` is `priority` (`None`:
/// the field left out, as `delivery` writes it).
fn start_with(n: u32, priority: Option<Value>) -> Vec<u8> {
    let body = delivery(
        ORCH_PROJECT,
        n,
        n,
        state(IN_PROGRESS, "In Progress", "started"),
        "state_id",
    );
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    if let Some(p) = priority {
        v["data"]["priority"] = p;
    }
    signed(&serde_json::to_vec(&v).unwrap(), &format!("d-{n}"))
}

fn at(secs_after_now: i64) -> String {
    jiff::Timestamp::from_second(NOW_UNIX + secs_after_now)
        .unwrap()
        .to_string()
}

fn analyst_job(env: &TestEnv, key: &str) -> i64 {
    env.count(&format!(
        "SELECT j.id FROM jobs j JOIN tasks t ON t.id = j.task_id
         WHERE t.key = '{key}' AND j.agent = 'analyst'"
    ))
}

fn priority_of(env: &TestEnv, key: &str) -> String {
    env.db()
        .query_row("SELECT priority FROM tasks WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .unwrap()
}

#[test]
fn an_urgent_job_starts_before_an_older_low_one() {
    let mut w = world();
    // The low work item starts an hour before the urgent one.
    w.env.set("ORCH_NOW", &at(-3600));
    let (run, status) = stdio(&w.env, &start_with(1, Some(json!("low"))));
    assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    w.env.set("ORCH_NOW", &at(0));
    let (run, status) = stdio(&w.env, &start_with(2, Some(json!("urgent"))));
    assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    assert!(!run.stderr.contains("taken as none"), "{}", run.stderr);
    assert_eq!(priority_of(&w.env, "ORCH-1"), "low");
    assert_eq!(priority_of(&w.env, "ORCH-2"), "urgent");
    let (low, urgent) = (analyst_job(&w.env, "ORCH-1"), analyst_job(&w.env, "ORCH-2"));
    assert!(low < urgent, "the low job is the older one");

    w.env.set("ORCH_MAX_CONCURRENCY", "1");
    let dry = w.env.run(&["dispatch", "--dry-run"]).expect(0).stdout;
    assert!(
        dry.contains(&format!("job {urgent} (orch): would start")),
        "{dry}"
    );
    // One free slot: dispatch read only orch's head, and that was the urgent job.
    assert!(
        dry.contains("1 more queued jobs wait: no free slot"),
        "{dry}"
    );
    assert!(!dry.contains(&format!("job {low} ")), "{dry}");
    let calls = fake_systemctl(&mut w.env, 0);
    w.env.run(&["dispatch"]).expect(0);
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        format!("start orch-job@{urgent}.service\n"),
        "only the urgent job started"
    );
    let status = w.env.run(&["status"]).expect(0).stdout;
    assert!(
        status.contains(&format!("job {urgent} ORCH-2 [urgent] analyst")),
        "{status}"
    );
    let show = w.env.run(&["task", "show", "ORCH-1"]).expect(0).stdout;
    assert!(show.contains("priority low"), "{show}");
    let json = w.env.run(&["task", "show", "ORCH-2", "--json"]).json();
    assert_eq!(json["priority"], "urgent", "{json:#}");
}

#[test]
fn a_bad_or_missing_priority_in_a_delivery_is_none_with_a_warning() {
    let w = world();
    let cases: [(u32, Option<Value>, &str); 3] = [
        (1, Some(json!("critical")), "unknown priority \"critical\""),
        (2, Some(json!(3)), "priority 3 is not a string"),
        (3, None, "no priority field"),
    ];
    for (n, priority, warning) in cases {
        let (run, status) = stdio(&w.env, &start_with(n, priority));
        assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
        assert!(run.stderr.contains(warning), "{n}: {}", run.stderr);
        assert!(run.stderr.contains("taken as none"), "{}", run.stderr);
        assert_eq!(priority_of(&w.env, &format!("ORCH-{n}")), "none");
        assert_eq!(
            w.env.count(&format!(
                "SELECT count(*) FROM jobs j JOIN tasks t ON t.id = j.task_id
                 WHERE t.key = 'ORCH-{n}' AND j.status = 'queued'"
            )),
            1,
            "the start went through"
        );
    }
}

#[test]
fn reconcile_refreshes_the_priority_from_its_listing_with_no_extra_request() {
    let env = TestEnv::builder()
        .project(Project::shop())
        .standins(&[Standin::Gitea, Standin::Plane])
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_HTTP_TIMEOUT_S", "5")
        .build();
    let shop = env.project("shop");
    let pid = shop.plane_project_id;
    let item = "00000000-0000-4000-8000-0000000000a1";
    let t = seed_task(
        &env,
        &SeedTask::new(shop, 1, Stage::Development)
            .work_item(item)
            .branch_ready()
            .plane_state(PLANE_STATES[0].0)
            .keep_job(),
    );
    let rank = || {
        env.count(&format!(
            "SELECT priority_rank FROM jobs WHERE task_id = {t} AND status = 'queued'"
        ))
    };
    assert_eq!((priority_of(&env, "SHOP-1"), rank()), ("none".into(), 4));
    let pass = |want_priorities: i64| {
        let before = env.plane().count(None, "");
        let run = env.run(&["reconcile", "--json"]).expect(0);
        let r = run.json();
        assert_eq!(r["counts"]["priorities"], want_priorities, "{r:#}");
        (env.plane().count(None, "") - before, run.stderr)
    };
    let (steady, _) = pass(0);

    env.plane()
        .set_item_priority(pid, item, Some(json!("high")));
    let (requests, stderr) = pass(1);
    assert_eq!(requests, steady, "the refresh costs no request");
    assert!(
        stderr.contains("task SHOP-1: priority none -> high"),
        "{stderr}"
    );
    assert_eq!((priority_of(&env, "SHOP-1"), rank()), ("high".into(), 1));
    pass(0);

    // A value Plane never sends, then no field at all: none, with a warning, and the
    // pass goes on.
    for (bad, warning) in [
        (Some(json!("HIGH")), "unknown priority \"HIGH\""),
        (None, "no priority field"),
    ] {
        env.plane().set_item_priority(pid, item, bad);
        let (_, stderr) = pass(i64::from(priority_of(&env, "SHOP-1") != "none"));
        assert!(stderr.contains(warning), "{stderr}");
        assert_eq!((priority_of(&env, "SHOP-1"), rank()), ("none".into(), 4));
    }

    // A dry run says nothing changes and writes nothing.
    env.plane()
        .set_item_priority(pid, item, Some(json!("urgent")));
    let r = env
        .run(&["reconcile", "--dry-run", "--json"])
        .expect(0)
        .json();
    assert_eq!(r["counts"]["priorities"], 0, "{r:#}");
    assert_eq!(priority_of(&env, "SHOP-1"), "none");
}

#[test]
fn fairness_across_projects_still_holds_with_priorities() {
    let mut env = TestEnv::with_pipeline(&pipeline(""));
    env.set("ORCH_MAX_CONCURRENCY", "2");
    let calls = fake_systemctl(&mut env, 0);
    // orch: three jobs, the youngest urgent; shop: one low job, younger than them all.
    let orch = seed(&env, "orch", 3, "development", "queued");
    let shop = seed(&env, "shop", 1, "development", "queued");
    let set = |job: i64, p: &str| {
        env.db()
            .execute(
                "UPDATE tasks SET priority = ?2 WHERE id = (SELECT task_id FROM jobs WHERE id = ?1)",
                orch::sql_params![job, p],
            )
            .unwrap();
    };
    set(orch[2], "urgent");
    set(shop[0], "low");
    env.run(&["dispatch"]).expect(0);
    // One slot each: orch's urgent job (before its older ones), and shop's low job
    // (before orch's older ones: a project with nothing running goes first).
    let mut started: Vec<String> = std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    started.sort();
    let mut want = vec![
        format!("start orch-job@{}.service", orch[2]),
        format!("start orch-job@{}.service", shop[0]),
    ];
    want.sort();
    assert_eq!(started, want);
    // The next slot goes to orch's oldest (none, the rest in age order).
    env.set("ORCH_MAX_CONCURRENCY", "3");
    env.run(&["dispatch"]).expect(0);
    let last = std::fs::read_to_string(&calls).unwrap();
    assert!(
        last.ends_with(&format!("start orch-job@{}.service\n", orch[0])),
        "{last}"
    );
}
