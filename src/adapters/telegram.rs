//! The Telegram Bot API client: `POST {ORCH_TELEGRAM_API_URL}/bot<token>/sendMessage`
//! with `chat_id` and `text`. The token sits in the URL path, so no URL of this client
//! ever reaches an error message or a log line.

use anyhow::Result;
use url::Url;

use crate::adapters::http::{self, HttpError};
use crate::config::{Secret, Settings};

/// Longest text Telegram accepts in one message.
const MAX_TEXT: usize = 4096;

/// A configured bot and chat.
pub struct Telegram {
    client: reqwest::blocking::Client,
    api: Url,
    token: Secret,
    chat_id: String,
}

impl Telegram {
    /// Builds the client when both `ORCH_TELEGRAM_BOT_TOKEN` and `ORCH_TELEGRAM_CHAT_ID`
    /// are set; `Ok(None)` otherwise.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn from_settings(settings: &Settings) -> Result<Option<Telegram>> {
        let (Some(token), Some(chat_id)) = (
            settings.telegram_bot_token.clone(),
            settings.telegram_chat_id.clone(),
        ) else {
            return Ok(None);
        };
        Ok(Some(Telegram {
            client: http::client(settings)?,
            api: settings.telegram_api_url.clone(),
            token,
            chat_id,
        }))
    }

    /// Reads the bot behind the token (`getMe`, read-only). Only the Bot API's own
    /// refusal (401 Unauthorized, 404 for a token of a bad form) judges the token bad; a
    /// 429 or a 5xx (Telegram or a proxy in front of it busy) judges nothing.
    ///
    /// # Errors
    /// [`HttpError::Retryable`] without an answer (no URL in it: it holds the token).
    pub fn get_me(&self) -> Result<GetMe, HttpError> {
        let base = self.api.as_str().trim_end_matches('/');
        let url = format!("{base}/bot{}/getMe", self.token.expose());
        let response = self
            .client
            .get(url)
            .send()
            .map_err(|e| no_answer(&e, "getMe"))?;
        let status = response.status().as_u16();
        let body = http::read_text(response).unwrap_or_default();
        let answer: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        let field = |path: &[&str]| {
            let mut v = answer.as_ref()?;
            for p in path {
                v = v.get(p)?;
            }
            Some(v.clone())
        };
        let description = field(&["description"])
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}"));
        Ok(match status {
            200 if field(&["ok"]) == Some(serde_json::Value::Bool(true)) => GetMe::Bot(
                field(&["result", "username"])
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            ),
            401 | 404 => GetMe::Refused(description),
            429 | 500..=599 => GetMe::Busy(description),
            _ => GetMe::Unexpected(format!(
                "HTTP {status}: not a Bot API answer ({description})"
            )),
        })
    }

    /// Sends `text` to the chat.
    ///
    /// # Errors
    /// [`HttpError`] without the URL (it holds the token).
    pub fn send(&self, text: &str) -> Result<(), HttpError> {
        let mut text: String = text.chars().take(MAX_TEXT).collect();
        if text.is_empty() {
            text.push('-');
        }
        let base = self.api.as_str().trim_end_matches('/');
        let url = format!("{base}/bot{}/sendMessage", self.token.expose());
        let response = self
            .client
            .post(url)
            .json(&serde_json::json!({ "chat_id": self.chat_id, "text": text }))
            .send()
            .map_err(|e| no_answer(&e, "sendMessage"))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = http::read_text(response).unwrap_or_default();
        let answer: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        let ok = answer
            .as_ref()
            .and_then(|v| v.get("ok"))
            .and_then(serde_json::Value::as_bool);
        if (200..300).contains(&status) && ok == Some(true) {
            return Ok(());
        }
        let description = answer
            .as_ref()
            .and_then(|v| v.get("description"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string();
        if (200..300).contains(&status) {
            return Err(HttpError::Fatal(format!(
                "telegram sendMessage: answer without ok: true {description}"
            )));
        }
        Err(http::classify_status(
            status,
            retry_after.as_deref(),
            "telegram sendMessage",
            &description,
        ))
    }
}

/// A call to Bot API `method` that got no answer, without the URL (it holds the token).
/// What `getMe` said about the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetMe {
    /// Valid: the bot's username.
    Bot(String),
    /// The Bot API refused the token (its description).
    Refused(String),
    /// 429 or 5xx: busy; the token was not judged.
    Busy(String),
    /// An answer that is not the Bot API's (a proxy's page, a 200 without `ok`).
    Unexpected(String),
}

fn no_answer(e: &reqwest::Error, method: &str) -> HttpError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    HttpError::Retryable(format!("telegram {method} {what}"))
}
