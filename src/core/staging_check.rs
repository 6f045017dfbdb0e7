//! `staging-check`'s domain: the typed schema of `staging.checks` in the pipeline file,
//! how each check's observation is judged, how checks are classified (REAL or
//! SANDBOX_INFRA) and the verdict, all as pure functions.
//!
//! The verdict never reads green by accident: a REAL failure, a check that could not
//! run, an internal error or an empty check list are all FAILED. Only failures of
//! allowlisted sandbox-infrastructure checks can be waived, and only while tolerance is
//! on and the run is not `--strict`. No I/O here: `adapters::staging_probes` runs the probes.

use std::time::Duration;

use serde::Deserialize;

use crate::core::revision::short;

/// The check kinds, as spelled in the pipeline file.
pub const KINDS: &[&str] = &["http", "command", "image-freshness", "webhook-roundtrip"];

/// Default per-check timeout when `timeout_s` is absent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `timeout_s` accepted (one hour): a staging check is a smoke test.
pub const MAX_TIMEOUT_S: u64 = 3600;

/// A bad check definition, naming `staging.checks[i].<field>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct CheckConfigError {
    /// The key path, e.g. `staging.checks[2].url`.
    pub key: String,
    /// What is wrong and the expected form.
    pub message: String,
}

/// One validated staging check.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckDef {
    /// The check's id (`C1`, `C9a`): what the allowlist and the report name.
    pub id: String,
    /// A short human name.
    pub name: String,
    /// Its own deadline.
    #[serde(serialize_with = "ser_secs")]
    pub timeout: Duration,
    /// What it probes.
    pub kind: CheckKind,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// What a check probes, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CheckKind {
    /// An HTTP request and the answer it must get.
    Http(HttpCheck),
    /// A command (argv, no shell) and the exit code it must end with.
    Command(CommandCheck),
    /// The revision staging runs, compared with the expected one.
    ImageFreshness(FreshnessCheck),
    /// A signed synthetic Plane delivery and what it must cause (C9a, C9b).
    WebhookRoundtrip(RoundtripCheck),
}

impl CheckKind {
    /// Returns the kind's spelling in the pipeline file.
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckKind::Http(_) => "http",
            CheckKind::Command(_) => "command",
            CheckKind::ImageFreshness(_) => "image-freshness",
            CheckKind::WebhookRoundtrip(_) => "webhook-roundtrip",
        }
    }
}

/// A JSON-field expectation: the value at a dotted path must equal `equals`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JsonExpect {
    /// Dotted path into the answer (`status`, `checks.db`, `items.0.state`).
    pub field: String,
    /// The value it must equal (JSON equality).
    pub equals: serde_json::Value,
}

/// `kind: http`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HttpCheck {
    /// `GET` (default), `HEAD`, `POST`, ...
    pub method: String,
    /// The URL (http or https).
    pub url: String,
    /// The status the answer must have (default 200).
    pub expect_status: u16,
    /// A substring the body must contain.
    pub expect_body: Option<String>,
    /// A JSON field the body must hold.
    pub expect_json: Option<JsonExpect>,
    /// A request body to send (with `POST`/`PUT`).
    pub body: Option<String>,
}

/// `kind: command`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CommandCheck {
    /// The program and its arguments; run without a shell.
    pub argv: Vec<String>,
    /// The exit code it must end with (default 0).
    pub expect_exit: i32,
    /// A substring its stdout must contain.
    pub expect_output: Option<String>,
}

/// Where staging says which revision it runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevisionSource {
    /// An HTTP GET; the revision is the trimmed body, or the JSON field when given.
    Url {
        /// The endpoint.
        url: String,
        /// Dotted path of the revision in a JSON answer.
        json_field: Option<String>,
    },
    /// A command (argv, no shell); the revision is its trimmed stdout.
    Argv {
        /// The program and its arguments.
        argv: Vec<String>,
    },
}

/// `kind: image-freshness`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FreshnessCheck {
    /// Where the revision comes from.
    pub source: RevisionSource,
    /// The project whose image it is (default: the task's, else the self-hosting one).
    pub project: Option<String>,
}

/// What a webhook round trip waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoundtripTarget {
    /// C9a: the sandbox work item's branch appears on Gitea.
    Branch,
    /// C9b: the analyst job appears on staging.
    AnalystJob,
}

/// `kind: webhook-roundtrip`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RoundtripCheck {
    /// The sandbox project (a project name in the pipeline file).
    pub project: String,
    /// The staging webhook endpoint the signed delivery is sent to.
    pub webhook_url: String,
    /// What must follow the delivery.
    pub wait_for: RoundtripTarget,
    /// The Plane state name meaning *in progress* (resolved to an id at run time;
    /// default: the project's first state in group `started`).
    pub in_progress_state: Option<String>,
    /// A command printing staging's `orch task show {work_item} --json` (C9b);
    /// `{work_item}` and `{key}` are filled in.
    pub status_command: Option<Vec<String>>,
    /// Staging's database file (C9b), opened read-only.
    pub status_db: Option<String>,
}

