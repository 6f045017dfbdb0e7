//! `orch hold`: a human freeze of one project (release freeze, incident). While a
//! project's hold is on, `merge-guard` answers BLOCKED with its reason and `dispatch`
//! starts none of its deployer jobs (they stay queued). Every set and clear is recorded
//! with who and when (`hold list --history`).

use anyhow::{bail, Context as _, Result};

use crate::adapters::db::{HoldActor, HoldEvent};
use crate::adapters::process::os_user;
use crate::clock::{format_unix, human_duration};
use crate::core::hold::{parse_until, Hold, Until};
use crate::exit::ExitStatus;
use crate::ops::pass::PassContext;

/// Freeze a project: no merge through merge-guard, no deployer job started
#[derive(Debug, clap::Subcommand)]
pub enum HoldCommand {
    /// Put a project on hold (replacing a hold it already has)
    ///
    /// While the hold is on, `merge-guard` answers BLOCKED (exit 1) with its reason and
    /// `dispatch` leaves the project's deployer jobs queued. Exit codes: 0 set, 2 usage
    /// (unknown project, a bad --until) or database error.
    Set(SetArgs),
    /// List the holds on now; with --history, every set and clear ever recorded
    ///
    /// Exit codes: 0 listed, 2 the database could not be read.
    List(ListArgs),
    /// Lift a project's hold
    ///
    /// Exit codes: 0 lifted (or there was none on: nothing recorded), 2 usage or
    /// database error.
    Clear(ClearArgs),
}

