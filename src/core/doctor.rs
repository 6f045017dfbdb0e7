//! `orch doctor`'s judging: which probe result is `OK`, `WARN` or `FAIL`, what the line
//! says and, on a problem, the fix. The command probes (read-only) and hands the facts
//! here; nothing in this module does I/O.
//!
//! A `FAIL` is something that stops the pipeline working (a refused key, a missing
//! repository, a state meaning that resolves to no real state); a `WARN` works today but
//! degrades something or will bite later (an old Plane's `/issues/` paths, a low rate
//! budget, a database not created yet). Doctor exits 1 on any `FAIL`, 0 otherwise.

use serde::Serialize;

use crate::core::intake::{meaning_of, Meaning, PlaneState};
use crate::core::plane::{StateMatch, StateMeanings};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DoctorLevel {
    /// Works.
    #[serde(rename = "OK")]
    Ok,
    /// Works, degraded or with a risk; exit 0.
    #[serde(rename = "WARN")]
    Warn,
    /// Does not work; exit 1.
    #[serde(rename = "FAIL")]
    Fail,
}

impl DoctorLevel {
    /// Returns `OK`, `WARN` or `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            DoctorLevel::Ok => "OK",
            DoctorLevel::Warn => "WARN",
            DoctorLevel::Fail => "FAIL",
        }
    }
}

/// One line of doctor's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorCheck {
    /// The outcome.
    pub level: DoctorLevel,
    /// What was checked, e.g. `gitea.push[shop]`.
    pub check: String,
    /// What was found.
    pub detail: String,
    /// What to do about it (`None` on `OK`).
    pub fix: Option<String>,
}

