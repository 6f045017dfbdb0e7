//! `staging-check`'s webhook round trip (C9a/C9b) through the real binary: the Plane and
//! Gitea stand-ins, and a staging install played by a real `orch webhook-handle --stdio`
//! process per request (its own SQLite file and pipeline file) behind a loopback bridge.
//! The sandbox's "In Progress" id differs from every other project's.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch::core::intake::sign;
use orch::core::roundtrip::{delivery_body, synthetic};
use orch::standin::gitea::GiteaStandin;
use orch::standin::plane::PlaneStandin;
use orch::standin::server::{Recorded, Reply, Server};

use crate::common::{orch_bin, pipeline, Project, Run, TestEnv};

const SECRET: &str = "plane_wh_0123456789abcdef0123456789abcdef";
const TOKEN: &str = "gitea-test-token";
const API_KEY: &str = "plane_api_0123456789abcdef0123456789abcdef";
const ORCH_PROJECT: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";
const SHOP_PROJECT: &str = "1c2d3e4f-0000-4000-8000-000000000002";
const SANDBOX_PROJECT: &str = "1c2d3e4f-0000-4000-8000-000000000009";
const ORCH_IN_PROGRESS: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb3";
const SHOP_IN_PROGRESS: &str = "5a5a5a5a-0000-4000-8000-0000000000b3";
const SANDBOX_IN_PROGRESS: &str = "9c9c9c9c-0000-4000-8000-0000000000b3";

/// The projects and stub agents, the same in the checker's and in staging's pipeline file.
fn projects() -> String {
    let all = [Project::orch(), Project::shop(), Project::sandbox()];
    pipeline::render(&all, pipeline::TRUE_AGENTS, "")
}

/// Plane with three projects whose "In Progress" ids all differ, and Gitea with their
/// repos.
struct Remotes {
    plane: PlaneStandin,
    gitea: GiteaStandin,
}

fn remotes() -> Remotes {
    let plane = PlaneStandin::start("acme", API_KEY);
    plane.add_project(
        ORCH_PROJECT,
        &[
            ("7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb1", "Backlog", "backlog"),
            (ORCH_IN_PROGRESS, "In Progress", "started"),
        ],
    );
    plane.add_project(
        SHOP_PROJECT,
        &[
            ("5a5a5a5a-0000-4000-8000-0000000000b1", "Todo", "unstarted"),
            (SHOP_IN_PROGRESS, "In Progress", "started"),
        ],
    );
    plane.add_project(
        SANDBOX_PROJECT,
        &[
            ("9c9c9c9c-0000-4000-8000-0000000000b1", "Backlog", "backlog"),
            ("9c9c9c9c-0000-4000-8000-0000000000b2", "Todo", "unstarted"),
            (SANDBOX_IN_PROGRESS, "In Progress", "started"),
            ("9c9c9c9c-0000-4000-8000-0000000000b4", "Done", "completed"),
        ],
    );
    let gitea = GiteaStandin::start(TOKEN);
    gitea.add_repo("acme/orch", "main");
    gitea.add_repo("acme/shop", "main");
    gitea.add_repo("acme/sandbox", "main");
    Remotes { plane, gitea }
}

fn with_remotes(env: &mut TestEnv, r: &Remotes, secret: &str) {
    env.set("ORCH_PLANE_WEBHOOK_SECRET", secret)
        .set("ORCH_PLANE_URL", r.plane.url())
        .set("ORCH_PLANE_API_KEY", API_KEY)
        .set("ORCH_GITEA_URL", r.gitea.url())
        .set("ORCH_GITEA_TOKEN", TOKEN)
        .set("ORCH_HTTP_TIMEOUT_S", "5");
}

/// The staging install: its own directory, database and pipeline file, reached over
/// loopback HTTP through a bridge that runs one real `orch webhook-handle --stdio` per
/// request, answers with what it wrote, and reports each process's exit code.
struct Staging {
    env: TestEnv,
    bridge: Server,
    exits: Receiver<i32>,
}

fn staging(r: &Remotes, secret: &str) -> Staging {
    let mut env = TestEnv::uninitialised(&projects());
    with_remotes(&mut env, r, secret);
    env.run(&["init"]).expect(0);
    let vars = env.env.clone();
    let home = env.dir.path().to_path_buf();
    let (tx, exits) = channel();
    let tx = Mutex::new(tx);
    let bridge = Server::start(Arc::new(move |req: &Recorded| {
        let tx = tx.lock().unwrap().clone();
        stdio_bridge(req, &vars, &home, tx)
    }));
    Staging { env, bridge, exits }
}

