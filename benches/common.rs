//! Shared bench scaffolding: a temporary orch home, bulk seeding, and timing whole
//! `orch` processes (median wall time, peak RSS from `/usr/bin/time -f %M`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use rusqlite::params;

/// A temporary orch home.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    /// A home with a two-project pipeline and an initialised database.
    pub fn new(projects: usize) -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut yaml = String::from("plane: { workspace: acme }\nprojects:\n");
        for p in 0..projects {
            yaml.push_str(&format!(
                "  - name: p{p}\n    plane_project_id: 00000000-0000-4000-8000-{p:012}\n    repo: acme/p{p}\n"
            ));
        }
        yaml.push_str("agents:\n  developer: [/bin/true, \"{task}\"]\n");
        std::fs::write(dir.path().join("orch.yaml"), yaml).unwrap();
        let home = Home { dir };
        let st = home.orch(&["init"]).stdout(Stdio::null()).status().unwrap();
        assert!(st.success());
        home
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command for the release binary with this home's environment.
    pub fn orch(&self, args: &[&str]) -> Command {
        let mut c = Command::new(orch_bin());
        self.env(&mut c);
        c.args(args);
        c
    }

    fn env(&self, c: &mut Command) {
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("ORCH_DB", self.path("orch.db"))
            .env("ORCH_STATE_DIR", self.path("state"))
            .env("ORCH_ARTEFACTS_DIR", self.path("artefacts"))
            .env("ORCH_CONFIG", self.path("orch.yaml"))
            .env("ORCH_LOG", "warn")
            .current_dir(self.dir.path());
    }

    /// Inserts `n` tasks spread over `projects` projects, each with one job of `status`;
    /// running jobs are stamped round-robin with `stamps` (pid, start time).
    pub fn seed(&self, n: usize, projects: usize, status: &str, stamps: &[(i64, i64)]) {
        let mut c = rusqlite::Connection::open(self.path("orch.db")).unwrap();
        let tx = c.transaction().unwrap();
        {
            let mut t = tx
                .prepare(
                    "INSERT INTO tasks (project, work_item_id, key, title, repo, branch, stage,
                                        stage_entered_at, created_at, updated_at)
                     VALUES (?1, ?2, ?3, 't', 'acme/x', ?4, 'development', 0, 0, 0)",
                )
                .unwrap();
            let mut j = tx
                .prepare(
                    "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at,
                                       started_at, pid, pid_start_time)
                     VALUES (?1, 'developer', 'development', ?2, 1, ?3, ?4, ?5, ?6)",
                )
                .unwrap();
            for i in 0..n {
                t.execute(params![
                    format!("p{}", i % projects),
                    format!("wi-{i}"),
                    format!("K-{i}"),
                    format!("k-{i}")
                ])
                .unwrap();
                let task = tx.last_insert_rowid();
                let running = status == "running";
                let stamp = stamps.get(i % stamps.len().max(1)).copied();
                j.execute(params![
                    task,
                    status,
                    i as i64,
                    running.then(now_secs),
                    stamp.filter(|_| running).map(|s| s.0),
                    stamp.filter(|_| running).map(|s| s.1)
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn orch_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_orch"))
}

/// Runs `make()` `runs` times; returns (median wall ms, peak RSS KiB if measurable).
pub fn measure(runs: usize, make: impl Fn() -> Command) -> (f64, Option<u64>) {
    let have_time = Path::new("/usr/bin/time").exists();
    let mut times = Vec::new();
    let mut peak: Option<u64> = None;
    for _ in 0..runs {
        let inner = make();
        let mut cmd = if have_time {
            let mut c = Command::new("/usr/bin/time");
            c.arg("-f").arg("maxrss_kib=%M").arg(inner.get_program());
            c.args(inner.get_args());
            c.env_clear();
            for (k, v) in inner.get_envs() {
                if let Some(v) = v {
                    c.env(k, v);
                }
            }
            if let Some(d) = inner.get_current_dir() {
                c.current_dir(d);
            }
            c
        } else {
            inner
        };
        let start = Instant::now();
        let out = cmd.stdout(Stdio::null()).output().expect("run orch");
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        let code = out.status.code().unwrap_or(-1);
        assert!(
            code == 0,
            "orch exited {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(kib) = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("maxrss_kib="))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .next_back()
        {
            peak = Some(peak.map_or(kib, |p| p.max(kib)));
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[times.len() / 2], peak)
}

pub fn report(name: &str, (median, rss): (f64, Option<u64>)) {
    println!(
        "{name:<40} median {median:>8.1} ms   peak RSS {}",
        rss.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    );
}
