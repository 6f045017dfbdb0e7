//! The whole loop on default settings, through the real binary and real passes only (no
//! `task move`): a signed Plane start delivery, the analyst, a signed approval delivery,
//! a developer that opens a PR on the Gitea stand-in, CI made green by the test (the
//! CI system), the reviewer, the deployer following its prompt (staging deploy,
//! `staging-check --task`, `merge-guard --merge`, production deploy, report), done, then
//! production DEGRADED in the post-deploy window: an ordinary repo is rolled back and
//! reopened and goes round again with a new PR; the self-hosting repo only alerts.
//!
//! Agents are `orch-stub-agent` processes started by `orch dispatch` with the direct
//! launcher, as the timers would; the test waits for each job's supervisor to exit on a
//! pidfd (an event) and moves time only through `ORCH_NOW`. Settings are the defaults
//! apart from URLs, secrets, paths and the clock.
//!
//! The same loop also carries the operator's and the budget's features: a hold at
//! `deploy`, two tasks ordered by their Plane priorities, spend reported by the stub
//! agents against a task budget, and a round whose agents reach orch only through
//! `orch agent-socket` (docs/loop.md, "Holds, priority, spend and the agent socket").
//!
//! Which behaviour each assertion needs (issue 11): part A the pin (`staging-check --task`
//! records the validated revision; merge-guard merges it), part B rounds (reopen after a
//! merge, post-deploy for every project with a `health_url`), part C atomic intake.

use std::path::Path;
use std::time::Duration;

use orch::adapters::process::wait_exit;
use orch::core::intake::sign;
use orch::standin::gitea::GiteaStandin;
use orch::standin::plane::PlaneStandin;
use orch::standin::prod::Prod;
use orch::standin::server::Server;
use serde_json::{json, Value};

use crate::common::{Project as KitProject, Run, Standin, TestEnv, NOW_UNIX};

const AGENT: &str = env!("CARGO_BIN_EXE_orch-stub-agent");
const SECRET: &str = "plane_wh_0123456789abcdef0123456789abcdef";

/// A project under test: its pipeline entry and its Plane objects.
struct Project {
    name: &'static str,
    identifier: &'static str,
    repo: &'static str,
    plane_id: &'static str,
    self_hosting: bool,
    item: &'static str,
    sequence: u64,
    title: &'static str,
}

const SHOP: Project = Project {
    name: "shop",
    identifier: "SHOP",
    repo: "acme/shop",
    plane_id: "1c2d3e4f-0000-4000-8000-000000000002",
    self_hosting: false,
    item: "1c2d3e4f-0000-4000-8000-0000000000a7",
    sequence: 7,
    title: "Add a basket page",
};

/// A Plane work item of a project.
#[derive(Debug, Clone, Copy)]
struct Item {
    id: &'static str,
    sequence: u64,
    title: &'static str,
}

impl Project {
    /// The project's work item the loop carries.
    fn item(&self) -> Item {
        Item {
            id: self.item,
            sequence: self.sequence,
            title: self.title,
        }
    }
}

/// A second work item of the shop, for the loop with two tasks.
const SHOP_8: Item = Item {
    id: "1c2d3e4f-0000-4000-8000-0000000000a8",
    sequence: 8,
    title: "Speed up the search",
};

const ORCH: Project = Project {
    name: "orch",
    identifier: "ORCH",
    repo: "acme/orch",
    plane_id: "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02",
    self_hosting: true,
    item: "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e42",
    sequence: 42,
    title: "Fix crash saving settings",
};

/// Plane state ids of a project: (id, name, group). Ids are derived from the project id
/// so two projects never share one.
fn states(p: &Project) -> Vec<(String, &'static str, &'static str)> {
    [
        ("b1", "Todo", "unstarted"),
        ("b2", "In Progress", "started"),
        ("b3", "Approved", "started"),
        ("b4", "Done", "completed"),
        ("b5", "Cancelled", "cancelled"),
    ]
    .into_iter()
    .map(|(suffix, name, group)| (format!("{}{suffix}", &p.plane_id[..34]), name, group))
    .collect()
}

fn state_id(p: &Project, name: &str) -> String {
    states(p)
        .into_iter()
        .find(|s| s.1 == name)
        .map(|s| s.0)
        .expect("a known state")
}

/// The pipeline file's project: its Plane approval state, production health URL (the
/// production stand-in) and rollback command. Nothing but what an operator must fill in.
/// The project's `clone_url` is a local bare repository (issue 16's workspace): the
/// developer runs in the task's working copy of it.
fn pipeline_project(p: &Project, clone_url: &Path) -> KitProject {
    KitProject::new(p.name, p.plane_id, p.identifier, p.repo)
        .self_hosting(p.self_hosting)
        .with(&format!(
            "states:\n  approved: {{ names: [Approved] }}\nhealth_url: $PROD_URL/health\nrollback: [{AGENT}, rollback]\nclone_url: {}",
            clone_url.display()
        ))
}

/// The stub agents, each granted only what it uses (run-job gives an agent an
/// allowlisted environment): the developer opens its PR on Gitea, the deployer reads the
/// PR, runs staging-check and merge-guard and drives the staging and production
/// stand-ins. Every stub reports its usage when the test sets `STUB_USAGE`; the deployer
/// waits on `STUB_DEPLOY_GATE` before its merge when the test sets it.
fn agents() -> String {
    [
        ("analyst", ", env: [STUB_USAGE]"),
        ("developer", ", credentials: [gitea], env: [STUB_USAGE]"),
        ("reviewer", ", env: [STUB_USAGE]"),
        (
            "deployer",
            ", credentials: [gitea], env: [STUB_STAGING_URL, STUB_PROD_URL, STUB_USAGE, STUB_DEPLOY_GATE]",
        ),
    ]
    .map(|(a, grants)| format!("{a}: {{ command: [{AGENT}, {a}]{grants} }}"))
    .join("\n")
}

/// Staging checks against the staging stand-in.
fn staging_checks(staging: &str) -> String {
    format!(
        r#"staging:
  checks:
    - {{ id: C1, name: health, kind: http, url: "{staging}/health", expect_status: 200, timeout_s: 5 }}
    - {{ id: F1, name: image, kind: image-freshness, url: "{staging}/version", json_field: revision, timeout_s: 5 }}
"#
    )
}

/// Everything one loop runs against: Plane, Gitea, production and Telegram through the
/// env, and the staging install.
struct World {
    env: TestEnv,
    project: &'static Project,
    staging: Prod,
    /// Seconds after `NOW` the pinned clock reads.
    clock: i64,
    deliveries: u32,
    /// `ORCH_AGENT_SOCKET` for the passes that start agents (`dispatch`), as the units'
    /// environment file gives it; the test's own reads stand for an operator's shell.
    agent_socket: Option<String>,
    /// Holds the bare repository the project's workspaces clone.
    _remote: tempfile::TempDir,
    /// With more than one host ([`World::on_hosts`], PostgreSQL only): the hosts the
    /// timers take turns on, each with its own `ORCH_HOST_ID`, state and artefacts
    /// directories, one database; empty: one host, the env's own directories.
    hosts: Vec<&'static str>,
    /// How many timer passes ran on the hosts so far (whose turn is next).
    turns: usize,
}

