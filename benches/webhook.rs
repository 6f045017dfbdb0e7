//! `orch webhook-handle --stdio`, whole process, with the Gitea stand-in on loopback.
//!
//! Run: `cargo bench --bench webhook`. Prints (1) the median and p99 wall time and the
//! peak resident memory of one delivery that starts a task (task, Gitea branch, analyst
//! job; goal: median under 10 ms), and (2) 1,000 deliveries pushed by 8 concurrent
//! senders: throughput, p99, and a check that none was lost or doubled. Next to (1), the
//! one-insert floor measured in the same run (this executable inserting one delivery row
//! with fsync into the same database, in a process of its own), the fsyncs of each
//! (`strace -f -c`, when installed) and whether the first fsync comes before the 200.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::Home;
use orch::core::intake::sign;
use orch::standin::gitea::GiteaStandin;

const SECRET: &str = "plane_wh_0123456789abcdef0123456789abcdef";
const TOKEN: &str = "bench-token";
const PROJECT: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";
const PIPELINE: &str = "plane: { workspace: acme }
projects:
  - name: orch
    plane_project_id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02
    plane_identifier: ORCH
    repo: acme/orch
";

/// A signed HTTP request starting work item `n`.
fn request(n: u32) -> Vec<u8> {
    let body = format!(
        r##"{{"event": "issue", "action": "updated", "webhook_id": "w", "workspace_id": "ws", "data": {{"id": "00000000-0000-4000-8000-{n:012}", "name": "Bench item {n}", "sequence_id": {n}, "project": "{PROJECT}", "updated_at": "2026-05-19T10:15:30.482913Z", "state": {{"id": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb3", "name": "In Progress", "color": "#F59E0B", "group": "started"}}}}, "activity": {{"field": "state_id", "new_value": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb3", "old_value": null}}}}"##
    );
    let mut req = format!(
        "POST /webhooks/plane HTTP/1.1\r\nHost: orch\r\nContent-Type: application/json\r\nX-Plane-Delivery: bench-{n}\r\nX-Plane-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        sign(SECRET, body.as_bytes()),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

fn command(home: &Home, gitea: &str) -> Command {
    let mut c = home.orch(&["webhook-handle", "--stdio"]);
    c.env("ORCH_PLANE_WEBHOOK_SECRET", SECRET)
        .env("ORCH_GITEA_URL", gitea)
        .env("ORCH_GITEA_TOKEN", TOKEN);
    c
}

fn setup() -> (Home, GiteaStandin) {
    let gitea = GiteaStandin::start(TOKEN);
    gitea.add_repo("acme/orch", "main");
    (Home::new(PIPELINE), gitea)
}

/// The one-insert floor, run as this bench's own executable with `ORCH_BENCH_FLOOR_DB`
/// set: open the database (WAL, as orch leaves it), insert one delivery row of the same
/// size with `synchronous=FULL` (its commit waits for the WAL's fsync) and exit without
/// checkpointing, as `webhook-handle` does. No HTTP, no verification, no acting.
fn floor_insert(db: &str, n: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    let body = request(n.parse().unwrap());
    conn.execute(
        "INSERT INTO deliveries (body_sha256, delivery_id, event, body, received_at)
         VALUES (?1, ?2, 'issue', ?3, 1)",
        rusqlite::params![format!("floor-{n}"), format!("floor-{n}"), body],
    )
    .unwrap();
}

fn main() {
    if let Ok(db) = std::env::var("ORCH_BENCH_FLOOR_DB") {
        floor_insert(&db, &std::env::var("ORCH_BENCH_FLOOR_N").unwrap());
        return;
    }
    // 1. One delivery that starts a task, whole process.
    let (home, gitea) = setup();
    let next = AtomicU32::new(1);
    let reqs = home.path("reqs");
    std::fs::create_dir_all(&reqs).unwrap();
    let runs = 200;
    let single = common::measure(runs, || {
        let n = next.fetch_add(1, Ordering::SeqCst);
        let file = reqs.join(format!("{n}.http"));
        std::fs::write(&file, request(n)).unwrap();
        let mut c = command(&home, gitea.url());
        c.stdin(std::fs::File::open(&file).unwrap());
        c
    });
    let started = home.count("SELECT count(*) FROM deliveries WHERE outcome = 'started'");
    assert_eq!(
        started,
        i64::from(runs as u32 + 1),
        "every delivery started its task"
    );
    println!("webhook-handle --stdio, one delivery starting a task: {single}");

    // The floor of the same work in the same run: one process inserting one delivery
    // row with fsync into the same database.
    let floor_n = AtomicU32::new(1_000_000);
    let floor_cmd = |n: u32| {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.env_clear()
            .env("ORCH_BENCH_FLOOR_DB", home.path("orch.db"))
            .env("ORCH_BENCH_FLOOR_N", n.to_string());
        c
    };
    let floor = common::measure(runs, || floor_cmd(floor_n.fetch_add(1, Ordering::SeqCst)));
    println!(
        "  floor, one WAL insert with fsync (same schema, same database): {floor}; orch/floor ×{:.2}",
        single.median.as_secs_f64() / floor.median.as_secs_f64()
    );
    // fsyncs per delivery, and the row on disk before the 200 (the first fsync comes
    // before the answer is written).
    let n = next.fetch_add(1, Ordering::SeqCst);
    let file = reqs.join(format!("{n}.http"));
    std::fs::write(&file, request(n)).unwrap();
    let traced = common::strace(
        &command(&home, gitea.url()),
        &file,
        "fsync,fdatasync",
        &["-c"],
    );
    if let Some(summary) = traced {
        let n = next.fetch_add(1, Ordering::SeqCst);
        let file = reqs.join(format!("{n}.http"));
        std::fs::write(&file, request(n)).unwrap();
        let order = common::strace(
            &command(&home, gitea.url()),
            &file,
            "fsync,fdatasync,write",
            &[],
        )
        .unwrap();
        let first_sync = order
            .lines()
            .position(|l| l.contains("fsync(") || l.contains("fdatasync("));
        let answer = order.lines().position(|l| l.contains("\"HTTP/1.1 200"));
        let floor_summary = common::strace(
            &floor_cmd(floor_n.fetch_add(1, Ordering::SeqCst)),
            std::path::Path::new("/dev/null"),
            "fsync,fdatasync",
            &["-c"],
        )
        .unwrap();
        println!(
            "  fsyncs per start delivery: orch {}, floor {}; first fsync before the 200: {}",
            common::strace_total_calls(&summary),
            common::strace_total_calls(&floor_summary),
            matches!((first_sync, answer), (Some(s), Some(a)) if s < a)
        );
    } else {
        println!("  fsyncs: strace not on PATH, not counted");
    }

    // 2. 1,000 deliveries from 8 concurrent senders.
    let (home, gitea) = setup();
    let senders = 8u32;
    let per = 125u32;
    let t0 = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..senders)
            .map(|k| {
                let (home, url) = (&home, gitea.url());
                s.spawn(move || {
                    let mut lat = Vec::new();
                    for i in 0..per {
                        let n = 10_000 + k * per + i;
                        let start = Instant::now();
                        let mut child = command(home, url)
                            .stdin(Stdio::piped())
                            .stdout(Stdio::piped())
                            .stderr(Stdio::piped())
                            .spawn()
                            .unwrap();
                        child.stdin.take().unwrap().write_all(&request(n)).unwrap();
                        let out = child.wait_with_output().unwrap();
                        lat.push(start.elapsed());
                        assert!(
                            out.status.success() && out.stdout.starts_with(b"HTTP/1.1 200"),
                            "delivery {n}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let total = t0.elapsed();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    let n = i64::from(senders * per);
    let stored = home.count("SELECT count(*) FROM deliveries");
    let tasks = home.count("SELECT count(*) FROM tasks");
    let jobs = home.count("SELECT count(*) FROM jobs");
    let branches = gitea.count(Some("POST"), "acme/orch", "branches") as i64;
    println!(
        "webhook-handle --stdio, {n} deliveries from {senders} concurrent senders: {:.0} deliveries/s, median={:.2}ms p99={:.2}ms max={:.2}ms; stored={stored} tasks={tasks} jobs={jobs} branch_requests={branches}",
        n as f64 / total.as_secs_f64(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    assert_eq!(
        (stored, tasks, jobs, branches),
        (n, n, n, n),
        "none lost, none doubled"
    );
}
