//! Manual pages and shell completions, generated from the clap definitions in `cli.rs`
//! and never written by hand: `orch man DIR` and `orch completions SHELL`. A package
//! build runs both once after `cargo build` and installs what they write
//! (`docs/operations.md`, "Manual pages and completions").

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::cli::Cli;
use crate::exit::ExitStatus;

/// Write the manual pages: orch(1) and one page per subcommand (orch-task-add(1), …)
///
/// Needs no database and no configuration. Exit codes: 0 written, 2 the directory could
/// not be written.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write the `.1` files into (created when missing)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Print the shell completion script for SHELL on stdout
///
/// Needs no database and no configuration. Install it where the shell looks, e.g.
/// `orch completions bash > /usr/share/bash-completion/completions/orch`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// The command tree as clap builds it, with the names the pages use.
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Renders every manual page: `(file name, roff text)`, orch(1) first, then each
/// subcommand, depth first (`orch-task.1`, `orch-task-add.1`, …).
///
/// # Errors
/// When rendering fails (it writes to memory only).
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        let man = clap_mangen::Man::new(cmd.clone())
            .source(format!("orch {}", crate::build_info::LONG_VERSION))
            .manual("orch manual");
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        out.push((man.get_filename(), roff));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&command(), &mut out)?;
    Ok(out)
}

/// Runs `orch man DIR`: writes every page, prints each path.
///
/// # Errors
/// When the directory or a page cannot be written.
pub fn run_man(args: &ManArgs) -> Result<ExitStatus> {
    for (name, roff) in man_pages()? {
        let path = args.dir.join(&name);
        crate::adapters::fs::write_atomic(&path, &roff)
            .with_context(|| format!("writing the manual page {name}"))?;
        println!("{}", path.display());
    }
    Ok(ExitStatus::Success)
}

/// Runs `orch completions SHELL`: the script on stdout.
///
/// # Errors
/// When stdout cannot be written.
pub fn run_completions(args: &CompletionsArgs) -> Result<ExitStatus> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command(), "orch", &mut script);
    std::io::stdout()
        .write_all(&script)
        .context("writing the completion script")?;
    Ok(ExitStatus::Success)
}
