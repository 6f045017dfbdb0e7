//! The Plane REST API v1 client: states, work items, state updates and comments, as
//! `shared/reference/plane.md` §3-§5 describe them (CE and Cloud).
//!
//! Every call goes to `ORCH_PLANE_URL` + `/api/v1/workspaces/{slug}/...` with the
//! trailing slash Plane's routes need, authenticated by `X-API-Key`. Answers are parsed
//! leniently (unknown fields ignored) into small typed values; a non-JSON or
//! wrong-shaped body is [`HttpError::Fatal`]. Reads are retried once on a retryable
//! failure, writes never; a 429 is returned as [`HttpError::RateLimited`] with
//! `Retry-After` for the caller to honour. This module makes no pipeline decisions.
//!
//! Work-item paths: CE v1.1.0+ routes `.../work-items/...` and the older
//! `.../issues/...` to the same views; v1.0.x and older have only `/issues/`. The client
//! asks `work-items` first; when that answers 404 and the same call on `/issues/` does
//! not, the workspace is an older Plane and every later call of this client (and its
//! clones) goes to `/issues/` directly. A 404 on both is the item's own 404.

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;

use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::Method;
use serde::Deserialize;
use url::Url;

use crate::adapters::bounds::PassBounds;
use crate::adapters::http::{self, HttpError};
use crate::adapters::rest::{self, Answer};
use crate::config::{Config, ConfigError, Secret};
use crate::core::doctor::WorkItemPaths;
use crate::core::priority::Priority;

/// The page size every list call asks for (works on CE and Cloud, see plane.md §4.2).
pub const PER_PAGE: u32 = 100;

/// The page size of a work-item listing: CE's maximum on every version from v0.23 to
/// v1.3 (`BasePaginator`: above it, 400). With only [`LISTED_FIELDS`] asked for, a
/// page of 1,000 items is ~300 KB, and a listing of 100,000 items takes 100 requests
/// of Plane's 60 a minute instead of 1,000 at [`PER_PAGE`].
pub const LISTED_PER_PAGE: u32 = 1000;

/// The keys of a work item a listing asks for (`fields=`): the ones [`WorkItem`] is read
/// from. Plane's `BaseSerializer` keeps only the keys named, on every CE version from
/// v0.23 to v1.3 (`id` only when named, `state` expanded only when named too): a
/// listing page then carries no description, dates, assignees or labels, which orch
/// never reads.
pub const LISTED_FIELDS: &str = "id,name,sequence_id,project,state,updated_at,priority";

/// A Plane state (`StateSerializer`, or the `{id, name, color, group}` expansion): the
/// core's own type, deserialised directly.
pub use crate::core::intake::PlaneState;

/// A work item, with its state id and, when `expand=state` was asked, the state itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    /// The work item id (UUID).
    pub id: String,
    /// Its title.
    pub name: String,
    /// The number in `PROJ-42`.
    pub sequence_id: u64,
    /// The state id; `None` only when the item has no state. Shared, as `state` is.
    pub state_id: Option<Arc<str>>,
    /// The expanded state, when the answer carried it: shared by the items of a page in
    /// the same state (a page of 1,000 items holds a project's few states once each).
    pub state: Option<Arc<PlaneState>>,
    /// Its `updated_at` (the newest update this listing shows; `Missing` or
    /// `Unparseable` when the time cannot be told).
    pub updated_at: crate::core::intake::WorkItemTime,
    /// Its priority; `none` when the answer had none or an unknown one (logged as a
    /// warning when read).
    pub priority: Priority,
}

/// A work item as read, its scalars borrowed from the answer where they need no
/// unescaping: only what the item keeps is copied out.
#[derive(Deserialize)]
struct RawWorkItem<'a> {
    id: String,
    name: String,
    sequence_id: u64,
    /// Required, as it always was (an item without it is not what the listing asked
    /// for), but not kept: a listing asks for one project's items.
    #[serde(borrow, rename = "project")]
    _project: Cow<'a, str>,
    #[serde(default, borrow)]
    state: RawState<'a>,
    #[serde(default, borrow)]
    updated_at: RawScalar<'a>,
    #[serde(default, borrow)]
    priority: RawScalar<'a>,
}

/// A scalar field read without building a JSON tree for the usual case: a string is
/// kept as it is, `null` (or an absent field) as `Null`, anything else whole for the
/// warning that names it. A listing page of 100 items would otherwise build a
/// `serde_json::Value` per field and item.
#[derive(Default)]
enum RawScalar<'a> {
    #[default]
    Null,
    /// Borrowed from the answer unless it had escapes.
    Str(Cow<'a, str>),
    Other(serde_json::Value),
}

