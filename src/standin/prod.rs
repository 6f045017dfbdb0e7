//! A staging or production stand-in: `GET /health` answers the status set at runtime,
//! `GET /metrics` serves a Prometheus counter `http_requests_total{code=...}` of every
//! request it answered (plus injected traffic), `GET /version` answers
//! `{"revision": SHA}` for the revision deployed last (404 before any deploy; what an
//! image-freshness check reads), and `/_control/...` switches it (for agents and the
//! walkthrough, which can only speak HTTP to it): `POST /_control/health?status=503`,
//! `POST /_control/traffic?code=500&count=20`, `POST /_control/deploy?revision=SHA`
//! (a deploy: 7 to 64 hex digits, else 400) and `POST /_control/rollback` (back to the
//! revision deployed before, which is taken to be healthy: `/health` answers 200 again;
//! 409 when there is none).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::standin::server::{Recorded, Reply, Server};

#[derive(Debug)]
struct State {
    health: u16,
    counts: BTreeMap<u16, u64>,
    /// Every revision deployed, oldest first; the last one runs.
    deploys: Vec<String>,
    /// How many rollbacks were asked for.
    rollbacks: usize,
}

/// A running production stand-in.
pub struct Prod {
    /// The server (its URL, its recorded requests).
    pub server: Server,
    state: Arc<Mutex<State>>,
}

impl Prod {
    /// Starts it healthy (`/health` answers 200).
    pub fn start() -> Prod {
        let state = Arc::new(Mutex::new(State {
            health: 200,
            counts: BTreeMap::new(),
            deploys: Vec::new(),
            rollbacks: 0,
        }));
        let s = state.clone();
        let server = Server::start(Arc::new(move |r: &Recorded| handle(&s, r)));
        Prod { server, state }
    }

    /// Sets the status `/health` answers from now on.
    pub fn set_health(&self, status: u16) {
        self.state.lock().expect("prod state").health = status;
    }

    /// Counts `count` more requests answered `code`.
    pub fn add_traffic(&self, code: u16, count: u64) {
        *self
            .state
            .lock()
            .expect("prod state")
            .counts
            .entry(code)
            .or_default() += count;
    }

    /// Deploys `revision` (as `POST /_control/deploy` does).
    pub fn deploy(&self, revision: &str) {
        self.state
            .lock()
            .expect("prod state")
            .deploys
            .push(revision.to_string());
    }

    /// Returns the status `/health` answers now.
    pub fn health(&self) -> u16 {
        self.state.lock().expect("prod state").health
    }

    /// Returns the revision running now (the last deployed), if any.
    pub fn revision(&self) -> Option<String> {
        self.state
            .lock()
            .expect("prod state")
            .deploys
            .last()
            .cloned()
    }

    /// Returns every revision deployed so far, oldest first (a rollback removes one).
    pub fn deploys(&self) -> Vec<String> {
        self.state.lock().expect("prod state").deploys.clone()
    }

    /// Returns how many rollbacks were asked for.
    pub fn rollbacks(&self) -> usize {
        self.state.lock().expect("prod state").rollbacks
    }

    /// Returns the base URL.
    pub fn url(&self) -> &str {
        self.server.url()
    }
}

