//! The request plumbing the Plane and Gitea clients share: URL building with encoded
//! path segments, sending with failure classification, one retry for reads, and
//! lenient JSON parsing that turns a wrong-shaped answer into [`HttpError::Fatal`].
//!
//! Policy lives here so both clients behave alike: a GET is retried once when the
//! failure is [`HttpError::Retryable`] (timeout, connect error, 5xx); a write (POST,
//! PATCH) is never retried here, because a lost answer may hide a write that happened.
//! A 429 is never retried here either: the caller decides whether to wait `Retry-After`.

use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::HeaderMap;
use url::Url;

use crate::adapters::http::{
    classify, classify_status, read_body, BodyError, HttpError, MAX_BODY_BYTES,
};

/// An HTTP answer read in full.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl Answer {
    /// Returns a header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Turns a status outside `ok` into its [`HttpError`] class.
    pub fn expect(self, ok: &[u16], what: &str) -> Result<Answer, HttpError> {
        if ok.contains(&self.status) {
            Ok(self)
        } else {
            Err(self.error(what))
        }
    }

    /// Classifies this answer as a failure of `what`.
    pub fn error(&self, what: &str) -> HttpError {
        classify_status(self.status, self.header("retry-after"), what, &self.body)
    }

    /// Parses the body as `T`; a non-JSON or wrong-shaped body is fatal, never a panic.
    pub fn parse<'a, T: serde::Deserialize<'a>>(&'a self, what: &str) -> Result<T, HttpError> {
        serde_json::from_str(&self.body).map_err(|e| {
            let excerpt: String = self.body.chars().take(120).collect();
            HttpError::Fatal(format!(
                "{what}: unexpected answer (HTTP {}): {e}: {}",
                self.status,
                excerpt.trim()
            ))
        })
    }
}

/// Builds `base` + the path segments (each percent-encoded, `/` included), with a
/// trailing slash when `trailing_slash` is set.
pub(crate) fn url(base: &Url, segments: &[&str], trailing_slash: bool) -> Url {
    let mut u = base.clone();
    {
        let mut path = u
            .path_segments_mut()
            .expect("http(s) base URLs can have path segments");
        path.pop_if_empty();
        for s in segments {
            path.push(s);
        }
        if trailing_slash {
            path.push("");
        }
    }
    u
}

/// Bounds `req` by `timeout` instead of its client's timeout, when given.
pub(crate) fn timed(req: RequestBuilder, timeout: Option<Duration>) -> RequestBuilder {
    match timeout {
        Some(t) => req.timeout(t),
        None => req,
    }
}

/// The per-call timeout of a REST client that has a `timeout: Option<Duration>` field:
/// `with_timeout` (a copy, sharing the connections, whose every call is bounded by
/// `whole` instead of the configured timeout: for a poll whose calls must end by its
/// deadline), `with_bounds` (the pass's page cap and deadline), `timed` (a request
/// bounded by the timeout, never past the pass deadline) and `get` (an authenticated
/// JSON read, retried once; not sent past the deadline); the client defines
/// `authorised` (its auth header) and a `bounds` field. One definition for both clients.
macro_rules! per_call_timeout {
    ($client:ty) => {
        /// Returns this client (sharing its connections) with every call bounded by
        /// `whole` instead of the configured timeout: for a poll whose calls must end
        /// by its deadline.
        #[must_use]
        pub fn with_timeout(&self, whole: std::time::Duration) -> $client {
            let mut copy = self.clone();
            copy.timeout = Some(whole);
            copy
        }

        fn timed(
            &self,
            req: reqwest::blocking::RequestBuilder,
        ) -> reqwest::blocking::RequestBuilder {
            crate::adapters::rest::timed(req, self.bounds.call_timeout(self.timeout))
        }

        /// Gives this client (and its clones) the pass's bounds: the page cap of its
        /// listings and the deadline no call outlives.
        #[must_use]
        pub fn with_bounds(
            mut self,
            bounds: std::sync::Arc<crate::adapters::bounds::PassBounds>,
        ) -> $client {
            self.bounds = bounds;
            self
        }

        /// A JSON GET of `url` with `query`, authenticated (`authorised`), bounded by
        /// the per-call timeout and retried once on a retryable failure
        /// ([`crate::adapters::rest::get`]); any status outside `ok` is an error.
        fn get(
            &self,
            url: &url::Url,
            query: &[(&str, &str)],
            ok: &[u16],
            what: &str,
        ) -> Result<crate::adapters::rest::Answer, crate::adapters::http::HttpError> {
            if self.bounds.stop_for_deadline("calling remote services") {
                return Err(crate::adapters::http::HttpError::Retryable(format!(
                    "{what}: not sent: the pass deadline has passed"
                )));
            }
            crate::adapters::rest::get(
                &self.http,
                |c| {
                    self.authorised(self.timed(c.get(url.clone())).query(query))
                        .header("Accept", "application/json")
                },
                ok,
                what,
            )
        }
    };
}
pub(crate) use per_call_timeout;

/// Sends one request and reads the whole answer, at most [`MAX_BODY_BYTES`]; transport
/// failures (no answer, a timeout while reading the body) are [`HttpError::Retryable`],
/// a body past the cap is [`HttpError::Fatal`] (asking again gets the same answer).
pub(crate) fn send(req: RequestBuilder, what: &str) -> Result<Answer, HttpError> {
    send_capped(req, what, MAX_BODY_BYTES)
}

fn send_capped(req: RequestBuilder, what: &str, cap: u64) -> Result<Answer, HttpError> {
    let resp = req.send().map_err(|e| named(&classify(&e), what))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = read_body(resp, cap).map_err(|e| match e {
        BodyError::TooLarge(_) => HttpError::Fatal(format!("{what}: (HTTP {status}) {e}")),
        BodyError::Read(..) => HttpError::Retryable(format!("{what}: {e}")),
    })?;
    Ok(Answer {
        status,
        headers,
        // Valid UTF-8 (every JSON answer) is taken as it is, without a copy.
        body: String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    })
}

/// Sends a GET built by `build`, expecting one of `ok`; retries once when the first
/// attempt fails with a [`HttpError::Retryable`] class.
pub(crate) fn get(
    client: &Client,
    build: impl Fn(&Client) -> RequestBuilder,
    ok: &[u16],
    what: &str,
) -> Result<Answer, HttpError> {
    let attempt = || send(build(client), what).and_then(|a| a.expect(ok, what));
    match attempt() {
        Err(HttpError::Retryable(first)) => {
            log::debug!("{what}: retrying once after: {first}");
            attempt()
        }
        other => other,
    }
}

/// Prefixes a transport error's message with the call it belongs to.
fn named(err: &HttpError, what: &str) -> HttpError {
    match err {
        HttpError::Retryable(m) => HttpError::Retryable(format!("{what}: {m}")),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded_and_the_slash_kept_when_asked() {
        let base = Url::parse("http://127.0.0.1:9/plane/").unwrap();
        let u = url(&base, &["api", "v1", "a/b", "x y"], true);
        assert_eq!(u.as_str(), "http://127.0.0.1:9/plane/api/v1/a%2Fb/x%20y/");
        let base = Url::parse("http://127.0.0.1:9").unwrap();
        assert_eq!(
            url(&base, &["api", "v1"], false).as_str(),
            "http://127.0.0.1:9/api/v1"
        );
    }
}
