//! `orch reconcile`, whole process, over 10,000 tasks in 3 projects with the Plane and
//! Gitea stand-ins on loopback.
//!
//! Run: `cargo bench --bench reconcile`. The seeded state is steady (every pass makes
//! the same decisions and writes nothing but its pass record and, on a first pass, the
//! CI verdicts it learned): 10,000 work items listed in pages of 100 (100 Plane
//! requests), 1,000 development tasks whose job has not run yet (the gate waits), each
//! with a recorded open PR whose head's CI is final (half green, half red), 3,000 review
//! tasks with no verdict yet, 3,000 escalated and 3,000 with a live job.
//!
//! Two series in the same run: the **first pass** (the CI verdict cache emptied before
//! each run: every head's CI is read) and the **second pass** (the cache the first pass
//! filled: nothing has changed, so only the list pages are read). Prints each one's
//! median and p99 wall time, the peak resident memory, the requests per pass and the
//! speed-up, and fails when a second pass makes any Gitea request but a list page.

mod common;

use std::process::Command;

use common::Home;
use orch::standin::gitea::{GiteaStandin, PullSeed};
use orch::standin::plane::PlaneStandin;

const TOKEN: &str = "bench-token";
const KEY: &str = "plane_api_0123456789abcdef0123456789abcdef";
const PROJECTS: [(&str, &str, &str); 3] = [
    ("orch", "ORCH", "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02"),
    ("shop", "SHOP", "1c2d3e4f-0000-4000-8000-000000000002"),
    ("web", "WEB", "3e4f5a6b-0000-4000-8000-000000000003"),
];
const IN_PROGRESS: &str = "5a000000-0000-4000-8000-000000000001";
const TASKS: u64 = 10_000;

fn pipeline() -> String {
    let mut s = String::from("plane: { workspace: acme }\nprojects:\n");
    for (name, ident, pid) in PROJECTS {
        s.push_str(&format!(
            "  - name: {name}\n    plane_project_id: {pid}\n    plane_identifier: {ident}\n    repo: acme/{name}\n    states:\n      blocked: {{ names: [Blocked] }}\n"
        ));
    }
    s
}

fn command(home: &Home, plane: &str, gitea: &str) -> Command {
    let mut c = home.orch(&["reconcile"]);
    c.env("ORCH_PLANE_URL", plane)
        .env("ORCH_PLANE_API_KEY", KEY)
        .env("ORCH_GITEA_URL", gitea)
        .env("ORCH_GITEA_TOKEN", TOKEN)
        .env("ORCH_RECONCILE_MAX_TASKS", "10000")
        .env("ORCH_RECONCILE_GRACE_S", "0")
        .env("ORCH_NOW", "2026-11-25T03:00:00Z");
    c
}

