//! `orch config check`: validate and print the effective configuration.

use anyhow::{Context as _, Result};

use crate::config::{display_path, AGENT_PLACEHOLDERS};
use crate::core::intake;
use crate::core::stage::Agent;
use crate::exit::ExitStatus;
use crate::ops::pass::PassContext;

/// Inspect the configuration
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate the settings and pipeline file and print the effective configuration
    ///
    /// Secrets are shown as `<redacted>`. Each setting shows where its value came from
    /// (default, file, env or flag). Plane states already cached in the database are
    /// checked against each project's states: one matching two meanings is an error.
    /// Exit codes: 0 valid, 2 invalid (the error names the key and the expected form).
    Check(ConfigCheckArgs),
}

/// Flags of `config check`.
#[derive(Debug, clap::Args)]
pub struct ConfigCheckArgs {
    /// Print the effective configuration as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `config check`. Loading already validated everything; this prints it.
///
/// # Errors
/// Never in practice; printing JSON cannot fail on these types.
pub fn run(cmd: &ConfigCommand, ctx: &PassContext) -> Result<ExitStatus> {
    let ConfigCommand::Check(args) = cmd;
    let cfg = &ctx.config;
    let ambiguous = ambiguous_states(ctx)?;
    let missing_agents: Vec<&str> = Agent::ALL
        .iter()
        .filter(|a| cfg.pipeline.agent_argv(**a).is_none())
        .map(|a| a.as_str())
        .collect();
    if args.json {
        let out = serde_json::json!({
            "valid": true,
            "pipeline_file": cfg.pipeline.path.as_ref().map(|p| p.display().to_string()),
            "settings": cfg.resolved,
            "pipeline": cfg.pipeline,
            "staging_checks": cfg.pipeline.staging_checks.len(),
            "agents_missing": missing_agents,
            "ambiguous_states": ambiguous,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(if ambiguous.is_empty() {
            ExitStatus::Success
        } else {
            ExitStatus::Error
        });
    }
    if !ambiguous.is_empty() {
        for a in &ambiguous {
            crate::logging::say(log::Level::Error, &format!("error: {a}"));
        }
        return Ok(ExitStatus::Error);
    }
    println!("configuration is valid");
    println!(
        "pipeline file: {}",
        display_path(cfg.pipeline.path.as_deref())
    );
    println!();
    println!("settings:");
    let width = cfg.resolved.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in &cfg.resolved {
        let value = if r.value.is_empty() {
            "(unset)".to_string()
        } else {
            r.value.clone()
        };
        println!("  {:width$}  {value}  [{}]", r.name, r.source.label());
    }
    println!();
    match &cfg.pipeline.plane_workspace {
        Some(ws) => println!("plane workspace: {ws}"),
        None => println!("plane workspace: (none)"),
    }
    println!("projects: {}", cfg.pipeline.projects.len());
    for p in &cfg.pipeline.projects {
        let role = if p.self_hosting {
            " (self-hosting)"
        } else {
            ""
        };
        println!(
            "  {}{role}: plane {} repo {} branch {}",
            p.name, p.plane_project_id, p.repo, p.default_branch
        );
    }
    println!("agents:");
    for a in Agent::ALL {
        match cfg.pipeline.agent_argv(a) {
            Some(argv) => {
                let g = cfg.pipeline.agent_grants(a);
                let credentials: Vec<&str> = g.credentials.iter().map(|c| c.setting()).collect();
                println!(
                    "  {a}: {} (credentials: {}; env: {})",
                    argv.join(" "),
                    if credentials.is_empty() {
                        "none".into()
                    } else {
                        credentials.join(" ")
                    },
                    if g.env.is_empty() {
                        "allowlist only".into()
                    } else {
                        g.env.join(" ")
                    }
                );
            }
            None => println!("  {a}: (not configured: its jobs fail until it is)"),
        }
    }
    println!(
        "  (placeholders: {})",
        AGENT_PLACEHOLDERS
            .iter()
            .map(|p| format!("{{{p}}}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("staging checks: {}", cfg.pipeline.staging_checks.len());
    Ok(ExitStatus::Success)
}

/// Returns one line per cached Plane state that matches two meanings of its project
/// (`projects[].states`): a name match wins over a group match, so this is two names
/// or, with no name match, two groups. Only the states already in the database's cache
/// (filled by webhook-handle and reconcile) can be checked.
fn ambiguous_states(ctx: &PassContext) -> Result<Vec<String>> {
    let cached = crate::adapters::db::read_cached_states(&ctx.config.settings.db)
        .context("reading the plane state cache")?;
    let mut out = Vec::new();
    for p in &ctx.config.pipeline.projects {
        let states: Vec<_> = cached
            .iter()
            .filter(|(pid, _)| pid.eq_ignore_ascii_case(&p.plane_project_id))
            .map(|(_, s)| s.clone())
            .collect();
        for (s, both) in intake::ambiguous_states(&p.states, &states) {
            let names: Vec<&str> = both.iter().map(|m| m.as_str()).collect();
            out.push(format!(
                "projects[{}].states: plane state {:?} (group {}) matches {}; a state may carry one meaning",
                p.name,
                s.name,
                s.group,
                names.join(" and ")
            ));
        }
    }
    Ok(out)
}
