//! `staging-check` through the real binary: each check kind against loopback servers
//! and real commands (pass, fail, timeout, connection refused, malformed answer), the
//! verdict and exit codes, `--json`, and the report read back by the gate.

use std::net::TcpListener;
use std::sync::Arc;

use orch::core::artefact::{parse_staging_report, StagingStatus};
use orch::core::gate::{evaluate, GateDecision, GateInputs, PrFacts};
use orch::core::stage::Stage;
use orch::standin::server::{Recorded, Reply, Server};

use crate::common::{Run, TestEnv};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const OLD_SHA: &str = "fedcba9876543210fedcba9876543210fedcba98";

const PROJECTS: &str = r#"
plane: { workspace: acme }
projects:
  - name: orch
    plane_project_id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02
    plane_identifier: ORCH
    repo: acme/orch
    self_hosting: true
  - name: sandbox
    plane_project_id: 1c2d3e4f-0000-4000-8000-000000000009
    plane_identifier: SBX
    repo: acme/sandbox
"#;

/// A stand-in staging install: `/health` ok, `/ready` JSON, `/broken` 503, `/html`
/// not JSON, `/hang` never answers, `/version` the running revision.
fn staging(revision: &'static str) -> Server {
    Server::start(Arc::new(move |r: &Recorded| match r.path.as_str() {
        "/health" => Reply::raw(200, "text/plain", "ok"),
        "/ready" => Reply::json(200, &serde_json::json!({"checks": {"db": "ok"}})),
        "/degraded" => Reply::json(200, &serde_json::json!({"checks": {"db": "down"}})),
        "/broken" => Reply::raw(503, "text/plain", "maintenance"),
        "/html" => Reply::raw(200, "text/html", "<html>oops</html>"),
        "/hang" => Reply::empty(200).unanswered(),
        "/version" => Reply::json(200, &serde_json::json!({"revision": revision})),
        _ => Reply::empty(404),
    }))
}

/// A loopback port nothing listens on.
fn refused_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/health")
}

fn env_with_checks(checks: &str) -> TestEnv {
    TestEnv::with_pipeline(&format!("{PROJECTS}staging:\n  checks:\n{checks}"))
}

/// The line of check `id` in the text output.
fn line<'a>(run: &'a Run, id: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no line for {id}:\n{}", run.stdout))
}

fn last_line(run: &Run) -> &str {
    run.stdout.lines().last().unwrap_or("")
}

#[test]
fn http_checks_pass_fail_time_out_and_get_refused() {
    let s = staging(SHA);
    let u = s.url();
    let env = env_with_checks(&format!(
        r#"    - {{ id: H1, name: health, kind: http, url: "{u}/health", expect_body: ok }}
    - {{ id: H2, name: ready, kind: http, url: "{u}/ready", expect_json: {{ field: checks.db, equals: ok }} }}
    - {{ id: H3, name: broken, kind: http, url: "{u}/broken" }}
    - {{ id: H4, name: html, kind: http, url: "{u}/html", expect_json: {{ field: checks.db, equals: ok }} }}
    - {{ id: H5, name: hang, kind: http, url: "{u}/hang", timeout_s: 1 }}
    - {{ id: H6, name: refused, kind: http, url: "{refused}?token=s3cret" }}
    - {{ id: H7, name: degraded, kind: http, url: "{u}/degraded", expect_json: {{ field: checks.db, equals: ok }} }}
    - {{ id: H8, name: maintenance is expected, kind: http, method: HEAD, url: "{u}/broken", expect_status: 503 }}
"#,
        refused = refused_url()
    ));
    let run = env.run(&["staging-check"]).expect(1);
    assert!(
        !run.stdout.contains("s3cret") && !run.stderr.contains("s3cret"),
        "query strings are never printed"
    );
    assert!(
        line(&run, "H1").contains("REAL           PASS"),
        "{}",
        run.stdout
    );
    assert!(line(&run, "H2").contains("PASS"), "{}", run.stdout);
    assert!(
        line(&run, "H3").contains("FAIL")
            && line(&run, "H3").contains("HTTP 503 (expected 200): maintenance")
    );
    assert!(line(&run, "H4").contains("not JSON"), "{}", run.stdout);
    assert!(line(&run, "H5").contains("timed out"), "{}", run.stdout);
    assert!(
        line(&run, "H6").contains("could not connect"),
        "{}",
        run.stdout
    );
    assert!(
        line(&run, "H7").contains("checks.db is \"down\""),
        "{}",
        run.stdout
    );
    assert!(line(&run, "H8").contains("PASS"), "{}", run.stdout);
    assert_eq!(last_line(&run), "VERDICT: FAILED");
    assert!(
        run.stderr
            .contains("staging-check: checks=8 passed=3 failed=5"),
        "{}",
        run.stderr
    );
    let heads = s.requests().iter().filter(|r| r.method == "HEAD").count();
    assert_eq!(heads, 1, "method is sent as configured");
}

