//! Plane webhook intake: signature verification, what a delivery is, and what the
//! pipeline does about it. Pure: no I/O, no clock, no database.
//!
//! The facts it encodes are in `shared/reference/plane.md` §1-3: Plane signs the raw
//! body with lowercase hex HMAC-SHA256; a state change is `activity.field` `state_id`
//! (web UI) or `state` (API); older servers send a second, name-form delivery with the
//! ids in `old_identifier`/`new_identifier`; `data.state` is an object or an id. State
//! ids are only ever resolved per project (the caller's cache), never here.

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::core::plane::{StateMatch, StateMeanings};
use crate::core::priority::Priority;
use crate::core::stage::{self, Stage};

/// The HTTP status and reason a delivery is refused with before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400 malformed, 401 signature, 422 not a Plane delivery.
    pub status: u16,
    /// Why.
    pub reason: String,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// Checks `X-Plane-Signature` against the raw body in constant time.
///
/// The header must be exactly 64 lowercase hex digits: Plane sends `hexdigest()`, so
/// anything else (upper case, a `sha256=` prefix, whitespace) is not from Plane.
///
/// # Errors
/// A 401 [`Refusal`] saying what is wrong (never echoing the secret).
pub fn verify_signature(secret: &str, body: &[u8], header: Option<&str>) -> Result<(), Refusal> {
    let Some(sig) = header else {
        return Err(refuse(401, "missing X-Plane-Signature"));
    };
    if sig.len() != 64
        || !sig
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(refuse(
            401,
            "X-Plane-Signature is not 64 lowercase hex digits",
        ));
    }
    let expected = hex::decode(sig).map_err(|_| refuse(401, "X-Plane-Signature is not hex"))?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| refuse(401, "X-Plane-Signature does not match the body"))
}

/// Returns the lowercase hex HMAC-SHA256 of `body` (what Plane would send).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Returns the lowercase hex SHA-256 of the raw body: the de-duplication key (Plane's
/// retries carry a new delivery id and the same bytes).
pub fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The webhook events Plane CE sends.
pub const PLANE_EVENTS: &[&str] = &["issue", "issue_comment", "project", "cycle", "module"];

/// A delivery that passed the shape checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// `issue`, `issue_comment`, `project`, `cycle` or `module`.
    pub event: String,
    /// `created`, `updated`, `deleted` (empty when absent).
    pub action: String,
    /// The serialised object.
    pub data: Map<String, Value>,
    /// The change, when the delivery carries one.
    pub activity: Option<Map<String, Value>>,
}

/// Parses and shape-checks a delivery body (already verified).
///
/// # Errors
/// 400 when the body is not UTF-8 JSON; 422 when it is JSON but not a Plane v1
/// delivery (not an object, no known `event`, no `data` object, a state change
/// without a work item id or project).
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, Refusal> {
    let text =
        std::str::from_utf8(body).map_err(|e| refuse(400, format!("body is not UTF-8: {e}")))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| refuse(400, format!("malformed JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(refuse(
            422,
            "not a Plane delivery: the JSON is not an object",
        ));
    };
    if obj.get("version").and_then(Value::as_str) == Some("v2") {
        return Err(refuse(
            422,
            "Plane v2 webhook format is not supported: use a v1 (Community Edition) webhook",
        ));
    }
    let event = match obj.get("event") {
        Some(Value::String(e)) if PLANE_EVENTS.contains(&e.as_str()) => e.clone(),
        Some(Value::String(e)) => {
            return Err(refuse(
                422,
                format!(
                    "not a Plane delivery: unknown event type {:?}",
                    truncate(e, 60)
                ),
            ))
        }
        _ => return Err(refuse(422, "not a Plane delivery: no event")),
    };
    let Some(Value::Object(data)) = obj.remove("data") else {
        return Err(refuse(422, "not a Plane delivery: no data object"));
    };
    let action = obj
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let activity = match obj.remove("activity") {
        Some(Value::Object(a)) => Some(a),
        _ => None,
    };
    let env = Envelope {
        event,
        action,
        data,
        activity,
    };
    if env.is_state_change() {
        for key in ["id", "project"] {
            if !matches!(env.data.get(key), Some(Value::String(s)) if !s.trim().is_empty()) {
                return Err(refuse(
                    422,
                    format!("not a Plane delivery: a work item state change without data.{key}"),
                ));
            }
        }
    }
    Ok(env)
}

impl Envelope {
    /// Returns the changed field, when the delivery carries one.
    pub fn field(&self) -> Option<&str> {
        self.activity.as_ref()?.get("field")?.as_str()
    }

    /// Returns whether this is a work item's state change (`state_id` from the web UI,
    /// `state` from the API and from older servers' name-form delivery).
    pub fn is_state_change(&self) -> bool {
        self.event == "issue"
            && self.action == "updated"
            && matches!(self.field(), Some("state_id" | "state"))
    }

    fn data_str(&self, key: &str) -> Option<&str> {
        self.data.get(key)?.as_str()
    }
}

