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

const SECRET: &str = "plane_wh_0123456789abcdef0123456789abcdef";
const ORCH_PROJECT: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";
const SHOP_PROJECT: &str = "1c2d3e4f-0000-4000-8000-000000000002";
const IN_PROGRESS: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb3";
const RAW_BODY: &[u8] =
    include_bytes!("../fixtures/plane/webhook-issue-state-started.raw-body.json");
const RAW_SIG: &str = "d8455c46569112e8214863e9ba46e7ac12864d3590205014aefd93950034f273";
const LEGACY: &[u8] = include_bytes!("../fixtures/plane/webhook-issue-state-legacy-activity.json");
const UI: &[u8] = include_bytes!("../fixtures/plane/webhook-issue-state-started.json");

const ORCH_STATES: &str =
    "states:\n  approved: { names: [Approved] }\n  rejected: { names: [Rejected] }";

struct World {
    env: TestEnv,
}

fn world() -> World {
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

/// A POST request with these bytes as its body and these extra headers.
pub(crate) fn post(body: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!(
        "POST /webhooks/plane HTTP/1.1\r\nHost: orch.example\r\nContent-Type: application/json\r\nUser-Agent: Autopilot\r\nX-Plane-Event: issue\r\nContent-Length: {}\r\n",
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
fn signed(body: &[u8], id: &str) -> Vec<u8> {
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
fn delivery(project: &str, item: u32, seq: u32, state: serde_json::Value, field: &str) -> Vec<u8> {
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

fn state(id: &str, name: &str, group: &str) -> serde_json::Value {
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
    let mut huge = b"POST / HTTP/1.1\r\nContent-Length: 5000000000\r\nX-Plane-Signature: ".to_vec();
    huge.extend_from_slice(sig.as_bytes());
    huge.extend_from_slice(b"\r\n\r\n{\"event\"");
    let mut short = format!(
        "POST / HTTP/1.1\r\nContent-Length: {}\r\nX-Plane-Signature: {sig}\r\n\r\n",
        good.len() + 10
    )
    .into_bytes();
    short.extend_from_slice(&good);
    let mut big_chunked = format!(
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Plane-Signature: {sig}\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        big_chunked.extend_from_slice(b"80000\r\n");
        big_chunked.extend(std::iter::repeat_n(b' ', 0x80000));
        big_chunked.extend_from_slice(b"\r\n");
    }
    let mut cut_chunked = format!(
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Plane-Signature: {sig}\r\n\r\n"
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
            format!("POST / HTTP/1.1\r\nX-Plane-Signature: {sig}\r\n\r\n").into_bytes(),
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
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Plane-Signature: {}\r\n\r\n",
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
        .write_all(b"POST / HTTP/1.1\r\nContent-Length: 500\r\nX-Plane-Signature: 00\r\n\r\n{\"ev")
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
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (run, status) = stdio(&w.env, &signed(&start_delivery(9), "d-locked"));
    assert_eq!((status, run.code), (0, 2), "{}", run.stderr);
    assert_eq!(run.stdout, "", "no answer: Plane retries");
    run.stderr_has("storing the delivery");
    holder.execute_batch("ROLLBACK").unwrap();
    // Plane's retry (a new delivery id, the same body) is stored and acted on.
    let (run, status) = stdio(&w.env, &signed(&start_delivery(9), "d-retry"));
    assert_eq!((status, run.code), (200, 0), "{}", run.stderr);
    assert_eq!(w.env.count("SELECT count(*) FROM deliveries"), 1);
}
