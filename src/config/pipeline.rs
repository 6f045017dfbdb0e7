//! The pipeline file (projects, agents, staging checks): its YAML shape and its
//! validation into [`Pipeline`], each error naming the key path.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use crate::config::settings::parse_http_url;
use crate::config::ConfigError;
use crate::core::plane::{Project, StateMeanings, PLANE_STATE_GROUPS};
use crate::core::stage::Agent;
use crate::core::staging_check::{parse_checks, CheckDef};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    plane: Option<RawPlane>,
    #[serde(default)]
    projects: Vec<RawProject>,
    #[serde(default)]
    agents: BTreeMap<String, RawAgent>,
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
    #[serde(default)]
    clone_url: Option<String>,
}

fn default_branch() -> String {
    "main".into()
}

/// An agent: its argv alone, or its argv with what its environment is granted.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAgent {
    Argv(Vec<String>),
    Granted(RawGrantedAgent),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrantedAgent {
    command: Vec<String>,
    #[serde(default)]
    credentials: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
}

/// A credential an agent may be granted (`agents.<name>.credentials`): the one setting
/// it puts in the agent's environment. The production webhook secret and the Telegram
/// token are never grantable (docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// `ORCH_PLANE_API_KEY`: read and write work items (the round trip's sandbox states).
    Plane,
    /// `ORCH_GITEA_TOKEN`: read PRs, merge (staging-check's pin, merge-guard --merge).
    Gitea,
    /// `ORCH_STAGING_WEBHOOK_SECRET`: sign staging-check's synthetic round-trip delivery.
    StagingWebhook,
}

impl Credential {
    /// Every credential with its pipeline-file name.
    pub const ALL: [(&'static str, Credential); 3] = [
        ("plane", Credential::Plane),
        ("gitea", Credential::Gitea),
        ("staging_webhook", Credential::StagingWebhook),
    ];

    /// The setting it grants.
    pub fn setting(self) -> &'static str {
        match self {
            Credential::Plane => "ORCH_PLANE_API_KEY",
            Credential::Gitea => "ORCH_GITEA_TOKEN",
            Credential::StagingWebhook => "ORCH_STAGING_WEBHOOK_SECRET",
        }
    }
}

/// What an agent's environment is granted beyond the allowlist run-job builds it from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AgentGrants {
    /// Credentials (settings that are secrets) it receives.
    pub credentials: Vec<Credential>,
    /// Further variables passed on from run-job's environment (an LLM API key, say).
    pub env: Vec<String>,
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
    /// What each agent's environment is granted (absent: nothing beyond the allowlist).
    pub grants: BTreeMap<String, AgentGrants>,
    /// The staging checks, typed once here by `core::staging_check`'s schema.
    #[serde(skip)]
    pub staging_checks: Vec<CheckDef>,
    /// Where each project's repository is cloned from for its tasks' workspaces, by
    /// project name (`projects[].clone_url`; a project without one gets no workspace).
    pub clone_urls: BTreeMap<String, CloneUrl>,
}

/// How a workspace's repository is reached (`projects[].clone_url`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloneKind {
    /// `https://host/owner/name.git` (or `http://` on a loopback host): git asks for
    /// credentials, answered from `ORCH_GITEA_TOKEN`.
    Https,
    /// `ssh://user@host/path` or `user@host:path`: the supervisor's own ssh keys.
    Ssh,
    /// An absolute path or a `file://` URL on this machine.
    Local,
}

/// A validated clone URL: what git is given, and its kind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CloneUrl {
    /// The URL or path exactly as git receives it (never holding a password).
    pub url: String,
    /// How it is reached.
    pub kind: CloneKind,
}

