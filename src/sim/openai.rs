//! A simulated OpenAI-compatible server: `POST /v1/chat/completions`
//! answering deterministically from the request (so tests can see what was
//! sent), in OpenAI's response shape, refusing models it does not serve as
//! OpenAI does. Every request is kept in `World::ai_requests`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::Sim;

pub fn routes() -> Router<Sim> {
    Router::new().route("/v1/chat/completions", post(complete))
}

/// The models the simulator serves.
pub const MODELS: [&str; 2] = ["sim-small", "sim-large"];

async fn complete(
    State(sim): State<Sim>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let Some(Json(v)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            None,
        );
    };
    let auth = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    sim.world()
        .ai_requests
        .push(json!({"body": v, "authorization": auth}));
    let model = v["model"].as_str().unwrap_or_default().to_string();
    if !MODELS.contains(&model.as_str()) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            Some("model_not_found"),
        );
    }
    let user = v["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .next_back()
        .unwrap_or_default();
    let first = user.lines().next().unwrap_or_default();
    let content = format!(
        "Likely cause: the newest deployment ({} prompt lines seen).\nFirst fact: {first}\nCheck first: the top issue in the crashing release.",
        user.lines().count()
    );
    Json(json!({
        "id": format!("chatcmpl-sim{}", crate::clock::now_ms()),
        "object": "chat.completion",
        "created": crate::clock::now_ms() / 1000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": user.len() / 4, "completion_tokens": content.len() / 4, "total_tokens": (user.len() + content.len()) / 4}
    }))
    .into_response()
}

fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}})),
    )
        .into_response()
}
