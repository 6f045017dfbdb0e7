//! Shared test scaffolding: `TestEnv` runs the real `orch` binary in a temporary
//! directory with a clean environment, a pinned clock and a pipeline file;
//! [`TestEnv::builder`] also starts the loopback stand-ins and wires their URLs and
//! secrets; [`seed_task`] puts a task at any stage through the library.

#![allow(dead_code)]

pub mod pg_server;
pub mod pipeline;
pub mod seed;
pub mod snapshot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use orch::standin::gitea::GiteaStandin;
use orch::standin::plane::PlaneStandin;
use orch::standin::prod::Prod;
use orch::standin::server::Server;
use orch::standin::telegram;

pub use pipeline::Project;
pub use seed::{seed_task, seed_tasks, SeedTask};

/// The database engine a test binary runs its tests on: `integration` on SQLite,
/// `postgres` (the same modules) on PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the env's directory.
    Sqlite,
    /// A database of its own on the test PostgreSQL server (`pg_server.rs`).
    Postgres,
}

/// This test binary's engine.
pub fn backend() -> Backend {
    crate::BACKEND
}

/// Whether this binary runs on SQLite; for a test of what only a SQLite file has (its
/// path, its permissions, the online backup), which returns early on PostgreSQL.
pub fn sqlite_only() -> bool {
    backend() == Backend::Sqlite
}

/// The instant every test pins `ORCH_NOW` to unless it says otherwise.
pub const NOW: &str = "2026-11-25T03:00:00Z";
/// `NOW` in unix seconds.
pub const NOW_UNIX: i64 = 1_795_575_600;

/// The default pipeline file: `orch` (self-hosting) and `shop`, with stub agents.
pub fn default_pipeline() -> String {
    pipeline::render(
        &[Project::orch(), Project::shop()],
        pipeline::TRUE_AGENTS,
        "",
    )
}

/// The Gitea token the builder wires.
pub const GITEA_TOKEN: &str = "gitea-test-token";
/// The Plane API key the builder wires.
pub const PLANE_API_KEY: &str = "plane_api_0123456789abcdef0123456789abcdef";
/// The Plane webhook secret the builder wires.
pub const WEBHOOK_SECRET: &str = "whsec-test";
/// The Telegram chat the builder wires.
pub const TELEGRAM_CHAT: &str = "4242";

/// Plane states the builder gives every project unless told otherwise: (id, name, group).
pub const PLANE_STATES: [(&str, &str, &str); 4] = [
    (
        "5a000000-0000-4000-8000-000000000001",
        "In Progress",
        "started",
    ),
    (
        "5a000000-0000-4000-8000-000000000002",
        "Approved",
        "unstarted",
    ),
    ("5a000000-0000-4000-8000-000000000003", "Blocked", "started"),
    ("5a000000-0000-4000-8000-000000000004", "Backlog", "backlog"),
];

/// The fields every job has in `--json` output (`job list`, `task show`).
pub const JOB_FIELDS: [&str; 9] = [
    "id",
    "task_id",
    "agent",
    "status",
    "attempt",
    "pid",
    "exit_code",
    "reap_reason",
    "stage",
];

/// A temporary home for one test: a database, a state dir, artefacts and a pipeline file,
/// plus the stand-ins [`TestEnv::builder`] started (each stops when the env drops).
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub env: BTreeMap<String, String>,
    /// The projects of the pipeline file (builder-made envs only).
    pub projects: Vec<Project>,
    plane: Option<PlaneStandin>,
    gitea: Option<GiteaStandin>,
    prod: Option<Prod>,
    telegram: Option<Server>,
    /// The PostgreSQL database of this env, dropped with it.
    pg_database: Option<String>,
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_database {
            pg_server::drop_database(name);
        }
    }
}

