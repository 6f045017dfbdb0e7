//! `orch reconcile`, whole process, over 1,000 / 10,000 / 100,000 tasks in 3 projects
//! with the Plane and Gitea stand-ins on loopback.
//!
//! Run: `cargo bench --bench reconcile` (sizes: `ORCH_BENCH_SIZES=1000,10000`). The
//! seeded state is steady (every pass makes the same decisions and writes nothing but
//! its pass record and, on a first pass, the CI verdicts it learned): every work item
//! listed (Plane pages of 1,000, Gitea pages of 50 pulls), a tenth of the tasks in development whose job has not run
//! yet (the gate waits), each with a recorded open PR whose head's CI is green (the
//! verdict orch keeps per head), three tenths in review with no verdict yet, three
//! tenths escalated (each with its announcement) and three tenths with a live job.
//!
//! Per size: the **second pass** (nothing changed since the last pass: only the list
//! pages are read), the **floor** of the same requests (`curl` replaying, in one
//! process, exactly the requests one second pass made: the limit of a client that does
//! nothing else), the floor of the **same work** (that replay, the `sqlite3` shell
//! reading the rows a steady pass reads, and the replayed answers parsed into nothing
//! by `serde_json` in process, one after the other: the least one thread doing the
//! pass's work spends), and up to 10,000 tasks the **first pass** (the CI verdict cache
//! emptied before each run: every head's CI is read) with the speed-up. Each prints the
//! median and p99 wall time, the CPU time and peak RSS of the measured process alone
//! (never the bench's nor its stand-ins' threads), the requests per pass, and a
//! `growth` line over the sizes; it fails when a second pass makes any Gitea request
//! but a list page, or when a pass moved a task.

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

/// The rows a steady pass reads, read by the `sqlite3` shell: what the listing knows of
/// each task and work item, the live jobs (read twice), every task's row for the
/// judging, the latest job at its stage of each task the judging reads whole (not
/// escalated, no live job), and the escalation sweep. Summed over the columns a pass
/// reads, so the shell reads every value but prints one line a query (printing 100,000
/// rows as text would cost it more than orch spends on them). The shell's own start
/// (`SELECT 1` on the same file) is taken off: orch's is counted once, in the pass.
const FLOOR_SQL: &str = "
SELECT count(*), total(length(project) + length(work_item_id) + length(stage)
    + length(priority) + length(repo) + stage_entered_at + developer_retries
    + ifnull(escalated_at, 0)) FROM tasks;
SELECT count(*), total(length(work_item_id) + updated_us) FROM work_item_updates;
SELECT count(*), total(task_id + id + length(status)) FROM jobs WHERE status IN ('queued','running');
SELECT count(*), total(task_id + id + length(status)) FROM jobs WHERE status IN ('queued','running');
SELECT count(*), total(id + length(project) + length(work_item_id) + length(key) + length(title)
    + length(repo) + length(branch) + ifnull(pr_number, 0) + length(stage) + stage_entered_at
    + length(ifnull(validated_revision, '')) + developer_retries + ifnull(escalated_at, 0)
    + length(ifnull(escalation_reason, '')) + created_at + updated_at + round
    + ifnull(branch_ready_at, 0) + length(priority)) FROM tasks;
SELECT count(*), total(ifnull(j.id + j.task_id + length(j.stage) + length(j.status)
    + j.attempt, 0))
    FROM tasks AS t LEFT JOIN jobs AS j
      ON j.id = (SELECT max(id) FROM jobs WHERE task_id = t.id AND stage = t.stage)
    WHERE t.escalated_at IS NULL
      AND t.id NOT IN (SELECT task_id FROM jobs WHERE status IN ('queued','running'));
SELECT count(*) FROM tasks AS t WHERE t.stage NOT IN ('cancelled', 'done')
    AND ((t.escalated_at IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM notifications AS n WHERE n.task_id = t.id AND n.kind = 'escalation'
              AND n.created_at >= t.escalated_at))
         OR (t.escalated_at IS NULL AND t.developer_retries >= 3));
";

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
        .env("ORCH_RECONCILE_MAX_TASKS", "1000000")
        .env("ORCH_RECONCILE_GRACE_S", "0")
        .env("ORCH_NOW", "2026-11-25T03:00:00Z");
    c
}

