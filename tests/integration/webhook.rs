//! `orch webhook-handle`: signed deliveries through the real binary (`--stdio` and
//! `--body`), a real SQLite file, and the loopback Plane and Gitea stand-ins.

use std::io::{Read, Write};
use std::process::Stdio;

use orch::core::intake::sign;
use orch::standin::gitea::GiteaStandin;
use orch::standin::plane::PlaneStandin;
use orch::standin::server::Reply;
use serde_json::json;

use crate::common::{Project, Run, Standin, TestEnv};

pub(crate) const SECRET: &str = "plane_wh_0123456789abcdef0123456789abcdef";
pub(crate) const ORCH_PROJECT: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";
pub(crate) const SHOP_PROJECT: &str = "1c2d3e4f-0000-4000-8000-000000000002";
pub(crate) const IN_PROGRESS: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb3";
const RAW_BODY: &[u8] =
    include_bytes!("../fixtures/plane/webhook-issue-state-started.raw-body.json");
const RAW_SIG: &str = "d8455c46569112e8214863e9ba46e7ac12864d3590205014aefd93950034f273";
const LEGACY: &[u8] = include_bytes!("../fixtures/plane/webhook-issue-state-legacy-activity.json");
const UI: &[u8] = include_bytes!("../fixtures/plane/webhook-issue-state-started.json");

const ORCH_STATES: &str =
    "states:\n  approved: { names: [Approved] }\n  rejected: { names: [Rejected] }";

pub(crate) struct World {
    pub(crate) env: TestEnv,
}

pub(crate) fn world() -> World {
    let w = fresh_world();
    w.env.run(&["init"]).expect(0);
    w
}

/// A world whose database file does not exist yet; Plane starts with no projects.
fn fresh_world() -> World {
    let env = TestEnv::builder()
        .project(Project::orch().self_hosting(false).with(ORCH_STATES))
        .project(Project::shop().default_branch("trunk"))
        .standins(&[Standin::Gitea, Standin::Plane])
        .plane_states(&[])
        .set("ORCH_PLANE_WEBHOOK_SECRET", SECRET)
        .set("ORCH_HTTP_TIMEOUT_S", "5")
        .no_init()
        .build();
    World { env }
}

impl World {
    fn gitea(&self) -> &GiteaStandin {
        self.env.gitea()
    }

    fn plane(&self) -> &PlaneStandin {
        self.env.plane()
    }

    fn branch_posts(&self) -> usize {
        self.gitea().count(Some("POST"), "acme/orch", "branches")
            + self.gitea().count(Some("POST"), "acme/shop", "branches")
    }

    fn nothing_behind(&self, what: &str) {
        assert_eq!(
            self.env.count("SELECT count(*) FROM tasks"),
            0,
            "{what}: task"
        );
        assert_eq!(
            self.env.count("SELECT count(*) FROM jobs"),
            0,
            "{what}: job"
        );
        assert_eq!(self.branch_posts(), 0, "{what}: branch request");
    }
}

/// The request path every test delivers to: `ORCH_WEBHOOK_PATH`'s default, the path
/// the README's proxy lines forward. Requests to any other path are 404.
pub(crate) const PATH: &str = "/webhooks/plane";