impl DoctorCheck {
    /// A passed check.
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> DoctorCheck {
        DoctorCheck {
            level: DoctorLevel::Ok,
            check: check.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    /// A warning with its fix.
    pub fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> DoctorCheck {
        DoctorCheck {
            level: DoctorLevel::Warn,
            check: check.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failure with its fix.
    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> DoctorCheck {
        DoctorCheck {
            level: DoctorLevel::Fail,
            check: check.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl std::fmt::Display for DoctorCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {}: {}",
            self.level.as_str(),
            self.check,
            self.detail
        )?;
        match &self.fix {
            Some(fix) => write!(f, "; fix: {fix}"),
            None => Ok(()),
        }
    }
}

/// Returns whether any check failed (doctor's exit 1).
pub fn any_failed(checks: &[DoctorCheck]) -> bool {
    checks.iter().any(|c| c.level == DoctorLevel::Fail)
}

/// Returns how many checks came out at `level`.
pub fn count(checks: &[DoctorCheck], level: DoctorLevel) -> usize {
    checks.iter().filter(|c| c.level == level).count()
}

/// What one read-only call got: an HTTP status, or no answer at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reached {
    /// The server answered with this status.
    Answered(u16),
    /// No answer (connect error, timeout); the message says which.
    NoAnswer(String),
}

/// Judges Plane's first answer (a project's states): reachable, and the API key
/// accepted. A 404 here is the project's (judged by [`plane_states`]), not the key's.
pub fn plane_access(url: &str, first: &Reached) -> Vec<DoctorCheck> {
    match first {
        Reached::NoAnswer(why) => vec![DoctorCheck::fail(
            "plane.reachable",
            format!("no answer from {url}: {why}"),
            "check ORCH_PLANE_URL and that Plane is up and reachable from this host",
        )],
        Reached::Answered(status) => {
            let reachable = DoctorCheck::ok("plane.reachable", format!("{url} answered"));
            let key = match status {
                401 | 403 => DoctorCheck::fail(
                    "plane.api_key",
                    format!("the API key was refused (HTTP {status})"),
                    "set ORCH_PLANE_API_KEY to an API key (Plane: Profile settings, API tokens) of a member of the workspace in plane.workspace",
                ),
                500..=599 => DoctorCheck::fail(
                    "plane.api_key",
                    format!("Plane answered HTTP {status}"),
                    "look at Plane's logs; run doctor again once Plane answers",
                ),
                _ => DoctorCheck::ok("plane.api_key", "the API key is accepted"),
            };
            vec![reachable, key]
        }
    }
}

/// Which work-item paths a Plane answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkItemPaths {
    /// `/work-items/` (CE v1.1.0+).
    WorkItems,
    /// Only `/issues/` (CE v1.0.x and older).
    IssuesOnly,
    /// Neither answered (the project is not there for this key).
    Neither,
}

/// Judges the work-item path family.
pub fn plane_paths(paths: WorkItemPaths) -> DoctorCheck {
    match paths {
        WorkItemPaths::WorkItems => DoctorCheck::ok(
            "plane.paths",
            "work-items paths answer (Plane CE v1.1.0 or newer)",
        ),
        WorkItemPaths::IssuesOnly => DoctorCheck::warn(
            "plane.paths",
            "legacy Plane: only /issues/ paths answer (Plane CE v1.0.x or older); orch uses them",
            "nothing needed now; upgrade Plane to CE v1.1.0+ (see docs/versions.md), /issues/ paths may go away",
        ),
        WorkItemPaths::Neither => DoctorCheck::fail(
            "plane.paths",
            "neither /work-items/ nor /issues/ answered for the first project",
            "check projects[].plane_project_id and plane.workspace",
        ),
    }
}

/// Below this many requests left in Plane's minute, doctor warns.
pub const LOW_RATE_BUDGET: u32 = 10;

/// Judges Plane's rate-limit headers on its last answer.
pub fn plane_rate_limit(remaining: Option<u32>) -> DoctorCheck {
    match remaining {
        None => DoctorCheck::warn(
            "plane.rate_limit",
            "Plane sent no X-RateLimit-Remaining header",
            "check that no proxy in front of Plane strips X-RateLimit-* headers; reconcile paces its listing by them",
        ),
        Some(n) if n < LOW_RATE_BUDGET => DoctorCheck::warn(
            "plane.rate_limit",
            format!("only {n} requests left in this minute's budget"),
            "something else is spending this API key's budget (60 requests a minute by default): give orch a key of its own",
        ),
        Some(n) => DoctorCheck::ok(
            "plane.rate_limit",
            format!("X-RateLimit-Remaining: {n} requests left this minute"),
        ),
    }
}

/// Judges one project's states: the project found, and each meaning (start, approved,
/// rejected, cancel, blocked) resolvable to real states the way intake resolves them
/// ([`meaning_of`]): every configured name exists, every configured group holds a state
/// that carries the meaning, and no state carries two meanings (as `config check` says).
/// `states` is `None` when the project could not be read (`status` says why).
pub fn plane_states(
    project: &str,
    meanings: &StateMeanings,
    status: &Reached,
    states: Option<&[PlaneState]>,
) -> Vec<DoctorCheck> {
    let id = format!("plane.states[{project}]");
    let Some(states) = states else {
        let detail = match status {
            Reached::Answered(404) => "the project was not found in the workspace".to_string(),
            Reached::Answered(s) => format!("its states could not be read (HTTP {s})"),
            Reached::NoAnswer(why) => format!("its states could not be read: {why}"),
        };
        return vec![DoctorCheck::fail(
            id,
            detail,
            format!("check plane.workspace, projects[{project}].plane_project_id and that the API key's user is a member of the project"),
        )];
    };
    let mut out = Vec::new();
    for (meaning, matcher) in [
        (Meaning::Start, &meanings.start),
        (Meaning::Approved, &meanings.approved),
        (Meaning::Rejected, &meanings.rejected),
        (Meaning::Cancel, &meanings.cancel),
        (Meaning::Blocked, &meanings.blocked),
    ] {
        out.push(meaning_check(project, meanings, meaning, matcher, states));
    }
    for s in states {
        if let Err(both) = meaning_of(meanings, &s.name, &s.group) {
            let names: Vec<&str> = both.iter().map(|m| m.as_str()).collect();
            out.push(DoctorCheck::fail(
                format!("plane.states[{project}]"),
                format!(
                    "Plane state {:?} (group {}) matches {}",
                    s.name,
                    s.group,
                    names.join(" and ")
                ),
                format!("change projects[{project}].states so that a state carries one meaning"),
            ));
        }
    }
    out
}

fn meaning_check(
    project: &str,
    meanings: &StateMeanings,
    meaning: Meaning,
    matcher: &StateMatch,
    states: &[PlaneState],
) -> DoctorCheck {
    let key = meaning.as_str();
    let id = format!("plane.states[{project}].{key}");
    let fix = format!(
        "set projects[{project}].states.{key} to names or groups of the project's Plane states"
    );
    if matcher.names.is_empty() && matcher.groups.is_empty() {
        return match meaning {
            Meaning::Blocked => DoctorCheck::ok(id, "not configured (optional)"),
            _ => DoctorCheck::warn(
                id,
                format!("no Plane state is configured to mean {key}: nobody can make that move from Plane"),
                fix,
            ),
        };
    }
    let missing: Vec<&str> = matcher
        .names
        .iter()
        .filter(|n| {
            !states
                .iter()
                .any(|s| s.name.trim().eq_ignore_ascii_case(n.trim()))
        })
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        let known: Vec<&str> = states.iter().map(|s| s.name.as_str()).collect();
        return DoctorCheck::fail(
            id,
            format!(
                "state name {} not found in Plane (its states: {})",
                quoted(&missing),
                known.join(", ")
            ),
            fix,
        );
    }
    let resolved: Vec<&str> = states
        .iter()
        .filter(|s| meaning_of(meanings, &s.name, &s.group) == Ok(Some(meaning)))
        .map(|s| s.name.as_str())
        .collect();
    if resolved.is_empty() {
        return DoctorCheck::fail(
            id,
            format!(
                "no Plane state means {key} (groups {} hold none that another meaning does not take)",
                matcher.groups.join(", ")
            ),
            fix,
        );
    }
    DoctorCheck::ok(id, format!("resolves to {}", resolved.join(", ")))
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Judges whether the webhook secret is set (webhook-handle refuses to run without it).
pub fn webhook_secret(set: bool) -> DoctorCheck {
    if set {
        DoctorCheck::ok("plane.webhook_secret", "ORCH_PLANE_WEBHOOK_SECRET is set")
    } else {
        DoctorCheck::fail(
            "plane.webhook_secret",
            "ORCH_PLANE_WEBHOOK_SECRET is not set: webhook-handle refuses every delivery",
            "copy the secret Plane shows for the webhook (plane_wh_...) into ORCH_PLANE_WEBHOOK_SECRET",
        )
    }
}

/// Judges Gitea's `GET /user` answer: reachable, and the token accepted.
pub fn gitea_access(url: &str, user: &Reached, login: Option<&str>) -> Vec<DoctorCheck> {
    match user {
        Reached::NoAnswer(why) => vec![DoctorCheck::fail(
            "gitea.reachable",
            format!("no answer from {url}: {why}"),
            "check ORCH_GITEA_URL and that Gitea is up and reachable from this host",
        )],
        Reached::Answered(status) => {
            let reachable = DoctorCheck::ok("gitea.reachable", format!("{url} answered"));
            let token = match status {
                200 => DoctorCheck::ok(
                    "gitea.token",
                    format!("the token is accepted (user {})", login.unwrap_or("?")),
                ),
                401 | 403 => DoctorCheck::fail(
                    "gitea.token",
                    format!("the token was refused (HTTP {status})"),
                    "set ORCH_GITEA_TOKEN to an access token (Gitea: Settings, Applications) with the repository and user scopes",
                ),
                s => DoctorCheck::fail(
                    "gitea.token",
                    format!("GET /api/v1/user answered HTTP {s}"),
                    "check ORCH_GITEA_URL points at Gitea's root (orch adds /api/v1)",
                ),
            };
            vec![reachable, token]
        }
    }
}

/// Judges `GET /version`: Gitea `1.22.3`, Forgejo `9.0.1+gitea-1.22.0`.
pub fn gitea_version(version: Option<&str>) -> DoctorCheck {
    let Some(v) = version.map(str::trim).filter(|v| !v.is_empty()) else {
        return DoctorCheck::warn(
            "gitea.version",
            "the server did not say its version",
            "check ORCH_GITEA_URL points at Gitea or Forgejo",
        );
    };
    let (forgejo, numbers) = match v.split_once("+gitea-") {
        Some((own, _)) => (true, own),
        None => (false, v),
    };
    let mut parts = numbers
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().flatten(), parts.next().flatten());
    let supported = match (forgejo, major, minor) {
        (true, Some(m), _) => (7..=12).contains(&m),
        (false, Some(1), Some(n)) => (21..=26).contains(&n),
        _ => false,
    };
    let name = if forgejo { "Forgejo" } else { "Gitea" };
    if supported {
        DoctorCheck::ok("gitea.version", format!("{name} {v}"))
    } else {
        DoctorCheck::warn(
            "gitea.version",
            format!("{name} {v} is outside the versions orch is tested against"),
            "see docs/versions.md (Gitea 1.21 to 1.26, Forgejo v7 to v12)",
        )
    }
}

/// What doctor read about one project's repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFacts {
    /// `GET /repos/{owner}/{name}`.
    pub reached: Reached,
    /// The repository's own default branch (when found).
    pub gitea_default_branch: Option<String>,
    /// `permissions.push` of the token's user.
    pub push: bool,
    /// `allow_merge_commits` (orch merges with style `merge`).
    pub allow_merge_commits: bool,
    /// `archived`.
    pub archived: bool,
    /// Whether the configured default branch exists (`None`: not asked).
    pub branch_exists: Option<bool>,
}