/// Validates a `clone_url`: an https URL (http only on a loopback host), an ssh URL
/// (`ssh://` or `user@host:path`), an absolute path or a `file://` URL. No password in
/// it (a secret on disk, in `.git/config` and in logs), nothing git could read as an
/// option.
///
/// # Errors
/// The message for the key `projects[i].clone_url`.
pub fn parse_clone_url(text: &str) -> Result<CloneUrl, String> {
    const FORMS: &str = "expected an https URL (https://gitea.example.com/owner/name.git), an ssh URL (ssh://git@host/owner/name.git or git@host:owner/name.git), an absolute path or a file:// URL";
    let bad = |why: &str| Err(format!("{why}; {FORMS}, got {text:?}"));
    if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("empty or holding spaces or control characters");
    }
    if text.starts_with('-') {
        return bad("starts with '-', which git would read as an option");
    }
    let done = |kind| {
        Ok(CloneUrl {
            url: text.to_string(),
            kind,
        })
    };
    if text.starts_with('/') {
        return done(CloneKind::Local);
    }
    if let Some((scheme, _)) = text.split_once("://") {
        let Ok(url) = Url::parse(text) else {
            return bad("not a valid URL");
        };
        if url.password().is_some() {
            return bad("a password in the URL would be written to disk (the token comes from ORCH_GITEA_TOKEN)");
        }
        let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        return match scheme.to_ascii_lowercase().as_str() {
            "https" if url.host().is_some() => done(CloneKind::Https),
            "http" if loopback => done(CloneKind::Https),
            "http" => bad("plain http only on a loopback host (the token would travel in clear)"),
            "ssh" if url.host().is_some() => done(CloneKind::Ssh),
            "file" if url.host().is_none() && url.path().starts_with('/') => done(CloneKind::Local),
            _ => bad("unsupported scheme or no host"),
        };
    }
    // scp-like ssh: [user@]host:path, the host before any '/'.
    if let Some((host, path)) = text.split_once(':') {
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if host_ok && !path.is_empty() && !host.contains('/') {
            return done(CloneKind::Ssh);
        }
    }
    bad("neither a URL nor an absolute path")
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

    /// Returns where `project`'s tasks' workspaces are cloned from, if it has one.
    pub fn clone_url(&self, project: &str) -> Option<&CloneUrl> {
        self.clone_urls.get(project)
    }

    /// Returns what `agent`'s environment is granted.
    pub fn agent_grants(&self, agent: Agent) -> AgentGrants {
        self.grants.get(agent.as_str()).cloned().unwrap_or_default()
    }
}

/// The placeholders an agent argv template may use.
/// `{workspace}` is the task's working copy, empty for a project without `clone_url`;
/// `{feedback}` the newest feedback file of a developer sent back, empty otherwise.
pub const AGENT_PLACEHOLDERS: &[&str] = &[
    "task",
    "job",
    "branch",
    "repo",
    "artefacts",
    "workspace",
    "feedback",
];