/// A stand-in [`TestEnvBuilder::standins`] can start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standin {
    /// Plane: each project with [`PLANE_STATES`]; `ORCH_PLANE_URL`, API key, webhook secret.
    Plane,
    /// Gitea: each project's repo on its default branch; `ORCH_GITEA_URL` and token.
    Gitea,
    /// Production: healthy; `$PROD_URL` in the pipeline file becomes its URL.
    Prod,
    /// Telegram: `ORCH_TELEGRAM_API_URL`, bot token and chat.
    Telegram,
}

/// Builds a [`TestEnv`] from typed parts: the pipeline file (projects, agents, further
/// sections), the stand-ins and their ORCH_* URLs and secrets, extra env, `orch init`.
/// A first integration test with stand-ins (`tests/integration/kit.rs` runs it):
///
/// ```ignore
/// #[test]
/// fn reconcile_dry_run_waits_for_a_review_with_no_job_yet() {
///     let shop = Project::shop();
///     let env = TestEnv::builder()
///         .project(shop.clone())
///         .standins(&[Standin::Plane, Standin::Gitea, Standin::Telegram])
///         .set("ORCH_RECONCILE_GRACE_S", "0")
///         .build();
///     let task = SeedTask::new(&shop, 1, Stage::Review).at(NOW_UNIX - 3600);
///     seed_task(&env, &task.branch_ready());
///     let run = env.run(&["reconcile", "--dry-run"]);
///     insta::assert_snapshot!(snapshot::report(&env, &run), @r"
///     exit: 0
///     SHOP-1 review: wait: no job has run yet: check_review_approved: 05-review.md: missing
///     ");
///     assert_eq!(env.count("SELECT count(*) FROM jobs"), 0, "a dry run changes nothing");
/// }
/// ```
pub struct TestEnvBuilder {
    projects: Vec<Project>,
    agents: String,
    sections: String,
    standins: Vec<Standin>,
    plane_states: Vec<(&'static str, &'static str, &'static str)>,
    vars: Vec<(String, String)>,
    init: bool,
}

impl TestEnvBuilder {
    /// Adds a project to the pipeline file (and to the stand-ins).
    pub fn project(mut self, p: Project) -> Self {
        self.projects.push(p);
        self
    }

    /// Adds several projects.
    pub fn projects(mut self, ps: impl IntoIterator<Item = Project>) -> Self {
        self.projects.extend(ps);
        self
    }

    /// Replaces the agent block (unindented YAML lines; default [`pipeline::TRUE_AGENTS`],
    /// empty for none).
    pub fn agents(mut self, yaml: &str) -> Self {
        self.agents = yaml.to_string();
        self
    }

    /// Appends top-level YAML (`staging:`, `post_deploy:` ...) to the pipeline file.
    pub fn section(mut self, yaml: &str) -> Self {
        self.sections.push_str(yaml);
        if !yaml.ends_with('\n') {
            self.sections.push('\n');
        }
        self
    }

    /// Starts these stand-ins and wires their URLs and secrets.
    pub fn standins(mut self, which: &[Standin]) -> Self {
        self.standins.extend_from_slice(which);
        self
    }

