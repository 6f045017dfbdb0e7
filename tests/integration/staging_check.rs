//! `staging-check` through the real binary: each check kind against loopback servers
//! and real commands (pass, fail, timeout, connection refused, malformed answer), the
//! verdict and exit codes, `--json`, and the report read back by the gate.

use std::net::TcpListener;
use std::sync::Arc;

use orch::core::artefact::{parse_staging_report, StagingStatus};
use orch::core::facts::PrFacts;
use orch::core::gate::{evaluate, GateDecision, GateInputs};
use orch::core::stage::Stage;
use orch::standin::gitea::{GiteaStandin, PullSeed, DEFAULT_TOKEN};
use orch::standin::server::{Recorded, Reply, Server};

use crate::common::{pipeline, seed_task, snapshot, Project, Run, SeedTask, TestEnv};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const OLD_SHA: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// Two projects (a self-hosting one and a sandbox), no agents.
fn projects() -> String {
    pipeline::render(&[Project::orch(), Project::sandbox()], "", "")
}

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
    TestEnv::with_pipeline(&format!("{}staging:\n  checks:\n{checks}", projects()))
}

/// The line of check `id` in the text output.
fn line<'a>(run: &'a Run, id: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no line for {id}:\n{}", run.stdout))
}

/// Asserts that check `id`'s line contains `needle`.
#[track_caller]
fn line_has(run: &Run, id: &str, needle: &str) {
    assert!(line(run, id).contains(needle), "{}", run.stdout);
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
    line_has(&run, "H1", "REAL           PASS");
    line_has(&run, "H2", "PASS");
    assert!(
        line(&run, "H3").contains("FAIL")
            && line(&run, "H3").contains("HTTP 503 (expected 200): maintenance")
    );
    line_has(&run, "H4", "not JSON");
    line_has(&run, "H5", "timed out");
    line_has(&run, "H6", "could not connect");
    line_has(&run, "H7", "checks.db is \"down\"");
    line_has(&run, "H8", "PASS");
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
    line_has(&run, "K1", "PASS");
    line_has(&run, "K2", "exit 3 (expected 0): bad");
    line_has(&run, "K3", "timed out: sleep killed after 1s");
    assert!(
        line(&run, "K4").contains("FAIL") && line(&run, "K4").contains("could not run"),
        "{}",
        run.stdout
    );
    line_has(&run, "K5", "stdout lacks \"ready\"");
    line_has(&run, "K6", "PASS");
    run.stdout_has("REASON: K4 could not be run");
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
    line_has(&run, "C9a", "SANDBOX_INFRA  FAIL");
    run.stdout_has("\nINFRA-WAIVED: C9a\n");
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
    line_has(&real, "C9a", "REAL");
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
        // Not initialised: `init` itself refuses an invalid pipeline file.
        let env = TestEnv::uninitialised(&format!("{}staging:\n  checks:\n{checks}", projects()));
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
    run.stderr_has("--expected-revision");
    let run = env.run(&["staging-check", "--task", "ORCH-404"]).expect(2);
    run.stderr_has("no task");
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
    inputs.validated_revision = Some(SHA.into());
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
    line_has(&run, "F1", "PASS");
    run.stdout_has("INFRA-WAIVED: C9b");

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
    line_has(&run, "F1", "REAL           FAIL");
    line_has(&run, "F1", "stale image");
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
    line_has(&run, "F1", "PASS");
    assert!(
        line(&run, "F2").contains("SKIP"),
        "sandbox is not the self-hosting repo: {}",
        run.stdout
    );
    line_has(&run, "F3", "no revision");
    env.set("ORCH_IMAGE_FRESHNESS_REPOS", "acme/sandbox");
    let run = env.run(&["staging-check"]).expect(1);
    line_has(&run, "F1", "SKIP");
    line_has(&run, "F2", "FAIL");
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
    line_has(&run, "K1", "PASS");
    run.stdout_has("REASON: internal error");
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
    // Freshness off: the run pins the PR head, read from Gitea.
    env.set("ORCH_IMAGE_FRESHNESS_ENABLED", "false");
    let branch: String = env
        .db()
        .query_row("SELECT branch FROM tasks WHERE key = 'ORCH-7'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let g = GiteaStandin::start(DEFAULT_TOKEN);
    g.add_repo("acme/orch", "main");
    g.add_pull("acme/orch", &PullSeed::open(3, &branch).head_sha(SHA));
    env.set("ORCH_GITEA_URL", g.url())
        .set("ORCH_GITEA_TOKEN", DEFAULT_TOKEN);
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

// ---------------------------------------------------------------------------------------
// The pin on every path: an ordinary repository (image freshness does not apply), the
// deployer's own call (`--report FILE`, the task from ORCH_TASK_ID), and the merge.

/// The self-hosting project and an ordinary one, no agents.
fn shop_projects() -> String {
    pipeline::render(&[Project::orch(), Project::shop()], "", "")
}
const SHOP_REPO: &str = "acme/shop";
const SHOP_BRANCH: &str = "task/shop-1-basket";
/// The head staging is deployed with.
const HEAD: &str = "c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2";
const MERGE_PATH: &str = "/api/v1/repos/acme/shop/pulls/7/merge";

/// A Gitea stand-in with `acme/shop` and PR #7 from [`SHOP_BRANCH`] at [`HEAD`].
fn shop_gitea() -> GiteaStandin {
    let g = GiteaStandin::start(DEFAULT_TOKEN);
    g.add_repo(SHOP_REPO, "main");
    g.add_pull(
        SHOP_REPO,
        &PullSeed::open(7, SHOP_BRANCH)
            .head_sha(HEAD)
            .title("Add a basket page"),
    );
    g
}

/// An env on default settings (apart from URLs and secrets) with the shop task SHOP-1 at
/// deploy-staging, no PR recorded and nothing validated, and the job environment
/// run-job gives the deployer (ORCH_TASK_ID and friends).
fn shop_env(gitea_url: &str, staging_url: &str) -> TestEnv {
    let mut env = TestEnv::with_pipeline(&format!(
        "{}staging:\n  checks:\n    - {{ id: C1, name: health, kind: http, url: \"{staging_url}/health\" }}\n",
        shop_projects()
    ));
    env.set("ORCH_GITEA_URL", gitea_url)
        .set("ORCH_GITEA_TOKEN", DEFAULT_TOKEN)
        .set("ORCH_MERGE_GUARD_MERGEABLE_WAIT_S", "0")
        .set("ORCH_HTTP_TIMEOUT_S", "10");
    env.run(&["init"]).expect(0);
    let task = SeedTask::new(&Project::shop(), 1, Stage::DeployStaging)
        .work_item("0b8f5d2e-1111-4c3a-9d2e-000000000001")
        .title("Add a basket page")
        .branch(SHOP_BRANCH);
    let id = seed_task(&env, &task).to_string();
    let artefacts = env.path("artefacts/SHOP-1").display().to_string();
    env.set("ORCH_TASK_ID", &id)
        .set("ORCH_TASK_KEY", "SHOP-1")
        .set("ORCH_JOB_ID", "1")
        .set("ORCH_TASK_ARTEFACTS", &artefacts);
    env
}

fn validated(env: &TestEnv) -> Option<String> {
    env.db()
        .query_row(
            "SELECT validated_revision FROM tasks WHERE key = 'SHOP-1'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

fn task_report(env: &TestEnv) -> String {
    std::fs::read_to_string(env.path("artefacts/SHOP-1/10-staging-report.md")).unwrap()
}

#[test]
fn a_deployer_pins_the_pr_head_of_an_ordinary_repo_and_the_merge_uses_it() {
    let g = shop_gitea();
    let s = staging(SHA);
    let env = shop_env(g.url(), s.url());
    // The deployer's staging step, word for word: the task comes from ORCH_TASK_ID.
    let file = env.path("deployer-staging.md");
    let run = env
        .run(&["staging-check", "--report", file.to_str().unwrap()])
        .expect(0);
    line_has(&run, "C1", "PASS");
    assert!(
        run.stdout
            .ends_with(&format!("PIN: pr-head {HEAD} (PR #7)\nVERDICT: SUCCESS\n")),
        "{}",
        run.stdout
    );
    assert_eq!(validated(&env).as_deref(), Some(HEAD));
    let pr: Option<i64> = env
        .db()
        .query_row(
            "SELECT pr_number FROM tasks WHERE key = 'SHOP-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pr, Some(7), "the PR found by its branch is recorded");
    // The task's own report, which the gate reads, and the deployer's copy.
    let text = task_report(&env);
    assert_eq!(text, std::fs::read_to_string(&file).unwrap());
    assert!(
        text.contains(&format!(
            "staging_status: SUCCESS\nchecked_revision: {HEAD}\npin: pr-head\npr_number: 7\n"
        )),
        "{text}"
    );
    // The deploy-staging gate on a default install passes on it.
    let snapshot = g.pull(SHOP_REPO, 7).unwrap();
    let mut inputs = GateInputs::empty();
    inputs.staging = parse_staging_report(Some(&text));
    inputs.freshness_applies =
        orch::core::staging_check::freshness_applies(true, &[], Some(("shop", SHOP_REPO, false)));
    inputs.validated_revision = validated(&env);
    inputs.pr = Ok(Some(PrFacts {
        number: 7,
        open: snapshot.state == "open",
        merged: snapshot.merged,
        mergeable: Some(true),
        head_sha: snapshot.head_sha.clone(),
    }));
    let d = evaluate(Stage::DeployStaging, &inputs);
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
    let json = env.run(&["staging-check", "--json"]).expect(0).json();
    assert_eq!(json["pin"], "pr-head");
    assert_eq!(json["pr_number"], 7);
    assert_eq!(json["checked_revision"], HEAD);

    // The merge pins that revision.
    let run = env
        .run(&["merge-guard", "--task", "1", "--merge"])
        .expect(0);
    assert!(
        run.stdout.starts_with("MERGE-GUARD: MERGED "),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(g.merge_calls(SHOP_REPO, 7), 1);
    let merge: Vec<serde_json::Value> = g
        .server()
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == MERGE_PATH)
        .map(|r| r.json().unwrap())
        .collect();
    assert_eq!(merge[0]["head_commit_id"], HEAD);
    assert!(g.pull(SHOP_REPO, 7).unwrap().merged);
}

#[test]
fn a_head_that_moves_during_the_check_is_refused_and_nothing_is_recorded() {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::Mutex;
    let g = shop_gitea();
    // Staging answers /health only once the test has pushed a new head: the push lands
    // while the check runs, after its first read of the PR.
    let (hit_tx, hit_rx) = channel::<()>();
    let (go_tx, go_rx) = channel::<()>();
    let hit_tx: Mutex<Sender<()>> = Mutex::new(hit_tx);
    let go_rx = Mutex::new(go_rx);
    let s = Server::start(Arc::new(move |_r: &Recorded| {
        let _ = hit_tx.lock().unwrap().send(());
        let _ = go_rx
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(30));
        Reply::raw(200, "text/plain", "ok")
    }));
    let env = shop_env(g.url(), s.url());
    // An earlier run validated the head; this one, failing, must not leave that behind.
    env.db()
        .execute(
            "UPDATE tasks SET validated_revision = ?1 WHERE key = 'SHOP-1'",
            [HEAD],
        )
        .unwrap();
    let child = env
        .command(&["staging-check", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    hit_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the check reaches staging");
    g.push(SHOP_REPO, SHOP_BRANCH, SHA);
    go_tx.send(()).unwrap();
    let run: Run = child.wait_with_output().unwrap().into();
    let run = run.expect(1);
    let j = run.json();
    assert_eq!(j["checks"][0]["result"], "pass", "staging itself was fine");
    assert_eq!(j["verdict"]["status"], "FAILED");
    let reasons = j["verdict"]["reasons"].to_string();
    assert!(
        reasons.contains("internal error: PR #7's head moved during the check")
            && reasons.contains(HEAD)
            && reasons.contains(SHA),
        "{reasons}"
    );
    assert_eq!(j["checked_revision"], serde_json::Value::Null);
    assert_eq!(validated(&env), None, "nothing recorded");
    let report = parse_staging_report(Some(&task_report(&env))).unwrap();
    assert_eq!(report.status, StagingStatus::Failed);
    assert_eq!(report.checked_revision, None);
    // And the merge refuses, saying what to run.
    let run = env
        .run(&["merge-guard", "--task", "1", "--merge"])
        .expect(2);
    assert!(
        run.stdout.starts_with("MERGE-GUARD: ERROR "),
        "{}",
        run.stdout
    );
    run.stdout_has("orch staging-check --task SHOP-1");
    assert_eq!(g.merge_calls(SHOP_REPO, 7), 0);
}

#[test]
fn without_a_pr_a_task_never_gets_a_green_run() {
    // Gitea's real answers about the PR are verdicts: FAILED, exit 1.
    let s = staging(SHA);
    let g = GiteaStandin::start(DEFAULT_TOKEN);
    g.add_repo(SHOP_REPO, "main");
    let mut env = shop_env(g.url(), s.url());

    // Gitea up, but no PR for the task's branch.
    let run = env.run(&["staging-check"]).expect(1);
    assert!(
        run.stdout
            .contains("task SHOP-1 has no open pull request for branch task/shop-1-basket"),
        "{}",
        run.stdout
    );
    assert_eq!(last_line(&run), "VERDICT: FAILED");
    assert_eq!(validated(&env), None);
    assert!(task_report(&env).contains("staging_status: FAILED"));

    // A PR, and an expected revision that is not its head.
    g.add_pull(SHOP_REPO, &PullSeed::open(7, SHOP_BRANCH).head_sha(HEAD));
    let run = env
        .run(&["staging-check", "--expected-revision", OLD_SHA])
        .expect(1);
    assert!(
        run.stdout.contains(&format!(
            "the expected revision {OLD_SHA} (--expected-revision / EXPECTED_REVISION) is not PR #7's head {HEAD}"
        )),
        "{}",
        run.stdout
    );
    assert_eq!(validated(&env), None);
    env.run(&["staging-check", "--expected-revision", &HEAD[..10]])
        .expect(0);
    assert_eq!(validated(&env).as_deref(), Some(HEAD));

    // Gitea not configured at all: a configuration error, before any check runs.
    env.unset("ORCH_GITEA_URL");
    let run = env.run(&["staging-check"]).expect(2);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("ORCH_GITEA_URL") && run.stderr.contains("SHOP-1"),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------
// Gitea could not tell: no verdict (exit 2), nothing written, nothing recorded, and an
// earlier run's report and pin are gone, so the gate never reads them as this run's word
// (a Gitea outage must not send the task back to its developer).

const PULLS: &str = "/api/v1/repos/acme/shop/pulls";
const PULL_7: &str = "/api/v1/repos/acme/shop/pulls/7";

/// Leaves what an earlier green run left: a SUCCESS report for the task, in the deployer's
/// copy too, and the validated revision.
fn seed_earlier_success(env: &TestEnv) -> std::path::PathBuf {
    let text = format!(
        "---\nstaging_status: SUCCESS\nchecked_revision: {HEAD}\npin: pr-head\npr_number: 7\n---\n# Staging report\n"
    );
    env.artefact("SHOP-1", "10-staging-report.md", &text);
    let copy = env.path("deployer-staging.md");
    std::fs::write(&copy, &text).unwrap();
    env.db()
        .execute(
            "UPDATE tasks SET validated_revision = ?1 WHERE key = 'SHOP-1'",
            [HEAD],
        )
        .unwrap();
    copy
}

/// Asserts that `run` had no verdict: exit 2, the `no verdict` line last (saying `what`
/// could not be read, and `why` inside the brackets), no VERDICT, no report (neither the
/// task's nor `copy`), no validated revision.
#[track_caller]
fn assert_no_verdict(env: &TestEnv, run: Run, what: &str, why: &str, copy: &std::path::Path) {
    let run = run.expect(2);
    let last = last_line(&run);
    assert!(
        last.starts_with(&format!(
            "staging-check: could not read {what} from Gitea ("
        )) && last.ends_with("): no verdict; nothing recorded; run it again")
            && last.contains(why),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(!run.stdout.contains("VERDICT"), "{}", run.stdout);
    assert!(!run.stdout.contains("PIN:"), "{}", run.stdout);
    assert!(
        !env.path("artefacts/SHOP-1/10-staging-report.md").exists(),
        "the older report is removed and none written"
    );
    assert!(!copy.exists(), "the --report copy too");
    assert_eq!(validated(env), None, "the older pin is cleared");
    run.stderr_has("no verdict");
}

#[test]
fn gitea_down_at_the_start_gives_no_verdict_and_gitea_back_a_normal_run() {
    let s = staging(SHA);
    let down = refused_url().trim_end_matches("/health").to_string();
    let mut env = shop_env(&down, s.url());
    env.db()
        .execute("UPDATE tasks SET pr_number = 7 WHERE key = 'SHOP-1'", [])
        .unwrap();
    let copy = seed_earlier_success(&env);
    let run = env.run(&["staging-check", "--report", copy.to_str().unwrap()]);
    assert_eq!(
        run.stdout.lines().count(),
        1,
        "the line alone: no check ran\n{}",
        run.stdout
    );
    assert_no_verdict(&env, run, "PR #7's head", "could not connect", &copy);
    assert_eq!(
        s.requests().len(),
        0,
        "no check was run for a run without a verdict"
    );

    // The same in JSON.
    let copy = seed_earlier_success(&env);
    let run = env.run(&[
        "staging-check",
        "--json",
        "--report",
        copy.to_str().unwrap(),
    ]);
    let j = run.json();
    assert_eq!(j["verdict"], serde_json::Value::Null);
    assert_eq!(j["checked_revision"], serde_json::Value::Null);
    assert_eq!(j["exit_code"], 2);
    assert_eq!(j["task"], "SHOP-1");
    assert_eq!(j["checks"], serde_json::json!([]));
    let line = j["no_verdict"].as_str().unwrap().to_string();
    assert!(
        line.starts_with("staging-check: could not read PR #7's head from Gitea (")
            && line.ends_with("): no verdict; nothing recorded; run it again"),
        "{line}"
    );
    assert_eq!(run.code, 2);
    assert!(!copy.exists() && validated(&env).is_none());

    // Gitea back: a normal run, SUCCESS and the pin.
    let g = shop_gitea();
    env.set("ORCH_GITEA_URL", g.url());
    let run = env.run(&["staging-check"]).expect(0);
    assert_eq!(last_line(&run), "VERDICT: SUCCESS");
    assert!(task_report(&env).contains("staging_status: SUCCESS"));
    assert_eq!(validated(&env).as_deref(), Some(HEAD));
}

#[test]
fn a_gitea_answer_that_is_not_a_pull_request_gives_no_verdict() {
    let s = staging(SHA);
    let g = shop_gitea();
    let mut env = shop_env(g.url(), s.url());
    // No PR recorded yet: the first read lists the open pulls.
    let cases: Vec<(Reply, &str)> = vec![
        // A proxy's maintenance page with a 200 (not retried: the answer is unreadable).
        (
            Reply::raw(200, "text/html", "<html>maintenance</html>"),
            "<html>maintenance</html>",
        ),
        // JSON, but not a list of pull requests.
        (
            Reply::json(200, &serde_json::json!({"message": "ok"})),
            "unexpected answer",
        ),
        // A 5xx, twice (a read is retried once).
        (Reply::raw(503, "text/plain", "upgrading"), "HTTP 503"),
    ];
    for (reply, why) in cases {
        let times = if reply.status >= 500 { 2 } else { 1 };
        g.server().script(Some("GET"), PULLS, reply, times);
        let copy = seed_earlier_success(&env);
        let run = env.run(&["staging-check", "--report", copy.to_str().unwrap()]);
        assert_no_verdict(&env, run, "the head of task SHOP-1's PR", why, &copy);
    }
    // A refused token is Gitea not telling either (an operator's fix, not a developer's).
    env.set("ORCH_GITEA_TOKEN", "wrong-token");
    let copy = seed_earlier_success(&env);
    let run = env.run(&["staging-check", "--report", copy.to_str().unwrap()]);
    assert_no_verdict(&env, run, "the head of task SHOP-1's PR", "HTTP 401", &copy);
    assert_eq!(s.requests().len(), 0, "no check was run");

    // Gitea answering properly again: a normal run.
    env.set("ORCH_GITEA_TOKEN", DEFAULT_TOKEN);
    let run = env.run(&["staging-check"]).expect(0);
    assert_eq!(last_line(&run), "VERDICT: SUCCESS");
    assert_eq!(validated(&env).as_deref(), Some(HEAD));
}

#[test]
fn gitea_failing_only_at_the_end_read_gives_no_verdict() {
    let s = staging(SHA);
    let g = shop_gitea();
    let mut env = shop_env(g.url(), s.url());
    // The first read lists the open pulls (no PR recorded); only the read by number after
    // the checks fails: a bad gateway, twice (retried once).
    g.server().script(
        Some("GET"),
        PULL_7,
        Reply::raw(502, "text/html", "<html>bad gateway</html>"),
        2,
    );
    let copy = seed_earlier_success(&env);
    let run = env.run(&["staging-check", "--report", copy.to_str().unwrap()]);
    line_has(&run, "C1", "PASS");
    let why = "(read again after the checks, to make sure its head did not move during them: gitea get pull acme/shop#7: HTTP 502: <html>bad gateway</html>)";
    assert_no_verdict(&env, run, "PR #7's head", why, &copy);
    assert_eq!(g.server().count(Some("GET"), PULL_7), 2);

    // No answer at all within the timeout (the connection stays silent), in JSON. The
    // first run recorded PR #7; forget it, so the first read lists again.
    env.db()
        .execute("UPDATE tasks SET pr_number = NULL WHERE key = 'SHOP-1'", [])
        .unwrap();
    env.set("ORCH_HTTP_TIMEOUT_S", "1");
    g.server()
        .script(Some("GET"), PULL_7, Reply::empty(200).unanswered(), 2);
    let copy = seed_earlier_success(&env);
    let run = env.run(&[
        "staging-check",
        "--json",
        "--report",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(j["checks"][0]["result"], "pass");
    assert_eq!(j["pr_number"], 7);
    let line = j["no_verdict"].as_str().unwrap();
    assert!(
        line.starts_with("staging-check: could not read PR #7's head from Gitea (")
            && line.contains("timed out"),
        "{line}"
    );
    assert!(!copy.exists() && validated(&env).is_none());
    assert!(!env.path("artefacts/SHOP-1/10-staging-report.md").exists());

    // Gitea back: a normal run.
    let run = env.run(&["staging-check"]).expect(0);
    assert_eq!(last_line(&run), "VERDICT: SUCCESS");
    assert_eq!(validated(&env).as_deref(), Some(HEAD));
}

#[test]
fn orch_task_id_bad_forms() {
    let g = shop_gitea();
    let s = staging(SHA);
    let mut env = shop_env(g.url(), s.url());
    env.set("ORCH_TASK_ID", "SHOP-404");
    let run = env.run(&["staging-check"]).expect(2);
    run.stderr_has("ORCH_TASK_ID: no task \"SHOP-404\"");
    assert!(run.stdout.is_empty());
    // --task wins over the environment.
    env.run(&["staging-check", "--task", "SHOP-1"]).expect(0);
    assert_eq!(validated(&env).as_deref(), Some(HEAD));
    // Not text: a usage error.
    let out = env
        .command(&["staging-check"])
        .env(
            "ORCH_TASK_ID",
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff1"),
        )
        .output()
        .unwrap();
    let run: Run = out.into();
    let run = run.expect(2);
    run.stderr_has("ORCH_TASK_ID: not valid text");
    // Empty is unset: a plain run, no task, nothing written for one.
    env.set("ORCH_TASK_ID", " ");
    std::fs::remove_file(env.path("artefacts/SHOP-1/10-staging-report.md")).unwrap();
    let run = env.run(&["staging-check"]).expect(0);
    assert!(!run.stdout.contains("PIN:"), "{}", run.stdout);
    assert!(!env.path("artefacts/SHOP-1/10-staging-report.md").exists());
}

#[test]
fn an_image_freshness_pin_expects_the_pr_head_by_default() {
    // The self-hosting repo (image freshness applies by default): with no expected
    // revision given, staging must run the task's PR head, read from Gitea.
    let s = staging(SHA);
    let mut env = env_with_checks(&format!(
        "    - {{ id: F1, name: image, kind: image-freshness, url: \"{}/version\", json_field: revision }}\n",
        s.url()
    ));
    add_task(&env);
    let branch: String = env
        .db()
        .query_row("SELECT branch FROM tasks WHERE key = 'ORCH-7'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let g = GiteaStandin::start(DEFAULT_TOKEN);
    g.add_repo("acme/orch", "main");
    g.add_pull("acme/orch", &PullSeed::open(3, &branch).head_sha(SHA));
    env.set("ORCH_GITEA_URL", g.url())
        .set("ORCH_GITEA_TOKEN", DEFAULT_TOKEN)
        .set("ORCH_TASK_ID", "ORCH-7");
    let j = env.run(&["staging-check", "--json"]).expect(0).json();
    assert_eq!(j["pin"], "image-freshness");
    assert_eq!(j["expected_revision"], SHA);
    assert_eq!(j["checked_revision"], SHA);
    assert_eq!(j["pr_number"], 3);
    let text = std::fs::read_to_string(env.path("artefacts/ORCH-7/10-staging-report.md")).unwrap();
    assert!(text.contains("pin: image-freshness\n"), "{text}");
    // A new head pushed after staging was deployed: staging is stale, and the revision
    // validated before is forgotten.
    g.push("acme/orch", &branch, OLD_SHA);
    let run = env.run(&["staging-check"]).expect(1);
    line_has(&run, "F1", "stale image");
    let validated: Option<String> = env
        .db()
        .query_row(
            "SELECT validated_revision FROM tasks WHERE key = 'ORCH-7'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(validated, None);
    // Gitea down when the expected revision must be read from it: no verdict either, and
    // the FAILED report just written is gone.
    g.server().script(
        Some("GET"),
        "/api/v1/repos/acme/orch/pulls/3",
        Reply::raw(502, "text/plain", "bad gateway"),
        2,
    );
    let run = env.run(&["staging-check"]).expect(2);
    assert!(
        last_line(&run).starts_with("staging-check: could not read PR #3's head from Gitea (")
            && last_line(&run).ends_with("no verdict; nothing recorded; run it again"),
        "{}",
        run.stdout
    );
    assert!(!env.path("artefacts/ORCH-7/10-staging-report.md").exists());
}

#[test]
fn the_text_report_lists_every_check_then_the_verdict() {
    let env = env_with_checks(
        r#"    - { id: K1, name: ok, kind: command, argv: [/bin/sh, -c, "echo migrations done"], expect_output: done }
    - { id: K2, name: exit3, kind: command, argv: [/bin/sh, -c, "echo bad >&2; exit 3"] }
"#,
    );
    let run = env.run(&["staging-check"]);
    insta::assert_snapshot!(snapshot::report(&env, &run), @r#"
    exit: 1
    K1  REAL           PASS [ms]  exit 0
    K2  REAL           FAIL [ms]  exit 3 (expected 0): bad
    REASON: REAL check K2 failed
    VERDICT: FAILED
    "#);
}
