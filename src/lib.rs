//! `orch`: the deterministic control plane of a self-hosted AI software-delivery pipeline.
//!
//! One binary of single-pass subcommands. `core` holds the pipeline model and every
//! decision, with no I/O; `adapters` hold SQLite, files, locks, processes and HTTP;
//! `ops` holds the steps several passes share (run a pass, move a task, apply a gate);
//! `commands` load, decide in `core`, act through `ops` and `adapters` and report. See
//! `docs/architecture.md`.

pub mod adapters;
pub mod build_info;
pub mod cli;
pub mod cli_docs;
pub mod clock;
pub mod commands;
pub mod config;
pub mod core;
pub mod crash;
pub mod exit;
pub mod logging;
pub mod ops;
#[cfg(feature = "test-helpers")]
pub mod standin;
