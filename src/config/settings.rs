//! The `ORCH_*` settings: the `settings!` table (name, default, meaning, secrecy)
//! and the value types a setting is parsed into.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::config::{ConfigError, Layers, Source};

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
        // ORCH_DB may be a PostgreSQL URL with a password.
        crate::adapters::db::display_location(self)
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

/// An absolute HTTP request path (`/webhooks/plane`): starts with `/`, visible ASCII,
/// no query or fragment (the receiver compares the request's path with it exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath(pub String);

impl SettingValue for RequestPath {
    fn parse_setting(text: &str) -> Result<Self, String> {
        let ok = text.starts_with('/')
            && text.bytes().all(|b| b.is_ascii_graphic())
            && !text.contains(['?', '#']);
        if ok {
            Ok(RequestPath(text.to_string()))
        } else {
            Err(
                "expected an absolute request path such as /webhooks/plane (no query, no spaces)"
                    .into(),
            )
        }
    }
    fn render(&self) -> String {
        self.0.clone()
    }
}

/// A log filter in `RUST_LOG` syntax (`info`, `warn,orch::ops=debug`), checked when the
/// configuration loads: a filter the logger would only half understand is an error
/// naming the key, not a warning on stderr and a silent fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(pub String);

impl SettingValue for LogFilter {
    fn parse_setting(text: &str) -> Result<Self, String> {
        let text = if text.is_empty() { "info" } else { text };
        env_filter::Builder::new()
            .try_parse(text)
            .map(|_| LogFilter(text.to_string()))
            .map_err(|e| {
                format!("expected a log filter in RUST_LOG syntax (error, warn, info, debug, trace, or target=level,...): {e}")
            })
    }
    fn render(&self) -> String {
        self.0.clone()
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

/// An optional non-negative decimal amount (`ORCH_TASK_BUDGET`), kept in micro-units;
/// empty: none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Amount(pub Option<i64>);

impl SettingValue for Amount {
    fn parse_setting(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Amount(None));
        }
        crate::core::spend::parse_micros(text).map(|m| Amount(Some(m)))
    }
    fn render(&self) -> String {
        self.0
            .map(crate::core::spend::format_micros)
            .unwrap_or_default()
    }
}

/// An optional non-negative whole number (`ORCH_TASK_TOKEN_BUDGET`); empty: none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionalCount(pub Option<i64>);

