//! Configuration: `ORCH_*` settings and the YAML pipeline file, validated into [`Config`].
//!
//! Two sources, one result:
//! - **Settings** (secrets, switches, numbers, paths) are `ORCH_*` names. Each has a
//!   built-in default, may be set in the pipeline file's `settings:` map (same name),
//!   in the environment (systemd's `EnvironmentFile=` reads `.env`), or by a flag
//!   (`--db`, `--state-dir`). Precedence, lowest first: **defaults, file, environment,
//!   flags**. [`SETTINGS`] is the one table of them; `.env.example` is checked against it.
//! - **The pipeline file** (projects, agents, staging checks) is YAML. Its path is
//!   `--config`, else `ORCH_CONFIG`, else `./orch.yaml` when it exists, else none: a
//!   fresh checkout runs with the defaults and no projects.
//!
//! Every bad value is a [`ConfigError`] that names the key and the expected form; the
//! CLI turns it into exit 2 before any side effect. Secrets never reach logs or
//! `config check`: [`Secret`]'s `Debug` and `Display` redact them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::core::plane::{Project, StateMeanings, PLANE_STATE_GROUPS};
use crate::core::stage::Agent;

/// A configuration error naming the key and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {key}: {message}")]
pub struct ConfigError {
    /// The key path, e.g. `ORCH_MAX_CONCURRENCY` or `projects[0].repo`.
    pub key: String,
    /// What is wrong and the expected form.
    pub message: String,
}

impl ConfigError {
    /// Builds an error for `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A secret value; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Returns the secret for use on the wire. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How `dispatch` launches `orch run-job <id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobLauncher {
    /// A detached child in its own session (development and tests).
    Direct,
    /// `systemctl start orch-job@<id>.service`, so the job outlives the dispatch unit.
    Systemd,
}

/// Parses one setting's text into its typed value, or says the expected form.
pub trait SettingValue: Sized {
    /// Parses `text` (already trimmed); `Err` holds the expected form.
    fn parse_setting(text: &str) -> Result<Self, String>;
    /// Renders the value for `config check`.
    fn render(&self) -> String;
}

impl SettingValue for bool {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err("expected true or false".into()),
        }
    }
    fn render(&self) -> String {
        self.to_string()
    }
}

/// A whole number of at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Count(pub u32);

impl SettingValue for Count {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Count(n)),
            _ => Err("expected a whole number of at least 1".into()),
        }
    }
    fn render(&self) -> String {
        self.0.to_string()
    }
}

/// A duration given in whole seconds (`*_S` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

impl Seconds {
    /// Returns the duration in whole seconds.
    pub fn secs(self) -> i64 {
        i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX)
    }
}

impl SettingValue for Seconds {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.parse::<u64>() {
            Ok(n) if n <= 10 * 365 * 86_400 => Ok(Seconds(Duration::from_secs(n))),
            _ => Err("expected a whole number of seconds, 0 or more (at most ten years)".into()),
        }
    }
    fn render(&self) -> String {
        self.0.as_secs().to_string()
    }
}

/// A duration in whole seconds that must be at least 1 (timeouts, windows, TTLs and
/// limits, where 0 would time out every call, expire every lease at once or reap every
/// running job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PositiveSeconds(pub Duration);

impl PositiveSeconds {
    /// Returns the duration in whole seconds.
    pub fn secs(self) -> i64 {
        i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX)
    }
}

impl SettingValue for PositiveSeconds {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match Seconds::parse_setting(text) {
            Ok(Seconds(d)) if d.as_secs() >= 1 => Ok(PositiveSeconds(d)),
            _ => Err("expected a whole number of seconds, at least 1 (at most ten years)".into()),
        }
    }
    fn render(&self) -> String {
        self.0.as_secs().to_string()
    }
}

/// A ratio between 0 and 1 inclusive.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Ratio(pub f64);

impl SettingValue for Ratio {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(Ratio(r)),
            _ => Err("expected a ratio between 0 and 1, e.g. 0.05".into()),
        }
    }
    fn render(&self) -> String {
        self.0.to_string()
    }
}

impl SettingValue for PathBuf {
    fn parse_setting(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.contains('\0') {
            return Err("expected a file system path".into());
        }
        Ok(PathBuf::from(text))
    }
    fn render(&self) -> String {
        self.display().to_string()
    }
}

impl SettingValue for Option<Url> {
    fn parse_setting(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(None);
        }
        parse_http_url(text).map(Some)
    }
    fn render(&self) -> String {
        self.as_ref().map(Url::to_string).unwrap_or_default()
    }
}

impl SettingValue for Url {
    fn parse_setting(text: &str) -> Result<Self, String> {
        parse_http_url(text)
    }
    fn render(&self) -> String {
        self.to_string()
    }
}

impl SettingValue for Option<Secret> {
    fn parse_setting(text: &str) -> Result<Self, String> {
        Ok((!text.is_empty()).then(|| Secret(text.to_string())))
    }
    fn render(&self) -> String {
        match self {
            Some(_) => "<redacted>".into(),
            None => String::new(),
        }
    }
}

