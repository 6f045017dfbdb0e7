//! The outside world: SQLite, files, locks, processes, HTTP. Adapters return `core`
//! types and make no pipeline decisions.

pub mod artefacts;
pub mod db;
pub mod db_jobs;
pub mod http;
pub mod lease;
pub mod lock;
pub mod process;
pub mod spawn;