impl Envelope {
    /// Returns the work item this delivery is an update of: an `issue` delivery's
    /// `data.id` (comments, projects, cycles and modules carry other objects' times).
    pub fn work_item_id(&self) -> Option<&str> {
        if self.event != "issue" {
            return None;
        }
        self.data_str("id").filter(|s| !s.trim().is_empty())
    }

    /// Returns the work item's `data.updated_at` as the delivery carries it.
    pub fn updated_at(&self) -> WorkItemTime {
        WorkItemTime::read(self.data.get("updated_at"))
    }

    /// Returns the update this delivery tells of, when it is a work item's and its time
    /// can be told (`source` says where it was seen, e.g. `delivery 7`).
    pub fn seen_update(&self, source: &str) -> Option<SeenUpdate> {
        let id = self.work_item_id()?;
        SeenUpdate::new(id, &self.updated_at(), source)
    }
}

/// A work item's `updated_at` as a delivery or a listing carries it. Plane writes
/// ISO 8601 in UTC with `Z` and microseconds (`2026-05-19T10:15:30.482913Z`), and no
/// fraction at all when the microseconds are zero (Python's `isoformat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkItemTime {
    /// A time: microseconds since the epoch, and the text as it was written.
    At {
        /// Microseconds since the Unix epoch (finer digits are dropped).
        micros: i64,
        /// The time as written.
        text: String,
    },
    /// No `updated_at` (or `null`).
    Missing,
    /// There, but not an RFC 3339 time with an offset: what it was.
    Unparseable(String),
}

impl WorkItemTime {
    /// Reads a JSON value: a string holding an RFC 3339 time with an offset.
    pub fn read(value: Option<&Value>) -> WorkItemTime {
        match value {
            None | Some(Value::Null) => WorkItemTime::Missing,
            Some(Value::String(s)) => WorkItemTime::parse(s),
            Some(other) => WorkItemTime::Unparseable(truncate(&other.to_string(), 60)),
        }
    }

    /// Parses a string written as Plane writes `updated_at`.
    pub fn parse(s: &str) -> WorkItemTime {
        match s.trim().parse::<jiff::Timestamp>() {
            Ok(t) => WorkItemTime::At {
                micros: t.as_microsecond(),
                text: s.trim().to_string(),
            },
            Err(_) => WorkItemTime::Unparseable(truncate(s, 60)),
        }
    }
}

/// A work item update orch has seen: in a stored delivery or in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenUpdate {
    /// The work item id.
    pub work_item_id: String,
    /// Its `updated_at` in microseconds since the epoch.
    pub micros: i64,
    /// Its `updated_at` as Plane wrote it.
    pub text: String,
    /// Where it was seen (`delivery 7`, `listing`).
    pub source: String,
}

/// The one staleness rule: an update at `delivered_micros` is superseded when one
/// strictly newer is known; equal times are never stale (Plane sends one delivery per
/// changed field, all with the same time). [`freshness`] decides with it before
/// acting, and the delivery's write again inside its transaction.
pub fn is_superseded(delivered_micros: i64, newest: &SeenUpdate) -> bool {
    newest.micros > delivered_micros
}

impl SeenUpdate {
    /// The update, when its time can be told.
    pub fn new(work_item_id: &str, time: &WorkItemTime, source: &str) -> Option<SeenUpdate> {
        match time {
            WorkItemTime::At { micros, text } => Some(SeenUpdate {
                work_item_id: work_item_id.to_string(),
                micros: *micros,
                text: text.clone(),
                source: source.to_string(),
            }),
            _ => None,
        }
    }
}

/// Whether a delivery is still current against the newest update orch has seen of
/// the same work item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Nothing strictly newer is known (equal times are current: Plane sends one
    /// delivery per changed field, all with the same `updated_at`).
    Current,
    /// A strictly newer update is known: act on nothing.
    Stale {
        /// The delivery's `updated_at`.
        delivered: String,
        /// The newest known `updated_at`, and where it was seen.
        newest: String,
        /// Where the newest was seen.
        source: String,
    },
    /// The delivery's time cannot be told (missing or unparseable): it cannot be
    /// ordered, so it is treated as current (acted on, as before orch knew of order);
    /// the reason is logged.
    Unknown(String),
}

/// Decides whether a delivery of time `delivered` is stale against `newest`, the
/// newest update of the same work item seen so far (`None`: none seen).
pub fn freshness(delivered: &WorkItemTime, newest: Option<&SeenUpdate>) -> Freshness {
    match (delivered, newest) {
        (WorkItemTime::Missing, _) => {
            Freshness::Unknown("the delivery has no data.updated_at".into())
        }
        (WorkItemTime::Unparseable(s), _) => {
            Freshness::Unknown(format!("data.updated_at {s:?} is not an RFC 3339 time"))
        }
        (WorkItemTime::At { micros, text }, Some(n)) if is_superseded(*micros, n) => {
            Freshness::Stale {
                delivered: text.clone(),
                newest: n.text.clone(),
                source: n.source.clone(),
            }
        }
        (WorkItemTime::At { .. }, _) => Freshness::Current,
    }
}