    /// Replaces the Plane states every project gets (none: the Plane stand-in starts
    /// with no projects, for the test to add).
    pub fn plane_states(mut self, states: &[(&'static str, &'static str, &'static str)]) -> Self {
        self.plane_states = states.to_vec();
        self
    }

    /// Sets an environment variable for every run.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.vars.push((key.into(), value.into()));
        self
    }

    /// Leaves the database uncreated (no `orch init`).
    pub fn no_init(mut self) -> Self {
        self.init = false;
        self
    }

    /// Starts the stand-ins, writes the pipeline file, sets the env and runs `orch init`.
    pub fn build(self) -> TestEnv {
        let has = |s: Standin| self.standins.contains(&s);
        let prod = has(Standin::Prod).then(Prod::start);
        let mut yaml = pipeline::render(&self.projects, &self.agents, &self.sections);
        if let Some(p) = &prod {
            yaml = yaml.replace("$PROD_URL", p.url());
        }
        let mut env = TestEnv::uninitialised(&yaml);
        env.projects = self.projects.clone();
        if has(Standin::Plane) {
            let plane = PlaneStandin::start("acme", PLANE_API_KEY);
            for p in self
                .projects
                .iter()
                .filter(|_| !self.plane_states.is_empty())
            {
                plane.add_project(p.plane_project_id, &self.plane_states);
            }
            env.set("ORCH_PLANE_URL", plane.url())
                .set("ORCH_PLANE_API_KEY", PLANE_API_KEY)
                .set("ORCH_PLANE_WEBHOOK_SECRET", WEBHOOK_SECRET);
            env.plane = Some(plane);
        }
        if has(Standin::Gitea) {
            let gitea = GiteaStandin::start(GITEA_TOKEN);
            for p in &self.projects {
                gitea.add_repo(p.repo, p.base());
            }
            env.set("ORCH_GITEA_URL", gitea.url())
                .set("ORCH_GITEA_TOKEN", GITEA_TOKEN);
            env.gitea = Some(gitea);
        }
        if has(Standin::Telegram) {
            let tg = telegram::start(telegram::TOKEN);
            env.set("ORCH_TELEGRAM_API_URL", tg.url())
                .set("ORCH_TELEGRAM_BOT_TOKEN", telegram::TOKEN)
                .set("ORCH_TELEGRAM_CHAT_ID", TELEGRAM_CHAT);
            env.telegram = Some(tg);
        }
        env.prod = prod;
        for (k, v) in &self.vars {
            env.set(k, v);
        }
        if self.init {
            env.run(&["init"]).expect(0);
        }
        env
    }
}

/// What one run of the binary gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the whole output unless the exit code is `code`.
    #[track_caller]
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts that stdout contains `needle` (showing stdout when it does not).
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Run {
        assert!(self.stdout.contains(needle), "{}", self.stdout);
        self
    }