#[test]
fn command_checks_pass_fail_time_out_and_could_not_run() {
    let env = env_with_checks(
        r#"    - { id: K1, name: ok, kind: command, argv: [/bin/sh, -c, "echo migrations done"], expect_output: done }
    - { id: K2, name: exit3, kind: command, argv: [/bin/sh, -c, "echo bad >&2; exit 3"] }
    - { id: K3, name: hang, kind: command, argv: [sleep, "300"], timeout_s: 1 }
    - { id: K4, name: missing, kind: command, argv: [/nonexistent/check] }
    - { id: K5, name: wrong output, kind: command, argv: [/bin/echo, "{not json"], expect_output: ready }
    - { id: K6, name: expected nonzero, kind: command, argv: [/bin/sh, -c, "exit 4"], expect_exit: 4 }
"#,
    );
    let run = env.run(&["staging-check"]).expect(1);
    assert!(line(&run, "K1").contains("PASS"), "{}", run.stdout);
    assert!(
        line(&run, "K2").contains("exit 3 (expected 0): bad"),
        "{}",
        run.stdout
    );
    assert!(
        line(&run, "K3").contains("timed out: sleep killed after 1s"),
        "{}",
        run.stdout
    );
    assert!(
        line(&run, "K4").contains("FAIL") && line(&run, "K4").contains("could not run"),
        "{}",
        run.stdout
    );
    assert!(
        line(&run, "K5").contains("stdout lacks \"ready\""),
        "{}",
        run.stdout
    );
    assert!(line(&run, "K6").contains("PASS"), "{}", run.stdout);
    assert!(
        run.stdout.contains("REASON: K4 could not be run"),
        "{}",
        run.stdout
    );
    assert_eq!(last_line(&run), "VERDICT: FAILED");
}

#[test]
fn a_hanging_check_does_not_stall_the_others() {
    // K1 would hang for five minutes; it is killed at its own 1 s deadline while H1
    // runs beside it, and the run ends with both reported.
    let s = staging(SHA);
    let env = env_with_checks(&format!(
        r#"    - {{ id: K1, name: hang, kind: command, argv: [sleep, "300"], timeout_s: 1 }}
    - {{ id: H1, name: health, kind: http, url: "{}/health", timeout_s: 30 }}
"#,
        s.url()
    ));
    let run = env.run(&["staging-check", "--json"]).expect(1);
    let j = run.json();
    assert_eq!(j["checks"][0]["result"], "fail");
    assert_eq!(j["checks"][1]["result"], "pass");
    assert_eq!(s.count(Some("GET"), "/health"), 1);
}

