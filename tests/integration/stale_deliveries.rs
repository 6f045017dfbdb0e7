//! Stale and out-of-order Plane deliveries (issue 13): a delivery older than an update
//! orch already knows of the same work item is stored, answered 200, acts on nothing
//! and is recorded `stale` with both times; reconcile's replays obey the same rule.
//! The real binary, a real SQLite file, the loopback Plane and Gitea stand-ins.

use orch::core::intake::sign;
use serde_json::{json, Value};

use super::webhook::{post, stdio};
use crate::common::{Project, Run, Standin, TestEnv, PLANE_STATES, WEBHOOK_SECRET};

const ORCH_PROJECT: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";
const STATES: &str =
    "states:\n  approved: { names: [Approved] }\n  rejected: { names: [Rejected] }";
/// Three times of one work item, oldest first, as Plane writes them (microseconds, and
/// none at all when they are zero).
const T1: &str = "2026-05-19T10:00:00.000001Z";
const T2: &str = "2026-05-19T10:05:00.500000Z";
const T3: &str = "2026-05-19T10:10:00Z";

fn world() -> TestEnv {
    TestEnv::builder()
        .project(Project::orch().self_hosting(false).with(STATES))
        .standins(&[Standin::Gitea, Standin::Plane])
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_HTTP_TIMEOUT_S", "5")
        .build()
}

fn item_id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn in_progress() -> Value {
    let (id, name, group) = PLANE_STATES[0];
    json!({"id": id, "name": name, "color": "#000000", "group": group})
}

fn named(n: u32, name: &str, group: &str) -> Value {
    json!({"id": format!("dddddddd-0000-4000-8000-{n:012}"), "name": name, "color": "#000000", "group": group})
}

fn approved() -> Value {
    named(1, "Approved", "started")
}

fn rejected() -> Value {
    named(2, "Rejected", "unstarted")
}

fn done() -> Value {
    named(3, "Done", "completed")
}

/// A delivery of work item `n` changing `field`, its state after the change `state`,
/// with `data.updated_at` = `updated_at` (`Value::Null`: left out).
fn delivery(n: u32, state: Value, field: &str, updated_at: Value) -> Vec<u8> {
    let mut data = json!({
        "id": item_id(n),
        "name": format!("Work item {n}"),
        "sequence_id": n,
        "project": ORCH_PROJECT,
        "state": state,
        "created_at": "2026-05-18T08:02:11.481235Z",
    });
    if !updated_at.is_null() {
        data["updated_at"] = updated_at;
    }
    let new_value = state_id(&data["state"]);
    serde_json::to_vec(&json!({
        "event": "issue",
        "action": "updated",
        "webhook_id": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e03",
        "workspace_id": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e01",
        "data": data,
        "activity": {"field": field, "new_value": new_value, "old_value": null,
                     "old_identifier": null, "new_identifier": null},
    }))
    .unwrap()
}

fn state_id(state: &Value) -> Value {
    match state {
        Value::Object(o) => o["id"].clone(),
        other => other.clone(),
    }
}

/// Delivers `body` over `--stdio`; returns the run and the HTTP status.
fn deliver(env: &TestEnv, body: &[u8], id: &str) -> (Run, u16) {
    let sig = sign(WEBHOOK_SECRET, body);
    stdio(
        env,
        &post(
            body,
            &[("X-Plane-Signature", &sig), ("X-Plane-Delivery", id)],
        ),
    )
}

/// Delivers `body` and expects 200 and exit 0; returns the stored outcome and detail.
fn send(env: &TestEnv, body: &[u8], id: &str) -> (String, String) {
    let (run, status) = deliver(env, body, id);
    assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    last_outcome(env)
}

