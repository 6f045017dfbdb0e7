//! `orch doctor`: probe, read-only, what the pipeline file and settings point at (Plane,
//! Gitea, Telegram, the database and the state directory) and print one line per
//! check. The judging lives in `core::doctor`; this file only gathers the facts.
//!
//! Every remote call is a GET: doctor never writes to Plane, Gitea or Telegram. Locally
//! it opens the database without migrating it, and takes (then drops) a lock of its own
//! to prove the lock directory works.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::adapters::db::{Db, SCHEMA_VERSION};
use crate::adapters::gitea::GiteaClient;
use crate::adapters::http::HttpError;
use crate::adapters::lock::LockFile;
use crate::adapters::plane::PlaneClient;
use crate::adapters::telegram::{GetMe, Telegram};
use crate::core::doctor::{
    self, DbFacts, DoctorCheck, DoctorLevel, Reached, RepoFacts, TelegramFacts, WorkItemPaths,
};
use crate::exit::ExitStatus;
use crate::ops::pass::{PassContext, PassReport};

/// Check that Plane, Gitea, Telegram and the local state work with this configuration
///
/// Run it at install and after every upgrade of Plane or Gitea. Read-only: it sends
/// only GET requests. One line per check: OK, WARN or FAIL, what was checked and, on a
/// problem, the fix (docs/doctor.md lists every check). Exit codes: 0 nothing failed
/// (warnings allowed), 1 a check failed, 2 doctor could not run (bad configuration,
/// e.g. ORCH_PLANE_URL or ORCH_GITEA_URL unset).
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the checks as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `doctor`.
///
/// # Errors
/// A missing Plane or Gitea setting (the clients cannot be built): exit 2.
pub fn run(args: &DoctorArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let started = Instant::now();
    // Both clients first: without them doctor cannot run at all (exit 2).
    let plane = ctx.require_plane()?;
    let gitea = ctx.require_gitea()?;
    let mut checks = plane_checks(ctx, plane);
    checks.extend(gitea_checks(ctx, gitea));
    checks.push(telegram_check(ctx)?);
    checks.extend(local_checks(ctx));
    let failed = doctor::any_failed(&checks);
    if args.json {
        let out = serde_json::json!({
            "ok": !failed,
            "counts": {
                "ok": doctor::count(&checks, DoctorLevel::Ok),
                "warn": doctor::count(&checks, DoctorLevel::Warn),
                "fail": doctor::count(&checks, DoctorLevel::Fail),
            },
            "checks": checks,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for c in &checks {
            println!("{c}");
        }
    }
    let report = PassReport::new("doctor", started.elapsed().as_millis())
        .with("ok", doctor::count(&checks, DoctorLevel::Ok))
        .with("warn", doctor::count(&checks, DoctorLevel::Warn))
        .with("fail", doctor::count(&checks, DoctorLevel::Fail));
    log::info!("{report}");
    Ok(if failed {
        ExitStatus::No
    } else {
        ExitStatus::Success
    })
}

/// A probe's transport failure as doctor judges it; any other error becomes a status
/// (the probes ask for every status, so only a no-answer or a bad body is left).
fn reached<T>(r: &Result<T, HttpError>, status: impl Fn(&T) -> u16) -> Reached {
    match r {
        Ok(v) => Reached::Answered(status(v)),
        Err(e) => Reached::NoAnswer(e.to_string()),
    }
}

fn plane_checks(ctx: &PassContext, plane: &PlaneClient) -> Vec<DoctorCheck> {
    let settings = &ctx.config.settings;
    let url = settings
        .plane_url
        .as_ref()
        .map_or_else(String::new, ToString::to_string);
    let projects = &ctx.config.pipeline.projects;
    let mut out = Vec::new();
    let mut remaining = None;
    let mut first_readable = None;
    for (i, p) in projects.iter().enumerate() {
        let probe = plane.probe_states(&p.plane_project_id);
        let got = reached(&probe, |s| s.status);
        if i == 0 {
            out.extend(doctor::plane_access(&url, &got));
            let usable = matches!(got, Reached::Answered(s) if s != 401 && s != 403 && s < 500);
            if !usable {
                // Unreachable or the key refused: every other Plane check would say so again.
                out.push(doctor::webhook_secret(
                    settings.plane_webhook_secret.is_some(),
                ));
                return out;
            }
        }
        let states = probe.as_ref().ok().and_then(|s| s.states.clone());
        if let Ok(s) = &probe {
            remaining = s.rate_limit_remaining.or(remaining);
        }
        if states.is_some() && first_readable.is_none() {
            first_readable = Some(p.plane_project_id.clone());
        }
        out.extend(doctor::plane_states(
            &p.name,
            &p.states,
            &got,
            states.as_deref(),
        ));
    }
    if let Some(pid) = first_readable {
        out.push(match plane.probe_work_item_paths(&pid) {
            Ok(paths) => doctor::plane_paths(paths),
            Err(e) => DoctorCheck::fail(
                "plane.paths",
                format!("listing work items failed: {e}"),
                "look at Plane's logs; run doctor again once Plane answers",
            ),
        });
    } else if !projects.is_empty() {
        out.push(doctor::plane_paths(WorkItemPaths::Neither));
    }
    out.push(doctor::plane_rate_limit(remaining));
    out.push(doctor::webhook_secret(
        settings.plane_webhook_secret.is_some(),
    ));
    out
}

fn gitea_checks(ctx: &PassContext, gitea: &GiteaClient) -> Vec<DoctorCheck> {
    let url = ctx
        .config
        .settings
        .gitea_url
        .as_ref()
        .map_or_else(String::new, ToString::to_string);
    let user = gitea.probe_user();
    let got = reached(&user, |u| u.0);
    let login = user.as_ref().ok().and_then(|u| u.1.clone());
    let mut out = doctor::gitea_access(&url, &got, login.as_deref());
    if got != Reached::Answered(200) {
        return out;
    }
    out.push(doctor::gitea_version(
        gitea.probe_version().ok().flatten().as_deref(),
    ));
    let mut compare: Option<bool> = None;
    for p in &ctx.config.pipeline.projects {
        let probe = gitea.probe_repo(&p.repo);
        let mut facts = RepoFacts {
            reached: reached(&probe, |r| r.0),
            gitea_default_branch: None,
            push: false,
            allow_merge_commits: false,
            archived: false,
            branch_exists: None,
        };
        if let Ok((_, Some(info))) = &probe {
            facts.gitea_default_branch = Some(info.default_branch.clone());
            facts.push = info.permissions.is_some_and(|p| p.push);
            facts.allow_merge_commits = info.allow_merge_commits;
            facts.archived = info.archived;
            let tip = gitea.branch_tip(&p.repo, &p.default_branch);
            facts.branch_exists = tip.as_ref().ok().map(Option::is_some);
            if let (None, Ok(Some(sha))) = (compare, &tip) {
                compare = gitea.compares_by_sha(&p.repo, &p.default_branch, sha).ok();
            }
        }
        out.extend(doctor::gitea_repo(
            &p.name,
            &p.repo,
            &p.default_branch,
            &facts,
        ));
    }
    out.push(doctor::compare_by_sha(compare));
    out
}

fn telegram_check(ctx: &PassContext) -> Result<DoctorCheck> {
    let s = &ctx.config.settings;
    let facts = match (&s.telegram_bot_token, &s.telegram_chat_id) {
        (None, None) => TelegramFacts::NotSet,
        (Some(_), Some(_)) => match ctx.telegram()?.map(Telegram::get_me) {
            Some(Ok(GetMe::Bot(bot))) => TelegramFacts::Valid(bot),
            Some(Ok(GetMe::Refused(why))) => TelegramFacts::Refused(why),
            Some(Ok(GetMe::Busy(why))) => TelegramFacts::Busy(why),
            Some(Ok(GetMe::Unexpected(why))) => TelegramFacts::NoAnswer(why),
            Some(Err(e)) => TelegramFacts::NoAnswer(e.to_string()),
            None => TelegramFacts::Half,
        },
        _ => TelegramFacts::Half,
    };
    Ok(doctor::telegram(&facts))
}

fn local_checks(ctx: &PassContext) -> Vec<DoctorCheck> {
    let s = &ctx.config.settings;
    let db = crate::adapters::db::display_location(&s.db);
    let state = s.state_dir.display().to_string();
    let locks_dir = s.state_dir.join("locks");
    let locks = locks_dir.display().to_string();
    let locks_facts = if locks_dir.is_dir() {
        LockFile::try_acquire(&ctx.lock_path("doctor"))
            .map(|_guard| true)
            .map_err(|e| e.to_string())
    } else {
        Ok(false)
    };
    vec![
        doctor::database(&db, &db_facts(&s.db)),
        doctor::directory("local.state_dir", &state, &dir_facts(&s.state_dir)),
        doctor::directory("local.locks", &locks, &locks_facts),
    ]
}

fn db_facts(path: &Path) -> DbFacts {
    if crate::adapters::db::is_postgres_url(path) {
        return pg_facts(path);
    }
    if !path.exists() {
        return DbFacts::Missing;
    }
    if let Err(e) = std::fs::OpenOptions::new().write(true).open(path) {
        return DbFacts::Unusable(format!("not writable: {e}"));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Err(e) = dir_facts(dir) {
        return DbFacts::Unusable(format!("its directory {e}"));
    }
    match Db::open_unmigrated(path).and_then(|db| db.schema_version()) {
        Ok(schema) => DbFacts::Ready {
            schema,
            latest: SCHEMA_VERSION,
        },
        Err(e) => DbFacts::Unusable(format!("{e:#}")),
    }
}

/// The PostgreSQL database's facts: reachable, orch's schema there, and the right to
/// write orch's tables (asked of the server, nothing written).
fn pg_facts(url: &Path) -> DbFacts {
    let db = match Db::open_unmigrated(url) {
        Ok(db) => db,
        Err(e) => return DbFacts::Unusable(format!("{e:#}")),
    };
    let schema = match db.schema_version() {
        Ok(0) => return DbFacts::Missing,
        Ok(v) => v,
        Err(e) => return DbFacts::Unusable(format!("{e:#}")),
    };
    let may_write: Result<bool, _> = db.conn().query_row(
        // Each right asked alone: a list of rights is true when any one is held.
        "SELECT bool_and(has_table_privilege(t, p))
           FROM unnest(ARRAY['jobs', 'tasks', 'deliveries']) AS t,
                unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) AS p",
        [],
        |r| r.get(0),
    );
    match may_write {
        Ok(true) => DbFacts::Ready {
            schema,
            latest: SCHEMA_VERSION,
        },
        Ok(false) => DbFacts::Unusable("not writable: the user may not write orch's tables".into()),
        Err(e) => DbFacts::Unusable(e.to_string()),
    }
}

/// `Ok(true)` when `dir` exists and a file can be created in it (and is removed at
/// once), `Ok(false)` when it does not exist.
fn dir_facts(dir: &Path) -> Result<bool, String> {
    if !dir.is_dir() {
        return Ok(false);
    }
    let probe = dir.join(format!(".orch-doctor-{}", std::process::id()));
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    match made {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(true)
        }
        Err(e) => Err(format!("is not writable: {e}")),
    }
}
