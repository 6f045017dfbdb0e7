//! `orch webhook-handle`: takes one Plane webhook delivery, stores it, answers, acts.
//!
//! Order matters (SPEC §4): verify the raw bytes, store the row (committed), answer 200,
//! then act. Plane counts any answer as delivered and retries only on network errors,
//! so when the row cannot be stored nothing is answered at all (the sender sees a
//! network error and retries). A failure while acting leaves the row `pending` with
//! its error; [`process_delivery`] is what `reconcile` calls to replay it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use crate::adapters::db::{Db, NewDelivery, Stored, PENDING};
use crate::adapters::webhook_server::{self, Deadlines, Head, Rejection, MAX_BODY};
use crate::core::intake;
use crate::exit::ExitStatus;
use crate::ops::delivery::process_delivery;
use crate::ops::pass::{PassContext, PassReport};

/// Take one Plane webhook delivery: verify, store, answer, act
///
/// `--stdio` reads one HTTP/1.1 request on stdin and writes the response on stdout
/// (what `orch-webhook.socket` with Accept=yes hands over); `--body FILE --header
/// 'Name: value'...` replays a delivery by hand with the same checks and storage and
/// prints the outcome as one line. Needs ORCH_PLANE_WEBHOOK_SECRET. Statuses: 404 not
/// ORCH_WEBHOOK_PATH, 405 not POST, 413 body over 1 MiB, 501 a transfer coding other
/// than chunked, 401 bad or missing X-Plane-Signature, 400 malformed, 422
/// not a Plane delivery, 408 too slow, 200 stored (or a duplicate). Exit codes: 0
/// stored and acted on, or a duplicate; 1 input rejected; 2 configuration or internal
/// error, including a stored delivery whose action failed (it stays pending for
/// reconcile).
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["stdio", "body"])))]
pub struct WebhookHandleArgs {
    /// Read one HTTP request on stdin, answer on stdout (systemd socket, Accept=yes)
    #[arg(long)]
    pub stdio: bool,
    /// Replay the delivery whose raw body is in FILE
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// A request header for --body, e.g. 'X-Plane-Signature: 3f1a...' (repeatable)
    #[arg(long = "header", value_name = "NAME: VALUE", requires = "body")]
    pub headers: Vec<String>,
}

/// What handling one delivery ended with, before acting. A delivery that reached the
/// database carries the delivery's one connection, which acting uses too.
enum Handled {
    /// Refused (before the database is opened): the status and why.
    Rejected(Rejection),
    /// Stored before (a retry or replay): the earlier row.
    Duplicate {
        db: Db,
        id: i64,
        first_delivery: Option<String>,
        pending: bool,
    },
    /// Stored now.
    Stored { db: Db, id: i64 },
}

/// Runs `webhook-handle`.
///
/// # Errors
/// No secret configured (before reading anything), a database that cannot be used, or
/// a failure while acting on a stored delivery.
pub fn run(args: &WebhookHandleArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let Some(secret) = ctx.config.settings.plane_webhook_secret.as_ref() else {
        bail!(
            "ORCH_PLANE_WEBHOOK_SECRET is not set: refusing to take unsigned deliveries (set it to the webhook's secret, plane_wh_...)"
        );
    };
    let started = Instant::now();
    if args.stdio {
        run_stdio(ctx, secret.expose(), started)
    } else {
        let path = args.body.as_ref().expect("clap requires --stdio or --body");
        run_replay(ctx, secret.expose(), path, &args.headers, started)
    }
}

