//! A loopback stand-in of Plane's REST API v1 (CE), built on [`Server`]: an in-memory
//! workspace of projects, states, work items and comments, seeded by code or by a
//! YAML/JSON seed file, answering in the shapes of `shared/reference/samples/plane/`.
//!
//! What it models (plane.md §3-§5): `X-API-Key` auth (none → 401, wrong → 403), the
//! paginated envelope (`per_page` + `cursor`, `next_page_results`), `expand=state`,
//! `fields=` on the work-item list (each item keeps only the keys named: split on
//! commas, nothing trimmed, unknown names ignored, `id` only when named, `state`
//! expanded only when named too, as Plane's `BaseSerializer` does on every CE version),
//! state PATCH (`state` key only; another project's state → 400), comments with
//! `external_source`/`external_id` (duplicate → 409 with the existing id), unknown
//! objects → 404, and the per-key rate limit: every allowed answer carries
//! `X-RateLimit-Remaining`/`X-RateLimit-Reset`; when enforcement is switched on, a
//! request over the per-minute budget gets 429 with `Retry-After` and no rate headers.
//! Routes need Plane's trailing slash. Test failures are scripted on the [`Server`].
//! [`PlaneVersion::Legacy`] serves CE v1.0.x and older: `/issues/` paths only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::standin::server::{Recorded, Reply, Server};

/// The workspace id every answer carries.
const WORKSPACE_ID: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e01";
/// The user behind the API key.
const API_USER: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e11";
/// A fixed creation time for seeded objects.
const SEEDED_AT: &str = "2026-05-01T09:00:00.100000Z";
/// CE's default and maximum `per_page`.
const MAX_PER_PAGE: usize = 1000;

#[derive(Debug, Clone)]
struct State {
    id: String,
    name: String,
    group: String,
    color: String,
}

#[derive(Debug, Clone)]
struct Item {
    id: String,
    name: String,
    sequence_id: u64,
    state: Option<String>,
    updated_at: String,
    completed_at: Option<String>,
    /// The `priority` field as answered; `None` leaves the field out.
    priority: Option<Value>,
}

#[derive(Debug, Clone)]
struct Comment {
    id: String,
    issue: String,
    comment_html: String,
    access: String,
    external_source: Option<String>,
    external_id: Option<String>,
    created_at: String,
}

#[derive(Debug, Default)]
struct Project {
    states: Vec<State>,
    items: Vec<Item>,
    comments: Vec<Comment>,
}

#[derive(Debug)]
struct Model {
    workspace: String,
    api_key: String,
    projects: BTreeMap<String, Project>,
    budget: u32,
    enforce: bool,
    window: VecDeque<Instant>,
    seq: u64,
    /// Which Plane CE the routes follow (see [`PlaneVersion`]).
    version: PlaneVersion,
    /// The time changes are stamped with, when a test pins it (see [`PlaneStandin::set_now`]);
    /// the wall clock otherwise.
    now: Option<String>,
    /// Work-item listings never end: every page says `next_page_results` with a new
    /// cursor (a broken or hostile upstream; the page cap must stop it).
    endless_listing: bool,
    /// How long each work-item listing page takes to answer (a slow upstream).
    listing_delay: Option<Duration>,
    /// Work-item list pages as rendered, by (project, `expand=state`, `fields`,
    /// per_page, page):
    /// served again while nothing changed, so a big listing costs what orch does with
    /// it, not the stand-in's rendering. Emptied by every change (see [`Model::changed`]).
    pages: HashMap<PageKey, Arc<Vec<u8>>>,
}

/// Which list page a cached rendering is: (project, `expand=state`, `fields` as asked,
/// per_page, page).
type PageKey = (String, bool, Option<String>, usize, usize);

impl Model {
    /// Forgets every cached page: called on every way into the model that may change
    /// it (the test-side handle, any request but a GET), so a change is on the next
    /// page read.
    fn changed(&mut self) {
        self.pages.clear();
    }

