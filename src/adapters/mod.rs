//! The outside world: SQLite, files, locks, processes, HTTP. Adapters return `core`
//! types and make no pipeline decisions.

pub mod agent_socket;
pub mod artefact_store;
pub mod artefacts;
pub mod bounds;
pub mod db;
pub mod forge;
pub mod fs;
pub mod gitea;
pub mod http;
pub mod lease;
pub mod lock;
pub mod plane;
pub mod poll;
pub mod process;
pub mod production_probe;
mod rest;
pub mod rollback;
pub mod roundtrip;
pub mod spawn;
pub mod staging_probes;
pub mod telegram;
pub mod webhook_server;
pub mod windows;
pub mod workspace;