fn last_outcome(env: &TestEnv) -> (String, String) {
    env.db()
        .query_row(
            "SELECT outcome, coalesce(detail, '') FROM deliveries ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

fn stage_of(env: &TestEnv, n: u32) -> String {
    env.db()
        .query_row(
            "SELECT stage FROM tasks WHERE work_item_id = ?1",
            [item_id(n)],
            |r| r.get(0),
        )
        .unwrap()
}

fn jobs_of(env: &TestEnv, n: u32, agent: &str) -> i64 {
    env.db()
        .query_row(
            "SELECT count(*) FROM jobs JOIN tasks ON tasks.id = jobs.task_id
             WHERE tasks.work_item_id = ?1 AND jobs.agent = ?2",
            [item_id(n), agent.to_string()],
            |r| r.get(0),
        )
        .unwrap()
}

fn finish_jobs(env: &TestEnv) {
    env.db()
        .execute("UPDATE jobs SET status = 'succeeded'", [])
        .unwrap();
}

#[test]
fn a_stale_start_after_the_item_moved_on_creates_nothing() {
    let env = world();
    // The item went In Progress at T1, then Done at T2; Plane's retry brings the start
    // last.
    let (o, _) = send(&env, &delivery(1, done(), "state_id", json!(T2)), "d-done");
    assert_eq!(o, "no pipeline action");
    let (run, status) = deliver(
        &env,
        &delivery(1, in_progress(), "state_id", json!(T1)),
        "d-start",
    );
    assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    assert!(run.stderr.contains("outcome=\"stale\""), "{}", run.stderr);
    let (o, detail) = last_outcome(&env);
    assert_eq!(o, "stale");
    assert!(
        detail.contains(T1) && detail.contains(T2) && detail.contains("delivery 1"),
        "{detail}"
    );
    assert_eq!(env.count("SELECT count(*) FROM tasks"), 0, "no task");
    assert_eq!(env.count("SELECT count(*) FROM jobs"), 0, "no job");
    assert_eq!(
        env.gitea().count(Some("POST"), "acme/orch", "branches"),
        0,
        "no branch"
    );
    // `status` shows it, and the same start replayed by hand is still stale.
    env.run(&["status"])
        .expect(0)
        .stdout_has("deliveries: pending 0, stale 1");
    let body = delivery(1, in_progress(), "state_id", json!(T1));
    std::fs::write(env.path("start.json"), &body).unwrap();
    let sig = format!("X-Plane-Signature: {}", sign(WEBHOOK_SECRET, &body));
    env.run(&["webhook-handle", "--body", "start.json", "--header", &sig])
        .expect(0)
        .stdout_has("duplicate");
    assert_eq!(env.count("SELECT count(*) FROM tasks"), 0);
}

#[test]
fn approved_and_rejected_out_of_order_do_not_move_the_task() {
    let env = world();
    // Rejected at T3, then the older approval (T2) arrives: the task stays at analysis.
    assert_eq!(
        send(
            &env,
            &delivery(2, in_progress(), "state_id", json!(T1)),
            "a1"
        )
        .0,
        "started"
    );
    finish_jobs(&env);
    assert_eq!(
        send(&env, &delivery(2, rejected(), "state_id", json!(T3)), "a2").0,
        "rejected"
    );
    let (o, detail) = send(&env, &delivery(2, approved(), "state_id", json!(T2)), "a3");
    assert_eq!(o, "stale", "{detail}");
    assert!(detail.contains(T2) && detail.contains(T3), "{detail}");
    assert_eq!(stage_of(&env, 2), "analysis");
    assert_eq!(jobs_of(&env, 2, "developer"), 0);
    assert_eq!(jobs_of(&env, 2, "analyst"), 2);

    // Approved at T3, then the older rejection (T2): no analyst job is queued again.
    assert_eq!(
        send(
            &env,
            &delivery(3, in_progress(), "state_id", json!(T1)),
            "b1"
        )
        .0,
        "started"
    );
    finish_jobs(&env);
    assert_eq!(
        send(&env, &delivery(3, approved(), "state_id", json!(T3)), "b2").0,
        "approved"
    );
    finish_jobs(&env);
    let (o, detail) = send(&env, &delivery(3, rejected(), "state_id", json!(T2)), "b3");
    assert_eq!(o, "stale", "{detail}");
    assert_eq!(stage_of(&env, 3), "development");
    assert_eq!(jobs_of(&env, 3, "analyst"), 1);
}

#[test]
fn equal_times_are_never_stale() {
    let env = world();
    // Plane sends one delivery per changed field, all with the same updated_at: the
    // priority change arriving first does not make the state change stale.
    let (o, _) = send(
        &env,
        &delivery(4, in_progress(), "priority", json!(T1)),
        "e1",
    );
    assert_eq!(o, "no pipeline action");
    assert_eq!(
        send(
            &env,
            &delivery(4, in_progress(), "state_id", json!(T1)),
            "e2"
        )
        .0,
        "started"
    );
    finish_jobs(&env);
    // The same instant written with another offset is equal too.
    let same = "2026-05-19T12:00:00.000001+02:00";
    assert_eq!(
        send(
            &env,
            &delivery(4, approved(), "state_id", json!(same)),
            "e3"
        )
        .0,
        "approved"
    );
    assert_eq!(stage_of(&env, 4), "development");
}

#[test]
fn a_bad_or_missing_updated_at_is_acted_on_as_unknown() {
    let env = world();
    send(&env, &delivery(5, done(), "state_id", json!(T2)), "u1");
    // Not a time: cannot be ordered, so it is acted on (a real change is never dropped
    // for a malformed field) and logged; it does not lower or replace what is known.
    let (run, status) = deliver(
        &env,
        &delivery(5, in_progress(), "state_id", json!("yesterday")),
        "u2",
    );
    assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    assert!(run.stderr.contains("cannot tell whether"), "{}", run.stderr);
    assert_eq!(last_outcome(&env).0, "started");
    let newest: String = env
        .db()
        .query_row(
            "SELECT updated_at FROM work_item_updates WHERE work_item_id = ?1",
            [item_id(5)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(newest, T2);
    // Missing altogether: the same.
    finish_jobs(&env);
    assert_eq!(
        send(
            &env,
            &delivery(5, approved(), "state_id", Value::Null),
            "u3"
        )
        .0,
        "approved"
    );
}

#[test]
fn reconcile_replays_obey_the_same_rule() {
    let mut env = world();
    let plane_url = env.plane().url().to_string();
    // A start stored while Plane is down (a bare state id cannot be resolved): pending.
    env.set("ORCH_PLANE_URL", "http://127.0.0.1:9");
    let (run, status) = deliver(
        &env,
        &delivery(6, json!(PLANE_STATES[0].0), "state_id", json!(T1)),
        "r1",
    );
    assert_eq!((status, run.code), (200, 2), "{}", run.stderr);
    assert_eq!(last_outcome(&env).0, "pending");
    // A newer update of the same item arrives and is stored.
    send(&env, &delivery(6, done(), "state_id", json!(T2)), "r2");
    env.set("ORCH_PLANE_URL", &plane_url);
    // Listed In Progress at the stand-in's seeded time (2026-05-01), older than a
    // delivery of the same item; and a second item listed with nothing newer known.
    env.plane()
        .add_work_item(
            ORCH_PROJECT,
            &item_id(7),
            7,
            "Seven",
            Some(PLANE_STATES[0].0),
        )
        .add_work_item(
            ORCH_PROJECT,
            &item_id(8),
            8,
            "Eight",
            Some(PLANE_STATES[0].0),
        );
    send(
        &env,
        &delivery(7, in_progress(), "priority", json!(T1)),
        "r3",
    );

    let report = env.run(&["reconcile", "--json"]).expect(0).json();
    assert_eq!(report["counts"]["stale"], 2, "{report:#}");
    assert_eq!(report["counts"]["replayed"], 1, "{report:#}");
    let outcome: String = env
        .db()
        .query_row("SELECT outcome FROM deliveries WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(outcome, "stale");
    let tasks: Vec<String> = {
        let db = env.db();
        let mut stmt = db.prepare("SELECT work_item_id FROM tasks").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(
        tasks,
        vec![item_id(8)],
        "only the item nothing newer is known of"
    );
    let lines = report["replays"].to_string();
    assert!(
        lines.contains("stale: listed at 2026-05-01T09:00:00.100000Z"),
        "{lines}"
    );
}