// ---- the raw schema: one plain struct per kind, every key known -------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    id: String,
    name: String,
    #[expect(dead_code, reason = "the kind tag is read before this struct")]
    kind: String,
    #[serde(default)]
    timeout_s: Option<u64>,
    #[serde(default)]
    method: Option<String>,
    url: String,
    #[serde(default)]
    expect_status: Option<u16>,
    #[serde(default)]
    expect_body: Option<String>,
    #[serde(default)]
    expect_json: Option<RawJsonExpect>,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJsonExpect {
    field: String,
    equals: serde_yaml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    id: String,
    name: String,
    #[expect(dead_code, reason = "the kind tag is read before this struct")]
    kind: String,
    #[serde(default)]
    timeout_s: Option<u64>,
    argv: Vec<String>,
    #[serde(default)]
    expect_exit: Option<i32>,
    #[serde(default)]
    expect_output: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFreshness {
    id: String,
    name: String,
    #[expect(dead_code, reason = "the kind tag is read before this struct")]
    kind: String,
    #[serde(default)]
    timeout_s: Option<u64>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    json_field: Option<String>,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    project: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoundtrip {
    id: String,
    name: String,
    #[expect(dead_code, reason = "the kind tag is read before this struct")]
    kind: String,
    #[serde(default)]
    timeout_s: Option<u64>,
    project: String,
    webhook_url: String,
    wait_for: String,
    #[serde(default)]
    in_progress_state: Option<String>,
    #[serde(default)]
    status_command: Option<Vec<String>>,
    #[serde(default)]
    status_db: Option<String>,
}

/// Parses and validates `staging.checks`. `projects` are the pipeline's project names
/// (a check naming another project is an error).
///
/// # Errors
/// The first bad definition, naming `staging.checks[i].<field>`.
pub fn parse_checks(
    values: &[serde_yaml::Value],
    projects: &[&str],
) -> Result<Vec<CheckDef>, CheckConfigError> {
    let mut out: Vec<CheckDef> = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let check = parse_check(i, value, projects)?;
        if out.iter().any(|c| c.id == check.id) {
            return Err(CheckConfigError {
                key: format!("staging.checks[{i}].id"),
                message: format!("duplicate check id {:?}", check.id),
            });
        }
        out.push(check);
    }
    Ok(out)
}

fn parse_check(
    i: usize,
    value: &serde_yaml::Value,
    projects: &[&str],
) -> Result<CheckDef, CheckConfigError> {
    let base = format!("staging.checks[{i}]");
    let err = |field: &str, message: String| CheckConfigError {
        key: if field.is_empty() {
            base.clone()
        } else {
            format!("{base}.{field}")
        },
        message,
    };
    let Some(map) = value.as_mapping() else {
        return Err(err(
            "",
            "expected a mapping with id, name, kind and the kind's parameters".into(),
        ));
    };
    let kind = match map.get("kind") {
        None => {
            return Err(err(
                "kind",
                format!("missing; expected one of {}", KINDS.join(", ")),
            ))
        }
        Some(serde_yaml::Value::String(k)) if KINDS.contains(&k.as_str()) => k.clone(),
        Some(other) => {
            return Err(err(
                "kind",
                format!(
                    "unknown kind {}; expected one of {}",
                    yaml_inline(other),
                    KINDS.join(", ")
                ),
            ))
        }
    };
    // Re-read the one check from text so serde's errors carry the field's path.
    let text = serde_yaml::to_string(value).map_err(|e| err("", e.to_string()))?;
    let from = |e: serde_yaml::Error| schema_error(&base, &e);
    // The keys every kind has, checked in this order before the kind's own.
    let common = |id: &str, name: &str, timeout_s: Option<u64>, default: Duration| {
        let id = check_id(id).map_err(|m| err("id", m))?;
        let name = check_name(name).map_err(|m| err("name", m))?;
        let timeout = timeout(timeout_s, default).map_err(|m| err("timeout_s", m))?;
        Ok::<_, CheckConfigError>(move |kind: CheckKind| CheckDef {
            id,
            name,
            timeout,
            kind,
        })
    };
    let check = match kind.as_str() {
        "http" => {
            let r: RawHttp = serde_yaml::from_str(&text).map_err(from)?;
            let method = r
                .method
                .unwrap_or_else(|| "GET".into())
                .to_ascii_uppercase();
            if !["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
                .contains(&method.as_str())
            {
                return Err(err(
                    "method",
                    format!("unknown method {method:?}; expected GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS"),
                ));
            }
            let expect_status = r.expect_status.unwrap_or(200);
            if !(100..=599).contains(&expect_status) {
                return Err(err(
                    "expect_status",
                    format!("expected an HTTP status 100..599, got {expect_status}"),
                ));
            }
            let expect_json = match r.expect_json {
                Some(j) => {
                    check_field_path(&j.field).map_err(|m| err("expect_json.field", m))?;
                    let equals = serde_json::to_value(&j.equals)
                        .map_err(|e| err("expect_json.equals", format!("not a JSON value: {e}")))?;
                    Some(JsonExpect {
                        field: j.field,
                        equals,
                    })
                }
                None => None,
            };
            let def = common(&r.id, &r.name, r.timeout_s, DEFAULT_TIMEOUT)?;
            def(CheckKind::Http(HttpCheck {
                method,
                url: check_url(&r.url).map_err(|m| err("url", m))?,
                expect_status,
                expect_body: r.expect_body,
                expect_json,
                body: r.body,
            }))
        }
        "command" => {
            let r: RawCommand = serde_yaml::from_str(&text).map_err(from)?;
            let def = common(&r.id, &r.name, r.timeout_s, DEFAULT_TIMEOUT)?;
            def(CheckKind::Command(CommandCheck {
                argv: check_argv(r.argv).map_err(|m| err("argv", m))?,
                expect_exit: r.expect_exit.unwrap_or(0),
                expect_output: r.expect_output,
            }))
        }
        "image-freshness" => {
            let r: RawFreshness = serde_yaml::from_str(&text).map_err(from)?;
            let source = match (r.url, r.argv) {
                (Some(url), None) => {
                    if let Some(f) = &r.json_field {
                        check_field_path(f).map_err(|m| err("json_field", m))?;
                    }
                    RevisionSource::Url {
                        url: check_url(&url).map_err(|m| err("url", m))?,
                        json_field: r.json_field,
                    }
                }
                (None, Some(argv)) => {
                    if r.json_field.is_some() {
                        return Err(err("json_field", "only with url".into()));
                    }
                    RevisionSource::Argv {
                        argv: check_argv(argv).map_err(|m| err("argv", m))?,
                    }
                }
                _ => {
                    return Err(err(
                        "url",
                        "expected exactly one of url (an endpoint reporting the revision) or argv (a command printing it)".into(),
                    ))
                }
            };
            if let Some(p) = &r.project {
                if !projects.contains(&p.as_str()) {
                    return Err(err(
                        "project",
                        format!("no project named {p:?} in projects"),
                    ));
                }
            }
            let def = common(&r.id, &r.name, r.timeout_s, DEFAULT_TIMEOUT)?;
            def(CheckKind::ImageFreshness(FreshnessCheck {
                source,
                project: r.project,
            }))
        }
        _ => {
            let r: RawRoundtrip = serde_yaml::from_str(&text).map_err(from)?;
            if !projects.contains(&r.project.as_str()) {
                return Err(err(
                    "project",
                    format!("no project named {:?} in projects", r.project),
                ));
            }
            let wait_for = match r.wait_for.as_str() {
                "branch" => RoundtripTarget::Branch,
                "analyst-job" => RoundtripTarget::AnalystJob,
                other => {
                    return Err(err(
                        "wait_for",
                        format!(
                            "unknown target {other:?}; expected branch (C9a) or analyst-job (C9b)"
                        ),
                    ))
                }
            };
            let status_command = r
                .status_command
                .map(check_argv)
                .transpose()
                .map_err(|m| err("status_command", m))?;
            if wait_for == RoundtripTarget::AnalystJob
                && status_command.is_none() == r.status_db.is_none()
            {
                return Err(err(
                    "status_command",
                    "wait_for: analyst-job needs exactly one of status_command (argv printing staging's `orch task show {work_item} --json`) or status_db".into(),
                ));
            }
            let def = common(&r.id, &r.name, r.timeout_s, Duration::from_secs(60))?;
            def(CheckKind::WebhookRoundtrip(RoundtripCheck {
                project: r.project,
                webhook_url: check_url(&r.webhook_url).map_err(|m| err("webhook_url", m))?,
                wait_for,
                in_progress_state: r.in_progress_state,
                status_command,
                status_db: r.status_db,
            }))
        }
    };
    Ok(check)
}

/// Turns a serde error on one check into a key and message: `unknown field`/`missing
/// field` name the field; other errors carry serde_yaml's path prefix (`url: invalid type`).
fn schema_error(base: &str, e: &serde_yaml::Error) -> CheckConfigError {
    let text = e.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text).to_string();
    // serde_yaml prefixes errors below the root with the field's path (`expect_json: `).
    let (mut key, rest) = match text.split_once(": ") {
        Some((path, rest)) if !path.is_empty() && !path.contains(' ') => {
            (format!("{base}.{path}"), rest.to_string())
        }
        _ => (base.to_string(), text.clone()),
    };
    let backticked = |marker: &str| -> Option<String> {
        let after = &rest[rest.find(marker)? + marker.len()..];
        let after = after.strip_prefix('`')?;
        Some(after[..after.find('`')?].to_string())
    };
    if let Some(field) = backticked("unknown field ").or_else(|| backticked("missing field ")) {
        key = format!("{key}.{field}");
    }
    CheckConfigError { key, message: rest }
}

fn yaml_inline(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => format!("{s:?}"),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into()),
    }
}