impl SettingValue for Option<String> {
    fn parse_setting(text: &str) -> Result<Self, String> {
        Ok((!text.is_empty()).then(|| text.to_string()))
    }
    fn render(&self) -> String {
        self.clone().unwrap_or_default()
    }
}

/// A comma-separated list; empty items are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Csv(pub Vec<String>);

impl Csv {
    /// Returns whether `item` is in the list (exact match).
    pub fn contains(&self, item: &str) -> bool {
        self.0.iter().any(|x| x == item)
    }
}

impl SettingValue for Csv {
    fn parse_setting(text: &str) -> Result<Self, String> {
        Ok(Csv(text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()))
    }
    fn render(&self) -> String {
        self.0.join(",")
    }
}

impl SettingValue for JobLauncher {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text {
            "direct" => Ok(JobLauncher::Direct),
            "systemd" => Ok(JobLauncher::Systemd),
            _ => Err("expected direct or systemd".into()),
        }
    }
    fn render(&self) -> String {
        match self {
            JobLauncher::Direct => "direct".into(),
            JobLauncher::Systemd => "systemd".into(),
        }
    }
}

/// An RFC 3339 instant that pins the clock (`ORCH_NOW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedNow(pub Option<jiff::Timestamp>);

impl SettingValue for PinnedNow {
    fn parse_setting(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(PinnedNow(None));
        }
        crate::clock::parse_instant(text).map(|t| PinnedNow(Some(t)))
    }
    fn render(&self) -> String {
        self.0.map(|t| t.to_string()).unwrap_or_default()
    }
}

fn parse_http_url(text: &str) -> Result<Url, String> {
    match Url::parse(text) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => Ok(u),
        _ => Err(format!(
            "expected an http(s) URL such as http://127.0.0.1:8000, got {text:?}"
        )),
    }
}

/// One row of the settings table: its name, default and meaning.
#[derive(Debug, Clone, Copy)]
pub struct SettingSpec {
    /// The environment variable (and `settings:` key in the pipeline file).
    pub name: &'static str,
    /// The built-in default, as text ("" for none).
    pub default: &'static str,
    /// One line of meaning, shown by `config check` and in `.env.example`.
    pub help: &'static str,
    /// Whether the value is a secret (redacted everywhere).
    pub secret: bool,
}

/// Where a setting's effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The pipeline file's `settings:` map.
    File,
    /// The process environment.
    Env,
    /// A command-line flag.
    Flag,
}

impl Source {
    /// Returns the word `config check` prints.
    pub fn label(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
            Source::Flag => "flag",
        }
    }
}

/// The layered text values of every setting before typing.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// The pipeline file's `settings:` map.
    pub file: BTreeMap<String, String>,
    /// The environment (only `ORCH_*` names are read).
    pub env: BTreeMap<String, String>,
    /// Command-line flags, by setting name.
    pub flags: BTreeMap<String, String>,
}

impl Layers {
    fn lookup(&self, spec: &SettingSpec) -> (String, Source) {
        if let Some(v) = self.flags.get(spec.name) {
            return (v.trim().to_string(), Source::Flag);
        }
        if let Some(v) = self.env.get(spec.name) {
            return (v.trim().to_string(), Source::Env);
        }
        if let Some(v) = self.file.get(spec.name) {
            return (v.trim().to_string(), Source::File);
        }
        (spec.default.to_string(), Source::Default)
    }
}

macro_rules! settings {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $name:literal, $default:literal, $secret:literal, $help:literal; )*) => {
        /// Every `ORCH_*` setting, typed and validated.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        /// The table of every setting: name, default, meaning.
        pub const SETTINGS: &[SettingSpec] = &[
            $( SettingSpec { name: $name, default: $default, help: $help, secret: $secret }, )*
        ];

        impl Settings {
            /// Types every setting from its layers; the first bad one is the error.
            ///
            /// # Errors
            /// A [`ConfigError`] naming the setting and its expected form.
            pub fn resolve(layers: &Layers) -> Result<(Settings, Vec<ResolvedSetting>), ConfigError> {
                let mut shown = Vec::new();
                let mut spec_iter = SETTINGS.iter();
                $(
                    let spec = spec_iter.next().expect("SETTINGS has one row per field");
                    let (text, source) = layers.lookup(spec);
                    let $field: $ty = <$ty as SettingValue>::parse_setting(&text)
                        .map_err(|m| ConfigError::new(spec.name, m))?;
                    shown.push(ResolvedSetting {
                        name: spec.name,
                        value: if spec.secret && !text.is_empty() { "<redacted>".into() } else { $field.render() },
                        source,
                    });
                )*
                Ok((Settings { $( $field, )* }, shown))
            }
        }
    };
}

/// One setting's effective value (redacted when secret) and its source.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResolvedSetting {
    /// The setting's name.
    pub name: &'static str,
    /// The effective value, rendered; secrets are `<redacted>`.
    pub value: String,
    /// Where it came from.
    #[serde(serialize_with = "serialize_source")]
    pub source: Source,
}

fn serialize_source<S: serde::Serializer>(s: &Source, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.label())
}

