//! `orch backup`: a consistent copy taken while another process writes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::common::TestEnv;

/// Another process writing: each transaction adds one `set` and one `clear` row, so a
/// consistent snapshot has as many of each. It prints `ready` after its first 50
/// commits, then writes until its stdin closes and prints how many it committed.
const WRITER: &str = r#"
import select, sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=15, isolation_level=None)
n = 0
while True:
    db.execute("BEGIN IMMEDIATE")
    for action in ("set", "clear"):
        db.execute(
            "INSERT INTO hold_events (project, action, reason, by_name, os_user, at)"
            " VALUES ('shop', ?, 'load', 'w', 'w', ?)", (action, n))
    db.execute("COMMIT")
    n += 1
    if n == 50:
        print("ready", flush=True)
    if n >= 50 and select.select([sys.stdin], [], [], 0)[0]:
        break
print(n, flush=True)
"#;

#[test]
fn a_backup_taken_while_another_process_writes_is_consistent_and_readable() {
    if !crate::common::sqlite_only() {
        return; // the online backup of a SQLite file
    }
    let env = TestEnv::new();
    let db = env.path("orch.db");
    let mut writer = Command::new("python3")
        .args(["-c", WRITER, db.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(writer.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let run = env.run(&["backup", "backups/orch.db", "--json"]).expect(0);
    let json = run.json();

    // Stop the writer: it committed more after the backup's snapshot.
    writer.stdin.take().unwrap().write_all(b"stop\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let written: i64 = line.trim().parse().unwrap();
    assert!(writer.wait().unwrap().success());

    assert_eq!(json["integrity"], "ok");
    assert_eq!(json["schema_version"], orch::adapters::db::SCHEMA_VERSION);
    let copy = env.path("backups/orch.db");
    let c = rusqlite::Connection::open(&copy).unwrap();
    let count = |action: &str| -> i64 {
        c.query_row(
            "SELECT count(*) FROM hold_events WHERE action = ?1",
            [action],
            |r| r.get(0),
        )
        .unwrap()
    };
    let (sets, clears) = (count("set"), count("clear"));
    assert_eq!(sets, clears, "no transaction is half in the copy");
    assert!(
        (50..=written).contains(&sets),
        "{sets} of {written} transactions"
    );
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "one self-contained file");
    drop(c);
    assert!(!env.path("backups/orch.db-wal").exists());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "as private as the database");

    // orch reads the copy as its database.
    let status = env
        .run(&["--db", copy.to_str().unwrap(), "status", "--json"])
        .expect(0)
        .json();
    assert_eq!(status["schema_version"], orch::adapters::db::SCHEMA_VERSION);
    // Nothing else was left beside it.
    let names: Vec<_> = std::fs::read_dir(env.path("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("orch.db")), "{names:?}");
}

#[test]
fn a_backup_of_no_database_is_exit_2_and_writes_nothing() {
    if !crate::common::sqlite_only() {
        return; // a missing file
    }
    let env = TestEnv::new();
    let _ = std::fs::remove_file(env.path("orch.db"));
    let run = env.run(&["backup", "copy.db"]).expect(2);
    assert!(run.stderr.contains("no database at"), "{}", run.stderr);
    assert!(!env.path("copy.db").exists());
}

#[test]
fn a_backup_of_a_postgresql_database_is_refused_naming_the_servers_tools() {
    if crate::common::sqlite_only() {
        return;
    }
    let env = TestEnv::new();
    env.run(&["init"]).expect(0);
    let run = env.run(&["backup", "copy.db"]).expect(2);
    run.stderr_has("pg_dump");
    assert!(!env.path("copy.db").exists(), "nothing written");
}
