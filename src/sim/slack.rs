//! Simulated Slack Web API: `chat.postMessage`, `chat.update`, `auth.test`
//! and `conversations.history`, answering HTTP 200 with `ok: false` on
//! failure exactly as Slack does.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;

use super::{Message, Sim};

pub fn routes() -> Router<Sim> {
    Router::new()
        .route("/chat.postMessage", post(post_message))
        .route("/chat.update", post(update))
        .route("/auth.test", post(auth_test).get(auth_test))
        .route("/conversations.history", get(history))
        .route("/conversations.replies", get(replies))
        .route("/usergroups.users.list", get(usergroup_users))
        .route("/actions/{id}", post(respond))
}

/// `usergroups.users.list`: the members of a user group the world knows.
async fn usergroup_users(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    if let Err(e) = auth(&sim, &headers) {
        return e;
    }
    let w = sim.world();
    match q.get("usergroup").and_then(|g| w.usergroups.get(g)) {
        Some(users) => Json(json!({"ok": true, "users": users})),
        None => fail("no_such_subteam"),
    }
}

/// An interaction's `response_url`: what the presser alone is told.
async fn respond(State(sim): State<Sim>, body: Option<Json<Value>>) -> Json<Value> {
    let v = body.map(|Json(v)| v).unwrap_or(Value::Null);
    sim.world().responses.push(v);
    Json(json!({"ok": true}))
}

fn fail(error: &str) -> Json<Value> {
    Json(json!({"ok": false, "error": error}))
}

fn auth(sim: &Sim, headers: &HeaderMap) -> Result<(), Json<Value>> {
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => Err(fail("not_authed")),
        Some(h) if h == format!("Bearer {}", sim.world().creds.slack_token) => Ok(()),
        Some(_) => Err(fail("invalid_auth")),
    }
}

/// Resolves `#name` or an id to a channel id.
fn channel_id(sim: &Sim, channel: &str) -> Option<String> {
    let w = sim.world();
    w.channels
        .get(channel)
        .cloned()
        .or_else(|| w.channels.values().find(|id| *id == channel).cloned())
}

async fn post_message(
    State(sim): State<Sim>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Json<Value> {
    if let Err(e) = auth(&sim, &headers) {
        return e;
    }
    let v = body.map(|Json(v)| v).unwrap_or(Value::Null);
    let Some(channel) = v["channel"].as_str().and_then(|c| channel_id(&sim, c)) else {
        return fail("channel_not_found");
    };
    let text = v["text"].as_str().unwrap_or_default().to_string();
    let blocks = v.get("blocks").cloned().unwrap_or(Value::Null);
    if text.is_empty() && blocks.as_array().is_none_or(Vec::is_empty) {
        return fail("no_text");
    }
    if blocks.as_array().is_some_and(|b| b.len() > 50) {
        return fail("invalid_blocks");
    }
    if text.chars().count() > 40_000 {
        return fail("msg_too_long");
    }
    let mut w = sim.world();
    let n = w.next_seq();
    let ts = format!("{}.{:06}", 1_700_000_000 + n, n);
    let thread_ts = v["thread_ts"].as_str().map(str::to_owned);
    let message = Message {
        channel: channel.clone(),
        ts: ts.clone(),
        thread_ts: thread_ts.clone(),
        text: text.clone(),
        blocks: blocks.clone(),
        metadata: v["metadata"].clone(),
    };
    w.messages.push(message);
    Json(json!({
        "ok": true, "channel": channel, "ts": ts,
        "message": {"type": "message", "subtype": "bot_message", "text": text, "ts": ts, "thread_ts": thread_ts,
                    "bot_id": "B0SIMBOT", "username": "backstop", "blocks": blocks}
    }))
}

async fn update(
    State(sim): State<Sim>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Json<Value> {
    if let Err(e) = auth(&sim, &headers) {
        return e;
    }
    let v = body.map(|Json(v)| v).unwrap_or(Value::Null);
    let Some(channel) = v["channel"].as_str().and_then(|c| channel_id(&sim, c)) else {
        return fail("channel_not_found");
    };
    let ts = v["ts"].as_str().unwrap_or_default().to_string();
    let mut w = sim.world();
    let Some(m) = w
        .messages
        .iter_mut()
        .find(|m| m.channel == channel && m.ts == ts)
    else {
        return fail("message_not_found");
    };
    if let Some(t) = v["text"].as_str() {
        m.text = t.to_string();
    }
    if let Some(b) = v.get("blocks") {
        m.blocks = b.clone();
    }
    Json(json!({"ok": true, "channel": channel, "ts": ts, "text": m.text}))
}

async fn auth_test(State(sim): State<Sim>, headers: HeaderMap) -> Json<Value> {
    if let Err(e) = auth(&sim, &headers) {
        return e;
    }
    Json(
        json!({"ok": true, "url": "https://sim.slack.com/", "team": "Simulated", "user": "backstop", "team_id": "T0SIM", "user_id": "U0SIM", "bot_id": "B0SIMBOT", "is_enterprise_install": false}),
    )
}

/// `conversations.history` / `.replies`: like Slack, only channel IDs are
/// accepted, and metadata only comes back with `include_all_metadata`.
fn history_of(sim: &Sim, q: &HashMap<String, String>, thread: Option<&str>) -> Json<Value> {
    let w = sim.world();
    let Some(channel) = q
        .get("channel")
        .filter(|c| w.channels.values().any(|id| id == *c))
        .cloned()
    else {
        return fail("channel_not_found");
    };
    let with_metadata = q
        .get("include_all_metadata")
        .is_some_and(|v| v == "true" || v == "1");
    let messages: Vec<Value> = w
        .messages
        .iter()
        .filter(|m| m.channel == channel)
        .filter(|m| match thread {
            Some(ts) => m.ts == ts || m.thread_ts.as_deref() == Some(ts),
            None => m.thread_ts.is_none(),
        })
        .map(|m| {
            let mut v = json!({"type": "message", "ts": m.ts, "text": m.text, "thread_ts": m.thread_ts, "bot_id": "B0SIMBOT"});
            if with_metadata && !m.metadata.is_null() {
                v["metadata"] = m.metadata.clone();
            }
            v
        })
        .collect();
    // History is newest first; replies oldest first, as in Slack.
    let messages: Vec<Value> = if thread.is_some() {
        messages
    } else {
        messages.into_iter().rev().collect()
    };
    Json(json!({"ok": true, "channel": channel, "messages": messages, "has_more": false}))
}

async fn history(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    if let Err(e) = auth(&sim, &headers) {
        return e;
    }
    history_of(&sim, &q, None)
}

async fn replies(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    if let Err(e) = auth(&sim, &headers) {
        return e;
    }
    let Some(ts) = q.get("ts").cloned() else {
        return fail("thread_not_found");
    };
    history_of(&sim, &q, Some(&ts))
}
