//! State that is a file on one host reaches every host under PostgreSQL (issue 14): an
//! agent's artefacts (stored by `run-job` when the agent exits, read by the gate of any
//! host, written into a host's folder before its next agent starts, set aside in the
//! table with the file), feedback files, post-deploy windows and the reconcile cursor.
//! Two "hosts" are two sets of processes with their own `ORCH_HOST_ID`,
//! `ORCH_STATE_DIR` and `ORCH_ARTEFACTS_DIR` over one database. On SQLite (one host)
//! these tests return at once: the files are the state there, as the other modules test.

use std::path::{Path, PathBuf};
use std::process::Command;

use orch::standin::gitea::{fake_sha, PullSeed};

use crate::common::{seed_task, Project, Run, SeedTask, Standin, TestEnv, NOW_UNIX};

const REPO: &str = "acme/shop";

/// The reviewer writes `$TEST_REVIEW` as its verdict (stops before writing without it),
/// the deployer `$TEST_DEPLOY` as its deploy report; the developer prints its
/// feedback file's `kind:` line and which reports its folder holds.
const AGENTS: &str = r#"analyst: [/bin/true]
developer:
  - /bin/sh
  - -c
  - 'if [ -z "$ORCH_FEEDBACK" ]; then echo "feedback env=unset"; else echo "feedback env=$ORCH_FEEDBACK"; fi; if [ -n "$ORCH_FEEDBACK" ]; then sed -n 3p "$ORCH_FEEDBACK"; fi; for f in 05-review.md; do if [ -f "$ORCH_TASK_ARTEFACTS/$f" ]; then echo "has $f: $(sed -n 2p "$ORCH_TASK_ARTEFACTS/$f")"; fi; done'
reviewer:
  env: [TEST_REVIEW]
  command:
  - /bin/sh
  - -c
  - 'if [ -z "$TEST_REVIEW" ]; then echo "stopped before writing" >&2; exit 1; fi; printf "%s\nreview_verdict: %s\n%s\n" --- "$TEST_REVIEW" --- > "$ORCH_TASK_ARTEFACTS/05-review.md"'
deployer:
  env: [TEST_DEPLOY]
  command:
  - /bin/sh
  - -c
  - 'printf "%s\ndeploy_status: %s\n%s\n" --- "$TEST_DEPLOY" --- > "$ORCH_TASK_ARTEFACTS/12-deploy-report.md"'
"#;

/// One host: its name, state dir and artefacts dir inside the env's directory, and
/// whether it reaches Gitea (a host without it cannot decide a gate that needs forge
/// facts: its `run-job` leaves the gate to another host's pass).
struct Host<'a> {
    env: &'a TestEnv,
    name: &'static str,
    gitea: bool,
    vars: Vec<(&'static str, String)>,
}

impl<'a> Host<'a> {
    fn new(env: &'a TestEnv, name: &'static str, gitea: bool) -> Self {
        let dir = env.path(name);
        Host {
            env,
            name,
            gitea,
            vars: vec![
                ("ORCH_HOST_ID", name.to_string()),
                ("ORCH_STATE_DIR", dir.join("state").display().to_string()),
                (
                    "ORCH_ARTEFACTS_DIR",
                    dir.join("artefacts").display().to_string(),
                ),
            ],
        }
    }