/// The outcome of a stale delivery, with both times.
pub fn stale_outcome(
    work_item_id: &str,
    delivered: &str,
    newest: &str,
    source: &str,
) -> DeliveryOutcome {
    DeliveryOutcome::new(
        OutcomeKind::Stale,
        format!(
            "work item {work_item_id} updated at {delivered}, but an update at {newest} is already known ({source}): nothing done"
        ),
    )
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A Plane state as the pipeline needs it (unknown keys of Plane's answer are ignored).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlaneState {
    /// The state id (UUID).
    pub id: String,
    /// Its name, e.g. `In Progress`.
    pub name: String,
    /// Its group, e.g. `started`.
    pub group: String,
}

/// A work item's move to a new state, as read from a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The work item id.
    pub work_item_id: String,
    /// The Plane project id (`data.project`).
    pub project_id: String,
    /// The number in `PROJ-42`, when present.
    pub sequence_id: Option<i64>,
    /// The work item title (`data.name`).
    pub title: String,
    /// The new state's id.
    pub new_state_id: String,
    /// The new state as the payload describes it, when `data.state` is that same state
    /// with a name and a group (then no lookup is needed).
    pub payload_state: Option<PlaneState>,
    /// Whether this is the older servers' name-form delivery (names in
    /// `old_value`/`new_value`, ids in `old_identifier`/`new_identifier`).
    pub legacy: bool,
    /// The work item's priority (`data.priority`); `none` when missing or unknown,
    /// with the warning to log in `priority_warning`.
    pub priority: Priority,
    /// Why `priority` is `none` though the delivery said otherwise (or nothing).
    pub priority_warning: Option<String>,
}

/// What a delivery is for the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// A state change to resolve and act on.
    StateChange(StateChange),
    /// Nothing to do, with the reason.
    Ignore(String),
}

/// Returns whether `s` looks like a UUID (8-4-4-4-12 hex digits).
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Classifies a shape-checked delivery.
pub fn classify(env: &Envelope) -> Intake {
    if env.event != "issue" {
        return Intake::Ignore(format!("event {} is not a work item change", env.event));
    }
    if env.action != "updated" {
        return Intake::Ignore(format!(
            "work item {} (not a state change)",
            if env.action.is_empty() {
                "delivery without action"
            } else {
                env.action.as_str()
            }
        ));
    }
    let field = env.field().unwrap_or("");
    if !env.is_state_change() {
        return Intake::Ignore(format!(
            "other field {:?} (not a state change)",
            truncate(field, 60)
        ));
    }
    let activity = env.activity.as_ref().expect("a state change has activity");
    let text = |k: &str| activity.get(k).and_then(Value::as_str).map(str::trim);
    let new_value = text("new_value").filter(|s| !s.is_empty());
    let new_identifier = text("new_identifier").filter(|s| is_uuid(s));
    let data_state = env.data.get("state");
    let data_state_id = match data_state {
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    // The legacy form: `state` with a name in new_value and the id in new_identifier.
    let legacy = field == "state" && new_value.is_some_and(|v| !is_uuid(v));
    let new_state_id = if legacy {
        match new_identifier {
            Some(id) => id.to_string(),
            None => {
                return Intake::Ignore(format!(
                    "legacy state change to {:?} without new_identifier",
                    truncate(new_value.unwrap_or(""), 60)
                ))
            }
        }
    } else {
        match new_value.filter(|v| is_uuid(v)).or(data_state_id) {
            Some(id) => id.to_string(),
            None => return Intake::Ignore("state change without a new state id".into()),
        }
    };
    let payload_state = match data_state {
        Some(Value::Object(o)) => {
            let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
            match (s("id"), s("name"), s("group")) {
                (Some(id), Some(name), Some(group)) if id.eq_ignore_ascii_case(&new_state_id) => {
                    Some(PlaneState { id, name, group })
                }
                _ => None,
            }
        }
        _ => None,
    };
    let work_item_id = env.data_str("id").unwrap_or_default().to_string();
    let (priority, priority_warning) = Priority::read(
        env.data.get("priority"),
        &format!("work item {work_item_id}"),
    );
    Intake::StateChange(StateChange {
        work_item_id,
        project_id: env.data_str("project").unwrap_or_default().to_string(),
        sequence_id: env.data.get("sequence_id").and_then(Value::as_i64),
        title: env.data_str("name").unwrap_or_default().to_string(),
        new_state_id,
        payload_state,
        legacy,
        priority,
        priority_warning,
    })
}

/// What a Plane state means for the pipeline (configured per project).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Meaning {
    /// Start a task.
    Start,
    /// The analysis is approved: analysis → development.
    Approved,
    /// The analysis is rejected: the analyst does it again.
    Rejected,
    /// Cancel the task.
    Cancel,
    /// Waiting on people: reconcile leaves the task alone.
    Blocked,
}

impl Meaning {
    /// Returns the meaning's configuration key.
    pub fn as_str(self) -> &'static str {
        match self {
            Meaning::Start => "start",
            Meaning::Approved => "approved",
            Meaning::Rejected => "rejected",
            Meaning::Cancel => "cancel",
            Meaning::Blocked => "blocked",
        }
    }
}

