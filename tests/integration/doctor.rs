//! `orch doctor` through the real binary against the stand-ins: one line per check, the
//! fix on a problem, exit 0 / 1 / 2, `--json`, and never a write request.

use orch::standin::gitea::{CompareSupport, GiteaStandin};
use orch::standin::plane::PlaneVersion;
use orch::standin::server::{Reply, Server};

use crate::common::{Project, Run, Standin, TestEnv, GITEA_TOKEN};

/// Plane states that give every meaning a real state.
const STATES: [(&str, &str, &str); 5] = [
    (
        "5a000000-0000-4000-8000-000000000001",
        "In Progress",
        "started",
    ),
    (
        "5a000000-0000-4000-8000-000000000002",
        "Approved",
        "unstarted",
    ),
    (
        "5a000000-0000-4000-8000-000000000005",
        "Rejected",
        "unstarted",
    ),
    ("5a000000-0000-4000-8000-000000000003", "Blocked", "started"),
    (
        "5a000000-0000-4000-8000-000000000006",
        "Cancelled",
        "cancelled",
    ),
];

const MEANINGS: &str = "states:
  approved: { names: [Approved] }
  rejected: { names: [Rejected] }
  blocked: { names: [Blocked] }";

fn shop() -> Project {
    Project::shop().with(MEANINGS)
}

fn env_with(projects: Vec<Project>) -> TestEnv {
    TestEnv::builder()
        .projects(projects)
        .plane_states(&STATES)
        .standins(&[Standin::Plane, Standin::Gitea, Standin::Telegram])
        .build()
}

fn env() -> TestEnv {
    env_with(vec![shop(), Project::orch().with(MEANINGS)])
}

/// Asserts that no stand-in saw anything but a GET.
#[track_caller]
fn assert_read_only(servers: &[&Server]) {
    let mut seen = 0;
    for s in servers {
        for r in s.requests() {
            assert_eq!(r.method, "GET", "doctor wrote: {} {}", r.method, r.path);
            seen += 1;
        }
    }
    assert!(seen > 0, "doctor asked the stand-ins something");
}

fn servers(env: &TestEnv) -> [&Server; 3] {
    [env.plane().server(), env.gitea().server(), env.telegram()]
}

/// The line of `check`, asserting there is exactly one.
#[track_caller]
fn line<'a>(run: &'a Run, check: &str) -> &'a str {
    let prefix = format!(" {check}: ");
    let lines: Vec<&str> = run.stdout.lines().filter(|l| l.contains(&prefix)).collect();
    assert_eq!(lines.len(), 1, "one line for {check}:\n{}", run.stdout);
    lines[0]
}

#[test]
fn everything_in_order_is_all_ok_and_exits_0_without_a_write() {
    let env = env();
    let run = env.run(&["doctor"]).expect(0);
    for l in run.stdout.lines() {
        assert!(l.starts_with("OK "), "{l}\n{}", run.stdout);
    }
    for check in [
        "plane.reachable",
        "plane.api_key",
        "plane.paths",
        "plane.rate_limit",
        "plane.states[shop].start",
        "plane.states[orch].cancel",
        "plane.webhook_secret",
        "gitea.reachable",
        "gitea.token",
        "gitea.version",
        "gitea.repo[shop]",
        "gitea.branch[orch]",
        "gitea.push[shop]",
        "gitea.merge_style[orch]",
        "gitea.compare_by_sha",
        "telegram.token",
        "local.db",
        "local.state_dir",
        "local.locks",
    ] {
        line(&run, check);
    }
    assert!(line(&run, "gitea.version").contains("Gitea 1.25.2"));
    assert!(line(&run, "telegram.token").contains("@orch_standin_bot"));
    assert!(line(&run, "plane.states[shop].approved").contains("Approved"));
    assert_read_only(&servers(&env));
}

