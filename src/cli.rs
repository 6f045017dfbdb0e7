//! The command line: global flags, one variant per subcommand, and dispatch.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cli_docs;
use crate::commands::{
    agent_socket, backup, config_check, dispatch, doctor, hold, init, job, merge_guard,
    migrate_store, post_deploy_tick, reap, reconcile, run_job, staging_check, status, task,
    webhook_handle,
};
use crate::config::Overrides;
use crate::exit::ExitStatus;
use crate::ops::pass::PassContext;

/// The deterministic control plane of a self-hosted AI delivery pipeline.
///
/// Each subcommand does one pass and exits: 0 done (or nothing to do), 1 a check or
/// verdict said no, 2 usage, configuration or internal error, 75 skipped because
/// another copy of the same pass holds its lock.
#[derive(Debug, Parser)]
#[command(
    name = "orch",
    version = crate::build_info::LONG_VERSION,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// SQLite database file [env: ORCH_DB; default: ./orch.db]
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// YAML pipeline file [env: ORCH_CONFIG; default: ./orch.yaml when it exists]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Directory for locks, the merge lease and post-deploy sentinels [env: ORCH_STATE_DIR; default: ./state]
    #[arg(long, global = true, value_name = "PATH")]
    pub state_dir: Option<PathBuf>,

    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Returns the configuration overrides the flags carry.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            db: self.db.clone(),
            state_dir: self.state_dir.clone(),
            job_launcher: match &self.command {
                Command::Dispatch(args) => args.launcher.clone(),
                _ => None,
            },
        }
    }
}

/// One variant per subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    // The pipeline's passes, in the order work flows through them.
    WebhookHandle(webhook_handle::WebhookHandleArgs),
    Dispatch(dispatch::DispatchArgs),
    RunJob(run_job::RunJobArgs),
    Reap(reap::ReapArgs),
    Reconcile(reconcile::ReconcileArgs),
    StagingCheck(staging_check::StagingCheckArgs),
    MergeGuard(merge_guard::MergeGuardArgs),
    PostDeployTick(post_deploy_tick::PostDeployTickArgs),
    // For the operator.
    Status(status::StatusArgs),
    #[command(subcommand)]
    Task(task::TaskCommand),
    #[command(subcommand)]
    Job(job::JobCommand),
    #[command(subcommand)]
    Hold(hold::HoldCommand),
    Init(init::InitArgs),
    #[command(subcommand)]
    Config(config_check::ConfigCommand),
    Doctor(doctor::DoctorArgs),
    // For agents under a separate user (docs/security.md).
    AgentSocket(agent_socket::AgentSocketArgs),
    Backup(backup::BackupArgs),
    MigrateStore(migrate_store::MigrateStoreArgs),
    // For packagers.
    Man(cli_docs::ManArgs),
    Completions(cli_docs::CompletionsArgs),
}

/// Runs the chosen subcommand.
///
/// # Errors
/// Whatever the subcommand returns; `main` prints it and exits 2.
pub fn dispatch(command: &Command, ctx: &PassContext) -> Result<ExitStatus> {
    match command {
        Command::Init(args) => init::run(args, ctx),
        Command::Config(cmd) => config_check::run(cmd, ctx),
        Command::Doctor(args) => doctor::run(args, ctx),
        Command::Backup(args) => backup::run(args, ctx),
        Command::MigrateStore(args) => migrate_store::run(args, ctx),
        Command::Status(args) => status::run(args, ctx),
        Command::Task(cmd) => task::run(cmd, ctx),
        Command::StagingCheck(args) => staging_check::run(args, ctx),
        Command::PostDeployTick(args) => post_deploy_tick::run(args, ctx),
        Command::MergeGuard(args) => merge_guard::run(args, ctx),
        Command::WebhookHandle(args) => webhook_handle::run(args, ctx),
        Command::Dispatch(args) => dispatch::run(args, ctx),
        Command::RunJob(args) => run_job::run(args, ctx),
        Command::Reap(args) => reap::run(args, ctx),
        Command::Job(cmd) => job::run(cmd, ctx),
        Command::Hold(cmd) => hold::run(cmd, ctx),
        Command::Reconcile(args) => reconcile::run(args, ctx),
        Command::AgentSocket(args) => agent_socket::run(args, ctx),
        Command::Man(args) => cli_docs::run_man(args),
        Command::Completions(args) => cli_docs::run_completions(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
