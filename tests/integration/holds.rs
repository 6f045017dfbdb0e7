//! `orch hold`: set, list, clear, expiry by the pass's clock, the record of who and
//! when, and what `status` and the metrics show. What a hold stops is tested where the
//! stopped pass is: `merge_guard.rs` (BLOCKED) and `jobs.rs` (dispatch).

use crate::common::{TestEnv, NOW_UNIX};

#[test]
fn a_hold_is_recorded_shown_and_lifted() {
    let mut env = TestEnv::new();
    env.run(&["hold", "list"])
        .expect(0)
        .stdout
        .contains("no hold on");
    let set = env
        .run(&[
            "hold",
            "set",
            "--project",
            "shop",
            "--until",
            "2026-11-25T05:00:00Z",
            "--reason",
            "release freeze",
            "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(set["hold"]["project"], "shop");
    assert_eq!(set["hold"]["until_unix"], NOW_UNIX + 7200);
    assert_eq!(set["replaced"], serde_json::Value::Null);
    let os_user = set["hold"]["by"].as_str().unwrap().to_string();
    assert!(!os_user.is_empty());
    assert_eq!(
        set["hold"]["os_user"],
        os_user.as_str(),
        "by defaults to the OS user"
    );

    // Visible: hold list, status (text and JSON), the metrics.
    let list = env.run(&["hold", "list"]).expect(0);
    assert!(
        list.stdout.starts_with(
            "shop: on hold until 2026-11-25T05:00:00Z (2h00m left), set 2026-11-25T03:00:00Z by "
        ) && list.stdout.trim_end().ends_with(": release freeze"),
        "{}",
        list.stdout
    );
    let status = env.run(&["status"]).expect(0);
    assert!(
        status.stdout.contains("holds (1: no merge, no deployer job):\n  shop until 2026-11-25T05:00:00Z, set 0s ago by "),
        "{}",
        status.stdout
    );
    let prom = env.dir.path().join("orch.prom");
    let json = env
        .run(&["status", "--json", "--prometheus", prom.to_str().unwrap()])
        .expect(0)
        .json();
    assert_eq!(json["holds"][0]["project"], "shop");
    assert_eq!(json["holds"][0]["reason"], "release freeze");
    assert_eq!(json["holds"][0]["until"], "2026-11-25T05:00:00Z");
    let metrics = std::fs::read_to_string(&prom).unwrap();
    for line in [
        "orch_hold_active{project=\"orch\"} 0\n".to_string(),
        "orch_hold_active{project=\"shop\"} 1\n".to_string(),
        format!("orch_hold_set_timestamp_seconds{{project=\"shop\"}} {NOW_UNIX}\n"),
        format!(
            "orch_hold_until_timestamp_seconds{{project=\"shop\"}} {}\n",
            NOW_UNIX + 7200
        ),
    ] {
        assert!(metrics.contains(&line), "{line}in\n{metrics}");
    }

    // A second set replaces the first, and says so; clear lifts it.
    env.set("ORCH_NOW", "2026-11-25T03:10:00Z");
    let again = env
        .run(&[
            "hold",
            "set",
            "--project",
            "shop",
            "--reason",
            "incident 42",
            "--by",
            "ada",
        ])
        .expect(0);
    assert!(
        again.stdout.contains("shop: on hold until cleared"),
        "{}",
        again.stdout
    );
    assert!(
        again
            .stdout
            .contains("  replaces: shop: on hold until 2026-11-25T05:00:00Z"),
        "{}",
        again.stdout
    );
    env.set("ORCH_NOW", "2026-11-25T04:00:00Z");
    let cleared = env
        .run(&[
            "hold",
            "clear",
            "--project",
            "shop",
            "--reason",
            "fixed",
            "--by",
            "bob",
        ])
        .expect(0);
    assert!(
        cleared.stdout.starts_with("shop: hold lifted"),
        "{}",
        cleared.stdout
    );
    assert!(env
        .run(&["hold", "list"])
        .expect(0)
        .stdout
        .contains("no hold on"));
    let json = env.run(&["status", "--json"]).expect(0).json();
    assert_eq!(json["holds"], serde_json::json!([]));
    // Clearing nothing records nothing.
    let none = env.run(&["hold", "clear", "--project", "shop"]).expect(0);
    assert!(
        none.stdout.contains("no hold on; nothing recorded"),
        "{}",
        none.stdout
    );

    // The record keeps who and when of every set and clear.
    let history = env
        .run(&["hold", "list", "--history", "--json"])
        .expect(0)
        .json();
    let rows: Vec<(String, String, String, i64, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["project"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["by"].as_str().unwrap().to_string(),
                e["at_unix"].as_i64().unwrap(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |a: &str, by: &str, at: i64, why: &str| {
        (
            "shop".to_string(),
            a.to_string(),
            by.to_string(),
            at,
            why.to_string(),
        )
    };
    assert_eq!(
        rows,
        vec![
            row("set", &os_user, NOW_UNIX, "release freeze"),
            row("set", "ada", NOW_UNIX + 600, "incident 42"),
            row("clear", "bob", NOW_UNIX + 3600, "fixed"),
        ]
    );
    assert!(history
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["os_user"] == os_user.as_str()));
    assert!(history
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["agent_job"].is_null()));
    let text = env.run(&["hold", "list", "--history"]).expect(0);
    assert!(
        text.stdout.contains(&format!(
            "2026-11-25T04:00:00Z shop clear by bob (OS user {os_user}): fixed"
        )),
        "{}",
        text.stdout
    );
}

#[test]
fn a_hold_lapses_at_its_until_by_the_pass_clock() {
    let mut env = TestEnv::new();
    env.run(&[
        "hold",
        "set",
        "--project",
        "orch",
        "--until",
        "1h30m",
        "--reason",
        "deploy window",
    ])
    .expect(0);
    env.set("ORCH_NOW", "2026-11-25T04:29:59Z");
    assert!(env
        .run(&["hold", "list"])
        .expect(0)
        .stdout
        .starts_with("orch: on hold until 2026-11-25T04:30:00Z (1s left)"));
    env.set("ORCH_NOW", "2026-11-25T04:30:00Z");
    assert!(env
        .run(&["hold", "list"])
        .expect(0)
        .stdout
        .contains("no hold on"));
    let json = env.run(&["status", "--json"]).expect(0).json();
    assert_eq!(json["holds"], serde_json::json!([]));
    // A lapsed hold is not there to clear.
    let out = env.run(&["hold", "clear", "--project", "orch"]).expect(0);
    assert!(out.stdout.contains("no hold on"), "{}", out.stdout);
}

#[test]
fn bad_holds_are_refused_with_exit_2() {
    let env = TestEnv::new();
    let cases: [(&[&str], &str); 7] = [
        (&["--project", "shop", "--until", "tomorrow"], "RFC 3339"),
        (
            &["--project", "shop", "--until", "2h3"],
            "duration such as 2h",
        ),
        (&["--project", "shop", "--until", "0m"], "zero length"),
        (
            &["--project", "shop", "--until", "2026-11-25T02:00:00Z"],
            "has already passed",
        ),
        (
            &["--project", "shpo"],
            "unknown project \"shpo\"; the pipeline file has: orch, shop",
        ),
        (
            &["--project", "shop", "--reason", " "],
            "--reason must be non-empty",
        ),
        (&["--project", "shop", "--by", "a\nb"], "--by must be"),
    ];
    for (args, want) in cases {
        let mut argv = vec!["hold", "set"];
        argv.extend_from_slice(args);
        if !args.contains(&"--reason") {
            argv.extend_from_slice(&["--reason", "r"]);
        }
        let out = env.run(&argv).expect(2);
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
    assert_eq!(env.count("SELECT count(*) FROM hold_events"), 0);
    env.run(&["hold", "clear", "--project", "nope"]).expect(2);
    // A hold whose project left the pipeline file can still be cleared.
    env.db()
        .execute(
            "INSERT INTO hold_events (project, action, reason, by_name, os_user, at)
             VALUES ('gone', 'set', 'old', 'ada', 'ada', 0)",
            [],
        )
        .unwrap();
    let out = env.run(&["hold", "clear", "--project", "gone"]).expect(0);
    assert!(
        out.stdout.starts_with("gone: hold lifted"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_hold_set_from_inside_an_agent_names_its_job() {
    let mut env = TestEnv::new();
    env.set("ORCH_JOB_ID", "7");
    env.run(&[
        "hold",
        "set",
        "--project",
        "shop",
        "--reason",
        "agent asked",
    ])
    .expect(0);
    let list = env.run(&["hold", "list"]).expect(0);
    assert!(
        list.stdout.contains(" from inside job 7: agent asked"),
        "{}",
        list.stdout
    );
    let json = env
        .run(&["hold", "list", "--history", "--json"])
        .expect(0)
        .json();
    assert_eq!(json[0]["agent_job"], 7);
}