#[test]
fn a_refused_plane_key_fails_with_its_fix() {
    let mut env = env();
    env.set("ORCH_PLANE_API_KEY", "plane_api_wrong");
    let run = env.run(&["doctor"]).expect(1);
    let l = line(&run, "plane.api_key");
    assert!(l.starts_with("FAIL "), "{l}");
    assert!(l.contains("refused (HTTP 403)"), "{l}");
    assert!(l.contains("fix: set ORCH_PLANE_API_KEY"), "{l}");
    assert!(line(&run, "gitea.token").starts_with("OK "));
    assert_read_only(&servers(&env));
}

#[test]
fn a_state_name_missing_in_plane_fails_with_its_fix() {
    let env = env_with(vec![Project::shop().with(
        "states:
  approved: { names: [Aproved] }
  rejected: { names: [Rejected] }",
    )]);
    let run = env.run(&["doctor"]).expect(1);
    let l = line(&run, "plane.states[shop].approved");
    assert!(l.starts_with("FAIL "), "{l}");
    assert!(l.contains("\"Aproved\" not found in Plane"), "{l}");
    assert!(l.contains("fix: set projects[shop].states.approved"), "{l}");
    assert!(line(&run, "plane.states[shop].rejected").starts_with("OK "));
    assert_read_only(&servers(&env));
}

#[test]
fn a_missing_repository_fails_with_its_fix() {
    let mut env = TestEnv::builder()
        .projects([shop(), Project::web().with(MEANINGS)])
        .plane_states(&STATES)
        .standins(&[Standin::Plane])
        .build();
    // A Gitea that has shop's repository and not web's.
    let gitea = GiteaStandin::start(GITEA_TOKEN);
    gitea.add_repo("acme/shop", "main");
    env.set("ORCH_GITEA_URL", gitea.url())
        .set("ORCH_GITEA_TOKEN", GITEA_TOKEN);
    let run = env.run(&["doctor"]).expect(1);
    let l = line(&run, "gitea.repo[web]");
    assert!(l.starts_with("FAIL "), "{l}");
    assert!(l.contains("acme/web not found"), "{l}");
    assert!(l.contains("fix: check projects[web].repo"), "{l}");
    assert!(line(&run, "gitea.repo[shop]").starts_with("OK "));
    assert_read_only(&[env.plane().server(), gitea.server()]);
}

#[test]
fn a_token_without_push_permission_fails_with_its_fix() {
    let env = env();
    env.gitea().set_push_permission("acme/shop", false);
    let run = env.run(&["doctor"]).expect(1);
    let l = line(&run, "gitea.push[shop]");
    assert!(l.starts_with("FAIL "), "{l}");
    assert!(l.contains("permissions.push is false"), "{l}");
    assert!(l.contains("fix: give the token's user write access"), "{l}");
    assert!(line(&run, "gitea.push[orch]").starts_with("OK "));
    assert_read_only(&servers(&env));
}

#[test]
fn a_legacy_plane_and_a_gitea_without_sha_compare_only_warn_and_exit_0() {
    let env = env();
    env.plane().set_version(PlaneVersion::Legacy);
    env.gitea().set_compare(CompareSupport::BranchesOnly);
    let run = env.run(&["doctor"]).expect(0);
    let l = line(&run, "plane.paths");
    assert!(l.starts_with("WARN "), "{l}");
    assert!(
        l.contains("legacy Plane: only /issues/ paths answer"),
        "{l}"
    );
    assert!(l.contains("fix: "), "{l}");
    assert!(line(&run, "gitea.compare_by_sha").starts_with("WARN "));
    let warns = run.stdout.lines().filter(|l| l.starts_with("WARN")).count();
    assert_eq!(warns, 2, "{}", run.stdout);
    assert!(!run.stdout.contains("FAIL"), "{}", run.stdout);
    assert_read_only(&servers(&env));
}

#[test]
fn doctor_that_cannot_run_exits_2() {
    let mut env = env();
    env.unset("ORCH_GITEA_URL");
    let run = env.run(&["doctor"]).expect(2);
    assert!(run.stderr.contains("ORCH_GITEA_URL"), "{}", run.stderr);
    assert_eq!(run.stdout, "");
}