/// A POST request with these bytes as its body and these extra headers.
pub(crate) fn post(body: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!(
        "POST {PATH} HTTP/1.1\r\nHost: orch.example\r\nContent-Type: application/json\r\nUser-Agent: Autopilot\r\nX-Plane-Event: issue\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

/// A signed POST of `body` with delivery id `id`.
pub(crate) fn signed(body: &[u8], id: &str) -> Vec<u8> {
    post(
        body,
        &[
            ("X-Plane-Signature", &sign(SECRET, body)),
            ("X-Plane-Delivery", id),
        ],
    )
}

/// Runs `webhook-handle --stdio` with `request` on stdin; returns the run and the status.
pub(crate) fn stdio(env: &TestEnv, request: &[u8]) -> (Run, u16) {
    let mut child = env
        .command(&["webhook-handle", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn orch");
    let mut stdin = child.stdin.take().unwrap();
    // The receiver may stop reading early (413, 405); a broken pipe is fine.
    let _ = stdin.write_all(request);
    drop(stdin);
    let run: Run = child.wait_with_output().unwrap().into();
    let status = status_of(&run.stdout);
    (run, status)
}

fn status_of(response: &str) -> u16 {
    let line = response
        .lines()
        .find(|l| !l.starts_with("HTTP/1.1 100"))
        .unwrap_or("");
    assert!(
        response.is_empty() || response.contains("Connection: close"),
        "{response}"
    );
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A Plane v1 work item delivery moving `item` of `project` to a state.
pub(crate) fn delivery(
    project: &str,
    item: u32,
    seq: u32,
    state: serde_json::Value,
    field: &str,
) -> Vec<u8> {
    let new_value = match &state {
        serde_json::Value::Object(o) => o["id"].clone(),
        other => other.clone(),
    };
    let body = json!({
        "event": "issue",
        "action": "updated",
        "webhook_id": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e03",
        "workspace_id": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e01",
        "data": {
            "id": format!("00000000-0000-4000-8000-{item:012}"),
            "name": format!("Work item {item}"),
            "sequence_id": seq,
            "project": project,
            "state": state,
        },
        "activity": {"field": field, "new_value": new_value, "old_value": null,
                     "old_identifier": null, "new_identifier": null},
    });
    serde_json::to_vec(&body).unwrap()
}

/// A delivery moving work item `n` (sequence `n`) of the orch project to In Progress.
fn start_delivery(n: u32) -> Vec<u8> {
    delivery(
        ORCH_PROJECT,
        n,
        n,
        state(IN_PROGRESS, "In Progress", "started"),
        "state_id",
    )
}

pub(crate) fn state(id: &str, name: &str, group: &str) -> serde_json::Value {
    json!({"id": id, "name": name, "color": "#000000", "group": group})
}

fn outcomes(env: &TestEnv) -> Vec<(String, String)> {
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT outcome, coalesce(detail, '') FROM deliveries ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn reference_delivery_starts_a_task_with_its_branch_and_job() {
    let w = world();
    let (run, status) = stdio(
        &w.env,
        &post(
            RAW_BODY,
            &[("X-Plane-Signature", RAW_SIG), ("X-Plane-Delivery", "d-1")],
        ),
    );
    assert_eq!(
        (status, run.code),
        (200, 0),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout.contains("\"status\":\"stored\""),
        "{}",
        run.stdout
    );
    let key: String = w
        .env
        .db()
        .query_row(
            "SELECT key || ' ' || branch || ' ' || stage FROM tasks",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        key,
        "ORCH-42 orch-42-fix-crash-saving-caf-settings analysis"
    );
    assert_eq!(
        w.gitea()
            .branch("acme/orch", "orch-42-fix-crash-saving-caf-settings"),
        w.gitea().branch("acme/orch", "main"),
        "branched from the default branch"
    );
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM jobs WHERE agent = 'analyst' AND status = 'queued'"),
        1
    );
    let body: Vec<u8> = w
        .env
        .db()
        .query_row("SELECT body FROM deliveries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(body, RAW_BODY, "the raw bytes are stored");
    assert_eq!(outcomes(&w.env)[0].0, "started");
    assert_eq!(
        w.plane().count(None, ""),
        0,
        "the payload named the state: no Plane call"
    );
}

#[test]
fn reserialised_body_with_the_reference_signature_is_refused() {
    let w = world();
    let value: serde_json::Value = serde_json::from_slice(RAW_BODY).unwrap();
    let reserialised = serde_json::to_vec(&value).unwrap();
    let (run, status) = stdio(
        &w.env,
        &post(&reserialised, &[("X-Plane-Signature", RAW_SIG)]),
    );
    assert_eq!((status, run.code), (401, 1), "{}", run.stderr);
    w.nothing_behind("reserialised");
    assert_eq!(w.env.count("SELECT count(*) FROM deliveries"), 0);
}

#[test]
fn every_bad_input_gets_its_status_and_leaves_nothing() {
    let w = world();
    let good = start_delivery(1);
    let sig = sign(SECRET, &good);
    let other_sig = sign(SECRET, b"{\"another\": \"body\"}");
    let wrong = "0".repeat(64);
    let upper = sig.to_ascii_uppercase();
    let signed_body = |b: &[u8]| post(b, &[("X-Plane-Signature", &sign(SECRET, b))]);
    let mut huge =
        format!("POST {PATH} HTTP/1.1\r\nContent-Length: 5000000000\r\nX-Plane-Signature: ")
            .into_bytes();
    huge.extend_from_slice(sig.as_bytes());
    huge.extend_from_slice(b"\r\n\r\n{\"event\"");
    let mut short = format!(
        "POST {PATH} HTTP/1.1\r\nContent-Length: {}\r\nX-Plane-Signature: {sig}\r\n\r\n",
        good.len() + 10
    )
    .into_bytes();
    short.extend_from_slice(&good);
    let mut big_chunked = format!(
        "POST {PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Plane-Signature: {sig}\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        big_chunked.extend_from_slice(b"80000\r\n");
        big_chunked.extend(std::iter::repeat_n(b' ', 0x80000));
        big_chunked.extend_from_slice(b"\r\n");
    }
    let mut cut_chunked = format!(
        "POST {PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Plane-Signature: {sig}\r\n\r\n"
    )
    .into_bytes();
    cut_chunked.extend_from_slice(format!("{:x}\r\n", good.len()).as_bytes());
    cut_chunked.extend_from_slice(&good[..20]);
    let unknown_event =
        br#"{"event": "workitem.banana", "action": "updated", "data": {"id": "x"}}"#;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("no signature", post(&good, &[]), 401),
        (
            "wrong signature",
            post(&good, &[("X-Plane-Signature", &wrong)]),
            401,
        ),
        (
            "signature of another body",
            post(&good, &[("X-Plane-Signature", &other_sig)]),
            401,
        ),
        (
            "upper-case hex",
            post(&good, &[("X-Plane-Signature", &upper)]),
            401,
        ),
        (
            "GET",
            b"GET /webhooks/plane HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            405,
        ),
        (
            "another path",
            {
                let mut r = signed(&good, "d");
                r.splice(5..5 + PATH.len(), b"/".iter().copied());
                r
            },
            404,
        ),
        (
            "a path under the configured one",
            {
                let mut r = signed(&good, "d");
                r.splice(5 + PATH.len()..5 + PATH.len(), b"/x".iter().copied());
                r
            },
            404,
        ),
        (
            "bare LF line endings",
            String::from_utf8(signed(&good, "d"))
                .unwrap()
                .replace("\r\n", "\n")
                .into_bytes(),
            400,
        ),
        (
            "gzip, chunked",
            format!(
                "POST {PATH} HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nX-Plane-Signature: {sig}\r\n\r\n0\r\n\r\n"
            )
            .into_bytes(),
            501,
        ),
        (
            "PUT",
            {
                let mut r = signed(&good, "d");
                r.splice(0..4, b"PUT".iter().copied());
                r
            },
            405,
        ),
        ("huge Content-Length", huge, 413),
        ("body shorter than Content-Length", short, 400),
        ("chunked over 1 MiB", big_chunked, 413),
        ("chunked cut short", cut_chunked, 400),
        (
            "no length at all",
            format!("POST {PATH} HTTP/1.1\r\nX-Plane-Signature: {sig}\r\n\r\n").into_bytes(),
            411,
        ),
        (
            "garbage request line",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            400,
        ),
        (
            "invalid UTF-8",
            signed_body(b"{\"event\": \"issue\", \"x\": \"\xff\xfe\"}"),
            400,
        ),
        (
            "malformed JSON",
            signed_body(b"{\"event\": \"issue\","),
            400,
        ),
        ("JSON not an object", signed_body(b"[\"issue\"]"), 422),
        (
            "JSON without data",
            signed_body(br#"{"event": "issue", "action": "updated"}"#),
            422,
        ),
        ("unknown event type", signed_body(unknown_event), 422),
        (
            "v2 format",
            signed_body(br#"{"version": "v2", "event": "workitem.updated", "data": {}}"#),
            422,
        ),
    ];
    for (name, request, want) in cases {
        let (run, status) = stdio(&w.env, &request);
        assert_eq!(
            status, want,
            "{name}\nstdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        assert_eq!(run.code, 1, "{name}: exit code\n{}", run.stderr);
        if want == 405 {
            assert!(run.stdout.contains("Allow: POST"), "{name}");
        }
        w.nothing_behind(name);
        assert_eq!(
            w.env.count("SELECT count(*) FROM deliveries"),
            0,
            "{name}: stored"
        );
    }
    // Valid, signed, but of a project outside the pipeline: stored and answered 200,
    // recorded as no pipeline action, nothing created.
    let foreign = delivery(
        "99999999-0000-4000-8000-000000000000",
        9,
        9,
        state(IN_PROGRESS, "In Progress", "started"),
        "state_id",
    );
    let (run, status) = stdio(&w.env, &signed(&foreign, "d-foreign"));
    assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    w.nothing_behind("unknown project");
    assert_eq!(
        outcomes(&w.env),
        vec![(
            "no pipeline action".into(),
            "project 99999999-0000-4000-8000-000000000000 is not in the pipeline".into()
        )]
    );
    assert_eq!(w.plane().count(None, ""), 0);
}

#[test]
fn a_valid_chunked_delivery_is_taken() {
    let w = world();
    let body = start_delivery(2);
    let mut req = format!(
        "POST {PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Plane-Signature: {}\r\n\r\n",
        sign(SECRET, &body)
    )
    .into_bytes();
    for part in body.chunks(100) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (run, status) = stdio(&w.env, &req);
    assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM tasks WHERE key = 'ORCH-2'"),
        1
    );
}

#[test]
fn a_stalled_request_gets_408_instead_of_hanging() {
    let mut w = world();
    w.env.set("ORCH_WEBHOOK_READ_TIMEOUT_S", "1");
    let mut child = w
        .env
        .command(&["webhook-handle", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            format!("POST {PATH} HTTP/1.1\r\nContent-Length: 500\r\nX-Plane-Signature: 00\r\n\r\n{{\"ev")
                .as_bytes(),
        )
        .unwrap();
    // Keep stdin open: the sender is slow, not gone. The receiver must answer anyway.
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let code = child.wait().unwrap().code();
    drop(stdin);
    assert_eq!(status_of(&out), 408, "{out}");
    assert_eq!(code, Some(1));
    w.nothing_behind("stalled");
}

#[test]
fn no_secret_refuses_to_run_before_reading() {
    let mut w = world();
    w.env.unset("ORCH_PLANE_WEBHOOK_SECRET");
    let mut child = w
        .env
        .command(&["webhook-handle", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stdin stays open and empty: a receiver that read first would wait for the deadline.
    let stdin = child.stdin.take().unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let run: Run = out.into();
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stdout, "",
        "no answer: the sender sees a network error and retries"
    );
    assert!(
        run.stderr.contains("ORCH_PLANE_WEBHOOK_SECRET"),
        "{}",
        run.stderr
    );
    let run = w.env.run(&["webhook-handle", "--body", "/dev/null"]);
    assert_eq!(run.code, 2);
}

#[test]
fn the_same_delivery_twice_with_new_ids_acts_once() {
    let w = world();
    let body = start_delivery(3);
    for id in ["d-first", "d-retry"] {
        let (run, status) = stdio(&w.env, &signed(&body, id));
        assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
        if id == "d-retry" {
            assert!(run.stdout.contains("duplicate"), "{}", run.stdout);
            assert!(
                run.stderr
                    .contains("first delivery id d-first, this delivery id d-retry"),
                "{}",
                run.stderr
            );
        }
    }
    // And once more by hand.
    std::fs::write(w.env.path("body.json"), &body).unwrap();
    let sig = format!("X-Plane-Signature: {}", sign(SECRET, &body));
    let run = w.env.run(&[
        "webhook-handle",
        "--body",
        "body.json",
        "--header",
        &sig,
        "--header",
        "X-Plane-Delivery: d-hand",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("duplicate:"), "{}", run.stdout);
    assert_eq!(w.env.count("SELECT count(*) FROM tasks"), 1);
    assert_eq!(w.env.count("SELECT count(*) FROM jobs"), 1);
    assert_eq!(w.branch_posts(), 1);
    assert_eq!(w.env.count("SELECT count(*) FROM deliveries"), 1);
}

#[test]
fn gitea_failing_records_the_start_and_leaves_the_branch_for_reconcile() {
    let w = world();
    w.gitea().server().script(
        Some("POST"),
        "/api/v1/repos/acme/orch/branches",
        Reply::empty(500),
        1,
    );
    let body = start_delivery(4);
    let (run, status) = stdio(&w.env, &signed(&body, "d-4"));
    assert_eq!(
        (status, run.code),
        (200, 0),
        "the task and its job are stored: {}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("branch orch-4-work-item-4 left for reconcile (gitea"),
        "{}",
        run.stderr
    );
    let (outcome, attempts, error): (String, i64, Option<String>) = w
        .env
        .db()
        .query_row("SELECT outcome, attempts, error FROM deliveries", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((outcome.as_str(), attempts, error), ("started", 1, None));
    assert_eq!(
        w.env.count("SELECT count(*) FROM jobs"),
        1,
        "analyst queued"
    );
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM tasks WHERE branch_ready_at IS NULL"),
        1
    );

    // A replay through the library entry point reconcile calls: the recorded outcome.
    let (ctx, mut db) = library_context(&w.env);
    let again = orch::ops::delivery::process_delivery(&ctx, &mut db, 1).unwrap();
    assert_eq!(again.kind.as_str(), "started", "{again}");
    // The next reconcile pass creates the branch, once.
    let run = w.env.run(&["reconcile"]).expect(0);
    assert!(
        run.stdout
            .contains("branch ORCH-4 orch-4-work-item-4: created"),
        "{}",
        run.stdout
    );
    w.env.run(&["reconcile"]).expect(0);
    // And an operator's replay by hand of the same body changes nothing either.
    std::fs::write(w.env.path("body.json"), &body).unwrap();
    let sig = format!("X-Plane-Signature: {}", sign(SECRET, &body));
    w.env
        .run(&["webhook-handle", "--body", "body.json", "--header", &sig])
        .expect(0);
    assert_eq!(w.env.count("SELECT count(*) FROM tasks"), 1);
    assert_eq!(w.env.count("SELECT count(*) FROM jobs"), 1);
    assert_eq!(w.branch_posts(), 2, "the failed request and reconcile's");
    assert!(w
        .gitea()
        .branch("acme/orch", "orch-4-work-item-4")
        .is_some());
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM tasks WHERE branch_ready_at IS NOT NULL"),
        1
    );
}

fn library_context(env: &TestEnv) -> (orch::ops::pass::PassContext, orch::adapters::db::Db) {
    let config = orch::config::Config::load(&env.env, &Default::default()).unwrap();
    let clock = Box::new(orch::clock::FixedClock(config.settings.now.0.unwrap()));
    let ctx = orch::ops::pass::PassContext::new(config, clock);
    let db = ctx.open_db().unwrap();
    (ctx, db)
}

#[test]
fn a_pending_delivery_replayed_by_hand_is_finished() {
    let mut w = world();
    // A bare state id, and Plane down: the state cannot be resolved yet.
    w.env.set("ORCH_PLANE_URL", "http://127.0.0.1:9");
    let body = delivery(ORCH_PROJECT, 5, 5, json!(IN_PROGRESS), "state_id");
    std::fs::write(w.env.path("body.json"), &body).unwrap();
    let sig = format!("X-Plane-Signature: {}", sign(SECRET, &body));
    let run = w
        .env
        .run(&["webhook-handle", "--body", "body.json", "--header", &sig]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("delivery 1 pending:"),
        "{}",
        run.stdout
    );
    w.nothing_behind("plane down");
    w.plane()
        .add_project(ORCH_PROJECT, &[(IN_PROGRESS, "In Progress", "started")]);
    let url = w.plane().url().to_string();
    w.env.set("ORCH_PLANE_URL", &url);
    let run = w
        .env
        .run(&["webhook-handle", "--body", "body.json", "--header", &sig])
        .expect(0);
    assert!(run.stdout.contains("started"), "{}", run.stdout);
    assert_eq!(w.env.count("SELECT count(*) FROM jobs"), 1);
}

#[test]
fn sixteen_deliveries_at_once_are_all_stored() {
    let w = world();
    let children: Vec<_> = (0..16u32)
        .map(|i| {
            let body = start_delivery(100 + i);
            let mut child = w
                .env
                .command(&["webhook-handle", "--stdio"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(&signed(&body, &format!("d-{i}")))
                .unwrap();
            child
        })
        .collect();
    for child in children {
        let run: Run = child.wait_with_output().unwrap().into();
        assert_eq!(
            (status_of(&run.stdout), run.code),
            (200, 0),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("locked"), "{}", run.stderr);
    }
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM deliveries WHERE outcome = 'started'"),
        16
    );
    assert_eq!(w.env.count("SELECT count(*) FROM tasks"), 16);
    assert_eq!(w.env.count("SELECT count(*) FROM jobs"), 16);
    assert_eq!(w.branch_posts(), 16);
}

#[test]
fn two_projects_resolve_in_progress_through_their_own_states() {
    let w = world();
    let orch_ip = "aaaaaaaa-0000-4000-8000-000000000001";
    let shop_ip = "bbbbbbbb-0000-4000-8000-000000000001";
    w.plane().add_project(
        ORCH_PROJECT,
        &[
            ("aaaaaaaa-0000-4000-8000-000000000000", "Todo", "unstarted"),
            (orch_ip, "In Progress", "started"),
        ],
    );
    w.plane().add_project(
        SHOP_PROJECT,
        &[
            ("bbbbbbbb-0000-4000-8000-000000000000", "Todo", "unstarted"),
            (shop_ip, "In Progress", "started"),
        ],
    );
    // data.state as a bare id: the ids must be resolved per project.
    let a = delivery(ORCH_PROJECT, 10, 10, json!(orch_ip), "state_id");
    let b = delivery(SHOP_PROJECT, 11, 11, json!(shop_ip), "state");
    // A shop work item naming orch's state id: never borrowed from the other project.
    let c = delivery(SHOP_PROJECT, 12, 12, json!(orch_ip), "state_id");
    for (body, id) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let (run, status) = stdio(&w.env, &signed(body, id));
        assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    }
    let keys: Vec<String> = {
        let db = w.env.db();
        let mut s = db.prepare("SELECT key FROM tasks ORDER BY key").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(keys, vec!["ORCH-10", "SHOP-11"]);
    assert_eq!(w.gitea().count(Some("POST"), "acme/shop", "branches"), 1);
    assert!(w
        .gitea()
        .branch("acme/shop", "shop-11-work-item-11")
        .is_some());
    let out = outcomes(&w.env);
    assert_eq!(out[2].0, "no pipeline action");
    assert!(
        out[2].1.contains("not a state of project shop"),
        "{:?}",
        out[2]
    );
    // Each project's list was fetched (the third delivery refreshed shop's again).
    assert_eq!(
        w.plane()
            .count(Some("GET"), &format!("projects/{ORCH_PROJECT}/states/")),
        1
    );
    assert_eq!(
        w.plane()
            .count(Some("GET"), &format!("projects/{SHOP_PROJECT}/states/")),
        2
    );
    assert_eq!(w.env.count("SELECT count(*) FROM plane_states WHERE project = '1c2d3e4f-0000-4000-8000-000000000002'"), 2);
}

#[test]
fn plane_down_while_resolving_leaves_the_delivery_pending() {
    let mut w = world();
    w.env.set("ORCH_PLANE_URL", "http://127.0.0.1:9");
    let body = delivery(
        ORCH_PROJECT,
        13,
        13,
        json!("cccccccc-0000-4000-8000-000000000001"),
        "state_id",
    );
    let (run, status) = stdio(&w.env, &signed(&body, "d"));
    assert_eq!((status, run.code), (200, 2), "{}", run.stderr);
    assert_eq!(
        w.env.count(
            "SELECT count(*) FROM deliveries WHERE outcome = 'pending' AND error LIKE '%states%'"
        ),
        1
    );
    w.nothing_behind("plane down");
}

#[test]
fn the_legacy_second_delivery_is_not_acted_on_twice() {
    let w = world();
    for (body, id) in [(UI, "ui"), (LEGACY, "legacy")] {
        let (run, status) = stdio(&w.env, &signed(body, id));
        assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    }
    let out = outcomes(&w.env);
    assert_eq!(out[0].0, "started");
    assert_eq!(out[1].0, "no pipeline action");
    assert!(
        out[1].1.starts_with("legacy name-form second delivery"),
        "{:?}",
        out[1]
    );
    assert_eq!(w.env.count("SELECT count(*) FROM jobs"), 1);
    assert_eq!(w.branch_posts(), 1);
}

#[test]
fn approved_rejected_cancelled_and_other_fields() {
    let w = world();
    let item = |st: serde_json::Value, field: &str| delivery(ORCH_PROJECT, 20, 20, st, field);
    let send = |body: Vec<u8>, id: &str| {
        let (run, status) = stdio(&w.env, &signed(&body, id));
        assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    };
    let approved = state(
        "dddddddd-0000-4000-8000-000000000001",
        "Approved",
        "started",
    );
    let rejected = state(
        "dddddddd-0000-4000-8000-000000000002",
        "Rejected",
        "unstarted",
    );
    let done = state("dddddddd-0000-4000-8000-000000000003", "Done", "completed");
    let cancelled = state(
        "dddddddd-0000-4000-8000-000000000004",
        "Cancelled",
        "cancelled",
    );
    send(item(approved.clone(), "state"), "0"); // before any task: nothing
    send(
        item(state(IN_PROGRESS, "In Progress", "started"), "state_id"),
        "1",
    );
    send(item(rejected, "state_id"), "2"); // the analyst job is still queued: nothing new
    w.env
        .db()
        .execute("UPDATE jobs SET status = 'succeeded'", [])
        .unwrap();
    let mut rejected2 = item(
        state(
            "dddddddd-0000-4000-8000-000000000002",
            "Rejected",
            "unstarted",
        ),
        "state",
    );
    rejected2.extend_from_slice(b" "); // another delivery of the same change
    send(rejected2, "3");
    send(item(approved, "state_id"), "4");
    send(item(done, "state_id"), "5");
    let mut prio = item(state(IN_PROGRESS, "In Progress", "started"), "priority");
    prio.extend_from_slice(b" ");
    send(prio, "6");
    send(item(cancelled, "state_id"), "7");
    let got: Vec<String> = outcomes(&w.env)
        .into_iter()
        .map(|(o, d)| format!("{o}: {d}"))
        .collect();
    assert_eq!(got.len(), 8, "{got:#?}");
    assert!(
        got[0].starts_with(
            "no pipeline action: state \"Approved\" means approved but the work item has no task"
        ),
        "{got:#?}"
    );
    assert!(
        got[1].starts_with("started: task ORCH-20 created"),
        "{got:#?}"
    );
    assert!(
        got[2].starts_with("no pipeline action: task ORCH-20 already has an analyst job"),
        "{got:#?}"
    );
    assert!(
        got[3].starts_with("rejected: task ORCH-20 stays at analysis, analyst job"),
        "{got:#?}"
    );
    assert!(
        got[4].starts_with("approved: task ORCH-20 analysis -> development, developer job"),
        "{got:#?}"
    );
    assert_eq!(got[5], "no pipeline action: unmapped state \"Done\"");
    assert_eq!(
        got[6],
        "no pipeline action: other field \"priority\" (not a state change)"
    );
    assert!(
        got[7].starts_with("cancelled: task ORCH-20 development -> cancelled"),
        "{got:#?}"
    );
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM jobs WHERE agent = 'analyst'"),
        2
    );
    let actors = w
        .env
        .count("SELECT count(*) FROM stage_events WHERE actor = 'webhook'");
    assert_eq!(actors, 3, "created, approved, cancelled");
    // Each move names the delivery that caused it (its X-Plane-Delivery id), and none
    // came from inside an agent.
    let show = w.env.run(&["task", "show", "ORCH-20", "--json"]).expect(0);
    let events = show.json()["events"].clone();
    let by = |to: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["to"] == to)
            .unwrap_or_else(|| panic!("no event to {to}: {events}"))
            .clone()
    };
    assert_eq!(by("development")["delivery_id"], "4", "{events}");
    assert_eq!(by("cancelled")["delivery_id"], "7", "{events}");
    assert!(by("development")["agent_job"].is_null(), "{events}");
    let text = w.env.run(&["task", "show", "ORCH-20"]).expect(0).stdout;
    assert!(text.contains("by webhook (delivery 4, #"), "{text}");
}

#[test]
fn config_check_reports_a_cached_state_with_two_meanings() {
    let w = world();
    // The payload describes the state, so it lands in orch's cache.
    let body = start_delivery(30);
    stdio(&w.env, &signed(&body, "d"));
    w.env.run(&["config", "check"]).expect(0);
    let pipeline = std::fs::read_to_string(w.env.path("orch.yaml")).unwrap();
    let twice = pipeline.replace(
        "rejected: { names: [Rejected] }",
        "rejected: { names: [Rejected] }\n      cancel: { groups: [started] }",
    );
    std::fs::write(w.env.path("orch.yaml"), twice).unwrap();
    let run = w.env.run(&["config", "check"]).expect(2);
    assert!(
        run.stderr.contains("projects[orch].states: plane state \"In Progress\" (group started) matches start and cancel"),
        "{}",
        run.stderr
    );
}

// ---- Intake under slow clients, and the durability order ----------------------------

/// `command` with the environment `TestEnv::command` gives the binary: the test's
/// variables and nothing else.
fn with_env(env: &TestEnv, mut cmd: std::process::Command) -> std::process::Command {
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env("HOME", env.dir.path())
        .current_dir(env.dir.path())
        .envs(&env.env);
    cmd
}

/// The receiver as `orch-webhook.socket` (`Accept=yes`) runs it: systemd's own
/// `systemd-socket-activate --accept --inetd` listens on loopback and hands every
/// connection to a new `orch webhook-handle --stdio` as its stdin and stdout, the
/// socket itself (not a pipe), as `StandardInput=socket`/`StandardOutput=socket` do.
/// It has no connection cap: what is measured is the receiver's own hold on a
/// connection, which is what decides how fast systemd's slots turn over.
struct SocketActivated {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl SocketActivated {
    fn start(env: &TestEnv) -> SocketActivated {
        use std::io::BufRead;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let mut cmd = std::process::Command::new("systemd-socket-activate");
        cmd.args(["--listen", &addr.to_string(), "--accept", "--inetd"]);
        // It hands its children only PATH, HOME, TERM, USER and what --setenv names.
        for (k, v) in &env.env {
            cmd.arg(format!("--setenv={k}={v}"));
        }
        cmd.arg(crate::common::orch_bin())
            .args(["webhook-handle", "--stdio"]);
        let mut child = with_env(env, cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate (package systemd) is needed by this test");
        // It says when it listens; keep draining its log afterwards.
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            let line = lines
                .next()
                .expect("systemd-socket-activate exited")
                .unwrap();
            if line.starts_with("Listening on") {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        SocketActivated { child, addr }
    }

    fn connect(&self) -> std::net::TcpStream {
        std::net::TcpStream::connect(self.addr).expect("connect to the receiver")
    }
}

impl Drop for SocketActivated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads what the receiver sends until it ends the connection; `None` when it has not
/// ended it within `within`.
fn answer_within(conn: &mut std::net::TcpStream, within: std::time::Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        conn.set_read_timeout(Some(left)).unwrap();
        match conn.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned())
            }
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
}

#[test]
fn slow_loris_connections_do_not_stop_good_deliveries() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    const SLOW: usize = 40; // more than the 32 slots that used to stop intake
    const GOOD: u32 = 6;
    const HEAD_S: u64 = 4; // headroom for 40 receivers starting on a loaded 2-core machine
    let mut w = world();
    // The head deadline is what a slow client gets; the whole-request one is far longer,
    // so a receiver that only had the latter would hold every slow client for a minute.
    w.env
        .set("ORCH_WEBHOOK_HEADER_TIMEOUT_S", &HEAD_S.to_string())
        .set("ORCH_WEBHOOK_READ_TIMEOUT_S", "60");
    let receiver = SocketActivated::start(&w.env);
    let head = signed(&start_delivery(1), "loris");
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            let mut conn = receiver.connect();
            let head = head.clone();
            let stop = stop.clone();
            let started_tx = started_tx.clone();
            std::thread::spawn(move || {
                // One head byte, then wait up to 100 ms on the socket for an answer
                // (the pacing is a read with a timeout), and again.
                let opened = Instant::now();
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                conn.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                for (i, byte) in head.iter().enumerate() {
                    if stop.load(Ordering::Relaxed) || conn.write_all(&[*byte]).is_err() {
                        break;
                    }
                    if i == 0 {
                        started_tx.send(()).unwrap();
                    }
                    match conn.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
                // Whatever is left of the answer, up to its end.
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                (String::from_utf8_lossy(&got).into_owned(), opened.elapsed())
            })
        })
        .collect();
    for _ in 0..SLOW {
        started_rx.recv().unwrap();
    }
    // Every slow client holds its connection and has sent part of a head. Good
    // deliveries still get their 200, each within the head deadline.
    for n in 0..GOOD {
        let mut conn = receiver.connect();
        let sent = Instant::now();
        conn.write_all(&signed(&start_delivery(100 + n), &format!("good-{n}")))
            .unwrap();
        let answer = answer_within(&mut conn, Duration::from_secs(HEAD_S))
            .unwrap_or_else(|| panic!("good delivery {n}: no answer and end within {HEAD_S} s"));
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "good delivery {n} after {:?}: {answer}",
            sent.elapsed()
        );
    }
    // The slow clients were cut at the head deadline with 408, not held for the minute
    // the whole request may take.
    let slow: Vec<_> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    for (answer, held) in &slow {
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "slow client after {held:?}: {answer:?}"
        );
        assert!(
            *held < Duration::from_secs(HEAD_S + 8),
            "a slow client was held {held:?} (head deadline {HEAD_S} s)"
        );
    }
    for n in 0..GOOD {
        let key = format!("ORCH-{}", 100 + n);
        assert_eq!(
            w.env
                .count(&format!("SELECT count(*) FROM tasks WHERE key = '{key}'")),
            1,
            "{key}"
        );
    }
    assert_eq!(
        w.env.count("SELECT count(*) FROM deliveries"),
        i64::from(GOOD),
        "no slow client's request was stored"
    );
}

#[test]
fn the_connection_ends_at_the_answer_while_acting_goes_on() {
    use std::time::Duration;
    let mut w = world();
    // A Gitea that takes the branch request and never answers: acting blocks on it
    // for the whole HTTP timeout.
    let gitea = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gitea_url = format!("http://{}", gitea.local_addr().unwrap());
    w.env
        .set("ORCH_GITEA_URL", &gitea_url)
        .set("ORCH_HTTP_TIMEOUT_S", "60");
    let receiver = SocketActivated::start(&w.env);
    let mut conn = receiver.connect();
    conn.write_all(&signed(&start_delivery(7), "d-7")).unwrap();
    let answer = answer_within(&mut conn, Duration::from_secs(10))
        .expect("the connection ended right after the answer, not when acting ended");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\"status\":\"stored\""), "{answer}");
    // Acting was still under way: its branch request is at Gitea, unanswered.
    let (mut branch, _) = gitea.accept().unwrap();
    branch
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = branch.read(&mut buf).unwrap();
    let request = String::from_utf8_lossy(&buf[..n]);
    assert!(
        request.starts_with("POST /api/v1/repos/acme/orch/branches"),
        "{request}"
    );
    // Gitea goes away: the branch is left for reconcile, the start is recorded.
    drop(branch);
    drop(gitea);
    drop(receiver);
}

/// Runs `webhook-handle --stdio` under `strace -f -y`, returning the trace.
fn strace_delivery(env: &TestEnv, request: &[u8]) -> (String, Run) {
    let trace = env.dir.path().join("strace.txt");
    let mut cmd = std::process::Command::new("strace");
    cmd.args(["-f", "-y", "-qq", "-s", "64", "-o"])
        .arg(&trace)
        .args(["-e", "trace=write,pwrite64,writev,sendto,fsync,fdatasync"])
        .arg(crate::common::orch_bin())
        .args(["webhook-handle", "--stdio"]);
    let mut child = with_env(env, cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace is needed by this test (.ci/run installs it)");
    child.stdin.take().unwrap().write_all(request).unwrap();
    let run: Run = child.wait_with_output().unwrap().into();
    (std::fs::read_to_string(trace).unwrap(), run)
}

#[test]
fn the_row_is_synced_before_the_200_while_another_process_holds_the_database() {
    // SQLite's WAL and fsyncs; PostgreSQL's commit waits for its own WAL flush.
    if !crate::common::sqlite_only() {
        return;
    }
    let w = world();
    // Another process (this one) holds the database open in WAL mode, inside a read
    // transaction: the receiver's commit cannot checkpoint, and its WAL frames are
    // written after the last sync unless the commit itself syncs.
    let other = w.env.db();
    let mode: String = other
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    other
        .execute_batch("BEGIN; SELECT count(*) FROM deliveries;")
        .unwrap();
    let (trace, run) = strace_delivery(&w.env, &signed(&start_delivery(3), "d-3"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        run.stdout
    );
    let lines: Vec<&str> = trace.lines().collect();
    let answer = lines
        .iter()
        .position(|l| l.contains("HTTP/1.1 200"))
        .unwrap_or_else(|| panic!("no 200 written in the trace:\n{trace}"));
    let wal = |l: &&str| l.contains("orch.db-wal>");
    let last_wal_write = lines[..answer]
        .iter()
        .rposition(|l| wal(l) && (l.contains("pwrite64(") || l.contains(" write(")))
        .unwrap_or_else(|| panic!("the row's WAL frames are not written before the 200:\n{trace}"));
    let synced = lines[last_wal_write..answer]
        .iter()
        .any(|l| wal(l) && (l.contains("fsync(") || l.contains("fdatasync(")));
    assert!(
        synced,
        "the WAL was not synced between the row's last frame and the 200:\n{}",
        lines[last_wal_write..=answer].join("\n")
    );
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM deliveries WHERE delivery_id = 'd-3'"),
        1
    );
}

#[test]
fn the_socket_unit_leaves_room_past_one_source_and_says_what_the_cap_does() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/orch-webhook.socket"
    ))
    .unwrap();
    let value = |key: &str| -> u32 {
        unit.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key}= missing"))
            .trim()
            .parse()
            .unwrap()
    };
    let (all, per_source) = (value("MaxConnections"), value("MaxConnectionsPerSource"));
    // One address (a slow-loris source) holds at most a quarter of the slots, and the
    // slots outnumber the slow clients the intake test throws at the receiver.
    assert!(per_source * 4 <= all, "{per_source} of {all}");
    assert!(all > 40, "{all}");
    // Past the cap systemd refuses; nothing waits in the backlog.
    assert!(unit.contains("refused, not queued"), "{unit}");
    assert!(!unit.contains("waits in the backlog"), "{unit}");
}

