//! The integration tests of `tests/integration/` again, on PostgreSQL: every module,
//! the same tests, each env with a database of its own on the test server
//! (`tests/common/pg_server.rs`). A test of what only a SQLite file has returns early
//! here (`common::sqlite_only`).

#[path = "../common/mod.rs"]
mod common;

/// This binary's engine.
pub const BACKEND: common::Backend = common::Backend::Postgres;

#[path = "../integration/agent_socket.rs"]
mod agent_socket;
#[path = "../integration/backup.rs"]
mod backup;
#[path = "../integration/bounds.rs"]
mod bounds;
#[path = "../integration/clients.rs"]
mod clients;
#[path = "../integration/crash.rs"]
mod crash;
#[path = "../integration/doctor.rs"]
mod doctor;
#[path = "../integration/feedback.rs"]
mod feedback;
#[path = "../integration/foundation.rs"]
mod foundation;
#[path = "../integration/holds.rs"]
mod holds;
#[path = "../integration/hosts.rs"]
mod hosts;
#[path = "../integration/install.rs"]
mod install;
#[path = "../integration/jobs.rs"]
mod jobs;
#[path = "../integration/kit.rs"]
mod kit;
#[path = "../integration/leases.rs"]
mod leases;
#[path = "../integration/merge_guard.rs"]
mod merge_guard;
#[path = "../integration/migrate_store.rs"]
mod migrate_store;
#[path = "../integration/package.rs"]
mod package;
#[path = "../integration/post_deploy.rs"]
mod post_deploy;
#[path = "../integration/priority.rs"]
mod priority;
#[path = "../integration/prompts.rs"]
mod prompts;
#[path = "../integration/reconcile.rs"]
mod reconcile;
#[path = "../integration/rounds.rs"]
mod rounds;
#[path = "../integration/shared_state.rs"]
mod shared_state;
#[path = "../integration/spend.rs"]
mod spend;
#[path = "../integration/staging_check.rs"]
mod staging_check;
#[path = "../integration/staging_roundtrip.rs"]
mod staging_roundtrip;
#[path = "../integration/stale_artefacts.rs"]
mod stale_artefacts;
#[path = "../integration/stale_deliveries.rs"]
mod stale_deliveries;
#[path = "../integration/the_loop.rs"]
mod the_loop;
#[path = "../integration/versions.rs"]
mod versions;
#[path = "../integration/webhook.rs"]
mod webhook;
#[path = "../integration/workspace.rs"]
mod workspace;

/// Every module of `tests/integration/main.rs` is declared here too, so no test runs on
/// one engine only by being forgotten.
#[test]
fn every_integration_module_runs_on_postgres() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("read main.rs");
    let modules = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("mod "))
            .map(|m| m.trim_end_matches(';').trim().to_string())
            .filter(|m| m != "common")
            .collect()
    };
    assert_eq!(
        modules(&read("postgres/main.rs")),
        modules(&read("integration/main.rs"))
    );
}