/// Judges a project's repository: present, its configured default branch present,
/// push permission for the token, the merge style orch uses (`merge`) allowed.
pub fn gitea_repo(project: &str, repo: &str, branch: &str, facts: &RepoFacts) -> Vec<DoctorCheck> {
    let id = |what: &str| format!("gitea.{what}[{project}]");
    match &facts.reached {
        Reached::Answered(200) => {}
        Reached::Answered(404) => {
            return vec![DoctorCheck::fail(
                id("repo"),
                format!("{repo} not found (or the token's user cannot see it)"),
                format!("check projects[{project}].repo (owner/name) and give the token's user access to it"),
            )]
        }
        Reached::Answered(s) => {
            return vec![DoctorCheck::fail(
                id("repo"),
                format!("{repo} could not be read (HTTP {s})"),
                "check the token's scopes (read:repository, write:repository)",
            )]
        }
        Reached::NoAnswer(why) => {
            return vec![DoctorCheck::fail(
                id("repo"),
                format!("{repo} could not be read: {why}"),
                "run doctor again once Gitea answers",
            )]
        }
    }
    let mut out = Vec::new();
    out.push(if facts.archived {
        DoctorCheck::fail(
            id("repo"),
            format!("{repo} is archived: every push and merge is refused"),
            "unarchive it, or point projects[].repo at the live repository",
        )
    } else {
        DoctorCheck::ok(id("repo"), format!("{repo} found"))
    });
    out.push(match facts.branch_exists {
        Some(true) => DoctorCheck::ok(id("branch"), format!("{repo} has {branch}")),
        _ => DoctorCheck::fail(
            id("branch"),
            format!(
                "{repo} has no branch {branch} (its default is {})",
                facts.gitea_default_branch.as_deref().unwrap_or("unknown")
            ),
            format!("set projects[{project}].default_branch to the branch tasks merge into"),
        ),
    });
    out.push(if facts.push {
        DoctorCheck::ok(id("push"), "the token may push (permissions.push)")
    } else {
        DoctorCheck::fail(
            id("push"),
            format!("the token's user cannot push to {repo} (permissions.push is false)"),
            format!(
                "give the token's user write access to {repo} (collaborator or team with write)"
            ),
        )
    });
    out.push(if facts.allow_merge_commits {
        DoctorCheck::ok(id("merge_style"), "merge commits are allowed")
    } else {
        DoctorCheck::fail(
            id("merge_style"),
            format!("{repo} does not allow merge commits; merge-guard merges with style merge"),
            "enable \"Create merge commit\" in the repository's settings (Pull requests, merge styles)",
        )
    });
    out
}

