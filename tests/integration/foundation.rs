//! `init`, `config check`, `status` and `task` through the real binary.

use crate::common::{snapshot, TestEnv, JOB_FIELDS, NOW_UNIX};

#[test]
fn init_twice_is_safe_and_reports_what_it_did() {
    let env = TestEnv::bare();
    let first = env.run(&["init"]).expect(0);
    assert!(
        first.stdout.contains("created at schema version"),
        "{}",
        first.stdout
    );
    let second = env.run(&["init"]).expect(0);
    assert!(
        second.stdout.contains("already at schema version"),
        "{}",
        second.stdout
    );
    assert!(env.path("state/locks").is_dir());
}

/// The read-only connection (the agent socket's, staging's round-trip check) cannot
/// write on either engine: SQLite opens the file read-only, PostgreSQL makes the session
/// read-only, and the write is refused with nothing changed.
#[test]
fn the_read_only_connection_refuses_writes_on_either_engine() {
    let env = TestEnv::new();
    let conn = orch::adapters::db::open_read_only(&env.db_path()).unwrap();
    let passes = |c: &orch::adapters::db::Conn| -> i64 {
        c.query_row("SELECT count(*) FROM passes", orch::sql_params![], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let before = passes(&conn);
    let err = conn
        .execute(
            "INSERT INTO passes (command, started_at, duration_ms, outcome)
             VALUES ('x', 1, 1, 'ok')",
            orch::sql_params![],
        )
        .expect_err("a write on a read-only connection");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("read-only") || text.contains("readonly"),
        "{text}"
    );
    assert_eq!(passes(&conn), before);
    assert_eq!(passes(&env.db()), before, "nothing written");
}

/// A long-lived connection running SQL built at run time keeps a bounded number of
/// prepared statements, and every statement still runs after the cache was emptied.
#[test]
fn the_statement_cache_of_a_connection_is_bounded() {
    let env = TestEnv::new();
    let conn = env.db();
    let limit = orch::adapters::db::sql::STATEMENT_CACHE;
    for n in 0..limit + 100 {
        let got: i64 = conn
            .query_row(&format!("SELECT {n} + 1"), orch::sql_params![], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(got, n as i64 + 1);
        assert!(conn.cached_statements() <= limit);
    }
    if !crate::common::sqlite_only() {
        assert!(
            conn.cached_statements() > 0,
            "PostgreSQL caches its statements"
        );
    }
}

/// Runs `orch ARGS` from a shell whose umask is 022 (a login shell's usual one).
fn under_umask_022(env: &TestEnv, args: &str) -> crate::common::Run {
    let script = format!("umask 022; exec {} {args}", env!("CARGO_BIN_EXE_orch"));
    let base = env.command(&[]);
    let mut sh = std::process::Command::new("/bin/sh");
    sh.args(["-c", &script])
        .env_clear()
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(base.get_current_dir().unwrap());
    sh.output().unwrap().into()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn files_are_private_whatever_the_umask_and_init_fixes_old_ones() {
    if !crate::common::sqlite_only() {
        return; // the database file's mode (a server's tables have none)
    }
    let env = TestEnv::bare();
    // What an earlier orch left under umask 022: a readable database and state.
    under_umask_022(&env, "init").expect(0);
    let old_log = env.path("state/jobs/1.log");
    std::fs::create_dir_all(old_log.parent().unwrap()).unwrap();
    std::fs::write(&old_log, "agent output").unwrap();
    std::fs::create_dir_all(env.path("artefacts/ORCH-1")).unwrap();
    std::fs::write(env.path("artefacts/ORCH-1/01-analysis.md"), "x").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    for p in [
        "orch.db",
        "state",
        "state/jobs",
        "state/jobs/1.log",
        "artefacts",
        "artefacts/ORCH-1/01-analysis.md",
    ] {
        let m = if env.path(p).is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(env.path(p), std::fs::Permissions::from_mode(m)).unwrap();
    }
    under_umask_022(&env, "init").expect(0);
    for (p, want) in [
        ("orch.db", 0o600),
        ("state", 0o700),
        ("state/locks", 0o700),
        ("state/jobs", 0o700),
        ("state/jobs/1.log", 0o600),
        ("artefacts", 0o700),
        ("artefacts/ORCH-1", 0o700),
        ("artefacts/ORCH-1/01-analysis.md", 0o600),
    ] {
        assert_eq!(mode(&env.path(p)), want, "{p}: {:o}", mode(&env.path(p)));
    }
    // New files of any pass are private too: a fresh database, the state dir. The one
    // exception is the metrics file, which node_exporter (another user) must read:
    // 0644 whatever the umask (issue 15); a folder orch creates for it stays private.
    let fresh = TestEnv::bare();
    under_umask_022(&fresh, "init").expect(0);
    under_umask_022(&fresh, "status --prometheus metrics/orch.prom").expect(0);
    for (p, want) in [
        ("orch.db", 0o600),
        ("state", 0o700),
        ("metrics", 0o700),
        ("metrics/orch.prom", 0o644),
    ] {
        assert_eq!(
            mode(&fresh.path(p)),
            want,
            "{p}: {:o}",
            mode(&fresh.path(p))
        );
    }
}

/// With a separate agent user (the package's default) the artefacts tree is the agents'
/// group's too (`2770`, docs/security.md): `init` takes only what other users could
/// read, and keeps the group's access and the setgid bit, or every agent would be locked
/// out of its own folder. The state dir is made private as ever.
#[test]
fn init_keeps_the_agent_groups_artefacts_and_closes_them_to_others() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = TestEnv::bare();
    under_umask_022(&env, "init").expect(0);
    std::fs::create_dir_all(env.path("artefacts/ORCH-1")).unwrap();
    std::fs::write(env.path("artefacts/ORCH-1/01-analysis.md"), "x").unwrap();
    for (p, m) in [
        ("state", 0o755),
        ("artefacts", 0o2775),
        ("artefacts/ORCH-1", 0o2775),
        ("artefacts/ORCH-1/01-analysis.md", 0o664),
    ] {
        std::fs::set_permissions(env.path(p), std::fs::Permissions::from_mode(m)).unwrap();
    }
    let script = format!("umask 022; exec {} init", env!("CARGO_BIN_EXE_orch"));
    let base = env.command(&[]);
    let out: crate::common::Run = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .env_clear()
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("ORCH_AGENT_USER", "orch-agent")
        .current_dir(base.get_current_dir().unwrap())
        .output()
        .unwrap()
        .into();
    out.expect(0);
    for (p, want) in [
        ("state", 0o700),
        ("artefacts", 0o2770),
        ("artefacts/ORCH-1", 0o2770),
        ("artefacts/ORCH-1/01-analysis.md", 0o660),
    ] {
        let got = std::fs::metadata(env.path(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(got, want, "{p}: {got:o}");
    }
}

#[test]
fn a_fresh_checkout_runs_with_no_file_at_all() {
    let env = TestEnv::bare();
    std::fs::remove_file(env.path("orch.yaml")).unwrap();
    for args in [&["init"][..], &["status", "--json"]] {
        let mut cmd = env.command(args);
        cmd.env_remove("ORCH_DB")
            .env_remove("ORCH_STATE_DIR")
            .env_remove("ORCH_CONFIG");
        let out = cmd.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(env.path("orch.db").exists(), "defaults to ./orch.db");
}

#[test]
fn every_command_but_init_refuses_a_missing_database_naming_the_path() {
    let mut env = TestEnv::bare();
    let cases: &[&[&str]] = &[
        &["status"],
        &["reap"],
        &["dispatch"],
        &["reconcile"],
        &["post-deploy-tick"],
        &["task", "list"],
        &["job", "list"],
    ];
    for db in ["orch.db", "unmounted/orch.db"] {
        let path = env.path(db);
        env.set("ORCH_DB", &path.display().to_string());
        for args in cases {
            let run = env.run(args).expect(2);
            assert!(
                run.stderr.contains(&path.display().to_string())
                    && run.stderr.contains("does not exist"),
                "{args:?} {db}: {}",
                run.stderr
            );
            assert!(!path.exists(), "{args:?} {db}: nothing created");
        }
        assert!(!env.path("unmounted").exists(), "no directory made");
    }
    // `init` is the one command that creates it; then the same commands run.
    env.run(&["init"]).expect(0);
    env.run(&["status"]).expect(0);
}

#[test]
fn a_database_from_a_newer_orch_is_refused() {
    let env = TestEnv::new();
    env.run(&["init"]).expect(0);
    match crate::common::backend() {
        crate::common::Backend::Sqlite => env.db().execute_batch("PRAGMA user_version = 999"),
        crate::common::Backend::Postgres => env
            .db()
            .execute_batch("UPDATE orch_schema SET version = 999"),
    }
    .unwrap();
    let run = env.run(&["status"]).expect(2);
    assert!(run.stderr.contains("newer orch"), "{}", run.stderr);
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("ORCH_MAX_CONCURRENCY", "zero", "ORCH_MAX_CONCURRENCY"),
        ("ORCH_REAPER_NOPE", "1", "ORCH_REAPER_NOPE"),
        ("ORCH_HTTP_TIMEOUT_S", "-1", "ORCH_HTTP_TIMEOUT_S"),
        ("ORCH_PLANE_URL", "plane.example.com", "ORCH_PLANE_URL"),
        ("ORCH_NOW", "now", "ORCH_NOW"),
    ];
    for (key, value, named) in cases {
        let mut env = TestEnv::bare();
        env.set(key, value);
        let run = env.run(&["config", "check"]).expect(2);
        assert!(run.stderr.contains(named), "{key}={value}: {}", run.stderr);
        assert!(!env.db_path().exists(), "no side effect before validation");
    }
    let env = TestEnv::uninitialised("plane: { workspace: acme }\nprojects:\n  - name: x\n    plane_project_id: nope\n    repo: a/b\n");
    let run = env.run(&["status"]).expect(2);
    assert!(
        run.stderr.contains("projects[0].plane_project_id"),
        "{}",
        run.stderr
    );
    assert!(!env.db_path().exists());
}

#[test]
fn config_check_redacts_secrets_and_shows_sources() {
    let mut env = TestEnv::new();
    env.set("ORCH_GITEA_TOKEN", "s3cr3t-token")
        .set("ORCH_MAX_CONCURRENCY", "4");
    let run = env.run(&["config", "check"]).expect(0);
    assert!(!run.stdout.contains("s3cr3t-token") && !run.stderr.contains("s3cr3t-token"));
    assert!(run.stdout.contains("<redacted>"));
    assert!(run
        .stdout
        .lines()
        .any(|l| l.contains("ORCH_MAX_CONCURRENCY") && l.contains("4") && l.contains("[env]")));
    let json = env.run(&["config", "check", "--json"]).expect(0).json();
    assert_eq!(json["valid"], true);
    assert_eq!(json["pipeline"]["projects"][0]["name"], "orch");
    let db_flag = env
        .run(&["--db", "other.db", "config", "check", "--json"])
        .expect(0)
        .json();
    let db = db_flag["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ORCH_DB")
        .unwrap()
        .clone();
    assert_eq!(
        (db["value"].as_str(), db["source"].as_str()),
        (Some("other.db"), Some("flag"))
    );
}

#[test]
fn the_example_pipeline_file_parses() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/orch.example.yaml")).unwrap();
    let env = TestEnv::with_pipeline(&text);
    let json = env.run(&["config", "check", "--json"]).expect(0).json();
    assert!(json["pipeline"]["projects"].as_array().unwrap().len() >= 2);
}

#[test]
fn task_add_show_move_and_list() {
    let env = TestEnv::new();
    let add = env
        .run(&[
            "task",
            "add",
            "--project",
            "orch",
            "--work-item",
            "wi-1",
            "--key",
            "ORCH-1",
            "--title",
            "Fix login",
            "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(add["created"], true);
    assert_eq!(add["task"]["branch"], "orch-1-fix-login");
    assert_eq!(add["task"]["stage"], "analysis");
    let again = env
        .run(&[
            "task",
            "add",
            "--project",
            "orch",
            "--work-item",
            "wi-1",
            "--key",
            "ORCH-1",
            "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(again["created"], false);
    assert_eq!(again["enqueued_job"], serde_json::Value::Null);
    assert_eq!(
        env.count("SELECT count(*) FROM jobs"),
        1,
        "analyst job enqueued once"
    );

    // A move the table forbids is refused with exit 1 and writes nothing.
    let refused = env
        .run(&[
            "task", "move", "ORCH-1", "--to", "deploy", "--reason", "skip",
        ])
        .expect(1);
    assert!(
        refused.stderr.contains("does not allow analysis -> deploy"),
        "{}",
        refused.stderr
    );
    assert_eq!(env.count("SELECT count(*) FROM stage_events"), 1);

    let moved = env
        .run(&[
            "task",
            "move",
            "orch-1",
            "--to",
            "development",
            "--reason",
            "approved by hand",
            "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(moved["to"], "development");
    assert!(moved["enqueued_job"].is_i64());

    let show = env
        .run(&["task", "show", "ORCH-1", "--json"])
        .expect(0)
        .json();
    assert_eq!(show["stage"], "development");
    let events = show["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["actor"], "operator");
    assert_eq!(events[1]["reason"], "approved by hand");
    let jobs = show["jobs"].as_array().unwrap();
    assert_eq!(jobs[0]["agent"], "analyst");
    assert_eq!(
        jobs[0]["status"], "cancelled",
        "the queued analyst job is dropped by the move"
    );
    assert_eq!(jobs[1]["agent"], "developer");
    for field in JOB_FIELDS {
        assert!(jobs[1].get(field).is_some(), "job field {field}");
    }

    let list = env
        .run(&["task", "list", "--stage", "development", "--json"])
        .expect(0)
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["key"], "ORCH-1");
    assert_eq!(list[0]["project"], "orch");
    env.run(&["task", "list", "--stage", "nowhere"]).expect(2);
    env.run(&["task", "show", "ORCH-404"]).expect(2);
    env.run(&["task", "add", "--project", "nope", "--work-item", "x"])
        .expect(2);
    env.run(&[
        "task",
        "add",
        "--project",
        "orch",
        "--work-item",
        "x",
        "--key",
        "../etc",
    ])
    .expect(2);
    env.run(&["task", "move", "ORCH-1", "--to", "review", "--reason", " "])
        .expect(2);
}

#[test]
fn status_text_json_and_prometheus() {
    let env = TestEnv::new();
    env.run(&[
        "task",
        "add",
        "--project",
        "orch",
        "--work-item",
        "wi-1",
        "--key",
        "ORCH-1",
    ])
    .expect(0);
    env.run(&[
        "task",
        "add",
        "--project",
        "shop",
        "--work-item",
        "wi-2",
        "--key",
        "SHOP-1",
    ])
    .expect(0);
    env.run(&[
        "task",
        "move",
        "SHOP-1",
        "--to",
        "cancelled",
        "--reason",
        "dropped",
    ])
    .expect(0);
    env.db()
        .execute(
            "UPDATE jobs SET status = 'running', started_at = ?1, pid = 2147483646 WHERE id = 1",
            [NOW_UNIX - 90],
        )
        .unwrap();
    let text = env.run(&["status", "--prometheus", "metrics/orch.prom"]);
    insta::assert_snapshot!(snapshot::report(&env, &text), @r"
    exit: 0
    orch status at 2026-11-25T03:00:00Z (schema 17)

    jobs: queued 0, running 1, succeeded 0, failed 0, cancelled 1
    running (1, oldest first):
      job 1 ORCH-1 analyst (analysis) attempt 1 pid 2147483646 dead age 1m30s
    tasks: analysis 1, development 0, review 0, deploy-staging 0, deploy 0, done 0, cancelled 1
    deliveries: pending 0, stale 0
    escalated: none
    spend: none reported
    post-deploy: none armed
    merge lease: free
    staging: free
    holds: none
    last passes: none yet
    ");
    let prom = std::fs::read_to_string(env.path("metrics/orch.prom"))
        .unwrap()
        .replace(orch::build_info::REVISION, "[revision]");
    insta::assert_snapshot!(prom, @r#"
    # HELP orch_jobs Jobs by status.
    # TYPE orch_jobs gauge
    orch_jobs{status="queued"} 0
    orch_jobs{status="running"} 1
    orch_jobs{status="succeeded"} 0
    orch_jobs{status="failed"} 0
    orch_jobs{status="cancelled"} 1
    # HELP orch_tasks Tasks by stage.
    # TYPE orch_tasks gauge
    orch_tasks{stage="analysis"} 1
    orch_tasks{stage="development"} 0
    orch_tasks{stage="review"} 0
    orch_tasks{stage="deploy-staging"} 0
    orch_tasks{stage="deploy"} 0
    orch_tasks{stage="done"} 0
    orch_tasks{stage="cancelled"} 1
    # HELP orch_deliveries Webhook deliveries pending (not yet acted on) and stale (a newer update was known).
    # TYPE orch_deliveries gauge
    orch_deliveries{outcome="pending"} 0
    orch_deliveries{outcome="stale"} 0
    # HELP orch_tasks_escalated Tasks parked for a human.
    # TYPE orch_tasks_escalated gauge
    orch_tasks_escalated 0
    # HELP orch_spend_cost_micros Cost agents reported, per project, in millionths of their currency.
    # TYPE orch_spend_cost_micros gauge
    # HELP orch_spend_tokens_in Input tokens agents reported, per project.
    # TYPE orch_spend_tokens_in gauge
    # HELP orch_spend_tokens_out Output tokens agents reported, per project.
    # TYPE orch_spend_tokens_out gauge
    # HELP orch_running_jobs_not_alive Running jobs (all of them, not only those listed) whose process is dead, reused or not yet stamped.
    # TYPE orch_running_jobs_not_alive gauge
    orch_running_jobs_not_alive 1
    # HELP orch_running_job_oldest_age_seconds Age of the oldest running job.
    # TYPE orch_running_job_oldest_age_seconds gauge
    orch_running_job_oldest_age_seconds 90
    # HELP orch_staging_held 1 while a deploy-staging job holds the staging environment.
    # TYPE orch_staging_held gauge
    orch_staging_held 0
    # HELP orch_pass_last_run_timestamp_seconds When each subcommand's last pass started.
    # TYPE orch_pass_last_run_timestamp_seconds gauge
    # HELP orch_pass_duration_seconds How long each subcommand's last pass took.
    # TYPE orch_pass_duration_seconds gauge
    # HELP orch_pass_ok 1 when each subcommand's last pass did not fail.
    # TYPE orch_pass_ok gauge
    # HELP orch_pass_counts Each numeric count of each subcommand's last pass (the summary line's name=value).
    # TYPE orch_pass_counts gauge
    # HELP orch_merge_lease_held 1 while a merge lease file (or, on PostgreSQL, an unreleased lease row) exists (whoever holds it, stale or malformed included).
    # TYPE orch_merge_lease_held gauge
    orch_merge_lease_held 0
    # HELP orch_merge_lease_expiry_timestamp_seconds When the merge lease held now expires (absent while none is held).
    # TYPE orch_merge_lease_expiry_timestamp_seconds gauge
    # HELP orch_hold_active 1 while the project is on hold (orch hold: no merge, no deployer job), else 0.
    # TYPE orch_hold_active gauge
    orch_hold_active{project="orch"} 0
    orch_hold_active{project="shop"} 0
    # HELP orch_hold_set_timestamp_seconds When each hold on now was set.
    # TYPE orch_hold_set_timestamp_seconds gauge
    # HELP orch_hold_until_timestamp_seconds When each hold on now lapses by itself (absent for a hold until cleared).
    # TYPE orch_hold_until_timestamp_seconds gauge
    # HELP orch_plane_ratelimit_remaining X-RateLimit-Remaining of the last Plane answer that carried it, whichever command read it (absent until one did).
    # TYPE orch_plane_ratelimit_remaining gauge
    # HELP orch_plane_ratelimit_seen_timestamp_seconds When that Plane answer was read.
    # TYPE orch_plane_ratelimit_seen_timestamp_seconds gauge
    # HELP orch_build_info The orch binary that wrote this file: version and git revision.
    # TYPE orch_build_info gauge
    orch_build_info{version="0.1.0",revision="[revision]"} 1
    "#);
    let json = env.run(&["status", "--json"]).expect(0).json();
    insta::assert_json_snapshot!(json, @r#"
    {
      "deliveries": {
        "pending": 0,
        "stale": 0
      },
      "escalated": [],
      "escalated_total": 0,
      "generated_at": "2026-11-25T03:00:00Z",
      "generated_at_unix": 1795575600,
      "holds": [],
      "jobs": {
        "cancelled": 1,
        "failed": 0,
        "queued": 0,
        "running": 1,
        "succeeded": 0
      },
      "lease": null,
      "passes": [],
      "post_deploy": [],
      "running": [
        {
          "age_s": 90,
          "agent": "analyst",
          "attempt": 1,
          "id": 1,
          "key": "ORCH-1",
          "liveness": "dead",
          "pid": 2147483646,
          "priority": "none",
          "spend": null,
          "stage": "analysis",
          "task_id": 1
        }
      ],
      "running_total": 1,
      "schema_version": 17,
      "spend": {},
      "staging": {
        "holders": [],
        "state": "free"
      },
      "tasks": {
        "analysis": 1,
        "cancelled": 1,
        "deploy": 0,
        "deploy-staging": 0,
        "development": 0,
        "done": 0,
        "review": 0
      }
    }
    "#);
    let leftovers: Vec<_> = std::fs::read_dir(env.path("metrics"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
}

#[test]
fn usage_errors_exit_2() {
    let env = TestEnv::new();
    env.run(&["no-such-command"]).expect(2);
    env.run(&["status", "--bogus"]).expect(2);
}

#[test]
fn orch_log_from_the_pipeline_file_takes_effect_and_the_environment_wins() {
    // `config check` shows ORCH_LOG from the pipeline file's `settings:` as effective, so
    // it must be: `warn` there silences a pass's INFO summary, and the environment wins.
    let mut env = TestEnv::with_pipeline(&format!(
        "{}settings:\n  ORCH_LOG: warn\n",
        crate::common::default_pipeline()
    ));
    env.unset("ORCH_LOG");
    let shown = env.run(&["config", "check"]).expect(0);
    let line = shown
        .stdout
        .lines()
        .find(|l| l.contains("ORCH_LOG"))
        .unwrap_or_default();
    assert!(line.contains("warn"), "{}", shown.stdout);
    let from_file = env.run(&["reap", "--dry-run"]).expect(0);
    assert!(
        !from_file.stderr.contains("INFO"),
        "warn from the pipeline file: {}",
        from_file.stderr
    );
    env.set("ORCH_LOG", "info");
    let from_env = env.run(&["reap", "--dry-run"]).expect(0);
    assert!(
        from_env.stderr.contains("INFO  reap: scanned=0"),
        "info from the environment wins: {}",
        from_env.stderr
    );
    // Bad forms, from either layer: exit 2 naming the key, before anything runs (the
    // logger used to warn and fall back silently).
    for bad in ["=;;", "info,orch=loud"] {
        env.set("ORCH_LOG", bad);
        let run = env.run(&["reap", "--dry-run"]).expect(2);
        assert!(
            run.stderr.contains("ORCH_LOG: expected a log filter"),
            "{}",
            run.stderr
        );
    }
    let mut file = TestEnv::with_pipeline(&format!(
        "{}settings:\n  ORCH_LOG: \"debug,x=sometimes\"\n",
        crate::common::default_pipeline()
    ));
    file.unset("ORCH_LOG");
    let run = file.run(&["config", "check"]).expect(2);
    assert!(run.stderr.contains("ORCH_LOG"), "{}", run.stderr);
}

#[test]
fn task_add_derives_the_key_by_the_same_rule_as_a_start_delivery() {
    // No Plane identifier: the project's name, kept to letters and digits, upper-cased,
    // as webhook-handle and reconcile derive it (task add used to keep the hyphen).
    let env = TestEnv::with_pipeline(
        r#"
plane: { workspace: acme }
projects:
  - name: my-shop
    plane_project_id: 1c2d3e4f-0000-4000-8000-000000000009
    repo: acme/my-shop
agents:
  analyst: [/bin/true]
  developer: [/bin/true]
  reviewer: [/bin/true]
  deployer: [/bin/true]
"#,
    );
    env.run(&["init"]).expect(0);
    let added = env
        .run(&[
            "task",
            "add",
            "--project",
            "my-shop",
            "--work-item",
            "ab-cd-ef-01-23",
            "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(added["task"]["key"], "MYSHOP-abcdef01", "{added:#}");
    assert_eq!(
        orch::core::intake::task_key(None, "my-shop", None, "ab-cd-ef-01-23"),
        "MYSHOP-abcdef01"
    );
}

/// Every service: syscalls filtered with `EPERM` (never SIGSYS), resource limits, the
/// job unit's whole cgroup stopped, and `systemd-analyze security` exposure at most 2.5
/// (scripts/verify-units checks the syntax; CI installs systemd-analyze).
#[test]
fn every_unit_is_hardened_bounded_and_exposed_at_most_2_5() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some(stem) = name.strip_suffix(".service") else {
            continue;
        };
        seen += 1;
        let unit = std::fs::read_to_string(&path).unwrap();
        for key in [
            "SystemCallFilter=",
            "SystemCallErrorNumber=EPERM",
            "TasksMax=",
            "MemoryMax=",
            "LimitNOFILE=",
        ] {
            assert!(
                unit.lines().any(|l| l.starts_with(key)),
                "{name} lacks {key}"
            );
        }
        if name == "orch-job@.service" {
            // TERM to the supervisor (which passes it to the agent's group), then the
            // whole cgroup is killed: a grandchild that left the group dies too.
            assert!(unit.lines().any(|l| l == "KillMode=mixed"), "{name}");
        }
        // A template is analysed through an instance name.
        let instance = tmp.path().join(stem.replace('@', "@1") + ".service");
        std::fs::write(&instance, &unit).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(&instance)
            .output()
            .expect("systemd-analyze (CI installs systemd)");
        let text = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no exposure in\n{text}"));
        assert!(exposure <= 2.5, "{name}: exposure {exposure}");
    }
    assert_eq!(seen, 8, "every service checked");
}