/// Flags of `hold set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Project name from the pipeline file
    #[arg(long)]
    pub project: String,
    /// When it lapses by itself: an RFC 3339 instant (2026-12-01T18:00:00Z) or a
    /// duration from now (2h, 1h30m, 3d) [default: until `hold clear`]
    #[arg(long, value_parser = parse_until)]
    pub until: Option<Until>,
    /// Why (merge-guard and dispatch repeat it)
    #[arg(long)]
    pub reason: String,
    /// Who, recorded with the hold [default: the OS user]
    #[arg(long)]
    pub by: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Flags of `hold list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Every set and clear ever recorded, oldest first, instead of the holds on now
    #[arg(long)]
    pub history: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Flags of `hold clear`.
#[derive(Debug, clap::Args)]
pub struct ClearArgs {
    /// Project name from the pipeline file
    #[arg(long)]
    pub project: String,
    /// Why it is lifted (recorded)
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Who, recorded with the clear [default: the OS user]
    #[arg(long)]
    pub by: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs a `hold` subcommand.
///
/// # Errors
/// An unknown project, a bad value, or the database.
pub fn run(cmd: &HoldCommand, ctx: &PassContext) -> Result<ExitStatus> {
    match cmd {
        HoldCommand::Set(a) => set(a, ctx),
        HoldCommand::List(a) => list(a, ctx),
        HoldCommand::Clear(a) => clear(a, ctx),
    }
}

/// Refuses a project the pipeline file does not name: a typo would freeze nothing.
fn known_project(ctx: &PassContext, name: &str) -> Result<()> {
    let pipeline = &ctx.config.pipeline;
    if pipeline.project(name).is_some() {
        return Ok(());
    }
    let known: Vec<&str> = pipeline.projects.iter().map(|p| p.name.as_str()).collect();
    bail!(
        "unknown project {name:?}; the pipeline file has: {}",
        if known.is_empty() {
            "(none)".into()
        } else {
            known.join(", ")
        }
    )
}

/// Checks a `--reason` or `--by` value: printable, one line, at most 500 characters.
fn text(flag: &str, value: &str, required: bool) -> Result<String> {
    let v = value.trim();
    if (required && v.is_empty()) || v.chars().count() > 500 || v.chars().any(char::is_control) {
        bail!(
            "{flag} must be {}one line of at most 500 printable characters",
            if required { "non-empty, " } else { "" }
        );
    }
    Ok(v.to_string())
}

fn actor(by: Option<&str>) -> Result<HoldActor> {
    let os_user = os_user();
    let by = match by {
        Some(b) => text("--by", b, true)?,
        None => os_user.clone(),
    };
    Ok(HoldActor { by, os_user })
}

fn set(args: &SetArgs, ctx: &PassContext) -> Result<ExitStatus> {
    known_project(ctx, &args.project)?;
    let reason = text("--reason", &args.reason, true)?;
    let who = actor(args.by.as_deref())?;
    let now = ctx.now_secs();
    let until = args.until.map(|u| u.resolve(now));
    if let Some(u) = until.filter(|u| *u <= now) {
        bail!(
            "--until {} has already passed (now {}): the hold would lift at once",
            format_unix(u),
            format_unix(now)
        );
    }
    let mut db = ctx.open_db()?;
    let replaced = db.set_hold(&args.project, &reason, until, &who, now)?;
    let hold = db
        .hold_of(&args.project, now)?
        .context("the hold just set is not on")?;
    if args.json {
        let json = serde_json::json!({"hold": hold_json(&hold, now), "replaced": replaced.as_ref().map(|h| hold_json(h, now))});
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("{}", hold_line(&hold, now));
        if let Some(old) = replaced {
            println!("  replaces: {}", hold_line(&old, now));
        }
    }
    log::info!("hold: set on {} by {}: {reason}", args.project, who.by);
    Ok(ExitStatus::Success)
}

fn clear(args: &ClearArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let reason = text("--reason", &args.reason, false)?;
    let who = actor(args.by.as_deref())?;
    let now = ctx.now_secs();
    let mut db = ctx.open_db()?;
    // A hold outlives its project's removal from the pipeline file: it can still be
    // cleared.
    if db.hold_of(&args.project, now)?.is_none() {
        known_project(ctx, &args.project)?;
    }
    let cleared = db.clear_hold(&args.project, &reason, &who, now)?;
    if args.json {
        let json = serde_json::json!({"project": args.project, "cleared": cleared.as_ref().map(|h| hold_json(h, now))});
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        match &cleared {
            Some(h) => println!("{}: hold lifted (was: {})", args.project, hold_line(h, now)),
            None => println!("{}: no hold on; nothing recorded", args.project),
        }
    }
    if cleared.is_some() {
        log::info!("hold: cleared on {} by {}", args.project, who.by);
    }
    Ok(ExitStatus::Success)
}

fn list(args: &ListArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let now = ctx.now_secs();
    let db = ctx.open_db()?;
    if args.history {
        let events = db.hold_events()?;
        if args.json {
            let rows: Vec<serde_json::Value> = events.iter().map(event_json).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else if events.is_empty() {
            println!("no hold ever set");
        } else {
            for e in &events {
                println!("{}", event_line(e));
            }
        }
        return Ok(ExitStatus::Success);
    }
    let holds = db.holds(now)?;
    if args.json {
        let rows: Vec<serde_json::Value> = holds.iter().map(|h| hold_json(h, now)).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if holds.is_empty() {
        println!("no hold on");
    } else {
        for h in &holds {
            println!("{}", hold_line(h, now));
        }
    }
    Ok(ExitStatus::Success)
}

/// One hold, one line: `shop: on hold until … (… left), set … by … [from job N]: reason`.
fn hold_line(h: &Hold, now: i64) -> String {
    let until = match h.until {
        Some(u) => format!(
            "until {} ({} left)",
            format_unix(u),
            human_duration(u - now)
        ),
        None => "until cleared".into(),
    };
    format!(
        "{}: on hold {until}, set {} by {}{}: {}",
        h.project,
        format_unix(h.set_at),
        h.by,
        agent_note(h.agent_job),
        h.reason
    )
}

fn agent_note(job: Option<i64>) -> String {
    job.map(|j| format!(" from inside job {j}"))
        .unwrap_or_default()
}

fn event_line(e: &HoldEvent) -> String {
    let until = e
        .until
        .map(|u| format!(" until {}", format_unix(u)))
        .unwrap_or_default();
    let by = if e.by == e.os_user {
        e.by.clone()
    } else {
        format!("{} (OS user {})", e.by, e.os_user)
    };
    format!(
        "{} {} {}{until} by {by}{}: {}",
        format_unix(e.at),
        e.project,
        e.action,
        agent_note(e.agent_job),
        e.reason
    )
}

fn hold_json(h: &Hold, now: i64) -> serde_json::Value {
    serde_json::json!({
        "project": h.project,
        "reason": h.reason,
        "until": h.until.map(format_unix),
        "until_unix": h.until,
        "set_at": format_unix(h.set_at),
        "set_at_unix": h.set_at,
        "age_s": now - h.set_at,
        "by": h.by,
        "os_user": h.os_user,
        "agent_job": h.agent_job,
    })
}

fn event_json(e: &HoldEvent) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "project": e.project,
        "action": e.action,
        "reason": e.reason,
        "until": e.until.map(format_unix),
        "until_unix": e.until,
        "at": format_unix(e.at),
        "at_unix": e.at,
        "by": e.by,
        "os_user": e.os_user,
        "agent_job": e.agent_job,
    })
}
