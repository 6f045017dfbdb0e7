//! Shared test scaffolding: `TestEnv` runs the real `orch` binary in a temporary
//! directory with a clean environment, a pinned clock and a pipeline file.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The instant every test pins `ORCH_NOW` to unless it says otherwise.
pub const NOW: &str = "2026-11-25T03:00:00Z";
/// `NOW` in unix seconds.
pub const NOW_UNIX: i64 = 1_795_575_600;

/// A minimal valid pipeline file with one project and stub agents.
pub const PIPELINE: &str = r#"
plane: { workspace: acme }
projects:
  - name: orch
    plane_project_id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02
    plane_identifier: ORCH
    repo: acme/orch
    self_hosting: true
  - name: shop
    plane_project_id: 1c2d3e4f-0000-4000-8000-000000000002
    plane_identifier: SHOP
    repo: acme/shop
agents:
  analyst: [/bin/true, "{task}"]
  developer: [/bin/true, "{task}"]
  reviewer: [/bin/true, "{task}"]
  deployer: [/bin/true, "{task}"]
"#;

/// A temporary home for one test: a database, a state dir, artefacts and a pipeline file.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub env: BTreeMap<String, String>,
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
    /// A fresh env with [`PIPELINE`] as its pipeline file.
    pub fn new() -> TestEnv {
        TestEnv::with_pipeline(PIPELINE)
    }

    /// A fresh env with this pipeline file text.
    pub fn with_pipeline(yaml: &str) -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("orch.yaml"), yaml).expect("write pipeline");
        let mut env = BTreeMap::new();
        let p = |name: &str| dir.path().join(name).display().to_string();
        env.insert("ORCH_DB".into(), p("orch.db"));
        env.insert("ORCH_STATE_DIR".into(), p("state"));
        env.insert("ORCH_ARTEFACTS_DIR".into(), p("artefacts"));
        env.insert("ORCH_CONFIG".into(), p("orch.yaml"));
        env.insert("ORCH_NOW".into(), NOW.into());
        env.insert("ORCH_LOG".into(), "info".into());
        TestEnv { dir, env }
    }

    /// Returns a path inside the env's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Returns the database path.
    pub fn db_path(&self) -> PathBuf {
        self.path("orch.db")
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

    /// Opens the database directly (for seeding and assertions).
    pub fn db(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.db_path()).expect("open db");
        c.busy_timeout(std::time::Duration::from_secs(15)).unwrap();
        c
    }

    /// Returns one integer from a query.
    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    /// Writes an artefact for a task key.
    pub fn artefact(&self, key: &str, file: &str, text: &str) {
        let dir = self.path("artefacts").join(key);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }
}

/// Returns the path of the compiled binary.
pub fn orch_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_orch"))
}
