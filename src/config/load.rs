//! Loading the configuration: where the pipeline file is, the layers every setting
//! is read from and their precedence, and the error that names a bad key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::pipeline::parse_pipeline;
use crate::config::{Pipeline, ResolvedSetting, SettingSpec, Settings, SETTINGS};

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

    /// Returns `value` when it is set, else the error for `key` saying why it is
    /// `required` (`required to call Gitea`).
    ///
    /// # Errors
    /// The [`ConfigError`] for `key` when `value` is `None`.
    pub fn require<T: Clone>(value: &Option<T>, key: &str, required: &str) -> Result<T, Self> {
        value.clone().ok_or_else(|| ConfigError::new(key, required))
    }
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
    pub(super) fn lookup(&self, spec: &SettingSpec) -> (String, Source) {
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

/// The names `run-job` sets in an agent's environment. They describe the job, they are
/// not settings: an agent's own `orch` calls (`orch merge-guard --task "$ORCH_TASK_ID"`)
/// must not fail on them as unknown settings.
pub const JOB_CONTEXT_ENV: &[&str] = &[
    "ORCH_TASK_ID",
    "ORCH_TASK_KEY",
    "ORCH_JOB_ID",
    "ORCH_TASK_ARTEFACTS",
    "ORCH_WORKSPACE",
    "ORCH_FEEDBACK",
];

/// The secrets no job ever holds: not its agent, nor its supervisor (`run-job` never
/// needs them, and any process of the same user reads `/proc/<pid>/environ`). The direct
/// launcher removes them from the supervisor's environment; `orch-job@.service` unsets
/// them (`UnsetEnvironment=`).
pub const WITHHELD_FROM_JOBS: &[&str] = &["ORCH_PLANE_WEBHOOK_SECRET", "ORCH_TELEGRAM_BOT_TOKEN"];

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
    /// `dispatch --launcher`.
    pub job_launcher: Option<String>,
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
        if let Some(launcher) = &overrides.job_launcher {
            layers
                .flags
                .insert("ORCH_JOB_LAUNCHER".into(), launcher.clone());
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
        settings.check_heartbeats()?;
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

/// Returns the default pipeline-file path a relative `path` in the config resolves against.
pub fn display_path(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string())
        .unwrap_or_else(|| "(none: built-in defaults)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Count;

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
            ("ORCH_WEBHOOK_HEADER_TIMEOUT_S", "0"),
            ("ORCH_WEBHOOK_PATH", "webhooks"),
            ("ORCH_WEBHOOK_PATH", "/a?b=1"),
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
}
