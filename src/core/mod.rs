//! The pipeline's domain: types and decisions with no I/O, no clock reads and no
//! environment. Code here never touches `rusqlite`, `reqwest`, `std::fs`,
//! `std::process`, `std::env` or the system time.

pub mod artefact;
pub mod branch;
pub mod dispatch;
pub mod doctor;
pub mod escalation;
pub mod facts;
pub mod feedback;
pub mod gate;
pub mod hold;
pub mod intake;
pub mod job;
pub mod lease;
pub mod merge;
pub mod pin;
pub mod plane;
pub mod post_deploy;
pub mod priority;
pub mod reap;
pub mod reconcile;
pub mod revision;
pub mod round;
pub mod roundtrip;
pub mod spend;
pub mod stage;
pub mod staging_check;
pub mod staging_check_report;
pub mod status;
pub mod task;
pub mod when;