    fn stamp(&self) -> String {
        self.now.clone().unwrap_or_else(now_rfc3339)
    }
}

/// Which Plane CE routes the stand-in serves where versions differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum PlaneVersion {
    /// CE v1.1.0+ (October 2025): `/work-items/` and the older `/issues/` paths both
    /// route to the same views (`plane/api/urls/work_item.py`).
    #[default]
    #[serde(rename = "1.1")]
    Current,
    /// CE v0.23 - v1.0.x: only `/issues/`; a `/work-items/` path matches no route and
    /// gets Django's HTML 404 page.
    #[serde(rename = "1.0")]
    Legacy,
}

impl Model {
    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("0b8f5d2e-0000-4000-8000-{:012x}", self.seq)
    }

    fn state(&self, id: &str) -> Option<(&str, &State)> {
        self.projects.iter().find_map(|(pid, p)| {
            p.states
                .iter()
                .find(|s| s.id == id)
                .map(|s| (pid.as_str(), s))
        })
    }
}

/// A running Plane stand-in; stops when dropped.
pub struct PlaneStandin {
    server: Server,
    model: Arc<Mutex<Model>>,
}

/// The API key a stand-in accepts unless told otherwise.
pub const DEFAULT_API_KEY: &str = "plane_api_0123456789abcdef0123456789abcdef";

impl PlaneStandin {
    /// Starts an empty workspace `workspace` accepting `api_key`, with Plane's default
    /// budget of 60 requests a minute reported in headers but not enforced.
    pub fn start(workspace: &str, api_key: &str) -> PlaneStandin {
        let model = Arc::new(Mutex::new(Model {
            workspace: workspace.to_string(),
            api_key: api_key.to_string(),
            projects: BTreeMap::new(),
            budget: 60,
            enforce: false,
            window: VecDeque::new(),
            seq: 0,
            version: PlaneVersion::Current,
            now: None,
            endless_listing: false,
            listing_delay: None,
            pages: HashMap::new(),
        }));
        let m = model.clone();
        let server = Server::start(Arc::new(move |r: &Recorded| {
            handle(&mut m.lock().expect("plane model lock"), r)
        }));
        PlaneStandin { server, model }
    }

    /// Returns the base URL (`ORCH_PLANE_URL`).
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Returns the underlying server (scripting, recorded requests).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Gives up the model handle and returns the server (the model lives on in it).
    pub fn into_server(self) -> Server {
        self.server
    }