settings! {
    /// SQLite database path.
    db: PathBuf = "ORCH_DB", "orch.db", false, "SQLite database file (created on first use)";
    /// State directory: locks, the merge lease, post-deploy sentinels.
    state_dir: PathBuf = "ORCH_STATE_DIR", "state", false, "directory for pass locks, the merge lease and post-deploy sentinels";
    /// Artefacts root: `<dir>/<task key>/NN-*.md`.
    artefacts_dir: PathBuf = "ORCH_ARTEFACTS_DIR", "artefacts", false, "root of the agents' Markdown artefacts, one folder per task key";
    /// Plane base URL.
    plane_url: Option<Url> = "ORCH_PLANE_URL", "", false, "Plane base URL, e.g. https://plane.example.com (API under /api/v1)";
    /// Plane API key.
    plane_api_key: Option<Secret> = "ORCH_PLANE_API_KEY", "", true, "Plane personal access token (X-API-Key)";
    /// Plane webhook signing secret.
    plane_webhook_secret: Option<Secret> = "ORCH_PLANE_WEBHOOK_SECRET", "", true, "secret Plane signs webhook bodies with (plane_wh_...); required by webhook-handle";
    /// Gitea base URL.
    gitea_url: Option<Url> = "ORCH_GITEA_URL", "", false, "Gitea base URL, e.g. https://git.example.com (API under /api/v1)";
    /// Gitea token.
    gitea_token: Option<Secret> = "ORCH_GITEA_TOKEN", "", true, "Gitea access token (sent as Authorization: token ...)";
    /// Telegram bot token.
    telegram_bot_token: Option<Secret> = "ORCH_TELEGRAM_BOT_TOKEN", "", true, "Telegram bot token for operator notifications (off when empty)";
    /// Telegram chat id.
    telegram_chat_id: Option<String> = "ORCH_TELEGRAM_CHAT_ID", "", false, "Telegram chat id that receives notifications";
    /// Telegram Bot API base URL.
    telegram_api_url: Url = "ORCH_TELEGRAM_API_URL", "https://api.telegram.org", false, "Telegram Bot API base URL (tests point it at loopback)";
    /// Jobs running at once.
    max_concurrency: Count = "ORCH_MAX_CONCURRENCY", "1", false, "jobs that may run at once across all projects";
    /// How dispatch launches jobs.
    job_launcher: JobLauncher = "ORCH_JOB_LAUNCHER", "direct", false, "how dispatch starts run-job: direct (detached child) or systemd (orch-job@<id>.service)";
    /// Developer retries before escalation.
    max_developer_retries: Count = "ORCH_MAX_DEVELOPER_RETRIES", "3", false, "developer rollbacks after which a task is escalated to a human";
    /// Attempts per job before escalation.
    job_max_attempts: Count = "ORCH_JOB_MAX_ATTEMPTS", "3", false, "attempts of one stage's job before the task is escalated";
    /// Connect timeout of every remote call.
    http_connect_timeout_s: PositiveSeconds = "ORCH_HTTP_CONNECT_TIMEOUT_S", "5", false, "connect timeout of every Plane, Gitea and Telegram call, in seconds";
    /// Whole-request timeout of every remote call.
    http_timeout_s: PositiveSeconds = "ORCH_HTTP_TIMEOUT_S", "20", false, "whole-request timeout of every Plane, Gitea and Telegram call, in seconds";
    /// Log filter.
    log: Option<String> = "ORCH_LOG", "info", false, "log filter in RUST_LOG syntax (error, warn, info, debug, trace)";
    /// Pinned clock.
    now: PinnedNow = "ORCH_NOW", "", false, "pins the clock to an RFC 3339 instant (tests and replays only)";
    /// Staging checks whose failure may be waived as sandbox infrastructure.
    staging_infra_allowlist: Csv = "ORCH_STAGING_INFRA_ALLOWLIST", "C9a,C9b", false, "staging-check ids classed SANDBOX_INFRA (every other id is REAL), comma-separated";
    /// Whether allowlisted staging failures are waived.
    staging_infra_tolerance_enabled: bool = "ORCH_STAGING_INFRA_TOLERANCE_ENABLED", "true", false, "staging-check waives failures of allowlisted SANDBOX_INFRA checks (false: any failure fails)";
    /// Whether staging's image revision is checked.
    image_freshness_enabled: bool = "ORCH_IMAGE_FRESHNESS_ENABLED", "true", false, "staging-check's image-freshness checks compare staging's revision with the expected one";
    /// Repos image freshness applies to.
    image_freshness_repos: Csv = "ORCH_IMAGE_FRESHNESS_REPOS", "", false, "project names or Gitea owner/name that image freshness applies to; empty: the self-hosting repo only";
    /// Post-deploy kill switch.
    post_deploy_enabled: bool = "ORCH_POST_DEPLOY_ENABLED", "true", false, "post-deploy watch on deploy -> done (false: never arm, ticks only close open windows)";
    /// Post-deploy repos.
    post_deploy_repos: Csv = "ORCH_POST_DEPLOY_REPOS", "", false, "projects (name or Gitea owner/name) watched after deploy; empty: every project with a health_url";
    /// Post-deploy window length.
    post_deploy_window_s: PositiveSeconds = "ORCH_POST_DEPLOY_WINDOW_S", "900", false, "how long production is watched after deploy -> done, in seconds";
    /// Post-deploy tick interval.
    post_deploy_interval_s: PositiveSeconds = "ORCH_POST_DEPLOY_INTERVAL_S", "60", false, "the post-deploy timer's interval in seconds; a window is sampled at most every half interval";
    /// Consecutive health failures that mean DEGRADED.
    post_deploy_fail_threshold: Count = "ORCH_POST_DEPLOY_FAIL_THRESHOLD", "3", false, "consecutive failed health probes that mean DEGRADED (a success resets the streak)";
    /// 5xx ratio above which the window is DEGRADED.
    post_deploy_5xx_threshold: Ratio = "ORCH_POST_DEPLOY_5XX_THRESHOLD", "0.05", false, "window 5xx ratio above which production is DEGRADED (0 to 1)";
    /// Samples below which a window is INCONCLUSIVE.
    post_deploy_min_samples: Count = "ORCH_POST_DEPLOY_MIN_SAMPLES", "3", false, "samples a window needs to be called HEALTHY rather than INCONCLUSIVE";
    /// Probe timeout.
    post_deploy_probe_timeout_s: PositiveSeconds = "ORCH_POST_DEPLOY_PROBE_TIMEOUT_S", "5", false, "timeout of each post-deploy health or metrics probe, in seconds";
    /// Rollback timeout.
    post_deploy_rollback_timeout_s: PositiveSeconds = "ORCH_POST_DEPLOY_ROLLBACK_TIMEOUT_S", "300", false, "how long a rollback command may run before its process group is killed, in seconds";
    /// The request counter read from metrics_url.
    post_deploy_requests_metric: Option<String> = "ORCH_POST_DEPLOY_REQUESTS_METRIC", "http_requests_total", false, "Prometheus counter of requests (labels code or status) read from a project's metrics_url";
    /// How long merge-guard re-reads a PR whose `mergeable` Gitea is still computing.
    merge_guard_mergeable_wait_s: Seconds = "ORCH_MERGE_GUARD_MERGEABLE_WAIT_S", "30", false, "merge-guard re-reads a PR whose mergeable Gitea is still computing for up to this long, then reports it";
    /// How long merge-guard --merge waits for the merge lease.
    merge_lease_wait_s: Seconds = "ORCH_MERGE_LEASE_WAIT_S", "120", false, "merge-guard --merge waits this long for the merge lease, then reports ERROR without merging";
    /// How long a merge lease may be held before it counts as stale.
    merge_lease_ttl_s: PositiveSeconds = "ORCH_MERGE_LEASE_TTL_S", "600", false, "a merge lease older than this counts as stale (taken over by the next merge, reclaimed by reap)";
    /// Read deadline of one webhook request.
    webhook_read_timeout_s: PositiveSeconds = "ORCH_WEBHOOK_READ_TIMEOUT_S", "10", false, "webhook-handle --stdio: seconds to receive the whole request before answering 408";
    /// Whether `reap` runs at all.
    reaper_enabled: bool = "ORCH_REAPER_ENABLED", "true", false, "reap rescues jobs left running by dead processes (false: the pass writes nothing and says so)";
    /// How often the reap timer fires (documentation for the unit; the pass reads it for status).
    reaper_interval_s: PositiveSeconds = "ORCH_REAPER_INTERVAL_S", "60", false, "seconds between reap passes (the orch-reap.timer interval; dead-tick streaks count passes)";
    /// Consecutive dead passes before a job is flipped.
    reaper_dead_ticks: Count = "ORCH_REAPER_DEAD_TICKS", "3", false, "consecutive reap passes a job's process must be seen dead before it is flipped to failed";
    /// Backstop: the longest a job may run.
    reaper_max_running_s: PositiveSeconds = "ORCH_REAPER_MAX_RUNNING_S", "14400", false, "a job running longer than this is terminated (TERM, then KILL) and flipped to failed";
    /// Grace between TERM and KILL.
    reaper_kill_grace_s: Seconds = "ORCH_REAPER_KILL_GRACE_S", "10", false, "seconds between TERM and KILL when reap or job cancel terminates a job's process group";
    /// Whether `reap` reclaims a stale merge lease.
    lease_reclaim_enabled: bool = "ORCH_LEASE_RECLAIM_ENABLED", "true", false, "reap deletes the merge lease when its holder is dead or its TTL has passed";
    /// How long reconcile leaves a task alone after it entered its stage.
    reconcile_grace_s: Seconds = "ORCH_RECONCILE_GRACE_S", "300", false, "reconcile leaves a task alone for this long after it entered its stage, in seconds";
    /// Whether reconcile skips work items in a blocked or needs-input state.
    reconcile_skip_blocked_enabled: bool = "ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", "true", false, "reconcile skips tasks whose Plane work item is in a blocked state (or whose state it cannot tell)";
    /// Tasks one reconcile pass evaluates at most.
    reconcile_max_tasks: Count = "ORCH_RECONCILE_MAX_TASKS", "500", false, "tasks one reconcile pass evaluates gates for at most; the rest wait for the next pass";
    /// Plane requests left in the window below which reconcile stops listing.
    reconcile_rate_limit_floor: Count = "ORCH_RECONCILE_RATE_LIMIT_FLOOR", "10", false, "reconcile stops calling Plane when X-RateLimit-Remaining drops below this; the next pass goes on";
    /// Whether reconcile replays pending deliveries and Plane states.
    reconcile_replay_enabled: bool = "ORCH_RECONCILE_REPLAY_ENABLED", "true", false, "reconcile replays pending webhook deliveries and work items whose Plane state the task does not reflect";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    plane: Option<RawPlane>,
    #[serde(default)]
    projects: Vec<RawProject>,
    #[serde(default)]
    agents: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    staging: Option<RawStaging>,
    #[serde(default)]
    settings: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlane {
    workspace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    name: String,
    plane_project_id: String,
    #[serde(default)]
    plane_identifier: Option<String>,
    repo: String,
    #[serde(default = "default_branch")]
    default_branch: String,
    #[serde(default)]
    self_hosting: bool,
    #[serde(default)]
    states: StateMeanings,
    #[serde(default)]
    health_url: Option<String>,
    #[serde(default)]
    metrics_url: Option<String>,
    #[serde(default)]
    rollback: Option<Vec<String>>,
}

fn default_branch() -> String {
    "main".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStaging {
    #[serde(default)]
    checks: Vec<serde_yaml::Value>,
}

/// The validated pipeline file.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Pipeline {
    /// Where it was read from; `None` when running on the built-in defaults.
    pub path: Option<PathBuf>,
    /// The Plane workspace slug.
    pub plane_workspace: Option<String>,
    /// The projects, in file order.
    pub projects: Vec<Project>,
    /// Agent argv templates by agent.
    pub agents: BTreeMap<String, Vec<String>>,
    /// The staging checks, as written (validated by `staging-check`'s own schema).
    #[serde(skip)]
    pub staging_checks: Vec<serde_yaml::Value>,
}

impl Pipeline {
    /// Returns the project with this name.
    pub fn project(&self, name: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.name == name)
    }

    /// Returns the project with this Plane project id.
    pub fn project_by_plane_id(&self, id: &str) -> Option<&Project> {
        self.projects
            .iter()
            .find(|p| p.plane_project_id.eq_ignore_ascii_case(id))
    }

    /// Returns the argv template of `agent`.
    pub fn agent_argv(&self, agent: Agent) -> Option<&[String]> {
        self.agents.get(agent.as_str()).map(Vec::as_slice)
    }
}