#[test]
fn json_has_ok_counts_and_one_object_per_check() {
    let env = env();
    env.gitea().set_push_permission("acme/orch", false);
    let run = env.run(&["doctor", "--json"]).expect(1);
    let v = run.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["counts"]["fail"], 1);
    assert_eq!(v["counts"]["warn"], 0);
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(v["counts"]["ok"].as_u64().unwrap() + 1, checks.len() as u64);
    for c in checks {
        let mut keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["check", "detail", "fix", "level"], "{c}");
    }
    let failed: Vec<_> = checks.iter().filter(|c| c["level"] == "FAIL").collect();
    assert_eq!(failed[0]["check"], "gitea.push[orch]");
    assert!(failed[0]["fix"].as_str().unwrap().contains("write access"));
    let ok = checks
        .iter()
        .find(|c| c["check"] == "plane.api_key")
        .unwrap();
    assert_eq!(ok["level"], "OK");
    assert_eq!(ok["fix"], serde_json::Value::Null);
    assert_read_only(&servers(&env));
}

#[test]
fn a_refused_telegram_token_fails_with_its_fix() {
    let mut env = env();
    env.set("ORCH_TELEGRAM_BOT_TOKEN", "999:wrong");
    let run = env.run(&["doctor"]).expect(1);
    let l = line(&run, "telegram.token");
    assert!(l.starts_with("FAIL "), "{l}");
    assert!(l.contains("refused: Unauthorized"), "{l}");
    assert!(l.contains("fix: set ORCH_TELEGRAM_BOT_TOKEN"), "{l}");
    assert!(!run.stdout.contains("999:wrong"), "the token never shows");
    assert_read_only(&servers(&env));
}

/// A busy Bot API (429, or a 502 page from a proxy) judges nothing about the token: a
/// warning, never "refused"; a 200 that is not the Bot API's is a failure to reach it.
#[test]
fn a_busy_or_foreign_telegram_answer_is_not_a_refused_token() {
    let env = env();
    for (reply, level, says) in [
        (
            Reply::json(
                429,
                &serde_json::json!({"ok": false, "error_code": 429,
                "description": "Too Many Requests: retry after 5", "parameters": {"retry_after": 5}}),
            ),
            "WARN ",
            "busy (Too Many Requests: retry after 5)",
        ),
        (
            Reply::raw(502, "text/html", "<html><body>Bad Gateway</body></html>"),
            "WARN ",
            "busy (HTTP 502)",
        ),
        (
            Reply::raw(200, "text/html", "<html>captive portal</html>"),
            "FAIL ",
            "not a Bot API answer",
        ),
    ] {
        env.telegram().script(Some("GET"), "/bot", reply, 1);
        let run = env.run(&["doctor"]);
        let l = line(&run, "telegram.token");
        assert!(l.starts_with(level), "{l}");
        assert!(l.contains(says), "{l}");
        assert!(!l.contains("refused"), "{l}");
    }
    assert_read_only(&servers(&env));
}

#[test]
fn an_unreachable_plane_fails_once_and_gitea_is_still_checked() {
    let mut env = env();
    // A loopback port nothing listens on any more: the connection is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.set("ORCH_PLANE_URL", &format!("http://127.0.0.1:{port}"));
    let run = env.run(&["doctor"]).expect(1);
    let l = line(&run, "plane.reachable");
    assert!(l.starts_with("FAIL "), "{l}");
    assert!(l.contains("fix: check ORCH_PLANE_URL"), "{l}");
    assert!(
        !run.stdout.contains("plane.api_key") && !run.stdout.contains("plane.states"),
        "checks that need Plane are left out:\n{}",
        run.stdout
    );
    assert!(line(&run, "gitea.push[shop]").starts_with("OK "));
    let fails = run.stdout.lines().filter(|l| l.starts_with("FAIL")).count();
    assert_eq!(fails, 1, "{}", run.stdout);
}
