//! The one HTTP client builder: connect and whole-request timeouts on every call, a
//! `User-Agent`, rustls, no redirects followed for API calls. Remote clients (Plane,
//! Gitea, Telegram, probes) build on [`client`] and classify failures with [`classify`].

use std::time::Duration;

use crate::config::Settings;

/// The `User-Agent` every request sends.
pub const USER_AGENT: &str = concat!("orch/", env!("CARGO_PKG_VERSION"));

/// Whether a failed call may succeed if tried again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Timeouts, connection failures and 5xx: try again later.
    #[error("{0}")]
    Retryable(String),
    /// 429: the server asked us to wait this long (when it said).
    #[error("rate limited{}: {message}", .retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// What was asked.
        message: String,
    },
    /// Other 4xx, or an answer that cannot be understood: trying again will not help.
    #[error("{0}")]
    Fatal(String),
}

/// Builds a blocking client with the configured timeouts.
///
/// # Errors
/// When the TLS backend cannot be initialised.
pub fn client(settings: &Settings) -> anyhow::Result<reqwest::blocking::Client> {
    client_with(settings.http_connect_timeout_s.0, settings.http_timeout_s.0)
}

/// Builds a blocking client with explicit timeouts (probes with their own deadline).
///
/// # Errors
/// When the TLS backend cannot be initialised.
pub fn client_with(
    connect: Duration,
    whole: Duration,
) -> anyhow::Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(connect)
        .timeout(whole)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// The largest answer body any remote call reads (32 MiB): past it the answer is
/// refused, never held in memory whole. A real page of 100 work items or 50 pull
/// requests, a Telegram answer or a metrics page is well under 1 MiB.
pub const MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;

/// Why an answer's body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the cap (a declared `Content-Length` is refused before reading).
    TooLarge(u64),
    /// The transport failed while reading (`true`: it timed out).
    Read(String, bool),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(cap) => {
                write!(f, "the answer is larger than {cap} bytes; refused unread")
            }
            BodyError::Read(m, true) => write!(f, "timed out: {m}"),
            BodyError::Read(m, false) => write!(f, "reading the answer failed: {m}"),
        }
    }
}

/// Reads `resp`'s body, at most `cap` bytes.
///
/// # Errors
/// [`BodyError::TooLarge`] past the cap, [`BodyError::Read`] when reading fails.
pub fn read_body(resp: reqwest::blocking::Response, cap: u64) -> Result<Vec<u8>, BodyError> {
    use std::io::Read;
    match resp.content_length() {
        Some(n) if n > cap => return Err(BodyError::TooLarge(cap)),
        // A declared length within the cap (the transport reads no more than it):
        // the whole body in one hand-over from the client's runtime thread, not one
        // per chunk of a few KiB (a Plane page of 100 work items is ~80 KiB).
        Some(_) => {
            return resp.bytes().map(Vec::from).map_err(|e| {
                let m = e.to_string();
                let timed_out = e.is_timeout() || m.to_ascii_lowercase().contains("timed out");
                BodyError::Read(m, timed_out)
            })
        }
        None => {}
    }
    let mut bytes = Vec::new();
    resp.take(cap + 1).read_to_end(&mut bytes).map_err(|e| {
        let m = e.to_string();
        let timed_out = m.to_ascii_lowercase().contains("timed out");
        BodyError::Read(m, timed_out)
    })?;
    if bytes.len() as u64 > cap {
        return Err(BodyError::TooLarge(cap));
    }
    Ok(bytes)
}

/// Reads `resp`'s body as text (lossy UTF-8), at most [`MAX_BODY_BYTES`].
///
/// # Errors
/// As [`read_body`].
pub fn read_text(resp: reqwest::blocking::Response) -> Result<String, BodyError> {
    read_body(resp, MAX_BODY_BYTES).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Classifies a transport error (no HTTP answer).
pub fn classify(err: &reqwest::Error) -> HttpError {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let url = err
        .url()
        .map(|u| format!(" {}", redact_url(u)))
        .unwrap_or_default();
    HttpError::Retryable(format!("{what}{url}: {}", root_cause(err)))
}

/// Classifies an HTTP status that is not a success, with a short body excerpt.
pub fn classify_status(
    status: u16,
    retry_after: Option<&str>,
    what: &str,
    body: &str,
) -> HttpError {
    let excerpt: String = body.chars().take(200).collect();
    let excerpt = excerpt.trim();
    let message = if excerpt.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status}: {excerpt}")
    };
    match status {
        429 => HttpError::RateLimited {
            retry_after: retry_after.and_then(parse_retry_after),
            message,
        },
        500..=599 => HttpError::Retryable(message),
        _ => HttpError::Fatal(message),
    }
}

/// Parses `Retry-After` in seconds (the HTTP-date form is treated as absent).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Returns the URL without query string or user info (tokens never reach logs).
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

fn root_cause(err: &dyn std::error::Error) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(
            classify_status(500, None, "x", ""),
            HttpError::Retryable(_)
        ));
        assert!(matches!(
            classify_status(503, None, "x", ""),
            HttpError::Retryable(_)
        ));
        assert!(matches!(
            classify_status(404, None, "x", ""),
            HttpError::Fatal(_)
        ));
        assert!(matches!(
            classify_status(401, None, "x", ""),
            HttpError::Fatal(_)
        ));
        assert_eq!(
            classify_status(429, Some("7"), "x", ""),
            HttpError::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
                message: "x: HTTP 429".into()
            }
        );
        assert!(matches!(
            classify_status(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), "x", ""),
            HttpError::RateLimited {
                retry_after: None,
                ..
            }
        ));
    }

    /// Serves one answer on loopback: `head` then `body` in 100-byte chunks (no
    /// `Content-Length`, so only the cap while reading can stop it).
    fn serve_chunked(body_len: usize) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            for _ in 0..body_len / 100 {
                let _ = s.write_all(format!("64\r\n{}\r\n", "x".repeat(100)).as_bytes());
            }
            let _ = s.write_all(b"0\r\n\r\n");
        });
        url
    }

    #[test]
    fn a_streamed_body_is_read_up_to_the_cap_and_refused_past_it() {
        let client = client_with(Duration::from_secs(5), Duration::from_secs(5)).unwrap();
        let at_cap = client.get(serve_chunked(1000)).send().unwrap();
        assert_eq!(read_body(at_cap, 1000).unwrap().len(), 1000);
        let past = client.get(serve_chunked(1100)).send().unwrap();
        let err = read_body(past, 1000).unwrap_err();
        assert!(matches!(err, BodyError::TooLarge(1000)), "{err}");
        assert!(err.to_string().contains("larger than 1000 bytes"));
    }

    #[test]
    fn urls_lose_their_secrets() {
        let u = reqwest::Url::parse("http://user:pw@127.0.0.1:9/api?token=abc").unwrap();
        assert_eq!(redact_url(&u), "http://127.0.0.1:9/api");
    }
}