/// What one size measured.
struct Row {
    tasks: u64,
    second: common::Measured,
    floor: common::Measured,
    /// The `sqlite3` shell reading the rows a steady pass reads.
    sql_floor: common::Measured,
    /// The `sqlite3` shell starting on the same file and reading nothing (`SELECT 1`).
    sql_start: common::Measured,
    /// The answers of `floor`'s requests parsed into nothing (`serde_json`, in process):
    /// median over the runs, and the bytes parsed.
    parse_floor: (std::time::Duration, usize),
    first: Option<common::Measured>,
    requests: (f64, f64, f64),
}

fn main() {
    let sizes: Vec<u64> = std::env::var("ORCH_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("ORCH_BENCH_SIZES: numbers"))
        .collect();
    let rows: Vec<Row> = sizes
        .iter()
        .map(|&n| {
            let r = run_size(n);
            print_row(&r);
            r
        })
        .collect();
    let wall: Vec<(usize, std::time::Duration)> = rows
        .iter()
        .map(|r| (r.tasks as usize, r.second.median))
        .collect();
    let cpu: Vec<(usize, std::time::Duration)> = rows
        .iter()
        .map(|r| (r.tasks as usize, r.second.cpu))
        .collect();
    common::report_growth("reconcile second pass wall", &wall);
    common::report_growth("reconcile second pass cpu", &cpu);
    let rss: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}: {:.1}MiB",
                r.tasks,
                r.second.max_rss_kib as f64 / 1024.0
            )
        })
        .collect();
    println!(
        "reconcile second pass peak RSS (orch alone): {}",
        rss.join(", ")
    );
}

fn print_row(r: &Row) {
    let n = r.tasks;
    println!(
        "reconcile over {n} tasks in 3 projects, second pass: {}",
        r.second
    );
    let (p, g, l) = r.requests;
    println!("  requests per pass: plane={p:.0} gitea={g:.0} (of which {l:.0} PR list pages)");
    println!(
        "floor, {n} tasks (curl replaying the second pass's requests): {} orch/floor wall x{:.2}",
        r.floor,
        r.second.median.as_secs_f64() / r.floor.median.as_secs_f64()
    );
    println!(
        "  sql floor (sqlite3 reading the rows a steady pass reads): {}",
        r.sql_floor
    );
    // The shell's start taken off: the pass's own is in orch's time once.
    let rows = r.sql_floor.median.saturating_sub(r.sql_start.median);
    println!(
        "  sqlite3 start alone (SELECT 1): median={:.2}ms, rows alone: {:.2}ms",
        r.sql_start.median.as_secs_f64() * 1e3,
        rows.as_secs_f64() * 1e3
    );
    let (parse, bytes) = r.parse_floor;
    println!(
        "  parse floor (the replayed answers, {:.1} MB, parsed into nothing by serde_json): median={:.2}ms",
        bytes as f64 / 1e6,
        parse.as_secs_f64() * 1e3
    );
    let same_work = r.floor.median + rows + parse;
    println!(
        "floor of the same work, {n} tasks (requests + rows + parse, one after the other): {:.2}ms orch/floor wall x{:.2}",
        same_work.as_secs_f64() * 1e3,
        r.second.median.as_secs_f64() / same_work.as_secs_f64()
    );
    if let Some(first) = &r.first {
        println!("reconcile over {n} tasks in 3 projects, first pass: {first}");
        println!(
            "  second pass is {:.1}x faster than the first (medians), {:.1}x less CPU",
            first.median.as_secs_f64() / r.second.median.as_secs_f64(),
            first.cpu.as_secs_f64() / r.second.cpu.as_secs_f64()
        );
    }
}