#[test]
fn a_missing_database_is_never_created_and_plane_gets_no_answer_so_it_retries() {
    // Plane counts any HTTP answer (a 503 too) as delivered and retries only on a
    // network error: a delivery that cannot be stored in the configured file gets none.
    let w = fresh_world();
    for db in ["orch.db", "unmounted/orch.db"] {
        let mut env_vars = w.env.env.clone();
        env_vars.insert("ORCH_DB".into(), w.env.path(db).display().to_string());
        let body = start_delivery(7);
        let mut child = w
            .env
            .command(&["webhook-handle", "--stdio"])
            .envs(&env_vars)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(&signed(&body, "d-missing"));
        let run: Run = child.wait_with_output().unwrap().into();
        assert_eq!(run.code, 2, "{db}: {}", run.stderr);
        assert_eq!(run.stdout, "", "{db}: no answer at all");
        assert!(
            run.stderr.contains(&w.env.path(db).display().to_string()),
            "{db}: names the path: {}",
            run.stderr
        );
        assert!(!w.env.path(db).exists(), "{db}: not created");
        assert!(!w.env.path("unmounted").exists(), "{db}: no directory made");
    }
    assert_eq!(w.branch_posts(), 0, "nothing acted on");
}

#[test]
fn a_delivery_the_locked_database_cannot_store_gets_no_answer_and_exit_2() {
    let w = world();
    // A real write lock, held by another process (this one) past the busy timeout.
    let holder = w.env.db();
    let lock = holder.begin(orch::adapters::db::Begin::Write).unwrap();
    let (run, status) = stdio(&w.env, &signed(&start_delivery(9), "d-locked"));
    assert_eq!((status, run.code), (0, 2), "{}", run.stderr);
    assert_eq!(run.stdout, "", "no answer: Plane retries");
    run.stderr_has("storing the delivery");
    drop(lock);
    // Plane's retry (a new delivery id, the same body) is stored and acted on.
    let (run, status) = stdio(&w.env, &signed(&start_delivery(9), "d-retry"));
    assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    assert_eq!(w.env.count("SELECT count(*) FROM deliveries"), 1);
}

/// A work item whose name holds a NUL character (JSON `\u0000`, which PostgreSQL's text
/// cannot store): the delivery is stored and acted on on either engine, the title kept
/// with the NUL replaced, nothing left pending for reconcile to fail on every pass.
#[test]
fn a_nul_in_a_work_item_name_is_stored_and_acted_on_on_either_engine() {
    let w = world();
    let mut body: serde_json::Value = serde_json::from_slice(&start_delivery(7)).unwrap();
    body["data"]["name"] = json!("Crash\u{0}on save");
    let body = serde_json::to_vec(&body).unwrap();
    assert!(body.windows(6).any(|x| x == b"\\u0000"), "escaped in JSON");
    let (run, status) = stdio(&w.env, &signed(&body, "d-nul"));
    assert_eq!(
        (status, run.code),
        (200, 0),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(
        outcomes(&w.env),
        vec![(
            "started".to_string(),
            "task ORCH-7 created, analyst job 1 queued".to_string()
        )]
    );
    let title: String = w
        .env
        .db()
        .query_row("SELECT title FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(title, "Crash\u{fffd}on save");
}