    /// The model, for reading or changing it: its cached pages are forgotten, since
    /// the caller may change what they show.
    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        let mut m = self.model.lock().expect("plane model lock");
        m.changed();
        m
    }

    /// Adds a project with states `(id, name, group)` in display order.
    pub fn add_project(&self, project_id: &str, states: &[(&str, &str, &str)]) -> &Self {
        let mut m = self.model();
        let p = m.projects.entry(project_id.to_string()).or_default();
        for (id, name, group) in states {
            p.states.push(State {
                id: (*id).into(),
                name: (*name).into(),
                group: (*group).into(),
                color: "#60646C".into(),
            });
        }
        self
    }

    /// Adds a work item (newest last; lists answer newest first like CE's `-created_at`).
    ///
    /// # Panics
    /// When the project was not added first (a test bug).
    pub fn add_work_item(
        &self,
        project_id: &str,
        id: &str,
        sequence_id: u64,
        name: &str,
        state_id: Option<&str>,
    ) -> &Self {
        let mut m = self.model();
        let p = m
            .projects
            .get_mut(project_id)
            .expect("add_project before add_work_item");
        p.items.push(Item {
            id: id.into(),
            name: name.into(),
            sequence_id,
            state: state_id.map(str::to_string),
            updated_at: SEEDED_AT.into(),
            completed_at: None,
            priority: Some(json!("none")),
        });
        self
    }

    /// Moves a work item as the web UI would (no API call recorded).
    /// Like Plane, a change bumps the item's `updated_at`; returns the new `updated_at`
    /// (what the delivery Plane sends for the change carries).
    pub fn set_item_state(&self, project_id: &str, id: &str, state_id: &str) -> String {
        let mut m = self.model();
        let now = m.stamp();
        if let Some(i) = m
            .projects
            .get_mut(project_id)
            .and_then(|p| p.items.iter_mut().find(|i| i.id == id))
        {
            i.state = Some(state_id.into());
            i.updated_at = now.clone();
        }
        now
    }

    /// Sets a work item's `priority` as Plane answers it (any JSON, to stand in for a
    /// value Plane never sends; `None` leaves the field out); bumps its `updated_at`.
    pub fn set_item_priority(&self, project_id: &str, id: &str, priority: Option<Value>) {
        let mut m = self.model();
        let now = m.stamp();
        if let Some(i) = m
            .projects
            .get_mut(project_id)
            .and_then(|p| p.items.iter_mut().find(|i| i.id == id))
        {
            i.priority = priority;
            i.updated_at = now;
        }
    }

    /// Pins the time the stand-in stamps changes with (`updated_at`, comments'
    /// `created_at`), so a test that moves orch's clock with `ORCH_NOW` sees one time line.
    pub fn set_now(&self, rfc3339: &str) {
        self.model().now = Some(rfc3339.to_string());
    }

    /// Returns a work item's current state id.
    pub fn item_state(&self, project_id: &str, id: &str) -> Option<String> {
        let m = self.model();
        m.projects
            .get(project_id)
            .and_then(|p| p.items.iter().find(|i| i.id == id))
            .and_then(|i| i.state.clone())
    }

    /// Returns the comments on a work item as `(external_id, comment_html)`.
    pub fn comments(&self, project_id: &str, work_item_id: &str) -> Vec<(Option<String>, String)> {
        let m = self.model();
        m.projects
            .get(project_id)
            .map(|p| {
                p.comments
                    .iter()
                    .filter(|c| c.issue == work_item_id)
                    .map(|c| (c.external_id.clone(), c.comment_html.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Switches the routes that differ between Plane CE versions.
    pub fn set_version(&self, v: PlaneVersion) {
        self.model().version = v;
    }

    /// Makes every work-item listing endless: each page, however far, has a next one
    /// under a new cursor.
    pub fn set_endless_listing(&self, endless: bool) {
        self.model().endless_listing = endless;
    }

    /// Makes every work-item listing page answer only after `delay` (a slow upstream).
    pub fn set_listing_delay(&self, delay: Option<Duration>) {
        self.model().listing_delay = delay;
    }

    /// Sets the per-minute budget and whether going over it answers 429.
    pub fn set_rate_limit(&self, per_minute: u32, enforce: bool) {
        let mut m = self.model();
        m.budget = per_minute;
        m.enforce = enforce;
        m.window.clear();
    }

    /// Counts requests with this method (any when `None`) whose path, after
    /// `/api/v1/workspaces/{slug}/`, starts with `route` (e.g. `projects/P/states/`).
    pub fn count(&self, method: Option<&str>, route: &str) -> usize {
        let prefix = format!("/api/v1/workspaces/{}/{route}", self.model().workspace);
        self.server.count(method, &prefix)
    }

    /// Starts a stand-in from a seed (see [`PlaneSeed`]).
    pub fn from_seed(seed: &PlaneSeed) -> PlaneStandin {
        let s = PlaneStandin::start(
            &seed.workspace,
            seed.api_key.as_deref().unwrap_or(DEFAULT_API_KEY),
        );
        if let Some(limit) = &seed.rate_limit {
            s.set_rate_limit(limit.per_minute, limit.enforce);
        }
        if let Some(v) = seed.version {
            s.set_version(v);
        }
        for p in &seed.projects {
            let states: Vec<(&str, &str, &str)> = p
                .states
                .iter()
                .map(|st| (st.id.as_str(), st.name.as_str(), st.group.as_str()))
                .collect();
            s.add_project(&p.id, &states);
            for w in &p.work_items {
                // A state may be named by id or by name.
                let state = w.state.as_deref().map(|st| {
                    p.states
                        .iter()
                        .find(|x| x.name == st)
                        .map_or(st, |x| x.id.as_str())
                });
                s.add_work_item(&p.id, &w.id, w.sequence_id, &w.name, state);
            }
        }
        s
    }
}

/// The seed file of `orch-standin plane SEED` (YAML or JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaneSeed {
    /// The workspace slug.
    pub workspace: String,
    /// The accepted API key (default [`DEFAULT_API_KEY`]).
    #[serde(default)]
    pub api_key: Option<String>,
    /// The rate limit (default 60/minute, not enforced).
    #[serde(default)]
    pub rate_limit: Option<RateLimitSeed>,
    /// The Plane CE version whose routes to serve: `"1.1"` (default) or `"1.0"`
    /// (no `/work-items/` paths).
    #[serde(default)]
    pub version: Option<PlaneVersion>,
    /// The projects.
    #[serde(default)]
    pub projects: Vec<ProjectSeed>,
}

/// A rate limit in a seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSeed {
    /// Requests per minute.
    pub per_minute: u32,
    /// Whether going over answers 429.
    #[serde(default)]
    pub enforce: bool,
}

/// A project in a seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSeed {
    /// The project id (UUID).
    pub id: String,
    /// Its states, in display order.
    #[serde(default)]
    pub states: Vec<StateSeed>,
    /// Its work items.
    #[serde(default)]
    pub work_items: Vec<WorkItemSeed>,
}

/// A state in a seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSeed {
    /// The state id (UUID).
    pub id: String,
    /// The name.
    pub name: String,
    /// The group.
    pub group: String,
}

