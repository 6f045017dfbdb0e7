//! The Plane and Gitea clients against their loopback stand-ins: the stand-ins answer
//! in the shapes of `shared/reference/samples/`, and the clients follow pages, classify
//! every failure (401, 404, 429 + `Retry-After`, 500, timeout, lost answer, non-JSON)
//! without panicking, and make exactly the requests they should.

use std::collections::BTreeMap;
use std::time::Duration;

use orch::adapters::gitea::{BranchOutcome, GiteaClient, MergeRequest};
use orch::adapters::http::HttpError;
use orch::adapters::plane::{CommentOutcome, NewComment, PlaneClient};
use orch::config::{Config, ConfigError, Layers};
use orch::core::facts::CiState;
use orch::standin::gitea::{GiteaStandin, GiteaVersion, PullSeed, DEFAULT_TOKEN};
use orch::standin::plane::{PlaneStandin, DEFAULT_API_KEY};
use orch::standin::server::Reply;
use serde_json::Value;

const PROJECT: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";
const BACKLOG: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb1";
const TODO: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb2";
const STARTED: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb3";
const DONE: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb4";
const CANCELLED: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb5";
const ITEM: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e04";
const REPO: &str = "acme/widgets";

// ---------------------------------------------------------------- helpers

/// Loads a reference sample; a missing file fails the test (never a skip).
fn sample(rel: &str) -> Value {
    let path = format!(
        "{}/{rel}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/samples")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("reference sample {path} is missing ({e}): shared/ must sit beside the checkout")
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("sample {path} is not JSON: {e}"))
}

