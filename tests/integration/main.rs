//! Integration tests: the real `orch` binary against a real SQLite file, real locks,
//! real processes and loopback stand-ins. One test binary, one module per area.

#[path = "../common/mod.rs"]
mod common;

mod clients;
mod crash;
mod foundation;
mod jobs;
mod kit;
mod merge_guard;
mod post_deploy;
mod prompts;
mod reconcile;
mod rounds;
mod staging_check;
mod staging_roundtrip;
mod stale_artefacts;
mod the_loop;
mod webhook;