    /// Asserts that stderr contains `needle` (showing stderr when it does not).
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Run {
        assert!(self.stderr.contains(needle), "{}", self.stderr);
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl TestEnv {
    /// Starts a builder: no projects, the do-nothing agents, no stand-ins, `init` on build
    /// (last, after the stand-ins' settings).
    pub fn builder() -> TestEnvBuilder {
        TestEnvBuilder {
            projects: Vec::new(),
            agents: pipeline::TRUE_AGENTS.to_string(),
            sections: String::new(),
            standins: Vec::new(),
            plane_states: PLANE_STATES.to_vec(),
            vars: Vec::new(),
            init: true,
        }
    }

    /// Returns the Plane stand-in. Panics when the builder did not start it.
    #[track_caller]
    pub fn plane(&self) -> &PlaneStandin {
        self.plane
            .as_ref()
            .expect("no Plane stand-in: add Standin::Plane to the builder")
    }

    /// Returns the Gitea stand-in. Panics when the builder did not start it.
    #[track_caller]
    pub fn gitea(&self) -> &GiteaStandin {
        self.gitea
            .as_ref()
            .expect("no Gitea stand-in: add Standin::Gitea to the builder")
    }

    /// Returns the production stand-in. Panics when the builder did not start it.
    #[track_caller]
    pub fn prod(&self) -> &Prod {
        self.prod
            .as_ref()
            .expect("no production stand-in: add Standin::Prod to the builder")
    }

    /// Returns the Telegram stand-in. Panics when the builder did not start it.
    #[track_caller]
    pub fn telegram(&self) -> &Server {
        self.telegram
            .as_ref()
            .expect("no Telegram stand-in: add Standin::Telegram to the builder")
    }

    /// Returns the texts the Telegram stand-in was sent.
    pub fn telegram_messages(&self) -> Vec<String> {
        telegram::messages(self.telegram())
    }

    /// Returns the pipeline project called `name`. Panics when there is none.
    #[track_caller]
    pub fn project(&self, name: &str) -> &Project {
        self.projects
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no project {name} in the pipeline file"))
    }

    /// A fresh env with [`default_pipeline`] as its pipeline file, initialised.
    pub fn new() -> TestEnv {
        TestEnv::with_pipeline(&default_pipeline())
    }

    /// A fresh env with this pipeline file text, initialised (`orch init` ran: every
    /// other command refuses a missing database, as in production).
    pub fn with_pipeline(yaml: &str) -> TestEnv {
        let env = TestEnv::uninitialised(yaml);
        env.run(&["init"]).expect(0);
        env
    }

    /// A fresh env with [`default_pipeline`] and no database yet (`orch init` not run).
    pub fn bare() -> TestEnv {
        TestEnv::uninitialised(&default_pipeline())
    }

    /// A fresh env with this pipeline file text and no database yet: for what happens
    /// before `orch init` (refusals, an invalid pipeline file, no side effects).
    pub fn uninitialised(yaml: &str) -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("orch.yaml"), yaml).expect("write pipeline");
        let mut env = BTreeMap::new();
        let p = |name: &str| dir.path().join(name).display().to_string();
        let pg_database = match backend() {
            Backend::Sqlite => {
                env.insert("ORCH_DB".into(), p("orch.db"));
                None
            }
            Backend::Postgres => {
                let (name, url) = pg_server::fresh_database();
                env.insert("ORCH_DB".into(), url);
                Some(name)
            }
        };
        env.insert("ORCH_STATE_DIR".into(), p("state"));
        env.insert("ORCH_ARTEFACTS_DIR".into(), p("artefacts"));
        env.insert("ORCH_CONFIG".into(), p("orch.yaml"));
        env.insert("ORCH_NOW".into(), NOW.into());
        env.insert("ORCH_LOG".into(), "info".into());
        TestEnv {
            dir,
            env,
            projects: Vec::new(),
            plane: None,
            gitea: None,
            prod: None,
            telegram: None,
            pg_database,
        }
    }

    /// Returns a path inside the env's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Returns the database: `ORCH_DB` as set (a file path, or a PostgreSQL URL).
    pub fn db_path(&self) -> PathBuf {
        PathBuf::from(&self.env["ORCH_DB"])
    }

    /// Sets (or replaces) an environment variable for later runs.
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Removes an environment variable for later runs.
    pub fn unset(&mut self, key: &str) -> &mut Self {
        self.env.remove(key);
        self
    }

    /// Returns a `Command` for the real binary with this env and nothing else.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orch"));
        cmd.args(args)
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            )
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .envs(&self.env);
        cmd
    }

    /// Runs the binary to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().expect("run orch").into()
    }

    /// Opens the database directly (for seeding and assertions), on either engine.
    pub fn db(&self) -> orch::adapters::db::Conn {
        orch::adapters::db::open_conn(&self.db_path()).expect("open db")
    }

    /// Returns one integer from a query.
    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    /// Writes an artefact for a task key, as an agent that ran here leaves it: the file,
    /// and on PostgreSQL its stored copy too (what `run-job` stores when the agent
    /// exits, and what the gates read there).
    pub fn artefact(&self, key: &str, file: &str, text: &str) {
        let dir = self.path("artefacts").join(key);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
        if backend() == Backend::Postgres {
            self.store_artefact(key, file, text.as_bytes());
        }
    }

    /// Stores an artefact body in `shared_files` (PostgreSQL's copy every host reads).
    pub fn store_artefact(&self, key: &str, file: &str, body: &[u8]) {
        self.db()
            .execute(
                "INSERT INTO shared_files (kind, key, body, updated_at) VALUES ('artefact', ?1, ?2, 0)
                 ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body",
                orch::sql_params![format!("{key}/{file}"), body.to_vec()],
            )
            .unwrap();
    }
}

/// Returns the path of the compiled binary.
pub fn orch_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_orch"))
}