fn matchers(m: &StateMeanings) -> [(Meaning, &StateMatch); 5] {
    [
        (Meaning::Start, &m.start),
        (Meaning::Approved, &m.approved),
        (Meaning::Rejected, &m.rejected),
        (Meaning::Cancel, &m.cancel),
        (Meaning::Blocked, &m.blocked),
    ]
}

/// Returns what a state means under a project's configuration.
///
/// Names (case-insensitive) are looked at first: a name match wins over a group match.
/// `Ok(None)`: the state carries no meaning.
///
/// # Errors
/// Every meaning that matches when more than one does at the same level (a
/// configuration error that `config check` reports).
pub fn meaning_of(
    meanings: &StateMeanings,
    name: &str,
    group: &str,
) -> Result<Option<Meaning>, Vec<Meaning>> {
    let name = name.trim();
    let by_name: Vec<Meaning> = matchers(meanings)
        .into_iter()
        .filter(|(_, m)| m.names.iter().any(|n| n.trim().eq_ignore_ascii_case(name)))
        .map(|(k, _)| k)
        .collect();
    let by_group: Vec<Meaning> = matchers(meanings)
        .into_iter()
        .filter(|(_, m)| m.groups.iter().any(|g| g.eq_ignore_ascii_case(group)))
        .map(|(k, _)| k)
        .collect();
    let level = if by_name.is_empty() {
        by_group
    } else {
        by_name
    };
    match level.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(level),
    }
}

/// Returns the states of a project that match two meanings (for `config check`).
pub fn ambiguous_states<'a>(
    meanings: &StateMeanings,
    states: &'a [PlaneState],
) -> Vec<(&'a PlaneState, Vec<Meaning>)> {
    states
        .iter()
        .filter_map(|s| match meaning_of(meanings, &s.name, &s.group) {
            Err(both) => Some((s, both)),
            Ok(_) => None,
        })
        .collect()
}

/// What the pipeline knows about the work item's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFacts {
    /// The task key.
    pub key: String,
    /// Its stage.
    pub stage: Stage,
    /// Whether an analyst job was ever enqueued (the start finished).
    pub has_analyst_job: bool,
    /// Whether an analyst job is queued or running now.
    pub has_live_analyst_job: bool,
}

/// What to do about a resolved state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChangeDecision {
    /// Create the task (once), its branch and its analyst job (once).
    Start,
    /// Move the task along the table.
    Move {
        /// Where the task is.
        from: Stage,
        /// Where it goes.
        to: Stage,
    },
    /// The analysis was rejected: the task stays at analysis and a fresh analyst job is
    /// queued so the analyst redoes it with the reviewer's feedback.
    RequeueAnalysis,
    /// Nothing to do, with the reason.
    NoAction(String),
}

/// Decides what a state change does, given its meaning and the task (if any).
///
/// Every branch is idempotent against the task's present state, which is also how the
/// legacy name-form second delivery is recognised: it finds its effect already done.
pub fn decide(
    meaning: Option<Meaning>,
    state_name: &str,
    legacy: bool,
    task: Option<&TaskFacts>,
) -> StateChangeDecision {
    let done_already = |why: String| {
        StateChangeDecision::NoAction(if legacy {
            format!("legacy name-form second delivery: {why}")
        } else {
            why
        })
    };
    let Some(meaning) = meaning else {
        return StateChangeDecision::NoAction(format!("unmapped state {state_name:?}"));
    };
    match (meaning, task) {
        (Meaning::Blocked, _) => StateChangeDecision::NoAction(format!(
            "state {state_name:?} means blocked: nothing to do until it moves on"
        )),
        (Meaning::Start, None) => StateChangeDecision::Start,
        (Meaning::Start, Some(t)) if t.stage == Stage::Analysis && !t.has_analyst_job => {
            StateChangeDecision::Start
        }
        (Meaning::Start, Some(t)) => {
            done_already(format!("task {} already started (at {})", t.key, t.stage))
        }
        (_, None) => StateChangeDecision::NoAction(format!(
            "state {state_name:?} means {} but the work item has no task",
            meaning.as_str()
        )),
        (Meaning::Approved, Some(t)) if t.stage == Stage::Analysis => StateChangeDecision::Move {
            from: Stage::Analysis,
            to: Stage::Development,
        },
        (Meaning::Approved, Some(t)) => {
            done_already(format!("task {} is at {}, not analysis", t.key, t.stage))
        }
        (Meaning::Rejected, Some(t)) if t.stage == Stage::Analysis => {
            if t.has_live_analyst_job {
                done_already(format!(
                    "task {} already has an analyst job queued or running",
                    t.key
                ))
            } else {
                StateChangeDecision::RequeueAnalysis
            }
        }
        (Meaning::Rejected, Some(t)) => {
            done_already(format!("task {} is at {}, not analysis", t.key, t.stage))
        }
        (Meaning::Cancel, Some(t)) if t.stage == Stage::Cancelled => {
            done_already(format!("task {} is already cancelled", t.key))
        }
        (Meaning::Cancel, Some(t)) => match stage::transition(t.stage, Stage::Cancelled) {
            Some(_) => StateChangeDecision::Move {
                from: t.stage,
                to: Stage::Cancelled,
            },
            None => StateChangeDecision::NoAction(format!(
                "task {} is at {}, which cannot be cancelled",
                t.key, t.stage
            )),
        },
    }
}