    fn set(mut self, key: &'static str, value: &str) -> Self {
        self.vars.push((key, value.to_string()));
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.env.command(args);
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        if !self.gitea {
            cmd.env_remove("ORCH_GITEA_URL")
                .env_remove("ORCH_GITEA_TOKEN");
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().expect("run orch").into()
    }

    fn artefacts(&self, key: &str) -> PathBuf {
        self.env.path(self.name).join("artefacts").join(key)
    }

    fn state(&self) -> PathBuf {
        self.env.path(self.name).join("state")
    }

    /// Runs the task's live job of `stage` through the real supervisor on this host;
    /// returns its log and stderr.
    fn run_job(&self, task: i64, agent: &str, stage: &str, code: i32) -> String {
        let job = crate::common::seed::claim_live_job(self.env, task, agent, stage);
        let run = self.run(&["run-job", &job.to_string()]).expect(code);
        let log = std::fs::read_to_string(self.state().join(format!("jobs/{job}.log")))
            .unwrap_or_default();
        format!("{log}\n{}", run.stderr)
    }
}

fn env() -> TestEnv {
    TestEnv::builder()
        .project(Project::shop().default_branch("main"))
        .agents(AGENTS)
        .standins(&[Standin::Gitea])
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_HTTP_TIMEOUT_S", "5")
        .set("ORCH_RECONCILE_SKIP_BLOCKED_ENABLED", "false")
        .set("ORCH_RECONCILE_REPLAY_ENABLED", "false")
        .build()
}

/// Seeds SHOP-`n` at `stage` with PR `n` open (or merged) on its branch and CI green.
fn seed(env: &TestEnv, n: u32, stage: &str, merged: bool) -> (i64, String) {
    let branch = format!("shop-{n}-checkout");
    let sha = fake_sha(&format!("work {n}"));
    env.gitea().push(REPO, &branch, &sha);
    let pull = PullSeed::open(n.into(), &branch);
    env.gitea()
        .add_pull(REPO, &if merged { pull.merged() } else { pull });
    env.gitea().add_status(REPO, &sha, "ci/build", "success");
    let mut task = SeedTask::new(&Project::shop(), n.into(), stage.parse().expect("a stage"))
        .work_item(&format!("1c2d3e4f-0000-4000-8000-{n:012}"))
        .title("Checkout")
        .branch(&branch)
        .at(NOW_UNIX - 3600)
        .branch_ready();
    task.pr = Some(n.into());
    let key = task.key.clone();
    (seed_task(env, &task), key)
}

fn stage(env: &TestEnv, task: i64) -> String {
    env.db()
        .query_row("SELECT stage FROM tasks WHERE id = ?1", [task], |r| {
            r.get(0)
        })
        .unwrap()
}

fn stored(env: &TestEnv, kind: &str, key: &str) -> Option<Vec<u8>> {
    env.db()
        .query_row(
            "SELECT body FROM shared_files WHERE kind = ?1 AND key = ?2",
            [kind, key],
            |r| r.get(0),
        )
        .ok()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What a dry-run reconcile on `host` says of task `key`.
fn dry_run(host: &Host<'_>, key: &str) -> serde_json::Value {
    let r = host
        .run(&["reconcile", "--dry-run", "--json"])
        .expect(0)
        .json();
    r["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == key)
        .unwrap_or_else(|| panic!("{key} not in {r:#}"))
        .clone()
}

#[test]
fn a_gate_on_another_host_reads_the_agent_s_artefacts() {
    if crate::common::sqlite_only() {
        return;
    }
    let env = env();
    // Host A runs the agent and cannot reach Gitea: its gate waits for the merge. Host
    // B, its artefacts folder empty, decides it.
    let a = Host::new(&env, "host-a", false).set("TEST_DEPLOY", "SUCCESS");
    let b = Host::new(&env, "host-b", true);
    let (id, key) = seed(&env, 1, "deploy", true);
    let log = a.run_job(id, "deployer", "deploy", 0);
    assert_eq!(
        stage(&env, id),
        "deploy",
        "host A cannot decide the gate: {log}"
    );
    assert!(
        stored(&env, "artefact", &format!("{key}/12-deploy-report.md"))
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("SUCCESS"))
    );
    b.run(&["reconcile"]).expect(0);
    assert_eq!(stage(&env, id), "done", "B's gate read A's report");
    assert!(
        !b.artefacts(&key).join("12-deploy-report.md").exists(),
        "read from the database, not from a file on B"
    );
}

#[test]
fn feedback_and_set_asides_follow_the_task_across_hosts() {
    if crate::common::sqlite_only() {
        return;
    }
    let env = env();
    let a = Host::new(&env, "host-a", false);
    let b = Host::new(&env, "host-b", true);
    let (id, key) = seed(&env, 3, "review", false);

    // The reviewer on B asks for changes: B's gate sends the task back with feedback
    // written on B.
    let b_rev = Host::new(&env, "host-b", true).set("TEST_REVIEW", "REQUEST_CHANGES");
    b_rev.run_job(id, "reviewer", "review", 0);
    assert_eq!(stage(&env, id), "development");
    assert!(stored(&env, "artefact", &format!("{key}/feedback-1.md")).is_some());

    // The developer runs on A: it gets B's feedback file and the review in A's folder.
    let log = a.run_job(id, "developer", "development", 0);
    let feedback = a.artefacts(&key).join("feedback-1.md");
    assert!(
        log.contains(&format!(
            "feedback env={}\nkind: review-changes\n",
            feedback.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("has 05-review.md: review_verdict: REQUEST_CHANGES"),
        "{log}"
    );

    // B moves the task to review again: the first visit's review is set aside, in the
    // table as in B's folder, while A's folder still holds its copy.
    b.run(&["reconcile"]).expect(0);
    assert_eq!(stage(&env, id), "review");
    assert_eq!(
        stored(&env, "artefact", &format!("{key}/05-review.md")),
        None
    );
    let history = env
        .db()
        .query_row(
            "SELECT count(*) FROM shared_files WHERE kind = 'artefact' AND key LIKE ?1",
            [format!("{key}/history/05-review.round-%")],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    assert_eq!(history, 1);
    assert!(a.artefacts(&key).join("05-review.md").exists());

    // The reviewer on A stops before writing: the stale copy on A is gone before it
    // starts (never stored again as this visit's verdict), and the gate waits.
    a.run_job(id, "reviewer", "review", 1);
    assert!(!a.artefacts(&key).join("05-review.md").exists());
    assert!(names(&a.artefacts(&key).join("history"))
        .iter()
        .any(|n| n.starts_with("05-review.round-")));
    assert_eq!(
        stored(&env, "artefact", &format!("{key}/05-review.md")),
        None
    );
    let t = dry_run(&b, &key);
    assert!(t.to_string().contains("05-review.md: missing"), "{t:#}");
    assert_eq!(stage(&env, id), "review");
}

#[test]
fn stored_artefacts_that_would_escape_or_are_not_text_are_refused() {
    if crate::common::sqlite_only() {
        return;
    }
    let env = env();
    let a = Host::new(&env, "host-a", false);
    let b = Host::new(&env, "host-b", true);
    let (id, key) = seed(&env, 2, "review", false);
    for bad in [
        format!("{key}/../escaped.md"),
        format!("{key}/../../escaped.md"),
        format!("{key}/history/../../escaped.md"),
        format!("{key}/sub/escaped.md"),
        format!("{key}/.hidden.md"),
    ] {
        let (task, file) = bad.split_once('/').unwrap();
        env.store_artefact(task, file, b"planted");
    }
    env.store_artefact(&key, "01-analysis.md", b"the analysis");
    // Materialised before the reviewer starts on A: only the good file is written.
    a.run_job(id, "reviewer", "review", 1);
    assert_eq!(
        names(&a.artefacts(&key)),
        vec!["01-analysis.md".to_string()]
    );
    assert_eq!(names(&env.path("host-a/artefacts")), vec![key.clone()]);
    assert!(names(&env.path("host-a")).iter().all(|n| n != "escaped.md"));

    // A verdict stored with bytes that are not UTF-8 is refused unread, like a file
    // that cannot be read: the gate does not pass.
    env.store_artefact(
        &key,
        "05-review.md",
        b"---\nreview_verdict: APPROVE\xff\n---\n",
    );
    let t = dry_run(&b, &key);
    assert!(t.to_string().contains("not UTF-8"), "{t:#}");
    b.run(&["reconcile"]).expect(0);
    assert_eq!(stage(&env, id), "review");
}

#[test]
fn a_window_armed_on_one_host_is_ticked_on_another() {
    if crate::common::sqlite_only() {
        return;
    }
    let shop = Project::shop().with("health_url: $PROD_URL/health\nrollback: [/bin/true]");
    let env = TestEnv::builder()
        .project(shop)
        .standins(&[Standin::Prod])
        .set("ORCH_POST_DEPLOY_REPOS", "shop")
        .build();
    let a = Host::new(&env, "host-a", false);
    let b = Host::new(&env, "host-b", false);
    let item = "5a5a5a5a-0000-4000-8000-000000000005";
    a.run(&[
        "task",
        "add",
        "--project",
        "shop",
        "--work-item",
        item,
        "--key",
        "SHOP-5",
    ])
    .expect(0);
    for stage in ["development", "review", "deploy-staging", "deploy", "done"] {
        a.run(&["task", "move", "SHOP-5", "--to", stage, "--reason", "test"])
            .expect(0);
    }
    let key = "acme_shop~".to_string();
    let windows: Vec<String> = env
        .db()
        .prepare("SELECT key FROM shared_files WHERE kind = 'window'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(windows.len(), 1, "{windows:?}");
    assert!(
        windows[0].starts_with(&key) && windows[0].ends_with(item),
        "{windows:?}"
    );
    assert!(
        names(&a.state())
            .iter()
            .all(|n| !n.starts_with("post-deploy-state-")),
        "no window file on A: {:?}",
        names(&a.state())
    );
    // B ticks it: one sample, in the stored window A armed.
    let b1 = Host::new(&env, "host-b", false).set("ORCH_NOW", "2026-11-25T03:02:00Z");
    let r = b1.run(&["post-deploy-tick", "--json"]).expect(0).json();
    assert_eq!(r.as_array().unwrap().len(), 1, "{r:#}");
    let w: serde_json::Value =
        serde_json::from_slice(&stored(&env, "window", &windows[0]).unwrap()).unwrap();
    assert_eq!(w["samples"].as_array().unwrap().len(), 1, "{w:#}");
    assert_eq!(w["task_key"], "SHOP-5");
    // A's status lists the window B sampled.
    let status = a.run(&["status", "--json"]).expect(0).json();
    assert_eq!(status["post_deploy"][0]["samples"], 1, "{status:#}");
    drop(b);
}

#[test]
fn the_reconcile_cursor_goes_on_across_hosts() {
    if crate::common::sqlite_only() {
        return;
    }
    let env = env();
    let a = Host::new(&env, "host-a", true).set("ORCH_RECONCILE_MAX_TASKS", "1");
    let b = Host::new(&env, "host-b", true).set("ORCH_RECONCILE_MAX_TASKS", "1");
    let ids: Vec<i64> = (1..=3).map(|n| seed(&env, n, "review", false).0).collect();
    let cursor = || {
        stored(&env, "cursor", "reconcile")
            .map(|b| String::from_utf8(b).unwrap().trim().parse::<i64>().unwrap())
    };
    a.run(&["reconcile"]).expect(0);
    assert_eq!(cursor(), Some(ids[0]));
    // B starts after the task A's pass reached, not from the first.
    b.run(&["reconcile"]).expect(0);
    assert_eq!(cursor(), Some(ids[1]));
    a.run(&["reconcile"]).expect(0);
    assert_eq!(cursor(), Some(ids[2]));
    for h in [&a, &b] {
        assert!(!h.state().join("reconcile.cursor").exists());
    }
}
