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

mod load;
mod pipeline;
mod settings;

pub use load::{
    display_path, Config, ConfigError, Layers, Overrides, Source, JOB_CONTEXT_ENV,
    WITHHELD_FROM_JOBS,
};
pub use pipeline::{
    is_repo, parse_clone_url, AgentGrants, CloneKind, CloneUrl, Credential, Pipeline,
    AGENT_PLACEHOLDERS,
};
pub use settings::{
    env_example, Count, Csv, JobLauncher, PinnedNow, PositiveSeconds, Ratio, RequestPath,
    ResolvedSetting, Seconds, Secret, SettingSpec, SettingValue, Settings, SETTINGS,
};
