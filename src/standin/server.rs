//! A scripted loopback HTTP server: binds `127.0.0.1:0`, answers every request with a
//! handler (the stand-in's model of the real service) unless a scripted reply matches
//! first, and records every request so tests can count the calls a pass made.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The query string without `?` (empty when none).
    pub query: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// Returns a header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Returns a query parameter's value.
    pub fn param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// Parses the body as JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A reply the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Wait this long before answering (a slow server; the client's timeout fires).
    pub delay: Option<Duration>,
    /// Send no answer at all: the client sees its read time out (a lost answer).
    pub no_answer: bool,
    /// Hold the answer until the test opens this gate (see [`Reply::held`]).
    pub gate: Option<Gate>,
}

/// A latch a test opens to let a held answer go (see [`Reply::held`]).
///
/// Unlike a delay, it holds the answer for exactly as long as the test needs, so a
/// test can look at what the client did between its request and the answer without
/// racing a timer.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens the gate: every answer held by it goes, and later ones are not held.
    pub fn open(&self) {
        let (lock, cvar) = &*self.0;
        *lock.lock().expect("gate lock") = true;
        cvar.notify_all();
    }

    /// Waits for the gate to open; a test that fails before opening it lets the
    /// answer go after a minute (a failsafe, so the server can still stop).
    fn wait(&self) {
        let (lock, cvar) = &*self.0;
        let open = lock.lock().expect("gate lock");
        let _ = cvar
            .wait_timeout_while(open, Duration::from_secs(60), |open| !*open)
            .expect("gate lock");
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Gate) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Gate {}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(value).expect("JSON values serialise"),
            delay: None,
            no_answer: false,
            gate: None,
        }
    }

    /// A raw reply with a content type.
    pub fn raw(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
            delay: None,
            no_answer: false,
            gate: None,
        }
    }

    /// An empty reply.
    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: vec![],
            delay: None,
            no_answer: false,
            gate: None,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Delays the answer.
    pub fn delayed(mut self, d: Duration) -> Reply {
        self.delay = Some(d);
        self
    }

    /// Holds the answer until `gate` is opened.
    pub fn held(mut self, gate: &Gate) -> Reply {
        self.gate = Some(gate.clone());
        self
    }

    /// Sends no answer.
    pub fn unanswered(mut self) -> Reply {
        self.no_answer = true;
        self
    }
}

/// What a stand-in does with a request.
pub type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

struct Script {
    method: Option<String>,
    path_prefix: String,
    reply: Reply,
    times: usize,
    /// Run the handler first (its effects happen), then send the scripted reply.
    after_handler: bool,
    /// Send the handler's own answer, held by the scripted reply's gate ([`Server::hold`]).
    handler_answer: bool,
}

