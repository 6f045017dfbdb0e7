//! A Telegram Bot API stand-in: `POST /bot<token>/sendMessage` with a JSON `chat_id`
//! and `text` answers like the Bot API (`{"ok":true,"result":{...}}`); a token other
//! than the expected one gets 401 `Unauthorized`, a missing chat or text 400.
//! `getMe` answers the bot (read-only; what `orch doctor` asks). Every
//! call is recorded by the server, so tests count messages.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::standin::server::{Recorded, Reply, Server};

/// The token the stand-in accepts unless told otherwise.
pub const TOKEN: &str = "123456:standin-token";

/// Starts the stand-in accepting `token`.
pub fn start(token: &str) -> Server {
    let expected = format!("/bot{token}/");
    let token_id = token.split(':').next().unwrap_or("").to_string();
    let next_id = AtomicI64::new(1);
    Server::start(Arc::new(move |r: &Recorded| {
        let error = |code: u16, description: &str| {
            Reply::json(
                code,
                &serde_json::json!({"ok": false, "error_code": code, "description": description}),
            )
        };
        let Some(method) = r.path.strip_prefix(&expected) else {
            return error(401, "Unauthorized");
        };
        if method == "getMe" {
            let id: i64 = token_id.parse().unwrap_or(0);
            return Reply::json(
                200,
                &serde_json::json!({"ok": true, "result": {
                    "id": id, "is_bot": true, "first_name": "orch", "username": "orch_standin_bot"
                }}),
            );
        }
        if method != "sendMessage" {
            return error(404, "Not Found");
        }
        let Some(body) = r.json() else {
            return error(400, "Bad Request: message text is empty");
        };
        let chat = body.get("chat_id").filter(|v| v.is_string() || v.is_i64());
        let text = body.get("text").and_then(|v| v.as_str()).unwrap_or("");
        if chat.is_none() {
            return error(400, "Bad Request: chat_id is empty");
        }
        if text.is_empty() {
            return error(400, "Bad Request: message text is empty");
        }
        let id = next_id.fetch_add(1, Ordering::SeqCst);
        Reply::json(
            200,
            &serde_json::json!({"ok": true, "result": {
                "message_id": id, "date": 0, "chat": {"id": chat, "type": "private"}, "text": text
            }}),
        )
    }))
}

/// Starts it for `orch-standin telegram [TOKEN]`.
pub fn start_standin(seed: Option<&str>) -> Server {
    start(seed.unwrap_or(TOKEN))
}

/// Returns the texts of every sendMessage the server answered.
pub fn messages(server: &Server) -> Vec<String> {
    server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/sendMessage"))
        .filter_map(|r| r.json()?.get("text")?.as_str().map(str::to_string))
        .collect()
}