/// Seeds `tasks` tasks and measures the passes over them.
fn run_size(tasks: u64) -> Row {
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
    for n in 1..=tasks {
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

    let runs = if tasks >= 100_000 { 3 } else { 5 };
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
    // measure() runs the command runs + 2 times (a warm-up, the timed runs, one for
    // the peak RSS).
    let per_pass = |before: (usize, usize, usize), after: (usize, usize, usize)| {
        let passes = (runs + 2) as f64;
        (
            (after.0 - before.0) as f64 / passes,
            (after.1 - before.1) as f64 / passes,
            (after.2 - before.2) as f64 / passes,
        )
    };

    // First pass: every run starts with no CI verdict known.
    let first = (tasks <= 10_000).then(|| {
        let first = common::measure(runs, || {
            home.db().execute("DELETE FROM ci_verdicts", []).unwrap();
            command(&home, plane.url(), gitea.url())
        });
        let kept = home.count("SELECT count(*) FROM ci_verdicts");
        assert_eq!(kept as u64, tasks / 10, "every final verdict kept");
        first
    });
    if first.is_none() {
        // One pass to fill the cache the second passes read.
        assert!(command(&home, plane.url(), gitea.url())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success());
    }

    // Second pass: the verdicts a first pass kept; nothing else changed.
    let before = counts();
    let plane_from = plane.server().requests().len();
    let gitea_from = gitea.server().requests().len();
    let second = common::measure(runs, || command(&home, plane.url(), gitea.url()));
    let requests = per_pass(before, counts());
    let (_, g2, l2) = requests;
    assert_eq!(
        g2, l2,
        "a second pass reads only the PR list pages from Gitea"
    );

    // The floor: the requests of the last second pass, replayed by curl in one process.
    let per = (requests.0 as usize, requests.1 as usize);
    let plane_reqs = plane.server().requests();
    let gitea_reqs = gitea.server().requests();
    let mut config = String::new();
    let mut replay = |base: &str, reqs: &[orch::standin::server::Recorded], header: &str| {
        for r in reqs {
            let q = if r.query.is_empty() {
                String::new()
            } else {
                format!("?{}", r.query)
            };
            config.push_str(&format!(
                "silent\nfail\noutput = \"/dev/null\"\nheader = \"{header}\"\nurl = \"{base}{}{q}\"\nnext\n",
                r.path
            ));
        }
    };
    let last = |all: &[orch::standin::server::Recorded], from: usize, n: usize| {
        let end = all.len();
        assert!(end - from >= n);
        all[end - n..].to_vec()
    };
    replay(
        plane.url(),
        &last(&plane_reqs, plane_from, per.0),
        &format!("X-API-Key: {KEY}"),
    );
    replay(
        gitea.url(),
        &last(&gitea_reqs, gitea_from, per.1),
        &format!("Authorization: token {TOKEN}"),
    );
    let config_path = home.path("floor.curl");
    // `next` separates the requests; none after the last.
    let config = config.strip_suffix("next\n").unwrap_or(&config).to_string();
    std::fs::write(&config_path, config).unwrap();
    let floor = common::measure(runs, || {
        let mut c = std::process::Command::new("curl");
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg("--config")
            .arg(&config_path);
        c
    });

    // The answers themselves, saved once, then parsed into nothing: the least any
    // client that reads them (and checks they are JSON) must spend on them.
    let bodies_dir = home.path("bodies");
    std::fs::create_dir_all(&bodies_dir).unwrap();
    let saving = std::fs::read_to_string(&config_path)
        .unwrap()
        .split("output = \"/dev/null\"")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part.to_string()
            } else {
                format!("output = \"{}/{i}.json\"{part}", bodies_dir.display())
            }
        })
        .collect::<String>();
    let saving_path = home.path("save.curl");
    std::fs::write(&saving_path, saving).unwrap();
    let saved = std::process::Command::new("curl")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .arg("--config")
        .arg(&saving_path)
        .status()
        .unwrap();
    assert!(saved.success(), "saving the answers");
    let bodies: Vec<Vec<u8>> = std::fs::read_dir(&bodies_dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(bodies.len(), per.0 + per.1, "one answer per request");
    let parse = common::median_in_process(runs + 2, || {
        let start = std::time::Instant::now();
        for b in &bodies {
            let _: serde::de::IgnoredAny = serde_json::from_slice(b).expect("JSON");
        }
        start.elapsed()
    });
    let parse_floor = (parse, bodies.iter().map(Vec::len).sum());
    let sql_floor = common::measure(runs, || common::sqlite3(&home.path("orch.db"), FLOOR_SQL));
    let sql_start = common::measure(runs, || common::sqlite3(&home.path("orch.db"), "SELECT 1"));

    let stuck = home.count("SELECT count(*) FROM stage_events");
    assert_eq!(stuck, 0, "the seeded state is steady: no pass moved a task");
    Row {
        tasks,
        second,
        floor,
        sql_floor,
        sql_start,
        parse_floor,
        first,
        requests,
    }
}