/// A running stand-in server; stops when dropped.
pub struct Server {
    url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    scripts: Arc<Mutex<Vec<Script>>>,
    events: Mutex<Receiver<Recorded>>,
    arrivals: Mutex<Receiver<Recorded>>,
    stop: Arc<AtomicBool>,
    inner: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server on `127.0.0.1:0` answering with `handler`.
    ///
    /// # Panics
    /// When no loopback port can be bound (the test cannot run at all).
    pub fn start(handler: Arc<Handler>) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        // Answers leave in more than one write (headers, then body). With Nagle on, the
        // second write waits for the client's delayed ACK: 40 ms per request on a body
        // of a few KiB. Accepted sockets inherit TCP_NODELAY from the listener on Linux.
        rustix::net::sockopt::set_tcp_nodelay(&listener, true).expect("TCP_NODELAY");
        let inner =
            Arc::new(tiny_http::Server::from_listener(listener, None).expect("serve 127.0.0.1"));
        let port = inner.server_addr().to_ip().expect("an IP listener").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let scripts: Arc<Mutex<Vec<Script>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = channel();
        let (arrived_tx, arrived_rx) = channel();
        let thread = {
            let (inner, requests, scripts, stop) = (
                inner.clone(),
                requests.clone(),
                scripts.clone(),
                stop.clone(),
            );
            let channels = Events {
                answered: tx,
                arrived: arrived_tx,
            };
            std::thread::spawn(move || {
                serve(&inner, &handler, &requests, &scripts, &stop, &channels);
            })
        };
        Server {
            url: format!("http://127.0.0.1:{port}"),
            requests,
            scripts,
            events: Mutex::new(rx),
            arrivals: Mutex::new(arrived_rx),
            stop,
            inner,
            thread: Some(thread),
        }
    }

    /// Returns the base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// Counts requests with this method (any when `None`) whose path starts with `prefix`.
    pub fn count(&self, method: Option<&str>, prefix: &str) -> usize {
        self.requests
            .lock()
            .expect("requests lock")
            .iter()
            .filter(|r| method.is_none_or(|m| r.method == m) && r.path.starts_with(prefix))
            .count()
    }

    /// Waits for the next request to have been answered (a failsafe deadline, not a timing).
    pub fn next_request(&self, deadline: Duration) -> Option<Recorded> {
        self.events
            .lock()
            .expect("events lock")
            .recv_timeout(deadline)
            .ok()
    }

    /// Waits for the next request to have arrived, before its answer (a failsafe
    /// deadline, not a timing). With [`Reply::held`] the test looks at the client
    /// mid-call.
    pub fn next_arrival(&self, deadline: Duration) -> Option<Recorded> {
        self.arrivals
            .lock()
            .expect("arrivals lock")
            .recv_timeout(deadline)
            .ok()
    }

    /// Answers the next `times` matching requests with `reply` instead of the handler.
    pub fn script(&self, method: Option<&str>, path_prefix: &str, reply: Reply, times: usize) {
        self.push(method, path_prefix, reply, times, false);
    }

    /// Lets the handler act on the next `times` matching requests, then answers with
    /// `reply` instead of the handler's answer (e.g. a merge that happens but whose
    /// answer is lost).
    pub fn script_after(
        &self,
        method: Option<&str>,
        path_prefix: &str,
        reply: Reply,
        times: usize,
    ) {
        self.push(method, path_prefix, reply, times, true);
    }

    /// Holds the handler's own answer to the next `times` matching requests until
    /// `gate` opens (the client waits mid-call, e.g. a pass paused mid-way; the server
    /// answers nothing else meanwhile).
    pub fn hold(&self, method: Option<&str>, path_prefix: &str, gate: &Gate, times: usize) {
        self.scripts.lock().expect("scripts lock").push(Script {
            method: method.map(str::to_string),
            path_prefix: path_prefix.to_string(),
            reply: Reply::empty(0).held(gate),
            times,
            after_handler: false,
            handler_answer: true,
        });
    }

    fn push(
        &self,
        method: Option<&str>,
        path_prefix: &str,
        reply: Reply,
        times: usize,
        after_handler: bool,
    ) {
        self.scripts.lock().expect("scripts lock").push(Script {
            method: method.map(str::to_string),
            path_prefix: path_prefix.to_string(),
            reply,
            times,
            after_handler,
            handler_answer: false,
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.inner.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where the serving thread announces requests: on arrival, and once answered.
struct Events {
    answered: Sender<Recorded>,
    arrived: Sender<Recorded>,
}

fn serve(
    server: &tiny_http::Server,
    handler: &Arc<Handler>,
    requests: &Mutex<Vec<Recorded>>,
    scripts: &Mutex<Vec<Script>>,
    stop: &AtomicBool,
    events: &Events,
) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut req) = server.recv() else { break };
        let mut body = Vec::new();
        let _ = req.as_reader().read_to_end(&mut body);
        let (path, query) = match req.url().split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (req.url().to_string(), String::new()),
        };
        let rec = Recorded {
            method: req.method().as_str().to_ascii_uppercase(),
            path,
            query,
            headers: req
                .headers()
                .iter()
                .map(|h| {
                    (
                        h.field.as_str().as_str().to_ascii_lowercase(),
                        h.value.as_str().to_string(),
                    )
                })
                .collect(),
            body,
        };
        requests.lock().expect("requests lock").push(rec.clone());
        let scripted = {
            let mut scripts = scripts.lock().expect("scripts lock");
            let pos = scripts.iter().position(|s| {
                s.times > 0
                    && s.method.as_ref().is_none_or(|m| *m == rec.method)
                    && rec.path.starts_with(&s.path_prefix)
            });
            pos.map(|i| {
                scripts[i].times -= 1;
                let s = &scripts[i];
                (s.reply.clone(), s.after_handler, s.handler_answer)
            })
        };
        let reply = match scripted {
            Some((held, _, true)) => Reply {
                gate: held.gate,
                ..handler(&rec)
            },
            Some((reply, true, _)) => {
                let _ = handler(&rec);
                reply
            }
            Some((reply, false, _)) => reply,
            None => handler(&rec),
        };
        let _ = events.arrived.send(rec.clone());
        if let Some(gate) = &reply.gate {
            gate.wait();
        }
        if let Some(d) = reply.delay {
            std::thread::sleep(d);
        }
        if reply.no_answer {
            // Take the writer and write nothing: the client's read times out.
            let mut w = req.into_writer();
            let _ = w.flush();
            std::mem::forget(w);
            let _ = events.answered.send(rec);
            continue;
        }
        // With its length, never chunked (tiny_http chunks bodies over 32 KiB by
        // default): a JSON API answers with `Content-Length`, and the client reads it
        // in one piece.
        let mut response = tiny_http::Response::from_data(reply.body)
            .with_status_code(reply.status)
            .with_chunked_threshold(usize::MAX);
        for (k, v) in reply.headers {
            if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                response.add_header(h);
            }
        }
        let _ = req.respond(response);
        // Announced once answered, so a test that reacts to a request (changes the
        // model) never races the answer to that same request.
        let _ = events.answered.send(rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_records_and_follows_scripts() {
        let s = Server::start(Arc::new(|r: &Recorded| {
            Reply::json(200, &serde_json::json!({"path": r.path}))
        }));
        let client = reqwest::blocking::Client::new();
        let get = |p: &str| client.get(format!("{}{p}", s.url())).send().unwrap();
        assert_eq!(get("/a?x=1").status(), 200);
        s.script(Some("GET"), "/a", Reply::empty(503), 1);
        assert_eq!(get("/a").status(), 503);
        assert_eq!(get("/a").status(), 200);
        assert_eq!(s.count(Some("GET"), "/a"), 3);
        assert_eq!(s.requests()[0].param("x").as_deref(), Some("1"));
        assert_eq!(s.next_request(Duration::from_secs(5)).unwrap().path, "/a");
    }
}
