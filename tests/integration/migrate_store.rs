//! `orch migrate-store --to URL`: a SQLite install's store moved into an empty
//! PostgreSQL database, every row, then used there by the same commands.

use crate::common::TestEnv;

/// Adds task `n` of project orch through the real command.
fn add_task(env: &TestEnv, n: u32) {
    env.run(&[
        "task",
        "add",
        "--project",
        "orch",
        "--work-item",
        &format!("wi-{n}"),
        "--key",
        &format!("ORCH-{n}"),
        "--title",
        "Move me",
    ])
    .expect(0);
}

#[test]
fn a_sqlite_store_moves_to_postgresql_whole_and_keeps_working_there() {
    if crate::common::sqlite_only() {
        return; // needs the PostgreSQL target
    }
    let mut env = TestEnv::new();
    let url = env.db_path().display().to_string();
    // The install as it was: a SQLite file with tasks, jobs and their history.
    let file = env.path("old.db").display().to_string();
    env.set("ORCH_DB", &file);
    env.run(&["init"]).expect(0);
    for n in 1..=3 {
        add_task(&env, n);
    }
    env.run(&[
        "task",
        "move",
        "ORCH-2",
        "--to",
        "development",
        "--reason",
        "t",
    ])
    .expect(0);
    let before = env.run(&["task", "list", "--json"]).expect(0).json();
    let jobs_before = env.run(&["job", "list", "--json"]).expect(0).json();

    let run = env
        .run(&["migrate-store", "--to", &url, "--json"])
        .expect(0);
    let out = run.json();
    assert!(out["rows"].as_i64().unwrap() > 3, "{out}");
    assert!(!run.stdout.contains("password"), "{}", run.stdout);

    // The same answers from PostgreSQL.
    env.set("ORCH_DB", &url);
    assert_eq!(
        env.run(&["task", "list", "--json"]).expect(0).json(),
        before
    );
    assert_eq!(
        env.run(&["job", "list", "--json"]).expect(0).json(),
        jobs_before
    );
    // New rows take ids after the copied ones, and counts stay true.
    add_task(&env, 4);
    let shown = env
        .run(&["task", "show", "ORCH-4", "--json"])
        .expect(0)
        .json();
    assert_eq!(shown["id"], 4, "{shown}");
    assert_eq!(
        env.count(orch::adapters::db::TASK_COUNTS_DRIFT)
            + env.count(orch::adapters::db::JOB_COUNTS_DRIFT),
        0
    );

    // A second copy into the now-used database is refused, and writes nothing.
    env.set("ORCH_DB", &file);
    let again = env.run(&["migrate-store", "--to", &url]).expect(2);
    again.stderr_has("already holds");
    env.set("ORCH_DB", &url);
    assert_eq!(env.count("SELECT count(*) FROM tasks"), 4);
}

#[test]
fn migrate_store_refuses_what_it_cannot_copy() {
    let mut env = TestEnv::new();
    let target = env.db_path().display().to_string();
    // Not a URL.
    env.set("ORCH_DB", &env.path("a.db").display().to_string());
    env.run(&["init"]).expect(0);
    env.run(&["migrate-store", "--to", "/tmp/other.db"])
        .expect(2)
        .stderr_has("must be a postgres:// URL");
    // From PostgreSQL.
    if !crate::common::sqlite_only() {
        env.set("ORCH_DB", &target);
        env.run(&["migrate-store", "--to", &target])
            .expect(2)
            .stderr_has("already the PostgreSQL database");
    }
    // An unreachable server: nothing read from the file changes.
    env.set("ORCH_DB", &env.path("a.db").display().to_string());
    env.run(&[
        "migrate-store",
        "--to",
        "postgres://orch:secret@127.0.0.1:1/orch",
    ])
    .expect(2)
    .stderr_has("connecting to the database postgres://orch:***@127.0.0.1:1/orch");
}

/// Text an older orch stored with a NUL in it (SQLite keeps it; PostgreSQL's text cannot)
/// moves over with the NUL as U+FFFD instead of stopping the copy at that row.
#[test]
fn text_with_a_nul_moves_over_with_the_nul_replaced() {
    if crate::common::sqlite_only() {
        return; // needs the PostgreSQL target
    }
    let mut env = TestEnv::new();
    let url = env.db_path().display().to_string();
    let file = env.path("old.db").display().to_string();
    env.set("ORCH_DB", &file);
    env.run(&["init"]).expect(0);
    add_task(&env, 1);
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.execute(
        "UPDATE tasks SET title = ?1 WHERE key = 'ORCH-1'",
        ["Crash\0on save"],
    )
    .unwrap();
    let nul: i64 = conn
        .query_row("SELECT instr(title, char(0)) FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(nul, 6, "the file holds the NUL");
    drop(conn);
    env.run(&["migrate-store", "--to", &url]).expect(0);
    env.set("ORCH_DB", &url);
    let shown = env
        .run(&["task", "show", "ORCH-1", "--json"])
        .expect(0)
        .json();
    assert_eq!(shown["title"], "Crash\u{fffd}on save", "{shown}");
}