/// A work item in a seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkItemSeed {
    /// The id (UUID).
    pub id: String,
    /// The number in `PROJ-42`.
    pub sequence_id: u64,
    /// The title.
    pub name: String,
    /// The state, by id or name.
    #[serde(default)]
    pub state: Option<String>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// What Django answers (with `DEBUG` off) for a path no route matches.
const DJANGO_NOT_FOUND: &str = "\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n";

fn not_found() -> Reply {
    Reply::json(
        404,
        &json!({"error": "The requested resource does not exist."}),
    )
}

fn handle(m: &mut Model, r: &Recorded) -> Reply {
    // Authentication first: none → 401, wrong → 403 (plane.md §4.6).
    match r.header("x-api-key") {
        None => {
            return Reply::json(
                401,
                &json!({"detail": "Authentication credentials were not provided."}),
            )
        }
        Some(k) if k != m.api_key => {
            return Reply::json(403, &json!({"detail": "Given API token is not valid"}))
        }
        Some(_) => {}
    }
    // Then the sliding one-minute window of this key.
    let now = Instant::now();
    while m
        .window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
    {
        m.window.pop_front();
    }
    let used = u32::try_from(m.window.len()).unwrap_or(u32::MAX);
    if m.enforce && used >= m.budget {
        let wait = m.window.front().map_or(60, |t| {
            60u64
                .saturating_sub(now.duration_since(*t).as_secs())
                .max(1)
        });
        return Reply::json(
            429,
            &json!({"error_code": 5900, "error_message": "RATE_LIMIT_EXCEEDED"}),
        )
        .with_header("Retry-After", &wait.to_string());
    }
    m.window.push_back(now);
    let remaining = m.budget.saturating_sub(used + 1);
    route(m, r)
        .with_header("X-RateLimit-Remaining", &remaining.to_string())
        .with_header("X-RateLimit-Reset", &(now_unix() + 60).to_string())
}