/// Collects every difference in key sets between `sample` and `ours`, descending where
/// both sides are objects (or non-empty arrays).
fn shape_diff(sample: &Value, ours: &Value, path: &str, out: &mut Vec<String>) {
    match (sample, ours) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                out.push(format!("missing {path}.{k}"));
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("extra {path}.{k}"));
            }
            for (k, v) in a {
                if let Some(w) = b.get(k) {
                    shape_diff(v, w, &format!("{path}.{k}"), out);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if let (Some(x), Some(y)) = (a.first(), b.first()) {
                shape_diff(x, y, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

#[track_caller]
fn assert_shape(sample_file: &str, ours: &Value) {
    let mut diff = Vec::new();
    shape_diff(&sample(sample_file), ours, "", &mut diff);
    assert!(diff.is_empty(), "{sample_file}: {diff:#?}\nours: {ours:#}");
}

fn config(vars: &[(&str, &str)]) -> Config {
    let mut env: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    // Short timeouts so the timeout and lost-answer cases finish quickly.
    env.entry("ORCH_HTTP_TIMEOUT_S".into())
        .or_insert_with(|| "1".into());
    env.entry("ORCH_HTTP_CONNECT_TIMEOUT_S".into())
        .or_insert_with(|| "1".into());
    let layers = Layers {
        env,
        ..Layers::default()
    };
    Config::from_parts(Some("plane: { workspace: acme }\n"), None, layers).expect("config")
}

fn plane() -> PlaneStandin {
    let p = PlaneStandin::start("acme", DEFAULT_API_KEY);
    p.add_project(
        PROJECT,
        &[
            (BACKLOG, "Backlog", "backlog"),
            (TODO, "Todo", "unstarted"),
            (STARTED, "In Progress", "started"),
            (DONE, "Done", "completed"),
            (CANCELLED, "Cancelled", "cancelled"),
        ],
    );
    p.add_work_item(
        PROJECT,
        ITEM,
        42,
        "Fix crash saving café settings",
        Some(STARTED),
    );
    p
}

fn plane_client(p: &PlaneStandin) -> PlaneClient {
    plane_client_with_key(p, DEFAULT_API_KEY)
}

fn plane_client_with_key(p: &PlaneStandin, key: &str) -> PlaneClient {
    PlaneClient::from_config(&config(&[
        ("ORCH_PLANE_URL", p.url()),
        ("ORCH_PLANE_API_KEY", key),
    ]))
    .expect("plane client")
}

fn gitea() -> GiteaStandin {
    let g = GiteaStandin::start(DEFAULT_TOKEN);
    g.add_repo(REPO, "main");
    g.add_pull(
        REPO,
        &PullSeed::open(7, "feature/retry").head_sha(&"c3".repeat(20)),
    );
    g
}

fn gitea_client(g: &GiteaStandin) -> GiteaClient {
    gitea_client_with_token(g, DEFAULT_TOKEN)
}

fn gitea_client_with_token(g: &GiteaStandin, token: &str) -> GiteaClient {
    GiteaClient::from_config(&config(&[
        ("ORCH_GITEA_URL", g.url()),
        ("ORCH_GITEA_TOKEN", token),
    ]))
    .expect("gitea client")
}

/// A raw request to a stand-in, for shape checks.
fn raw(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, BTreeMap<String, String>, Value) {
    let c = reqwest::blocking::Client::new();
    let mut req = c.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().expect("stand-in answers");
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = resp.text().unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"))
    };
    (status, headers, body)
}

#[track_caller]
fn fatal(e: &HttpError) -> &str {
    match e {
        HttpError::Fatal(m) => m,
        other => panic!("expected Fatal, got {other:?}"),
    }
}

#[track_caller]
fn retryable(e: &HttpError) -> &str {
    match e {
        HttpError::Retryable(m) => m,
        other => panic!("expected Retryable, got {other:?}"),
    }
}

// ---------------------------------------------------------------- Plane shapes

#[test]
fn plane_standin_answers_in_the_sample_shapes() {
    let p = plane();
    p.add_work_item(
        PROJECT,
        "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e05",
        43,
        "Doc",
        Some(BACKLOG),
    );
    p.add_work_item(
        PROJECT,
        "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e06",
        44,
        "CSV",
        Some(TODO),
    );
    let base = format!("{}/api/v1/workspaces/acme/projects/{PROJECT}", p.url());
    let key = [("X-API-Key", DEFAULT_API_KEY)];

    let (st, headers, states) = raw("GET", &format!("{base}/states/"), &key, None);
    assert_eq!(st, 200);
    assert_shape("plane/states-list.json", &states);
    assert_eq!(states["results"].as_array().unwrap().len(), 5);
    assert!(headers.contains_key("x-ratelimit-remaining"), "{headers:?}");
    assert!(headers.contains_key("x-ratelimit-reset"), "{headers:?}");

    let (st, _, item) = raw("GET", &format!("{base}/work-items/{ITEM}/"), &key, None);
    assert_eq!(st, 200);
    assert_shape("plane/issue-get.json", &item);
    assert_eq!(item["state"], STARTED, "no expansion unless asked");

    let (_, _, page) = raw(
        "GET",
        &format!("{base}/work-items/?per_page=2&expand=state"),
        &key,
        None,
    );
    assert_shape("plane/issues-list-expand-state.json", &page);
    assert_eq!(page["next_cursor"], "2:1:0");
    assert_eq!(page["prev_cursor"], "2:-1:1");
    assert_eq!(page["next_page_results"], true);
    assert_eq!(page["total_results"], 3);

    // `fields=` keeps only the keys named, as Plane's BaseSerializer does: split on
    // commas with nothing trimmed, unknown names ignored, `id` only when named, `state`
    // expanded only when named too; the envelope is untouched.
    let list = |query: &str| {
        let (st, _, page) = raw("GET", &format!("{base}/work-items/?{query}"), &key, None);
        assert_eq!(st, 200, "{query}");
        assert_eq!(page["total_results"], 3, "{query}: the envelope is whole");
        let first = page["results"][0].as_object().unwrap().clone();
        let mut keys: Vec<String> = first.keys().cloned().collect();
        keys.sort();
        (keys, first)
    };
    let (keys, item) = list("per_page=2&expand=state&fields=id,state,name,nonsense");
    assert_eq!(keys, ["id", "name", "state"]);
    assert!(
        item["state"]["group"].is_string(),
        "named and expanded: {item:?}"
    );
    let (keys, _) = list("per_page=2&expand=state&fields=name,%20id");
    assert_eq!(
        keys,
        ["name"],
        "` id` is not `id`; `state` not named is left out"
    );
    let (keys, item) = list("per_page=2&fields=id,state");
    assert_eq!(keys, ["id", "state"]);
    assert!(item["state"].is_string(), "not expanded unless asked");
    let (keys, _) = list("per_page=2&expand=state&fields=,,");
    assert!(keys.len() > 20, "no name at all keeps every key: {keys:?}");

    let patch = sample("plane/issue-patch-state-request.json");
    let (st, _, patched) = raw(
        "PATCH",
        &format!("{base}/work-items/{ITEM}/"),
        &key,
        Some(patch),
    );
    assert_eq!(st, 200);
    assert_shape("plane/issue-patch-state-response.json", &patched);
    assert_eq!(patched["state"], DONE);
    assert!(
        patched["completed_at"].is_string(),
        "Done is a completed state"
    );

    let comment = sample("plane/comment-create-request.json");
    let url = format!("{base}/work-items/{ITEM}/comments/");
    let (st, _, created) = raw("POST", &url, &key, Some(comment.clone()));
    assert_eq!(st, 201);
    assert_shape("plane/comment-create-response.json", &created);
    let (st, _, dup) = raw("POST", &url, &key, Some(comment));
    assert_eq!(st, 409);
    assert_eq!(dup["id"], created["id"]);

    let other = "7b1e4c2a-5d3f-4e8a-9c61-00000000beef";
    p.add_project(
        other,
        &[(
            "9b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb9",
            "Elsewhere",
            "started",
        )],
    );
    let (st, _, bad) = raw(
        "PATCH",
        &format!("{base}/work-items/{ITEM}/"),
        &key,
        Some(serde_json::json!({"state": "9b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb9"})),
    );
    assert_eq!(st, 400);
    assert_eq!(bad, sample("plane/error-400-invalid-state.json"));

    let (st, _, body) = raw("GET", &format!("{base}/states/"), &[], None);
    assert_eq!(
        (st, body["detail"].as_str()),
        (401, Some("Authentication credentials were not provided."))
    );
    let (st, _, body) = raw(
        "GET",
        &format!("{base}/states/"),
        &[("X-API-Key", "nope")],
        None,
    );
    assert_eq!(
        (st, body["detail"].as_str()),
        (403, Some("Given API token is not valid"))
    );
    let (st, _, body) = raw("GET", &format!("{base}/work-items/{other}/"), &key, None);
    assert_eq!(
        (st, body["error"].as_str()),
        (404, Some("The requested resource does not exist."))
    );

    p.set_rate_limit(1, true);
    let (st, _, _) = raw("GET", &format!("{base}/states/"), &key, None);
    assert_eq!(st, 200);
    let (st, headers, body) = raw("GET", &format!("{base}/states/"), &key, None);
    assert_eq!(st, 429);
    assert_eq!(body, sample("plane/error-429-rate-limited.json"));
    let wait: u64 = headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(
        !headers.contains_key("x-ratelimit-remaining"),
        "no rate headers on a 429"
    );
}

// ---------------------------------------------------------------- Plane client

#[test]
fn plane_client_reads_states_and_items_and_writes_idempotently() {
    let p = plane();
    let c = plane_client(&p);
    let states = c.list_states(PROJECT).unwrap();
    let names: Vec<&str> = states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["Backlog", "Todo", "In Progress", "Done", "Cancelled"]
    );
    assert_eq!(states[3].group, "completed");

    let item = c.get_work_item(PROJECT, ITEM).unwrap();
    assert_eq!(
        (item.sequence_id, item.state_id.as_deref()),
        (42, Some(STARTED))
    );
    assert_eq!(item.state.as_ref().unwrap().group, "started");
    let req = p.server().requests().pop().unwrap();
    assert_eq!(req.header("x-api-key"), Some(DEFAULT_API_KEY));
    assert_eq!(req.param("expand").as_deref(), Some("state"));
    assert!(req.path.ends_with('/'), "trailing slash: {}", req.path);

    let moved = c.set_state(PROJECT, ITEM, DONE).unwrap();
    assert_eq!(moved.state_id.as_deref(), Some(DONE));
    assert_eq!(p.item_state(PROJECT, ITEM).as_deref(), Some(DONE));
    assert_eq!(
        p.server().requests().pop().unwrap().json(),
        Some(sample("plane/issue-patch-state-request.json"))
    );

    let comment = NewComment {
        comment_html: "<p>orch: analysis started</p>".into(),
        external_source: "orch".into(),
        external_id: "ENG-42:analysis:1".into(),
    };
    let first = c.create_comment(PROJECT, ITEM, &comment).unwrap();
    let CommentOutcome::Created { id } = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        c.create_comment(PROJECT, ITEM, &comment).unwrap(),
        CommentOutcome::AlreadyExists { id: Some(id) }
    );
    assert_eq!(p.comments(PROJECT, ITEM).len(), 1);
    let sent = p.server().requests().pop().unwrap().json().unwrap();
    assert_eq!(sent["external_source"], "orch");
    assert_eq!(sent["external_id"], "ENG-42:analysis:1");
    assert_eq!(
        p.count(Some("POST"), &format!("projects/{PROJECT}/work-items/")),
        2
    );
}

#[test]
fn plane_client_follows_cursors_one_page_per_call() {
    let p = plane();
    for n in 0..2300u64 {
        p.add_work_item(
            PROJECT,
            &format!("00000000-0000-4000-8000-{n:012}"),
            100 + n,
            "x",
            Some(TODO),
        );
    }
    let c = plane_client(&p);
    let mut cursor = None;
    let mut seen = 0;
    let mut calls = 0;
    loop {
        let page = c.list_work_items_page(PROJECT, cursor.as_deref()).unwrap();
        calls += 1;
        seen += page.items.len();
        assert!(page.rate_limit_remaining.is_some());
        assert!(page.items.iter().all(|i| i.state.is_some()), "expand=state");
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!((seen, calls), (2301, 3));
    let route = format!("projects/{PROJECT}/work-items/");
    assert_eq!(p.count(Some("GET"), &route), 3);
    let reqs = p.server().requests();
    assert!(reqs
        .iter()
        .all(|r| r.param("per_page").as_deref() == Some("1000")));
    assert_eq!(reqs[2].param("cursor").as_deref(), Some("1000:2:0"));
    // Only the keys a work item is read from are asked for, and each item is read
    // whole from them.
    assert!(reqs
        .iter()
        .all(|r| r.param("fields").as_deref() == Some(orch::adapters::plane::LISTED_FIELDS)));
    // Remaining drops by one per call: a caller can stop early.
    let last = c.list_work_items_page(PROJECT, None).unwrap();
    assert_eq!(last.rate_limit_remaining, Some(60 - 4));

    // States page too (more than one page of states).
    let many: Vec<(String, String)> = (0..150)
        .map(|n| (format!("00000000-0000-4000-9000-{n:012}"), format!("S{n}")))
        .collect();
    let refs: Vec<(&str, &str, &str)> = many
        .iter()
        .map(|(id, name)| (id.as_str(), name.as_str(), "started"))
        .collect();
    let big = "00000000-0000-4000-8000-00000000b16b";
    p.add_project(big, &refs);
    assert_eq!(c.list_states(big).unwrap().len(), 150);
    assert_eq!(p.count(Some("GET"), &format!("projects/{big}/states/")), 2);
}

#[test]
fn plane_client_classifies_every_failure() {
    let p = plane();
    let c = plane_client(&p);
    let route = format!("/api/v1/workspaces/acme/projects/{PROJECT}/work-items/{ITEM}/");

    // Wrong key: 403, fatal, naming the call.
    let e = plane_client_with_key(&p, "plane_api_wrong")
        .get_work_item(PROJECT, ITEM)
        .unwrap_err();
    assert!(fatal(&e).contains("plane get work item"), "{e}");
    assert!(fatal(&e).contains("403"), "{e}");
    // 401 (no key reached Plane): fatal.
    p.server().script(
        None,
        &route,
        Reply::json(
            401,
            &serde_json::json!({"detail": "Authentication credentials were not provided."}),
        ),
        1,
    );
    assert!(fatal(&c.get_work_item(PROJECT, ITEM).unwrap_err()).contains("401"));
    // 404: fatal.
    let e = c
        .get_work_item(PROJECT, "7b1e4c2a-0000-4000-8000-000000000000")
        .unwrap_err();
    assert!(fatal(&e).contains("404"), "{e}");

    // 429 with Retry-After from the budget.
    p.set_rate_limit(2, true);
    let before = p.server().requests().len();
    c.get_work_item(PROJECT, ITEM).unwrap();
    c.get_work_item(PROJECT, ITEM).unwrap();
    match c.get_work_item(PROJECT, ITEM).unwrap_err() {
        HttpError::RateLimited { retry_after, .. } => {
            let d = retry_after.expect("Retry-After sent");
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_secs(60),
                "{d:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        p.server().requests().len() - before,
        3,
        "a 429 is not retried"
    );
    p.set_rate_limit(60, false);
    p.server().script(
        None,
        &route,
        Reply::json(429, &sample("plane/error-429-rate-limited.json"))
            .with_header("Retry-After", "7"),
        1,
    );
    assert_eq!(
        c.set_state(PROJECT, ITEM, DONE).unwrap_err(),
        HttpError::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            message: format!(
                "plane set state of work item {ITEM}: HTTP 429: {}",
                serde_json::to_string(&sample("plane/error-429-rate-limited.json")).unwrap()
            ),
        }
    );

    // 500: a GET is retried once (then succeeds), a PATCH never.
    let before = p.server().requests().len();
    p.server().script(
        Some("GET"),
        &route,
        Reply::raw(500, "text/html", "<h1>Server Error (500)</h1>"),
        1,
    );
    assert_eq!(c.get_work_item(PROJECT, ITEM).unwrap().id, ITEM);
    assert_eq!(p.server().requests().len() - before, 2);
    p.server().script(Some("GET"), &route, Reply::empty(502), 2);
    assert!(retryable(&c.get_work_item(PROJECT, ITEM).unwrap_err()).contains("502"));
    p.server()
        .script(Some("PATCH"), &route, Reply::empty(503), 1);
    let before = p.server().requests().len();
    retryable(&c.set_state(PROJECT, ITEM, TODO).unwrap_err());
    assert_eq!(
        p.server().requests().len() - before,
        1,
        "writes are never retried"
    );
    assert_eq!(p.item_state(PROJECT, ITEM).as_deref(), Some(STARTED));

    // Non-JSON and wrong-shaped bodies: fatal, never a panic.
    p.server().script(
        Some("GET"),
        &route,
        Reply::raw(200, "text/html", "<html>login</html>"),
        1,
    );
    assert!(fatal(&c.get_work_item(PROJECT, ITEM).unwrap_err()).contains("unexpected answer"));
    p.server().script(
        Some("GET"),
        &route,
        Reply::json(200, &serde_json::json!({"id": 5})),
        1,
    );
    fatal(&c.get_work_item(PROJECT, ITEM).unwrap_err());
    p.server().script(
        Some("GET"),
        &format!("/api/v1/workspaces/acme/projects/{PROJECT}/states/"),
        Reply::json(200, &serde_json::json!({"results": "no"})),
        1,
    );
    fatal(&c.list_states(PROJECT).unwrap_err());
}

#[test]
fn plane_client_survives_a_timeout_and_a_lost_answer() {
    let p = plane();
    let c = plane_client(&p);
    let items = format!("/api/v1/workspaces/acme/projects/{PROJECT}/work-items/{ITEM}/");
    // A slow PATCH: the 1 s client timeout fires; one request only.
    p.server().script(
        Some("PATCH"),
        &items,
        Reply::json(200, &Value::Null).delayed(Duration::from_secs(2)),
        1,
    );
    let e = c.set_state(PROJECT, ITEM, DONE).unwrap_err();
    assert!(retryable(&e).contains("timed out"), "{e}");
    assert_eq!(
        p.count(Some("PATCH"), &format!("projects/{PROJECT}/work-items/")),
        1
    );

    // A lost answer to a GET: retried once, and the retry succeeds.
    p.server()
        .script(Some("GET"), &items, Reply::empty(200).unanswered(), 1);
    assert_eq!(c.get_work_item(PROJECT, ITEM).unwrap().id, ITEM);
    assert_eq!(
        p.count(
            Some("GET"),
            &format!("projects/{PROJECT}/work-items/{ITEM}/")
        ),
        2
    );

    // A comment that Plane stored but whose answer was lost: posting again is a 409.
    let comments = format!("{items}comments/");
    p.server()
        .script_after(Some("POST"), &comments, Reply::empty(201).unanswered(), 1);
    let comment = NewComment {
        comment_html: "<p>hi</p>".into(),
        external_source: "orch".into(),
        external_id: "ENG-42:x".into(),
    };
    retryable(&c.create_comment(PROJECT, ITEM, &comment).unwrap_err());
    assert!(matches!(
        c.create_comment(PROJECT, ITEM, &comment).unwrap(),
        CommentOutcome::AlreadyExists { id: Some(_) }
    ));
    assert_eq!(p.comments(PROJECT, ITEM).len(), 1);
}

#[test]
fn clients_name_the_missing_setting() {
    let e = PlaneClient::from_config(&config(&[("ORCH_PLANE_API_KEY", "k")])).unwrap_err();
    assert_eq!(
        e.downcast_ref::<ConfigError>().unwrap().key,
        "ORCH_PLANE_URL"
    );
    let e =
        PlaneClient::from_config(&config(&[("ORCH_PLANE_URL", "http://127.0.0.1:9")])).unwrap_err();
    assert_eq!(
        e.downcast_ref::<ConfigError>().unwrap().key,
        "ORCH_PLANE_API_KEY"
    );
    let no_workspace = Config::from_parts(
        None,
        None,
        Layers {
            env: [
                ("ORCH_PLANE_URL", "http://127.0.0.1:9"),
                ("ORCH_PLANE_API_KEY", "k"),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
            ..Layers::default()
        },
    )
    .unwrap();
    let e = PlaneClient::from_config(&no_workspace).unwrap_err();
    assert_eq!(
        e.downcast_ref::<ConfigError>().unwrap().key,
        "plane.workspace"
    );
    let e =
        GiteaClient::from_config(&config(&[("ORCH_GITEA_URL", "http://127.0.0.1:9")])).unwrap_err();
    assert_eq!(
        e.downcast_ref::<ConfigError>().unwrap().key,
        "ORCH_GITEA_TOKEN"
    );
    let e = GiteaClient::from_config(&config(&[("ORCH_GITEA_TOKEN", "t")])).unwrap_err();
    assert!(e.to_string().contains("ORCH_GITEA_URL"), "{e}");
}

// ---------------------------------------------------------------- Gitea shapes

#[test]
fn gitea_standin_answers_in_the_sample_shapes() {
    let g = gitea();
    g.add_pull(REPO, &PullSeed::open(6, "feature/old").merged());
    g.add_pull(REPO, &PullSeed::open(5, "feature/dropped").closed());
    let api = format!("{}/api/v1/repos/{REPO}", g.url());
    let tok = format!("token {DEFAULT_TOKEN}");
    let auth = [("Authorization", tok.as_str())];

    let (st, _, open) = raw("GET", &format!("{api}/pulls/7"), &auth, None);
    assert_eq!(st, 200);
    assert_shape("gitea/pull-open.json", &open);
    let (_, _, merged) = raw("GET", &format!("{api}/pulls/6"), &auth, None);
    assert_shape("gitea/pull-merged.json", &merged);
    assert_eq!(
        merged["head"]["ref"], "refs/pull/6/head",
        "head branch gone after merge"
    );
    let (st, _, nf) = raw("GET", &format!("{api}/pulls/99"), &auth, None);
    assert_eq!(st, 404);
    assert_eq!(nf["message"], sample("gitea/pull-404.json")["message"]);
    assert_shape("gitea/pull-404.json", &nf);

    // Lists carry X-Total-Count and Link.
    for n in 10..14 {
        g.add_pull(REPO, &PullSeed::open(n, &format!("task/{n}")));
    }
    let (_, headers, list) = raw(
        "GET",
        &format!("{api}/pulls?state=open&limit=2&page=2"),
        &auth,
        None,
    );
    let want = sample("gitea/list-pulls-headers.json");
    assert_eq!(headers["x-total-count"], "5");
    let link = &headers["link"];
    for rel in ["next", "last", "first", "prev"] {
        assert!(link.contains(&format!("rel=\"{rel}\"")), "{link}");
        assert!(want["Link"]
            .as_str()
            .unwrap()
            .contains(&format!("rel=\"{rel}\"")));
    }
    assert_eq!(
        headers["access-control-expose-headers"],
        want["Access-Control-Expose-Headers"]
    );
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Branches.
    let (st, _, b) = raw(
        "POST",
        &format!("{api}/branches"),
        &auth,
        Some(sample("gitea/branch-create-request.json")),
    );
    assert_eq!(st, 201);
    assert_shape("gitea/branch-create-201.json", &b);
    let (st, _, b) = raw(
        "POST",
        &format!("{api}/branches"),
        &auth,
        Some(sample("gitea/branch-create-request.json")),
    );
    assert_eq!(
        (st, &b["message"]),
        (409, &sample("gitea/branch-create-409.json")["message"])
    );
    let (st, _, b) = raw(
        "POST",
        &format!("{api}/branches"),
        &auth,
        Some(serde_json::json!({"new_branch_name": "x", "old_branch_name": "nope"})),
    );
    assert_eq!(
        (st, &b["message"]),
        (
            404,
            &sample("gitea/branch-create-404-old-branch.json")["message"]
        )
    );
    let (st, _, b) = raw(
        "POST",
        &format!("{api}/branches"),
        &auth,
        Some(serde_json::json!({"new_branch_name": "a b", "old_ref_name": "main"})),
    );
    assert_eq!(
        (st, &b["message"]),
        (
            422,
            &sample("gitea/branch-create-422-invalid-name.json")["message"]
        )
    );

    // Combined status: none, pending, failure, success.
    let head = "c3".repeat(20);
    let status_url = format!("{api}/commits/{head}/status");
    let (_, _, none) = raw("GET", &status_url, &auth, None);
    assert_shape("gitea/combined-status-none.json", &none);
    assert_eq!(none["state"], "");
    g.add_status(REPO, &head, "ci/lint", "success");
    g.add_status(REPO, &head, "ci/test", "pending");
    let (_, _, pending) = raw("GET", &status_url, &auth, None);
    assert_shape("gitea/combined-status-pending.json", &pending);
    assert_eq!(pending["state"], "pending");
    g.add_status(REPO, &head, "ci/test", "failure");
    let (_, _, failure) = raw("GET", &status_url, &auth, None);
    assert_shape("gitea/combined-status-failure.json", &failure);
    assert_eq!(
        (failure["state"].as_str(), failure["total_count"].as_u64()),
        (Some("failure"), Some(2))
    );
    g.add_status(REPO, &head, "ci/test", "success");
    let (_, _, success) = raw("GET", &status_url, &auth, None);
    assert_shape("gitea/combined-status-success.json", &success);
    assert_eq!(success["state"], "success");

    // Compare.
    let (_, _, ahead) = raw(
        "GET",
        &format!("{api}/compare/main...feature/retry"),
        &auth,
        None,
    );
    assert_shape("gitea/compare-ahead.json", &ahead);
    assert_eq!(ahead["total_commits"], 1);
    let (_, _, same) = raw("GET", &format!("{api}/compare/main...main"), &auth, None);
    assert_eq!(same, sample("gitea/compare-up-to-date.json"));

    // Is-merged and merge error bodies (1.25+).
    let (st, _, body) = raw("GET", &format!("{api}/pulls/6/merge"), &auth, None);
    assert_eq!((st, body), (204, Value::Null));
    let (st, _, body) = raw("GET", &format!("{api}/pulls/7/merge"), &auth, None);
    assert_eq!(st, 404);
    assert_shape("gitea/is-merged-404.json", &body);
    let merge =
        |n: u64, body: Value| raw("POST", &format!("{api}/pulls/{n}/merge"), &auth, Some(body));
    let req = sample("gitea/merge-request.json");
    let message = |f: &str| sample(f)["message"].clone();
    let (st, _, b) = merge(6, req.clone());
    assert_eq!(
        (st, &b["message"]),
        (405, &message("gitea/merge-405-already-merged.json"))
    );
    let (st, _, b) = merge(5, req.clone());
    assert_eq!(
        (st, &b["message"]),
        (404, &message("gitea/merge-404-closed-unmerged.json"))
    );
    let (st, _, b) = merge(99, req.clone());
    assert_eq!(st, 404);
    assert_shape("gitea/merge-404-pr-missing.json", &b);
    assert_eq!(b["message"], message("gitea/merge-404-pr-missing.json"));
    let (st, _, b) = merge(7, serde_json::json!({"head_commit_id": head}));
    assert_eq!(
        (st, &b["message"]),
        (422, &message("gitea/merge-422-missing-do.json"))
    );
    let (st, _, b) = merge(
        7,
        serde_json::json!({"Do": "merge", "head_commit_id": "0".repeat(40)}),
    );
    assert_eq!(
        (st, &b["message"]),
        (409, &message("gitea/merge-409-head-out-of-date.json"))
    );
    g.set_mergeable(REPO, 7, false);
    let (st, _, b) = merge(7, req.clone());
    assert_eq!(
        (st, &b["message"]),
        (405, &message("gitea/merge-405-try-again-later.json"))
    );
    g.set_mergeable(REPO, 7, true);
    g.add_pull(REPO, &PullSeed::open(8, "task/wip").title("WIP: not yet"));
    let (st, _, b) = merge(8, req.clone());
    assert_eq!(
        (st, &b["message"]),
        (405, &message("gitea/merge-405-wip.json"))
    );
    g.set_can_merge(REPO, false);
    let (st, _, b) = merge(7, req.clone());
    assert_eq!(
        (st, &b["message"]),
        (405, &message("gitea/merge-405-not-allowed.json"))
    );
    g.set_can_merge(REPO, true);
    g.set_allowed_styles(REPO, &["merge"]);
    let (st, _, b) = merge(7, serde_json::json!({"Do": "squash"}));
    assert_eq!(
        (st, &b["message"]),
        (405, &message("gitea/merge-405-style-not-allowed.json"))
    );
    g.set_archived(REPO, true);
    let (st, _, b) = merge(7, req.clone());
    assert_eq!(
        (st, &b["message"]),
        (423, &message("gitea/merge-423-archived.json"))
    );
    g.set_archived(REPO, false);

    // Auth bodies.
    let (st, _, b) = raw(
        "GET",
        &format!("{api}/pulls/7"),
        &[("Authorization", "token wrong")],
        None,
    );
    assert_eq!(
        (st, &b["message"]),
        (401, &message("gitea/auth-401-bad-token.json"))
    );
    let (st, _, _) = raw("GET", &format!("{api}/pulls/7"), &[], None);
    assert_eq!(st, 404, "a private repo is hidden from anonymous callers");
    g.set_public(REPO, true);
    let (st, _, _) = raw("GET", &format!("{api}/pulls/7"), &[], None);
    assert_eq!(st, 200, "anonymous reads of a public repo");
    let (st, _, b) = merge(
        7,
        serde_json::json!({"Do": "merge", "head_commit_id": head}),
    );
    assert_eq!(st, 200, "{b}");
    let (st, _, b) = raw(
        "POST",
        &format!("{api}/pulls/8/merge"),
        &[],
        Some(req.clone()),
    );
    assert_eq!(
        (st, &b["message"]),
        (401, &message("gitea/auth-401-token-required.json"))
    );

    // Legacy versions.
    g.set_version(GiteaVersion::Legacy);
    let (st, _, b) = merge(6, req.clone());
    assert_eq!(
        (st, &b["message"]),
        (405, &message("gitea/merge-405-already-merged-legacy.json"))
    );
    let (_, _, b) = raw("GET", &format!("{api}/pulls/99"), &auth, None);
    assert_eq!(b["message"], message("gitea/pull-404-legacy.json"));
    assert_shape("gitea/pull-404-legacy.json", &b);
    let (_, _, b) = raw(
        "GET",
        &format!("{api}/pulls/7"),
        &[("Authorization", "token wrong")],
        None,
    );
    assert_eq!(
        b["message"],
        message("gitea/auth-401-bad-token-legacy.json")
    );
    let (_, _, b) = raw(
        "GET",
        &format!("{api}/commits/{}/status", "ab".repeat(20)),
        &auth,
        None,
    );
    assert_eq!(b, sample("gitea/combined-status-none-legacy.json"));
    g.set_archived(REPO, true);
    let (st, _, b) = merge(8, req.clone());
    assert_eq!(st, 423);
    assert!(
        b["message"].as_str().unwrap().starts_with("<Repository "),
        "{b}"
    );
    assert_shape("gitea/merge-423-archived-legacy.json", &b);
    g.set_archived(REPO, false);
    g.set_version(GiteaVersion::V1_16);
    let (st, _, _) = merge(6, req);
    assert_eq!(st, 404, "Gitea <= 1.16 answers 404 for a merged PR");
}

// ---------------------------------------------------------------- Gitea client

#[test]
fn gitea_client_reads_pulls_branches_statuses_and_compares() {
    let g = gitea();
    let c = gitea_client(&g);
    let pr = c.get_pull(REPO, 7).unwrap();
    assert_eq!(
        (pr.number, pr.state.as_str(), pr.merged),
        (7, "open", false)
    );
    assert_eq!(
        (pr.head.ref_name.as_str(), pr.base.ref_name.as_str()),
        ("feature/retry", "main")
    );
    assert_eq!(pr.head.sha, "c3".repeat(20));
    assert_eq!(pr.mergeable, Some(true));
    let req = g.server().requests().pop().unwrap();
    assert_eq!(
        req.header("authorization"),
        Some(format!("token {DEFAULT_TOKEN}").as_str())
    );

    assert_eq!(
        c.create_branch(REPO, "task/ENG-42", "main").unwrap(),
        BranchOutcome::Created
    );
    assert_eq!(
        c.create_branch(REPO, "task/ENG-42", "main").unwrap(),
        BranchOutcome::AlreadyExists
    );
    assert_eq!(g.branch(REPO, "task/ENG-42"), g.branch(REPO, "main"));
    let sent = g.server().requests().pop().unwrap().json().unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"new_branch_name": "task/ENG-42", "old_ref_name": "main"})
    );
    // An unknown old ref is a 500 on Gitea: retryable, and a POST is not retried.
    let before = g.count(Some("POST"), REPO, "branches");
    retryable(&c.create_branch(REPO, "task/x", "no-such-ref").unwrap_err());
    assert_eq!(g.count(Some("POST"), REPO, "branches") - before, 1);
    fatal(&c.create_branch(REPO, "bad name", "main").unwrap_err());

    let head = "c3".repeat(20);
    assert_eq!(c.combined_status(REPO, &head).unwrap().state, CiState::None);
    g.add_status(REPO, &head, "ci/test", "pending");
    assert_eq!(
        c.combined_status(REPO, &head).unwrap().state,
        CiState::Pending
    );
    g.add_status(REPO, &head, "ci/test", "error");
    assert_eq!(
        c.combined_status(REPO, &head).unwrap().state,
        CiState::Failure
    );
    // The failing contexts come back with their description and target URL (what a
    // developer re-run for red CI is handed); passing ones do not.
    g.add_status_described(
        REPO,
        &head,
        ("ci/build", "failure"),
        "2 tests failed",
        "https://ci.example.com/run/9",
    );
    g.add_status_described(REPO, &head, ("ci/docs", "success"), "ok", "https://x/1");
    let s = c.combined_status(REPO, &head).unwrap();
    assert_eq!(s.state, CiState::Failure);
    let failing: Vec<(&str, &str, &str, &str)> = s
        .failing
        .iter()
        .map(|f| {
            (
                f.context.as_str(),
                f.state.as_str(),
                f.description.as_str(),
                f.target_url.as_str(),
            )
        })
        .collect();
    failing.iter().for_each(|f| assert_ne!(f.0, "ci/docs"));
    assert!(
        failing.contains(&(
            "ci/build",
            "failure",
            "2 tests failed",
            "https://ci.example.com/run/9"
        )) && failing.iter().any(|f| f.0 == "ci/test" && f.1 == "error"),
        "{failing:?}"
    );
    for context in ["ci/build", "ci/docs"] {
        g.add_status(REPO, &head, context, "success");
    }
    g.add_status(REPO, &head, "ci/test", "success");
    let s = c.combined_status(REPO, "feature/retry").unwrap();
    assert!(s.failing.is_empty());
    assert_eq!(
        (s.state, s.sha, s.total_count),
        (CiState::Success, head.clone(), 3)
    );
    // An unknown ref: 404 on 1.25, an empty object on legacy; both are "no CI".
    assert_eq!(
        c.combined_status(REPO, &"ab".repeat(20)).unwrap().state,
        CiState::None
    );
    g.set_version(GiteaVersion::Legacy);
    assert_eq!(
        c.combined_status(REPO, &"ab".repeat(20)).unwrap().state,
        CiState::None
    );
    g.set_version(GiteaVersion::Current);

    assert_eq!(
        c.compare_total_commits(REPO, "main", "feature/retry")
            .unwrap(),
        1
    );
    g.set_ahead(REPO, "main", "feature/retry", 3);
    assert_eq!(
        c.compare_total_commits(REPO, "main", "feature/retry")
            .unwrap(),
        3
    );
    assert_eq!(
        c.compare_total_commits(REPO, "feature/retry", "feature/retry")
            .unwrap(),
        0
    );
    let req = g.server().requests().pop().unwrap();
    assert!(
        req.path.ends_with("/compare/feature/retry...feature/retry"),
        "{}",
        req.path
    );
    assert_eq!(req.param("files").as_deref(), Some("false"));

    assert!(!c.is_merged(REPO, 7).unwrap());
    assert!(!c.is_merged(REPO, 99).unwrap());
}