fn check_id(id: &str) -> Result<String, String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "expected a short id of letters, digits, - _ . (e.g. C1, C9a), got {id:?}"
        ));
    }
    Ok(id.to_string())
}

fn check_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err("expected a one-line name of at most 200 characters".into());
    }
    Ok(name.to_string())
}

fn timeout(secs: Option<u64>, default: Duration) -> Result<Duration, String> {
    match secs {
        None => Ok(default),
        Some(n) if (1..=MAX_TIMEOUT_S).contains(&n) => Ok(Duration::from_secs(n)),
        Some(n) => Err(format!(
            "expected whole seconds from 1 to {MAX_TIMEOUT_S}, got {n}"
        )),
    }
}

fn check_url(text: &str) -> Result<String, String> {
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(text.into()),
        _ => Err(format!(
            "expected an http(s) URL such as http://127.0.0.1:8501/health, got {text:?}"
        )),
    }
}

fn check_argv(argv: Vec<String>) -> Result<Vec<String>, String> {
    if argv.first().is_none_or(|p| p.trim().is_empty()) {
        return Err(
            "expected a non-empty argv list, e.g. [/usr/bin/curl, -fsS, http://...] (no shell)"
                .into(),
        );
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("arguments cannot contain NUL".into());
    }
    Ok(argv)
}

fn check_field_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!(
            "expected a dotted path such as status or checks.db, got {path:?}"
        ));
    }
    Ok(())
}

// ---- judging observations ----------------------------------------------------------

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", content = "reason", rename_all = "lowercase")]
pub enum StagingCheckOutcome {
    /// The check held; the detail says what was seen.
    Pass(String),
    /// The evidence says no.
    Fail(String),
    /// Not applicable to this run (e.g. image freshness switched off for the repo).
    Skip(String),
    /// The check could not be run (bad command, internal trouble): never a pass.
    Error(String),
}

impl StagingCheckOutcome {
    /// Returns whether the check counts as failed (a failure or a check that could not run).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            StagingCheckOutcome::Fail(_) | StagingCheckOutcome::Error(_)
        )
    }

    /// Returns the reason or detail text.
    pub fn reason(&self) -> &str {
        match self {
            StagingCheckOutcome::Pass(r)
            | StagingCheckOutcome::Fail(r)
            | StagingCheckOutcome::Skip(r)
            | StagingCheckOutcome::Error(r) => r,
        }
    }
}

/// Why a probe got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// The deadline passed (HTTP timeout, or the command was killed).
    Timeout(String),
    /// No connection (refused, unreachable, DNS).
    Connect(String),
    /// Some other transport failure.
    Transport(String),
    /// The probe could not be started at all (no such program, bad request).
    CouldNotRun(String),
}

/// An HTTP answer, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status.
    pub status: u16,
    /// The body, decoded lossily, capped.
    pub body: String,
}

/// A finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandEnd {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Stdout, decoded lossily, capped.
    pub stdout: String,
    /// Stderr, decoded lossily, capped.
    pub stderr: String,
}

fn probe_outcome(e: &ProbeError) -> StagingCheckOutcome {
    match e {
        ProbeError::Timeout(m) => StagingCheckOutcome::Fail(format!("timed out: {m}")),
        ProbeError::Connect(m) => StagingCheckOutcome::Fail(format!("could not connect: {m}")),
        ProbeError::Transport(m) => StagingCheckOutcome::Fail(format!("request failed: {m}")),
        ProbeError::CouldNotRun(m) => StagingCheckOutcome::Error(format!("could not run: {m}")),
    }
}

