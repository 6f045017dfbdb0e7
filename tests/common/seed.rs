//! Seeds tasks through the library (`orch::adapters::db::Db`), not raw SQL: a task is
//! created in analysis and walked to its stage by legal moves, so every seeded row is
//! one the binary itself could have written.

use orch::adapters::db::{Db, Move};
use orch::core::stage::{Actor, Stage};
use orch::core::task::NewTask;

use super::{Project, TestEnv, NOW_UNIX, PLANE_STATES};

/// A task to seed; [`SeedTask::new`] fills in the usual values.
#[derive(Clone, Debug)]
pub struct SeedTask {
    /// `tasks.project`.
    pub project: String,
    /// `tasks.key`.
    pub key: String,
    /// `tasks.work_item_id` (default `wi-<key>`).
    pub work_item_id: String,
    /// `tasks.title`.
    pub title: String,
    /// `tasks.repo`.
    pub repo: String,
    /// `tasks.branch`.
    pub branch: String,
    /// The stage to reach.
    pub stage: Stage,
    /// When every move happens (and so `stage_entered_at`, `created_at`, `updated_at`).
    pub at: i64,
    /// The PR number of round 1.
    pub pr: Option<i64>,
    /// Whether the branch is confirmed on Gitea (`branch_ready_at` = `at`).
    pub branch_ready: bool,
    /// The revision staging validated.
    pub validated: Option<String>,
    /// Review rollbacks to count (`developer_retries`), walked as review → development.
    pub developer_retries: u32,
    /// The Plane project, and the work item's sequence number and state there: when the
    /// env runs the Plane stand-in, the seed adds the work item to it (unless the state
    /// is `None`: then the test adds it).
    pub plane_project_id: String,
    pub sequence: u64,
    pub plane_state: Option<String>,
    /// Keeps the job the last move enqueued; by default a seeded task has no jobs, as
    /// a test seeds the jobs it means.
    pub keep_job: bool,
}

impl SeedTask {
    /// Task number `n` of `project` at `stage`, at [`NOW_UNIX`], on the kit's branch
    /// (`task/shop-1`), with no PR, branch not confirmed.
    pub fn new(project: &Project, n: u64, stage: Stage) -> SeedTask {
        let key = project.key(n);
        SeedTask {
            project: project.name.to_string(),
            work_item_id: format!("wi-{key}"),
            title: "Work".to_string(),
            repo: project.repo.to_string(),
            branch: project.branch(n),
            key,
            stage,
            at: NOW_UNIX,
            pr: None,
            branch_ready: false,
            validated: None,
            developer_retries: 0,
            plane_project_id: project.plane_project_id.to_string(),
            sequence: n,
            plane_state: Some(PLANE_STATES[0].0.to_string()),
            keep_job: false,
        }
    }

    /// Sets the instant of every move.
    pub fn at(mut self, at: i64) -> Self {
        self.at = at;
        self
    }

    /// Records PR `n`.
    pub fn pr(mut self, n: i64) -> Self {
        self.pr = Some(n);
        self
    }

    /// Marks the branch confirmed on Gitea.
    pub fn branch_ready(mut self) -> Self {
        self.branch_ready = true;
        self
    }

    /// Records the revision staging validated.
    pub fn validated(mut self, rev: &str) -> Self {
        self.validated = Some(rev.to_string());
        self
    }

    /// Sets the branch.
    pub fn branch(mut self, branch: &str) -> Self {
        self.branch = branch.to_string();
        self
    }

    /// Sets the work item id.
    pub fn work_item(mut self, id: &str) -> Self {
        self.work_item_id = id.to_string();
        self
    }

    /// Sets the title.
    pub fn title(mut self, title: &str) -> Self {
        self.title = title.to_string();
        self
    }

    /// Counts `n` review rollbacks.
    pub fn retries(mut self, n: u32) -> Self {
        self.developer_retries = n;
        self
    }

    /// Sets the work item's state in the Plane stand-in.
    pub fn plane_state(mut self, state_id: &str) -> Self {
        self.plane_state = Some(state_id.to_string());
        self
    }

    /// Leaves the Plane stand-in alone (the test adds the work item itself, or none).
    pub fn no_plane_item(mut self) -> Self {
        self.plane_state = None;
        self
    }

    /// Keeps the job the last move enqueued.
    pub fn keep_job(mut self) -> Self {
        self.keep_job = true;
        self
    }
}

