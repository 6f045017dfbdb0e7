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

    #[test]
    fn urls_lose_their_secrets() {
        let u = reqwest::Url::parse("http://user:pw@127.0.0.1:9/api?token=abc").unwrap();
        assert_eq!(redact_url(&u), "http://127.0.0.1:9/api");
    }
}