/// The names `run-job` sets in an agent's environment. They describe the job, they are
/// not settings: an agent's own `orch` calls (`orch merge-guard --task "$ORCH_TASK_ID"`)
/// must not fail on them as unknown settings.
pub const JOB_CONTEXT_ENV: &[&str] = &[
    "ORCH_TASK_ID",
    "ORCH_TASK_KEY",
    "ORCH_JOB_ID",
    "ORCH_TASK_ARTEFACTS",
];

/// The placeholders an agent argv template may use.
pub const AGENT_PLACEHOLDERS: &[&str] = &["task", "job", "branch", "repo", "artefacts"];

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every `ORCH_*` setting.
    pub settings: Settings,
    /// Each setting's effective value and source, for `config check`.
    pub resolved: Vec<ResolvedSetting>,
    /// The pipeline file.
    pub pipeline: Pipeline,
}

/// Where to find the pipeline file and the flag overrides, from the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--db`.
    pub db: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
}

impl Config {
    /// Loads and validates the configuration from the environment `env` (only `ORCH_*`
    /// names are read), the pipeline file, and flag overrides.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and the expected form.
    pub fn load(
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let path = match (&overrides.config, env.get("ORCH_CONFIG")) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(p)) if !p.trim().is_empty() => Some(PathBuf::from(p.trim())),
            _ => Some(PathBuf::from("orch.yaml")).filter(|p| p.exists()),
        };
        let text = match &path {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                ConfigError::new(
                    "ORCH_CONFIG",
                    format!("cannot read pipeline file {}: {e}", p.display()),
                )
            })?),
            None => None,
        };
        let mut layers = Layers {
            env: env
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("ORCH_")
                        && !JOB_CONTEXT_ENV.contains(&k.as_str())
                        && *k != crate::crash::ENV
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Layers::default()
        };
        if let Some(db) = &overrides.db {
            layers
                .flags
                .insert("ORCH_DB".into(), db.display().to_string());
        }
        if let Some(dir) = &overrides.state_dir {
            layers
                .flags
                .insert("ORCH_STATE_DIR".into(), dir.display().to_string());
        }
        Config::from_parts(text.as_deref(), path, layers)
    }

    /// Validates a pipeline file's text (or none) with the given setting layers.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and the expected form.
    pub fn from_parts(
        pipeline_text: Option<&str>,
        path: Option<PathBuf>,
        mut layers: Layers,
    ) -> Result<Config, ConfigError> {
        let mut pipeline = match pipeline_text {
            Some(text) => parse_pipeline(text, &mut layers.file)?,
            None => Pipeline::default(),
        };
        pipeline.path = path;
        for name in layers.env.keys().chain(layers.file.keys()) {
            if name != "ORCH_CONFIG" && !SETTINGS.iter().any(|s| s.name == name) {
                let hint = closest_setting(name)
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
                return Err(ConfigError::new(
                    name.clone(),
                    format!("unknown setting{hint}"),
                ));
            }
        }
        let (settings, resolved) = Settings::resolve(&layers)?;
        Ok(Config {
            settings,
            resolved,
            pipeline,
        })
    }
}