fn run_stdio(ctx: &PassContext, secret: &str, started: Instant) -> Result<ExitStatus> {
    let mut out = std::io::stdout().lock();
    let settings = &ctx.config.settings;
    let deadlines = Deadlines {
        head: settings.webhook_header_timeout_s.0,
        whole: settings.webhook_read_timeout_s.0,
    };
    let path = settings.webhook_path.0.as_str();
    let read = webhook_server::read_request(std::io::stdin(), deadlines, |head| {
        check_head(head, path)?;
        if head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            // curl waits for this before sending bodies over 1 KiB.
            let _ = out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            let _ = out.flush();
        }
        Ok(())
    });
    let request = match read {
        Ok(r) => r,
        Err(rejection) => {
            let delivery = "-";
            let done = answer_rejection(&mut out, &rejection, delivery, started);
            webhook_server::close_connection(&out);
            return done;
        }
    };
    let delivery_id = request.head.header("x-plane-delivery").map(str::to_string);
    let shown_id = delivery_id.as_deref().unwrap_or("-");
    let handled = handle(
        ctx,
        secret,
        &request.body,
        request.head.header("x-plane-signature"),
        delivery_id.as_deref(),
    )?;
    match handled {
        Handled::Rejected(r) => {
            let done = answer_rejection(&mut out, &r, shown_id, started);
            webhook_server::close_connection(&out);
            done
        }
        Handled::Duplicate {
            id, first_delivery, ..
        } => {
            webhook_server::write_response(
                &mut out,
                200,
                &[],
                &json!({"status": "duplicate", "delivery": id}),
            )
            .context("answering the sender")?;
            webhook_server::close_connection(&out);
            log_duplicate(id, first_delivery.as_deref(), shown_id);
            summary(200, "duplicate", shown_id, started);
            Ok(ExitStatus::Success)
        }
        Handled::Stored { db, id } => {
            // The row is committed (and synced); answer before acting so the sender
            // never waits on Gitea or Plane, and end the connection right after the
            // answer: stdin and stdout are the socket, so without the shutdown the
            // sender would see the end only when acting ends and the process exits.
            // A sender that has gone away changes nothing: the row stays.
            if let Err(e) = webhook_server::write_response(
                &mut out,
                200,
                &[],
                &json!({"status": "stored", "delivery": id}),
            ) {
                log::warn!(
                    "webhook-handle: could not answer the sender (delivery {id} is stored): {e}"
                );
            }
            webhook_server::close_connection(&out);
            drop(out);
            act_and_report(ctx, db, id, shown_id, started, false)
        }
    }
}