fn world(project: &'static Project) -> World {
    let staging = Prod::start();
    let remote = tempfile::tempdir().expect("tempdir");
    let (bare, _) = crate::workspace::bare_remote(remote.path());
    let bin_dir = crate::common::orch_bin()
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let mut env = TestEnv::builder()
        .project(pipeline_project(project, &bare))
        .agents(&agents())
        .section(&staging_checks(staging.url()))
        .standins(&[
            Standin::Plane,
            Standin::Gitea,
            Standin::Prod,
            Standin::Telegram,
        ])
        .plane_states(&[])
        .set("PATH", &format!("{bin_dir}:{path}"))
        .set("ORCH_PLANE_WEBHOOK_SECRET", SECRET)
        .set("STUB_STAGING_URL", staging.url())
        .no_init()
        .build();
    let prod_url = env.prod().url().to_string();
    env.set("STUB_PROD_URL", &prod_url);
    let st = states(project);
    let refs: Vec<(&str, &str, &str)> = st.iter().map(|(i, n, g)| (i.as_str(), *n, *g)).collect();
    env.plane().add_project(project.plane_id, &refs);
    env.plane().add_work_item(
        project.plane_id,
        project.item,
        project.sequence,
        project.title,
        Some(&state_id(project, "Todo")),
    );
    // Production runs the default branch's current tip before the first deploy.
    let main = env.gitea().branch(project.repo, "main").expect("main");
    env.prod().deploy(&main);
    let mut w = World {
        env,
        project,
        staging,
        clock: 0,
        deliveries: 0,
        agent_socket: None,
        _remote: remote,
        hosts: Vec::new(),
        turns: 0,
    };
    w.run(&["init"]).expect(0);
    w
}

impl World {
    fn gitea(&self) -> &GiteaStandin {
        self.env.gitea()
    }

    fn plane(&self) -> &PlaneStandin {
        self.env.plane()
    }

    fn prod(&self) -> &Prod {
        self.env.prod()
    }

    fn telegram(&self) -> &Server {
        self.env.telegram()
    }
}

impl World {
    fn key(&self) -> String {
        format!("{}-{}", self.project.identifier, self.project.sequence)
    }

    /// From now on the timers (dispatch, reconcile, post-deploy-tick, reap) take turns
    /// on `hosts`, as the same units on several hosts sharing one PostgreSQL would.
    fn on_hosts(&mut self, hosts: &[&'static str]) {
        self.hosts = hosts.to_vec();
        self.turns = 0;
        self.move_to_host(hosts[0]);
    }

    /// What runs next runs on `host`: its id, state and artefacts directories.
    fn move_to_host(&mut self, host: &str) {
        for (key, dir) in [
            ("ORCH_STATE_DIR", "state"),
            ("ORCH_ARTEFACTS_DIR", "artefacts"),
        ] {
            let path = self.env.path(&format!("{host}/{dir}"));
            std::fs::create_dir_all(&path).unwrap();
            self.env.set(key, &path.display().to_string());
        }
        self.env.set("ORCH_HOST_ID", host);
    }

    /// The host the last pass ran on (`None`: one host).
    fn host(&self) -> Option<&'static str> {
        (!self.hosts.is_empty()).then(|| self.hosts[self.turns % self.hosts.len()])
    }

    /// `rel` (under `state/` or `artefacts/`) on the host the last pass ran on.
    fn local(&self, rel: &str) -> std::path::PathBuf {
        match self.host() {
            Some(host) => self.env.path(&format!("{host}/{rel}")),
            None => self.env.path(rel),
        }
    }

    /// Runs a pass at the current clock.
    fn run(&mut self, args: &[&str]) -> Run {
        self.pin_clock();
        let timer = matches!(
            args.first(),
            Some(&("dispatch" | "reconcile" | "post-deploy-tick" | "reap"))
        );
        if timer && !self.hosts.is_empty() {
            self.turns += 1;
            let host = self.hosts[self.turns % self.hosts.len()];
            self.move_to_host(host);
        }
        match (&self.agent_socket, args.first()) {
            (Some(socket), Some(&"dispatch")) => {
                let socket = socket.clone();
                self.env.set("ORCH_AGENT_SOCKET", &socket);
                let out = self.env.run(args);
                self.env.unset("ORCH_AGENT_SOCKET");
                out
            }
            _ => self.env.run(args),
        }
    }

    /// One time line for the whole world: orch's passes read it through `ORCH_NOW`, and
    /// Plane stamps its changes (`updated_at`) with it, as a real Plane would on the
    /// same wall clock.
    fn pin_clock(&mut self) {
        let now = jiff::Timestamp::from_second(NOW_UNIX + self.clock)
            .expect("a valid instant")
            .to_string();
        self.env.set("ORCH_NOW", &now);
        self.plane().set_now(&now);
    }

    /// Moves the clock on, as the wall clock would between two timer passes.
    fn advance(&mut self, secs: i64) {
        self.clock += secs;
    }

    fn task(&mut self) -> Value {
        let key = self.key();
        self.run(&["task", "show", &key, "--json"]).expect(0).json()
    }

