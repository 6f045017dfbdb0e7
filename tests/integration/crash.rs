//! Crashes and outages between the effects of starting a task and of acting on a
//! webhook delivery: the real binary killed for real (`ORCH_CRASH_AT`, SIGKILL) at each
//! crash point, Gitea down or not configured, then the real `reconcile` pass with the
//! Plane stand-in listing the work item. Every delivery is acted on exactly once.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};

use orch::core::intake::sign;
use orch::standin::gitea::GiteaStandin;
use orch::standin::plane::PlaneStandin;
use serde_json::json;

use crate::common::{Project, Standin, TestEnv, PLANE_STATES};

const SECRET: &str = "plane_wh_0123456789abcdef0123456789abcdef";
const PROJECT: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";
const ITEM: &str = "00000000-0000-4000-8000-000000000007";
const BRANCH: &str = "orch-7-work-item-7";

/// The project's states: the names Plane's approve and reject states carry.
const STATE_NAMES: &str =
    "states:\n  approved: { names: [Approved] }\n  rejected: { names: [Rejected] }";

/// The states of the project: (id, name, group).
const STATES: [(&str, &str, &str); 4] = [
    PLANE_STATES[0],
    PLANE_STATES[1],
    (
        "5a000000-0000-4000-8000-000000000003",
        "Rejected",
        "unstarted",
    ),
    (
        "5a000000-0000-4000-8000-000000000004",
        "Cancelled",
        "cancelled",
    ),
];
/// The four kinds of delivery that act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Start,
    Approve,
    Reject,
    Cancel,
}

impl Kind {
    fn state(self) -> (&'static str, &'static str, &'static str) {
        STATES[self as usize]
    }

    /// The crash points a delivery of this kind passes.
    fn points(self) -> &'static [&'static str] {
        match self {
            Kind::Start => &[
                "delivery-stored",
                "delivery-acted",
                "task-stored",
                "branch-created",
                "delivery-done",
            ],
            _ => &["delivery-stored", "delivery-acted", "delivery-done"],
        }
    }
}

struct World {
    env: TestEnv,
}

fn world() -> World {
    let env = TestEnv::builder()
        .project(Project::orch().self_hosting(false).with(STATE_NAMES))
        .standins(&[Standin::Gitea, Standin::Plane])
        .plane_states(&STATES)
        .set("ORCH_PLANE_WEBHOOK_SECRET", SECRET)
        .set("ORCH_HTTP_TIMEOUT_S", "5")
        .build();
    World { env }
}

impl World {
    fn gitea(&self) -> &GiteaStandin {
        self.env.gitea()
    }

    fn plane(&self) -> &PlaneStandin {
        self.env.plane()
    }
}