/// The moves from analysis to `to` with `retries` review rollbacks on the way.
fn walk(to: Stage, retries: u32) -> Vec<Stage> {
    use Stage::*;
    if to == Cancelled {
        return vec![Cancelled];
    }
    let order = [Analysis, Development, Review, DeployStaging, Deploy, Done];
    let last = order
        .iter()
        .position(|s| *s == to)
        .expect("a stage in order");
    let mut moves = Vec::new();
    for (i, stage) in order.iter().enumerate().take(last + 1).skip(1) {
        moves.push(*stage);
        let returns_to_development = to == Development && i == 1;
        let passes_review = *stage == Review;
        if returns_to_development {
            for _ in 0..retries {
                moves.extend([Review, Development]);
            }
        } else if passes_review {
            for _ in 0..retries {
                moves.extend([Development, Review]);
            }
        }
    }
    assert!(
        retries == 0 || to != Analysis,
        "review rollbacks need a task past analysis"
    );
    moves
}

/// Creates the task and walks it to its stage by legal moves (actor operator), and adds
/// its work item to the Plane stand-in when the env runs one; returns the task id. Panics
/// on any library error: a seed that cannot be written is a broken test.
#[track_caller]
pub fn seed_task(env: &TestEnv, t: &SeedTask) -> i64 {
    seed_tasks(env, std::slice::from_ref(t))[0]
}

/// [`seed_task`] for many tasks over one database connection.
#[track_caller]
pub fn seed_tasks(env: &TestEnv, tasks: &[SeedTask]) -> Vec<i64> {
    let mut db = Db::open(&env.db_path()).expect("open db");
    tasks.iter().map(|t| seed_in(env, &mut db, t)).collect()
}

fn seed_in(env: &TestEnv, db: &mut Db, t: &SeedTask) -> i64 {
    let now = t.at;
    let id = db
        .create_task(
            &NewTask {
                project: t.project.clone(),
                work_item_id: t.work_item_id.clone(),
                key: t.key.clone(),
                title: t.title.clone(),
                repo: t.repo.clone(),
                branch: t.branch.clone(),
                priority: orch::core::priority::Priority::None,
            },
            Actor::Operator,
            "seeded",
            now,
        )
        .expect("create task")
        .id();
    let mut at = Stage::Analysis;
    for to in walk(t.stage, t.developer_retries) {
        db.move_task(&Move::new(id, at, to, "seeded", Actor::Operator, now))
            .unwrap_or_else(|e| panic!("seeding {}: {at} -> {to}: {e:#}", t.key));
        at = to;
    }
    if let Some(pr) = t.pr {
        assert!(db.set_pr_number(id, 1, pr, now).expect("set pr"));
    }
    if let Some(rev) = &t.validated {
        assert!(db
            .set_validated_revision(id, 1, rev, now)
            .expect("set validated revision"));
    }
    if t.branch_ready {
        let task = db.task(id).expect("read task").expect("seeded task");
        assert!(db.set_branch_ready(&task, now).expect("set branch ready"));
    }
    if let (Some(plane), Some(state)) = (&env.plane, &t.plane_state) {
        plane.add_work_item(
            &t.plane_project_id,
            &t.work_item_id,
            t.sequence,
            &t.title,
            Some(state),
        );
    }
    if !t.keep_job {
        // The moves enqueued (and cancelled) the stages' jobs on the way: a side effect
        // of reaching the stage, not part of the state the test describes.
        db.conn()
            .execute("DELETE FROM jobs WHERE task_id = ?1", [id])
            .expect("drop the walk's jobs");
    }
    id
}

/// The task's live job of `agent` at `stage`, queued now when none is live, flipped to
/// `running` as dispatch's claim would: its id, for `orch run-job <id>` (the real
/// supervisor) to run.
pub fn claim_live_job(env: &TestEnv, task: i64, agent: &str, stage: &str) -> i64 {
    let db = env.db();
    let live: Option<i64> = db
        .query_row(
            "SELECT id FROM jobs WHERE task_id = ?1 AND stage = ?2
               AND status IN ('queued', 'running')",
            orch::sql_params![task, stage],
            |r| r.get(0),
        )
        .ok();
    let job = live.unwrap_or_else(|| {
        db.query_row(
            "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at)
             VALUES (?1, ?2, ?3, 'queued', 1, ?4) RETURNING id",
            orch::sql_params![task, agent, stage, NOW_UNIX],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    });
    db.execute(
        "UPDATE jobs SET status = 'running', started_at = ?2 WHERE id = ?1",
        orch::sql_params![job, NOW_UNIX],
    )
    .unwrap();
    job
}