#[test]
fn gitea_client_pages_through_open_pulls() {
    let g = gitea();
    for n in 100..219u64 {
        g.add_pull(REPO, &PullSeed::open(n, &format!("task/T-{n}")));
    }
    g.add_pull(REPO, &PullSeed::open(300, "task/merged").merged());
    let c = gitea_client(&g);
    let all = c.list_open_pulls(REPO).unwrap();
    assert_eq!(all.len(), 120);
    assert!(all.iter().all(|p| p.is_open()));
    assert_eq!(g.count(Some("GET"), REPO, "pulls"), 3);
    let reqs = g.server().requests();
    assert_eq!(reqs[2].param("page").as_deref(), Some("3"));
    assert!(reqs
        .iter()
        .all(|r| r.param("limit").as_deref() == Some("50")
            && r.param("state").as_deref() == Some("open")));

    // Newest first: PR 7 (the oldest) is on the last page; task/T-150 on page 2.
    let before = g.count(Some("GET"), REPO, "pulls");
    let found = c
        .find_open_pull_by_head(REPO, "task/T-150")
        .unwrap()
        .unwrap();
    assert_eq!(found.number, 150);
    assert_eq!(
        g.count(Some("GET"), REPO, "pulls") - before,
        2,
        "stops at the page that has it"
    );
    let before = g.count(Some("GET"), REPO, "pulls");
    assert!(c
        .find_open_pull_by_head(REPO, "task/merged")
        .unwrap()
        .is_none());
    assert_eq!(g.count(Some("GET"), REPO, "pulls") - before, 3);

    // An exact multiple of the page size ends on X-Total-Count, with no empty page.
    let h = gitea();
    for n in 100..149u64 {
        h.add_pull(REPO, &PullSeed::open(n, &format!("task/T-{n}")));
    }
    assert_eq!(gitea_client(&h).list_open_pulls(REPO).unwrap().len(), 50);
    assert_eq!(h.count(Some("GET"), REPO, "pulls"), 1);
}