impl Staging {
    fn url(&self) -> String {
        format!("{}/webhooks/plane", self.bridge.url())
    }

    /// Waits for the next `webhook-handle` process to exit (a failsafe deadline).
    fn next_exit(&self) -> i32 {
        self.exits
            .recv_timeout(Duration::from_secs(30))
            .expect("webhook-handle exited")
    }
}

fn stdio_bridge(
    req: &Recorded,
    vars: &BTreeMap<String, String>,
    home: &PathBuf,
    exits: Sender<i32>,
) -> Reply {
    let mut child = Command::new(orch_bin())
        .args(["webhook-handle", "--stdio"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .current_dir(home)
        .envs(vars)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn webhook-handle");
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: staging.example\r\n",
        req.method, req.path
    );
    for (k, v) in &req.headers {
        if k != "host" {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(head.as_bytes());
    let _ = stdin.write_all(&req.body);
    drop(stdin);
    // Read the response only; the process goes on acting after answering, as it does
    // behind the systemd socket.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut status = 0u16;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.starts_with("HTTP/1.1 100") {
            let _ = out.read_line(&mut String::new());
            continue;
        }
        if let Some(s) = line.strip_prefix("HTTP/1.1 ") {
            status = s[..3].parse().unwrap_or(0);
        } else if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        } else if line.is_empty() {
            break;
        }
    }
    let mut body = vec![0; length];
    let _ = out.read_exact(&mut body);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut out, &mut std::io::sink());
        let code = child.wait().map(|s| s.code().unwrap_or(-1)).unwrap_or(-1);
        let _ = exits.send(code);
    });
    if status == 0 {
        // No answer at all: what a sender sees as a network error.
        return Reply::empty(200).unanswered();
    }
    Reply::raw(status, "application/json", body)
}

/// The checker: a pipeline file with these staging checks, and the remotes' settings.
fn checker(r: &Remotes, checks: &str) -> TestEnv {
    let mut env = TestEnv::uninitialised(&format!("{}staging:\n  checks:\n{checks}", projects()));
    with_remotes(&mut env, r, SECRET);
    env
}

fn line<'a>(run: &'a Run, id: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no line for {id}:\n{}\n{}", run.stdout, run.stderr))
}

fn last_line(run: &Run) -> &str {
    run.stdout.lines().last().unwrap_or("")
}

fn staging_count(s: &Staging, sql: &str) -> i64 {
    s.env.count(sql)
}

