//! `orch backup PATH`: a consistent copy of the database, taken while the timers run.

use std::path::PathBuf;

use anyhow::Result;

use crate::adapters::db::backup_database;
use crate::exit::ExitStatus;
use crate::ops::pass::PassContext;

/// Copy the database to PATH, consistently, while the timers keep running
///
/// Uses SQLite's online backup (one snapshot; writers are not stopped), checks the copy
/// with PRAGMA integrity_check, then renames it over PATH. The copy is one
/// self-contained file: restore it by stopping the timers and putting it at ORCH_DB
/// (docs/operations.md, "Backup and restore"). The database is not migrated first.
/// Exit codes: 0 written, 2 error (nothing replaced).
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Where to write the copy (replaced atomically if it exists)
    pub path: PathBuf,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `backup`.
///
/// # Errors
/// When the database cannot be read or the copy written or checked.
pub fn run(args: &BackupArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let src = &ctx.config.settings.db;
    if crate::adapters::db::is_postgres_url(src) {
        anyhow::bail!(
            "orch backup copies a SQLite file; ORCH_DB is the PostgreSQL database {}: back it up with the server's tools (pg_dump --format=custom, or continuous archiving), docs/scale-out.md",
            crate::adapters::db::display_location(src)
        );
    }
    let done = backup_database(src, &args.path)?;
    if args.json {
        let json = serde_json::json!({
            "database": src.display().to_string(),
            "backup": args.path.display().to_string(),
            "schema_version": done.schema_version,
            "pages": done.pages,
            "bytes": done.bytes,
            "integrity": "ok",
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "backup: {} -> {} (schema {}, {} pages, {} bytes, integrity ok)",
            src.display(),
            args.path.display(),
            done.schema_version,
            done.pages,
            done.bytes
        );
    }
    Ok(ExitStatus::Success)
}