fn closest_setting(name: &str) -> Option<&'static str> {
    let stem = name.trim_start_matches("ORCH_");
    SETTINGS.iter().map(|s| s.name).find(|s| {
        let other = s.trim_start_matches("ORCH_");
        other.starts_with(stem) || stem.starts_with(other)
    })
}

fn parse_pipeline(
    text: &str,
    file_settings: &mut BTreeMap<String, String>,
) -> Result<Pipeline, ConfigError> {
    let raw: RawPipeline = serde_yaml::from_str(text).map_err(|e| {
        let key = e
            .to_string()
            .split(':')
            .next()
            .filter(|k| !k.contains(' '))
            .unwrap_or("pipeline file")
            .to_string();
        ConfigError::new(key, e.to_string())
    })?;
    for (name, value) in raw.settings {
        let key = format!("settings.{name}");
        let text = match value {
            serde_yaml::Value::String(s) => s,
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ConfigError::new(
                    key,
                    "expected a string, number or boolean",
                ))
            }
        };
        if !name.starts_with("ORCH_") {
            return Err(ConfigError::new(key, "expected an ORCH_* setting name"));
        }
        file_settings.insert(name, text);
    }
    let plane_workspace = match raw.plane {
        Some(p) if is_slug(&p.workspace) => Some(p.workspace),
        Some(p) => {
            return Err(ConfigError::new(
                "plane.workspace",
                format!(
                    "expected a workspace slug (letters, digits, - and _), got {:?}",
                    p.workspace
                ),
            ))
        }
        None => None,
    };
    let mut projects: Vec<Project> = Vec::new();
    for (i, p) in raw.projects.into_iter().enumerate() {
        let at = |field: &str| format!("projects[{i}].{field}");
        if !is_slug(&p.name) {
            return Err(ConfigError::new(
                at("name"),
                "expected a short name of letters, digits, - and _",
            ));
        }
        if projects.iter().any(|q| q.name == p.name) {
            return Err(ConfigError::new(
                at("name"),
                format!("duplicate project name {:?}", p.name),
            ));
        }
        if !is_uuid(&p.plane_project_id) {
            return Err(ConfigError::new(
                at("plane_project_id"),
                "expected a UUID such as 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02",
            ));
        }
        if projects
            .iter()
            .any(|q| q.plane_project_id.eq_ignore_ascii_case(&p.plane_project_id))
        {
            return Err(ConfigError::new(
                at("plane_project_id"),
                "two projects have the same Plane project id",
            ));
        }
        if !is_repo(&p.repo) {
            return Err(ConfigError::new(
                at("repo"),
                format!("expected a Gitea owner/name, got {:?}", p.repo),
            ));
        }
        if crate::core::branch::check_ref_name(&p.default_branch).is_err() {
            return Err(ConfigError::new(
                at("default_branch"),
                "expected a valid git branch name",
            ));
        }
        if let Some(ident) = &p.plane_identifier {
            if ident.is_empty() || !ident.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(ConfigError::new(
                    at("plane_identifier"),
                    "expected the project identifier, e.g. ORCH",
                ));
            }
        }
        for (meaning, m) in [
            ("start", &p.states.start),
            ("approved", &p.states.approved),
            ("rejected", &p.states.rejected),
            ("cancel", &p.states.cancel),
            ("blocked", &p.states.blocked),
        ] {
            for g in &m.groups {
                if !PLANE_STATE_GROUPS.contains(&g.as_str()) {
                    return Err(ConfigError::new(
                        at(&format!("states.{meaning}.groups")),
                        format!(
                            "unknown state group {g:?}; expected one of {}",
                            PLANE_STATE_GROUPS.join(", ")
                        ),
                    ));
                }
            }
        }
        let url_at = |field: &str, v: &Option<String>| -> Result<Option<Url>, ConfigError> {
            v.as_deref()
                .map(parse_http_url)
                .transpose()
                .map_err(|m| ConfigError::new(at(field), m))
        };
        let health_url = url_at("health_url", &p.health_url)?;
        let metrics_url = url_at("metrics_url", &p.metrics_url)?;
        if let Some(argv) = &p.rollback {
            if argv.is_empty() || argv[0].is_empty() {
                return Err(ConfigError::new(
                    at("rollback"),
                    "expected a non-empty argv list, e.g. [/usr/local/bin/redeploy, --previous]",
                ));
            }
        }
        projects.push(Project {
            name: p.name,
            plane_project_id: p.plane_project_id.to_ascii_lowercase(),
            plane_identifier: p.plane_identifier,
            repo: p.repo,
            default_branch: p.default_branch,
            self_hosting: p.self_hosting,
            states: p.states,
            health_url,
            metrics_url,
            rollback: p.rollback,
        });
    }
    if projects.iter().filter(|p| p.self_hosting).count() > 1 {
        return Err(ConfigError::new(
            "projects[].self_hosting",
            "at most one project can be the self-hosting repo",
        ));
    }
    if !projects.is_empty() && plane_workspace.is_none() {
        return Err(ConfigError::new(
            "plane.workspace",
            "required when projects are configured",
        ));
    }
    for (agent, argv) in &raw.agents {
        let key = format!("agents.{agent}");
        if Agent::parse(agent).is_none() {
            return Err(ConfigError::new(
                key,
                "unknown agent; expected analyst, developer, reviewer or deployer",
            ));
        }
        if argv.is_empty() || argv[0].trim().is_empty() {
            return Err(ConfigError::new(
                key,
                "expected a non-empty argv list, e.g. [openclaw, agent, --task, \"{task}\"]",
            ));
        }
        for arg in argv {
            check_placeholders(arg).map_err(|m| ConfigError::new(key.clone(), m))?;
        }
    }
    let names: Vec<&str> = projects.iter().map(|p| p.name.as_str()).collect();
    let staging_checks = raw.staging.map(|s| s.checks).unwrap_or_default();
    crate::core::staging::parse_checks(&staging_checks, &names)
        .map_err(|e| ConfigError::new(e.key, e.message))?;
    Ok(Pipeline {
        path: None,
        plane_workspace,
        projects,
        agents: raw.agents,
        staging_checks,
    })
}