#[test]
fn gitea_merge_returns_the_raw_answer_and_really_merges() {
    let g = gitea();
    let c = gitea_client(&g);
    let head = "c3".repeat(20);
    let stale = MergeRequest::merge_pinned(&"0".repeat(40), None);
    let a = c.merge(REPO, 7, &stale).unwrap();
    assert_eq!(
        (a.status, a.message.as_deref()),
        (409, Some("head out of date"))
    );
    assert!(!g.pull(REPO, 7).unwrap().merged);

    let req = MergeRequest::merge_pinned(&head, Some("Merge #7".into()));
    let a = c.merge(REPO, 7, &req).unwrap();
    assert_eq!((a.status, a.message.as_deref()), (200, None));
    let snap = g.pull(REPO, 7).unwrap();
    assert_eq!((snap.state.as_str(), snap.merged), ("closed", true));
    let pr = c.get_pull(REPO, 7).unwrap();
    assert!(pr.merged && !pr.is_open());
    assert_eq!(pr.merge_commit_sha, snap.merge_commit_sha);
    assert!(pr.merged_at.is_some());
    assert_eq!(
        g.branch(REPO, "main"),
        snap.merge_commit_sha,
        "base moved to the merge"
    );
    assert_eq!(pr.head.ref_name, "feature/retry", "head branch kept");
    assert!(c.is_merged(REPO, 7).unwrap());
    let sent = g
        .server()
        .requests()
        .iter()
        .rev()
        .find(|r| r.method == "POST")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(sent["Do"], "merge");
    assert_eq!(sent["delete_branch_after_merge"], false);
    assert_eq!(sent["head_commit_id"], head.as_str());

    let again = c.merge(REPO, 7, &req).unwrap();
    assert_eq!(
        (again.status, again.message.as_deref()),
        (405, Some("The PR is already merged"))
    );
    g.set_version(GiteaVersion::Legacy);
    assert_eq!(c.merge(REPO, 7, &req).unwrap().message.as_deref(), Some(""));
    assert_eq!(g.merge_calls(REPO, 7), 4);

    // Non-standard 409 conflict body: no message, body kept for the guard.
    g.add_pull(REPO, &PullSeed::open(9, "task/conflict"));
    g.server().script(
        Some("POST"),
        &format!("/api/v1/repos/{REPO}/pulls/9/merge"),
        Reply::json(409, &sample("gitea/merge-409-conflict.json")),
        1,
    );
    let a = c
        .merge(REPO, 9, &MergeRequest::merge_pinned("", None))
        .unwrap();
    assert_eq!((a.status, a.message.as_deref()), (409, None));
    assert!(a.body.contains("CONFLICT"), "{}", a.body);
    // A 500 is returned as is and not retried.
    g.server().script(
        Some("POST"),
        &format!("/api/v1/repos/{REPO}/pulls/9/merge"),
        Reply::json(500, &serde_json::json!({"message": "", "url": "x"})),
        1,
    );
    assert_eq!(
        c.merge(REPO, 9, &MergeRequest::merge_pinned("", None))
            .unwrap()
            .status,
        500
    );
    assert_eq!(g.merge_calls(REPO, 9), 2);
}