/// Judges compare by SHA (`compare/{branch}...{its tip SHA}`): `Some(true)` 200,
/// `Some(false)` 404, `None` not asked (no repository could be read).
pub fn compare_by_sha(supported: Option<bool>) -> DoctorCheck {
    match supported {
        Some(true) => DoctorCheck::ok("gitea.compare_by_sha", "compare accepts commit SHAs"),
        Some(false) => DoctorCheck::warn(
            "gitea.compare_by_sha",
            "compare refuses commit SHAs (Gitea 1.22.x or older, Forgejo v8 or older): orch counts a PR's commits from its commit list instead",
            "nothing needed; upgrading to Gitea 1.23+ or Forgejo v9+ saves that request (docs/versions.md)",
        ),
        None => DoctorCheck::warn(
            "gitea.compare_by_sha",
            "not checked: no repository branch could be read",
            "fix the repository checks above, then run doctor again",
        ),
    }
}

/// What the Telegram settings are and what `getMe` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelegramFacts {
    /// No bot token: notifications are off.
    NotSet,
    /// A bot token without a chat id (or the reverse): nothing is sent.
    Half,
    /// `getMe` answered for this bot username.
    Valid(String),
    /// `getMe` refused the token, with Telegram's description.
    Refused(String),
    /// The Bot API answered 429 or 5xx: busy, the token not judged.
    Busy(String),
    /// No answer from the Bot API (or one that is not the Bot API's).
    NoAnswer(String),
}