pub(super) fn parse_pipeline(
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
    let mut clone_urls = BTreeMap::new();
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
        if let Some(text) = &p.clone_url {
            let url = parse_clone_url(text).map_err(|m| ConfigError::new(at("clone_url"), m))?;
            clone_urls.insert(p.name.clone(), url);
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
    let mut agents = BTreeMap::new();
    let mut grants = BTreeMap::new();
    for (agent, raw_agent) in raw.agents {
        let key = format!("agents.{agent}");
        let argv = match raw_agent {
            RawAgent::Argv(argv) => argv,
            RawAgent::Granted(g) => {
                grants.insert(agent.clone(), parse_grants(&key, &g)?);
                g.command
            }
        };
        if Agent::parse(&agent).is_none() {
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
        for arg in &argv {
            check_placeholders(arg).map_err(|m| ConfigError::new(key.clone(), m))?;
        }
        agents.insert(agent, argv);
    }
    let names: Vec<&str> = projects.iter().map(|p| p.name.as_str()).collect();
    let staging_checks = parse_checks(&raw.staging.map(|s| s.checks).unwrap_or_default(), &names)
        .map_err(|e| ConfigError::new(e.key, e.message))?;
    Ok(Pipeline {
        path: None,
        plane_workspace,
        projects,
        agents,
        grants,
        staging_checks,
        clone_urls,
    })
}

/// Validates an agent's `credentials` and `env` lists.
fn parse_grants(key: &str, g: &RawGrantedAgent) -> Result<AgentGrants, ConfigError> {
    let mut credentials = Vec::new();
    for name in &g.credentials {
        let Some((_, c)) = Credential::ALL.iter().find(|(n, _)| n == name) else {
            return Err(ConfigError::new(
                format!("{key}.credentials"),
                format!(
                    "unknown credential {name:?}; expected plane, gitea or staging_webhook (the production webhook secret and the Telegram token are never given to an agent)"
                ),
            ));
        };
        if !credentials.contains(c) {
            credentials.push(*c);
        }
    }
    for name in &g.env {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ConfigError::new(
                format!("{key}.env"),
                format!("expected an environment variable name, got {name:?}"),
            ));
        }
        if name.starts_with("ORCH_") {
            return Err(ConfigError::new(
                format!("{key}.env"),
                format!(
                    "{name}: ORCH_* settings reach an agent on their own when they are not secret, and secrets only through credentials"
                ),
            ));
        }
    }
    Ok(AgentGrants {
        credentials,
        env: g.env.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Layers};

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
            (
                "    repo: acme/orch",
                "    repo: acme/orch\n    clone_url: ftp://example.com/x.git",
                "projects[0].clone_url",
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
    fn an_agent_is_granted_only_known_credentials_and_plain_names() {
        let granted = GOOD.replace(
            "analyst: [openclaw, agent, --task, \"{task}\"]",
            "analyst: { command: [openclaw, \"{task}\"], credentials: [gitea, plane, gitea], env: [LLM_API_KEY] }\n  deployer: [deploy]",
        );
        let c = Config::from_parts(Some(&granted), None, Layers::default()).unwrap();
        let p = &c.pipeline;
        assert_eq!(
            p.agent_argv(Agent::Analyst).unwrap(),
            ["openclaw", "{task}"]
        );
        let g = p.agent_grants(Agent::Analyst);
        assert_eq!(g.credentials, [Credential::Gitea, Credential::Plane]);
        assert_eq!(g.env, ["LLM_API_KEY"]);
        assert_eq!(p.agent_grants(Agent::Deployer), AgentGrants::default());
        let cases = [
            (
                "credentials: [gitea, plane, gitea]",
                "credentials: [webhook]",
                "agents.analyst.credentials",
            ),
            (
                "credentials: [gitea, plane, gitea]",
                "credentials: [telegram]",
                "agents.analyst.credentials",
            ),
            (
                "env: [LLM_API_KEY]",
                "env: [ORCH_PLANE_WEBHOOK_SECRET]",
                "agents.analyst.env",
            ),
            ("env: [LLM_API_KEY]", "env: [\"A=B\"]", "agents.analyst.env"),
            (
                "command: [openclaw, \"{task}\"]",
                "command: []",
                "agents.analyst",
            ),
            ("env: [LLM_API_KEY]", "env: [A], colour: red", "agents"),
        ];
        for (from, to, key) in cases {
            let text = granted.replace(from, to);
            assert_ne!(text, granted, "case {to} did not change the text");
            let got = err_key(Some(&text), Layers::default());
            assert!(got.starts_with(key), "{to}: expected key {key}, got {got}");
        }
    }

    #[test]
    fn staging_checks_are_typed_at_load() {
        let text = format!(
            "{GOOD}staging:\n  checks:\n    - {{ id: C1, name: health, kind: http, url: \"http://127.0.0.1:9/health\" }}\n"
        );
        let c = Config::from_parts(Some(&text), None, Layers::default()).unwrap();
        let check = &c.pipeline.staging_checks[0];
        assert_eq!((check.id.as_str(), check.kind.as_str()), ("C1", "http"));
        let bad = text.replace("kind: http", "kind: ping");
        let got = err_key(Some(&bad), Layers::default());
        assert_eq!(got, "staging.checks[0].kind");
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
    fn clone_urls_take_four_forms_and_no_password() {
        let good = [
            ("https://gitea.example.com/acme/shop.git", CloneKind::Https),
            ("http://127.0.0.1:3000/acme/shop.git", CloneKind::Https),
            (
                "https://orch@gitea.example.com/acme/shop.git",
                CloneKind::Https,
            ),
            (
                "ssh://git@gitea.example.com:2222/acme/shop.git",
                CloneKind::Ssh,
            ),
            ("git@gitea.example.com:acme/shop.git", CloneKind::Ssh),
            ("/srv/git/shop.git", CloneKind::Local),
            ("file:///srv/git/shop.git", CloneKind::Local),
        ];
        for (text, kind) in good {
            let got = parse_clone_url(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((got.url.as_str(), got.kind), (text, kind));
        }
        let bad = [
            ("", "empty"),
            ("shop.git", "neither"),
            ("../shop.git", "neither"),
            ("-uhttps://x/y", "option"),
            ("--upload-pack=touch /tmp/x", "spaces"),
            (
                "https://orch:s3cret@gitea.example.com/acme/shop.git",
                "password",
            ),
            ("http://gitea.example.com/acme/shop.git", "loopback"),
            ("ftp://example.com/shop.git", "scheme"),
            ("https://", "URL"),
            ("file://host/srv/shop.git", "scheme"),
        ];
        for (text, why) in bad {
            let e = parse_clone_url(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.contains("expected an https URL"), "{text}: {e}");
        }
        let text = GOOD.replace(
            "    repo: acme/orch",
            "    repo: acme/orch\n    clone_url: /srv/git/orch.git",
        );
        let c = Config::from_parts(Some(&text), None, Layers::default()).unwrap();
        assert_eq!(
            c.pipeline.clone_url("orch").unwrap().url,
            "/srv/git/orch.git"
        );
        assert!(Config::from_parts(Some(GOOD), None, Layers::default())
            .unwrap()
            .pipeline
            .clone_url("orch")
            .is_none());
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