/// Checks that every `{name}` in an argv template is a known placeholder.
fn check_placeholders(arg: &str) -> Result<(), String> {
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("unclosed {{ in {arg:?}"));
        };
        let name = &after[..close];
        if !AGENT_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} in {arg:?}; expected one of {}",
                AGENT_PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Returns whether `s` is a Gitea `owner/name`.
pub fn is_repo(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// Returns the default pipeline-file path a relative `path` in the config resolves against.
pub fn display_path(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string())
        .unwrap_or_else(|| "(none: built-in defaults)".into())
}

/// Renders `.env.example`: every setting with its meaning and default, in table order.
///
/// `ORCH_NOW` is written commented out: it pins the clock and has no place in production.
pub fn env_example() -> String {
    let mut out = String::from(
        "# orch settings: every ORCH_* variable with its default and meaning.\n\
         # systemd reads this file through EnvironmentFile=; the pipeline file's settings: map\n\
         # may set the same names (this file wins over it, flags win over both).\n\
         # Generated from src/config.rs (SETTINGS); a test keeps the two equal.\n",
    );
    out.push_str("\n# YAML pipeline file (projects, agents, staging checks); empty: ./orch.yaml when it exists\nORCH_CONFIG=\n");
    for s in SETTINGS {
        out.push('\n');
        out.push_str(&format!(
            "# {}{}\n",
            s.help,
            if s.secret { " (secret)" } else { "" }
        ));
        let comment = if s.name == "ORCH_NOW" { "#" } else { "" };
        out.push_str(&format!("{comment}{}={}\n", s.name, s.default));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_example_lists_every_setting() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example");
        let expected = env_example();
        if std::env::var_os("ORCH_BLESS").is_some() {
            std::fs::write(path, &expected).unwrap();
        }
        let actual = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            actual == expected,
            ".env.example is out of date with SETTINGS; regenerate it with\n  ORCH_BLESS=1 cargo test --lib env_example"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> Layers {
        Layers {
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Layers::default()
        }
    }

    fn err_key(text: Option<&str>, layers: Layers) -> String {
        Config::from_parts(text, None, layers).unwrap_err().key
    }

    const GOOD: &str = r#"
plane: { workspace: acme }
projects:
  - name: orch
    plane_project_id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02
    repo: acme/orch
agents:
  analyst: [openclaw, agent, --task, "{task}"]
"#;

    #[test]
    fn defaults_need_no_file() {
        let c = Config::from_parts(None, None, Layers::default()).unwrap();
        assert_eq!(c.settings.db, PathBuf::from("orch.db"));
        assert_eq!(c.settings.state_dir, PathBuf::from("state"));
        assert_eq!(c.settings.max_concurrency, Count(1));
        assert!(c.pipeline.projects.is_empty());
    }

    #[test]
    fn precedence_is_default_file_env_flag() {
        let text = "settings:\n  ORCH_MAX_CONCURRENCY: 2\n  ORCH_DB: file.db\n  ORCH_STATE_DIR: file-state\n";
        let mut layers = env(&[("ORCH_DB", "env.db"), ("ORCH_STATE_DIR", "env-state")]);
        layers
            .flags
            .insert("ORCH_STATE_DIR".into(), "flag-state".into());
        let c = Config::from_parts(Some(text), None, layers).unwrap();
        assert_eq!(c.settings.max_concurrency, Count(2));
        assert_eq!(c.settings.db, PathBuf::from("env.db"));
        assert_eq!(c.settings.state_dir, PathBuf::from("flag-state"));
        let src = |n: &str| c.resolved.iter().find(|r| r.name == n).unwrap().source;
        assert_eq!(src("ORCH_MAX_CONCURRENCY"), Source::File);
        assert_eq!(src("ORCH_DB"), Source::Env);
        assert_eq!(src("ORCH_STATE_DIR"), Source::Flag);
        assert_eq!(src("ORCH_JOB_LAUNCHER"), Source::Default);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases: &[(&str, &str)] = &[
            ("ORCH_MAX_CONCURRENCY", "0"),
            ("ORCH_MAX_CONCURRENCY", "two"),
            ("ORCH_MAX_CONCURRENCY", "-1"),
            ("ORCH_HTTP_TIMEOUT_S", "-5"),
            ("ORCH_HTTP_TIMEOUT_S", "1.5"),
            ("ORCH_HTTP_TIMEOUT_S", "0"),
            ("ORCH_REAPER_MAX_RUNNING_S", "0"),
            ("ORCH_MERGE_LEASE_TTL_S", "0"),
            ("ORCH_WEBHOOK_READ_TIMEOUT_S", "0"),
            ("ORCH_PLANE_URL", "not a url"),
            ("ORCH_PLANE_URL", "ftp://plane"),
            ("ORCH_GITEA_URL", "http://"),
            ("ORCH_JOB_LAUNCHER", "docker"),
            ("ORCH_NOW", "tomorrow"),
            ("ORCH_DB", ""),
            ("ORCH_MAX_CONCURENCY", "2"),
        ];
        for (k, v) in cases {
            assert_eq!(err_key(None, env(&[(k, v)])), *k, "{k}={v}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config::from_parts(None, None, env(&[("ORCH_GITEA_TOKEN", "hunter2")])).unwrap();
        let shown = c
            .resolved
            .iter()
            .find(|r| r.name == "ORCH_GITEA_TOKEN")
            .unwrap();
        assert_eq!(shown.value, "<redacted>");
        assert!(!format!("{:?}", c.settings).contains("hunter2"));
        assert_eq!(c.settings.gitea_token.as_ref().unwrap().expose(), "hunter2");
    }

    #[test]
    fn good_pipeline_parses() {
        let c = Config::from_parts(Some(GOOD), None, Layers::default()).unwrap();
        let p = &c.pipeline.projects[0];
        assert_eq!(p.default_branch, "main");
        assert_eq!(p.states.start.groups, vec!["started"]);
        assert_eq!(p.states.cancel.groups, vec!["cancelled"]);
        assert_eq!(c.pipeline.agent_argv(Agent::Analyst).unwrap()[3], "{task}");
    }

    #[test]
    fn bad_pipeline_values_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("repo: acme/orch", "repo: acme", "projects[0].repo"),
            ("repo: acme/orch", "repo: [acme]", "projects[0].repo"),
            (
                "    repo: acme/orch",
                "    repo: acme/orch\n    colour: red",
                "projects[0]",
            ),
            (
                "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02",
                "not-a-uuid",
                "projects[0].plane_project_id",
            ),
            ("name: orch", "name: \"o r c h\"", "projects[0].name"),
            ("  analyst:", "  poet:", "agents.poet"),
            ("\"{task}\"", "\"{tsk}\"", "agents.analyst"),
            (
                "[openclaw, agent, --task, \"{task}\"]",
                "[]",
                "agents.analyst",
            ),
            ("workspace: acme", "workspace: \"a/b\"", "plane.workspace"),
            (
                "    repo: acme/orch",
                "    repo: acme/orch\n    health_url: nope",
                "projects[0].health_url",
            ),
            (
                "    repo: acme/orch",
                "    repo: acme/orch\n    states: { start: { groups: [begun] } }",
                "projects[0].states.start.groups",
            ),
            (
                "    repo: acme/orch",
                "    repo: acme/orch\n    rollback: []",
                "projects[0].rollback",
            ),
            (
                "    repo: acme/orch",
                "    repo: acme/orch\n    default_branch: \"a..b\"",
                "projects[0].default_branch",
            ),
        ];
        for (from, to, key) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "case {to} did not change the text");
            let got = err_key(Some(&text), Layers::default());
            assert!(got.starts_with(key), "{to}: expected key {key}, got {got}");
        }
    }

    #[test]
    fn unknown_top_level_key_is_an_error() {
        let e = Config::from_parts(
            Some("plane: { workspace: a }\nprojcts: []\n"),
            None,
            Layers::default(),
        )
        .unwrap_err();
        assert!(e.message.contains("projcts"), "{e}");
    }

    #[test]
    fn file_settings_are_checked_like_env() {
        assert_eq!(
            err_key(
                Some("settings:\n  ORCH_MAX_CONCURRENCY: 0\n"),
                Layers::default()
            ),
            "ORCH_MAX_CONCURRENCY"
        );
        assert_eq!(
            err_key(Some("settings:\n  ORCH_BOGUS: 1\n"), Layers::default()),
            "ORCH_BOGUS"
        );
        assert_eq!(
            err_key(Some("settings:\n  MAX: 1\n"), Layers::default()),
            "settings.MAX"
        );
        assert_eq!(
            err_key(Some("settings:\n  ORCH_DB: [a]\n"), Layers::default()),
            "settings.ORCH_DB"
        );
    }

    #[test]
    fn setting_names_are_unique() {
        let mut names: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn repo_names() {
        assert!(is_repo("acme/orch"));
        assert!(is_repo("a-b/c.d_e"));
        for bad in ["acme", "a/b/c", "/b", "a/", "../b", "a/..", "a b/c"] {
            assert!(!is_repo(bad), "{bad}");
        }
    }
}