/// Judges the Telegram token.
pub fn telegram(facts: &TelegramFacts) -> DoctorCheck {
    let id = "telegram.token";
    match facts {
        TelegramFacts::NotSet => DoctorCheck::ok(id, "not set: notifications are off"),
        TelegramFacts::Half => DoctorCheck::warn(
            id,
            "only one of ORCH_TELEGRAM_BOT_TOKEN and ORCH_TELEGRAM_CHAT_ID is set: nothing is sent",
            "set both, or neither",
        ),
        TelegramFacts::Valid(bot) => {
            DoctorCheck::ok(id, format!("the bot token is valid (@{bot})"))
        }
        TelegramFacts::Refused(why) => DoctorCheck::fail(
            id,
            format!("the bot token was refused: {why}"),
            "set ORCH_TELEGRAM_BOT_TOKEN to the token @BotFather gave",
        ),
        TelegramFacts::Busy(why) => DoctorCheck::warn(
            id,
            format!("the Bot API is busy ({why}): the token was not judged"),
            "run orch doctor again in a minute",
        ),
        TelegramFacts::NoAnswer(why) => DoctorCheck::fail(
            id,
            format!("no answer from the Bot API: {why}"),
            "check ORCH_TELEGRAM_API_URL and this host's access to it",
        ),
    }
}

/// What doctor found about the database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbFacts {
    /// No file yet.
    Missing,
    /// It could not be opened or written: why.
    Unusable(String),
    /// Opened and writable, at this schema version (orch knows up to `latest`).
    Ready {
        /// The file's schema version.
        schema: i64,
        /// The newest this orch knows.
        latest: i64,
    },
}

/// Judges the database.
pub fn database(path: &str, facts: &DbFacts) -> DoctorCheck {
    let id = "local.db";
    match facts {
        DbFacts::Missing => DoctorCheck::fail(
            id,
            format!("{path} does not exist (or, on PostgreSQL, has no orch schema)"),
            "run orch init: every other command refuses a missing database (check ORCH_DB)",
        ),
        DbFacts::Unusable(why) => DoctorCheck::fail(
            id,
            format!("{path}: {why}"),
            "make the file and its directory writable by the user orch runs as (ORCH_DB, --db)",
        ),
        DbFacts::Ready { schema, latest } if schema < latest => DoctorCheck::warn(
            id,
            format!("{path} is at schema version {schema}, this orch's is {latest}"),
            "run orch init to upgrade it (the next pass would too)",
        ),
        DbFacts::Ready { schema, .. } => {
            DoctorCheck::ok(id, format!("{path} is writable, schema version {schema}"))
        }
    }
}