impl RawScalar<'_> {
    /// The value as `serde_json` would have read it (`None` for `null` or absent).
    fn into_value(self) -> Option<serde_json::Value> {
        match self {
            RawScalar::Null => None,
            RawScalar::Str(s) => Some(serde_json::Value::String(s.into_owned())),
            RawScalar::Other(v) => Some(v),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawScalar<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawScalar<'a>, D::Error> {
        use serde::de::{self, MapAccess, SeqAccess, Visitor};
        use serde_json::Value;
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawScalar<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawScalar<'a>, E> {
                Ok(RawScalar::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<RawScalar<'a>, E> {
                Ok(RawScalar::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<RawScalar<'a>, D::Error> {
                d.deserialize_any(V(std::marker::PhantomData))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<RawScalar<'a>, E> {
                Ok(RawScalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawScalar<'a>, E> {
                Ok(RawScalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawScalar<'a>, E> {
                Ok(RawScalar::Str(Cow::Owned(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawScalar<'a>, E> {
                Ok(RawScalar::Other(Value::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawScalar<'a>, E> {
                Ok(RawScalar::Other(Value::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawScalar<'a>, E> {
                Ok(RawScalar::Other(Value::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawScalar<'a>, E> {
                Ok(RawScalar::Other(Value::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawScalar<'a>, A::Error> {
                let v = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(RawScalar::Other(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawScalar<'a>, A::Error> {
                let v = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawScalar::Other(v))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A work item's `state` as read: an id, an expanded object (only the keys
/// [`PlaneState`] reads are kept, borrowed from the answer; the rest are skipped without
/// building a JSON tree for them, which a listing page of 1,000 items would otherwise
/// do 1,000 times), or anything else (kept whole for the error).
#[derive(Default)]
enum RawState<'a> {
    #[default]
    Null,
    Id(Cow<'a, str>),
    /// `id`, `name` and `group` all strings (every well-formed answer): read without
    /// a JSON tree or a copy.
    State([Cow<'a, str>; 3]),
    Object(serde_json::Map<String, serde_json::Value>),
    Other(serde_json::Value),
}

impl<'de: 'a, 'a> Deserialize<'de> for RawState<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawState<'a>, D::Error> {
        use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
        use serde_json::Value;
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawState<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a state id or object")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawState<'a>, E> {
                Ok(RawState::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<RawState<'a>, E> {
                Ok(RawState::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<RawState<'a>, D::Error> {
                d.deserialize_any(V(std::marker::PhantomData))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<RawState<'a>, E> {
                Ok(RawState::Id(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawState<'a>, E> {
                Ok(RawState::Id(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawState<'a>, E> {
                Ok(RawState::Id(Cow::Owned(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawState<'a>, E> {
                Ok(RawState::Other(Value::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawState<'a>, E> {
                Ok(RawState::Other(Value::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawState<'a>, E> {
                Ok(RawState::Other(Value::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawState<'a>, E> {
                Ok(RawState::Other(Value::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawState<'a>, A::Error> {
                let v = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(RawState::Other(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawState<'a>, A::Error> {
                // The three kept keys, in the order of `FIELDS` (the last of a repeated
                // key wins, as in a JSON object read whole).
                const FIELDS: [&str; 3] = ["id", "name", "group"];
                let mut kept: [Option<RawScalar<'a>>; 3] = [None, None, None];
                let mut keys = 0usize;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    keys += 1;
                    match FIELDS.iter().position(|f| *f == key.as_ref()) {
                        Some(i) => kept[i] = Some(map.next_value()?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                if keys == 0 {
                    // How Plane expands a work item without a state (`StateLiteSerializer`
                    // of nothing, on every CE version): no state, as `null`.
                    return Ok(RawState::Null);
                }
                match kept {
                    [Some(RawScalar::Str(id)), Some(RawScalar::Str(name)), Some(RawScalar::Str(group))] => {
                        Ok(RawState::State([id, name, group]))
                    }
                    // Anything else is read as a JSON object, for `PlaneState`'s own
                    // error (a `null` kept as `null`, an absent key left out).
                    kept => {
                        let mut object = serde_json::Map::new();
                        for (field, value) in FIELDS.iter().zip(kept) {
                            if let Some(v) = value {
                                let v = v.into_value().unwrap_or(Value::Null);
                                object.insert((*field).to_string(), v);
                            }
                        }
                        Ok(RawState::Object(object))
                    }
                }
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// States shared per page at most ([`PageStates`]).
const MAX_PAGE_STATES: usize = 64;

/// The expanded states of one page, each held once and shared by the page's items in
/// it. Past [`MAX_PAGE_STATES`] (a Plane answering nonsense) each item keeps its own
/// state, so the search never grows with the page.
#[derive(Default)]
struct PageStates(Vec<(Arc<str>, Arc<PlaneState>)>);

impl PageStates {
    /// The state, and its id, as the page's items in it share them.
    fn share(&mut self, [id, name, group]: [Cow<'_, str>; 3]) -> (Arc<str>, Arc<PlaneState>) {
        if let Some((i, s)) = self
            .0
            .iter()
            .find(|(_, s)| s.id == *id && s.name == *name && s.group == *group)
        {
            return (Arc::clone(i), Arc::clone(s));
        }
        let shared = (
            Arc::from(id.as_ref()),
            Arc::new(PlaneState {
                id: id.into_owned(),
                name: name.into_owned(),
                group: group.into_owned(),
            }),
        );
        if self.0.len() < MAX_PAGE_STATES {
            self.0.push((Arc::clone(&shared.0), Arc::clone(&shared.1)));
        }
        shared
    }
}

impl WorkItem {
    /// The item `raw` reads as, its expanded state shared through `states`.
    fn from_raw(raw: RawWorkItem<'_>, states: &mut PageStates) -> Result<WorkItem, String> {
        let (state_id, state) = match raw.state {
            RawState::Null => (None, None),
            RawState::Id(id) => (Some(Arc::from(id.as_ref())), None),
            RawState::State(s) => {
                let (id, state) = states.share(s);
                (Some(id), Some(state))
            }
            RawState::Object(v) => {
                let s: PlaneState = serde_json::from_value(serde_json::Value::Object(v))
                    .map_err(|e| format!("work item {}: state: {e}", raw.id))?;
                (Some(Arc::from(s.id.as_str())), Some(Arc::new(s)))
            }
            RawState::Other(other) => {
                return Err(format!(
                    "work item {}: state is neither an id nor an object: {other}",
                    raw.id
                ))
            }
        };
        // One of the five strings reads without a warning (nothing to name the item
        // for); anything else as `Priority::read` says.
        let known = match &raw.priority {
            RawScalar::Str(s) => s.parse::<Priority>().ok(),
            _ => None,
        };
        let priority = match known {
            Some(p) => p,
            None => {
                let other = raw.priority;
                let (priority, warning) = Priority::read(
                    other.into_value().as_ref(),
                    &format!("work item {}", raw.id),
                );
                if let Some(w) = warning {
                    log::warn!("{w}");
                }
                priority
            }
        };
        let updated_at = match raw.updated_at {
            RawScalar::Str(s) => crate::core::intake::WorkItemTime::parse(&s),
            other => crate::core::intake::WorkItemTime::read(other.into_value().as_ref()),
        };
        Ok(WorkItem {
            id: raw.id,
            name: raw.name,
            sequence_id: raw.sequence_id,
            state_id,
            state,
            updated_at,
            priority,
        })
    }
}

impl TryFrom<RawWorkItem<'_>> for WorkItem {
    type Error = String;

    fn try_from(raw: RawWorkItem<'_>) -> Result<WorkItem, String> {
        WorkItem::from_raw(raw, &mut PageStates::default())
    }
}

/// One page of work items and what the caller needs to go on (or stop early).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItemPage {
    /// The items of this page.
    pub items: Vec<WorkItem>,
    /// The cursor of the next page; `None` on the last page.
    pub next_cursor: Option<String>,
    /// `X-RateLimit-Remaining` of this answer, when Plane sent it.
    pub rate_limit_remaining: Option<u32>,
}

/// What `orch doctor` read of a project's states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatesProbe {
    /// The HTTP status.
    pub status: u16,
    /// `X-RateLimit-Remaining`, when sent.
    pub rate_limit_remaining: Option<u32>,
    /// The states (first page), on a 200.
    pub states: Option<Vec<PlaneState>>,
}

/// A comment to post; `external_source` + `external_id` make posting idempotent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NewComment {
    /// The comment as HTML.
    pub comment_html: String,
    /// Who made it, e.g. `orch`.
    pub external_source: String,
    /// A key derived from our own event, e.g. `ENG-42:analysis:1`.
    pub external_id: String,
}

/// What posting a comment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommentOutcome {
    /// 201: the comment was created with this id.
    Created {
        /// The new comment's id.
        id: String,
    },
    /// 409: a comment with this external source and id already exists (success).
    AlreadyExists {
        /// The existing comment's id, when Plane said.
        id: Option<String>,
    },
}

#[derive(Deserialize)]
struct Envelope<T> {
    results: Vec<T>,
    #[serde(default)]
    next_cursor: Option<String>,
    #[serde(default)]
    next_page_results: bool,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<String>,
}

/// The work-item path family is not known yet.
const FAMILY_UNKNOWN: u8 = 0;
/// `/work-items/` answered (CE v1.1.0+).
const FAMILY_WORK_ITEMS: u8 = 1;
/// Only `/issues/` answers (CE v1.0.x and older).
const FAMILY_ISSUES: u8 = 2;

/// A Plane API v1 client for one workspace.
#[derive(Debug, Clone)]
pub struct PlaneClient {
    http: Client,
    /// A whole-call timeout replacing the client's (see `with_timeout`).
    timeout: Option<Duration>,
    /// The pass's page cap and deadline (see `with_bounds`), shared by clones.
    bounds: Arc<PassBounds>,
    /// `ORCH_PLANE_URL` + `/api/v1/workspaces/{slug}`.
    base: Url,
    api_key: Secret,
    /// Which work-item path family this Plane answers (`FAMILY_*`), shared by clones.
    family: Arc<AtomicU8>,
    /// `X-RateLimit-Remaining` of the last answer that carried it (`NO_BUDGET` before
    /// one did), shared by clones: the pass records it for the metrics.
    budget: Arc<AtomicI64>,
}

/// [`PlaneClient::budget`] before any answer carried `X-RateLimit-Remaining`.
const NO_BUDGET: i64 = -1;

impl PlaneClient {
    /// Builds the client from `ORCH_PLANE_URL`, `ORCH_PLANE_API_KEY`, the pipeline's
    /// `plane.workspace` and the HTTP timeouts.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first missing setting, or the HTTP client's
    /// construction error.
    pub fn from_config(config: &Config) -> anyhow::Result<PlaneClient> {
        let s = &config.settings;
        let url = ConfigError::require(&s.plane_url, "ORCH_PLANE_URL", "required to call Plane")?;
        let key = ConfigError::require(
            &s.plane_api_key,
            "ORCH_PLANE_API_KEY",
            "required to call Plane",
        )?;
        let workspace = config.pipeline.plane_workspace.clone().ok_or_else(|| {
            ConfigError::new(
                "plane.workspace",
                "required to call Plane (the workspace slug)",
            )
        })?;
        Ok(PlaneClient::new(http::client(s)?, &url, key, &workspace))
    }

    /// Builds the client from its parts.
    pub fn new(http: Client, plane_url: &Url, api_key: Secret, workspace: &str) -> PlaneClient {
        PlaneClient {
            http,
            timeout: None,
            bounds: Arc::new(PassBounds::default()),
            base: rest::url(plane_url, &["api", "v1", "workspaces", workspace], false),
            api_key,
            family: Arc::new(AtomicU8::new(FAMILY_UNKNOWN)),
            budget: Arc::new(AtomicI64::new(NO_BUDGET)),
        }
    }

    /// `X-RateLimit-Remaining` of the last answer this client (or a clone) read that
    /// carried it; `None` before one did.
    pub fn last_budget(&self) -> Option<u32> {
        u32::try_from(self.budget.load(Ordering::Relaxed)).ok()
    }

    /// Notes the answer's `X-RateLimit-Remaining`, when it has one, and passes it on.
    fn noted(&self, answer: Result<Answer, HttpError>) -> Result<Answer, HttpError> {
        match &answer {
            Ok(a) => {
                if let Some(n) = remaining(a) {
                    self.budget.store(i64::from(n), Ordering::Relaxed);
                }
            }
            // A 429 is the budget spent, whatever headers came with it.
            Err(HttpError::RateLimited { .. }) => self.budget.store(0, Ordering::Relaxed),
            Err(_) => {}
        }
        answer
    }

    rest::per_call_timeout!(PlaneClient);

    /// Sends a work-item call built by `send` from its URL (`projects/{project}/` +
    /// the family + `rest`), on the path family this Plane answers, and returns the
    /// answer whatever its status. See the module documentation.
    fn on_work_items(
        &self,
        project_id: &str,
        rest: &[&str],
        send: impl Fn(Url) -> Result<Answer, HttpError>,
    ) -> Result<Answer, HttpError> {
        let url = |family: &str| {
            let mut segs = vec!["projects", project_id, family];
            segs.extend_from_slice(rest);
            self.url(&segs)
        };
        let send = |u: Url| self.noted(send(u));
        let known = self.family.load(Ordering::Relaxed);
        if known == FAMILY_ISSUES {
            return send(url("issues"));
        }
        let first = send(url("work-items"))?;
        if first.status != 404 {
            if known == FAMILY_UNKNOWN {
                self.family.store(FAMILY_WORK_ITEMS, Ordering::Relaxed);
            }
            return Ok(first);
        }
        if known == FAMILY_WORK_ITEMS {
            return Ok(first);
        }
        let second = send(url("issues"))?;
        if second.status != 404 {
            log::info!(
                "plane: no work-items paths (Plane CE v1.0.x or older): using /issues/ from now on"
            );
            self.family.store(FAMILY_ISSUES, Ordering::Relaxed);
            return Ok(second);
        }
        Ok(first)
    }

    /// A work-item GET: 200 expected, read retries as [`rest::get`].
    fn get_work_items(
        &self,
        project_id: &str,
        rest: &[&str],
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Answer, HttpError> {
        self.on_work_items(project_id, rest, |url| {
            self.get(&url, query, &[200, 404], what)
        })?
        .expect(&[200], what)
    }

    /// A work-item write (sent once, never retried), answered whatever its status. A
    /// 404 wrote nothing, so asking the other path family after one is safe.
    fn write_work_items(
        &self,
        method: Method,
        project_id: &str,
        rest: &[&str],
        body: &serde_json::Value,
        what: &str,
    ) -> Result<Answer, HttpError> {
        self.on_work_items(project_id, rest, |url| {
            let req = self
                .timed(self.http.request(method.clone(), url))
                .header("X-API-Key", self.api_key.expose())
                .json(body);
            rest::send(req, what)
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        rest::url(&self.base, segments, true)
    }

    fn authorised(&self, req: RequestBuilder) -> RequestBuilder {
        req.header("X-API-Key", self.api_key.expose())
    }

    /// Lists every state of a project (following the pages), in Plane's order.
    ///
    /// # Errors
    /// The call's [`HttpError`] class; a wrong-shaped answer or a cursor loop is fatal.
    pub fn list_states(&self, project_id: &str) -> Result<Vec<PlaneState>, HttpError> {
        let what = format!("plane list states of project {project_id}");
        let url = self.url(&["projects", project_id, "states"]);
        let per_page = PER_PAGE.to_string();
        let mut states = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..self.bounds.max_pages {
            let mut query = vec![("per_page", per_page.as_str())];
            if let Some(c) = &cursor {
                query.push(("cursor", c.as_str()));
            }
            let page: Envelope<PlaneState> = self
                .noted(self.get(&url, &query, &[200], &what))?
                .parse(&what)?;
            states.extend(page.results);
            match next(
                cursor.as_deref(),
                page.next_page_results,
                page.next_cursor,
                &what,
            )? {
                Some(c) => cursor = Some(c),
                None => return Ok(states),
            }
        }
        Err(self.page_cap_hit(&what))
    }

    /// The page cap's maximum (`ORCH_LIST_MAX_PAGES`), for a caller that follows the
    /// pages itself.
    pub fn max_pages(&self) -> usize {
        self.bounds.max_pages
    }

    /// Notes that the listing `what` reached the page cap and returns its error.
    pub fn page_cap_hit(&self, what: &str) -> HttpError {
        self.bounds.page_cap_hit(what)
    }

    /// `orch doctor`'s read of a project's states (first page): the answer's status
    /// whatever it is, its `X-RateLimit-Remaining`, and the states on a 200. `Err` only
    /// when there was no answer (or a 200 of the wrong shape).
    ///
    /// # Errors
    /// [`HttpError::Retryable`] without an answer; a wrong-shaped 200 is fatal.
    pub fn probe_states(&self, project_id: &str) -> Result<StatesProbe, HttpError> {
        let what = format!("plane list states of project {project_id}");
        let url = self.url(&["projects", project_id, "states"]);
        let per_page = PER_PAGE.to_string();
        let req = self
            .timed(self.http.get(url))
            .query(&[("per_page", per_page.as_str())])
            .header("X-API-Key", self.api_key.expose())
            .header("Accept", "application/json");
        let answer = self.noted(rest::send(req, &what))?;
        let states = if answer.status == 200 {
            Some(answer.parse::<Envelope<PlaneState>>(&what)?.results)
        } else {
            None
        };
        Ok(StatesProbe {
            status: answer.status,
            rate_limit_remaining: remaining(&answer),
            states,
        })
    }

    /// `orch doctor`'s read of which work-item path family answers for a project (one
    /// item asked for): `/work-items/`, only `/issues/` (Plane CE v1.0.x and older), or
    /// neither.
    ///
    /// # Errors
    /// The call's [`HttpError`] class for an answer other than 200 or 404.
    pub fn probe_work_item_paths(&self, project_id: &str) -> Result<WorkItemPaths, HttpError> {
        let what = format!("plane list work items of project {project_id}");
        let answer = self.on_work_items(project_id, &[], |url| {
            self.get(&url, &[("per_page", "1")], &[200, 404], &what)
        })?;
        if answer.status == 404 {
            return Ok(WorkItemPaths::Neither);
        }
        Ok(if self.family.load(Ordering::Relaxed) == FAMILY_ISSUES {
            WorkItemPaths::IssuesOnly
        } else {
            WorkItemPaths::WorkItems
        })
    }

    /// Returns one work item with its state expanded.
    ///
    /// # Errors
    /// The call's [`HttpError`] class (404 is fatal); a wrong-shaped answer is fatal.
    pub fn get_work_item(&self, project_id: &str, id: &str) -> Result<WorkItem, HttpError> {
        let what = format!("plane get work item {id}");
        let answer = self.get_work_items(project_id, &[id], &[("expand", "state")], &what)?;
        let raw: RawWorkItem = answer.parse(&what)?;
        WorkItem::try_from(raw).map_err(|e| HttpError::Fatal(format!("{what}: {e}")))
    }

    /// Returns one page of a project's work items ([`LISTED_PER_PAGE`], `expand=state`,
    /// only [`LISTED_FIELDS`]), starting at `cursor` (`None` for the first page).
    ///
    /// # Errors
    /// The call's [`HttpError`] class; a wrong-shaped answer is fatal.
    pub fn list_work_items_page(
        &self,
        project_id: &str,
        cursor: Option<&str>,
    ) -> Result<WorkItemPage, HttpError> {
        let what = format!("plane list work items of project {project_id}");
        let per_page = LISTED_PER_PAGE.to_string();
        let mut query = vec![
            ("per_page", per_page.as_str()),
            ("expand", "state"),
            ("fields", LISTED_FIELDS),
        ];
        if let Some(c) = cursor {
            query.push(("cursor", c));
        }
        let answer = self.get_work_items(project_id, &[], &query, &what)?;
        let page: Envelope<RawWorkItem> = answer.parse(&what)?;
        let mut states = PageStates::default();
        let items = page
            .results
            .into_iter()
            .map(|raw| WorkItem::from_raw(raw, &mut states))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HttpError::Fatal(format!("{what}: {e}")))?;
        Ok(WorkItemPage {
            items,
            next_cursor: next(cursor, page.next_page_results, page.next_cursor, &what)?,
            rate_limit_remaining: remaining(&answer),
        })
    }

    /// Moves a work item to `state_id` (`PATCH {"state": id}`); returns the item as
    /// Plane answered it (state not expanded). Never retried.
    ///
    /// # Errors
    /// The call's [`HttpError`] class (a state of another project is a fatal 400).
    pub fn set_state(
        &self,
        project_id: &str,
        work_item_id: &str,
        state_id: &str,
    ) -> Result<WorkItem, HttpError> {
        let what = format!("plane set state of work item {work_item_id}");
        let body = serde_json::json!({ "state": state_id });
        let answer = self
            .write_work_items(Method::PATCH, project_id, &[work_item_id], &body, &what)?
            .expect(&[200], &what)?;
        let raw: RawWorkItem = answer.parse(&what)?;
        WorkItem::try_from(raw).map_err(|e| HttpError::Fatal(format!("{what}: {e}")))
    }

    /// Posts a comment; a 409 (same external source and id already posted) counts as
    /// success. Never retried: after a lost answer, posting again is safe because of
    /// the 409.
    ///
    /// # Errors
    /// The call's [`HttpError`] class; a wrong-shaped 201 answer is fatal.
    pub fn create_comment(
        &self,
        project_id: &str,
        work_item_id: &str,
        comment: &NewComment,
    ) -> Result<CommentOutcome, HttpError> {
        let what = format!("plane comment on work item {work_item_id}");
        let body = serde_json::json!({
            "comment_html": comment.comment_html,
            "access": "INTERNAL",
            "external_source": comment.external_source,
            "external_id": comment.external_id,
        });
        let rest = [work_item_id, "comments"];
        let answer = self
            .write_work_items(Method::POST, project_id, &rest, &body, &what)?
            .expect(&[201, 409], &what)?;
        if answer.status == 409 {
            let id = answer.parse::<IdOnly>(&what).ok().and_then(|i| i.id);
            return Ok(CommentOutcome::AlreadyExists { id });
        }
        let id: IdOnly = answer.parse(&what)?;
        match id.id {
            Some(id) => Ok(CommentOutcome::Created { id }),
            None => Err(HttpError::Fatal(format!("{what}: created but no id"))),
        }
    }
}

/// An answer's `X-RateLimit-Remaining`, when it carries a number there.
fn remaining(answer: &Answer) -> Option<u32> {
    answer
        .header("x-ratelimit-remaining")
        .and_then(|v| v.trim().parse().ok())
}

/// Returns the next cursor to follow, refusing a cursor that does not move.
fn next(
    current: Option<&str>,
    more: bool,
    next_cursor: Option<String>,
    what: &str,
) -> Result<Option<String>, HttpError> {
    if !more {
        return Ok(None);
    }
    match next_cursor {
        Some(c) if !c.is_empty() && Some(c.as_str()) != current => Ok(Some(c)),
        Some(c) => Err(HttpError::Fatal(format!(
            "{what}: next_page_results without a new cursor ({c:?})"
        ))),
        None => Err(HttpError::Fatal(format!(
            "{what}: next_page_results without next_cursor"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(state: serde_json::Value) -> Result<WorkItem, String> {
        let text = serde_json::json!({
            "id": "i", "name": "n", "sequence_id": 4, "project": "p", "state": state,
            "unknown_field": [1, 2]
        })
        .to_string();
        let raw: RawWorkItem = serde_json::from_str(&text).unwrap();
        WorkItem::try_from(raw)
    }

    #[test]
    fn work_item_state_comes_as_id_object_or_null() {
        let a = item(serde_json::json!("s1")).unwrap();
        assert_eq!((a.state_id.as_deref(), a.state), (Some("s1"), None));
        let b = item(
            serde_json::json!({"id": "s2", "name": "Done", "color": "#fff", "group": "completed"}),
        )
        .unwrap();
        assert_eq!(b.state_id.as_deref(), Some("s2"));
        assert_eq!(b.state.unwrap().group, "completed");
        let c = item(serde_json::Value::Null).unwrap();
        assert_eq!((c.state_id, c.state), (None, None));
        assert!(item(serde_json::json!(7)).is_err());
        assert!(item(serde_json::json!({"id": "s"})).is_err());
    }

    #[test]
    fn state_read_from_text_keeps_its_answers_and_errors() {
        let parse = |state: &str| {
            let text = format!(
                r#"{{"id":"i","name":"n","sequence_id":4,"project":"p","state":{state},"x":{{"y":[1]}}}}"#
            );
            WorkItem::try_from(serde_json::from_str::<RawWorkItem>(&text).unwrap())
        };
        let full = parse(r##"{"color":"#fff","id":"s2","extra":{"a":[1,{"b":2}]},"name":"Done","group":"completed"}"##)
            .unwrap();
        let want = PlaneState {
            id: "s2".into(),
            name: "Done".into(),
            group: "completed".into(),
        };
        assert_eq!(
            (full.state_id.as_deref(), full.state.as_deref()),
            (Some("s2"), Some(&want))
        );
        let escaped = parse(r#"{"\u0069d":"s3","name":"N","group":"started"}"#).unwrap();
        assert_eq!(escaped.state_id.as_deref(), Some("s3"));
        assert_eq!(parse(r#""s1""#).unwrap().state_id.as_deref(), Some("s1"));
        assert_eq!(
            parse(r#""s\u0031""#).unwrap().state_id.as_deref(),
            Some("s1"),
            "a bare id with an escape is copied, not borrowed"
        );
        // The project is required, as any key `fields=` names, even though not kept.
        let text = r#"{"id":"i","name":"n","sequence_id":4,"state":"s1"}"#;
        assert!(serde_json::from_str::<RawWorkItem>(text).is_err());
        let text = r#"{"id":"i","name":"n","sequence_id":4,"project":"p\u0031","state":"s1"}"#;
        assert!(serde_json::from_str::<RawWorkItem>(text).is_ok());
        assert_eq!(parse("null").unwrap().state_id, None);
        // Plane's expansion of a missing state is an empty object, not `null`.
        let empty = parse("{}").unwrap();
        assert_eq!((empty.state_id, empty.state), (None, None));
        assert_eq!(
            parse(r##"{"color":"#fff"}"##).unwrap_err(),
            "work item i: state: missing field `id`",
            "an object with keys but no id is still an error"
        );
        for (bad, want) in [
            ("7", "work item i: state is neither an id nor an object: 7"),
            (
                "true",
                "work item i: state is neither an id nor an object: true",
            ),
            (
                r#"["a",1]"#,
                r#"work item i: state is neither an id nor an object: ["a",1]"#,
            ),
            (
                r#"{"id":"s","name":"N"}"#,
                "work item i: state: missing field `group`",
            ),
            (
                r#"{"id":"s","name":"N","group":3}"#,
                "work item i: state: invalid type: integer `3`, expected a string",
            ),
        ] {
            assert_eq!(parse(bad).unwrap_err(), want, "{bad}");
        }
        let none: RawWorkItem =
            serde_json::from_str(r#"{"id":"i","name":"n","sequence_id":4,"project":"p"}"#).unwrap();
        assert_eq!(WorkItem::try_from(none).unwrap().state, None);
    }

    #[test]
    fn a_pages_items_in_one_state_share_it() {
        let mut states = PageStates::default();
        let read = |text: &str, states: &mut PageStates| {
            let raw: RawWorkItem = serde_json::from_str(text).unwrap();
            WorkItem::from_raw(raw, states).unwrap()
        };
        let at = |id: &str, state: &str| {
            format!(r#"{{"id":"{id}","name":"n","sequence_id":1,"project":"p","state":{state}}}"#)
        };
        let done = r#"{"id":"s1","name":"Done","group":"completed"}"#;
        let a = read(&at("a", done), &mut states);
        // The same state written with an escape is still the same state.
        let b = read(
            &at("b", r#"{"id":"s1","name":"D\u006fne","group":"completed"}"#),
            &mut states,
        );
        let c = read(
            &at("c", r#"{"id":"s1","name":"Done!","group":"completed"}"#),
            &mut states,
        );
        assert!(Arc::ptr_eq(
            a.state_id.as_ref().unwrap(),
            b.state_id.as_ref().unwrap()
        ));
        let (a, b, c) = (a.state.unwrap(), b.state.unwrap(), c.state.unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one state, held once");
        assert!(!Arc::ptr_eq(&a, &c), "another name is another state");
        assert_eq!((c.id.as_str(), c.name.as_str()), ("s1", "Done!"));
        // Past the cap each item keeps its own, read as before.
        for i in 0..MAX_PAGE_STATES + 2 {
            let item = read(
                &at(
                    "x",
                    &format!(r#"{{"id":"s{i}","name":"N","group":"started"}}"#),
                ),
                &mut states,
            );
            assert_eq!(item.state_id.as_deref(), Some(format!("s{i}").as_str()));
        }
        assert_eq!(states.0.len(), MAX_PAGE_STATES);
    }

    #[test]
    fn priority_and_updated_at_read_from_text_as_from_a_json_tree() {
        let read = |fields: &str| {
            let text = format!(r#"{{"id":"i","name":"n","sequence_id":4,"project":"p"{fields}}}"#);
            WorkItem::try_from(serde_json::from_str::<RawWorkItem>(&text).unwrap()).unwrap()
        };
        for field in [
            r#""high""#,
            r#""none""#,
            r#""Urgent""#,
            r#""hi\u0067h""#,
            r#""2026-05-01T09:00:00.100000Z""#,
            r#"" 2026-05-01T09:00:00Z ""#,
            r#""2026-05-01T09:00:00\u005a""#,
            r#""yesterday""#,
            "null",
            "3",
            "-3",
            "1.5",
            "true",
            r#"["x"]"#,
            r#"{"a":1}"#,
        ] {
            let item = read(&format!(r#","priority":{field},"updated_at":{field}"#));
            let tree: serde_json::Value = serde_json::from_str(field).unwrap();
            let tree = Some(&tree).filter(|v| !v.is_null());
            assert_eq!(item.priority, Priority::read(tree, "x").0, "{field}");
            assert_eq!(
                item.updated_at,
                crate::core::intake::WorkItemTime::read(tree),
                "{field}"
            );
        }
        let absent = read("");
        assert_eq!(absent.priority, Priority::None);
        assert_eq!(
            absent.updated_at,
            crate::core::intake::WorkItemTime::Missing
        );
        let escaped = read(r#","state":{"id":"s","name":"Do\u006ee","group":"completed"}"#);
        assert_eq!(escaped.state.unwrap().name, "Done");
        let null_name = WorkItem::try_from(
            serde_json::from_str::<RawWorkItem>(
                r#"{"id":"i","name":"n","sequence_id":4,"project":"p","state":{"id":"s","name":null,"group":"g"}}"#,
            )
            .unwrap(),
        );
        assert_eq!(
            null_name.unwrap_err(),
            "work item i: state: invalid type: null, expected a string"
        );
    }

    #[test]
    fn cursors_must_move() {
        assert_eq!(next(None, false, Some("1:1:0".into()), "x"), Ok(None));
        assert_eq!(
            next(None, true, Some("100:1:0".into()), "x"),
            Ok(Some("100:1:0".into()))
        );
        assert!(next(Some("100:1:0"), true, Some("100:1:0".into()), "x").is_err());
        assert!(next(None, true, None, "x").is_err());
        assert!(next(None, true, Some(String::new()), "x").is_err());
    }
}