fn run_replay(
    ctx: &PassContext,
    secret: &str,
    path: &PathBuf,
    raw_headers: &[String],
    started: Instant,
) -> Result<ExitStatus> {
    let mut headers = Vec::new();
    for h in raw_headers {
        let Some((name, value)) = h.split_once(':') else {
            bail!("--header {h:?} is not 'Name: value'");
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("--header {h:?} has no valid header name");
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let head = Head {
        method: "POST".into(),
        path: ctx.config.settings.webhook_path.0.clone(),
        headers,
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut body = Vec::new();
    file.take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .with_context(|| format!("reading {}", path.display()))?;
    let delivery_id = head.header("x-plane-delivery").map(str::to_string);
    let shown_id = delivery_id.as_deref().unwrap_or("-");
    let handled = if body.len() > MAX_BODY {
        Handled::Rejected(Rejection::new(
            413,
            format!("body larger than {MAX_BODY} bytes"),
        ))
    } else {
        handle(
            ctx,
            secret,
            &body,
            head.header("x-plane-signature"),
            delivery_id.as_deref(),
        )?
    };
    match handled {
        Handled::Rejected(r) => {
            println!("rejected {}: {}", r.status, r.reason);
            log::warn!(
                "webhook-handle: rejected {} delivery {shown_id}: {}",
                r.status,
                r.reason
            );
            summary(r.status, "rejected", shown_id, started);
            Ok(ExitStatus::No)
        }
        Handled::Duplicate {
            db,
            id,
            first_delivery,
            pending: true,
        } => {
            // An operator replaying a delivery that is still pending wants it finished:
            // acting is idempotent, so this is safe even while reconcile replays it too.
            log_duplicate(id, first_delivery.as_deref(), shown_id);
            log::info!("webhook-handle: delivery {id} is still pending: acting on it again");
            act_and_report(ctx, db, id, shown_id, started, true)
        }
        Handled::Duplicate {
            id, first_delivery, ..
        } => {
            println!(
                "duplicate: the same body is delivery {id} (first delivery id {}); nothing done",
                first_delivery.as_deref().unwrap_or("-")
            );
            log_duplicate(id, first_delivery.as_deref(), shown_id);
            summary(200, "duplicate", shown_id, started);
            Ok(ExitStatus::Success)
        }
        Handled::Stored { db, id } => act_and_report(ctx, db, id, shown_id, started, true),
    }
}

/// Refuses a request by its head alone, before its body is read: a path other than
/// `path` (its query, if any, is not compared), then a method other than POST, then
/// no signature.
fn check_head(head: &Head, path: &str) -> Result<(), Rejection> {
    let asked = head
        .path
        .split_once('?')
        .map_or(head.path.as_str(), |(p, _)| p);
    if asked != path {
        return Err(Rejection::new(
            404,
            format!("no receiver at {asked:?} (ORCH_WEBHOOK_PATH is {path:?})"),
        ));
    }
    if head.method != "POST" {
        return Err(Rejection::new(
            405,
            format!(
                "method {} not allowed: Plane delivers with POST",
                head.method
            ),
        ));
    }
    if head.header("x-plane-signature").is_none() {
        return Err(Rejection::new(401, "missing X-Plane-Signature"));
    }
    Ok(())
}

/// Verifies, parses and stores one delivery (the row is committed on return).
fn handle(
    ctx: &PassContext,
    secret: &str,
    body: &[u8],
    signature: Option<&str>,
    delivery_id: Option<&str>,
) -> Result<Handled> {
    if let Err(r) = intake::verify_signature(secret, body, signature) {
        return Ok(Handled::Rejected(Rejection::new(r.status, r.reason)));
    }
    let envelope = match intake::parse_envelope(body) {
        Ok(e) => e,
        Err(r) => return Ok(Handled::Rejected(Rejection::new(r.status, r.reason))),
    };
    let sha = intake::body_sha256(body);
    // The work item's time is remembered as soon as the row is stored, so that an
    // older delivery arriving later is stale even before this one is acted on.
    let update = envelope.seen_update("delivery");
    // The one connection of this delivery: `act_and_report` acts on it too. The row
    // must be on disk before the 200 (Plane never sends it again): this one commit
    // waits for fsync of the WAL; acting afterwards commits as every pass does.
    let mut db = open_for_delivery(ctx)?;
    let stored = db
        .insert_delivery_durably(&NewDelivery {
            body_sha256: &sha,
            delivery_id,
            event: &envelope.event,
            body,
            received_at: ctx.now_secs(),
            update: update.as_ref(),
        })
        .context("storing the delivery")?;
    Ok(match stored {
        Stored::New(id) => {
            log::info!(
                "webhook-handle: stored delivery {id} ({} {}, delivery id {})",
                envelope.event,
                envelope.action,
                delivery_id.unwrap_or("-")
            );
            Handled::Stored { db, id }
        }
        Stored::Duplicate {
            id,
            delivery_id,
            outcome,
        } => Handled::Duplicate {
            db,
            id,
            first_delivery: delivery_id,
            pending: outcome == PENDING,
        },
    })
}

/// Opens the delivery's one connection. It leaves the WAL to the next pass instead of
/// checkpointing it on close (a checkpoint costs two fsyncs and deleting the WAL a
/// directory fsync when the next delivery creates it again); SQLite still checkpoints
/// every 1,000 pages, and any other pass's close checkpoints as before.
fn open_for_delivery(ctx: &PassContext) -> Result<Db> {
    let db = ctx.open_db()?;
    db.leave_wal_on_close()?;
    Ok(db)
}

fn answer_rejection(
    out: &mut impl Write,
    r: &Rejection,
    delivery: &str,
    started: Instant,
) -> Result<ExitStatus> {
    let allow: &[(&str, &str)] = if r.status == 405 {
        &[("Allow", "POST")]
    } else {
        &[]
    };
    log::warn!(
        "webhook-handle: rejected {} delivery {delivery}: {}",
        r.status,
        r.reason
    );
    if let Err(e) =
        webhook_server::write_response(out, r.status, allow, &json!({"error": r.reason}))
    {
        log::warn!("webhook-handle: could not answer the sender: {e}");
    }
    summary(r.status, "rejected", delivery, started);
    Ok(ExitStatus::No)
}

fn log_duplicate(id: i64, first: Option<&str>, this: &str) {
    log::info!(
        "webhook-handle: duplicate of delivery {id} (first delivery id {}, this delivery id {this}): nothing done",
        first.unwrap_or("-")
    );
}

fn summary(status: u16, outcome: &str, delivery: &str, started: Instant) {
    let report = PassReport::new("webhook-handle", started.elapsed().as_millis())
        .with("status", status)
        .with("outcome", format!("{outcome:?}"))
        .with("delivery", delivery);
    log::info!("{report}");
}

fn act_and_report(
    ctx: &PassContext,
    mut db: Db,
    id: i64,
    delivery: &str,
    started: Instant,
    print: bool,
) -> Result<ExitStatus> {
    crate::crash::point("delivery-stored");
    match process_delivery(ctx, &mut db, id) {
        Ok(outcome) => {
            crate::crash::point("delivery-done");
            if print {
                println!("delivery {id} {outcome}");
            }
            log::info!("webhook-handle: delivery {id} {outcome}");
            summary(200, outcome.kind.as_str(), delivery, started);
            Ok(ExitStatus::Success)
        }
        Err(e) => {
            if print {
                println!("delivery {id} pending: {e:#}");
            }
            summary(200, PENDING, delivery, started);
            Err(e.context(format!(
                "acting on delivery {id} failed; it stays pending for reconcile"
            )))
        }
    }
}