fn route(m: &mut Model, r: &Recorded) -> Reply {
    if r.method != "GET" {
        m.changed();
    }
    let Some(rest) = r.path.strip_prefix("/api/v1/workspaces/") else {
        return not_found();
    };
    let Some(rest) = rest.strip_suffix('/') else {
        return not_found();
    };
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.first() != Some(&m.workspace.as_str()) {
        return not_found();
    }
    if m.version == PlaneVersion::Legacy && segs.get(3) == Some(&"work-items") {
        // No such route before v1.1: Django's own 404 page, not the API's JSON.
        return Reply::raw(404, "text/html; charset=utf-8", DJANGO_NOT_FOUND);
    }
    match (r.method.as_str(), &segs[1..]) {
        ("GET", ["projects", pid, "states"]) => list_states(m, pid, r),
        ("GET", ["projects", pid, "work-items" | "issues"]) => list_items(m, pid, r),
        ("GET", ["projects", pid, "work-items" | "issues", id]) => get_item(m, pid, id, r),
        ("PATCH", ["projects", pid, "work-items" | "issues", id]) => patch_item(m, pid, id, r),
        ("POST", ["projects", pid, "work-items" | "issues", id, "comments"]) => {
            post_comment(m, pid, id, r)
        }
        _ => not_found(),
    }
}

/// Applies `per_page` + `cursor` the way CE's `OffsetPaginator` does.
fn paginate(all: Vec<Value>, r: &Recorded) -> Reply {
    let total = all.len();
    paginate_with(total, |range| all[range].to_vec(), r)
}

/// [`paginate`] over `total` results of which only the page asked for is built
/// (`page_of(range)`): a listing of thousands of items builds one page per request.
fn paginate_with(
    total: usize,
    page_of: impl FnOnce(std::ops::Range<usize>) -> Vec<Value>,
    r: &Recorded,
) -> Reply {
    let per_page = match r.param("per_page") {
        None => MAX_PER_PAGE,
        Some(p) => match p.parse::<usize>() {
            Ok(n) if n > MAX_PER_PAGE => {
                return Reply::json(
                    400,
                    &json!({"detail": "Invalid per_page value. Cannot exceed 1000."}),
                )
            }
            Ok(n) if n > 0 => n,
            _ => return Reply::json(400, &json!({"detail": "Invalid per_page parameter."})),
        },
    };
    let page = match r.param("cursor") {
        None => 0,
        Some(c) => {
            let parts: Vec<&str> = c.split(':').collect();
            match parts.as_slice() {
                [_, page, _] => match page.parse::<i64>() {
                    Ok(p) if p >= 0 => usize::try_from(p).unwrap_or(0),
                    _ => return Reply::json(400, &json!({"detail": "Invalid cursor parameter."})),
                },
                _ => return Reply::json(400, &json!({"detail": "Invalid cursor parameter."})),
            }
        }
    };
    let start = (page * per_page).min(total);
    let end = (start + per_page).min(total);
    let results: Vec<Value> = page_of(start..end);
    let page_i = i64::try_from(page).unwrap_or(0);
    Reply::json(
        200,
        &json!({
            "grouped_by": null,
            "sub_grouped_by": null,
            "total_count": total,
            "next_cursor": format!("{per_page}:{}:0", page_i + 1),
            "prev_cursor": format!("{per_page}:{}:1", page_i - 1),
            "next_page_results": end < total,
            "prev_page_results": page > 0,
            "count": results.len(),
            "total_pages": total.div_ceil(per_page).max(1),
            "total_results": total,
            "extra_stats": null,
            "results": results,
        }),
    )
}

fn state_json(pid: &str, s: &State, index: usize, default: bool) -> Value {
    json!({
        "id": s.id,
        "created_at": SEEDED_AT,
        "updated_at": SEEDED_AT,
        "deleted_at": null,
        "name": s.name,
        "description": "",
        "color": s.color,
        "slug": s.name.to_ascii_lowercase().replace(' ', "-"),
        "sequence": 15000.0 + 10000.0 * f64::from(u32::try_from(index).unwrap_or(0)),
        "group": s.group,
        "is_triage": s.group == "triage",
        "default": default,
        "external_source": null,
        "external_id": null,
        "created_by": API_USER,
        "updated_by": null,
        "project": pid,
        "workspace": WORKSPACE_ID,
    })
}