/// Judges an HTTP check's answer.
pub fn judge_http(
    check: &HttpCheck,
    answer: &Result<HttpAnswer, ProbeError>,
) -> StagingCheckOutcome {
    let a = match answer {
        Ok(a) => a,
        Err(e) => return probe_outcome(e),
    };
    if a.status != check.expect_status {
        return StagingCheckOutcome::Fail(format!(
            "HTTP {} (expected {}){}",
            a.status,
            check.expect_status,
            excerpt_suffix(&a.body)
        ));
    }
    if let Some(want) = &check.expect_body {
        if !a.body.contains(want.as_str()) {
            return StagingCheckOutcome::Fail(format!(
                "HTTP {} but the body lacks {want:?}{}",
                a.status,
                excerpt_suffix(&a.body)
            ));
        }
    }
    if let Some(j) = &check.expect_json {
        let doc: serde_json::Value = match serde_json::from_str(&a.body) {
            Ok(v) => v,
            Err(e) => {
                return StagingCheckOutcome::Fail(format!(
                    "HTTP {} but the answer is not JSON ({e}){}",
                    a.status,
                    excerpt_suffix(&a.body)
                ))
            }
        };
        match json_at(&doc, &j.field) {
            Some(v) if *v == j.equals => {}
            Some(v) => {
                return StagingCheckOutcome::Fail(format!(
                    "HTTP {} but {} is {} (expected {})",
                    a.status,
                    j.field,
                    one_line(&v.to_string(), 80),
                    j.equals
                ))
            }
            None => {
                return StagingCheckOutcome::Fail(format!(
                    "HTTP {} but the answer has no {}",
                    a.status, j.field
                ))
            }
        }
    }
    StagingCheckOutcome::Pass(format!("HTTP {}", a.status))
}

/// Judges a command check's end.
pub fn judge_command(
    check: &CommandCheck,
    end: &Result<CommandEnd, ProbeError>,
) -> StagingCheckOutcome {
    let e = match end {
        Ok(e) => e,
        Err(err) => return probe_outcome(err),
    };
    match e.code {
        None => {
            return StagingCheckOutcome::Fail(format!(
                "ended by a signal{}",
                excerpt_suffix(&e.stderr)
            ))
        }
        Some(code) if code != check.expect_exit => {
            let tail = if e.stderr.trim().is_empty() {
                &e.stdout
            } else {
                &e.stderr
            };
            return StagingCheckOutcome::Fail(format!(
                "exit {code} (expected {}){}",
                check.expect_exit,
                excerpt_suffix(tail)
            ));
        }
        Some(_) => {}
    }
    if let Some(want) = &check.expect_output {
        if !e.stdout.contains(want.as_str()) {
            return StagingCheckOutcome::Fail(format!(
                "exit {} but stdout lacks {want:?}{}",
                check.expect_exit,
                excerpt_suffix(&e.stdout)
            ));
        }
    }
    StagingCheckOutcome::Pass(format!("exit {}", check.expect_exit))
}

/// Reads the revision out of an HTTP answer (`json_field` set: that JSON field; else
/// the trimmed body).
///
/// # Errors
/// The failing outcome: a non-200 answer, a malformed body, or no revision-like value.
pub fn revision_from_http(
    json_field: Option<&str>,
    answer: &Result<HttpAnswer, ProbeError>,
) -> Result<String, StagingCheckOutcome> {
    let a = answer.as_ref().map_err(probe_outcome)?;
    if a.status != 200 {
        return Err(StagingCheckOutcome::Fail(format!(
            "revision endpoint answered HTTP {}{}",
            a.status,
            excerpt_suffix(&a.body)
        )));
    }
    let raw = match json_field {
        None => a.body.trim().to_string(),
        Some(field) => {
            let doc: serde_json::Value = serde_json::from_str(&a.body).map_err(|e| {
                StagingCheckOutcome::Fail(format!(
                    "revision answer is not JSON ({e}){}",
                    excerpt_suffix(&a.body)
                ))
            })?;
            match json_at(&doc, field) {
                Some(serde_json::Value::String(s)) => s.trim().to_string(),
                Some(other) => {
                    return Err(StagingCheckOutcome::Fail(format!(
                        "revision field {field} is not a string: {}",
                        one_line(&other.to_string(), 80)
                    )))
                }
                None => {
                    return Err(StagingCheckOutcome::Fail(format!(
                        "revision answer has no {field}"
                    )))
                }
            }
        }
    };
    parse_revision(&raw).map_err(|m| StagingCheckOutcome::Fail(format!("staging reported {m}")))
}

/// Reads the revision out of a command's stdout.
///
/// # Errors
/// The failing outcome: a non-zero exit or output that is not a revision.
pub fn revision_from_command(
    end: &Result<CommandEnd, ProbeError>,
) -> Result<String, StagingCheckOutcome> {
    let e = end.as_ref().map_err(probe_outcome)?;
    match e.code {
        Some(0) => {}
        Some(c) => {
            return Err(StagingCheckOutcome::Fail(format!(
                "revision command exited {c}{}",
                excerpt_suffix(&e.stderr)
            )))
        }
        None => {
            return Err(StagingCheckOutcome::Fail(
                "revision command ended by a signal".into(),
            ))
        }
    }
    parse_revision(e.stdout.trim())
        .map_err(|m| StagingCheckOutcome::Fail(format!("staging reported {m}")))
}

/// Validates a revision (a git object name, 7 to 64 hex digits) and lowercases it.
///
/// # Errors
/// A description of what was found instead.
pub fn parse_revision(text: &str) -> Result<String, String> {
    let t = text.trim();
    if (7..=64).contains(&t.len()) && t.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(format!(
            "no revision (expected 7 to 64 hex digits), got {:?}",
            one_line(t, 60)
        ))
    }
}

/// Judges image freshness: the revision staging runs against the expected one.
pub fn judge_freshness(
    expected: Option<&str>,
    running: &Result<String, StagingCheckOutcome>,
) -> StagingCheckOutcome {
    let running = match running {
        Ok(r) => r,
        Err(o) => return o.clone(),
    };
    let Some(expected) = expected else {
        return StagingCheckOutcome::Fail(format!(
            "staging runs {} but no expected revision was given (--expected-revision or EXPECTED_REVISION)",
            short(running)
        ));
    };
    if crate::core::revision::revisions_match(running, expected) {
        StagingCheckOutcome::Pass(format!("staging runs {}", short(running)))
    } else {
        StagingCheckOutcome::Fail(format!(
            "stale image: staging runs {} but {} is expected",
            short(running),
            short(expected)
        ))
    }
}

/// Returns whether image freshness applies to a project: the switch is on, and the
/// project is listed in `repos` (by name or `owner/name`), or `repos` is empty and the
/// project is the self-hosting one. With no project known it applies (fail safe).
pub fn freshness_applies(
    enabled: bool,
    repos: &[String],
    project: Option<(&str, &str, bool)>,
) -> bool {
    if !enabled {
        return false;
    }
    match project {
        None => true,
        Some((name, repo, self_hosting)) => {
            if repos.is_empty() {
                self_hosting
            } else {
                repos
                    .iter()
                    .any(|r| r == name || r.eq_ignore_ascii_case(repo))
            }
        }
    }
}

