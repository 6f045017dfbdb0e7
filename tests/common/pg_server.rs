//! The PostgreSQL server the `postgres` test binary runs its tests against: the one
//! `ORCH_TEST_PG_URL` names (`.ci/run` starts one), else a throwaway cluster this
//! checkout starts under `target/pg-cluster` with `scripts/pg-cluster start` (left
//! running for the next run; `scripts/pg-cluster stop` stops it). Each test gets a
//! database of its own, dropped when its env drops.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The server's URL (its `postgres` database), found or started once per test binary.
pub fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let url = match std::env::var("ORCH_TEST_PG_URL") {
            Ok(u) if !u.trim().is_empty() => u.trim().to_string(),
            _ => {
                let script =
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster");
                let out = std::process::Command::new(&script)
                    .arg("start")
                    .output()
                    .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
                assert!(
                    out.status.success(),
                    "the PostgreSQL tests need a server: set ORCH_TEST_PG_URL, or install PostgreSQL (apt-get install postgresql) for scripts/pg-cluster to start one:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
        };
        drop_leftovers(&url);
        url
    })
}

/// Connects to `url` (plain text: the test server is on loopback).
fn client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL {url}: {e}"))
}

/// This machine's tag in test database names (a server may be shared by machines whose
/// process ids overlap): the first 8 characters of the machine id.
fn machine() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Drops the databases earlier test processes of this machine left behind (killed
/// before their envs dropped): those whose process is gone.
fn drop_leftovers(url: &str) {
    let mut c = client(url);
    let names: Vec<String> = c
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'orch\\_t\\_%'",
            &[],
        )
        .expect("listing test databases")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ours = machine();
    for name in names {
        // orch_t_<machine>_<pid>_<n>
        let mut parts = name.split('_').skip(2);
        if parts.next() != Some(ours.as_str()) {
            continue;
        }
        let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// A new empty database: its name and URL.
pub fn fresh_database() -> (String, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let admin = admin_url();
    let name = format!(
        "orch_t_{}_{}_{}",
        machine(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    client(admin)
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    (name.clone(), with_database(admin, &name))
}

/// `url` pointing at database `name` instead.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..authority_end])
}

/// Drops database `name` (its connections too).
pub fn drop_database(name: &str) {
    // Never panics (it runs in Drop, maybe while a test unwinds): a database left here
    // is dropped by the next run's clean-up.
    if let Ok(mut c) = postgres::Client::connect(admin_url(), postgres::NoTls) {
        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }
}
