//! Leases across hosts (PostgreSQL): the merge lease row and the rows of the passes that
//! run once (reconcile, post-deploy-tick), with real processes on several "hosts" (each
//! its own `ORCH_HOST_ID` and state dir, one database). SQLite keeps its file locks
//! (tests/integration/merge_guard.rs, reconcile.rs), so these return early there.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orch::standin::server::Gate;

use crate::common::{Project, Run, Standin, TestEnv, NOW_UNIX};
use crate::merge_guard::{env_with_task, gitea, HEAD, REPO};

/// A command on "host" `host`: its own host id and state dir, the env's database.
fn on_host(env: &TestEnv, host: usize, args: &[&str]) -> Command {
    let mut cmd = env.command(args);
    cmd.env("ORCH_HOST_ID", format!("host-{host}"))
        .env("ORCH_STATE_DIR", env.path(&format!("host{host}/state")));
    cmd
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn orch")
}

fn run(mut cmd: Command) -> Run {
    cmd.output().expect("run orch").into()
}

/// The lease row `name`: holder, generation, expires_at, released_at.
fn lease(env: &TestEnv, name: &str) -> (String, i64, i64, Option<i64>) {
    env.db()
        .query_row(
            "SELECT holder, generation, expires_at, released_at FROM leases WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("the lease row")
}

fn at(offset_s: i64) -> String {
    jiff::Timestamp::from_second(NOW_UNIX + offset_s)
        .unwrap()
        .to_string()
}

/// An env whose reconcile pass calls the Plane stand-in.
fn reconcile_env() -> TestEnv {
    TestEnv::builder()
        .project(Project::shop())
        .standins(&[Standin::Gitea, Standin::Plane, Standin::Telegram])
        .set("ORCH_PASS_LEASE_TTL_S", "100")
        .build()
}

/// Starts a reconcile on `host` and returns it once it is paused mid-pass (its first
/// Plane call held by `gate`): it holds the pass lease then.
fn paused_reconcile(env: &TestEnv, host: usize, gate: &Gate) -> Child {
    // Arrivals of earlier runs are not this one's.
    while env.plane().server().next_arrival(Duration::ZERO).is_some() {}
    env.plane().server().hold(Some("GET"), "/", gate, 1);
    let child = spawn(on_host(env, host, &["reconcile"]));
    env.plane()
        .server()
        .next_arrival(Duration::from_secs(60))
        .expect("the first reconcile calls Plane");
    child
}

#[test]
fn ten_guards_on_three_hosts_merge_exactly_once() {
    if crate::common::sqlite_only() {
        return;
    }
    let g = gitea();
    let mut env = env_with_task(&g, Some(HEAD), Some(7));
    env.set("ORCH_MERGE_LEASE_WAIT_S", "120");
    let children: Vec<Child> = (0..10)
        .map(|i| {
            spawn(on_host(
                &env,
                i % 3,
                &["merge-guard", "--task", "SHOP-1", "--merge"],
            ))
        })
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().into())
        .collect();
    for r in &runs {
        assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    assert_eq!(g.merge_calls(REPO, 7), 1, "exactly one merge call");
    let merged_now = runs
        .iter()
        .filter(|r| r.stdout.contains(" MERGED "))
        .count();
    assert_eq!(
        merged_now, 1,
        "one guard merged, the others found it merged"
    );
    // Every take raised the generation once, and the last holder released it.
    let takes = runs
        .iter()
        .filter(|r| r.stderr.contains("merge lease taken"))
        .count();
    let (_, generation, _, released) = lease(&env, "merge");
    assert_eq!(usize::try_from(generation).unwrap(), takes);
    assert!(released.is_some(), "released");
    for host in 0..3 {
        assert!(
            !env.path(&format!("host{host}/state/merge-lease.json"))
                .exists(),
            "no lease file under PostgreSQL"
        );
    }
}

#[test]
fn two_hosts_reconciling_at_once_one_runs_the_other_exits_75() {
    if crate::common::sqlite_only() {
        return;
    }
    let env = reconcile_env();
    let gate = Gate::new();
    let first = paused_reconcile(&env, 0, &gate);
    let (holder, generation, expires_at, released) = lease(&env, "pass:reconcile");
    assert!(holder.starts_with("host-0:"), "{holder}");
    assert_eq!(
        (generation, expires_at, released),
        (1, NOW_UNIX + 100, None)
    );

    let second = run(on_host(&env, 1, &["reconcile"]));
    assert_eq!(second.code, 75, "{}", second.stderr);
    assert!(second.stderr.contains("another host"), "{}", second.stderr);
    assert!(
        second.stderr.contains("host-0:"),
        "names the holder: {}",
        second.stderr
    );

    gate.open();
    let first: Run = first.wait_with_output().unwrap().into();
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(
        lease(&env, "pass:reconcile").3,
        Some(NOW_UNIX),
        "released at the end"
    );
    // Free again: the other host's next pass runs.
    let again = run(on_host(&env, 1, &["reconcile"]));
    assert_eq!(again.code, 0, "{}", again.stderr);
    let (holder, generation, _, released) = lease(&env, "pass:reconcile");
    assert!(holder.starts_with("host-1:"), "{holder}");
    assert_eq!((generation, released.is_some()), (2, true));
}

#[test]
fn a_killed_holder_is_taken_over_after_expiry_and_not_before() {
    if crate::common::sqlite_only() {
        return;
    }
    let env = reconcile_env();
    let gate = Gate::new();
    let mut first = paused_reconcile(&env, 0, &gate);
    first.kill().unwrap(); // SIGKILL: no release
    first.wait().unwrap();
    gate.open();
    let (_, generation, expires_at, released) = lease(&env, "pass:reconcile");
    assert_eq!(
        (generation, expires_at, released),
        (1, NOW_UNIX + 100, None)
    );

    // Another host cannot see that pid: only expiry frees the lease.
    let mut early = on_host(&env, 1, &["reconcile"]);
    early.env("ORCH_NOW", at(99));
    let early = run(early);
    assert_eq!(early.code, 75, "before expiry: {}", early.stderr);
    assert_eq!(lease(&env, "pass:reconcile").1, 1, "left alone");

    let mut due = on_host(&env, 1, &["reconcile"]);
    due.env("ORCH_NOW", at(100));
    let due = run(due);
    assert_eq!(due.code, 0, "at expiry: {}", due.stderr);
    assert!(
        due.stderr.contains("took the pass lease (Expired"),
        "{}",
        due.stderr
    );
    let (holder, generation, _, released) = lease(&env, "pass:reconcile");
    assert!(holder.starts_with("host-1:"), "{holder}");
    assert_eq!((generation, released), (2, Some(NOW_UNIX + 100)));

    // On its own host a dead holder's pid is read: taken over before expiry.
    let gate = Gate::new();
    let mut second = paused_reconcile(&env, 0, &gate);
    second.kill().unwrap();
    second.wait().unwrap();
    gate.open();
    let mut same_host = on_host(&env, 0, &["reconcile"]);
    same_host.env("ORCH_NOW", at(1));
    let same_host = run(same_host);
    assert_eq!(same_host.code, 0, "{}", same_host.stderr);
    assert!(
        same_host.stderr.contains("took the pass lease (HolderGone"),
        "{}",
        same_host.stderr
    );
    assert_eq!(lease(&env, "pass:reconcile").1, 4);
}

fn put_lease(
    env: &TestEnv,
    name: &str,
    holder: &str,
    generation: i64,
    expires_at: i64,
    detail: &str,
) {
    env.db()
        .execute(
            "INSERT INTO leases (name, holder, generation, acquired_at, expires_at, detail)
             VALUES (?1, ?2, ?3, -100, ?4, ?5)",
            orch::sql_params![name, holder, generation, expires_at, detail],
        )
        .unwrap();
}

#[test]
fn bad_lease_rows_are_judged_without_panic() {
    if crate::common::sqlite_only() {
        return;
    }
    // Garbage holder, negative expiry: long expired, taken over.
    let env = reconcile_env();
    put_lease(
        &env,
        "pass:reconcile",
        "\u{1}::not a holder:",
        -3,
        -50,
        "not json",
    );
    let r = env.run(&["reconcile"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(lease(&env, "pass:reconcile").1, -2);

    // Garbage holder, far expiry: held by someone this host cannot judge; status shows
    // it, the pass is skipped as busy.
    put_lease(&env, "pass:post-deploy-tick", "???", 7, i64::MAX, "{]");
    let r = env.run(&["post-deploy-tick"]);
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);

    let g = gitea();
    let mut env = env_with_task(&g, Some(HEAD), Some(7));
    env.set("ORCH_MERGE_LEASE_WAIT_S", "0");
    put_lease(&env, "merge", ":::", 1, NOW_UNIX + 60, "[1, 2");
    let status = env.run(&["status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let lease_view = &status.json()["lease"];
    assert_eq!(lease_view["state"], "held", "{lease_view}");
    assert_eq!(lease_view["pid"], serde_json::Value::Null);
    assert_eq!(lease_view["detail"], "holder :::");
    let r = env.run(&["merge-guard", "--task", "SHOP-1", "--merge"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("holder :::"),
        "names the holder: {}",
        r.stdout
    );
    assert_eq!(g.merge_calls(REPO, 7), 0);
    // Once it expires, the next guard takes it over and merges.
    env.set("ORCH_NOW", &at(60));
    let r = env.run(&["merge-guard", "--task", "SHOP-1", "--merge"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(g.merge_calls(REPO, 7), 1);
    assert_eq!(lease(&env, "merge").1, 2);
    let status = env.run(&["status", "--json"]);
    assert_eq!(
        status.json()["lease"],
        serde_json::Value::Null,
        "released: free"
    );
}