    fn stage(&mut self) -> String {
        self.task()["stage"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A human moves the work item in Plane; Plane sends its signed delivery, which
    /// `webhook-handle --stdio` takes as the systemd socket hands it over.
    fn plane_moves_item_to(&mut self, state: &str) {
        self.plane_moves(self.project.item(), state, None);
    }

    /// A human moves `item` in Plane to `state`; with `priority`, the item carries it
    /// (in Plane's listing too, as Plane would) and the delivery's data says it.
    fn plane_moves(&mut self, item: Item, state: &str, priority: Option<&str>) {
        let p = self.project;
        let id = state_id(p, state);
        self.pin_clock();
        let updated_at = self.plane().set_item_state(p.plane_id, item.id, &id);
        let group = states(p).into_iter().find(|s| s.1 == state).unwrap().2;
        let mut data = json!({
            "id": item.id,
            "name": item.title,
            "sequence_id": item.sequence,
            "project": p.plane_id,
            "state": {"id": id, "name": state, "color": "#60646C", "group": group},
            "updated_at": updated_at,
        });
        if let Some(priority) = priority {
            self.plane()
                .set_item_priority(p.plane_id, item.id, Some(json!(priority)));
            data["priority"] = json!(priority);
        }
        let body = serde_json::to_vec(&json!({
            "event": "issue",
            "action": "updated",
            "webhook_id": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e03",
            "workspace_id": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e01",
            "data": data,
            "activity": {"field": "state_id", "new_value": id, "old_value": null,
                         "old_identifier": null, "new_identifier": null},
        }))
        .unwrap();
        self.deliveries += 1;
        let mut req = format!(
            "POST /webhooks/plane HTTP/1.1\r\nHost: orch.example\r\nContent-Type: application/json\r\nUser-Agent: Autopilot\r\nX-Plane-Event: issue\r\nX-Plane-Delivery: loop-{}\r\nX-Plane-Signature: {}\r\nContent-Length: {}\r\n\r\n",
            self.deliveries,
            sign(SECRET, &body),
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        let mut child = self
            .env
            .command(&["webhook-handle", "--stdio"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn webhook-handle");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &req).unwrap();
        let run: Run = child.wait_with_output().unwrap().into();
        assert!(
            run.code == 0 && run.stdout.starts_with("HTTP/1.1 200"),
            "delivery to {state}: exit {}\n{}\n{}",
            run.code,
            run.stdout,
            run.stderr
        );
    }

    /// The dispatch timer fires: exactly one queued job of `agent` starts (the default
    /// concurrency is 1), and the test waits for its supervisor to exit (a pidfd event;
    /// the gate has then been applied); the job succeeded. Returns the job's JSON.
    fn dispatch_and_wait(&mut self, agent: &str, stage: &str) -> Value {
        let (row, log) = self.dispatch_and_wait_for_end(agent, stage);
        assert_eq!(
            (row["status"].as_str(), row["exit_code"].as_i64()),
            (Some("succeeded"), Some(0)),
            "{agent} job {} at {stage}:\n{log}",
            row["id"]
        );
        row
    }

    /// As [`World::dispatch_and_wait`], however the job ended: returns its JSON and its
    /// log.
    fn dispatch_and_wait_for_end(&mut self, agent: &str, stage: &str) -> (Value, String) {
        let queued = self.queued();
        let ours: Vec<&Value> = queued
            .iter()
            .filter(|j| j["agent"] == agent && j["stage"] == stage)
            .collect();
        assert_eq!(
            (ours.len(), queued.len()),
            (1, 1),
            "one queued {agent} job at {stage} expected; queued: {queued:#?}\ntask: {:#}",
            self.task()
        );
        let job = ours[0]["id"].as_i64().unwrap();
        let (started, sup) = self.dispatch_one();
        assert_eq!(started, job, "dispatch started the queued job");
        self.wait_job(job, sup)
    }

    /// The queued jobs, as `job list --json` prints them.
    fn queued(&mut self) -> Vec<Value> {
        let queued = self
            .run(&["job", "list", "--status", "queued", "--json"])
            .expect(0)
            .json();
        queued.as_array().cloned().unwrap_or_default()
    }

    /// The dispatch timer fires and starts exactly one job (the concurrency is 1):
    /// returns the job's id and its detached supervisor's pid, without waiting.
    fn dispatch_one(&mut self) -> (i64, i64) {
        let out = self.run(&["dispatch"]).expect(0);
        // dispatch names the detached supervisor it started (which stamps itself later).
        let started: Vec<(i64, i64)> = out
            .stderr
            .split("started job ")
            .skip(1)
            .filter_map(|rest| {
                let (job, rest) = rest.split_once(" (direct, supervisor pid ")?;
                let sup = rest.split(')').next()?;
                Some((job.trim().parse().ok()?, sup.trim().parse().ok()?))
            })
            .collect();
        assert_eq!(started.len(), 1, "one job started:\n{}", out.stderr);
        started[0]
    }

    /// Waits for job `job`'s supervisor `sup` to exit (a pidfd event); returns the job's
    /// JSON and its log.
    fn wait_job(&mut self, job: i64, sup: i64) -> (Value, String) {
        assert!(
            wait_exit(sup, Duration::from_secs(60)),
            "job {job}'s supervisor ends"
        );
        let jobs = self.run(&["job", "list", "--json"]).expect(0).json();
        let row = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == job)
            .cloned()
            .unwrap();
        let log = std::fs::read_to_string(self.local(&format!("state/jobs/{job}.log")))
            .unwrap_or_default();
        (row, log)
    }

    /// The developer job ran in the task's workspace: its working directory and
    /// `ORCH_WORKSPACE` are the task's folder under `state/workspaces`, checked out at the
    /// task's branch; reused (fetched, reset): the analyst's job cloned it.
    fn assert_ran_in_the_workspace(&mut self, job: &Value, round: u32) {
        let task = self.task();
        let ws = self.local(&format!("state/workspaces/{}-{}", task["id"], self.key()));
        let log =
            std::fs::read_to_string(self.local(&format!("state/jobs/{}.log", job["id"]))).unwrap();
        let ws = ws.display();
        let branch = task["branch"].as_str().unwrap();
        assert!(
            log.contains(&format!("cwd {ws} workspace {ws} checked out {branch}")),
            "round {round}: the developer ran in its workspace\n{log}"
        );
        // On one host the analyst's clone is reused; on several, the host that runs the
        // developer has it only if it ran an earlier job of the task, else it clones.
        let ways: &[&str] = if self.hosts.is_empty() {
            &["reused"]
        } else {
            &["reused", "cloned"]
        };
        assert!(
            ways.iter()
                .any(|how| log.contains(&format!("== workspace {how} at {branch}"))),
            "round {round}: the workspace {} at the task's branch\n{log}",
            ways.join(" or ")
        );
    }

    /// The CI system reports success on a commit.
    fn ci_green(&self, sha: &str) {
        self.gitea()
            .add_status(self.project.repo, sha, "ci/test", "success");
    }

    /// The reconcile timer fires after the grace period (the default 300 s) has passed.
    fn reconcile_after_grace(&mut self) -> Run {
        self.advance(301);
        self.run(&["reconcile"]).expect(0)
    }

    /// The open PR for the task's branch now: (number, head sha).
    fn open_pr(&mut self) -> (u64, String) {
        let task = self.task();
        let branch = task["branch"].as_str().unwrap().to_string();
        let repo = self.project.repo;
        let open: Vec<u64> = self
            .gitea()
            .pulls_for(repo, &branch)
            .into_iter()
            .filter(|n| {
                self.gitea()
                    .pull(repo, *n)
                    .is_some_and(|p| p.state == "open")
            })
            .collect();
        assert_eq!(open.len(), 1, "one open PR for {branch}: {open:?}");
        let head = self.gitea().pull(repo, open[0]).unwrap().head_sha;
        (open[0], head)
    }

    /// One round from development to done; returns the round's PR number.
    fn round_from_development(&mut self, round: u32) -> u64 {
        assert_eq!(
            self.stage(),
            "development",
            "round {round} starts in development"
        );
        let developer = self.dispatch_and_wait("developer", "development");
        self.assert_ran_in_the_workspace(&developer, round);
        let (pr, head) = self.open_pr();
        assert_eq!(self.stage(), "development", "no CI yet: the gate waits");
        self.ci_green(&head);
        self.reconcile_after_grace();
        assert_eq!(
            self.stage(),
            "review",
            "round {round}: CI green moves it to review"
        );
        self.dispatch_and_wait("reviewer", "review");
        assert_eq!(self.stage(), "deploy-staging", "round {round}: APPROVE");
        self.dispatch_and_wait("deployer", "deploy-staging");
        assert_eq!(
            self.staging.revision().as_deref(),
            Some(head.as_str()),
            "the deployer put the PR head on staging"
        );
        let report = std::fs::read_to_string(
            self.local(&format!("artefacts/{}/10-staging-report.md", self.key())),
        )
        .expect("the staging report");
        assert!(
            report.contains("staging_status: SUCCESS"),
            "round {round}: staging passes (part A: image freshness expects the PR head \
             when no revision is given)\n{report}"
        );
        // Part A: the pin is recorded on every path.
        assert_eq!(
            self.task()["validated_revision"].as_str(),
            Some(head.as_str()),
            "round {round}: staging-check --task pins the PR head (part A)\n{report}"
        );
        assert_eq!(self.stage(), "deploy", "round {round}: staging passed");
        self.dispatch_and_wait("deployer", "deploy");
        let merged = self.gitea().pull(self.project.repo, pr).unwrap();
        assert!(
            merged.merged,
            "round {round}: PR #{pr} merged by merge-guard"
        );
        assert_eq!(
            self.gitea().merge_calls(self.project.repo, pr),
            1,
            "one merge call"
        );
        let main = self.gitea().branch(self.project.repo, "main").unwrap();
        assert_eq!(
            self.prod().revision(),
            Some(main),
            "production runs the merged main"
        );
        assert_eq!(
            self.stage(),
            "done",
            "round {round}: deploy_status SUCCESS and merged"
        );
        pr
    }

    /// Production degrades; the post-deploy timer ticks (a minute apart) until the
    /// window acted, at most `ticks` times. Returns the tick outputs.
    fn degrade_and_tick(&mut self, ticks: usize) -> Vec<Run> {
        self.prod().set_health(503);
        let mut runs = Vec::new();
        for _ in 0..ticks {
            self.advance(60);
            runs.push(self.run(&["post-deploy-tick"]).expect(0));
        }
        runs
    }

    /// (from, to, actor) of every stage event, in order.
    fn events(&mut self) -> Vec<(String, String, String)> {
        self.task()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
                (s("from"), s("to"), s("actor"))
            })
            .collect()
    }

    /// Jobs of the task as (agent, stage, status, attempt).
    fn jobs(&mut self) -> Vec<(String, String, String, i64)> {
        self.task()["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                let s = |k: &str| j[k].as_str().unwrap_or("").to_string();
                (
                    s("agent"),
                    s("stage"),
                    s("status"),
                    j["attempt"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// The first half of every loop: start delivery, analyst, approval delivery.
    fn start_and_approve(&mut self) {
        self.plane_moves_item_to("In Progress");
        let task = self.task();
        assert_eq!(task["stage"], "analysis");
        let branch = task["branch"].as_str().unwrap().to_string();
        assert_eq!(
            self.gitea().branch(self.project.repo, &branch),
            self.gitea().branch(self.project.repo, "main"),
            "the start made the task's branch from main"
        );
        self.dispatch_and_wait("analyst", "analysis");
        let analysis = std::fs::read_to_string(
            self.local(&format!("artefacts/{}/01-analysis.md", self.key())),
        )
        .unwrap();
        assert!(analysis.contains("analysis_status: APPROVED"), "{analysis}");
        assert_eq!(self.stage(), "analysis", "a human approves, nobody else");
        self.advance(60);
        self.plane_moves_item_to("Approved");
        assert_eq!(self.stage(), "development");
    }

    /// Production degrades after a release: the post-deploy watch rolls back once (part
    /// B), then a reconcile pass (which also completes a round's branch if the reopen
    /// could not make it) runs before the next dispatch, and the task is in development.
    fn roll_back_and_reopen(&mut self) {
        let ticks = self.degrade_and_tick(4);
        let log: Vec<&str> = ticks.iter().map(|r| r.stderr.as_str()).collect();
        assert_eq!(
            self.prod().rollbacks(),
            1,
            "one rollback ran (part B):\n{}",
            log.join("\n")
        );
        self.reconcile_after_grace();
        assert_eq!(self.stage(), "development", "reopened by the rollback");
    }

    /// Nothing but the pipeline moved the task, and nobody but Plane's two deliveries
    /// (start, approval) came from a human.
    fn assert_no_human_but_the_approval(&mut self) {
        for (from, to, actor) in self.events() {
            assert_ne!(actor, "operator", "{from} -> {to} was an operator's move");
        }
        assert_eq!(
            self.env.count("SELECT count(*) FROM deliveries"),
            2,
            "the start and the approval are the only deliveries"
        );
        assert_eq!(
            self.env
                .count("SELECT count(*) FROM jobs WHERE status <> 'succeeded' OR attempt <> 1"),
            0,
            "every job succeeded at its first attempt: {:#?}",
            self.jobs()
        );
    }
}

fn ev(from: &str, to: &str, actor: &str) -> (String, String, String) {
    (from.into(), to.into(), actor.into())
}

/// The first round's stage events, after the task was started.
/// Every stage change of a ticket that ships, is rolled back by the post-deploy watch
/// and ships again in round 2.
fn shipped_rolled_back_and_shipped_again() -> Vec<(String, String, String)> {
    let mut want = vec![ev("", "analysis", "webhook")];
    want.extend(round_one_events());
    want.push(ev("done", "development", "post-deploy"));
    want.extend(round_one_events().into_iter().skip(1));
    want
}

fn round_one_events() -> Vec<(String, String, String)> {
    vec![
        ev("analysis", "development", "webhook"),
        ev("development", "review", "reconcile"),
        ev("review", "deploy-staging", "run-job"),
        ev("deploy-staging", "deploy", "run-job"),
        ev("deploy", "done", "run-job"),
    ]
}

#[test]
fn an_ordinary_repo_ships_is_rolled_back_and_ships_again() {
    let mut w = world(&SHOP);
    w.start_and_approve();
    let first_pr = w.round_from_development(1);
    let first_branch = w.task()["branch"].as_str().unwrap().to_string();
    let deleted_by_merge = w.gitea().branch(SHOP.repo, &first_branch).is_none();

    // Production degrades in the window: DEGRADED → rollback → reopened (part B: the
    // default post-deploy repos are every project with a health_url).
    w.roll_back_and_reopen();
    assert_eq!(w.prod().health(), 200, "the previous release is healthy");
    let task = w.task();
    // Part B: a new round, with no PR, no pin and a branch from the current main.
    assert_eq!(
        w.env.count(&format!(
            "SELECT round FROM tasks WHERE key = '{}'",
            w.key()
        )),
        2,
        "round 2 (part B): {task:#}"
    );
    assert!(
        task["pr_number"].is_null(),
        "no recorded PR (part B): {task:#}"
    );
    assert!(
        task["validated_revision"].is_null(),
        "no pin (part B): {task:#}"
    );
    let branch = task["branch"].as_str().unwrap().to_string();
    // merge-guard does not ask Gitea to delete the head branch and the repo's default
    // keeps it, so round 1's branch survives and round 2 takes `<branch>--r2`;
    // tests/integration/rounds.rs pins the same-name path (a deleted branch) on its own.
    assert!(!deleted_by_merge, "round 1's branch survives the merge");
    let want_branch = if deleted_by_merge {
        first_branch.clone()
    } else {
        format!("{first_branch}--r2")
    };
    assert_eq!(branch, want_branch, "round 2's branch name (part B)");
    assert_eq!(
        w.gitea().branch(SHOP.repo, &branch),
        w.gitea().branch(SHOP.repo, "main"),
        "round 2's branch starts at the merged main"
    );

    let second_pr = w.round_from_development(2);
    assert_ne!(second_pr, first_pr, "round 2 has a new PR");
    // Round 2's gates read round 2's reports: entering each stage moved round 1's aside.
    let dir = w.env.path(&format!("artefacts/{}", w.key()));
    let mut history: Vec<String> = std::fs::read_dir(dir.join("history"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    history.sort();
    let prefixes = [
        "05-review.round-2.",
        "10-staging-report.round-2.",
        "12-deploy-report.round-2.",
    ];
    assert_eq!(history.len(), 3, "{history:?}");
    for (name, prefix) in history.iter().zip(prefixes) {
        assert!(name.starts_with(prefix), "{history:?}");
    }
    for file in [
        "05-review.md",
        "10-staging-report.md",
        "12-deploy-report.md",
    ] {
        assert!(dir.join(file).exists(), "round 2's {file}");
    }
    // The rollback left its feedback, and round 2's developer was handed it; round 1's
    // developer had none.
    let feedback = dir.join("feedback-1.md");
    let text = std::fs::read_to_string(&feedback).expect("the rollback's feedback file");
    assert!(
        text.contains("kind: post-deploy-degraded\nround: 1\n")
            && text.contains("DEGRADED: health failure streak 3")
            && text.contains("| health HTTP 503; metrics n/a |"),
        "{text}"
    );
    assert!(
        !dir.join("feedback-2.md").exists(),
        "one rollback, one file"
    );
    let jobs = w.run(&["job", "list", "--json"]).expect(0).json();
    let mut developer_logs: Vec<(i64, String)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["agent"] == "developer")
        .map(|j| {
            let log = std::fs::read_to_string(j["log_path"].as_str().unwrap()).unwrap();
            (j["id"].as_i64().unwrap(), log)
        })
        .collect();
    developer_logs.sort();
    assert_eq!(developer_logs.len(), 2);
    assert!(
        developer_logs[0].1.contains("feedback: none"),
        "{}",
        developer_logs[0].1
    );
    let seen = format!(
        "feedback {}: kind: post-deploy-degraded",
        feedback.display()
    );
    assert!(
        developer_logs[1].1.contains(&seen),
        "{}",
        developer_logs[1].1
    );
    assert_eq!(
        w.gitea().all_merge_calls(SHOP.repo),
        2,
        "one merge call per round"
    );

    assert_eq!(
        w.events(),
        shipped_rolled_back_and_shipped_again(),
        "every stage change, by the pipeline"
    );
    let mut jobs: Vec<(String, String)> = w.jobs().into_iter().map(|j| (j.0, j.1)).collect();
    jobs.sort();
    let mut per_round = vec![
        ("developer", "development"),
        ("reviewer", "review"),
        ("deployer", "deploy-staging"),
        ("deployer", "deploy"),
    ];
    per_round.extend(per_round.clone());
    per_round.push(("analyst", "analysis"));
    let mut want_jobs: Vec<(String, String)> = per_round
        .into_iter()
        .map(|(a, s)| (a.into(), s.into()))
        .collect();
    want_jobs.sort();
    assert_eq!(jobs, want_jobs, "each stage's job once per round");
    w.assert_no_human_but_the_approval();
}

/// Issue 14 in the loop: two hosts, one PostgreSQL, every timer taking turns between
/// them (each its own `ORCH_HOST_ID`, state and artefacts directories). A ticket ships,
/// production degrades, the rollback reopens it and round 2 ships, as on one host: the
/// gates, the post-deploy watch and round 2's developer read what another host's agent
/// or tick wrote, from the database.
#[test]
fn two_hosts_take_turns_at_every_timer_through_a_release_a_rollback_and_a_second_round() {
    if crate::common::sqlite_only() {
        return; // a SQLite file is one host's
    }
    let mut w = world(&SHOP);
    w.on_hosts(&["host-a", "host-b"]);
    w.start_and_approve();
    w.round_from_development(1);
    w.roll_back_and_reopen();
    w.round_from_development(2);

    // Round 2's developer was handed the rollback's feedback, on whichever host.
    let jobs = w.run(&["job", "list", "--json"]).expect(0).json();
    let second = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["agent"] == "developer")
        .max_by_key(|j| j["id"].as_i64())
        .cloned()
        .unwrap();
    let log = std::fs::read_to_string(second["log_path"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("feedback-1.md: kind: post-deploy-degraded"),
        "{log}"
    );
    assert_eq!(
        w.gitea().all_merge_calls(SHOP.repo),
        2,
        "one merge call per round"
    );

    assert_eq!(
        w.events(),
        shipped_rolled_back_and_shipped_again(),
        "every stage change, by the pipeline"
    );
    assert_eq!(w.jobs().len(), 9, "each stage's job once per round");
    // The jobs ran on both hosts, each on the host whose dispatch claimed it.
    for host in ["host-a", "host-b"] {
        assert!(
            w.env.count(&format!(
                "SELECT count(*) FROM jobs WHERE host = '{host}' AND status = 'succeeded'"
            )) > 0,
            "jobs ran on {host}"
        );
    }
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM jobs WHERE host IS NULL OR status <> 'succeeded'"),
        0
    );
    w.assert_no_human_but_the_approval();
}

#[test]
fn the_self_hosting_repo_ships_on_its_image_pin_and_only_alerts() {
    let mut w = world(&ORCH);
    w.start_and_approve();
    let pr = w.round_from_development(1);
    let head = w.gitea().pull(ORCH.repo, pr).unwrap().head_sha;
    let report = std::fs::read_to_string(
        w.env
            .path(&format!("artefacts/{}/10-staging-report.md", w.key())),
    )
    .unwrap();
    assert!(
        report.contains(&format!("checked_revision: {head}")),
        "the image-freshness check read the PR head from staging:\n{report}"
    );
    let merge = w
        .gitea()
        .server()
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.ends_with(&format!("/pulls/{pr}/merge")))
        .and_then(|r| r.json())
        .expect("a merge request");
    assert_eq!(merge["head_commit_id"], head.as_str(), "merged at the pin");

    // Production degrades: ALERT_ONLY. An alert, no rollback, the task stays done.
    let alerts_before = w.telegram().count(Some("POST"), "/bot");
    let ticks = w.degrade_and_tick(4);
    let log: Vec<&str> = ticks.iter().map(|r| r.stderr.as_str()).collect();
    assert_eq!(
        w.prod().rollbacks(),
        0,
        "never rolled back:\n{}",
        log.join("\n")
    );
    assert!(
        w.telegram().count(Some("POST"), "/bot") > alerts_before,
        "an alert went out:\n{}",
        log.join("\n")
    );
    assert_eq!(w.stage(), "done", "the self-hosting task stays done");
    let verdict = std::fs::read_to_string(
        w.env
            .path(&format!("artefacts/{}/16-post-deploy-log.md", w.key())),
    )
    .unwrap();
    assert!(verdict.contains("DEGRADED"), "{verdict}");

    let mut want = vec![ev("", "analysis", "webhook")];
    want.extend(round_one_events());
    assert_eq!(w.events(), want, "every stage change, by the pipeline");
    assert_eq!(w.gitea().all_merge_calls(ORCH.repo), 1, "one merge call");
    assert_eq!(w.jobs().len(), 5, "each stage's job once: {:#?}", w.jobs());
    w.assert_no_human_but_the_approval();
}

#[test]
fn a_gitea_outage_during_staging_check_reruns_the_deployer_not_the_developer() {
    let mut w = world(&SHOP);
    w.start_and_approve();
    w.dispatch_and_wait("developer", "development");
    let (pr, head) = w.open_pr();
    w.ci_green(&head);
    w.reconcile_after_grace();
    w.dispatch_and_wait("reviewer", "review");
    assert_eq!(w.stage(), "deploy-staging");
    assert_eq!(
        w.task()["pr_number"],
        pr,
        "the development gate recorded the PR"
    );
    // What an earlier green staging run left: a SUCCESS report and its pin. On its word
    // alone the gate would advance; a run without a verdict must take it away.
    let key = w.key();
    w.env.artefact(
        &key,
        "10-staging-report.md",
        &format!("---\nstaging_status: SUCCESS\nchecked_revision: {head}\npin: pr-head\npr_number: {pr}\n---\n"),
    );
    w.env
        .db()
        .execute(
            "UPDATE tasks SET validated_revision = ?1 WHERE key = ?2",
            orch::sql_params![head, key],
        )
        .unwrap();
    // Gitea answers the deployer's own read of the PR, then fails staging-check's read
    // (a bad gateway, twice: one read and its retry); later reads are answered again.
    let pull = format!("/api/v1/repos/{}/pulls/{pr}", SHOP.repo);
    w.gitea().server().script(
        Some("GET"),
        &pull,
        orch::standin::server::Reply::json(
            200,
            &json!({"number": pr, "state": "open", "head": {"ref": "x", "sha": head}}),
        ),
        1,
    );
    w.gitea().server().script(
        Some("GET"),
        &pull,
        orch::standin::server::Reply::raw(502, "text/html", "<html>bad gateway</html>"),
        2,
    );
    let (job, log) = w.dispatch_and_wait_for_end("deployer", "deploy-staging");
    assert!(
        log.contains(&format!(
            "staging-check: could not read PR #{pr}'s head from Gitea ("
        )) && log.contains("no verdict; nothing recorded; run it again")
            && log.contains("(exit 2)"),
        "{log}"
    );
    // The prompt's exit 2: the deployer exits non-zero and writes nothing.
    assert_eq!(
        (job["status"].as_str(), job["exit_code"].as_i64()),
        (Some("failed"), Some(3)),
        "{log}"
    );
    let task = w.task();
    assert_eq!(
        task["stage"], "deploy-staging",
        "not rolled back, not advanced: {task:#}"
    );
    assert_eq!(task["developer_retries"], 0, "no developer round counted");
    assert!(task["validated_revision"].is_null(), "{task:#}");
    assert!(
        !w.env
            .path(&format!("artefacts/{key}/10-staging-report.md"))
            .exists(),
        "no report, and the older one is gone"
    );
    assert_eq!(w.staging.revision().as_deref(), Some(head.as_str()));

    // Gitea is back; reconcile re-runs the deployer (its next attempt), which ships.
    w.reconcile_after_grace();
    let again = w.dispatch_and_wait("deployer", "deploy-staging");
    assert_eq!(again["attempt"], 2);
    assert_eq!(w.stage(), "deploy", "staging passed on the re-run");
    assert_eq!(w.task()["validated_revision"].as_str(), Some(head.as_str()));
    let back: Vec<_> = w
        .events()
        .into_iter()
        .filter(|(from, to, _)| from == "deploy-staging" && to == "development")
        .collect();
    assert!(
        back.is_empty(),
        "never sent back to the developer: {back:?}"
    );
}

/// Runs one stub agent role for task 1 as run-job would (its job env, the world's env).
fn stub(w: &mut World, role: &str, job: u32) -> Run {
    w.pin_clock();
    let mut agent = std::process::Command::new(AGENT);
    agent
        .arg(role)
        .env_clear()
        .env("HOME", w.env.path(""))
        .envs(&w.env.env)
        .env("ORCH_TASK_ID", "1")
        .env("ORCH_TASK_KEY", w.key())
        .env("ORCH_JOB_ID", job.to_string())
        .env(
            "ORCH_TASK_ARTEFACTS",
            w.env.path(&format!("artefacts/{}", w.key())),
        )
        .current_dir(w.env.path(""));
    agent.output().expect("run orch-stub-agent").into()
}

#[test]
fn stub_agents_do_what_the_prompts_say_and_nothing_more() {
    let mut w = world(&SHOP);
    let key = w.key();
    w.run(&[
        "task",
        "add",
        "--project",
        "shop",
        "--work-item",
        SHOP.item,
        "--key",
        &key,
        "--title",
        SHOP.title,
    ])
    .expect(0);
    let branch = w.task()["branch"].as_str().unwrap().to_string();
    let start = w
        .gitea()
        .branch(SHOP.repo, &branch)
        .expect("task add made the branch");

    // Step 1 of every prompt: outside its stage an agent does nothing at all.
    for role in ["developer", "reviewer"] {
        let out = stub(&mut w, role, 9).expect(0);
        assert!(out.stdout.contains("not mine") || out.stdout.contains("nothing to do"));
    }
    assert_eq!(
        w.gitea().branch(SHOP.repo, &branch).unwrap(),
        start,
        "no commit"
    );
    assert!(w.gitea().pulls_for(SHOP.repo, &branch).is_empty(), "no PR");
    assert!(
        !w.env.path(&format!("artefacts/{key}")).exists(),
        "no artefact"
    );

    // The analyst writes its artefact and nothing else.
    stub(&mut w, "analyst", 1).expect(0);
    let artefacts = w.env.path(&format!("artefacts/{key}"));
    let read = |f: &str| std::fs::read_to_string(artefacts.join(f)).unwrap();
    assert!(read("01-analysis.md").starts_with("---\nanalysis_status: APPROVED\n---\n"));
    w.run(&[
        "task",
        "move",
        &key,
        "--to",
        "development",
        "--reason",
        "stub test",
    ])
    .expect(0);
    let out = stub(&mut w, "analyst", 9).expect(0);
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);

    // The developer, re-driven: each run commits anew; only the first opens a PR.
    stub(&mut w, "developer", 2).expect(0);
    let first = w.gitea().branch(SHOP.repo, &branch).unwrap();
    assert_ne!(first, start, "the developer committed to the task's branch");
    assert_eq!(w.gitea().pulls_for(SHOP.repo, &branch), vec![1]);
    let pr = w.gitea().pull(SHOP.repo, 1).unwrap();
    assert_eq!(
        (pr.state.as_str(), pr.head_sha.as_str()),
        ("open", first.as_str())
    );
    let again = stub(&mut w, "developer", 3).expect(0);
    assert!(
        again.stdout.contains("PR #1 is already open"),
        "{}",
        again.stdout
    );
    assert_eq!(
        w.gitea().pulls_for(SHOP.repo, &branch),
        vec![1],
        "no second PR"
    );
    assert_ne!(
        w.gitea().branch(SHOP.repo, &branch).unwrap(),
        first,
        "a second commit"
    );
    assert!(w
        .gitea()
        .file(SHOP.repo, &branch, &format!("changes/{key}-job-3.md"))
        .is_some());
    assert!(
        !w.env
            .path(&format!("artefacts/{key}/05-review.md"))
            .exists(),
        "the developer writes no artefact"
    );

    // The reviewer writes its verdict and nothing else.
    w.run(&[
        "task",
        "move",
        &key,
        "--to",
        "review",
        "--reason",
        "stub test",
    ])
    .expect(0);
    stub(&mut w, "reviewer", 4).expect(0);
    assert!(read("05-review.md").starts_with("---\nreview_verdict: APPROVE\n---\n"));

    // The deployer outside its stages does nothing at all.
    let out = stub(&mut w, "deployer", 5).expect(0);
    assert!(out.stdout.contains("not mine"), "{}", out.stdout);
    assert_eq!(w.staging.server.requests().len(), 0);
    assert_eq!(w.prod().server.requests().len(), 0);

    // At deploy with no validated revision, merge-guard answers ERROR (exit 2): the
    // deployer stops with a non-zero exit, writes no report and deploys nothing.
    for stage in ["development", "review", "deploy-staging", "deploy"] {
        w.run(&["task", "move", &key, "--to", stage, "--reason", "stub test"])
            .expect(0);
    }
    // The reviewer's verdict above was written before the task entered review: that
    // move set it aside, so no gate reads it as this visit's.
    assert!(!w
        .env
        .path(&format!("artefacts/{key}/05-review.md"))
        .exists());
    assert_eq!(
        std::fs::read_dir(w.env.path(&format!("artefacts/{key}/history")))
            .unwrap()
            .count(),
        1
    );
    let out = stub(&mut w, "deployer", 6);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("MERGE-GUARD: ERROR"), "{}", out.stdout);
    assert!(!w
        .env
        .path(&format!("artefacts/{key}/12-deploy-report.md"))
        .exists());
    assert_eq!(
        w.gitea().all_merge_calls(SHOP.repo),
        0,
        "the deployer never merges itself"
    );
    assert_eq!(w.prod().server.requests().len(), 0, "nothing deployed");

    // Bad usage is exit 2.
    let bad = std::process::Command::new(AGENT)
        .arg("merger")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    // So is a bad STUB_USAGE, before the role does anything.
    for spec in ["", "1,2", "1,2,3,4", "-1,2,0.1", "x,2,0.1", "1,2.5,0.1"] {
        w.env.set("STUB_USAGE", spec);
        let out = stub(&mut w, "reviewer", 7);
        assert_eq!(out.code, 2, "{spec:?}: {}", out.stderr);
        assert!(out.stderr.contains("STUB_USAGE"), "{}", out.stderr);
        assert_eq!(out.stdout, "", "{spec:?}: nothing done");
    }
    // A good one is written once the role is done, for run-job to read.
    w.env.set("STUB_USAGE", "10,2,0.05");
    stub(&mut w, "reviewer", 7).expect(0);
    let usage = std::fs::read_to_string(w.env.path(&format!("artefacts/{key}/usage-7.json")))
        .expect("the usage file");
    assert_eq!(
        serde_json::from_str::<Value>(&usage).unwrap(),
        json!({"tokens_in": 10, "tokens_out": 2, "cost": "0.05"})
    );
}

/// The deployer's `deploy` jobs of the task as (status, attempt), by attempt (a re-run
/// is the same job with the next attempt).
fn deploy_jobs(w: &mut World) -> Vec<(String, i64)> {
    let mut jobs: Vec<(String, i64)> = w
        .jobs()
        .into_iter()
        .filter(|j| j.0 == "deployer" && j.1 == "deploy")
        .map(|j| (j.2, j.3))
        .collect();
    jobs.sort_by_key(|j| j.1);
    jobs
}

/// Carries a started and approved task from development to the `deploy` stage, as in
/// round 1 of the loop; returns its PR number.
fn to_deploy(w: &mut World) -> u64 {
    w.dispatch_and_wait("developer", "development");
    let (pr, head) = w.open_pr();
    w.ci_green(&head);
    w.reconcile_after_grace();
    w.dispatch_and_wait("reviewer", "review");
    w.dispatch_and_wait("deployer", "deploy-staging");
    assert_eq!(w.stage(), "deploy", "staging passed");
    pr
}

#[test]
fn a_hold_keeps_the_deployer_and_the_merge_off_until_cleared_then_ships_once() {
    let mut w = world(&SHOP);
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("deploy-gate");
    let made = std::process::Command::new("mkfifo")
        .arg(&gate)
        .status()
        .unwrap();
    assert!(made.success());
    w.start_and_approve();
    let pr = to_deploy(&mut w);
    let deploys_before = w.prod().deploys().len();

    // The freeze is on when the task reaches deploy: dispatch starts no deployer job.
    w.run(&["hold", "set", "--project", "shop", "--reason", "freeze"])
        .expect(0);
    let out = w.run(&["dispatch"]).expect(0);
    assert!(
        out.stderr.contains("hold_waits=1") && !out.stderr.contains("started job"),
        "{}",
        out.stderr
    );
    let queued = w.queued();
    assert_eq!(queued.len(), 1, "{queued:#?}");
    assert_eq!(
        (&queued[0]["agent"], &queued[0]["stage"]),
        (&json!("deployer"), &json!("deploy"))
    );
    let status = w.run(&["status"]).expect(0).stdout;
    assert!(
        status.contains("holds (1: no merge, no deployer job):") && status.contains("freeze"),
        "{status}"
    );
    let held = w.run(&["status", "--json"]).expect(0).json();
    assert_eq!(held["holds"][0]["project"], "shop", "{:#}", held["holds"]);

    // Cleared: the deployer starts. The freeze comes back while it runs, before its
    // merge: merge-guard answers BLOCKED, and the deployer writes no report.
    w.advance(60);
    w.run(&[
        "hold",
        "clear",
        "--project",
        "shop",
        "--reason",
        "false alarm",
    ])
    .expect(0);
    w.env.set("STUB_DEPLOY_GATE", &gate.display().to_string());
    let (job, sup) = w.dispatch_one();
    w.env.unset("STUB_DEPLOY_GATE");
    w.advance(60);
    w.run(&[
        "hold",
        "set",
        "--project",
        "shop",
        "--reason",
        "freeze again",
    ])
    .expect(0);
    // Opening the FIFO waits for the deployer to reach it: then it goes on.
    std::fs::write(&gate, "go\n").unwrap();
    let (row, log) = w.wait_job(job, sup);
    assert!(
        log.contains("MERGE-GUARD: BLOCKED") && log.contains("project shop is on hold"),
        "{log}"
    );
    assert_eq!(row["status"], "failed", "{log}");
    assert!(
        !w.env
            .path(&format!("artefacts/{}/12-deploy-report.md", w.key()))
            .exists(),
        "no deploy report during a hold:\n{log}"
    );
    assert_eq!(w.gitea().all_merge_calls(SHOP.repo), 0, "no merge call");
    assert_eq!(w.prod().deploys().len(), deploys_before, "nothing deployed");

    // The timers go on: reconcile queues the deployer again, and dispatch holds it.
    w.reconcile_after_grace();
    assert_eq!(w.stage(), "deploy", "never sent back to the developer");
    let out = w.run(&["dispatch"]).expect(0);
    assert!(
        out.stderr.contains("hold_waits=1") && !out.stderr.contains("started job"),
        "{}",
        out.stderr
    );
    let status = w.run(&["status"]).expect(0).stdout;
    assert!(status.contains("freeze again"), "{status}");

    // The freeze ends: the next pass carries the task to production.
    w.advance(60);
    w.run(&["hold", "clear", "--project", "shop", "--reason", "over"])
        .expect(0);
    let again = w.dispatch_and_wait("deployer", "deploy");
    assert_eq!(again["attempt"], 2);
    assert_eq!(w.stage(), "done");
    assert!(w.gitea().pull(SHOP.repo, pr).unwrap().merged);
    assert_eq!(w.gitea().all_merge_calls(SHOP.repo), 1, "one merge");
    let main = w.gitea().branch(SHOP.repo, "main").unwrap();
    assert_eq!(
        w.prod().deploys()[deploys_before..],
        [main],
        "one production deploy, of the merged main"
    );
    assert_eq!(
        deploy_jobs(&mut w),
        vec![("succeeded".to_string(), 2)],
        "one deploy job, run again once"
    );
    let mut want = vec![ev("", "analysis", "webhook")];
    want.extend(round_one_events());
    assert_eq!(w.events(), want, "no stage change but the loop's");
    let status = w.run(&["status"]).expect(0).stdout;
    assert!(!status.contains("freeze"), "{status}");
}

#[test]
fn priority_orders_two_tasks_and_reconcile_brings_plane_changes() {
    let mut w = world(&SHOP);
    w.env.set("ORCH_MAX_CONCURRENCY", "1");
    w.plane().add_work_item(
        SHOP.plane_id,
        SHOP_8.id,
        SHOP_8.sequence,
        SHOP_8.title,
        Some(&state_id(&SHOP, "Todo")),
    );
    let (low, urgent) = (SHOP.item(), SHOP_8);
    let (low_key, urgent_key) = ("SHOP-7", "SHOP-8");
    w.plane_moves(low, "In Progress", Some("low"));
    w.advance(60);
    w.plane_moves(urgent, "In Progress", Some("urgent"));
    let priority = |w: &mut World, key: &str| {
        w.run(&["task", "show", key, "--json"]).expect(0).json()["priority"].clone()
    };
    assert_eq!(priority(&mut w, low_key), "low");
    assert_eq!(priority(&mut w, urgent_key), "urgent");

    // Each dispatch starts one job: the urgent task's first, though it came later.
    let mut order = Vec::new();
    // Task 1 is SHOP-7, started first.
    let next = |w: &mut World| {
        let (job, sup) = w.dispatch_one();
        let (row, log) = w.wait_job(job, sup);
        assert_eq!(row["status"], "succeeded", "{log}");
        let task = if row["task_id"] == 1 {
            low_key
        } else {
            urgent_key
        };
        (task.to_string(), row["agent"].as_str().unwrap().to_string())
    };
    for _ in 0..2 {
        order.push(next(&mut w));
    }
    w.advance(60);
    w.plane_moves(low, "Approved", None);
    w.advance(60);
    w.plane_moves(urgent, "Approved", None);
    for _ in 0..2 {
        order.push(next(&mut w));
    }
    let pair = |k: &str, a: &str| (k.to_string(), a.to_string());
    assert_eq!(
        order,
        vec![
            pair(urgent_key, "analyst"),
            pair(low_key, "analyst"),
            pair(urgent_key, "developer"),
            pair(low_key, "developer"),
        ]
    );

    // In Plane the priorities change (no delivery: a priority change alone is no
    // pipeline action); the next reconcile pass brings them.
    w.plane()
        .set_item_priority(SHOP.plane_id, low.id, Some(json!("high")));
    w.plane()
        .set_item_priority(SHOP.plane_id, urgent.id, Some(json!("low")));
    for key in [low_key, urgent_key] {
        let branch = w.run(&["task", "show", key, "--json"]).expect(0).json()["branch"]
            .as_str()
            .unwrap()
            .to_string();
        let pr = w.gitea().pulls_for(SHOP.repo, &branch)[0];
        let head = w.gitea().pull(SHOP.repo, pr).unwrap().head_sha;
        w.ci_green(&head);
    }
    let out = w.reconcile_after_grace();
    assert!(
        out.stderr
            .contains("task SHOP-7: priority low -> high (as Plane lists it)")
            && out
                .stderr
                .contains("task SHOP-8: priority urgent -> low (as Plane lists it)"),
        "{}",
        out.stderr
    );
    assert_eq!(priority(&mut w, low_key), "high");
    assert_eq!(priority(&mut w, urgent_key), "low");
    // Now SHOP-7 goes first at every stage to production, then SHOP-8 (staging is one
    // shared environment, the concurrency is 1).
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(next(&mut w));
    }
    assert_eq!(
        order,
        vec![
            pair(low_key, "reviewer"),
            pair(low_key, "deployer"),
            pair(low_key, "deployer"),
            pair(urgent_key, "reviewer"),
            pair(urgent_key, "deployer"),
            pair(urgent_key, "deployer"),
        ]
    );
    for key in [low_key, urgent_key] {
        let task = w.run(&["task", "show", key, "--json"]).expect(0).json();
        assert_eq!(task["stage"], "done", "{task:#}");
    }
    assert_eq!(w.gitea().all_merge_calls(SHOP.repo), 2, "one merge each");
    assert!(w.queued().is_empty());
}

#[test]
fn spend_is_counted_in_the_loop_and_a_budget_parks_the_task_once() {
    let mut w = world(&SHOP);
    // Every stub job reports 1000 tokens in, 100 out, 0.40 USD; the cap is 1.00 USD.
    w.env.set("STUB_USAGE", "1000,100,0.40");
    w.env.set("ORCH_TASK_BUDGET", "1.00");
    w.start_and_approve();
    w.dispatch_and_wait("developer", "development");
    let (_, head) = w.open_pr();
    w.ci_green(&head);
    w.reconcile_after_grace();
    // The third job takes the task to 1.20: it was under the cap when it started.
    w.dispatch_and_wait("reviewer", "review");
    assert_eq!(w.stage(), "deploy-staging");
    let task = w.task();
    assert_eq!(
        task["spend"],
        json!({"jobs": 3, "tokens_in": 3000, "tokens_out": 300, "cost_micros": 1_200_000, "cost": "1.20"}),
        "{task:#}"
    );
    let key = w.key();
    let shown = w.run(&["task", "show", &key]).expect(0).stdout;
    assert!(
        shown.contains("spend cost 1.20 over 3 job(s), tokens in 3000 out 300"),
        "{shown}"
    );
    let status = w.run(&["status", "--json"]).expect(0).json();
    assert_eq!(
        status["spend"]["shop"]["cost"], "1.20",
        "{:#}",
        status["spend"]
    );

    // The cap is reached: dispatch starts nothing and parks the task.
    let out = w.run(&["dispatch"]).expect(0);
    assert!(!out.stderr.contains("started job"), "{}", out.stderr);
    let task = w.task();
    assert_eq!(task["escalated"], true, "{task:#}");
    assert!(
        task["escalation_reason"]
            .as_str()
            .unwrap()
            .starts_with("spend 1.20 reached ORCH_TASK_BUDGET 1.00 over 3 job(s)"),
        "{task:#}"
    );
    assert!(w.queued().is_empty(), "its deployer job was cancelled");
    // The timers go on; the escalation is announced once.
    let telegram_before = w.telegram().count(Some("POST"), "/bot");
    for _ in 0..3 {
        w.reconcile_after_grace();
        let out = w.run(&["dispatch"]).expect(0);
        assert!(!out.stderr.contains("started job"), "{}", out.stderr);
    }
    let comments: Vec<String> = w
        .plane()
        .comments(SHOP.plane_id, SHOP.item)
        .into_iter()
        .map(|c| c.1)
        .filter(|c| c.contains("ORCH_TASK_BUDGET"))
        .collect();
    assert_eq!(comments.len(), 1, "one Plane comment: {comments:#?}");
    assert_eq!(
        w.telegram().count(Some("POST"), "/bot") - telegram_before,
        1,
        "one notification"
    );
    assert_eq!(w.stage(), "deploy-staging");
    assert_eq!(w.task()["spend"]["jobs"], 3, "no job ran while parked");

    // A person raises the cap and runs the stage's agent again: that takes the parked
    // task back (the escalation is cleared), and the loop carries it to production.
    w.env.set("ORCH_TASK_BUDGET", "10");
    let out = w
        .run(&["job", "enqueue", "--task", &key, "--agent", "deployer"])
        .expect(0);
    assert!(
        out.stderr.contains(
            "task SHOP-7: escalation cleared (spend 1.20 reached ORCH_TASK_BUDGET 1.00 over 3 job(s))"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(w.task()["escalated"], false);
    w.dispatch_and_wait("deployer", "deploy-staging");
    assert_eq!(w.stage(), "deploy", "the gate is applied again");
    w.dispatch_and_wait("deployer", "deploy");
    assert_eq!(w.stage(), "done");
    assert_eq!(w.gitea().all_merge_calls(SHOP.repo), 1, "one merge");
    let task = w.task();
    assert_eq!(task["escalated"], false, "{task:#}");
    assert_eq!(task["spend"]["jobs"], 5, "{task:#}");
    assert_eq!(task["spend"]["cost"], "2.00", "{task:#}");
    let status = w.run(&["status", "--json"]).expect(0).json();
    assert_eq!(
        status["spend"]["shop"]["cost"], "2.00",
        "{:#}",
        status["spend"]
    );
    assert_eq!(status["spend"]["shop"]["jobs"], 5, "{:#}", status["spend"]);
    let status = w.run(&["status"]).expect(0).stdout;
    assert!(status.contains("spend:"), "{status}");
    assert_eq!(
        w.plane()
            .comments(SHOP.plane_id, SHOP.item)
            .into_iter()
            .filter(|c| c.1.contains("ORCH_TASK_BUDGET"))
            .count(),
        1,
        "still one escalation comment"
    );
}

#[test]
fn a_ticket_ships_with_agents_reaching_orch_only_through_the_agent_socket() {
    let mut w = world(&SHOP);
    w.pin_clock();
    let server = crate::agent_socket::SocketServer::start(&w.env);
    w.agent_socket = Some(server.path.clone());
    w.start_and_approve();
    w.round_from_development(1);
    let mut want = vec![ev("", "analysis", "webhook")];
    want.extend(round_one_events());
    assert_eq!(w.events(), want, "every stage change, by the pipeline");
    assert_eq!(w.gitea().all_merge_calls(SHOP.repo), 1, "one merge call");
    w.assert_no_human_but_the_approval();
    // Every orch call an agent made was answered by the socket server, for its own job.
    let jobs = w.run(&["job", "list", "--json"]).expect(0).json();
    let jobs = jobs.as_array().unwrap().clone();
    assert_eq!(jobs.len(), 5);
    let calls: usize = jobs
        .iter()
        .map(|j| {
            std::fs::read_to_string(j["log_path"].as_str().unwrap())
                .unwrap()
                .matches("\n$ orch ")
                .count()
        })
        .sum();
    let log = server.stop();
    assert!(!log.contains("refused"), "{log}");
    for j in &jobs {
        let served = format!("agent-socket: job {} (task {}", j["id"], w.key());
        assert!(log.contains(&served), "{served}\n{log}");
    }
    assert_eq!(log.matches("agent-socket: job ").count(), calls, "{log}");
}