fn item_json(m: &Model, pid: &str, i: &Item, expand_state: bool) -> Value {
    let state = match (&i.state, expand_state) {
        // Plane expands a missing state as `StateLiteSerializer(None).data`: `{}`.
        (None, true) => json!({}),
        (None, false) => Value::Null,
        (Some(id), false) => json!(id),
        (Some(id), true) => match m.state(id) {
            Some((_, s)) => json!({"id": s.id, "name": s.name, "color": s.color, "group": s.group}),
            None => json!(id),
        },
    };
    let mut item = json!({
        "id": i.id,
        "type_id": null,
        "created_at": "2026-05-18T08:02:11.481235Z",
        "updated_at": i.updated_at,
        "deleted_at": null,
        "point": null,
        "name": i.name,
        "description_html": "<p></p>",
        "description_binary": null,
        "priority": "none",
        "start_date": null,
        "target_date": null,
        "sequence_id": i.sequence_id,
        "sort_order": 65535.0,
        "completed_at": i.completed_at,
        "archived_at": null,
        "is_draft": false,
        "external_source": null,
        "external_id": null,
        "created_by": API_USER,
        "updated_by": API_USER,
        "project": pid,
        "workspace": WORKSPACE_ID,
        "parent": null,
        "state": state,
        "estimate_point": null,
        "type": null,
        "assignees": [],
        "labels": [],
    });
    match &i.priority {
        Some(p) => item["priority"] = p.clone(),
        None => {
            item.as_object_mut().expect("an object").remove("priority");
        }
    }
    item
}

/// The keys a request's `fields=` names, split as Plane splits them (on commas, nothing
/// trimmed, empty names dropped); `None` when it names none (every key is kept).
fn named_fields(r: &Recorded) -> Option<Vec<String>> {
    let named: Vec<String> = r
        .param("fields")?
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    (!named.is_empty()).then_some(named)
}

/// `item` with only the keys `fields` names (all of them without `fields`).
fn only_fields(mut item: Value, fields: Option<&[String]>) -> Value {
    if let (Some(fields), Some(o)) = (fields, item.as_object_mut()) {
        o.retain(|k, _| fields.iter().any(|f| f == k));
    }
    item
}

fn expands_state(r: &Recorded) -> bool {
    r.param("expand")
        .is_some_and(|e| e.split(',').any(|x| x.trim() == "state"))
}

fn list_states(m: &Model, pid: &str, r: &Recorded) -> Reply {
    let Some(p) = m.projects.get(pid) else {
        return not_found();
    };
    // Triage states are never returned by the API.
    let all = p
        .states
        .iter()
        .enumerate()
        .filter(|(_, s)| s.group != "triage")
        .map(|(i, s)| state_json(pid, s, i, i == 0))
        .collect();
    paginate(all, r)
}

fn list_items(m: &mut Model, pid: &str, r: &Recorded) -> Reply {
    let reply = match page_key(pid, r) {
        Some(key) => match m.pages.get(&key) {
            Some(body) => Reply::raw(200, "application/json", body.as_slice()),
            None => {
                let reply = render_items(m, pid, r);
                if reply.status == 200 {
                    m.pages.insert(key, Arc::new(reply.body.clone()));
                }
                reply
            }
        },
        None => render_items(m, pid, r),
    };
    match m.listing_delay {
        Some(d) => reply.delayed(d),
        None => reply,
    }
}

/// The cache key of a work-item list page, when the query is one the cache knows
/// (`per_page`, `cursor`, `expand` only, each well formed): any other query is
/// rendered every time.
fn page_key(pid: &str, r: &Recorded) -> Option<PageKey> {
    let mut per_page = MAX_PER_PAGE;
    let mut page = 0usize;
    for (k, v) in url::form_urlencoded::parse(r.query.as_bytes()) {
        match k.as_ref() {
            "per_page" => per_page = v.parse().ok().filter(|n| (1..=MAX_PER_PAGE).contains(n))?,
            "cursor" => match v.split(':').collect::<Vec<_>>().as_slice() {
                [_, p, _] => page = p.parse().ok()?,
                _ => return None,
            },
            "expand" | "fields" => {}
            _ => return None,
        }
    }
    let fields = r.param("fields");
    Some((pid.to_string(), expands_state(r), fields, per_page, page))
}