/// Judges a directory orch writes to (`local.state_dir`, `local.locks`): `Ok(true)`
/// writable, `Ok(false)` missing, `Err` not writable.
pub fn directory(id: &str, path: &str, facts: &Result<bool, String>) -> DoctorCheck {
    match facts {
        Ok(true) => DoctorCheck::ok(id, format!("{path} is writable")),
        Ok(false) => DoctorCheck::warn(
            id,
            format!("{path} does not exist yet"),
            "run orch init (passes create it too)",
        ),
        Err(why) => DoctorCheck::fail(
            id,
            format!("{path}: {why}"),
            "make it writable by the user orch runs as (ORCH_STATE_DIR, --state-dir)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, group: &str) -> PlaneState {
        PlaneState {
            id: format!("id-{name}"),
            name: name.into(),
            group: group.into(),
        }
    }

    fn names(ns: &[&str]) -> StateMatch {
        StateMatch {
            names: ns.iter().map(|n| (*n).to_string()).collect(),
            groups: vec![],
        }
    }

    fn levels(checks: &[DoctorCheck]) -> Vec<(String, DoctorLevel)> {
        checks.iter().map(|c| (c.check.clone(), c.level)).collect()
    }

    #[test]
    fn plane_access_by_answer() {
        use DoctorLevel::{Fail, Ok};
        let table: [(Reached, Vec<(&str, DoctorLevel)>); 5] = [
            (
                Reached::Answered(200),
                vec![("plane.reachable", Ok), ("plane.api_key", Ok)],
            ),
            (
                Reached::Answered(404),
                vec![("plane.reachable", Ok), ("plane.api_key", Ok)],
            ),
            (
                Reached::Answered(401),
                vec![("plane.reachable", Ok), ("plane.api_key", Fail)],
            ),
            (
                Reached::Answered(403),
                vec![("plane.reachable", Ok), ("plane.api_key", Fail)],
            ),
            (
                Reached::NoAnswer("could not connect".into()),
                vec![("plane.reachable", Fail)],
            ),
        ];
        for (reached, want) in table {
            let got = plane_access("http://p", &reached);
            let want: Vec<(String, DoctorLevel)> =
                want.into_iter().map(|(c, l)| (c.to_string(), l)).collect();
            assert_eq!(levels(&got), want, "{reached:?}");
            for c in got.iter().filter(|c| c.level != DoctorLevel::Ok) {
                assert!(c.fix.is_some(), "a problem names its fix: {c}");
            }
        }
    }

    #[test]
    fn paths_rate_limit_and_secret() {
        assert_eq!(plane_paths(WorkItemPaths::WorkItems).level, DoctorLevel::Ok);
        let legacy = plane_paths(WorkItemPaths::IssuesOnly);
        assert_eq!(legacy.level, DoctorLevel::Warn);
        assert!(legacy.detail.contains("legacy Plane"), "{legacy}");
        assert_eq!(plane_paths(WorkItemPaths::Neither).level, DoctorLevel::Fail);
        assert_eq!(plane_rate_limit(None).level, DoctorLevel::Warn);
        assert_eq!(plane_rate_limit(Some(9)).level, DoctorLevel::Warn);
        assert_eq!(plane_rate_limit(Some(10)).level, DoctorLevel::Ok);
        assert_eq!(webhook_secret(true).level, DoctorLevel::Ok);
        assert_eq!(webhook_secret(false).level, DoctorLevel::Fail);
    }

    #[test]
    fn every_meaning_must_resolve_to_a_real_state() {
        let states = [
            state("In Progress", "started"),
            state("Approved", "unstarted"),
            state("Blocked", "started"),
            state("Cancelled", "cancelled"),
        ];
        let good = StateMeanings {
            approved: names(&["approved"]),
            rejected: names(&["In Progress"]),
            blocked: names(&["Blocked"]),
            ..StateMeanings::default()
        };
        // Both `started` states are taken by name (rejected, blocked), and a name match
        // wins over a group match: start (group `started`) resolves to no state.
        let got = plane_states("shop", &good, &Reached::Answered(200), Some(&states));
        let by = |id: &str| got.iter().find(|c| c.check == id).unwrap().level;
        assert_eq!(by("plane.states[shop].start"), DoctorLevel::Fail);
        assert_eq!(by("plane.states[shop].approved"), DoctorLevel::Ok);
        assert_eq!(by("plane.states[shop].rejected"), DoctorLevel::Ok);
        assert_eq!(by("plane.states[shop].cancel"), DoctorLevel::Ok);
        assert_eq!(by("plane.states[shop].blocked"), DoctorLevel::Ok);

        let table: [(StateMeanings, &str, DoctorLevel, &str); 5] = [
            (
                StateMeanings {
                    approved: names(&["Aproved"]),
                    rejected: names(&["Cancelled"]),
                    ..StateMeanings::default()
                },
                "approved",
                DoctorLevel::Fail,
                "\"Aproved\" not found",
            ),
            (
                StateMeanings::default(),
                "approved",
                DoctorLevel::Warn,
                "no Plane state is configured",
            ),
            (
                StateMeanings::default(),
                "blocked",
                DoctorLevel::Ok,
                "optional",
            ),
            (
                StateMeanings::default(),
                "start",
                DoctorLevel::Ok,
                "In Progress, Blocked",
            ),
            (
                StateMeanings {
                    cancel: StateMatch {
                        names: vec![],
                        groups: vec!["completed".into()],
                    },
                    ..StateMeanings::default()
                },
                "cancel",
                DoctorLevel::Fail,
                "no Plane state means cancel",
            ),
        ];
        for (meanings, key, level, text) in table {
            let got = plane_states("shop", &meanings, &Reached::Answered(200), Some(&states));
            let c = got
                .iter()
                .find(|c| c.check == format!("plane.states[shop].{key}"))
                .unwrap();
            assert_eq!(c.level, level, "{c}");
            assert!(c.to_string().contains(text), "{c}");
        }
    }

    #[test]
    fn a_state_with_two_meanings_fails_like_config_check() {
        let states = [state("Review", "started")];
        let m = StateMeanings {
            approved: names(&["Review"]),
            rejected: names(&["review"]),
            ..StateMeanings::default()
        };
        let got = plane_states("shop", &m, &Reached::Answered(200), Some(&states));
        assert!(got
            .iter()
            .any(|c| c.level == DoctorLevel::Fail && c.detail.contains("approved and rejected")));
    }

    #[test]
    fn an_unreadable_project_fails_once() {
        let got = plane_states(
            "shop",
            &StateMeanings::default(),
            &Reached::Answered(404),
            None,
        );
        assert_eq!(
            levels(&got),
            [("plane.states[shop]".into(), DoctorLevel::Fail)]
        );
        assert!(got[0].detail.contains("not found"));
    }

    #[test]
    fn gitea_token_and_version() {
        let ok = gitea_access("http://g", &Reached::Answered(200), Some("bot"));
        assert!(ok.iter().all(|c| c.level == DoctorLevel::Ok));
        let bad = gitea_access("http://g", &Reached::Answered(401), None);
        assert_eq!(bad[1].level, DoctorLevel::Fail);
        assert!(bad[1].fix.as_deref().unwrap().contains("ORCH_GITEA_TOKEN"));
        let down = gitea_access("http://g", &Reached::NoAnswer("timed out".into()), None);
        assert_eq!(
            levels(&down),
            [("gitea.reachable".into(), DoctorLevel::Fail)]
        );
        for (v, level) in [
            (Some("1.25.2"), DoctorLevel::Ok),
            (Some("1.21.0"), DoctorLevel::Ok),
            (Some("1.20.6"), DoctorLevel::Warn),
            (Some("9.0.3+gitea-1.22.0"), DoctorLevel::Ok),
            (Some("6.0.0+gitea-1.21.0"), DoctorLevel::Warn),
            (Some("garbage"), DoctorLevel::Warn),
            (None, DoctorLevel::Warn),
        ] {
            assert_eq!(gitea_version(v).level, level, "{v:?}");
        }
        assert!(gitea_version(Some("9.0.3+gitea-1.22.0"))
            .detail
            .starts_with("Forgejo"));
    }

    #[test]
    fn repository_checks() {
        let good = RepoFacts {
            reached: Reached::Answered(200),
            gitea_default_branch: Some("main".into()),
            push: true,
            allow_merge_commits: true,
            archived: false,
            branch_exists: Some(true),
        };
        let all = gitea_repo("shop", "acme/shop", "main", &good);
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|c| c.level == DoctorLevel::Ok));
        let table = [
            (
                RepoFacts {
                    push: false,
                    ..good.clone()
                },
                "gitea.push[shop]",
                "write access",
            ),
            (
                RepoFacts {
                    allow_merge_commits: false,
                    ..good.clone()
                },
                "gitea.merge_style[shop]",
                "Create merge commit",
            ),
            (
                RepoFacts {
                    branch_exists: Some(false),
                    ..good.clone()
                },
                "gitea.branch[shop]",
                "default_branch",
            ),
            (
                RepoFacts {
                    archived: true,
                    ..good.clone()
                },
                "gitea.repo[shop]",
                "unarchive",
            ),
            (
                RepoFacts {
                    reached: Reached::Answered(404),
                    ..good.clone()
                },
                "gitea.repo[shop]",
                "projects[shop].repo",
            ),
        ];
        for (facts, id, fix) in table {
            let got = gitea_repo("shop", "acme/shop", "main", &facts);
            let c = got.iter().find(|c| c.level == DoctorLevel::Fail).unwrap();
            assert_eq!(c.check, id);
            assert!(c.fix.as_deref().unwrap().contains(fix), "{c}");
            assert_eq!(
                got.iter().filter(|c| c.level == DoctorLevel::Fail).count(),
                1
            );
        }
    }

    #[test]
    fn compare_telegram_and_local() {
        assert_eq!(compare_by_sha(Some(true)).level, DoctorLevel::Ok);
        assert_eq!(compare_by_sha(Some(false)).level, DoctorLevel::Warn);
        assert_eq!(compare_by_sha(None).level, DoctorLevel::Warn);
        for (f, level) in [
            (TelegramFacts::NotSet, DoctorLevel::Ok),
            (TelegramFacts::Half, DoctorLevel::Warn),
            (TelegramFacts::Valid("b".into()), DoctorLevel::Ok),
            (
                TelegramFacts::Refused("Unauthorized".into()),
                DoctorLevel::Fail,
            ),
            (
                TelegramFacts::Busy("Too Many Requests".into()),
                DoctorLevel::Warn,
            ),
            (TelegramFacts::NoAnswer("x".into()), DoctorLevel::Fail),
        ] {
            assert_eq!(telegram(&f).level, level, "{f:?}");
        }
        assert_eq!(database("d", &DbFacts::Missing).level, DoctorLevel::Fail);
        assert_eq!(
            database("d", &DbFacts::Unusable("read-only".into())).level,
            DoctorLevel::Fail
        );
        assert_eq!(
            database(
                "d",
                &DbFacts::Ready {
                    schema: 3,
                    latest: 4
                }
            )
            .level,
            DoctorLevel::Warn
        );
        assert_eq!(
            database(
                "d",
                &DbFacts::Ready {
                    schema: 4,
                    latest: 4
                }
            )
            .level,
            DoctorLevel::Ok
        );
        assert_eq!(directory("x", "p", &Ok(true)).level, DoctorLevel::Ok);
        assert_eq!(directory("x", "p", &Ok(false)).level, DoctorLevel::Warn);
        assert_eq!(
            directory("x", "p", &Err("denied".into())).level,
            DoctorLevel::Fail
        );
    }

    #[test]
    fn a_line_is_level_check_detail_and_fix() {
        let c = DoctorCheck::fail("gitea.push[shop]", "cannot push", "grant write");
        assert_eq!(
            c.to_string(),
            "FAIL gitea.push[shop]: cannot push; fix: grant write"
        );
        assert_eq!(
            DoctorCheck::ok("plane.paths", "fine").to_string(),
            "OK   plane.paths: fine"
        );
        let checks = [c, DoctorCheck::warn("a", "b", "c")];
        assert!(any_failed(&checks));
        assert!(!any_failed(&checks[1..]));
        assert_eq!(count(&checks, DoctorLevel::Warn), 1);
    }
}