fn json_at<'a>(doc: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(doc, |cur, seg| match cur {
        serde_json::Value::Object(m) => m.get(seg),
        serde_json::Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Returns `text` on one line, control characters replaced, at most `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}...")
    } else {
        flat
    }
}

fn excerpt_suffix(text: &str) -> String {
    let e = one_line(text, 120);
    if e.is_empty() {
        String::new()
    } else {
        format!(": {e}")
    }
}

// ---- classification and verdict ----------------------------------------------------

/// Whether a failure can be blamed on the sandbox's set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Category {
    /// A real check of the code under test: its failure always fails staging.
    #[serde(rename = "REAL")]
    Real,
    /// A sandbox-infrastructure check on the allowlist: its failure may be waived.
    #[serde(rename = "SANDBOX_INFRA")]
    SandboxInfra,
}

impl Category {
    /// Returns the spelling in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Real => "REAL",
            Category::SandboxInfra => "SANDBOX_INFRA",
        }
    }
}

/// Classifies a check id: SANDBOX_INFRA only when it is on the allowlist (exact match);
/// every other id, an unknown one included, is REAL.
pub fn classify(id: &str, allowlist: &[String]) -> Category {
    if allowlist.iter().any(|a| a == id) {
        Category::SandboxInfra
    } else {
        Category::Real
    }
}

/// The settings and flags the verdict depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `ORCH_STAGING_INFRA_ALLOWLIST`.
    pub allowlist: Vec<String>,
    /// `ORCH_STAGING_INFRA_TOLERANCE_ENABLED`.
    pub tolerance: bool,
    /// `--strict`: tolerance off for this run.
    pub strict: bool,
}

impl Policy {
    /// Returns whether allowlisted failures may be waived in this run.
    pub fn waives(&self) -> bool {
        self.tolerance && !self.strict
    }
}

/// One check's result as the verdict sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingCheckResult {
    /// The check id.
    pub id: String,
    /// How it ended.
    pub outcome: StagingCheckOutcome,
}

/// The overall result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VerdictStatus {
    /// Staging is good (maybe with waived infra failures).
    #[serde(rename = "SUCCESS")]
    Success,
    /// Staging is not good, or could not be judged.
    #[serde(rename = "FAILED")]
    Failed,
}

impl VerdictStatus {
    /// Returns the spelling in output and in `staging_status`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictStatus::Success => "SUCCESS",
            VerdictStatus::Failed => "FAILED",
        }
    }
}

/// The verdict with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StagingVerdict {
    /// SUCCESS or FAILED.
    pub status: VerdictStatus,
    /// Allowlisted checks that failed and were waived (only when SUCCESS).
    pub waived: Vec<String>,
    /// Checks whose failure counts against the verdict.
    pub failed: Vec<String>,
    /// Why the verdict is FAILED, one sentence each (empty on SUCCESS).
    pub reasons: Vec<String>,
}

/// Decides the verdict from every check's result, the policy, and any internal errors
/// of the run. Pure; the table is in this module's tests.
pub fn verdict(
    results: &[StagingCheckResult],
    policy: &Policy,
    internal_errors: &[String],
) -> StagingVerdict {
    let mut reasons: Vec<String> = internal_errors
        .iter()
        .map(|e| format!("internal error: {e}"))
        .collect();
    let ran = results
        .iter()
        .filter(|r| !matches!(r.outcome, StagingCheckOutcome::Skip(_)))
        .count();
    if results.is_empty() {
        reasons.push("no staging checks are configured (staging.checks is empty)".into());
    } else if ran == 0 {
        reasons.push("every configured check was skipped: nothing was checked".into());
    }
    let mut failed = Vec::new();
    let mut waivable = Vec::new();
    for r in results {
        let category = classify(&r.id, &policy.allowlist);
        match (&r.outcome, category) {
            (StagingCheckOutcome::Error(_), _) => {
                failed.push(r.id.clone());
                reasons.push(format!("{} could not be run", r.id));
            }
            (StagingCheckOutcome::Fail(_), Category::Real) => {
                failed.push(r.id.clone());
                reasons.push(format!("REAL check {} failed", r.id));
            }
            (StagingCheckOutcome::Fail(_), Category::SandboxInfra) => waivable.push(r.id.clone()),
            (StagingCheckOutcome::Pass(_) | StagingCheckOutcome::Skip(_), _) => {}
        }
    }
    if !waivable.is_empty() && !policy.waives() {
        let why = if policy.strict {
            "--strict"
        } else {
            "infra tolerance is off"
        };
        for id in &waivable {
            reasons.push(format!("SANDBOX_INFRA check {id} failed ({why})"));
        }
        failed.append(&mut waivable);
    }
    if reasons.is_empty() {
        StagingVerdict {
            status: VerdictStatus::Success,
            waived: waivable,
            failed,
            reasons,
        }
    } else {
        StagingVerdict {
            status: VerdictStatus::Failed,
            waived: Vec::new(),
            failed,
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, outcome: StagingCheckOutcome) -> StagingCheckResult {
        StagingCheckResult {
            id: id.into(),
            outcome,
        }
    }
    fn pass(id: &str) -> StagingCheckResult {
        result(id, StagingCheckOutcome::Pass("ok".into()))
    }
    fn fail(id: &str) -> StagingCheckResult {
        result(id, StagingCheckOutcome::Fail("no".into()))
    }
    fn error(id: &str) -> StagingCheckResult {
        result(id, StagingCheckOutcome::Error("could not run".into()))
    }
    fn skip(id: &str) -> StagingCheckResult {
        result(id, StagingCheckOutcome::Skip("n/a".into()))
    }

    fn policy(tolerance: bool, strict: bool) -> Policy {
        Policy {
            allowlist: vec!["C9a".into(), "C9b".into()],
            tolerance,
            strict,
        }
    }

    /// Exit code of a verdict status, as the command maps it.
    fn exit(s: VerdictStatus) -> u8 {
        match s {
            VerdictStatus::Success => crate::exit::ExitStatus::Success.code(),
            VerdictStatus::Failed => crate::exit::ExitStatus::No.code(),
        }
    }

    /// The verdict table: (name, results, tolerance, strict, internal error) ->
    /// (status, waived ids, exit code).
    #[test]
    #[rustfmt::skip]
    fn verdict_table() {
        use VerdictStatus::{Failed as F, Success as S};
        type Row = (&'static str, Vec<StagingCheckResult>, bool, bool, bool, VerdictStatus, Vec<&'static str>, u8);
        let rows: Vec<Row> = vec![
            ("all pass",                           vec![pass("C1"), pass("C9a")], true,  false, false, S, vec![], 0),
            ("all pass, strict",                   vec![pass("C1"), pass("C9a")], true,  true,  false, S, vec![], 0),
            ("all pass, tolerance off",            vec![pass("C1"), pass("C9a")], false, false, false, S, vec![], 0),
            ("real fail",                          vec![fail("C1"), pass("C9a")], true,  false, false, F, vec![], 1),
            ("real fail, strict",                  vec![fail("C1"), pass("C9a")], true,  true,  false, F, vec![], 1),
            ("real fail, tolerance off",           vec![fail("C1")],              false, false, false, F, vec![], 1),
            ("infra fail waived",                  vec![pass("C1"), fail("C9a")], true,  false, false, S, vec!["C9a"], 0),
            ("both infra fail waived",             vec![pass("C1"), fail("C9a"), fail("C9b")], true, false, false, S, vec!["C9a", "C9b"], 0),
            ("infra fail, strict",                 vec![pass("C1"), fail("C9a")], true,  true,  false, F, vec![], 1),
            ("infra fail, tolerance off",          vec![pass("C1"), fail("C9a")], false, false, false, F, vec![], 1),
            ("infra fail, tolerance off + strict", vec![pass("C1"), fail("C9a")], false, true,  false, F, vec![], 1),
            ("real and infra fail",                vec![fail("C1"), fail("C9a")], true,  false, false, F, vec![], 1),
            ("real and infra fail, strict",        vec![fail("C1"), fail("C9a")], true,  true,  false, F, vec![], 1),
            ("only infra checks, one fails",       vec![pass("C9a"), fail("C9b")], true, false, false, S, vec!["C9b"], 0),
            ("unknown id fails: REAL",             vec![fail("X42")],             true,  false, false, F, vec![], 1),
            ("unknown id passes",                  vec![pass("X42")],             true,  false, false, S, vec![], 0),
            ("near-miss id is not allowlisted",    vec![fail("c9a")],             true,  false, false, F, vec![], 1),
            ("empty list",                         vec![],                        true,  false, false, F, vec![], 1),
            ("empty list, strict",                 vec![],                        true,  true,  false, F, vec![], 1),
            ("empty list, tolerance off",          vec![],                        false, false, false, F, vec![], 1),
            ("everything skipped",                 vec![skip("F1")],              true,  false, false, F, vec![], 1),
            ("only waived failures (SPEC: SUCCESS)", vec![fail("C9a"), fail("C9b")], true, false, false, S, vec!["C9a", "C9b"], 0),
            ("skip beside a pass",                 vec![skip("F1"), pass("C1")],  true,  false, false, S, vec![], 0),
            ("internal error, all pass",           vec![pass("C1")],              true,  false, true,  F, vec![], 1),
            ("internal error, infra fail",         vec![pass("C1"), fail("C9a")], true,  false, true,  F, vec![], 1),
            ("internal error, no checks",          vec![],                        true,  false, true,  F, vec![], 1),
            ("internal error, strict",             vec![pass("C1")],              true,  true,  true,  F, vec![], 1),
            ("real check could not run",           vec![error("C1")],             true,  false, false, F, vec![], 1),
            ("infra check could not run",          vec![pass("C1"), error("C9a")], true, false, false, F, vec![], 1),
        ];
        for (name, results, tolerance, strict, internal, status, waived, code) in rows {
            let internal: Vec<String> = if internal { vec!["boom".into()] } else { vec![] };
            let v = verdict(&results, &policy(tolerance, strict), &internal);
            assert_eq!(v.status, status, "{name}: {v:?}");
            assert_eq!(v.waived, waived, "{name}");
            assert_eq!(exit(v.status), code, "{name}");
            assert_eq!(v.reasons.is_empty(), status == S, "{name}: {v:?}");
        }
    }

    #[test]
    fn empty_allowlist_makes_every_check_real() {
        let p = Policy {
            allowlist: vec![],
            tolerance: true,
            strict: false,
        };
        let v = verdict(&[fail("C9a")], &p, &[]);
        assert_eq!(v.status, VerdictStatus::Failed);
        assert_eq!(classify("C9a", &[]), Category::Real);
        assert_eq!(classify("C9a", &["C9a".into()]), Category::SandboxInfra);
    }

    #[test]
    fn failed_lists_what_counted() {
        let v = verdict(
            &[fail("C1"), fail("C9a"), error("C2")],
            &policy(true, true),
            &[],
        );
        assert_eq!(v.failed, vec!["C1", "C2", "C9a"]);
        assert!(v.reasons.iter().any(|r| r.contains("--strict")), "{v:?}");
    }

    fn parse(yaml: &str) -> Result<Vec<CheckDef>, CheckConfigError> {
        let v: Vec<serde_yaml::Value> = serde_yaml::from_str(yaml).unwrap();
        parse_checks(&v, &["orch", "sandbox"])
    }

    #[test]
    fn good_checks_parse() {
        let checks = parse(
            r#"
- { id: C1, name: health, kind: http, url: "http://127.0.0.1:8501/health", expect_status: 200, timeout_s: 5 }
- { id: C2, name: api, kind: http, method: post, url: "http://127.0.0.1:1/x", body: "{}", expect_json: { field: checks.db, equals: ok } }
- { id: C3, name: migrations, kind: command, argv: [/bin/true], expect_output: done }
- { id: F1, name: fresh, kind: image-freshness, url: "http://127.0.0.1:1/version", json_field: revision, project: orch }
- { id: F2, name: fresh cmd, kind: image-freshness, argv: [git, rev-parse, HEAD] }
- { id: C9a, name: sandbox branch, kind: webhook-roundtrip, project: sandbox, webhook_url: "http://127.0.0.1:1/hook", wait_for: branch, timeout_s: 60 }
- { id: C9b, name: analyst job, kind: webhook-roundtrip, project: sandbox, webhook_url: "http://127.0.0.1:1/hook", wait_for: analyst-job, status_command: [orch, status, --json] }
"#,
        )
        .unwrap();
        assert_eq!(checks.len(), 7);
        assert_eq!(checks[0].timeout, Duration::from_secs(5));
        let CheckKind::Http(h) = &checks[1].kind else {
            panic!("http")
        };
        assert_eq!(h.method, "POST");
        assert_eq!(h.expect_status, 200);
        assert_eq!(
            h.expect_json.as_ref().unwrap().equals,
            serde_json::json!("ok")
        );
        assert_eq!(checks[2].timeout, DEFAULT_TIMEOUT);
        assert_eq!(checks[5].timeout, Duration::from_secs(60));
        assert_eq!(checks[6].kind.as_str(), "webhook-roundtrip");
    }

    #[test]
    #[rustfmt::skip]
    fn bad_checks_name_their_field() {
        let h = "id: C1, name: h, kind: http, url: \"http://127.0.0.1:1/\"";
        let w = "name: w, kind: webhook-roundtrip, project: sandbox, webhook_url: \"http://a/\"";
        let cases: Vec<(String, &str)> = vec![
            ("- 3".into(), ""),
            ("- { id: C1, name: h }".into(), ".kind"),
            ("- { id: C1, name: h, kind: smtp }".into(), ".kind"),
            ("- { id: C1, name: h, kind: [http] }".into(), ".kind"),
            (format!("- {{ {h}, colour: red }}"), ".colour"),
            ("- { id: C1, name: h, kind: http }".into(), ".url"),
            ("- { name: h, kind: http, url: \"http://a/\" }".into(), ".id"),
            (format!("- {{ {h}, expect_status: abc }}"), ".expect_status"),
            (format!("- {{ {h}, expect_status: 99 }}"), ".expect_status"),
            (format!("- {{ {h}, timeout_s: 0 }}"), ".timeout_s"),
            (format!("- {{ {h}, timeout_s: -1 }}"), ".timeout_s"),
            (format!("- {{ {h}, timeout_s: 99999 }}"), ".timeout_s"),
            (format!("- {{ {h}, method: FETCH }}"), ".method"),
            (format!("- {{ {h}, expect_json: {{ field: \"\", equals: 1 }} }}"), ".expect_json.field"),
            (format!("- {{ {h}, expect_json: {{ field: a }} }}"), ".expect_json.equals"),
            (format!("- {{ {h}, expect_json: {{ field: a, equals: 1, extra: 2 }} }}"), ".expect_json.extra"),
            ("- { id: C1, name: h, kind: http, url: \"ftp://x/\" }".into(), ".url"),
            ("- { id: \"a b\", name: h, kind: http, url: \"http://a/\" }".into(), ".id"),
            ("- { id: C1, name: \"\", kind: http, url: \"http://a/\" }".into(), ".name"),
            ("- { id: C3, name: c, kind: command, argv: [] }".into(), ".argv"),
            ("- { id: C3, name: c, kind: command, argv: /bin/true }".into(), ".argv"),
            ("- { id: C3, name: c, kind: command, argv: [x], expect_exit: one }".into(), ".expect_exit"),
            ("- { id: C3, name: c, kind: command, argv: [x], url: \"http://a/\" }".into(), ".url"),
            ("- { id: F, name: f, kind: image-freshness }".into(), ".url"),
            ("- { id: F, name: f, kind: image-freshness, url: \"http://a/\", argv: [x] }".into(), ".url"),
            ("- { id: F, name: f, kind: image-freshness, argv: [x], json_field: a }".into(), ".json_field"),
            ("- { id: F, name: f, kind: image-freshness, argv: [x], project: nope }".into(), ".project"),
            (format!("- {{ id: C9a, {w}, wait_for: branch, project: nope }}").replace("project: sandbox, ", ""), ".project"),
            (format!("- {{ id: C9a, {w}, wait_for: pr }}"), ".wait_for"),
            ("- { id: C9a, name: w, kind: webhook-roundtrip, project: sandbox, wait_for: branch }".into(), ".webhook_url"),
            (format!("- {{ id: C9b, {w}, wait_for: analyst-job }}"), ".status_command"),
            (format!("- {{ id: C9b, {w}, wait_for: analyst-job, status_command: [a], status_db: x }}"), ".status_command"),
        ];
        for (yaml, field) in cases {
            let e = parse(&yaml).expect_err(&yaml);
            assert_eq!(e.key, format!("staging.checks[0]{field}"), "{yaml}: {e}");
            assert!(!e.message.is_empty());
        }
        let dup = parse(&format!("- {{ {h} }}\n- {{ {h} }}")).unwrap_err();
        assert_eq!(dup.key, "staging.checks[1].id");
        assert!(dup.message.contains("duplicate"), "{dup}");
    }

    fn http(expect_status: u16) -> HttpCheck {
        HttpCheck {
            method: "GET".into(),
            url: "http://127.0.0.1:1/".into(),
            expect_status,
            expect_body: None,
            expect_json: None,
            body: None,
        }
    }

    fn answer(status: u16, body: &str) -> Result<HttpAnswer, ProbeError> {
        Ok(HttpAnswer {
            status,
            body: body.into(),
        })
    }

    #[test]
    fn http_answers_are_judged() {
        let mut c = http(200);
        assert!(matches!(
            judge_http(&c, &answer(200, "")),
            StagingCheckOutcome::Pass(_)
        ));
        assert!(
            matches!(judge_http(&c, &answer(503, "down")), StagingCheckOutcome::Fail(r) if r.contains("HTTP 503 (expected 200): down"))
        );
        c.expect_body = Some("ok".into());
        assert!(matches!(
            judge_http(&c, &answer(200, "all ok")),
            StagingCheckOutcome::Pass(_)
        ));
        assert!(matches!(
            judge_http(&c, &answer(200, "bad")),
            StagingCheckOutcome::Fail(_)
        ));
        c.expect_body = None;
        c.expect_json = Some(JsonExpect {
            field: "checks.db".into(),
            equals: serde_json::json!("ok"),
        });
        assert!(matches!(
            judge_http(&c, &answer(200, r#"{"checks":{"db":"ok"}}"#)),
            StagingCheckOutcome::Pass(_)
        ));
        assert!(
            matches!(judge_http(&c, &answer(200, r#"{"checks":{"db":"down"}}"#)), StagingCheckOutcome::Fail(r) if r.contains("checks.db is \"down\""))
        );
        assert!(
            matches!(judge_http(&c, &answer(200, r#"{"checks":{}}"#)), StagingCheckOutcome::Fail(r) if r.contains("has no checks.db"))
        );
        assert!(
            matches!(judge_http(&c, &answer(200, "<html>")), StagingCheckOutcome::Fail(r) if r.contains("not JSON"))
        );
        for (e, word) in [
            (ProbeError::Timeout("x".into()), "timed out"),
            (ProbeError::Connect("x".into()), "could not connect"),
            (ProbeError::Transport("x".into()), "request failed"),
        ] {
            assert!(
                matches!(judge_http(&c, &Err(e)), StagingCheckOutcome::Fail(r) if r.starts_with(word))
            );
        }
        assert!(matches!(
            judge_http(&c, &Err(ProbeError::CouldNotRun("x".into()))),
            StagingCheckOutcome::Error(_)
        ));
    }

    #[test]
    fn command_ends_are_judged() {
        let mut c = CommandCheck {
            argv: vec!["x".into()],
            expect_exit: 0,
            expect_output: None,
        };
        let end = |code: Option<i32>, out: &str| {
            Ok(CommandEnd {
                code,
                stdout: out.into(),
                stderr: String::new(),
            })
        };
        assert!(matches!(
            judge_command(&c, &end(Some(0), "")),
            StagingCheckOutcome::Pass(_)
        ));
        assert!(
            matches!(judge_command(&c, &end(Some(3), "boom")), StagingCheckOutcome::Fail(r) if r == "exit 3 (expected 0): boom")
        );
        assert!(
            matches!(judge_command(&c, &end(None, "")), StagingCheckOutcome::Fail(r) if r.contains("signal"))
        );
        c.expect_exit = 3;
        assert!(matches!(
            judge_command(&c, &end(Some(3), "")),
            StagingCheckOutcome::Pass(_)
        ));
        c.expect_output = Some("ready".into());
        assert!(matches!(
            judge_command(&c, &end(Some(3), "not yet")),
            StagingCheckOutcome::Fail(_)
        ));
        assert!(matches!(
            judge_command(&c, &end(Some(3), "ready\n")),
            StagingCheckOutcome::Pass(_)
        ));
        assert!(matches!(
            judge_command(&c, &Err(ProbeError::CouldNotRun("no such file".into()))),
            StagingCheckOutcome::Error(_)
        ));
        assert!(matches!(
            judge_command(&c, &Err(ProbeError::Timeout("killed after 1s".into()))),
            StagingCheckOutcome::Fail(r) if r.starts_with("timed out")
        ));
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn freshness_is_judged() {
        let fresh = Ok(SHA.to_string());
        assert!(matches!(
            judge_freshness(Some(SHA), &fresh),
            StagingCheckOutcome::Pass(_)
        ));
        assert!(matches!(
            judge_freshness(Some(&SHA[..7]), &fresh),
            StagingCheckOutcome::Pass(_)
        ));
        assert!(
            matches!(judge_freshness(Some("fedcba9876"), &fresh), StagingCheckOutcome::Fail(r) if r.starts_with("stale image"))
        );
        assert!(
            matches!(judge_freshness(None, &fresh), StagingCheckOutcome::Fail(r) if r.contains("no expected revision"))
        );
        let broken = Err(StagingCheckOutcome::Fail("x".into()));
        assert_eq!(
            judge_freshness(Some(SHA), &broken),
            StagingCheckOutcome::Fail("x".into())
        );
    }

    #[test]
    fn revisions_are_read_from_answers() {
        assert_eq!(
            revision_from_http(None, &answer(200, &format!("{SHA}\n"))),
            Ok(SHA.into())
        );
        assert_eq!(
            revision_from_http(
                Some("build.rev"),
                &answer(
                    200,
                    &format!(r#"{{"build":{{"rev":"{}"}}}}"#, SHA.to_uppercase())
                )
            ),
            Ok(SHA.into())
        );
        for (field, a) in [
            (None, answer(200, "hello world")),
            (None, answer(200, "")),
            (None, answer(404, SHA)),
            (Some("rev"), answer(200, "not json")),
            (Some("rev"), answer(200, r#"{"rev": 12}"#)),
            (Some("rev"), answer(200, r#"{"other": "x"}"#)),
            (None, Err(ProbeError::Connect("refused".into()))),
        ] {
            assert!(revision_from_http(field, &a).is_err(), "{a:?}");
        }
        let end = |code, out: &str| {
            Ok(CommandEnd {
                code,
                stdout: out.into(),
                stderr: String::new(),
            })
        };
        assert_eq!(
            revision_from_command(&end(Some(0), &format!("{SHA}\n"))),
            Ok(SHA.into())
        );
        assert!(revision_from_command(&end(Some(1), SHA)).is_err());
        assert!(revision_from_command(&end(None, SHA)).is_err());
        assert!(revision_from_command(&end(Some(0), "v1.2.3")).is_err());
        assert!(parse_revision("abc12").is_err());
        assert!(parse_revision(&"a".repeat(65)).is_err());
    }

    #[test]
    fn freshness_applies_per_repo() {
        let none: Vec<String> = vec![];
        let listed = vec!["shop".to_string(), "acme/blog".to_string()];
        type Case<'a> = (bool, &'a [String], Option<(&'a str, &'a str, bool)>, bool);
        let cases: [Case; 7] = [
            (false, &none, Some(("orch", "acme/orch", true)), false),
            (true, &none, Some(("orch", "acme/orch", true)), true),
            (true, &none, Some(("shop", "acme/shop", false)), false),
            (true, &listed, Some(("shop", "acme/shop", false)), true),
            (true, &listed, Some(("blog", "acme/blog", false)), true),
            (true, &listed, Some(("orch", "acme/orch", true)), false),
            (true, &none, None, true),
        ];
        for (enabled, repos, target, want) in cases {
            assert_eq!(
                freshness_applies(enabled, repos, target),
                want,
                "{enabled} {repos:?} {target:?}"
            );
        }
    }

    #[test]
    fn one_line_flattens_and_caps() {
        assert_eq!(one_line("a\nb\r\n  c\t", 10), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc...");
    }
}