#[test]
fn gitea_merge_with_a_lost_answer_is_a_transport_error_and_the_pr_is_merged() {
    let g = gitea();
    let c = gitea_client(&g);
    let path = format!("/api/v1/repos/{REPO}/pulls/7/merge");
    g.server()
        .script_after(Some("POST"), &path, Reply::empty(200).unanswered(), 1);
    let e = c
        .merge(REPO, 7, &MergeRequest::merge_pinned(&"c3".repeat(20), None))
        .unwrap_err();
    assert!(retryable(&e).contains("gitea merge acme/widgets#7"), "{e}");
    assert_eq!(g.merge_calls(REPO, 7), 1, "never retried");
    assert!(c.get_pull(REPO, 7).unwrap().merged, "the merge happened");
}

#[test]
fn gitea_client_classifies_every_failure() {
    let g = gitea();
    let c = gitea_client(&g);
    let pull = format!("/api/v1/repos/{REPO}/pulls/7");

    let e = gitea_client_with_token(&g, "wrong")
        .get_pull(REPO, 7)
        .unwrap_err();
    assert!(
        fatal(&e).contains("401") && fatal(&e).contains("gitea get pull acme/widgets#7"),
        "{e}"
    );
    let e = c.get_pull(REPO, 99).unwrap_err();
    assert!(fatal(&e).contains("404"), "{e}");
    fatal(&c.get_pull("not-a-repo", 7).unwrap_err());

    g.server().script(
        Some("GET"),
        &pull,
        Reply::empty(429).with_header("Retry-After", "30"),
        1,
    );
    assert!(matches!(
        c.get_pull(REPO, 7).unwrap_err(),
        HttpError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(30)
    ));

    let before = g.server().requests().len();
    g.server().script(
        Some("GET"),
        &pull,
        Reply::json(500, &serde_json::json!({"message": "", "url": "x"})),
        1,
    );
    assert_eq!(
        c.get_pull(REPO, 7).unwrap().number,
        7,
        "one retry after a 500"
    );
    assert_eq!(g.server().requests().len() - before, 2);
    g.server().script(Some("GET"), &pull, Reply::empty(500), 2);
    retryable(&c.get_pull(REPO, 7).unwrap_err());

    g.server().script(
        Some("GET"),
        &pull,
        Reply::raw(200, "text/plain", "not json"),
        1,
    );
    assert!(fatal(&c.get_pull(REPO, 7).unwrap_err()).contains("unexpected answer"));
    g.server().script(
        Some("GET"),
        &format!("/api/v1/repos/{REPO}/pulls"),
        Reply::json(200, &serde_json::json!({"not": "a list"})),
        1,
    );
    fatal(&c.list_open_pulls(REPO).unwrap_err());
    g.server().script(
        Some("GET"),
        &format!("/api/v1/repos/{REPO}/compare/"),
        Reply::json(200, &serde_json::json!({"commits": []})),
        1,
    );
    fatal(
        &c.compare_total_commits(REPO, "main", "feature/retry")
            .unwrap_err(),
    );
    g.server()
        .script(Some("GET"), &format!("{pull}/merge"), Reply::empty(403), 1);
    fatal(&c.is_merged(REPO, 7).unwrap_err());

    // A slow answer times out (1 s client timeout); a POST is not retried.
    let branches = format!("/api/v1/repos/{REPO}/branches");
    g.server().script(
        Some("POST"),
        &branches,
        Reply::empty(201).delayed(Duration::from_secs(2)),
        1,
    );
    let e = c.create_branch(REPO, "task/slow", "main").unwrap_err();
    assert!(retryable(&e).contains("timed out"), "{e}");
    assert_eq!(g.count(Some("POST"), REPO, "branches"), 1);
}