#[test]
fn allowlisted_failures_are_waived_unless_strict_or_tolerance_is_off() {
    let s = staging(SHA);
    let env_text = format!(
        r#"    - {{ id: C1, name: health, kind: http, url: "{u}/health" }}
    - {{ id: C9a, name: sandbox branch, kind: http, url: "{refused}" }}
"#,
        u = s.url(),
        refused = refused_url()
    );
    let mut env = env_with_checks(&env_text);
    let run = env.run(&["staging-check"]).expect(0);
    assert!(
        line(&run, "C9a").contains("SANDBOX_INFRA  FAIL"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("\nINFRA-WAIVED: C9a\n"),
        "{}",
        run.stdout
    );
    assert_eq!(last_line(&run), "VERDICT: SUCCESS");

    let json = env.run(&["staging-check", "--json"]).expect(0).json();
    assert_eq!(json["verdict"]["status"], "SUCCESS");
    assert_eq!(json["verdict"]["waived"], serde_json::json!(["C9a"]));
    assert_eq!(json["checks"][1]["waived"], true);
    assert_eq!(json["exit_code"], 0);

    let strict = env.run(&["staging-check", "--strict"]).expect(1);
    assert!(!strict.stdout.contains("INFRA-WAIVED"), "{}", strict.stdout);
    assert!(strict
        .stdout
        .contains("SANDBOX_INFRA check C9a failed (--strict)"));
    assert_eq!(last_line(&strict), "VERDICT: FAILED");

    env.set("ORCH_STAGING_INFRA_TOLERANCE_ENABLED", "false");
    let off = env.run(&["staging-check"]).expect(1);
    assert_eq!(last_line(&off), "VERDICT: FAILED");

    // The allowlist is the only door: an empty one makes C9a REAL.
    env.set("ORCH_STAGING_INFRA_TOLERANCE_ENABLED", "true")
        .set("ORCH_STAGING_INFRA_ALLOWLIST", "");
    let real = env.run(&["staging-check"]).expect(1);
    assert!(line(&real, "C9a").contains("REAL"), "{}", real.stdout);
}

#[test]
fn no_checks_is_failed_not_green() {
    let env = TestEnv::new();
    let run = env.run(&["staging-check"]).expect(1);
    assert!(
        run.stdout
            .contains("REASON: no staging checks are configured"),
        "{}",
        run.stdout
    );
    assert_eq!(last_line(&run), "VERDICT: FAILED");
    let j = env.run(&["staging-check", "--json"]).expect(1).json();
    assert_eq!(j["verdict"]["status"], "FAILED");
    assert_eq!(j["exit_code"], 1);
}

#[test]
fn bad_check_definitions_exit_2_naming_the_field() {
    let cases = [
        ("    - { id: C1, name: h, kind: http }\n", "staging.checks[0].url"),
        ("    - { id: C1, name: h, kind: ftp }\n", "staging.checks[0].kind"),
        (
            "    - { id: C1, name: h, kind: http, url: \"http://a/\", timeout_s: 0 }\n",
            "staging.checks[0].timeout_s",
        ),
        (
            "    - { id: C1, name: c, kind: command, argv: [x] }\n    - { id: C2, name: c, kind: command, argv: [x], shell: true }\n",
            "staging.checks[1].shell",
        ),
    ];
    for (checks, key) in cases {
        let env = env_with_checks(checks);
        let run = env.run(&["staging-check"]).expect(2);
        assert!(run.stderr.contains(key), "{checks}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "no verdict on a configuration error");
        let check = env.run(&["config", "check"]).expect(2);
        assert!(check.stderr.contains(key), "config check: {}", check.stderr);
    }
    let env = env_with_checks("    - { id: K1, name: ok, kind: command, argv: [/bin/true] }\n");
    let run = env
        .run(&["staging-check", "--expected-revision", "not-a-sha"])
        .expect(2);
    assert!(run.stderr.contains("--expected-revision"), "{}", run.stderr);
    let run = env.run(&["staging-check", "--task", "ORCH-404"]).expect(2);
    assert!(run.stderr.contains("no task"), "{}", run.stderr);
}

fn add_task(env: &TestEnv) {
    env.run(&[
        "task",
        "add",
        "--project",
        "orch",
        "--work-item",
        "0b8f5d2e-1111-4c3a-9d2e-000000000001",
        "--key",
        "ORCH-7",
        "--title",
        "Fix login",
    ])
    .expect(0);
}

fn gate_inputs(report_text: &str) -> GateInputs {
    let mut inputs = GateInputs::empty();
    inputs.staging = parse_staging_report(Some(report_text));
    inputs.freshness_applies = true;
    inputs.pr = Ok(Some(PrFacts {
        number: 12,
        open: true,
        merged: false,
        mergeable: Some(true),
        head_sha: SHA.into(),
    }));
    inputs
}

#[test]
fn a_fresh_staging_writes_the_task_report_the_gate_advances_on() {
    let s = staging(SHA);
    let mut env = env_with_checks(&format!(
        r#"    - {{ id: C1, name: health, kind: http, url: "{u}/health" }}
    - {{ id: F1, name: image, kind: image-freshness, url: "{u}/version", json_field: revision }}
    - {{ id: C9b, name: analyst job, kind: command, argv: [/bin/false] }}
"#,
        u = s.url()
    ));
    add_task(&env);
    env.set("EXPECTED_REVISION", &SHA[..12]);
    let extra = env.path("copy.md");
    let run = env
        .run(&[
            "staging-check",
            "--task",
            "ORCH-7",
            "--report",
            extra.to_str().unwrap(),
        ])
        .expect(0);
    assert!(line(&run, "F1").contains("PASS"), "{}", run.stdout);
    assert!(run.stdout.contains("INFRA-WAIVED: C9b"), "{}", run.stdout);

    let text = std::fs::read_to_string(env.path("artefacts/ORCH-7/10-staging-report.md")).unwrap();
    assert_eq!(text, std::fs::read_to_string(&extra).unwrap());
    let report = parse_staging_report(Some(&text)).unwrap();
    assert_eq!(report.status, StagingStatus::Success);
    assert_eq!(report.checked_revision.as_deref(), Some(SHA));
    assert_eq!(report.waived, vec!["C9b"]);
    assert!(text.contains("checked_at: 2026-11-25T03:00:00Z"), "{text}");
    let d = evaluate(Stage::DeployStaging, &gate_inputs(&text));
    assert!(
        matches!(
            d,
            GateDecision::Advance {
                to: Stage::Deploy,
                ..
            }
        ),
        "{d:?}"
    );

    let validated: String = env
        .db()
        .query_row(
            "SELECT validated_revision FROM tasks WHERE key = 'ORCH-7'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(validated, SHA);
    let leftovers = std::fs::read_dir(env.path("artefacts/ORCH-7"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 1, "atomic write leaves no temporary file");
}

#[test]
fn a_stale_image_is_a_real_failure_and_the_gate_rolls_back() {
    let s = staging(OLD_SHA);
    let mut env = env_with_checks(&format!(
        "    - {{ id: F1, name: image, kind: image-freshness, url: \"{}/version\", json_field: revision }}\n",
        s.url()
    ));
    add_task(&env);
    env.set("EXPECTED_REVISION", SHA);
    let run = env.run(&["staging-check", "--task", "1"]).expect(1);
    assert!(
        line(&run, "F1").contains("REAL           FAIL"),
        "{}",
        run.stdout
    );
    assert!(line(&run, "F1").contains("stale image"), "{}", run.stdout);
    let text = std::fs::read_to_string(env.path("artefacts/ORCH-7/10-staging-report.md")).unwrap();
    let report = parse_staging_report(Some(&text)).unwrap();
    assert_eq!(report.status, StagingStatus::Failed);
    assert_eq!(report.checked_revision.as_deref(), Some(OLD_SHA));
    let d = evaluate(Stage::DeployStaging, &gate_inputs(&text));
    assert!(
        matches!(
            d,
            GateDecision::Rollback {
                to: Stage::Development,
                ..
            }
        ),
        "{d:?}"
    );
    let validated: Option<String> = env
        .db()
        .query_row(
            "SELECT validated_revision FROM tasks WHERE key = 'ORCH-7'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(validated, None, "a stale image validates nothing");
}

#[test]
fn freshness_reads_a_command_and_is_skipped_where_it_does_not_apply() {
    let mut env = env_with_checks(&format!(
        r#"    - {{ id: F1, name: image, kind: image-freshness, argv: [/bin/echo, "{SHA}"] }}
    - {{ id: F2, name: sandbox image, kind: image-freshness, argv: [/bin/echo, garbage], project: sandbox }}
    - {{ id: F3, name: malformed, kind: image-freshness, argv: [/bin/echo, "v1.2.3"], project: orch }}
"#
    ));
    env.set("EXPECTED_REVISION", SHA);
    let run = env.run(&["staging-check"]).expect(1);
    assert!(line(&run, "F1").contains("PASS"), "{}", run.stdout);
    assert!(
        line(&run, "F2").contains("SKIP"),
        "sandbox is not the self-hosting repo: {}",
        run.stdout
    );
    assert!(line(&run, "F3").contains("no revision"), "{}", run.stdout);
    env.set("ORCH_IMAGE_FRESHNESS_REPOS", "acme/sandbox");
    let run = env.run(&["staging-check"]).expect(1);
    assert!(line(&run, "F1").contains("SKIP"), "{}", run.stdout);
    assert!(line(&run, "F2").contains("FAIL"), "{}", run.stdout);
    env.set("ORCH_IMAGE_FRESHNESS_ENABLED", "false");
    let run = env.run(&["staging-check"]).expect(1);
    assert!(
        run.stdout
            .contains("REASON: every configured check was skipped"),
        "{}",
        run.stdout
    );
}

#[test]
fn an_unwritable_report_turns_a_green_run_failed() {
    let env = env_with_checks("    - { id: K1, name: ok, kind: command, argv: [/bin/true] }\n");
    std::fs::write(env.path("blocker"), "a file, not a folder").unwrap();
    let bad = env.path("blocker/report.md");
    let run = env
        .run(&["staging-check", "--report", bad.to_str().unwrap()])
        .expect(1);
    assert!(line(&run, "K1").contains("PASS"), "{}", run.stdout);
    assert!(
        run.stdout.contains("REASON: internal error"),
        "{}",
        run.stdout
    );
    assert_eq!(last_line(&run), "VERDICT: FAILED");
}

#[test]
fn an_older_task_report_never_outlives_a_failed_run() {
    // A green run writes the task's report; then a run whose extra --report target is
    // unwritable must not leave that older SUCCESS for the gate.
    let mut env = env_with_checks("    - { id: K1, name: ok, kind: command, argv: [/bin/true] }\n");
    add_task(&env);
    // ORCH-7's project is the self-hosting one, where image freshness applies by default:
    // without a freshness check the gate could never pass, so the run is not green.
    let run = env.run(&["staging-check", "--task", "ORCH-7"]).expect(1);
    assert!(
        run.stdout
            .contains("no image-freshness check reported the revision"),
        "{}",
        run.stdout
    );
    env.set("ORCH_IMAGE_FRESHNESS_ENABLED", "false");
    env.run(&["staging-check", "--task", "ORCH-7"]).expect(0);
    let task_report = env.path("artefacts/ORCH-7/10-staging-report.md");
    assert!(std::fs::read_to_string(&task_report)
        .unwrap()
        .contains("staging_status: SUCCESS"));
    std::fs::write(env.path("blocker"), "a file, not a folder").unwrap();
    let bad = env.path("blocker/report.md");
    let run = env
        .run(&[
            "staging-check",
            "--task",
            "ORCH-7",
            "--report",
            bad.to_str().unwrap(),
        ])
        .expect(1);
    assert_eq!(last_line(&run), "VERDICT: FAILED");
    let text = std::fs::read_to_string(&task_report).unwrap();
    assert!(text.contains("staging_status: FAILED"), "{text}");
}