#[test]
fn the_round_trip_passes_against_a_real_staging_and_cleans_up_its_branch() {
    let r = remotes();
    let s = staging(&r, SECRET);
    let db = s.env.db_path().display().to_string();
    let bin = orch_bin().display().to_string();
    let env = checker(
        &r,
        &format!(
            r#"    - {{ id: C9a, name: sandbox branch, kind: webhook-roundtrip, project: sandbox, webhook_url: "{u}", wait_for: branch, timeout_s: 30 }}
    - {{ id: C9b, name: analyst job, kind: webhook-roundtrip, project: sandbox, webhook_url: "{u}", wait_for: analyst-job, status_command: ["{bin}", --db, "{db}", task, show, "{{work_item}}", --json], timeout_s: 30 }}
    - {{ id: C9c, name: analyst job in the db, kind: webhook-roundtrip, project: sandbox, webhook_url: "{u}", wait_for: analyst-job, status_db: "{db}", timeout_s: 30 }}
"#,
            u = s.url()
        ),
    );
    let run = env.run(&["staging-check", "--json"]).expect(0);
    let j = run.json();
    assert_eq!(j["verdict"]["status"], "SUCCESS", "{}", run.stdout);
    assert_eq!(j["verdict"]["waived"], serde_json::json!([]));
    for c in j["checks"].as_array().unwrap() {
        assert_eq!(c["result"], "pass", "{c}");
        assert_eq!(c["kind"], "webhook-roundtrip");
    }
    assert_eq!(j["checks"][0]["category"], "SANDBOX_INFRA");
    assert_eq!(j["checks"][2]["category"], "REAL");

    // One delivery for the three checks, signed, moving a sandbox item into the
    // sandbox's own "In Progress" state.
    let posts = s.bridge.requests();
    assert_eq!(posts.len(), 1, "one synthetic delivery per run");
    let p = &posts[0];
    assert_eq!(p.method, "POST");
    assert_eq!(p.header("x-plane-event"), Some("issue"));
    assert!(p.header("x-plane-delivery").is_some());
    assert_eq!(
        p.header("x-plane-signature"),
        Some(sign(SECRET, &p.body).as_str())
    );
    let body = p.json().unwrap();
    assert_eq!(body["data"]["project"], SANDBOX_PROJECT);
    assert_eq!(body["activity"]["field"], "state_id");
    assert_eq!(body["activity"]["new_value"], SANDBOX_IN_PROGRESS);
    assert_ne!(body["activity"]["new_value"], ORCH_IN_PROGRESS);
    assert_ne!(body["activity"]["new_value"], SHOP_IN_PROGRESS);
    assert_eq!(s.next_exit(), 0);

    // Staging really started the task: task, analyst job, branch created on Gitea.
    let work_item = body["data"]["id"].as_str().unwrap().to_string();
    let key: String = s
        .env
        .db()
        .query_row(
            "SELECT key FROM tasks WHERE work_item_id = ?1",
            [&work_item],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(key, format!("SBX-{}", &work_item[..8]));
    assert_eq!(
        staging_count(&s, "SELECT count(*) FROM jobs WHERE agent = 'analyst'"),
        1
    );
    let branch = format!("sbx-{}-orch-staging-check-round-trip", &work_item[..8]);
    assert_eq!(r.gitea.count(Some("POST"), "acme/sandbox", "branches"), 1);
    // ... and the check deleted the branch afterwards, and says what stays.
    assert_eq!(r.gitea.branch("acme/sandbox", &branch), None);
    assert_eq!(r.gitea.count(Some("DELETE"), "acme/sandbox", "branches"), 1);
    let c9a = j["checks"][0]["reason"].as_str().unwrap();
    assert!(
        c9a.contains(&format!("branch {branch} appeared in acme/sandbox")),
        "{c9a}"
    );
    assert!(c9a.contains(SANDBOX_IN_PROGRESS), "{c9a}");
    assert!(c9a.contains("cleanup: branch deleted"), "{c9a}");
    assert!(c9a.contains("stays in staging's database"), "{c9a}");
    let c9b = j["checks"][1]["reason"].as_str().unwrap();
    assert!(c9b.contains(&format!("for task {key} on staging")), "{c9b}");
    assert!(c9b.starts_with("analyst job 1 "), "{c9b}");
    // The checker itself reads Plane's states (never a hard-coded id) and writes no
    // database of its own.
    assert!(r
        .plane
        .server()
        .requests()
        .iter()
        .any(|q| q.path.contains(SANDBOX_PROJECT) && q.path.ends_with("/states/")));
    assert!(!env.db_path().exists());
}

#[test]
fn a_delivery_with_another_projects_in_progress_id_starts_nothing() {
    let r = remotes();
    let s = staging(&r, SECRET);
    let project = &orch::core::plane::Project {
        name: "sandbox".into(),
        plane_project_id: SANDBOX_PROJECT.into(),
        plane_identifier: Some("SBX".into()),
        repo: "acme/sandbox".into(),
        default_branch: "main".into(),
        self_hosting: false,
        states: orch::core::plane::StateMeanings::default(),
        health_url: None,
        metrics_url: None,
        rollback: None,
    };
    for (i, foreign) in [ORCH_IN_PROGRESS, SHOP_IN_PROGRESS].into_iter().enumerate() {
        let item = synthetic(project, &format!("0000000{i}-0000-4000-8000-00000000000a"));
        let body = delivery_body(SANDBOX_PROJECT, &item, foreign);
        let answer = reqwest::blocking::Client::new()
            .post(s.url())
            .header("X-Plane-Signature", sign(SECRET, &body))
            .header("X-Plane-Delivery", format!("d-{i}"))
            .body(body)
            .send()
            .unwrap();
        assert_eq!(answer.status(), 200, "stored, as Plane expects");
        assert_eq!(s.next_exit(), 0);
    }
    assert_eq!(staging_count(&s, "SELECT count(*) FROM tasks"), 0);
    assert_eq!(staging_count(&s, "SELECT count(*) FROM jobs"), 0);
    assert_eq!(r.gitea.count(Some("POST"), "acme/sandbox", "branches"), 0);
    let details: Vec<String> = {
        let db = s.env.db();
        let mut st = db
            .prepare("SELECT outcome || ': ' || detail FROM deliveries ORDER BY id")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(details.len(), 2);
    for d in &details {
        assert!(
            d.starts_with("no pipeline action: ")
                && d.contains("is not a state of project sandbox"),
            "{d}"
        );
    }
}

#[test]
fn plane_down_means_the_round_trip_could_not_run_and_is_never_waived() {
    let r = remotes();
    let s = staging(&r, SECRET);
    let mut env = checker(
        &r,
        &format!(
            r#"    - {{ id: C9a, name: sandbox branch, kind: webhook-roundtrip, project: sandbox, webhook_url: "{}", wait_for: branch, timeout_s: 5 }}
    - {{ id: K1, name: ok, kind: command, argv: [/bin/true] }}
"#,
            s.url()
        ),
    );
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = refused.local_addr().unwrap().port();
    drop(refused);
    env.set("ORCH_PLANE_URL", &format!("http://127.0.0.1:{port}"));
    let run = env.run(&["staging-check"]).expect(1);
    let c9a = line(&run, "C9a");
    assert!(c9a.contains("SANDBOX_INFRA"), "{c9a}");
    assert!(
        c9a.contains("could not run: reading the states of project sandbox from Plane"),
        "{c9a}"
    );
    assert!(
        run.stdout.contains("REASON: C9a could not be run"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("INFRA-WAIVED"));
    assert_eq!(last_line(&run), "VERDICT: FAILED");
    assert!(s.bridge.requests().is_empty(), "nothing was sent");
}

#[test]
fn a_refusing_webhook_endpoint_fails_the_round_trip_waived_unless_strict() {
    let r = remotes();
    // A staging whose webhook secret differs: the real webhook-handle answers 401.
    let s = staging(&r, "plane_wh_ffffffffffffffffffffffffffffffff");
    // A staging endpoint failing outright.
    let broken = Server::start(Arc::new(|_: &Recorded| {
        Reply::raw(500, "text/plain", "internal error")
    }));
    for (url, status) in [(s.url(), "401"), (format!("{}/hook", broken.url()), "500")] {
        let env = checker(
            &r,
            &format!(
                r#"    - {{ id: C9a, name: sandbox branch, kind: webhook-roundtrip, project: sandbox, webhook_url: "{url}", wait_for: branch, timeout_s: 5 }}
    - {{ id: C9b, name: analyst job, kind: webhook-roundtrip, project: sandbox, webhook_url: "{url}", wait_for: analyst-job, status_db: /nonexistent/staging.db, timeout_s: 5 }}
    - {{ id: K1, name: ok, kind: command, argv: [/bin/true] }}
"#
            ),
        );
        let run = env.run(&["staging-check"]).expect(0);
        for id in ["C9a", "C9b"] {
            let l = line(&run, id);
            assert!(
                l.contains(&format!(
                    "staging webhook answered HTTP {status} (expected 200)"
                )),
                "{l}"
            );
        }
        assert!(
            run.stdout.contains("INFRA-WAIVED: C9a,C9b"),
            "{}",
            run.stdout
        );
        assert_eq!(last_line(&run), "VERDICT: SUCCESS");
        let strict = env.run(&["staging-check", "--strict"]).expect(1);
        assert!(
            strict
                .stdout
                .contains("REASON: SANDBOX_INFRA check C9a failed (--strict)"),
            "{}",
            strict.stdout
        );
        assert_eq!(last_line(&strict), "VERDICT: FAILED");
    }
    assert_eq!(s.next_exit(), 1, "webhook-handle refused the delivery");
    assert_eq!(staging_count(&s, "SELECT count(*) FROM deliveries"), 0);
    assert_eq!(r.gitea.count(Some("DELETE"), "acme/sandbox", "branches"), 0);
}

#[test]
fn no_branch_and_no_job_within_the_deadline_fail_waived_unless_strict_or_tolerance_off() {
    let r = remotes();
    // A staging endpoint that takes every delivery and does nothing with it.
    let sink = Server::start(Arc::new(|_: &Recorded| {
        Reply::json(200, &serde_json::json!({"status": "stored", "delivery": 1}))
    }));
    let empty = TestEnv::new();
    empty.run(&["init"]).expect(0);
    let db = empty.db_path().display().to_string();
    let bin = orch_bin().display().to_string();
    let mut env = checker(
        &r,
        &format!(
            r#"    - {{ id: C9a, name: sandbox branch, kind: webhook-roundtrip, project: sandbox, webhook_url: "{u}/hook", wait_for: branch, timeout_s: 1 }}
    - {{ id: C9b, name: analyst job, kind: webhook-roundtrip, project: sandbox, webhook_url: "{u}/hook", wait_for: analyst-job, status_command: ["{bin}", --db, "{db}", task, show, "{{work_item}}", --json], timeout_s: 1 }}
    - {{ id: K1, name: ok, kind: command, argv: [/bin/true] }}
"#,
            u = sink.url()
        ),
    );
    let run = env.run(&["staging-check"]).expect(0);
    assert!(line(&run, "C9a").contains(" FAIL "), "{}", run.stdout);
    assert!(line(&run, "C9b").contains(" FAIL "), "{}", run.stdout);
    assert!(
        run.stdout.contains("INFRA-WAIVED: C9a,C9b"),
        "{}",
        run.stdout
    );
    assert_eq!(last_line(&run), "VERDICT: SUCCESS");
    let j = env.run(&["staging-check", "--json"]).expect(0).json();
    let c9a = j["checks"][0]["reason"].as_str().unwrap();
    assert!(
        c9a.contains("did not appear in acme/sandbox within"),
        "{c9a}"
    );
    assert!(
        c9a.contains("cleanup: branch was not there to delete"),
        "{c9a}"
    );
    let c9b = j["checks"][1]["reason"].as_str().unwrap();
    assert!(c9b.contains("no analyst job for task SBX-"), "{c9b}");
    assert!(c9b.contains("status_command exit 2"), "{c9b}");
    assert_eq!(
        sink.requests().len(),
        2,
        "one delivery for both checks, per run"
    );
    // Polling is bounded: a handful of Gitea reads in one second, not a busy loop.
    let reads = r.gitea.count(Some("GET"), "acme/sandbox", "branches");
    assert!(
        (4..=30).contains(&reads),
        "{reads} branch reads in two runs"
    );

    let strict = env.run(&["staging-check", "--strict"]).expect(1);
    assert!(strict
        .stdout
        .contains("REASON: SANDBOX_INFRA check C9b failed (--strict)"));
    env.set("ORCH_STAGING_INFRA_TOLERANCE_ENABLED", "false");
    let off = env.run(&["staging-check", "--json"]).expect(1);
    let j = off.json();
    assert_eq!(j["verdict"]["status"], "FAILED");
    assert_eq!(j["verdict"]["failed"], serde_json::json!(["C9a", "C9b"]));
}

#[test]
fn missing_round_trip_settings_are_configuration_errors_before_anything_runs() {
    let r = remotes();
    let checks = r#"    - { id: C9a, name: sandbox branch, kind: webhook-roundtrip, project: sandbox, webhook_url: "http://127.0.0.1:9/hook", wait_for: branch }
"#;
    for key in [
        "ORCH_PLANE_WEBHOOK_SECRET",
        "ORCH_PLANE_URL",
        "ORCH_GITEA_TOKEN",
    ] {
        let mut env = checker(&r, checks);
        env.unset(key);
        let run = env.run(&["staging-check"]).expect(2);
        assert!(run.stderr.contains(key), "{key}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    assert!(r.plane.server().requests().is_empty());
}

#[test]
fn gitea_branch_lookup_and_deletion_follow_the_api() {
    let r = remotes();
    r.gitea.push("acme/sandbox", "task/SBX-1", "abc123");
    let client = |token: &str| {
        let env: BTreeMap<String, String> = [
            ("ORCH_GITEA_URL", r.gitea.url()),
            ("ORCH_GITEA_TOKEN", token),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
        let layers = orch::config::Layers {
            env,
            ..orch::config::Layers::default()
        };
        let config = orch::config::Config::from_parts(None, None, layers).expect("config");
        orch::adapters::gitea::GiteaClient::from_config(&config).expect("client")
    };
    let c = client(TOKEN);
    assert!(c.branch_exists("acme/sandbox", "task/SBX-1").unwrap());
    assert!(!c.branch_exists("acme/sandbox", "task/SBX-2").unwrap());
    assert!(c.delete_branch("acme/sandbox", "task/SBX-1").unwrap());
    assert!(
        !c.delete_branch("acme/sandbox", "task/SBX-1").unwrap(),
        "404: already gone"
    );
    assert!(!c.branch_exists("acme/sandbox", "task/SBX-1").unwrap());
    assert_eq!(r.gitea.branch("acme/sandbox", "task/SBX-1"), None);
    let e = c.delete_branch("acme/sandbox", "main").unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    assert!(r.gitea.branch("acme/sandbox", "main").is_some());
    assert!(matches!(
        client("wrong").branch_exists("acme/sandbox", "main"),
        Err(orch::adapters::http::HttpError::Fatal(_))
    ));
}