/// A signed Plane v1 delivery moving the work item to the state of `kind`.
fn request(kind: Kind) -> Vec<u8> {
    let (id, name, group) = kind.state();
    let body = serde_json::to_vec(&json!({
        "event": "issue",
        "action": "updated",
        "webhook_id": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e03",
        "workspace_id": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e01",
        "data": {
            "id": ITEM,
            "name": "Work item 7",
            "sequence_id": 7,
            "project": PROJECT,
            "state": {"id": id, "name": name, "color": "#000000", "group": group},
        },
        "activity": {"field": "state_id", "new_value": id, "old_value": null},
    }))
    .unwrap();
    let mut req = format!(
        "POST /webhooks/plane HTTP/1.1\r\nHost: orch.example\r\nContent-Type: application/json\r\nX-Plane-Signature: {}\r\nX-Plane-Delivery: d-{kind:?}\r\nContent-Length: {}\r\n\r\n",
        sign(SECRET, &body),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

impl World {
    /// Sends one delivery of `kind` to `webhook-handle --stdio`, armed to die at `crash`.
    fn send(&self, kind: Kind, crash: Option<&str>) -> Output {
        let mut cmd = self.env.command(&["webhook-handle", "--stdio"]);
        if let Some(point) = crash {
            cmd.env("ORCH_CRASH_AT", point);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn orch");
        let _ = child.stdin.take().unwrap().write_all(&request(kind));
        child.wait_with_output().unwrap()
    }

    /// Ends every queued or running analyst job, as run-job would.
    fn analyst_ran(&self) {
        self.env
            .db()
            .execute(
                "UPDATE jobs SET status = 'succeeded', exit_code = 0, finished_at = 1
                 WHERE agent = 'analyst' AND status IN ('queued', 'running')",
                [],
            )
            .unwrap();
    }

    fn count(&self, sql: &str) -> i64 {
        self.env.count(sql)
    }

    /// Asserts that the kept counts (jobs, tasks, deliveries) match `count(*)`.
    #[track_caller]
    fn assert_counts_match(&self, what: &str) {
        let off = self.count(orch::adapters::db::JOB_COUNTS_DRIFT);
        assert_eq!(off, 0, "{what}: job_counts differ from count(*)");
        let off = self.count(orch::adapters::db::TASK_COUNTS_DRIFT);
        assert_eq!(off, 0, "{what}: task_counts differ from count(*)");
        let off = self.count(orch::adapters::db::DELIVERY_COUNTS_DRIFT);
        assert_eq!(off, 0, "{what}: delivery_counts differ from count(*)");
    }

    /// (tasks, jobs, stage events): what acting on a delivery writes.
    fn effects(&self) -> (i64, i64, i64) {
        (
            self.count("SELECT count(*) FROM tasks"),
            self.count("SELECT count(*) FROM jobs"),
            self.count("SELECT count(*) FROM stage_events"),
        )
    }
}

#[track_caller]
fn assert_killed(out: &Output, what: &str) {
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{what}: expected death by SIGKILL, got {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills a delivery of `kind` at each of its crash points, runs reconcile twice, and
/// checks that the delivery was acted on exactly once.
fn killed_at_each_point_then_reconciled(kind: Kind) {
    for point in kind.points() {
        let what = format!("{kind:?} killed at {point}");
        let w = world();
        if kind != Kind::Start {
            let out = w.send(Kind::Start, None);
            assert_eq!(out.status.code(), Some(0), "{what}: the start");
            w.analyst_ran();
        }
        // Plane lists the work item in the state the delivery announced.
        w.plane()
            .add_work_item(PROJECT, ITEM, 7, "Work item 7", Some(kind.state().0));
        let before = w.effects();
        let out = w.send(kind, Some(point));
        assert_killed(&out, &what);
        w.assert_counts_match(&format!("{what}, before reconcile"));
        if *point == "delivery-acted" {
            // Killed inside the transaction: none of the delivery's effects survive.
            assert_eq!(w.effects(), before, "{what}: rolled back");
            assert_eq!(
                w.count("SELECT count(*) FROM deliveries WHERE outcome = 'pending'"),
                1,
                "{what}: still pending"
            );
        }
        // The analyst a rejection queued (if it was committed) runs before reconcile.
        w.analyst_ran();
        for pass in 1..=2 {
            let run = w.env.run(&["reconcile"]);
            assert_eq!(run.code, 0, "{what}: reconcile pass {pass}: {}", run.stderr);
        }
        let analysts = match kind {
            Kind::Reject => 2,
            _ => 1,
        };
        assert_eq!(
            w.count("SELECT count(*) FROM jobs WHERE agent = 'analyst'"),
            analysts,
            "{what}: analyst jobs"
        );
        assert_eq!(w.count("SELECT count(*) FROM tasks"), 1, "{what}: tasks");
        assert_eq!(
            w.count("SELECT count(*) FROM jobs WHERE agent = 'developer'"),
            i64::from(kind == Kind::Approve),
            "{what}: developer jobs"
        );
        let (events, to) = match kind {
            Kind::Start | Kind::Reject => (1, "analysis"),
            Kind::Approve => (2, "development"),
            Kind::Cancel => (2, "cancelled"),
        };
        assert_eq!(
            w.count("SELECT count(*) FROM stage_events"),
            events,
            "{what}: stage events"
        );
        assert_eq!(
            w.count(&format!(
                "SELECT count(*) FROM stage_events WHERE to_stage = '{to}'"
            )),
            1,
            "{what}: one event into {to}"
        );
        assert_eq!(
            w.count("SELECT count(*) FROM deliveries WHERE outcome = 'pending'"),
            0,
            "{what}: every delivery has its outcome"
        );
        assert!(
            w.gitea().branch("acme/orch", BRANCH).is_some(),
            "{what}: branch"
        );
        assert_eq!(
            w.count("SELECT count(*) FROM tasks WHERE branch_ready_at IS NOT NULL"),
            1,
            "{what}: the branch is recorded as ready"
        );
        w.assert_counts_match(&what);
    }
}

#[test]
fn a_start_delivery_killed_at_each_point_is_finished_once_by_reconcile() {
    killed_at_each_point_then_reconciled(Kind::Start);
}

#[test]
fn an_approval_killed_at_each_point_moves_the_task_once() {
    killed_at_each_point_then_reconciled(Kind::Approve);
}

#[test]
fn a_rejection_killed_at_each_point_queues_the_analyst_once() {
    killed_at_each_point_then_reconciled(Kind::Reject);
}

#[test]
fn a_cancellation_killed_at_each_point_cancels_once() {
    killed_at_each_point_then_reconciled(Kind::Cancel);
}

/// A loopback URL nothing listens on (bound, then closed).
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

const ADD: &[&str] = &[
    "task",
    "add",
    "--project",
    "orch",
    "--work-item",
    "wi-9",
    "--key",
    "ORCH-9",
    "--title",
    "Fix it",
];
const ADDED_BRANCH: &str = "orch-9-fix-it";

impl World {
    fn reconcile_json(&self) -> serde_json::Value {
        self.env.run(&["reconcile", "--json"]).expect(0).json()
    }

    /// The task is stored with its analyst job, once, and its branch is or is not
    /// confirmed.
    #[track_caller]
    fn added(&self, branch_ready: bool) {
        assert_eq!(self.count("SELECT count(*) FROM tasks"), 1);
        assert_eq!(
            self.count("SELECT count(*) FROM jobs WHERE agent = 'analyst' AND status = 'queued'"),
            1
        );
        assert_eq!(
            self.count("SELECT count(*) FROM tasks WHERE branch_ready_at IS NOT NULL"),
            i64::from(branch_ready)
        );
        assert_eq!(
            self.gitea().branch("acme/orch", ADDED_BRANCH).is_some(),
            branch_ready
        );
    }
}

#[test]
fn task_add_with_gitea_down_stores_the_task_and_reconcile_creates_the_branch() {
    let mut w = world();
    let gitea = w.gitea().url().to_string();
    w.env.set("ORCH_GITEA_URL", &closed_port());
    let run = w.env.run(ADD).expect(0);
    assert!(
        run.stdout
            .starts_with("task ORCH-9 (1) created at analysis, analyst job 1 queued\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("left for reconcile: branch {ADDED_BRANCH} (gitea")),
        "{}",
        run.stdout
    );
    // Again, as JSON: the same task, nothing queued twice, still left.
    let again = w.env.run(&[ADD, &["--json"]].concat()).expect(0).json();
    assert_eq!(again["created"], false, "{again:#}");
    assert_eq!(again["branch"]["step"], "failed", "{again:#}");
    assert_eq!(again["left_for_reconcile"].as_array().unwrap().len(), 1);
    w.added(false);
    // Reconcile with Gitea still down leaves it, says so, and exits 0.
    let r = w.reconcile_json();
    assert_eq!(r["counts"]["branches_left"], 1, "{r:#}");
    assert_eq!(r["counts"]["branches"], 0);
    w.added(false);

    // Gitea is back: a dry run says what it would do, the pass does it, once.
    w.env.set("ORCH_GITEA_URL", &gitea);
    let dry = w.env.run(&["reconcile", "--dry-run"]).expect(0);
    assert!(
        dry.stdout.contains(&format!(
            "branch ORCH-9 {ADDED_BRANCH}: would create it in acme/orch from main"
        )),
        "{}",
        dry.stdout
    );
    w.added(false);
    let r = w.reconcile_json();
    assert_eq!(r["counts"]["branches"], 1, "{r:#}");
    assert_eq!(r["counts"]["branches_left"], 0);
    assert_eq!(r["branches"][0]["detail"], "created");
    w.added(true);
    let r = w.reconcile_json();
    assert_eq!(r["counts"]["branches"], 0, "{r:#}");
    assert_eq!(w.gitea().count(Some("POST"), "acme/orch", "branches"), 1);
}

#[test]
fn task_add_without_gitea_configured_is_completed_once_it_is() {
    let mut w = world();
    let gitea = w.gitea().url().to_string();
    w.env.unset("ORCH_GITEA_URL");
    let run = w.env.run(ADD).expect(0);
    assert!(
        run.stdout.contains(&format!(
            "left for reconcile: branch {ADDED_BRANCH} (gitea not configured: ORCH_GITEA_URL is unset)"
        )),
        "{}",
        run.stdout
    );
    let r = w.reconcile_json();
    assert_eq!(r["counts"]["branches_left"], 1, "{r:#}");
    w.added(false);
    w.env.set("ORCH_GITEA_URL", &gitea);
    let r = w.reconcile_json();
    assert_eq!(r["counts"]["branches"], 1, "{r:#}");
    w.added(true);
}

#[test]
fn task_add_killed_at_each_point_is_completed_by_reconcile() {
    for point in ["task-stored", "branch-created"] {
        let w = world();
        let mut cmd = w.env.command(ADD);
        let out = cmd.env("ORCH_CRASH_AT", point).output().unwrap();
        assert_killed(&out, point);
        assert_eq!(w.count("SELECT count(*) FROM jobs"), 1, "{point}");
        assert_eq!(
            w.count("SELECT count(*) FROM tasks WHERE branch_ready_at IS NULL"),
            1,
            "{point}"
        );
        assert_eq!(
            w.gitea().branch("acme/orch", ADDED_BRANCH).is_some(),
            point == "branch-created",
            "{point}"
        );
        let r = w.reconcile_json();
        assert_eq!(r["counts"]["branches"], 1, "{point}: {r:#}");
        w.added(true);
        // Adding it again finds it whole and changes nothing.
        let run = w.env.run(ADD).expect(0);
        assert!(
            run.stdout.starts_with(&format!(
                "task ORCH-9 (1) already exists at analysis, branch {ADDED_BRANCH} already there"
            )),
            "{point}: {}",
            run.stdout
        );
        w.added(true);
    }
}

#[test]
fn a_developer_job_waits_in_dispatch_until_reconcile_made_its_branch() {
    // A start that found Gitea down, then an approval: the developer job is queued while
    // the branch is not on Gitea. Started now, the agent would work on a branch that does
    // not exist; dispatch holds it (and says why) until reconcile has made the branch.
    let mut w = world();
    let gitea = w.gitea().url().to_string();
    w.env.set("ORCH_GITEA_URL", &closed_port());
    w.env.run(ADD).expect(0);
    w.env
        .run(&[
            "task",
            "move",
            "ORCH-9",
            "--to",
            "development",
            "--reason",
            "approved",
        ])
        .expect(0);
    let developer_job = |w: &World| {
        w.count("SELECT count(*) FROM jobs WHERE agent = 'developer' AND status = 'queued'")
    };
    assert_eq!(developer_job(&w), 1);
    let dry = w.env.run(&["dispatch", "--dry-run"]).expect(0);
    assert!(dry.stdout.contains("would start 0"), "{}", dry.stdout);
    assert!(
        dry.stdout
            .contains("waits: its task's branch is not on Gitea yet"),
        "{}",
        dry.stdout
    );
    let pass = w.env.run(&["dispatch"]).expect(0);
    assert!(pass.stderr.contains("branch_waits=1"), "{}", pass.stderr);
    assert_eq!(developer_job(&w), 1, "held, not started");

    // Gitea is back: reconcile makes the branch, and the next dispatch starts the job.
    w.env.set("ORCH_GITEA_URL", &gitea);
    let r = w.reconcile_json();
    assert_eq!(r["counts"]["branches"], 1, "{r:#}");
    assert!(w.gitea().branch("acme/orch", ADDED_BRANCH).is_some());
    let pass = w.env.run(&["dispatch"]).expect(0);
    assert!(pass.stderr.contains("started=1 "), "{}", pass.stderr);
    assert_eq!(developer_job(&w), 0, "started once its branch exists");
}

/// Runs `orch ARGS` of `env` under strace, which KILLs it at its first rename: an atomic
/// write killed between writing its temporary file and renaming it into place.
fn killed_at_first_rename(env: &TestEnv, args: &[&str]) -> Output {
    let cmd = env.command(args);
    std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null"])
        .args(["-e", "trace=rename,renameat,renameat2"])
        .args(["-e", "inject=rename,renameat,renameat2:signal=KILL:when=1"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(cmd.get_current_dir().unwrap())
        .stdin(Stdio::null())
        .output()
        .expect("strace is needed by this test (.ci/run installs it)")
}

/// The names in `dir` that look like temporary files.
fn temps(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    names.sort();
    names
}

#[test]
fn a_write_killed_before_its_rename_leaves_a_temp_file_the_next_pass_removes() {
    let env = TestEnv::builder().build();
    let state = env.path("state");
    std::fs::create_dir_all(&state).unwrap();
    // Not orch's pattern, or not a temp file at all: never touched.
    std::fs::write(state.join(".notes.tmp.txt"), "mine").unwrap();
    std::fs::write(state.join("report.tmp.1"), "mine").unwrap();
    let prom = state.join("orch.prom");
    let prom_text = prom.display().to_string();

    // Killed mid-write: the temporary file stays, the target was never written.
    let out = killed_at_first_rename(&env, &["status", "--prometheus", &prom_text]);
    // strace ends the way its child ended: by the KILL.
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    let left = temps(&state);
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(
        left.iter().any(|n| n.starts_with(".orch.prom.tmp.")),
        "{left:?}"
    );
    assert!(!prom.exists());

    // The next reap pass removes it (the state dir's temp files), and only it.
    env.run(&["reap"]).expect(0);
    assert_eq!(temps(&state), [".notes.tmp.txt", "report.tmp.1"]);

    // Killed again; this time the next write of the same file removes it.
    let out = killed_at_first_rename(&env, &["status", "--prometheus", &prom_text]);
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    assert_eq!(temps(&state).len(), 3);
    env.run(&["status", "--prometheus", &prom_text]).expect(0);
    assert!(prom.exists());
    assert_eq!(temps(&state), [".notes.tmp.txt", "report.tmp.1"]);
}