/// How a delivery ended (the `outcome` column of `deliveries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum OutcomeKind {
    /// A task was started (or its unfinished start was finished).
    Started,
    /// The task moved analysis → development.
    Approved,
    /// The analysis was rejected; the analyst job was queued again.
    Rejected,
    /// The task was cancelled.
    Cancelled,
    /// The same body was stored before: nothing done.
    Duplicate,
    /// Nothing for the pipeline to do; the detail says why.
    NoAction,
    /// A strictly newer update of the work item was already known: nothing done; the
    /// detail gives both times.
    Stale,
    /// Acting failed on every one of `ORCH_DELIVERY_MAX_ATTEMPTS` tries: no longer
    /// replayed; the detail gives the tries and the last error.
    GivenUp,
}

impl OutcomeKind {
    /// Returns the stored and printed name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Started => "started",
            OutcomeKind::Approved => "approved",
            OutcomeKind::Rejected => "rejected",
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::Duplicate => "duplicate",
            OutcomeKind::NoAction => "no pipeline action",
            OutcomeKind::Stale => "stale",
            OutcomeKind::GivenUp => "given_up",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<OutcomeKind> {
        [
            OutcomeKind::Started,
            OutcomeKind::Approved,
            OutcomeKind::Rejected,
            OutcomeKind::Cancelled,
            OutcomeKind::Duplicate,
            OutcomeKind::NoAction,
            OutcomeKind::Stale,
            OutcomeKind::GivenUp,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A delivery's outcome with its detail (what was done, or why nothing was).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryOutcome {
    /// Which outcome.
    pub kind: OutcomeKind,
    /// What was done or why nothing was.
    pub detail: String,
}

impl DeliveryOutcome {
    /// An outcome with its detail.
    pub fn new(kind: OutcomeKind, detail: impl Into<String>) -> DeliveryOutcome {
        DeliveryOutcome {
            kind,
            detail: detail.into(),
        }
    }

    /// `no pipeline action` with the reason.
    pub fn no_action(reason: impl Into<String>) -> DeliveryOutcome {
        DeliveryOutcome::new(OutcomeKind::NoAction, reason)
    }
}

impl std::fmt::Display for DeliveryOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            f.write_str(self.kind.as_str())
        } else {
            write!(f, "{}: {}", self.kind.as_str(), self.detail)
        }
    }
}