/// Renders a work-item list page from the model.
fn render_items(m: &Model, pid: &str, r: &Recorded) -> Reply {
    let Some(p) = m.projects.get(pid) else {
        return not_found();
    };
    let expand = expands_state(r);
    let fields = named_fields(r);
    let reply = paginate_with(
        p.items.len(),
        |range| {
            p.items
                .iter()
                .rev()
                .skip(range.start)
                .take(range.len())
                .map(|i| only_fields(item_json(m, pid, i, expand), fields.as_deref()))
                .collect()
        },
        r,
    );
    if m.endless_listing && reply.status == 200 {
        let mut page: Value = serde_json::from_slice(&reply.body).expect("our own JSON");
        page["next_page_results"] = Value::Bool(true);
        Reply::json(200, &page)
    } else {
        reply
    }
}

fn get_item(m: &Model, pid: &str, id: &str, r: &Recorded) -> Reply {
    match m
        .projects
        .get(pid)
        .and_then(|p| p.items.iter().find(|i| i.id == id))
    {
        Some(i) => Reply::json(200, &item_json(m, pid, i, expands_state(r))),
        None => not_found(),
    }
}

fn patch_item(m: &mut Model, pid: &str, id: &str, r: &Recorded) -> Reply {
    let Some(body) = r.json().filter(Value::is_object) else {
        return Reply::json(400, &json!({"detail": "JSON parse error - invalid body"}));
    };
    let exists = m
        .projects
        .get(pid)
        .is_some_and(|p| p.items.iter().any(|i| i.id == id));
    if !exists {
        return not_found();
    }
    let mut new_state = None;
    if let Some(s) = body.get("state") {
        let Some(sid) = s.as_str() else {
            return Reply::json(
                400,
                &json!({"state": ["Incorrect type. Expected pk value, received str."]}),
            );
        };
        match m.state(sid) {
            None => {
                return Reply::json(
                    400,
                    &json!({"state": [format!("Invalid pk \"{sid}\" - object does not exist.")]}),
                )
            }
            Some((owner, _)) if owner != pid => {
                return Reply::json(
                    400,
                    &json!({"non_field_errors": ["State is not valid please pass a valid state_id"]}),
                )
            }
            Some((_, st)) => new_state = Some((sid.to_string(), st.group == "completed")),
        }
    }
    let now = m.stamp();
    let item = {
        let p = m.projects.get_mut(pid).expect("checked above");
        let i = p
            .items
            .iter_mut()
            .find(|i| i.id == id)
            .expect("checked above");
        if let Some((sid, completed)) = new_state {
            if i.state.as_deref() != Some(sid.as_str()) {
                i.completed_at = completed.then(|| now.clone());
                i.state = Some(sid);
                i.updated_at = now;
            }
        }
        i.clone()
    };
    Reply::json(200, &item_json(m, pid, &item, false))
}

