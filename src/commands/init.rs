//! `orch init`: create or upgrade the database and the state directory, and make them
//! (and the artefacts) private: files `0600`, directories `0700`; with a separate agent
//! user, the artefacts only closed to other users (their group shares them).

use anyhow::{Context as _, Result};

use crate::adapters::db::{Db, SCHEMA_VERSION};
use crate::adapters::fs::{close_to_others, make_private};
use crate::exit::ExitStatus;
use crate::ops::pass::PassContext;

/// Create or upgrade the database and the state directory
///
/// Safe to run any number of times: an up-to-date database is left as it is. A database
/// written by a newer orch is refused (exit 2). Exit codes: 0 done, 2 error.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `init`.
///
/// # Errors
/// When the database cannot be opened or migrated, or the state directory created.
pub fn run(args: &InitArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let settings = &ctx.config.settings;
    let mut db = Db::open_unmigrated(&settings.db)?;
    let migration = db.migrate()?;
    for dir in [settings.state_dir.clone(), settings.state_dir.join("locks")] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // What an earlier run under a looser umask left readable is made private too: the
    // database (raw Plane payloads) with its WAL files, the state dir, the artefacts.
    // With a separate agent user the artefacts are shared with its group on purpose
    // (`2770`): only other users lose access, or every agent would be locked out.
    let mut private = vec![settings.state_dir.clone()];
    if settings
        .agent_user
        .as_deref()
        .is_some_and(|u| !u.trim().is_empty())
    {
        close_to_others(&settings.artefacts_dir)?;
    } else {
        private.push(settings.artefacts_dir.clone());
    }
    let suffixes: &[&str] = if crate::adapters::db::is_postgres_url(&settings.db) {
        &[]
    } else {
        &["", "-wal", "-shm"]
    };
    for suffix in suffixes {
        let mut p = settings.db.clone().into_os_string();
        p.push(suffix);
        private.push(p.into());
    }
    for path in &private {
        make_private(path)?;
    }
    let what = if migration.from == migration.to {
        format!("already at schema version {SCHEMA_VERSION}")
    } else if migration.from == 0 {
        format!("created at schema version {}", migration.to)
    } else {
        format!(
            "upgraded from schema version {} to {}",
            migration.from, migration.to
        )
    };
    if args.json {
        let out = serde_json::json!({
            "db": crate::adapters::db::display_location(&settings.db),
            "state_dir": settings.state_dir.display().to_string(),
            "schema_from": migration.from,
            "schema_version": migration.to,
        });
        println!("{out}");
    } else {
        println!(
            "database {}: {what}",
            crate::adapters::db::display_location(&settings.db)
        );
        println!("state dir {}: ready", settings.state_dir.display());
    }
    log::info!(
        "init: schema_from={} schema_to={}",
        migration.from,
        migration.to
    );
    Ok(ExitStatus::Success)
}
