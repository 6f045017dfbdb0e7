//! Every pass bounded (issue 18): the page cap stops an endless listing, the pass
//! deadline stops a pass held by a slow upstream, and an oversized answer is refused.
//! The real binary against the loopback stand-ins; no test sleeps.

use std::time::{Duration, Instant};

use orch::core::stage::Stage;
use orch::standin::server::Reply;

use crate::common::{seed_task, Project, SeedTask, Standin, TestEnv};

const P1: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";

/// One project, one task in review whose gate needs the Plane listing (the blocked
/// check), so every reconcile pass lists the project.
fn env() -> TestEnv {
    let env = TestEnv::builder()
        .project(
            Project::orch()
                .self_hosting(false)
                .with("states:\n  blocked: { names: [Blocked] }"),
        )
        .standins(&[Standin::Gitea, Standin::Plane, Standin::Telegram])
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_HTTP_TIMEOUT_S", "5")
        .build();
    let p = env.project("orch");
    let seed = SeedTask::new(p, 1, Stage::Review)
        .work_item("0b8f5d2e-0000-4000-8000-000000000001")
        .at(0)
        .branch_ready()
        .no_plane_item();
    seed_task(&env, &seed);
    env
}

fn listing_requests(env: &TestEnv) -> usize {
    env.plane()
        .count(Some("GET"), &format!("projects/{P1}/work-items/"))
}

fn last_pass(env: &TestEnv) -> (String, serde_json::Value) {
    env.db()
        .query_row(
            "SELECT outcome, counts FROM passes WHERE command='reconcile'",
            [],
            |r| {
                let counts: String = r.get(1)?;
                Ok((r.get(0)?, serde_json::from_str(&counts).unwrap()))
            },
        )
        .unwrap()
}

#[test]
fn an_endless_cursor_is_stopped_by_the_page_cap_and_the_pass_exits_2() {
    let mut env = env();
    env.set("ORCH_LIST_MAX_PAGES", "7");
    env.plane().set_endless_listing(true);
    let events = env.count("SELECT count(*) FROM stage_events");
    let run = env.run(&["reconcile"]).expect(2);
    assert_eq!(listing_requests(&env), 7, "exactly the cap, then stop");
    assert!(
        run.stderr
            .contains("page cap of 7 pages (ORCH_LIST_MAX_PAGES)"),
        "{}",
        run.stderr
    );
    let (outcome, counts) = last_pass(&env);
    assert_eq!(outcome, "error");
    assert_eq!(counts["page_cap_hit"], 1, "{counts}");
    assert_eq!(
        env.count("SELECT count(*) FROM stage_events"),
        events,
        "an incomplete listing moves nothing"
    );

    // A listing that ends within the cap is an ordinary pass again.
    env.plane().set_endless_listing(false);
    env.run(&["reconcile"]).expect(0);
}

#[test]
fn a_slow_upstream_is_stopped_by_the_pass_deadline_between_pages() {
    let mut env = env();
    env.set("ORCH_PASS_DEADLINE_S", "1");
    env.plane().set_endless_listing(true);
    env.plane()
        .set_listing_delay(Some(Duration::from_millis(300)));
    // Where an earlier capped pass stopped: a pass that handles no task keeps it.
    // (A file on SQLite; a stored row on PostgreSQL, where any host runs the next pass.)
    let cursor = env.path("state/reconcile.cursor");
    let postgres = crate::common::backend() == crate::common::Backend::Postgres;
    if postgres {
        env.db()
            .execute(
                "INSERT INTO shared_files (kind, key, body, updated_at) VALUES ('cursor', 'reconcile', ?1, 0)",
                orch::sql_params![b"7\n".to_vec()],
            )
            .unwrap();
    } else {
        std::fs::create_dir_all(cursor.parent().unwrap()).unwrap();
        std::fs::write(&cursor, "7\n").unwrap();
    }
    let read_cursor = || -> Option<String> {
        if postgres {
            env.db()
                .query_row(
                    "SELECT body FROM shared_files WHERE kind = 'cursor' AND key = 'reconcile'",
                    [],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .ok()
                .map(|b| String::from_utf8(b).unwrap())
        } else {
            std::fs::read_to_string(&cursor).ok()
        }
    };
    let started = Instant::now();
    let events = env.count("SELECT count(*) FROM stage_events");
    let run = env.run(&["reconcile"]).expect(2);
    let took = started.elapsed();
    assert_eq!(
        read_cursor().as_deref(),
        Some("7\n"),
        "the cursor survives a pass the deadline stopped before any task"
    );
    let pages = listing_requests(&env);
    assert!(
        (2..=6).contains(&pages),
        "about a second of 300 ms pages, then stop: {pages}"
    );
    assert!(
        took < Duration::from_secs(4),
        "the deadline, not the page cap (100), ended it: {took:?}"
    );
    assert!(
        run.stderr.contains("ORCH_PASS_DEADLINE_S"),
        "{}",
        run.stderr
    );
    let (outcome, counts) = last_pass(&env);
    assert_eq!(outcome, "error");
    assert!(counts["deadline_hit"].as_i64().unwrap() >= 1, "{counts}");
    assert_eq!(env.count("SELECT count(*) FROM stage_events"), events);

    // One page slower than the whole deadline: the call's timeout (5 s) is cut to
    // what is left of the pass, so the pass ends at its deadline, not after the page.
    env.plane().set_listing_delay(Some(Duration::from_secs(4)));
    let started = Instant::now();
    let run = env.run(&["reconcile"]).expect(2);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "the call outlived the deadline: {took:?}\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
}

#[test]
fn an_answer_past_the_body_cap_is_refused_with_a_clear_error() {
    let env = env();
    let big = vec![b' '; 32 * 1024 * 1024 + 1];
    env.plane().server().script(
        Some("GET"),
        &format!("/api/v1/workspaces/acme/projects/{P1}/work-items/"),
        Reply::raw(200, "application/json", big),
        1,
    );
    let events = env.count("SELECT count(*) FROM stage_events");
    let run = env.run(&["reconcile"]).expect(0);
    assert!(
        run.stderr.contains("larger than 33554432 bytes"),
        "{}",
        run.stderr
    );
    assert_eq!(env.count("SELECT count(*) FROM stage_events"), events);
}
