//! The webhook round trip's I/O (`staging-check` C9a/C9b) beyond the Plane and Gitea
//! clients: a random work item id, the signed POST to staging's webhook endpoint, and
//! the read-only look into staging's SQLite file. No decisions here.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::adapters::db::OptionalExtension as _;
use anyhow::{Context as _, Result};

use crate::adapters::http::client_with;
use crate::core::roundtrip::StagingJob;
use crate::core::staging_check::{HttpAnswer, ProbeError};

/// Returns a fresh random UUID (version 4) read from the kernel's random source.
///
/// # Errors
/// When `/dev/urandom` cannot be read.
pub fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// POSTs a signed delivery the way Plane does (`Content-Type: application/json`,
/// `X-Plane-Event: issue`, `X-Plane-Delivery`, `X-Plane-Signature`), with `timeout` as
/// the whole deadline, and reads the answer (capped at 64 KiB).
///
/// # Errors
/// [`ProbeError`]: timeout, connection failure, transport failure.
pub fn post_delivery(
    url: &str,
    body: &[u8],
    signature: &str,
    delivery_id: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<HttpAnswer, ProbeError> {
    let client = client_with(connect_timeout.min(timeout), timeout)
        .map_err(|e| ProbeError::CouldNotRun(format!("building the HTTP client: {e:#}")))?;
    let shown = redacted(url);
    let resp = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Plane-Event", "issue")
        .header("X-Plane-Delivery", delivery_id)
        .header("X-Plane-Signature", signature)
        .body(body.to_vec())
        .send()
        .map_err(|e| crate::adapters::staging_probes::probe_error(&e, &shown))?;
    let status = resp.status().as_u16();
    let mut bytes = Vec::new();
    resp.take(64 * 1024)
        .read_to_end(&mut bytes)
        .map_err(|e| ProbeError::Transport(format!("reading the answer of {shown}: {e}")))?;
    Ok(HttpAnswer {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

fn redacted(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| crate::adapters::http::redact_url(&u))
        .unwrap_or_else(|_| "the webhook URL".into())
}

/// Reads the jobs of the task of `work_item_id` from staging's database, opened
/// read-only (nothing is created, migrated or written). `Ok(None)`: no such task yet.
///
/// # Errors
/// When the file does not exist, cannot be opened, or is not an `orch` database.
pub fn staging_jobs_from_db(path: &Path, work_item_id: &str) -> Result<Option<Vec<StagingJob>>> {
    let shown = crate::adapters::db::display_location(path);
    let conn = crate::adapters::db::open_read_only(path)
        .with_context(|| format!("opening staging database {shown} read-only"))?;
    let read = || -> crate::adapters::db::sql::Result<Option<Vec<StagingJob>>> {
        let task: Option<i64> = conn
            .query_row(
                "SELECT id FROM tasks WHERE lower(work_item_id) = lower(?1)",
                [work_item_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(task) = task else { return Ok(None) };
        let mut stmt =
            conn.prepare("SELECT id, agent, status FROM jobs WHERE task_id = ?1 ORDER BY id")?;
        let jobs = stmt
            .query_map([task], |r| {
                Ok(StagingJob {
                    id: r.get(0)?,
                    agent: r.get(1)?,
                    status: r.get(2)?,
                })
            })?
            .collect::<crate::adapters::db::sql::Result<Vec<_>>>()?;
        Ok(Some(jobs))
    };
    read().with_context(|| format!("reading staging database {shown}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let a = random_uuid().unwrap();
        let b = random_uuid().unwrap();
        assert_ne!(a, b);
        assert!(crate::core::intake::is_uuid(&a), "{a}");
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn the_staging_database_is_read_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.db");
        let e = staging_jobs_from_db(&missing, "x").unwrap_err();
        assert!(format!("{e:#}").contains("does not exist"), "{e:#}");
        assert!(!missing.exists());
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, "").unwrap();
        assert!(staging_jobs_from_db(&junk, "x").is_err());
    }
}