impl SettingValue for OptionalCount {
    fn parse_setting(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(OptionalCount(None));
        }
        text.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|n| OptionalCount(Some(n)))
            .ok_or_else(|| "expected a non-negative whole number, or empty for none".into())
    }
    fn render(&self) -> String {
        self.0.map(|n| n.to_string()).unwrap_or_default()
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

pub(super) fn parse_http_url(text: &str) -> Result<Url, String> {
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
    db: PathBuf = "ORCH_DB", "orch.db", false, "the database: a SQLite file, or a postgres:// URL for more than one host (docs/scale-out.md); created by `orch init`, every other command refuses a missing one";
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
    /// The staging receiver's webhook secret, for staging-check's round trips.
    staging_webhook_secret: Option<Secret> = "ORCH_STAGING_WEBHOOK_SECRET", "", true, "secret staging-check's webhook round trips sign their synthetic delivery with (the staging receiver's, not production's; falls back to ORCH_PLANE_WEBHOOK_SECRET)";
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
    /// This host's name among the hosts sharing one PostgreSQL database.
    host_id: Option<String> = "ORCH_HOST_ID", "", false, "this host's name among hosts sharing one PostgreSQL database (default: /etc/machine-id); recorded on each job it claims and each lease it holds";
    /// Jobs running at once on this host.
    max_concurrency_per_host: OptionalCount = "ORCH_MAX_CONCURRENCY_PER_HOST", "", false, "jobs that may run at once on this host (ORCH_HOST_ID), beside ORCH_MAX_CONCURRENCY across all hosts; dispatch never exceeds either; empty: no per-host cap; 0: this host starts no job";
    /// How often run-job heartbeats its job.
    heartbeat_interval_s: PositiveSeconds = "ORCH_HEARTBEAT_INTERVAL_S", "10", false, "seconds between a running job's heartbeats (run-job stamps jobs.heartbeat_at and its host's row); a heartbeat that finds its job no longer running stops the agent";
    /// How old a heartbeat may be before another host's job counts as dead.
    heartbeat_timeout_s: PositiveSeconds = "ORCH_HEARTBEAT_TIMEOUT_S", "60", false, "reap fails another host's running job whose last heartbeat is older than this (reason heartbeat-expired); run-job stops its agent when it could not heartbeat for this long; at least 3 x ORCH_HEARTBEAT_INTERVAL_S";
    /// How dispatch launches jobs.
    job_launcher: JobLauncher = "ORCH_JOB_LAUNCHER", "direct", false, "how dispatch starts run-job: direct (detached child) or systemd (orch-job@<id>.service)";
    /// The agent socket's path, given to every agent.
    agent_socket: Option<String> = "ORCH_AGENT_SOCKET", "", false, "Unix socket (orch-agent.socket) an agent's orch task show / staging-check / merge-guard ask instead of opening the database; run-job gives it to every agent";
    /// Requests one job may have in flight on the agent socket.
    agent_socket_max_per_job: Count = "ORCH_AGENT_SOCKET_MAX_PER_JOB", "4", false, "requests one job's agent may have in flight on the agent socket at once (from the connection to the answer); past it a connection is refused at once, so one job flooding the socket cannot starve the others";
    /// Where the tasks' workspaces live.
    workspaces_dir: Option<String> = "ORCH_WORKSPACES_DIR", "", false, "folder holding the tasks' git workspaces (default <state dir>/workspaces); with ORCH_AGENT_USER it must be outside the state dir, which the agent user cannot enter";
    /// The user agents run as.
    agent_user: Option<String> = "ORCH_AGENT_USER", "", false, "user (name or uid in /etc/passwd) run-job starts agents as; needs CAP_SETUID and CAP_SETGID, else the job fails before its agent starts";
    /// Developer retries before escalation.
    max_developer_retries: Count = "ORCH_MAX_DEVELOPER_RETRIES", "3", false, "developer rollbacks after which a task is escalated to a human";
    /// Attempts per job before escalation.
    job_max_attempts: Count = "ORCH_JOB_MAX_ATTEMPTS", "3", false, "attempts of one stage's job before the task is escalated";
    /// Tries of acting on one webhook delivery before it is given up.
    delivery_max_attempts: Count = "ORCH_DELIVERY_MAX_ATTEMPTS", "5", false, "tries of acting on one webhook delivery (the receiver's, then each reconcile replay) before it is given up, recorded given_up with its last error and announced once";
    /// Connect timeout of every remote call.
    http_connect_timeout_s: PositiveSeconds = "ORCH_HTTP_CONNECT_TIMEOUT_S", "5", false, "connect timeout of every Plane, Gitea and Telegram call, in seconds";
    /// Whole-request timeout of every remote call.
    http_timeout_s: PositiveSeconds = "ORCH_HTTP_TIMEOUT_S", "20", false, "whole-request timeout of every Plane, Gitea and Telegram call, in seconds";
    /// The most pages one listing reads.
    list_max_pages: Count = "ORCH_LIST_MAX_PAGES", "1000", false, "pages one listing (Plane work items or states, Gitea pull requests or CI statuses) reads at most; past it the listing stops and the pass exits 2";
    /// The deadline of every pass.
    pass_deadline_s: PositiveSeconds = "ORCH_PASS_DEADLINE_S", "240", false, "a pass stops between items after this many seconds, records what it did and exits 2 (below the units' TimeoutStartSec=)";
    /// How long a pass's lease across hosts lasts unless renewed (PostgreSQL).
    pass_lease_ttl_s: PositiveSeconds = "ORCH_PASS_LEASE_TTL_S", "300", false, "under PostgreSQL, reconcile and post-deploy-tick hold a lease row so one host runs each at a time; it lapses this long after its last renewal (renewed between items once half has passed), so a host that died frees it by then";
    /// Log filter.
    log: LogFilter = "ORCH_LOG", "info", false, "log filter in RUST_LOG syntax (error, warn, info, debug, trace)";
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
    webhook_read_timeout_s: PositiveSeconds = "ORCH_WEBHOOK_READ_TIMEOUT_S", "10", false, "webhook-handle --stdio: seconds from the connection's start to receive the whole request, head and body, before answering 408";
    /// Head deadline of one webhook request (far shorter than the whole-request one).
    webhook_header_timeout_s: PositiveSeconds = "ORCH_WEBHOOK_HEADER_TIMEOUT_S", "2", false, "webhook-handle --stdio: seconds from the connection's start to receive the request head before answering 408 (slow clients give their slot back this fast)";
    /// The one request path the receiver answers.
    webhook_path: RequestPath = "ORCH_WEBHOOK_PATH", "/webhooks/plane", false, "webhook-handle --stdio: the only request path accepted (404 otherwise); the path the TLS proxy forwards";
    /// Whether `reap` runs at all.
    reaper_enabled: bool = "ORCH_REAPER_ENABLED", "true", false, "reap rescues jobs left running by dead processes (false: the pass writes nothing and says so)";
    /// How often the reap timer fires (documentation for the unit; the pass reads it for status).
    reaper_interval_s: PositiveSeconds = "ORCH_REAPER_INTERVAL_S", "60", false, "seconds between reap passes (the orch-reap.timer interval; dead-tick streaks count passes)";
    /// Consecutive dead passes before a job is flipped.
    reaper_dead_ticks: Count = "ORCH_REAPER_DEAD_TICKS", "3", false, "consecutive reap passes a job's process must be seen dead before it is flipped to failed";
    /// Backstop: the longest a job may run.
    reaper_max_running_s: PositiveSeconds = "ORCH_REAPER_MAX_RUNNING_S", "14400", false, "a job running longer than this is terminated (TERM, then KILL) and flipped to failed";
    /// Stall detection: how long a live agent's log may stay the same size.
    agent_stall_s: Seconds = "ORCH_AGENT_STALL_S", "900", false, "reap stops a running agent whose log has not grown for this many seconds (TERM, then KILL; reap reason stalled, a failed attempt); 0 switches it off";
    /// The spend cap of one task.
    task_budget: Amount = "ORCH_TASK_BUDGET", "", false, "spend cap of one task, a decimal in the currency agents report (e.g. 10 or 2.5); once a task's reported cost reaches it, dispatch escalates the task instead of starting its next job; empty: no cap";
    /// The token cap of one task.
    task_token_budget: OptionalCount = "ORCH_TASK_TOKEN_BUDGET", "", false, "token cap of one task (reported tokens in and out together); once reached, dispatch escalates the task instead of starting its next job; empty: no cap";
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

/// Renders `.env.example`: every setting with its meaning and default, in table order.
///
/// `ORCH_NOW` is written commented out: it pins the clock and has no place in production.
pub fn env_example() -> String {
    let mut out = String::from(
        "# orch settings: every ORCH_* variable with its default and meaning.\n\
         # systemd reads this file through EnvironmentFile=; the pipeline file's settings: map\n\
         # may set the same names (this file wins over it, flags win over both).\n\
         # Generated from src/config/settings.rs (SETTINGS); a test keeps the two equal.\n",
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

impl Settings {
    /// Checks what one setting's form cannot: `ORCH_HEARTBEAT_TIMEOUT_S` is at least 3
    /// heartbeat intervals, so one or two heartbeats lost (a slow database, a pause)
    /// never make a live job look dead.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `ORCH_HEARTBEAT_TIMEOUT_S`.
    pub fn check_heartbeats(&self) -> Result<(), ConfigError> {
        let (interval, timeout) = (
            self.heartbeat_interval_s.secs(),
            self.heartbeat_timeout_s.secs(),
        );
        if timeout < interval.saturating_mul(3) {
            return Err(ConfigError::new(
                "ORCH_HEARTBEAT_TIMEOUT_S",
                format!(
                    "{timeout} is less than 3 x ORCH_HEARTBEAT_INTERVAL_S ({interval}): expected at least {}",
                    interval.saturating_mul(3)
                ),
            ));
        }
        Ok(())
    }

    /// `ORCH_MAX_CONCURRENCY_PER_HOST`, if set.
    pub fn per_host_cap(&self) -> Option<u32> {
        self.max_concurrency_per_host
            .0
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// This host's id: `ORCH_HOST_ID`, else the machine id (`/etc/machine-id`), else
    /// the kernel's host name.
    pub fn host_id(&self) -> String {
        if let Some(id) = self
            .host_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            return id.to_string();
        }
        for path in ["/etc/machine-id", "/proc/sys/kernel/hostname"] {
            if let Ok(text) = std::fs::read_to_string(path) {
                let text = text.trim();
                if !text.is_empty() {
                    return text.to_string();
                }
            }
        }
        "localhost".to_string()
    }
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

    #[test]
    fn setting_names_are_unique() {
        let mut names: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }
}
