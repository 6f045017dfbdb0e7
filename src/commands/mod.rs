//! One module per subcommand: load, decide in `core`, act through `adapters`, report.

pub mod agent_socket;
pub mod backup;
pub mod config_check;
pub mod dispatch;
pub mod doctor;
pub mod hold;
pub mod init;
pub mod job;
pub mod merge_guard;
pub mod migrate_store;
pub mod post_deploy_tick;
pub mod reap;
pub mod reconcile;
pub mod run_job;
pub mod staging_check;
pub mod status;
pub mod task;
pub mod webhook_handle;