/// Returns the task key of a work item: the project's identifier and the sequence id
/// (`ORCH-65`), or the first characters of the work item id without a sequence id.
///
/// The one key rule, for every path that starts a task (a start delivery, reconcile's
/// replay, the staging round trip, `task add` without `--key`): the identifier is the
/// project's Plane identifier, else its name, kept to ASCII letters and digits and
/// upper-cased (`TASK` when nothing is left).
pub fn task_key(
    plane_identifier: Option<&str>,
    project_name: &str,
    sequence_id: Option<i64>,
    work_item_id: &str,
) -> String {
    let ident: String = plane_identifier
        .unwrap_or(project_name)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_uppercase();
    let ident = if ident.is_empty() {
        "TASK".to_string()
    } else {
        ident
    };
    match sequence_id {
        Some(n) => format!("{ident}-{n}"),
        None => {
            let short: String = work_item_id
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(8)
                .collect();
            format!("{ident}-{short}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "plane_wh_0123456789abcdef0123456789abcdef";

    fn sample(name: &str) -> Vec<u8> {
        match name {
            "webhook-issue-state-started.raw-body.json" => include_bytes!(
                "../../tests/fixtures/plane/webhook-issue-state-started.raw-body.json"
            )
            .to_vec(),
            "webhook-issue-state-started.json" => {
                include_bytes!("../../tests/fixtures/plane/webhook-issue-state-started.json")
                    .to_vec()
            }
            "webhook-issue-state-completed-via-api.json" => include_bytes!(
                "../../tests/fixtures/plane/webhook-issue-state-completed-via-api.json"
            )
            .to_vec(),
            "webhook-issue-state-legacy-activity.json" => include_bytes!(
                "../../tests/fixtures/plane/webhook-issue-state-legacy-activity.json"
            )
            .to_vec(),
            other => panic!("no sample {other}"),
        }
    }

    #[test]
    fn reference_vector_passes_and_reserialised_body_fails() {
        let body = sample("webhook-issue-state-started.raw-body.json");
        assert_eq!(body.len(), 2114);
        let sig = "d8455c46569112e8214863e9ba46e7ac12864d3590205014aefd93950034f273";
        assert_eq!(verify_signature(SECRET, &body, Some(sig)), Ok(()));
        assert_eq!(sign(SECRET, &body), sig);
        assert_eq!(
            body_sha256(&body),
            "aad0448f32ab8d8a79d421e03b37d09cf299fddb1be2e0436938fc62dfc00c20"
        );
        let value: Value = serde_json::from_slice(&body).unwrap();
        let reserialised = serde_json::to_vec(&value).unwrap();
        assert_ne!(reserialised, body);
        assert_eq!(
            verify_signature(SECRET, &reserialised, Some(sig))
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn bad_signatures_are_refused() {
        let body = b"{}";
        let good = sign(SECRET, body);
        let cases = [
            None,
            Some(String::new()),
            Some(good.to_ascii_uppercase()),
            Some(format!("sha256={good}")),
            Some(format!(" {good}")),
            Some(good[..63].to_string()),
            Some(sign(SECRET, b"{ }")),
            Some(sign("plane_wh_other", body)),
            Some("zz".repeat(32)),
        ];
        for c in cases {
            let got = verify_signature(SECRET, body, c.as_deref());
            assert_eq!(got.unwrap_err().status, 401, "{c:?}");
        }
        assert_eq!(verify_signature(SECRET, body, Some(&good)), Ok(()));
    }

    #[test]
    fn envelope_shapes() {
        let cases: &[(&[u8], u16)] = &[
            (b"\xff\xfe{}", 400),
            (b"{\"event\": ", 400),
            (b"", 400),
            (b"[1, 2]", 422),
            (b"\"issue\"", 422),
            (b"null", 422),
            (b"{\"event\": \"issue\", \"action\": \"updated\"}", 422),
            (b"{\"event\": \"issue\", \"data\": [1]}", 422),
            (b"{\"event\": \"banana\", \"data\": {}}", 422),
            (b"{\"event\": 7, \"data\": {}}", 422),
            (b"{\"data\": {}}", 422),
            (b"{\"version\": \"v2\", \"event\": \"issue\", \"data\": {}}", 422),
            (
                b"{\"event\": \"issue\", \"action\": \"updated\", \"data\": {\"id\": \"x\"}, \"activity\": {\"field\": \"state\"}}",
                422,
            ),
        ];
        for (body, status) in cases {
            let got = parse_envelope(body).unwrap_err();
            assert_eq!(
                got.status,
                *status,
                "{:?}: {}",
                String::from_utf8_lossy(body),
                got.reason
            );
        }
        let ok = parse_envelope(
            b"{\"event\": \"project\", \"action\": \"deleted\", \"data\": {\"id\": \"p\"}}",
        )
        .unwrap();
        assert_eq!(
            classify(&ok),
            Intake::Ignore("event project is not a work item change".into())
        );
    }

    #[test]
    fn web_ui_api_and_legacy_deliveries_are_state_changes() {
        let ui = parse_envelope(&sample("webhook-issue-state-started.json")).unwrap();
        let Intake::StateChange(c) = classify(&ui) else {
            panic!("state change")
        };
        assert_eq!(c.new_state_id, "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb3");
        assert_eq!(c.project_id, "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02");
        assert_eq!(c.work_item_id, "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e04");
        assert_eq!(c.sequence_id, Some(42));
        assert!(!c.legacy);
        assert_eq!(c.payload_state.as_ref().unwrap().group, "started");

        let api = parse_envelope(&sample("webhook-issue-state-completed-via-api.json")).unwrap();
        let Intake::StateChange(c) = classify(&api) else {
            panic!("state change")
        };
        assert_eq!(c.new_state_id, "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb4");
        assert!(!c.legacy);

        let legacy = parse_envelope(&sample("webhook-issue-state-legacy-activity.json")).unwrap();
        let Intake::StateChange(c) = classify(&legacy) else {
            panic!("state change")
        };
        assert_eq!(c.new_state_id, "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb3");
        assert!(c.legacy);
    }

    fn change(activity: Value, state: Value) -> Intake {
        let body = serde_json::json!({
            "event": "issue", "action": "updated",
            "data": {"id": "w", "project": "p", "name": "T", "sequence_id": 3, "state": state},
            "activity": activity,
        });
        classify(&parse_envelope(&serde_json::to_vec(&body).unwrap()).unwrap())
    }

    const A: &str = "00000000-0000-4000-8000-00000000000a";
    const B: &str = "00000000-0000-4000-8000-00000000000b";

    #[test]
    fn state_ids_come_from_activity_then_data() {
        let obj = serde_json::json!({"id": A, "name": "Doing", "group": "started"});
        // data.state as an id string.
        let Intake::StateChange(c) = change(
            serde_json::json!({"field": "state_id", "new_value": A}),
            Value::String(A.into()),
        ) else {
            panic!()
        };
        assert_eq!((c.new_state_id.as_str(), c.payload_state), (A, None));
        // data.state newer than the activity: its name is not used for the old id.
        let Intake::StateChange(c) = change(
            serde_json::json!({"field": "state", "new_value": B}),
            obj.clone(),
        ) else {
            panic!()
        };
        assert_eq!((c.new_state_id.as_str(), c.payload_state), (B, None));
        // No new_value: data.state decides.
        let Intake::StateChange(c) = change(serde_json::json!({"field": "state_id"}), obj) else {
            panic!()
        };
        assert_eq!(c.payload_state.unwrap().name, "Doing");
        // Nothing usable.
        assert!(matches!(
            change(serde_json::json!({"field": "state_id"}), Value::Null),
            Intake::Ignore(_)
        ));
        assert!(matches!(
            change(
                serde_json::json!({"field": "state", "new_value": "Doing"}),
                Value::Null
            ),
            Intake::Ignore(_)
        ));
        assert_eq!(
            change(serde_json::json!({"field": "priority"}), Value::Null),
            Intake::Ignore("other field \"priority\" (not a state change)".into())
        );
    }

    fn meanings() -> StateMeanings {
        let yaml = "
start: { groups: [started] }
approved: { names: [Approved], groups: [] }
rejected: { names: [Rejected] }
cancel: { groups: [cancelled] }
blocked: { names: [Blocked, Needs Input] }";
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn names_win_over_groups() {
        let m = meanings();
        let cases = [
            ("In Progress", "started", Ok(Some(Meaning::Start))),
            ("Approved", "started", Ok(Some(Meaning::Approved))),
            ("approved ", "unstarted", Ok(Some(Meaning::Approved))),
            ("Blocked", "started", Ok(Some(Meaning::Blocked))),
            ("Cancelled", "cancelled", Ok(Some(Meaning::Cancel))),
            ("Done", "completed", Ok(None)),
            ("Todo", "unstarted", Ok(None)),
        ];
        for (name, group, want) in cases {
            assert_eq!(meaning_of(&m, name, group), want, "{name}/{group}");
        }
        let mut both = meanings();
        both.approved.names.push("Blocked".into());
        both.cancel.groups.push("started".into());
        assert_eq!(
            meaning_of(&both, "Blocked", "x"),
            Err(vec![Meaning::Approved, Meaning::Blocked])
        );
        assert_eq!(
            meaning_of(&both, "Doing", "started"),
            Err(vec![Meaning::Start, Meaning::Cancel])
        );
        let states = [
            PlaneState {
                id: A.into(),
                name: "Doing".into(),
                group: "started".into(),
            },
            PlaneState {
                id: B.into(),
                name: "Approved".into(),
                group: "started".into(),
            },
        ];
        let amb = ambiguous_states(&both, &states);
        assert_eq!(amb.len(), 1);
        assert_eq!(amb[0].0.name, "Doing");
        assert!(ambiguous_states(&meanings(), &states).is_empty());
    }

    fn facts(stage: Stage, ever: bool, live: bool) -> TaskFacts {
        TaskFacts {
            key: "ORCH-1".into(),
            stage,
            has_analyst_job: ever,
            has_live_analyst_job: live,
        }
    }

    #[test]
    fn decisions() {
        use Meaning::{Approved, Blocked, Cancel, Rejected, Start};
        type D = StateChangeDecision;
        let at = |s| facts(s, true, false);
        let no = |d: &StateChangeDecision| matches!(d, D::NoAction(_));
        assert_eq!(decide(Some(Start), "x", false, None), D::Start);
        assert_eq!(
            decide(Some(Start), "x", true, None),
            D::Start,
            "legacy alone still starts"
        );
        assert_eq!(
            decide(
                Some(Start),
                "x",
                false,
                Some(&facts(Stage::Analysis, false, false))
            ),
            D::Start,
            "an unfinished start is finished"
        );
        assert!(no(&decide(
            Some(Start),
            "x",
            false,
            Some(&at(Stage::Analysis))
        )));
        let d = decide(Some(Start), "x", true, Some(&at(Stage::Analysis)));
        assert!(
            matches!(&d, D::NoAction(r) if r.starts_with("legacy name-form second delivery")),
            "{d:?}"
        );
        assert_eq!(
            decide(Some(Approved), "x", false, Some(&at(Stage::Analysis))),
            D::Move {
                from: Stage::Analysis,
                to: Stage::Development
            }
        );
        let d = decide(Some(Approved), "x", true, Some(&at(Stage::Development)));
        assert!(
            matches!(&d, D::NoAction(r) if r.starts_with("legacy")),
            "{d:?}"
        );
        assert!(no(&decide(Some(Approved), "x", false, None)));
        assert_eq!(
            decide(Some(Rejected), "x", false, Some(&at(Stage::Analysis))),
            D::RequeueAnalysis
        );
        assert!(no(&decide(
            Some(Rejected),
            "x",
            false,
            Some(&facts(Stage::Analysis, true, true))
        )));
        assert!(no(&decide(
            Some(Rejected),
            "x",
            false,
            Some(&at(Stage::Review))
        )));
        assert_eq!(
            decide(Some(Cancel), "x", false, Some(&at(Stage::Review))),
            D::Move {
                from: Stage::Review,
                to: Stage::Cancelled
            }
        );
        assert!(no(&decide(
            Some(Cancel),
            "x",
            false,
            Some(&at(Stage::Cancelled))
        )));
        assert!(no(&decide(Some(Cancel), "x", false, None)));
        assert!(no(&decide(
            Some(Blocked),
            "x",
            false,
            Some(&at(Stage::Analysis))
        )));
        assert_eq!(
            decide(None, "Done", false, Some(&at(Stage::Deploy))),
            D::NoAction("unmapped state \"Done\"".into())
        );
    }

    #[test]
    fn staleness_against_the_newest_seen_update() {
        let seen = |text: &str| SeenUpdate::new("w", &WorkItemTime::parse(text), "delivery 1");
        let newest = seen("2026-05-19T10:15:30.482913Z");
        assert!(newest.is_some());
        let stale = |delivered: &str| Freshness::Stale {
            delivered: delivered.into(),
            newest: "2026-05-19T10:15:30.482913Z".into(),
            source: "delivery 1".into(),
        };
        let cases: &[(&str, Option<Value>, Option<&SeenUpdate>, Freshness)] = &[
            // older by one microsecond: stale
            (
                "older",
                Some("2026-05-19T10:15:30.482912Z".into()),
                newest.as_ref(),
                stale("2026-05-19T10:15:30.482912Z"),
            ),
            // older, written without a fraction (Python omits zero microseconds)
            (
                "older, no fraction",
                Some("2026-05-19T10:15:30Z".into()),
                newest.as_ref(),
                stale("2026-05-19T10:15:30Z"),
            ),
            // the same instant written with an offset: equal, never stale
            (
                "equal",
                Some("2026-05-19T10:15:30.482913Z".into()),
                newest.as_ref(),
                Freshness::Current,
            ),
            (
                "equal, other offset",
                Some("2026-05-19T12:15:30.482913+02:00".into()),
                newest.as_ref(),
                Freshness::Current,
            ),
            (
                "newer",
                Some("2026-05-19T10:15:30.482914Z".into()),
                newest.as_ref(),
                Freshness::Current,
            ),
            (
                "nothing seen yet",
                Some("2020-01-01T00:00:00Z".into()),
                None,
                Freshness::Current,
            ),
            (
                "missing",
                None,
                newest.as_ref(),
                Freshness::Unknown("the delivery has no data.updated_at".into()),
            ),
            (
                "null",
                Some(Value::Null),
                newest.as_ref(),
                Freshness::Unknown("the delivery has no data.updated_at".into()),
            ),
            (
                "unparseable",
                Some("yesterday".into()),
                newest.as_ref(),
                Freshness::Unknown("data.updated_at \"yesterday\" is not an RFC 3339 time".into()),
            ),
            (
                "no offset",
                Some("2026-05-19T10:15:30.482913".into()),
                newest.as_ref(),
                Freshness::Unknown(
                    "data.updated_at \"2026-05-19T10:15:30.482913\" is not an RFC 3339 time".into(),
                ),
            ),
            (
                "a number",
                Some(serde_json::json!(1_779_185_730)),
                newest.as_ref(),
                Freshness::Unknown("data.updated_at \"1779185730\" is not an RFC 3339 time".into()),
            ),
        ];
        for (name, value, newest, want) in cases {
            let got = freshness(&WorkItemTime::read(value.as_ref()), *newest);
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn a_delivery_tells_its_work_item_update() {
        let env = parse_envelope(&sample("webhook-issue-state-started.json")).unwrap();
        let seen = env.seen_update("delivery 3").unwrap();
        assert_eq!(seen.work_item_id, "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e04");
        assert_eq!(seen.text, "2026-05-19T10:15:30.482913Z");
        assert_eq!(seen.micros, 1_779_185_730_482_913);
        let comment = parse_envelope(
            b"{\"event\": \"issue_comment\", \"action\": \"created\", \"data\": {\"id\": \"c\", \"updated_at\": \"2026-05-19T10:15:30Z\"}}",
        )
        .unwrap();
        assert_eq!(
            comment.seen_update("delivery 4"),
            None,
            "a comment's time is not the work item's"
        );
        let o = stale_outcome("w", "t1", "t2", "listing");
        assert_eq!(o.kind, OutcomeKind::Stale);
        assert_eq!(OutcomeKind::parse("stale"), Some(OutcomeKind::Stale));
        assert!(o.detail.contains("t1") && o.detail.contains("t2"), "{o}");
    }

    #[test]
    fn task_keys() {
        assert_eq!(task_key(Some("ORCH"), "orch", Some(65), "w"), "ORCH-65");
        assert_eq!(task_key(Some("shop"), "x", Some(1), "w"), "SHOP-1");
        assert_eq!(task_key(Some("a b/c"), "x", Some(2), "w"), "ABC-2");
        assert_eq!(task_key(Some(""), "x", Some(2), "w"), "TASK-2");
        assert_eq!(
            task_key(Some("ORCH"), "x", None, "7b1e4c2a-5d3f"),
            "ORCH-7b1e4c2a"
        );
        // Without a Plane identifier the project's name, sanitised the same way.
        assert_eq!(task_key(None, "my-shop", Some(3), "w"), "MYSHOP-3");
        assert_eq!(task_key(None, "my shop", None, "ab-cd"), "MYSHOP-abcd");
    }

    #[test]
    fn uuids() {
        assert!(is_uuid(A));
        assert!(!is_uuid("In Progress"));
        assert!(!is_uuid("00000000-0000-4000-8000-00000000000"));
    }
}
