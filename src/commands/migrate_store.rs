//! `orch migrate-store --to URL`: moves a SQLite install's store into an empty
//! PostgreSQL database, for more than one host (docs/scale-out.md).

use anyhow::{ensure, Result};

use crate::adapters::db::{copy_store, display_location, is_postgres_url, Db};
use crate::exit::ExitStatus;
use crate::ops::pass::PassContext;

/// Copy the SQLite database into an empty PostgreSQL database
///
/// Stop the timers and the webhook socket first: rows written after the copy's snapshot
/// stay behind. Every row of every table is copied in one transaction, checked (row
/// counts, the derived counts) before it commits; the SQLite file is only read. Then
/// point ORCH_DB at the URL on every host. Exit codes: 0 copied, 2 error (nothing
/// written to the target).
#[derive(Debug, clap::Args)]
pub struct MigrateStoreArgs {
    /// The PostgreSQL database to copy into (postgres://...; empty, created by the server's
    /// tools; orch init is run on it here)
    #[arg(long)]
    pub to: std::path::PathBuf,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `migrate-store`.
///
/// # Errors
/// When the source is not a SQLite file, the target not an empty PostgreSQL database, or
/// the copy fails its check.
pub fn run(args: &MigrateStoreArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let src = &ctx.config.settings.db;
    ensure!(
        !is_postgres_url(src),
        "ORCH_DB is already the PostgreSQL database {}: migrate-store copies from a SQLite file",
        display_location(src)
    );
    ensure!(
        is_postgres_url(&args.to),
        "--to must be a postgres:// URL, not {}",
        display_location(&args.to)
    );
    let from = Db::open_existing(src)?;
    let mut to = Db::open(&args.to)?;
    let copied = copy_store(&from, &mut to)?;
    let total: i64 = copied.iter().map(|c| c.rows).sum();
    if args.json {
        let json = serde_json::json!({
            "from": display_location(src),
            "to": display_location(&args.to),
            "tables": copied,
            "rows": total,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for c in &copied {
            println!("{:<18} {:>9} rows", c.table, c.rows);
        }
        println!(
            "copied {total} rows from {} to {}; now set ORCH_DB to the URL on every host",
            display_location(src),
            display_location(&args.to)
        );
    }
    log::info!("migrate-store: tables={} rows={total}", copied.len());
    Ok(ExitStatus::Success)
}
