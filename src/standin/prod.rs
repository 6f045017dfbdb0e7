//! A production stand-in for post-deploy: `GET /health` answers the status set at
//! runtime, `GET /metrics` serves a Prometheus counter `http_requests_total{code=...}`
//! of every request it answered (plus injected traffic), and `/_control/...` switches it
//! (for the walkthrough, which can only speak HTTP to it):
//! `POST /_control/health?status=503`, `POST /_control/traffic?code=500&count=20`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::standin::server::{Recorded, Reply, Server};

#[derive(Debug)]
struct State {
    health: u16,
    counts: BTreeMap<u16, u64>,
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
            _ => Reply::empty(404),
        };
    }
    let reply = match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/health") => {
            let code = s.health;
            let body = if code < 300 { "ok\n" } else { "unhealthy\n" };
            return Reply::raw(code, "text/plain", body);
        }
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
}