fn post_comment(m: &mut Model, pid: &str, id: &str, r: &Recorded) -> Reply {
    let Some(body) = r.json().filter(Value::is_object) else {
        return Reply::json(400, &json!({"detail": "JSON parse error - invalid body"}));
    };
    let exists = m
        .projects
        .get(pid)
        .is_some_and(|p| p.items.iter().any(|i| i.id == id));
    if !exists {
        return not_found();
    }
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (source, ext_id) = (text("external_source"), text("external_id"));
    let Some(html) = text("comment_html") else {
        return Reply::json(400, &json!({"comment_html": ["This field is required."]}));
    };
    if let (Some(src), Some(eid)) = (&source, &ext_id) {
        let dup = m.projects[pid].comments.iter().find(|c| {
            c.external_source.as_deref() == Some(src) && c.external_id.as_deref() == Some(eid)
        });
        if let Some(c) = dup {
            return Reply::json(
                409,
                &json!({
                    "error": "Comment with the same external id and external source already exists",
                    "id": c.id,
                }),
            );
        }
    }
    let c = Comment {
        id: m.next_id(),
        issue: id.to_string(),
        comment_html: html,
        access: text("access").unwrap_or_else(|| "INTERNAL".into()),
        external_source: source,
        external_id: ext_id,
        created_at: m.stamp(),
    };
    let description = m.next_id();
    let reply = json!({
        "id": c.id,
        "created_at": c.created_at,
        "updated_at": c.created_at,
        "deleted_at": null,
        "comment_html": c.comment_html,
        "attachments": [],
        "access": c.access,
        "external_source": c.external_source,
        "external_id": c.external_id,
        "edited_at": null,
        "created_by": API_USER,
        "updated_by": API_USER,
        "project": pid,
        "workspace": WORKSPACE_ID,
        "description": description,
        "issue": c.issue,
        "actor": API_USER,
        "parent": null,
    });
    m.projects
        .get_mut(pid)
        .expect("checked above")
        .comments
        .push(c);
    Reply::json(201, &reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = DEFAULT_API_KEY;
    const PID: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";
    const TODO: &str = "5a000000-0000-4000-8000-000000000001";
    const DONE: &str = "5a000000-0000-4000-8000-000000000002";

    fn page(s: &PlaneStandin, query: &str) -> (u16, Value) {
        let url = format!(
            "{}/api/v1/workspaces/acme/projects/{PID}/work-items/?{query}",
            s.url()
        );
        let resp = reqwest::blocking::Client::new()
            .get(url)
            .header("X-API-Key", KEY)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json().unwrap())
    }

    fn states(v: &Value) -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["state"]["name"].as_str().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn a_cached_list_page_shows_every_change_on_the_next_read() {
        let s = PlaneStandin::start("acme", KEY);
        s.add_project(
            PID,
            &[(TODO, "Todo", "unstarted"), (DONE, "Done", "completed")],
        );
        for n in 1..=3 {
            s.add_work_item(PID, &format!("item-{n}"), n, "Work", Some(TODO));
        }
        let q = "per_page=2&expand=state";
        let (status, first) = page(&s, q);
        assert_eq!(status, 200);
        assert_eq!(states(&first), ["Todo", "Todo"]);
        assert_eq!(s.model.lock().unwrap().pages.len(), 1, "the page is kept");
        // Unchanged: the same bytes again, from the cache.
        assert_eq!(page(&s, q).1, first);

        // A change made by the test (as the web UI would) is on the next read.
        s.set_item_state(PID, "item-3", DONE);
        assert_eq!(states(&page(&s, q).1), ["Done", "Todo"]);

        // A change made over the API (PATCH) too.
        let patch = reqwest::blocking::Client::new()
            .patch(format!(
                "{}/api/v1/workspaces/acme/projects/{PID}/work-items/item-2/",
                s.url()
            ))
            .header("X-API-Key", KEY)
            .json(&json!({"state": DONE}))
            .send()
            .unwrap();
        assert_eq!(patch.status().as_u16(), 200);
        assert_eq!(states(&page(&s, q).1), ["Done", "Done"]);

        // A new item, and the second page, whose cursor is another key.
        s.add_work_item(PID, "item-4", 4, "Work", Some(TODO));
        let (_, p1) = page(&s, q);
        assert_eq!(states(&p1), ["Todo", "Done"]);
        let next = p1["next_cursor"].as_str().unwrap().to_string();
        let (_, p2) = page(&s, &format!("{q}&cursor={next}"));
        assert_eq!(states(&p2), ["Done", "Todo"]);
        assert_eq!(p2["next_page_results"], json!(false));

        // A bad query is never cached, and still refused.
        assert_eq!(page(&s, "per_page=0").0, 400);
        assert_eq!(page(&s, "per_page=2&cursor=x").0, 400);
    }
}