fn handle(state: &Mutex<State>, r: &Recorded) -> Reply {
    let mut s = state.lock().expect("prod state");
    if let Some(what) = r.path.strip_prefix("/_control/") {
        if r.method != "POST" {
            return Reply::empty(405);
        }
        return match what {
            "health" => match r.param("status").and_then(|v| v.parse::<u16>().ok()) {
                Some(code) if (100..=599).contains(&code) => {
                    s.health = code;
                    Reply::raw(200, "text/plain", format!("health {code}\n"))
                }
                _ => Reply::raw(400, "text/plain", "status must be an HTTP status\n"),
            },
            "traffic" => {
                let code = r.param("code").and_then(|v| v.parse::<u16>().ok());
                let count = r.param("count").and_then(|v| v.parse::<u64>().ok());
                match (code, count) {
                    (Some(code), Some(count)) if (100..=599).contains(&code) => {
                        *s.counts.entry(code).or_default() += count;
                        Reply::raw(200, "text/plain", format!("traffic {code} +{count}\n"))
                    }
                    _ => Reply::raw(400, "text/plain", "code and count required\n"),
                }
            }
            "deploy" => match r.param("revision") {
                Some(rev) if is_revision(&rev) => {
                    s.deploys.push(rev.clone());
                    Reply::raw(200, "text/plain", format!("deployed {rev}\n"))
                }
                _ => Reply::raw(400, "text/plain", "revision must be 7 to 64 hex digits\n"),
            },
            "rollback" => {
                if s.deploys.len() < 2 {
                    return Reply::raw(409, "text/plain", "no earlier revision to roll back to\n");
                }
                s.deploys.pop();
                s.rollbacks += 1;
                s.health = 200;
                let rev = s.deploys.last().cloned().unwrap_or_default();
                Reply::raw(200, "text/plain", format!("rolled back to {rev}\n"))
            }
            _ => Reply::empty(404),
        };
    }
    let reply = match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/health") => {
            let code = s.health;
            let body = if code < 300 { "ok\n" } else { "unhealthy\n" };
            return Reply::raw(code, "text/plain", body);
        }
        ("GET", "/version") => match s.deploys.last() {
            Some(rev) => Reply::json(200, &serde_json::json!({"revision": rev})),
            None => Reply::raw(404, "text/plain", "nothing deployed\n"),
        },
        ("GET", "/metrics") => {
            let mut page = String::from(
                "# HELP http_requests_total Requests answered, by status code.\n# TYPE http_requests_total counter\n",
            );
            for (code, n) in &s.counts {
                page.push_str(&format!("http_requests_total{{code=\"{code}\"}} {n}\n"));
            }
            if s.counts.is_empty() {
                page.push_str("http_requests_total{code=\"200\"} 0\n");
            }
            return Reply::raw(200, "text/plain; version=0.0.4", page);
        }
        _ => Reply::empty(404),
    };
    *s.counts.entry(reply.status).or_default() += 1;
    reply
}

fn is_revision(rev: &str) -> bool {
    (7..=64).contains(&rev.len()) && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Starts it for `orch-standin prod` (no seed).
pub fn start_standin(_seed: Option<&str>) -> Server {
    let prod = Prod::start();
    // The walkthrough controls it over HTTP; the state lives in the handler.
    prod.server
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::post_deploy::parse_counters;

    #[test]
    fn health_switches_and_metrics_count() {
        let prod = Prod::start();
        let c = reqwest::blocking::Client::new();
        let get = |p: &str| c.get(format!("{}{p}", prod.url())).send().unwrap();
        assert_eq!(get("/health").status(), 200);
        prod.set_health(503);
        assert_eq!(get("/health").status(), 503);
        let post = |p: &str| c.post(format!("{}{p}", prod.url())).send().unwrap();
        assert_eq!(post("/_control/health?status=200").status(), 200);
        assert_eq!(post("/_control/health?status=abc").status(), 400);
        assert_eq!(post("/_control/traffic?code=500&count=8").status(), 200);
        prod.add_traffic(200, 10);
        assert_eq!(get("/nope").status(), 404);
        let page = get("/metrics").text().unwrap();
        let counters = parse_counters(&page, "http_requests_total").unwrap();
        assert_eq!((counters.total, counters.errors_5xx), (19.0, 8.0), "{page}");
    }

    #[test]
    fn deploys_are_recorded_reported_and_rolled_back() {
        let prod = Prod::start();
        let c = reqwest::blocking::Client::new();
        let get = |p: &str| c.get(format!("{}{p}", prod.url())).send().unwrap();
        let post = |p: &str| c.post(format!("{}{p}", prod.url())).send().unwrap();
        assert_eq!(get("/version").status(), 404, "nothing deployed yet");
        assert_eq!(
            post("/_control/rollback").status(),
            409,
            "nothing to go back to"
        );
        for bad in [
            "",
            "?revision=",
            "?revision=abc",
            "?revision=xyz1234",
            "?revision=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0",
        ] {
            assert_eq!(
                post(&format!("/_control/deploy{bad}")).status(),
                400,
                "{bad}"
            );
        }
        assert_eq!(get("/_control/deploy?revision=abcdef1").status(), 405);
        let (a, b) = ("a".repeat(40), "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(
            post(&format!("/_control/deploy?revision={a}")).status(),
            200
        );
        assert_eq!(
            post(&format!("/_control/deploy?revision={b}")).status(),
            200
        );
        let v: serde_json::Value = get("/version").json().unwrap();
        assert_eq!(v, serde_json::json!({"revision": b}));
        prod.set_health(503);
        assert_eq!(post("/_control/rollback").status(), 200);
        assert_eq!(prod.revision().as_deref(), Some(a.as_str()));
        assert_eq!(
            get("/health").status(),
            200,
            "the previous release is healthy"
        );
        assert_eq!((prod.deploys(), prod.rollbacks()), (vec![a.clone()], 1));
        assert_eq!(post("/_control/rollback").status(), 409);
    }
}