fn main() {
    let plane = PlaneStandin::start("acme", KEY);
    plane.set_rate_limit(1_000_000, false);
    let gitea = GiteaStandin::start(TOKEN);
    for (_, _, pid) in PROJECTS {
        plane.add_project(pid, &[(IN_PROGRESS, "In Progress", "started")]);
    }
    for (name, _, _) in PROJECTS {
        gitea.add_repo(&format!("acme/{name}"), "main");
    }
    let home = Home::new(&pipeline());
    let db = home.db();
    db.execute_batch("BEGIN").unwrap();
    for n in 1..=TASKS {
        let (name, ident, pid) = PROJECTS[(n % 3) as usize];
        let key = format!("{ident}-{n}");
        let item = format!("{}-0000-4000-8000-{n:012}", &pid[..8]);
        let branch = format!("task/{}", key.to_lowercase());
        let (stage, retries) = match n % 10 {
            0 => ("development", 0),
            1..=3 => ("review", 0),
            4..=6 => ("review", 3),
            _ => ("deploy-staging", 0),
        };
        let pr = (stage == "development").then_some(n);
        db.execute(
            "INSERT INTO tasks (project, work_item_id, key, title, repo, branch, pr_number, stage,
                 stage_entered_at, developer_retries, escalated_at, created_at, updated_at,
                 branch_ready_at)
             VALUES (?1, ?2, ?3, 'Work', ?4, ?5, ?6, ?7, 0, ?8, ?9, 0, 0, 0)",
            rusqlite::params![
                name,
                item,
                key,
                format!("acme/{name}"),
                branch,
                pr.map(|p| p as i64),
                stage,
                retries,
                (retries > 0).then_some(1_i64)
            ],
        )
        .unwrap();
        let task = db.last_insert_rowid();
        if retries > 0 {
            db.execute(
                "INSERT INTO notifications (dedupe_key, kind, task_id, message, created_at)
                 VALUES (?1, 'escalation', ?2, 'escalated', 1)",
                rusqlite::params![format!("k{task}"), task],
            )
            .unwrap();
        }
        let (agent, status) = match stage {
            "deploy-staging" => ("deployer", "running"),
            _ => ("", ""),
        };
        if !agent.is_empty() {
            db.execute(
                "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at) VALUES (?1, ?2, ?3, ?4, 1, 0)",
                rusqlite::params![task, agent, stage, status],
            )
            .unwrap();
        }
        plane.add_work_item(pid, &item, n, "Work", Some(IN_PROGRESS));
        if let Some(p) = pr {
            gitea.add_pull(&format!("acme/{name}"), &PullSeed::open(p, &branch));
            let head = gitea.pull(&format!("acme/{name}"), p).unwrap().head_sha;
            // Green: the verdict orch keeps per head (a red one is read every pass, as
            // CI may be re-run on the same commit), so a steady pass reads no CI.
            gitea.add_status(&format!("acme/{name}"), &head, "ci/test", "success");
        }
    }
    db.execute_batch("COMMIT").unwrap();
    drop(db);

    let runs = 5;
    let gitea_count = |what: fn(&str) -> bool| {
        gitea
            .server()
            .requests()
            .iter()
            .filter(|r| what(&r.path))
            .count()
    };
    let is_list = |path: &str| path.ends_with("/pulls");
    let any = |_: &str| true;
    let counts = || {
        (
            plane.server().requests().len(),
            gitea_count(any),
            gitea_count(is_list),
        )
    };
    let per_pass = |before: (usize, usize, usize), after: (usize, usize, usize)| {
        let passes = (runs + 1) as f64;
        (
            (after.0 - before.0) as f64 / passes,
            (after.1 - before.1) as f64 / passes,
            (after.2 - before.2) as f64 / passes,
        )
    };

    // First pass: every run starts with no CI verdict known.
    let before = counts();
    let first = common::measure(runs, || {
        home.db().execute("DELETE FROM ci_verdicts", []).unwrap();
        command(&home, plane.url(), gitea.url())
    });
    let (p1, g1, l1) = per_pass(before, counts());
    let kept = home.count("SELECT count(*) FROM ci_verdicts");
    assert_eq!(kept, 1000, "every final verdict kept");

    // Second pass: the verdicts the last first pass kept; nothing else changed.
    let before = counts();
    let second = common::measure(runs, || command(&home, plane.url(), gitea.url()));
    let (p2, g2, l2) = per_pass(before, counts());

    println!("reconcile over {TASKS} tasks in 3 projects, first pass: {first}");
    println!("  requests per pass: plane={p1:.0} gitea={g1:.0} (of which {l1:.0} PR list pages)");
    println!("reconcile over {TASKS} tasks in 3 projects, second pass: {second}");
    println!("  requests per pass: plane={p2:.0} gitea={g2:.0} (of which {l2:.0} PR list pages)");
    println!(
        "second pass is {:.1}x faster than the first (medians)",
        first.median.as_secs_f64() / second.median.as_secs_f64()
    );
    assert_eq!(
        g2, l2,
        "a second pass reads only the PR list pages from Gitea"
    );
    let stuck = home.count("SELECT count(*) FROM stage_events");
    assert_eq!(stuck, 0, "the seeded state is steady: no pass moved a task");
}
