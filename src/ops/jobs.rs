//! A job as several passes see it: where its log goes (`dispatch` names it for the
//! supervisor, `run-job` writes it), the environment its agent gets (an allowlist, never
//! the supervisor's whole environment: docs/security.md) and its stable JSON shape
//! (`task show --json`, `job ... --json`).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::clock::format_unix;
use crate::config::{Config, Credential, JOB_CONTEXT_ENV, SETTINGS};
use crate::core::job::Job;
use crate::core::stage::Agent;
use crate::ops::pass::PassContext;

/// What every agent gets from its supervisor's environment, when set: the process
/// basics, locale, time zone and proxies. `LC_*` names pass too.
pub const AGENT_BASE_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TERM",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

/// Builds `agent`'s environment from its supervisor's (`parent`): the
/// [`AGENT_BASE_ENV`] names and `LC_*`, every `ORCH_*` name that is not a secret
/// setting (the database, state dir and pipeline file its `orch` calls need), the names
/// the pipeline file lists under `agents.<agent>.env`, the credentials it grants (their
/// effective values, from the environment or the file's `settings:`), then `job` (the
/// job's own `ORCH_TASK_ID` and friends). Nothing else: no other secret reaches it.
pub fn agent_env(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    config: &Config,
    agent: Agent,
    job: &[(&str, String)],
) -> Vec<(String, OsString)> {
    let grants = config.pipeline.agent_grants(agent);
    // A PostgreSQL ORCH_DB carries the database's password: an agent under another user
    // (which reaches orch only through the agent socket) never gets it, as it never gets
    // write access to a SQLite file. An agent running as orch has that access anyway.
    let other_user = config
        .settings
        .agent_user
        .as_deref()
        .is_some_and(|u| !u.trim().is_empty());
    let hide_db = other_user && crate::adapters::db::is_postgres_url(&config.settings.db);
    let secret =
        |k: &str| SETTINGS.iter().any(|s| s.secret && s.name == k) || (hide_db && k == "ORCH_DB");
    let passes = |k: &str| {
        AGENT_BASE_ENV.contains(&k)
            || k.starts_with("LC_")
            || grants.env.iter().any(|g| g == k)
            || (k.starts_with("ORCH_") && !secret(k) && !JOB_CONTEXT_ENV.contains(&k))
    };
    let mut env: Vec<(String, OsString)> = parent
        .into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
        .filter(|(k, _)| passes(k))
        .collect();
    let s = &config.settings;
    for c in grants.credentials {
        let value = match c {
            Credential::Plane => &s.plane_api_key,
            Credential::Gitea => &s.gitea_token,
            Credential::StagingWebhook => &s.staging_webhook_secret,
        };
        if let Some(v) = value {
            env.push((c.setting().to_string(), v.expose().into()));
        }
    }
    env.extend(job.iter().map(|(k, v)| ((*k).to_string(), v.into())));
    env
}

/// Returns the path of a job's log file under the state dir.
pub fn job_log_path(ctx: &PassContext, id: i64) -> PathBuf {
    ctx.config
        .settings
        .state_dir
        .join("jobs")
        .join(format!("{id}.log"))
}

/// Returns the stable JSON shape of a job.
pub fn job_json(j: &Job) -> serde_json::Value {
    serde_json::json!({
        "id": j.id,
        "task_id": j.task_id,
        "agent": j.agent,
        "stage": j.stage,
        "status": j.status,
        "attempt": j.attempt,
        "pid": j.pid,
        "exit_code": j.exit_code,
        "reap_reason": j.reap_reason,
        "rescue_count": j.rescue_count,
        "enqueued_at": format_unix(j.enqueued_at),
        "started_at": j.started_at.map(format_unix),
        "finished_at": j.finished_at.map(format_unix),
        "log_path": j.log_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Layers;

    #[test]
    fn an_agent_gets_the_allowlist_its_grants_and_no_other_secret() {
        let pipeline = "agents:\n  deployer: { command: [d], credentials: [gitea], env: [LLM_KEY] }\n  analyst: [a]\n";
        let parent: Vec<(&str, &str)> = vec![
            ("PATH", "/bin"),
            ("LC_ALL", "C"),
            ("ORCH_DB", "/x/orch.db"),
            ("ORCH_PLANE_WEBHOOK_SECRET", "wh"),
            ("ORCH_TELEGRAM_BOT_TOKEN", "tg"),
            ("ORCH_PLANE_API_KEY", "pk"),
            ("ORCH_GITEA_TOKEN", "gt"),
            ("ORCH_STAGING_WEBHOOK_SECRET", "st"),
            ("ORCH_TASK_ID", "stale"),
            ("LLM_KEY", "llm"),
            ("AWS_SECRET_ACCESS_KEY", "aws"),
        ];
        let layers = Layers {
            env: parent
                .iter()
                .filter(|(k, _)| k.starts_with("ORCH_") && *k != "ORCH_TASK_ID")
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Layers::default()
        };
        let config = Config::from_parts(Some(pipeline), None, layers).unwrap();
        let build = |agent| {
            let parent = parent.iter().map(|(k, v)| (k.into(), v.into()));
            let env = agent_env(parent, &config, agent, &[("ORCH_TASK_ID", "7".into())]);
            env.into_iter()
                .map(|(k, v)| format!("{k}={}", v.to_string_lossy()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            build(Agent::Deployer),
            [
                "PATH=/bin",
                "LC_ALL=C",
                "ORCH_DB=/x/orch.db",
                "LLM_KEY=llm",
                "ORCH_GITEA_TOKEN=gt",
                "ORCH_TASK_ID=7"
            ]
        );
        assert_eq!(
            build(Agent::Analyst),
            [
                "PATH=/bin",
                "LC_ALL=C",
                "ORCH_DB=/x/orch.db",
                "ORCH_TASK_ID=7"
            ]
        );
    }

    #[test]
    fn an_agent_under_another_user_never_gets_a_postgresql_url() {
        let url = "postgres://orch:pw@db/orch";
        let env_of = |agent_user: Option<&str>| {
            let mut vars = vec![("ORCH_DB".to_string(), url.to_string())];
            if let Some(u) = agent_user {
                vars.push(("ORCH_AGENT_USER".to_string(), u.to_string()));
            }
            let layers = Layers {
                env: vars.iter().cloned().collect(),
                ..Layers::default()
            };
            let config =
                Config::from_parts(Some("agents:\n  analyst: [a]\n"), None, layers).unwrap();
            let parent = vars.iter().map(|(k, v)| (k.into(), v.into()));
            agent_env(parent, &config, Agent::Analyst, &[])
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert!(!env_of(Some("orch-agent")).contains(&"ORCH_DB".to_string()));
        assert!(env_of(None).contains(&"ORCH_DB".to_string()));
    }
}