// ---------------------------------------------------------------- seeds and helpers

/// Runs `orch-standin KIND SEED`, reads its `KIND URL` line and returns the child.
fn standin_from_seed(kind: &str, seed: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.yaml");
    std::fs::write(&path, seed).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orch-standin"))
        .args([kind, path.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn orch-standin");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix(&format!("{kind} "))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, url)
}

#[test]
fn orch_standin_serves_seeded_models_until_stdin_closes() {
    let (mut plane, url) = standin_from_seed(
        "plane",
        &format!(
            "workspace: acme\nprojects:\n  - id: {PROJECT}\n    states:\n      - {{ id: {STARTED}, name: In Progress, group: started }}\n    work_items:\n      - {{ id: {ITEM}, sequence_id: 42, name: Fix, state: In Progress }}\n"
        ),
    );
    let c = PlaneClient::from_config(&config(&[
        ("ORCH_PLANE_URL", &url),
        ("ORCH_PLANE_API_KEY", DEFAULT_API_KEY),
    ]))
    .unwrap();
    let item = c.get_work_item(PROJECT, ITEM).unwrap();
    assert_eq!(item.state.unwrap().name, "In Progress");
    drop(plane.stdin.take());
    assert!(plane.wait().unwrap().success());

    let (mut gitea, url) = standin_from_seed(
        "gitea",
        "version: \"1.24\"\nrepos:\n  - name: acme/shop\n    pulls: [{ number: 3, head: task/SHOP-1, merged: true }]\n    statuses: [{ sha: main, context: ci/test, state: warning }]\n",
    );
    let c = GiteaClient::from_config(&config(&[
        ("ORCH_GITEA_URL", &url),
        ("ORCH_GITEA_TOKEN", DEFAULT_TOKEN),
    ]))
    .unwrap();
    assert!(c.get_pull("acme/shop", 3).unwrap().merged);
    // Legacy combines to the worst state; the client's verdict lets a warning pass
    // on every version (docs/versions.md).
    let auth = format!("token {DEFAULT_TOKEN}");
    let (_, _, combined) = raw(
        "GET",
        &format!("{url}/api/v1/repos/acme/shop/commits/main/status"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(combined["state"], "warning");
    assert_eq!(
        c.combined_status("acme/shop", "main").unwrap().state,
        CiState::Success
    );
    let a = c
        .merge("acme/shop", 3, &MergeRequest::merge_pinned("", None))
        .unwrap();
    assert_eq!((a.status, a.message.as_deref()), (405, Some("")));
    drop(gitea.stdin.take());
    assert!(gitea.wait().unwrap().success());
}

#[test]
fn orch_standin_refuses_a_bad_seed_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, seed) in [
        ("gitea", "repos: [{ name: acme/x, bogus: 1 }]\n"),
        ("plane", "projects: []\n"),
        ("gitea", "version: \"9.9\"\n"),
    ] {
        let path = dir.path().join("seed.yaml");
        std::fs::write(&path, seed).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch-standin"))
            .args([kind, path.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{kind} {seed}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{kind} seed")), "{err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch-standin"))
        .args(["plane", "/nonexistent/seed.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn shape_diff_reports_missing_extra_and_nested_keys() {
    let mut d = Vec::new();
    shape_diff(
        &serde_json::json!({"a": 1, "b": {"c": 1}, "l": [{"x": 1}], "n": null}),
        &serde_json::json!({"a": 1, "b": {"d": 1}, "l": [{"y": 1}], "n": {"z": 1}, "e": 2}),
        "",
        &mut d,
    );
    d.sort();
    assert_eq!(
        d,
        [
            "extra .b.d",
            "extra .e",
            "extra .l[].y",
            "missing .b.c",
            "missing .l[].x"
        ]
    );
}
